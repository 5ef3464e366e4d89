//! Simulated lab supplies on a pseudo-terminal: a Joy-it DPM86xx (ASCII or Modbus RTU) and a
//! Riden RD60xx (Modbus RTU). One [`SupplyModel`] holds the electrical state; the protocol
//! front ends translate frames into it. The board is a resistive load, so measured voltage
//! and current follow the setpoints and the current limit as on a real bench.
//!
//! Fault modes let tests break the wire on purpose: a silent supply, replies with a bad CRC,
//! garbled ASCII replies.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use super::Events;
use super::board::PowerInput;
use crate::power::dpm86xx::{func, reg as dpm_reg};
use crate::power::riden::{Scale, reg as riden_reg, scale};

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
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (used, reply) = match kind {
                Kind::DpmAscii => ascii_step(&buf, address, &model, &events),
                Kind::DpmModbus | Kind::Riden { .. } => {
                    modbus_step(&buf, address, kind, &model, &events)
                }
            };
            if used == 0 {
                break;
            }
            buf.drain(..used);
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

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xa001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

// ---- ASCII (DPM86xx "simple protocol") --------------------------------------------------------

/// Handles one request line if `buf` holds a complete one: (bytes used, reply).
fn ascii_step(
    buf: &[u8],
    address: u8,
    model: &Shared,
    events: &Events,
) -> (usize, Option<Vec<u8>>) {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        // Cap garbage: a line this long is never a request.
        return if buf.len() > 128 {
            (buf.len(), None)
        } else {
            (0, None)
        };
    };
    let line = String::from_utf8_lossy(&buf[..nl]).trim().to_string();
    (nl + 1, ascii_request(&line, address, model, events))
}

