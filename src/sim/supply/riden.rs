//! The Riden RD60xx as the simulator plays it: its Modbus register table and the scaling that
//! the model id in register 0 implies.
//!
//! Part of the simulator's independent witness (see [`super`]): the table and the model ids
//! are copied from `docs/protocols/power-supplies.md` ("Riden RD6006 / RD60xx"), none from
//! `crate::power::riden`.

use super::modbus;
use super::{Events, SupplyModel, raw, set_current, set_output, set_voltage};

/// Holding registers.
pub mod reg {
    /// Model id (60061/60062 RD6006, 60065 RD6006P, 60121 RD6012, 60181 RD6018, 60241 RD6024).
    pub const MODEL: u16 = 0;
    pub const VOLTAGE_SET: u16 = 8;
    pub const CURRENT_SET: u16 = 9;
    /// Output voltage, measured.
    pub const VOLTAGE_OUT: u16 = 10;
    /// Output current, measured.
    pub const CURRENT_OUT: u16 = 11;
    /// Output power, 0.01 W.
    pub const POWER_OUT: u16 = 13;
    /// Input voltage, 0.01 V.
    pub const VOLTAGE_IN: u16 = 14;
    /// Protection tripped: 1 OVP, 2 OCP.
    pub const PROTECTION: u16 = 16;
    /// Regulation: 0 CV, 1 CC.
    pub const REGULATION: u16 = 17;
    /// Output enable 0/1.
    pub const OUTPUT: u16 = 18;
    /// Protection thresholds.
    pub const OVP: u16 = 82;
    pub const OCP: u16 = 83;
}

/// Raw steps per volt and per ampere of a model ("Scaling"), by the documented model ids.
pub fn steps(model_id: u16) -> Option<(f64, f64)> {
    match model_id {
        // RD6006: V/100, I/1000.
        60061 | 60062 => Some((100.0, 1000.0)),
        // RD6006P: V/1000, I/10000.
        60065 => Some((1000.0, 10000.0)),
        // RD6012, RD6018, RD6024: V/100, I/100.
        60121 | 60181 | 60241 => Some((100.0, 100.0)),
        _ => None,
    }
}

/// What register 14 reports: the 24 V bench adapter feeding the simulated unit, 0.01 V.
const INPUT_CENTIVOLTS: u16 = 2400;
/// Power in register 13 is in 0.01 W whatever the model.
const STEPS_PER_WATT: f64 = 100.0;

/// One Riden's registers.
pub struct Registers {
    model_id: u16,
    volts: f64,
    amps: f64,
}

impl Registers {
    /// A model id the doc does not list still reads back as itself (a client must refuse
    /// it); the unit then scales like the RD6006.
    pub fn new(model_id: u16) -> Self {
        let (volts, amps) = steps(model_id).unwrap_or((100.0, 1000.0));
        Registers {
            model_id,
            volts,
            amps,
        }
    }
}

impl modbus::Registers for Registers {
    fn read(&self, m: &SupplyModel, register: u16) -> Option<u16> {
        let (volts, amps) = m.measured();
        Some(match register {
            reg::MODEL => self.model_id,
            reg::VOLTAGE_SET => raw(m.voltage_set, self.volts),
            reg::CURRENT_SET => raw(m.current_set, self.amps),
            reg::VOLTAGE_OUT => raw(volts, self.volts),
            reg::CURRENT_OUT => raw(amps, self.amps),
            reg::POWER_OUT => raw(volts * amps, STEPS_PER_WATT),
            reg::VOLTAGE_IN => INPUT_CENTIVOLTS,
            reg::REGULATION => u16::from(m.in_current_limit()),
            reg::OUTPUT => u16::from(m.output),
            // Nothing trips (PROTECTION), no thresholds are set (OVP, OCP), and the rest of
            // the register block up to 99 reads as zero.
            reg::PROTECTION | reg::OVP | reg::OCP | 1..=99 => 0,
            _ => return None,
        })
    }

