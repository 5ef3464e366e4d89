//! Riden RD60xx supplies over Modbus RTU (`docs/protocols/power-supplies.md`). The model id
//! in register 0 decides the scaling of voltages and currents; it is read once per connection.

use async_trait::async_trait;

use super::serial::ModbusLink;
use super::{Measurement, PowerError, PowerState, PowerSupply, PowerSwitch, output_state};
use crate::config::SupplyConfig;

pub mod reg {
    pub const MODEL: u16 = 0;
    pub const VOLTAGE_SET: u16 = 8;
    pub const CURRENT_SET: u16 = 9;
    pub const VOLTAGE_OUT: u16 = 10;
    pub const CURRENT_OUT: u16 = 11;
    pub const OUTPUT: u16 = 18;
}

/// Raw units per volt and per ampere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub volts: f64,
    pub amps: f64,
}

/// The scaling of a model id, or `None` for a model we do not know.
pub fn scale(model_id: u16) -> Option<Scale> {
    match model_id / 10 {
        6006 if model_id == 60065 => Some(Scale {
            volts: 1000.0,
            amps: 10000.0,
        }),
        6006 => Some(Scale {
            volts: 100.0,
            amps: 1000.0,
        }),
        6012 | 6018 | 6024 => Some(Scale {
            volts: 100.0,
            amps: 100.0,
        }),
        _ => None,
    }
}

/// A setpoint in register units, or `OutOfRange` when this model's register cannot carry it
/// (10 A on an RD6006P, whose current register counts 0.1 mA, would otherwise be written as
/// 6.5535 A). The config's range is checked before; this catches what the model decides.
pub fn to_raw(value: f64, per_unit: f64, unit: &str) -> Result<u16, PowerError> {
    let raw = (value * per_unit).round();
    if !(0.0..=f64::from(u16::MAX)).contains(&raw) {
        return Err(PowerError::OutOfRange(format!(
            "{value} {unit} is beyond what this Riden model takes (at most {:.4} {unit})",
            f64::from(u16::MAX) / per_unit
        )));
    }
    Ok(raw as u16)
}

pub struct Riden {
    link: ModbusLink,
    scale: Option<Scale>,
}

impl Riden {
    pub fn new(config: &SupplyConfig) -> Self {
        Riden {
            link: ModbusLink::new(&config.device, config.baud, config.address),
            scale: None,
        }
    }

    async fn scale(&mut self) -> Result<Scale, PowerError> {
        if let Some(s) = self.scale {
            return Ok(s);
        }
        let [id] = self.link.read(reg::MODEL).await?;
        let s = scale(id).ok_or_else(|| {
            PowerError::Refused(format!(
                "unknown Riden model id {id}: cannot scale its values"
            ))
        })?;
        self.scale = Some(s);
        Ok(s)
    }
}

#[async_trait]
impl PowerSwitch for Riden {
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        self.link.write(reg::OUTPUT, u16::from(on)).await?;
        self.state().await
    }

    async fn state(&mut self) -> Result<PowerState, PowerError> {
        let [output] = self.link.read(reg::OUTPUT).await?;
        output_state(output)
    }

    fn as_supply(&mut self) -> Option<&mut dyn PowerSupply> {
        Some(self)
    }
}

#[async_trait]
impl PowerSupply for Riden {
    async fn set_voltage(&mut self, volts: f64) -> Result<(), PowerError> {
        let s = self.scale().await?;
        self.link
            .write(reg::VOLTAGE_SET, to_raw(volts, s.volts, "V")?)
            .await
    }

    async fn set_current_limit(&mut self, amps: f64) -> Result<(), PowerError> {
        let s = self.scale().await?;
        self.link
            .write(reg::CURRENT_SET, to_raw(amps, s.amps, "A")?)
            .await
    }

