//! Modbus RTU as a slave sees it: frames, CRC-16/MODBUS, the three functions the supplies
//! answer (read holding registers, write one register, write several) and exception replies.
//!
//! Part of the simulator's independent witness (see [`super`]): written from the standard
//! ("Standard RTU framing (address, function, data, CRC-16/Modbus)" in
//! `docs/protocols/power-supplies.md`), not taken from the backend's Modbus master.

use super::{Events, Shared, SupplyModel};

/// Function codes.
pub const READ_HOLDING_REGISTERS: u8 = 0x03;
pub const WRITE_SINGLE_REGISTER: u8 = 0x06;
pub const WRITE_MULTIPLE_REGISTERS: u8 = 0x10;

/// An exception reply carries the request's function code with this bit set.
const EXCEPTION: u8 = 0x80;
/// Exception codes: a register the device does not have; a malformed quantity.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;

/// A device's holding registers.
pub trait Registers {
    /// The value of `register`, or `None` if the device has no such register.
    fn read(&self, m: &SupplyModel, register: u16) -> Option<u16>;
    /// Writes `register`; false if it is not writable.
    fn write(&self, m: &mut SupplyModel, register: u16, value: u16, events: &Events) -> bool;
}

/// CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF, no final XOR. Sent low
/// byte first.
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

pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

fn exception(address: u8, function: u8, code: u8) -> Vec<u8> {
    with_crc(vec![address, function | EXCEPTION, code])
}

