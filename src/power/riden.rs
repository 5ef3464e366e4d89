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

pub fn to_raw(value: f64, per_unit: f64) -> u16 {
    (value * per_unit).round().clamp(0.0, f64::from(u16::MAX)) as u16
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
        let id = self.link.read(reg::MODEL, 1).await?[0];
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
        output_state(self.link.read(reg::OUTPUT, 1).await?[0])
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
            .write(reg::VOLTAGE_SET, to_raw(volts, s.volts))
            .await
    }

    async fn set_current_limit(&mut self, amps: f64) -> Result<(), PowerError> {
        let s = self.scale().await?;
        self.link
            .write(reg::CURRENT_SET, to_raw(amps, s.amps))
            .await
    }

    async fn measure(&mut self) -> Result<Measurement, PowerError> {
        let s = self.scale().await?;
        // Registers 8..=18 in one request: setpoints, measurements, output.
        let w = self.link.read(reg::VOLTAGE_SET, 11).await?;
        let at = |r: u16| f64::from(w[usize::from(r - reg::VOLTAGE_SET)]);
        Ok(Measurement {
            voltage: at(reg::VOLTAGE_OUT) / s.volts,
            current: at(reg::CURRENT_OUT) / s.amps,
            temperature: None,
            output_on: Some(at(reg::OUTPUT) == 1.0),
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
        assert_eq!(to_raw(5.1, 1000.0), 5100);
    }
}