    async fn measure(&mut self) -> Result<Measurement, PowerError> {
        let s = self.scale().await?;
        // Registers 8..=18 in one request: setpoints (8, 9), measurements (10, 11), then
        // six we do not use, then the output (18).
        let [_v_set, _i_set, v_out, i_out, _, _, _, _, _, _, output] =
            self.link.read(reg::VOLTAGE_SET).await?;
        Ok(Measurement {
            voltage: f64::from(v_out) / s.volts,
            current: f64::from(i_out) / s.amps,
            temperature: None,
            output_on: Some(output == 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_by_model() {
        assert_eq!(
            scale(60061),
            Some(Scale {
                volts: 100.0,
                amps: 1000.0
            })
        );
        assert_eq!(
            scale(60062),
            Some(Scale {
                volts: 100.0,
                amps: 1000.0
            })
        );
        assert_eq!(
            scale(60065),
            Some(Scale {
                volts: 1000.0,
                amps: 10000.0
            })
        );
        assert_eq!(
            scale(60121),
            Some(Scale {
                volts: 100.0,
                amps: 100.0
            })
        );
        assert_eq!(
            scale(60181),
            Some(Scale {
                volts: 100.0,
                amps: 100.0
            })
        );
        assert_eq!(
            scale(60241),
            Some(Scale {
                volts: 100.0,
                amps: 100.0
            })
        );
        assert_eq!(scale(12345), None);
        assert_eq!(to_raw(5.1, 1000.0, "V").unwrap(), 5100);
        // An RD6006P counts current in 0.1 mA: 10 A does not fit, and is refused, not
        // clamped to 6.5535 A.
        assert!(matches!(
            to_raw(10.0, 10000.0, "A"),
            Err(PowerError::OutOfRange(m)) if m.contains("at most 6.5535 A")
        ));
        assert!(matches!(
            to_raw(-0.1, 100.0, "V"),
            Err(PowerError::OutOfRange(_))
        ));
    }

    use crate::power::dpm86xx::tests::{rtu, scripted_port, supply_config};

    #[test]
    fn register_numbers_are_the_documented_ones() {
        // docs/protocols/power-supplies.md, the Riden register table.
        assert_eq!(
            [
                reg::MODEL,
                reg::VOLTAGE_SET,
                reg::CURRENT_SET,
                reg::VOLTAGE_OUT,
                reg::CURRENT_OUT,
                reg::OUTPUT
            ],
            [0, 8, 9, 10, 11, 18]
        );
    }

    /// A write of one register (0x06) and its echo.
    fn write(register: u16, value: u16) -> (Vec<u8>, Vec<u8>) {
        let [rh, rl] = register.to_be_bytes();
        let [vh, vl] = value.to_be_bytes();
        let frame = rtu(&[0x01, 0x06, rh, rl, vh, vl]);
        (frame.clone(), frame)
    }

    /// Reading register 0 and its answer, `model_id`.
    fn model(model_id: u16) -> (Vec<u8>, Vec<u8>) {
        let [h, l] = model_id.to_be_bytes();
        (
            rtu(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01]),
            rtu(&[0x01, 0x03, 0x02, h, l]),
        )
    }

    #[tokio::test]
    async fn an_rd6006p_on_the_wire() {
        // 60065 = 0xEAA1, the RD6006P: V/1000, I/10000.
        let port = scripted_port(vec![
            model(0xeaa1),
            // 8 = 5100 (5.1 V), 9 = 10000 (1.0 A), 18 = 1.
            write(8, 5100),
            write(9, 10000),
            write(18, 1),
            (
                rtu(&[0x01, 0x03, 0x00, 0x12, 0x00, 0x01]),
                rtu(&[0x01, 0x03, 0x02, 0x00, 0x01]),
            ),
            // 8..=18: setpoints 5100, 10000; measured 5098 (5.098 V), 5100 (0.51 A); 12;
            // 13 power; 14 input; 15; 16; 17 CV; 18 on.
            (
                rtu(&[0x01, 0x03, 0x00, 0x08, 0x00, 0x0b]),
                rtu(&[
                    0x01, 0x03, 0x16, 0x13, 0xec, 0x27, 0x10, 0x13, 0xea, 0x13, 0xec, 0x00, 0x00,
                    0x01, 0x04, 0x09, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
                ]),
            ),
        ]);
        let mut riden = Riden::new(&supply_config(&port.path));
        let result = async {
            riden.set_voltage(5.1).await?;
            riden.set_current_limit(1.0).await?;
            let state = riden.switch(true).await?;
            let measurement = riden.measure().await?;
            Ok::<_, PowerError>((state, measurement))
        }
        .await;
        let far_end = port.outcome();
        let (state, m) = result.unwrap_or_else(|e| panic!("{e}; the far end: {far_end:?}"));
        assert_eq!(far_end, Ok(()));
        assert_eq!(state, PowerState::On);
        assert_eq!(
            (m.voltage, m.current, m.temperature, m.output_on),
            (5.098, 0.51, None, Some(true))
        );
    }

    #[tokio::test]
    async fn scaling_follows_the_model_id_on_the_wire() {
        // 60061 = 0xEA9D (RD6006, V/100 I/1000), 60121 = 0xEAD9 (RD6012, V/100 I/100):
        // 5.1 V and 1.5 A as (510, 1500) and (510, 150).
        for (id, volts, amps) in [(0xea9d, 510, 1500), (0xead9, 510, 150)] {
            let port = scripted_port(vec![model(id), write(8, volts), write(9, amps)]);
            let mut riden = Riden::new(&supply_config(&port.path));
            let result = async {
                riden.set_voltage(5.1).await?;
                riden.set_current_limit(1.5).await
            }
            .await;
            let far_end = port.outcome();
            result.unwrap_or_else(|e| panic!("{id}: {e}; the far end: {far_end:?}"));
            assert_eq!(far_end, Ok(()), "{id}");
        }
    }

    #[tokio::test]
    async fn an_unknown_model_gets_no_setpoint() {
        // 60999 = 0xEE47 is in no table: refused after reading register 0, nothing written.
        let port = scripted_port(vec![model(0xee47)]);
        let mut riden = Riden::new(&supply_config(&port.path));
        let result = riden.set_voltage(5.1).await;
        assert_eq!(port.outcome(), Ok(()));
        assert!(matches!(result, Err(PowerError::Refused(_))), "{result:?}");
    }
}