/// The big-endian word at byte `at` of `frame`.
fn word(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Handles the first frame in `buf` if it is complete: (bytes used, reply). A frame with a
/// bad CRC or an unknown function costs one byte (the slave resynchronises byte by byte); a
/// frame for another address is dropped without a reply.
pub fn step(
    buf: &[u8],
    address: u8,
    registers: &dyn Registers,
    model: &Shared,
    events: &Events,
) -> (usize, Option<Vec<u8>>) {
    // The shortest request (function 0x03 or 0x06) is 8 bytes: address, function, two
    // words, CRC.
    if buf.len() < 8 {
        return (0, None);
    }
    let len = match buf.get(1).copied() {
        Some(READ_HOLDING_REGISTERS | WRITE_SINGLE_REGISTER) => 8,
        // address, function, start, quantity, byte count, the data, CRC.
        Some(WRITE_MULTIPLE_REGISTERS) => match buf.get(6) {
            Some(&n) => 9 + usize::from(n),
            None => return (0, None),
        },
        _ => return (1, None),
    };
    let Some(frame) = buf.get(..len) else {
        return (0, None);
    };
    let (body, crc) = frame.split_at(len - 2);
    if crc16(body).to_le_bytes() != crc {
        return (1, None);
    }
    let (Some(&to), Some(&function)) = (body.first(), body.get(1)) else {
        return (1, None);
    };
    if to != address {
        return (len, None);
    }
    // Address, function, then two words: the reply to a write echoes these six bytes.
    let (Some(echo), Some(start), Some(quantity)) = (body.get(..6), word(body, 2), word(body, 4))
    else {
        return (len, None);
    };
    let Ok(mut m) = model.lock() else {
        return (len, None);
    };
    let reply = match function {
        READ_HOLDING_REGISTERS => {
            let mut data = Vec::new();
            for i in 0..quantity {
                let value = start.checked_add(i).and_then(|r| registers.read(&m, r));
                match value {
                    Some(v) => data.extend_from_slice(&v.to_be_bytes()),
                    None => {
                        return (
                            len,
                            Some(exception(address, function, ILLEGAL_DATA_ADDRESS)),
                        );
                    }
                }
            }
            let Ok(count) = u8::try_from(data.len()) else {
                return (len, Some(exception(address, function, ILLEGAL_DATA_VALUE)));
            };
            let mut out = vec![address, function, count];
            out.extend_from_slice(&data);
            with_crc(out)
        }
        WRITE_SINGLE_REGISTER => {
            // For this function the second word is the value.
            if !registers.write(&mut m, start, quantity, events) {
                return (
                    len,
                    Some(exception(address, function, ILLEGAL_DATA_ADDRESS)),
                );
            }
            with_crc(echo.to_vec())
        }
        _ => {
            // The byte count must match the quantity of registers.
            if body.get(6).map(|&n| usize::from(n)) != Some(2 * usize::from(quantity)) {
                return (len, Some(exception(address, function, ILLEGAL_DATA_VALUE)));
            }
            for i in 0..quantity {
                let written = match (start.checked_add(i), word(body, 7 + 2 * usize::from(i))) {
                    (Some(r), Some(v)) => registers.write(&mut m, r, v, events),
                    _ => false,
                };
                if !written {
                    return (
                        len,
                        Some(exception(address, function, ILLEGAL_DATA_ADDRESS)),
                    );
                }
            }
            with_crc(echo.to_vec())
        }
    };
    (len, Some(reply))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::sim::supply::tests::recorder;

    /// A device with register 0 reading 1, register 1 writable (into the voltage setpoint).
    struct Two;

    impl Registers for Two {
        fn read(&self, m: &SupplyModel, register: u16) -> Option<u16> {
            match register {
                0 => Some(1),
                1 => Some(m.voltage_set as u16),
                _ => None,
            }
        }

        fn write(&self, m: &mut SupplyModel, register: u16, value: u16, _: &Events) -> bool {
            if register != 1 {
                return false;
            }
            m.voltage_set = f64::from(value);
            true
        }
    }

    fn run(buf: &[u8]) -> ((usize, Option<Vec<u8>>), SupplyModel) {
        let model = Arc::new(Mutex::new(SupplyModel::default()));
        let (events, _) = recorder();
        let out = step(buf, 1, &Two, &model, &events);
        let m = model.lock().unwrap().clone();
        (out, m)
    }

    #[test]
    fn crc16_modbus_check_values() {
        // The catalogue check value of CRC-16/MODBUS over "123456789".
        assert_eq!(crc16(b"123456789"), 0x4b37);
        // Read one holding register at 0 from slave 1: 01 03 00 00 00 01 84 0A, and its
        // answer 01 03 02 00 01 79 84 (the common textbook frames; their CRCs were also
        // checked with a separate Python implementation of the catalogue algorithm).
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 1]).to_le_bytes(), [0x84, 0x0a]);
        assert_eq!(crc16(&[1, 3, 2, 0, 1]).to_le_bytes(), [0x79, 0x84]);
    }

    #[test]
    fn reads_and_exceptions_are_standard_frames() {
        let ((used, reply), _) = run(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0a]);
        assert_eq!(used, 8);
        assert_eq!(reply.unwrap(), [0x01, 0x03, 0x02, 0x00, 0x01, 0x79, 0x84]);
        // Register 0x12 does not exist: exception 02, 01 83 02 C0 F1.
        let ((used, reply), _) = run(&[0x01, 0x03, 0x00, 0x12, 0x00, 0x01, 0x24, 0x0f]);
        assert_eq!(used, 8);
        assert_eq!(reply.unwrap(), [0x01, 0x83, 0x02, 0xc0, 0xf1]);
    }

    #[test]
    fn writes_echo_the_request() {
        let request = with_crc(vec![0x01, 0x06, 0x00, 0x01, 0x00, 0x05]);
        let ((used, reply), m) = run(&request);
        assert_eq!((used, reply.unwrap()), (8, request));
        assert_eq!(m.voltage_set, 5.0);
        let request = with_crc(vec![0x01, 0x10, 0x00, 0x01, 0x00, 0x01, 0x02, 0x00, 0x07]);
        let ((used, reply), m) = run(&request);
        assert_eq!(used, 11);
        assert_eq!(
            reply.unwrap(),
            with_crc(vec![0x01, 0x10, 0x00, 0x01, 0x00, 0x01])
        );
        assert_eq!(m.voltage_set, 7.0);
        // Not writable: exception 02 for either function.
        let ((_, reply), _) = run(&with_crc(vec![0x01, 0x06, 0x00, 0x00, 0x00, 0x05]));
        assert_eq!(reply.unwrap(), with_crc(vec![0x01, 0x86, 0x02]));
        // A byte count that does not match the quantity: exception 03, nothing written.
        let ((_, reply), m) = run(&with_crc(vec![
            0x01, 0x10, 0x00, 0x01, 0x00, 0x02, 0x02, 0x00, 0x07,
        ]));
        assert_eq!(reply.unwrap(), with_crc(vec![0x01, 0x90, 0x03]));
        assert_eq!(m.voltage_set, SupplyModel::default().voltage_set);
    }

    #[test]
    fn framing_waits_resynchronises_and_ignores_other_slaves() {
        // Incomplete: wait for more.
        assert_eq!(
            run(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84]).0,
            (0, None)
        );
        // Bad CRC, or an unknown function: skip one byte.
        assert_eq!(
            run(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0b]).0,
            (1, None)
        );
        assert_eq!(run(&with_crc(vec![0x01, 0x2b, 0, 0, 0, 0])).0, (1, None));
        // Another slave's request: consumed, not answered.
        assert_eq!(run(&with_crc(vec![0x02, 0x03, 0, 0, 0, 1])).0, (8, None));
        // Write multiple waits for its whole data.
        assert_eq!(
            run(&[0x01, 0x10, 0x00, 0x01, 0x00, 0x01, 0x02, 0x00]).0,
            (0, None)
        );
    }
}
