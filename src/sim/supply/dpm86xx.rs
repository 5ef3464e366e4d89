//! The Joy-it / Juntek DPM86xx as the simulator plays it: the ASCII "simple protocol"
//! (function table, request parser, replies) and the Modbus RTU register map.
//!
//! Part of the simulator's independent witness (see [`super`]): every number here is copied
//! from `docs/protocols/power-supplies.md` ("Joy-it JT-DPM8605"), none from
//! `crate::power::dpm86xx`.

use super::modbus;
use super::{Events, Shared, SupplyModel, raw, set_current, set_output, set_voltage};

/// ASCII function numbers ("Functions").
pub mod func {
    /// r: maximum voltage, 0.01 V.
    pub const MAX_VOLTAGE: u8 = 0;
    /// r: maximum current, 0.001 A.
    pub const MAX_CURRENT: u8 = 1;
    /// r/w: voltage setpoint, 0.01 V.
    pub const VOLTAGE_SET: u8 = 10;
    /// r/w: current limit, 0.001 A.
    pub const CURRENT_SET: u8 = 11;
    /// r/w: output, 0 off, 1 on.
    pub const OUTPUT: u8 = 12;
    /// w: voltage and current together, `:01w20=500,2000,`.
    pub const VOLTAGE_AND_CURRENT: u8 = 20;
    /// r: measured voltage, 0.01 V.
    pub const VOLTAGE_OUT: u8 = 30;
    /// r: measured current, 0.001 A.
    pub const CURRENT_OUT: u8 = 31;
    /// r: regulation, 0 CV, 1 CC.
    pub const REGULATION: u8 = 32;
    /// r: temperature, °C.
    pub const TEMPERATURE: u8 = 33;
}

/// Modbus holding registers ("Modbus RTU mode").
pub mod reg {
    /// r/w: voltage setpoint, 0.01 V.
    pub const VOLTAGE_SET: u16 = 0x0000;
    /// r/w: current limit, 0.001 A.
    pub const CURRENT_SET: u16 = 0x0001;
    /// r/w: output 0/1.
    pub const OUTPUT: u16 = 0x0002;
    /// r: regulation state, 0 off, 1 CV, 2 CC (one source, unconfirmed).
    pub const REGULATION: u16 = 0x1000;
    /// r: measured voltage, 0.01 V.
    pub const VOLTAGE_OUT: u16 = 0x1001;
    /// r: measured current, 0.001 A.
    pub const CURRENT_OUT: u16 = 0x1002;
    /// r: temperature, °C.
    pub const TEMPERATURE: u16 = 0x1003;
}

/// Raw steps per volt (0.01 V) and per ampere (0.001 A), the same in both protocols.
const STEPS_PER_VOLT: f64 = 100.0;
const STEPS_PER_AMP: f64 = 1000.0;

/// What functions 00 and 01 report: the DPM8605's 60.00 V (the doc's example, 6000) and
/// 5.000 A (5000 on the 8605).
const MAX_VOLTAGE_RAW: u32 = 6000;
const MAX_CURRENT_RAW: u32 = 5000;

/// A parsed ASCII request, `:` address (2 digits) `r`|`w` function (2 digits) `=` values
/// separated by `,`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub address: u8,
    pub write: bool,
    pub function: u8,
    /// A write's values; on a read the count of extra functions (normally 0), ignored here.
    pub values: Vec<u32>,
}