fn ascii_request(line: &str, address: u8, model: &Shared, events: &Events) -> Option<Vec<u8>> {
    // :AA[rw]FF=V[,V],
    let rest = line.strip_prefix(':')?;
    let addr: u8 = rest.get(..2)?.parse().ok()?;
    if addr != address {
        return None; // another unit's request: silence, as on a shared RS485 bus
    }
    let op = rest.as_bytes().get(2).copied()?;
    let function: u8 = rest.get(3..5)?.parse().ok()?;
    let values: Vec<u32> = rest
        .get(6..)?
        .split(',')
        .filter(|v| !v.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let mut m = model.lock().ok()?;
    match op {
        b'w' => {
            let v = f64::from(*values.first()?);
            match function {
                func::VOLTAGE_SET => set_voltage(&mut m, v / 100.0, events),
                func::CURRENT_SET => set_current(&mut m, v / 1000.0, events),
                func::OUTPUT => set_output(&mut m, v != 0.0, events),
                20 => {
                    set_voltage(&mut m, v / 100.0, events);
                    set_current(&mut m, f64::from(*values.get(1)?) / 1000.0, events);
                }
                _ => return None,
            }
            Some(format!(":{address:02}ok\r\n").into_bytes())
        }
        b'r' => {
            let (mv, mi) = m.measured();
            let value = match function {
                0 => 6000,
                1 => 5000,
                func::VOLTAGE_SET => (m.voltage_set * 100.0).round() as u32,
                func::CURRENT_SET => (m.current_set * 1000.0).round() as u32,
                func::OUTPUT => u32::from(m.output),
                func::VOLTAGE_OUT => (mv * 100.0).round() as u32,
                func::CURRENT_OUT => (mi * 1000.0).round() as u32,
                32 => u32::from(m.output && mi >= m.current_set),
                func::TEMPERATURE => m.temperature.round() as u32,
                _ => return None,
            };
            Some(format!(":{address:02}r{function:02}={value}.\r\n").into_bytes())
        }
        _ => None,
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

// ---- Modbus RTU (DPM86xx and Riden) ------------------------------------------------------------

fn modbus_step(
    buf: &[u8],
    address: u8,
    kind: Kind,
    model: &Shared,
    events: &Events,
) -> (usize, Option<Vec<u8>>) {
    if buf.len() < 8 {
        return (0, None);
    }
    let len = match buf[1] {
        0x03 | 0x06 => 8,
        0x10 => {
            let n = 9 + usize::from(buf[6]);
            if buf.len() < n {
                return (0, None);
            }
            n
        }
        // Not a function we know: resynchronise byte by byte.
        _ => return (1, None),
    };
    let frame = &buf[..len];
    if crc16(&frame[..len - 2]).to_le_bytes() != [frame[len - 2], frame[len - 1]] {
        return (1, None);
    }
    if frame[0] != address {
        return (len, None);
    }
    let word = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    let Ok(mut m) = model.lock() else {
        return (len, None);
    };
    let reply = match frame[1] {
        0x03 => {
            let (start, count) = (word(2), word(4));
            let mut out = vec![address, 0x03, (count * 2) as u8];
            for r in start..start.saturating_add(count) {
                match read_register(kind, &m, r) {
                    Some(v) => out.extend_from_slice(&v.to_be_bytes()),
                    None => return (len, Some(with_crc(vec![address, 0x83, 0x02]))),
                }
            }
            out
        }
        0x06 => {
            if !write_register(kind, &mut m, word(2), word(4), events) {
                return (len, Some(with_crc(vec![address, 0x86, 0x02])));
            }
            frame[..6].to_vec()
        }
        _ => {
            let (start, count) = (word(2), word(4));
            for i in 0..count {
                let v = word(7 + 2 * usize::from(i));
                if !write_register(kind, &mut m, start + i, v, events) {
                    return (len, Some(with_crc(vec![address, 0x90, 0x02])));
                }
            }
            frame[..6].to_vec()
        }
    };
    (len, Some(with_crc(reply)))
}

fn riden_scale(kind: Kind) -> Scale {
    match kind {
        Kind::Riden { model_id } => scale(model_id).unwrap_or(Scale {
            volts: 100.0,
            amps: 1000.0,
        }),
        _ => Scale {
            volts: 100.0,
            amps: 1000.0,
        },
    }
}

fn raw(value: f64, per_unit: f64) -> u16 {
    (value * per_unit).round().clamp(0.0, 65535.0) as u16
}

fn read_register(kind: Kind, m: &SupplyModel, r: u16) -> Option<u16> {
    let (mv, mi) = m.measured();
    match kind {
        Kind::Riden { model_id } => {
            let s = riden_scale(kind);
            Some(match r {
                riden_reg::MODEL => model_id,
                riden_reg::VOLTAGE_SET => raw(m.voltage_set, s.volts),
                riden_reg::CURRENT_SET => raw(m.current_set, s.amps),
                riden_reg::VOLTAGE_OUT => raw(mv, s.volts),
                riden_reg::CURRENT_OUT => raw(mi, s.amps),
                13 => raw(mv * mi, 100.0),
                14 => 2400,
                17 => u16::from(m.output && mi >= m.current_set),
                riden_reg::OUTPUT => u16::from(m.output),
                // The rest of the documented register block reads as zero.
                1..=99 => 0,
                _ => return None,
            })
        }
        _ => Some(match r {
            dpm_reg::VOLTAGE_SET => raw(m.voltage_set, 100.0),
            dpm_reg::CURRENT_SET => raw(m.current_set, 1000.0),
            dpm_reg::OUTPUT => u16::from(m.output),
            0x1000 => {
                if !m.output {
                    0
                } else if mi >= m.current_set {
                    2
                } else {
                    1
                }
            }
            dpm_reg::VOLTAGE_OUT => raw(mv, 100.0),
            dpm_reg::CURRENT_OUT => raw(mi, 1000.0),
            dpm_reg::TEMPERATURE => m.temperature.round() as u16,
            _ => return None,
        }),
    }
}

fn write_register(kind: Kind, m: &mut SupplyModel, r: u16, v: u16, events: &Events) -> bool {
    let v = f64::from(v);
    match kind {
        Kind::Riden { .. } => {
            let s = riden_scale(kind);
            match r {
                riden_reg::VOLTAGE_SET => set_voltage(m, v / s.volts, events),
                riden_reg::CURRENT_SET => set_current(m, v / s.amps, events),
                riden_reg::OUTPUT => set_output(m, v != 0.0, events),
                _ => return false,
            }
        }
        _ => match r {
            dpm_reg::VOLTAGE_SET => set_voltage(m, v / 100.0, events),
            dpm_reg::CURRENT_SET => set_current(m, v / 1000.0, events),
            dpm_reg::OUTPUT => set_output(m, v != 0.0, events),
            _ => return false,
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_modbus_check_value() {
        // The catalogue check value of CRC-16/MODBUS over "123456789".
        assert_eq!(crc16(b"123456789"), 0x4b37);
        // Read one holding register at 0 from slave 1: 01 03 00 00 00 01 84 0A.
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 1]).to_le_bytes(), [0x84, 0x0a]);
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
        m.current_set = 0.2;
        assert_eq!(m.measured(), (2.0, 0.2));
    }
}
