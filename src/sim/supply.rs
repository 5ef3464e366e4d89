//! Simulated lab supplies on a pseudo-terminal: a Joy-it DPM86xx (ASCII or Modbus RTU) and a
//! Riden RD60xx (Modbus RTU). One [`SupplyModel`] holds the electrical state; the protocol
//! front ends translate frames into it. The board is a resistive load, so measured voltage
//! and current follow the setpoints and the current limit as on a real bench.
//!
//! Fault modes let tests break the wire on purpose: a silent supply, replies with a bad CRC,
//! garbled ASCII replies.
//!
//! An independent witness for `crate::power::{dpm86xx, riden}` and their Modbus master: the
//! wire facts live in this module's own children, written from
//! `docs/protocols/power-supplies.md` and imported from nowhere else: Modbus RTU framing and
//! CRC in [`modbus`], the DPM86xx ASCII function table, request parser and Modbus register map
//! in [`dpm86xx`], the Riden register table and scaling in [`riden`]. A wrong register on
//! either side therefore fails a test instead of passing on both.

mod dpm86xx;
mod modbus;
mod riden;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use super::Events;
use super::board::PowerInput;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Never answers.
    Silent,
    /// Modbus replies with a corrupted CRC; ASCII replies garbled.
    Corrupt,
}

/// The electrical state of a supply feeding a board.
#[derive(Debug, Clone)]
pub struct SupplyModel {
    pub voltage_set: f64,
    pub current_set: f64,
    pub output: bool,
    /// The board as a load, in ohms.
    pub load_ohms: f64,
    pub temperature: f64,
}

impl Default for SupplyModel {
    fn default() -> Self {
        // A panel left at 12 V by a previous user: rtmd must set the voltage before output on.
        SupplyModel {
            voltage_set: 12.0,
            current_set: 1.0,
            output: false,
            load_ohms: 10.0,
            temperature: 27.0,
        }
    }
}

impl SupplyModel {
    /// Measured (volts, amps): constant voltage until the load would draw more than the limit.
    pub fn measured(&self) -> (f64, f64) {
        if !self.output {
            return (0.0, 0.0);
        }
        let cv_current = self.voltage_set / self.load_ohms;
        if cv_current <= self.current_set {
            (self.voltage_set, cv_current)
        } else {
            (self.current_set * self.load_ohms, self.current_set)
        }
    }

    /// Whether the current limit holds the output (constant current).
    fn in_current_limit(&self) -> bool {
        self.output && self.measured().1 >= self.current_set
    }
}

pub type Shared = Arc<Mutex<SupplyModel>>;

/// Which protocol a simulated supply speaks.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    DpmAscii,
    DpmModbus,
    Riden { model_id: u16 },
}

/// Serves requests from `port` (a pty master) until it fails. Blocking: run it on a thread.
pub fn serve(
    mut port: impl Read + Write,
    kind: Kind,
    address: u8,
    fault: Fault,
    model: Shared,
    events: Events,
    board: Option<PowerInput>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = match port.read(&mut chunk) {
            Ok(0) | Err(_) => {
                // EIO while no slave is open; the slave is held open by Pty, so this is
                // the end of the simulator.
                return;
            }
            Ok(n) => n,
        };
        buf.extend(chunk.iter().take(n));
        loop {
            let (used, reply) = step(&buf, kind, address, &model, &events);
            if used == 0 {
                break;
            }
            buf.drain(..used.min(buf.len()));
            // The board follows the output (it ignores changes within the same range).
            if let (Some(board), Ok(m)) = (&board, model.lock()) {
                board.set_power(m.measured().0);
            }
            if let Some(mut reply) = reply {
                match fault {
                    Fault::Silent => continue,
                    Fault::Corrupt => corrupt(&mut reply, kind),
                    Fault::None => {}
                }
                if port.write_all(&reply).and_then(|_| port.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Handles the first complete request in `buf`: (bytes used, reply). Zero bytes used: the
/// request is not complete yet.
fn step(
    buf: &[u8],
    kind: Kind,
    address: u8,
    model: &Shared,
    events: &Events,
) -> (usize, Option<Vec<u8>>) {
    match kind {
        Kind::DpmAscii => dpm86xx::ascii_step(buf, address, model, events),
        Kind::DpmModbus => modbus::step(buf, address, &dpm86xx::Registers, model, events),
        Kind::Riden { model_id } => modbus::step(
            buf,
            address,
            &riden::Registers::new(model_id),
            model,
            events,
        ),
    }
}

fn corrupt(reply: &mut Vec<u8>, kind: Kind) {
    match kind {
        Kind::DpmAscii => *reply = b"#\x7f?!\r\n".to_vec(),
        _ => {
            if let Some(last) = reply.last_mut() {
                *last ^= 0x5a;
            }
        }
    }
}

fn set_voltage(m: &mut SupplyModel, volts: f64, events: &Events) {
    m.voltage_set = volts;
    events.emit(&format!("set voltage {volts:.2}"));
}

fn set_current(m: &mut SupplyModel, amps: f64, events: &Events) {
    m.current_set = amps;
    events.emit(&format!("set current {amps:.3}"));
}

fn set_output(m: &mut SupplyModel, on: bool, events: &Events) {
    m.output = on;
    events.emit(&format!(
        "output {} at {:.2} V",
        if on { "on" } else { "off" },
        m.voltage_set
    ));
}

/// A value in the unit's raw steps (`per_unit` steps per volt or ampere), as a register holds
/// it: rounded, and pinned to the register's range.
fn raw(value: f64, per_unit: f64) -> u16 {
    (value * per_unit).round().clamp(0.0, 65535.0) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events into a list, for tests of the front ends.
    pub(super) fn recorder() -> (Events, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let events = Events(Arc::new(move |line: &str| {
            sink.lock().unwrap().push(line.to_string())
        }));
        (events, lines)
    }

    #[test]
    fn load_follows_setpoints_and_limit() {
        let mut m = SupplyModel {
            voltage_set: 5.0,
            current_set: 1.0,
            output: false,
            ..Default::default()
        };
        assert_eq!(m.measured(), (0.0, 0.0));
        m.output = true;
        assert_eq!(m.measured(), (5.0, 0.5));
        assert!(!m.in_current_limit());
        m.current_set = 0.2;
        assert_eq!(m.measured(), (2.0, 0.2));
        assert!(m.in_current_limit());
    }

    #[test]
    fn fault_modes_break_replies() {
        let mut modbus = vec![1, 3, 2, 0, 1, 0x79, 0x84];
        corrupt(&mut modbus, Kind::DpmModbus);
        assert_eq!(modbus, [1, 3, 2, 0, 1, 0x79, 0x84 ^ 0x5a]);
        let mut ascii = b":01ok\r\n".to_vec();
        corrupt(&mut ascii, Kind::DpmAscii);
        assert_eq!(ascii, b"#\x7f?!\r\n");
    }
}