    fn write(&self, m: &mut SupplyModel, register: u16, value: u16, events: &Events) -> bool {
        let value = f64::from(value);
        match register {
            reg::VOLTAGE_SET => set_voltage(m, value / self.volts, events),
            reg::CURRENT_SET => set_current(m, value / self.amps, events),
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
    use crate::sim::supply::Shared;
    use crate::sim::supply::modbus::with_crc;
    use crate::sim::supply::tests::recorder;

    #[test]
    fn register_numbers_are_the_documented_ones() {
        // power-supplies.md, the Riden register table.
        use reg::*;
        assert_eq!(
            [
                MODEL,
                VOLTAGE_SET,
                CURRENT_SET,
                VOLTAGE_OUT,
                CURRENT_OUT,
                POWER_OUT,
                VOLTAGE_IN,
                PROTECTION,
                REGULATION,
                OUTPUT,
                OVP,
                OCP
            ],
            [0, 8, 9, 10, 11, 13, 14, 16, 17, 18, 82, 83]
        );
    }

    #[test]
    fn scaling_by_the_documented_model_ids() {
        // "RD6006 V/100, I/1000; RD6006P V/1000, I/10000; RD6012/6018/6024 V/100, I/100."
        for (id, expected) in [
            (60061, Some((100.0, 1000.0))),
            (60062, Some((100.0, 1000.0))),
            (60065, Some((1000.0, 10000.0))),
            (60121, Some((100.0, 100.0))),
            (60181, Some((100.0, 100.0))),
            (60241, Some((100.0, 100.0))),
            (60999, None),
            (0, None),
        ] {
            assert_eq!(steps(id), expected, "{id}");
        }
    }

    fn exchange(unit: &Registers, model: &Shared, events: &Events, request: Vec<u8>) -> Vec<u8> {
        let request = with_crc(request);
        let (used, reply) = modbus::step(&request, 1, unit, model, events);
        assert_eq!(used, request.len());
        reply.unwrap()
    }

    #[test]
    fn an_rd6006p_on_the_wire() {
        let unit = Registers::new(60065);
        let model: Shared = Arc::new(Mutex::new(SupplyModel::default())); // 10 Ω load
        let (events, lines) = recorder();
        let x = |request| exchange(&unit, &model, &events, request);
        // Register 0: 60065 = 0xEAA1.
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x01]),
            with_crc(vec![0x01, 0x03, 0x02, 0xea, 0xa1])
        );
        // 8 = 5100 (5.100 V at V/1000), 9 = 10000 (1.0000 A at I/10000), 18 = 1: echoed.
        for request in [
            vec![0x01, 0x06, 0x00, 0x08, 0x13, 0xec],
            vec![0x01, 0x06, 0x00, 0x09, 0x27, 0x10],
            vec![0x01, 0x06, 0x00, 0x12, 0x00, 0x01],
        ] {
            assert_eq!(x(request.clone()), with_crc(request));
        }
        // 8..=18: setpoints 5100 and 10000; 5.100 V (5100) and 0.5100 A (5100) measured;
        // 12 zero; 2.601 W as 260 (0.01 W); 24.00 V in (2400); 15, 16 zero; CV (0); on (1).
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x08, 0x00, 0x0b]),
            with_crc(vec![
                0x01, 0x03, 0x16, 0x13, 0xec, 0x27, 0x10, 0x13, 0xec, 0x13, 0xec, 0x00, 0x00, 0x01,
                0x04, 0x09, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01
            ])
        );
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "set voltage 5.10",
                "set current 1.000",
                "output on at 5.10 V"
            ]
        );
    }

    #[test]
    fn current_limit_and_protection_registers() {
        // An RD6012 (I/100): 9 = 20 is 0.20 A, which holds 5.00 V into 10 Ω: CC at 2.00 V.
        let unit = Registers::new(60121);
        let model: Shared = Arc::new(Mutex::new(SupplyModel::default()));
        let (events, _) = recorder();
        let x = |request| exchange(&unit, &model, &events, request);
        x(vec![0x01, 0x06, 0x00, 0x08, 0x01, 0xf4]);
        x(vec![0x01, 0x06, 0x00, 0x09, 0x00, 0x14]);
        x(vec![0x01, 0x06, 0x00, 0x12, 0x00, 0x01]);
        assert_eq!(model.lock().unwrap().current_set, 0.2);
        // 10, 11: 2.00 V (200), 0.20 A (20); 17: CC (1).
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x0a, 0x00, 0x02]),
            with_crc(vec![0x01, 0x03, 0x04, 0x00, 0xc8, 0x00, 0x14])
        );
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x11, 0x00, 0x01]),
            with_crc(vec![0x01, 0x03, 0x02, 0x00, 0x01])
        );
        // 16 (nothing tripped), 82, 83 read as zero; there is no register 100; the
        // measurements cannot be written.
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x52, 0x00, 0x02]),
            with_crc(vec![0x01, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00])
        );
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x10, 0x00, 0x01]),
            with_crc(vec![0x01, 0x03, 0x02, 0x00, 0x00])
        );
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x64, 0x00, 0x01]),
            with_crc(vec![0x01, 0x83, 0x02])
        );
        assert_eq!(
            x(vec![0x01, 0x06, 0x00, 0x0a, 0x00, 0x01]),
            with_crc(vec![0x01, 0x86, 0x02])
        );
    }

    #[test]
    fn an_rd6006_scales_currents_by_a_thousand() {
        // 60061 = 0xEA9D; 9 = 1500 is 1.500 A at I/1000.
        let unit = Registers::new(60061);
        let model: Shared = Arc::new(Mutex::new(SupplyModel::default()));
        let (events, _) = recorder();
        let x = |request| exchange(&unit, &model, &events, request);
        assert_eq!(
            x(vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x01]),
            with_crc(vec![0x01, 0x03, 0x02, 0xea, 0x9d])
        );
        x(vec![0x01, 0x06, 0x00, 0x09, 0x05, 0xdc]);
        assert_eq!(model.lock().unwrap().current_set, 1.5);
    }
}