/// Two ASCII digits as a number.
fn two_digits(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

/// A decimal value of at most 9 digits (so it fits a u32).
fn decimal(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// Parses one request line (its terminator, `\n` or `\r\n`, already cut off; surrounding
/// whitespace is ignored). `None`: not a request.
pub fn parse_request(line: &[u8]) -> Option<Request> {
    let line = line.trim_ascii();
    let rest = line.strip_prefix(b":")?;
    let (address, rest) = (two_digits(rest.get(..2)?)?, rest.get(2..)?);
    let (write, rest) = match rest.split_first()? {
        (b'r', rest) => (false, rest),
        (b'w', rest) => (true, rest),
        _ => return None,
    };
    let (function, rest) = (two_digits(rest.get(..2)?)?, rest.get(2..)?);
    let rest = rest.strip_prefix(b"=")?;
    let values = rest
        .split(|&b| b == b',')
        .filter(|v| !v.is_empty())
        .map(decimal)
        .collect::<Option<Vec<u32>>>()?;
    Some(Request {
        address,
        write,
        function,
        values,
    })
}

/// Handles one request line if `buf` holds a complete one: (bytes used, reply).
pub fn ascii_step(
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
    let reply = buf
        .get(..nl)
        .and_then(parse_request)
        .and_then(|request| answer(&request, address, model, events));
    (nl + 1, reply)
}

/// The unit's reply to `request`, if it gives one: `:01ok` for a write it parsed,
/// `:01r30=5339.` for a read, nothing for another unit's address.
fn answer(request: &Request, address: u8, model: &Shared, events: &Events) -> Option<Vec<u8>> {
    if request.address != address {
        return None; // another unit's request: silence, as on a shared RS485 bus
    }
    let mut m = model.lock().ok()?;
    let function = request.function;
    if request.write {
        let value = |i: usize| request.values.get(i).map(|&v| f64::from(v));
        match function {
            func::VOLTAGE_SET => set_voltage(&mut m, value(0)? / STEPS_PER_VOLT, events),
            func::CURRENT_SET => set_current(&mut m, value(0)? / STEPS_PER_AMP, events),
            func::OUTPUT => set_output(&mut m, value(0)? != 0.0, events),
            func::VOLTAGE_AND_CURRENT => {
                let (volts, amps) = (value(0)?, value(1)?);
                set_voltage(&mut m, volts / STEPS_PER_VOLT, events);
                set_current(&mut m, amps / STEPS_PER_AMP, events);
            }
            _ => return None,
        }
        return Some(format!(":{address:02}ok\r\n").into_bytes());
    }
    let (volts, amps) = m.measured();
    let steps = |value: f64, per_unit: f64| (value * per_unit).round() as u32;
    let value = match function {
        func::MAX_VOLTAGE => MAX_VOLTAGE_RAW,
        func::MAX_CURRENT => MAX_CURRENT_RAW,
        func::VOLTAGE_SET => steps(m.voltage_set, STEPS_PER_VOLT),
        func::CURRENT_SET => steps(m.current_set, STEPS_PER_AMP),
        func::OUTPUT => u32::from(m.output),
        func::VOLTAGE_OUT => steps(volts, STEPS_PER_VOLT),
        func::CURRENT_OUT => steps(amps, STEPS_PER_AMP),
        func::REGULATION => u32::from(m.in_current_limit()),
        func::TEMPERATURE => m.temperature.round() as u32,
        _ => return None,
    };
    Some(format!(":{address:02}r{function:02}={value}.\r\n").into_bytes())
}

/// The DPM86xx's Modbus register map.
pub struct Registers;

impl modbus::Registers for Registers {
    fn read(&self, m: &SupplyModel, register: u16) -> Option<u16> {
        let (volts, amps) = m.measured();
        Some(match register {
            reg::VOLTAGE_SET => raw(m.voltage_set, STEPS_PER_VOLT),
            reg::CURRENT_SET => raw(m.current_set, STEPS_PER_AMP),
            reg::OUTPUT => u16::from(m.output),
            reg::REGULATION => match (m.output, m.in_current_limit()) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => 2,
            },
            reg::VOLTAGE_OUT => raw(volts, STEPS_PER_VOLT),
            reg::CURRENT_OUT => raw(amps, STEPS_PER_AMP),
            reg::TEMPERATURE => m.temperature.round() as u16,
            _ => return None,
        })
    }

    fn write(&self, m: &mut SupplyModel, register: u16, value: u16, events: &Events) -> bool {
        let value = f64::from(value);
        match register {
            reg::VOLTAGE_SET => set_voltage(m, value / STEPS_PER_VOLT, events),
            reg::CURRENT_SET => set_current(m, value / STEPS_PER_AMP, events),
            reg::OUTPUT => set_output(m, value != 0.0, events),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::sim::supply::modbus::with_crc;
    use crate::sim::supply::tests::recorder;

    #[test]
    fn function_and_register_numbers_are_the_documented_ones() {
        // power-supplies.md, the ASCII "Functions" table and the Modbus register table.
        use func::*;
        assert_eq!(
            [
                MAX_VOLTAGE,
                MAX_CURRENT,
                VOLTAGE_SET,
                CURRENT_SET,
                OUTPUT,
                VOLTAGE_AND_CURRENT,
                VOLTAGE_OUT,
                CURRENT_OUT,
                REGULATION,
                TEMPERATURE
            ],
            [0, 1, 10, 11, 12, 20, 30, 31, 32, 33]
        );
        assert_eq!(
            [
                reg::VOLTAGE_SET,
                reg::CURRENT_SET,
                reg::OUTPUT,
                reg::REGULATION,
                reg::VOLTAGE_OUT,
                reg::CURRENT_OUT,
                reg::TEMPERATURE
            ],
            [0x0000, 0x0001, 0x0002, 0x1000, 0x1001, 0x1002, 0x1003]
        );
    }

    #[test]
    fn parses_the_documented_requests() {
        let request = |address, write, function, values: &[u32]| Request {
            address,
            write,
            function,
            values: values.to_vec(),
        };
        assert_eq!(
            parse_request(b":01w10=1234,"),
            Some(request(1, true, 10, &[1234]))
        );
        assert_eq!(
            parse_request(b":01r30=0,\r"),
            Some(request(1, false, 30, &[0]))
        );
        assert_eq!(
            parse_request(b":01w20=500,2000,"),
            Some(request(1, true, 20, &[500, 2000]))
        );
        assert_eq!(
            parse_request(b":99w12=1"),
            Some(request(99, true, 12, &[1]))
        );
        for bad in [
            &b"01r30=0,"[..],
            b":01x30=0,",
            b":1r30=0,",
            b":01r3=0,",
            b":01r30 0,",
            b":01w10=12a4,",
            b":01w10=+5,",
            b":01w10=1234567890,",
            b":0",
            b"",
            "：01r30=0,".as_bytes(),
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }

    /// A DPM at address 01 with a 1 kΩ load, and its event lines.
    fn unit() -> (Shared, Events, Arc<Mutex<Vec<String>>>) {
        let model = Arc::new(Mutex::new(SupplyModel {
            load_ohms: 1000.0,
            ..Default::default()
        }));
        let (events, lines) = recorder();
        (model, events, lines)
    }

    fn ascii(model: &Shared, events: &Events, line: &[u8]) -> (usize, Option<String>) {
        let (used, reply) = ascii_step(line, 1, model, events);
        (used, reply.map(|r| String::from_utf8(r).unwrap()))
    }

    #[test]
    fn ascii_writes_and_reads_as_documented() {
        let (model, events, lines) = unit();
        let ok = Some(":01ok\r\n".to_string());
        // The doc's examples: `:01w10=1234,` sets 12.34 V; `:01w20=500,2000,` sets 5.00 V and
        // 2.000 A; then 53.39 V, which `:01r30=0,` reads back as `:01r30=5339.`.
        assert_eq!(ascii(&model, &events, b":01w10=1234,\n"), (13, ok.clone()));
        assert_eq!(model.lock().unwrap().voltage_set, 12.34);
        assert_eq!(
            ascii(&model, &events, b":01w20=500,2000,\r\n"),
            (18, ok.clone())
        );
        let m = model.lock().unwrap().clone();
        assert_eq!((m.voltage_set, m.current_set), (5.0, 2.0));
        assert_eq!(ascii(&model, &events, b":01w10=5339,\n").1, ok);
        assert_eq!(ascii(&model, &events, b":01w11=100,\n").1, ok);
        assert_eq!(ascii(&model, &events, b":01w12=1,\n").1, ok);
        let read = |f: &str| ascii(&model, &events, format!(":01r{f}=0,\r\n").as_bytes()).1;
        assert_eq!(read("30"), Some(":01r30=5339.\r\n".to_string()));
        // 53.39 V into 1 kΩ: 53.39 mA, under the 100 mA limit: CV.
        assert_eq!(read("31"), Some(":01r31=53.\r\n".to_string()));
        assert_eq!(read("32"), Some(":01r32=0.\r\n".to_string()));
        assert_eq!(read("33"), Some(":01r33=27.\r\n".to_string()));
        assert_eq!(read("10"), Some(":01r10=5339.\r\n".to_string()));
        assert_eq!(read("11"), Some(":01r11=100.\r\n".to_string()));
        assert_eq!(read("12"), Some(":01r12=1.\r\n".to_string()));
        assert_eq!(read("00"), Some(":01r00=6000.\r\n".to_string()));
        assert_eq!(read("01"), Some(":01r01=5000.\r\n".to_string()));
        // A 10 mA limit holds it: CC.
        assert_eq!(ascii(&model, &events, b":01w11=10,\n").1, ok);
        assert_eq!(read("32"), Some(":01r32=1.\r\n".to_string()));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "set voltage 12.34",
                "set voltage 5.00",
                "set current 2.000",
                "set voltage 53.39",
                "set current 0.100",
                "output on at 53.39 V",
                "set current 0.010",
            ]
        );
    }

    #[test]
    fn ascii_stays_silent_where_the_unit_would() {
        let (model, events, lines) = unit();
        // Not complete yet.
        assert_eq!(ascii(&model, &events, b":01w10=1234,"), (0, None));
        // Another unit's request, a read-only function written, an unknown function.
        assert_eq!(ascii(&model, &events, b":02w10=1234,\n"), (13, None));
        assert_eq!(ascii(&model, &events, b":01w30=1234,\n"), (13, None));
        assert_eq!(ascii(&model, &events, b":01r20=0,\n"), (10, None));
        assert_eq!(ascii(&model, &events, b"garbage\n"), (8, None));
        // A line too long to be a request is dropped whole.
        assert_eq!(ascii(&model, &events, &[b'x'; 200]), (200, None));
        assert!(lines.lock().unwrap().is_empty());
    }

    #[test]
    fn modbus_register_map_is_the_documented_one() {
        let model = Arc::new(Mutex::new(SupplyModel::default())); // 10 Ω load
        let (events, lines) = recorder();
        let exchange = |request: Vec<u8>| {
            let request = with_crc(request);
            let (used, reply) = modbus::step(&request, 1, &Registers, &model, &events);
            assert_eq!(used, request.len());
            reply.unwrap()
        };
        // 0x0000 = 510 (5.10 V), 0x0001 = 2000 (2.000 A), 0x0002 = 1 (on): echoed.
        for request in [
            vec![0x01, 0x06, 0x00, 0x00, 0x01, 0xfe],
            vec![0x01, 0x06, 0x00, 0x01, 0x07, 0xd0],
            vec![0x01, 0x06, 0x00, 0x02, 0x00, 0x01],
        ] {
            assert_eq!(exchange(request.clone()), with_crc(request));
        }
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x03]),
            with_crc(vec![0x01, 0x03, 0x06, 0x01, 0xfe, 0x07, 0xd0, 0x00, 0x01])
        );
        // 0x1000..0x1003: CV (1), 5.10 V (510), 0.510 A (510), 27 °C.
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x10, 0x00, 0x00, 0x04]),
            with_crc(vec![
                0x01, 0x03, 0x08, 0x00, 0x01, 0x01, 0xfe, 0x01, 0xfe, 0x00, 0x1b
            ])
        );
        // No register 0x0003 or 0x1004; the measurements are read-only.
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x00, 0x03, 0x00, 0x01]),
            with_crc(vec![0x01, 0x83, 0x02])
        );
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x10, 0x04, 0x00, 0x01]),
            with_crc(vec![0x01, 0x83, 0x02])
        );
        assert_eq!(
            exchange(vec![0x01, 0x06, 0x10, 0x01, 0x00, 0x01]),
            with_crc(vec![0x01, 0x86, 0x02])
        );
        // A 0.2 A limit holds 5.10 V into 10 Ω: CC (2) at 2.00 V; output off: 0.
        exchange(vec![0x01, 0x06, 0x00, 0x01, 0x00, 0xc8]);
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x10, 0x00, 0x00, 0x03]),
            with_crc(vec![0x01, 0x03, 0x06, 0x00, 0x02, 0x00, 0xc8, 0x00, 0xc8])
        );
        exchange(vec![0x01, 0x06, 0x00, 0x02, 0x00, 0x00]);
        assert_eq!(
            exchange(vec![0x01, 0x03, 0x10, 0x00, 0x00, 0x01]),
            with_crc(vec![0x01, 0x03, 0x02, 0x00, 0x00])
        );
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "set voltage 5.10",
                "set current 2.000",
                "output on at 5.10 V",
                "set current 0.200",
                "output off at 5.10 V",
            ]
        );
    }
}
