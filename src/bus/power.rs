//! `org.rtmd.Dut1.Power`: switching and, for lab supplies, setpoints, profiles and
//! measurements. Methods return once the hardware has confirmed; properties mirror the power
//! task's status and change with `PropertiesChanged`.

use std::time::Duration;

use zbus::{Connection, interface};

use super::access::BusGate;
use super::{Error, MAX_CYCLE_OFF, PATH};
use crate::access::{Permit, clip};
use crate::power::{Power, PowerStatus};

pub struct PowerIface {
    power: Power,
    gate: BusGate,
}

impl PowerIface {
    pub fn new(power: Power, gate: BusGate) -> Self {
        PowerIface { power, gate }
    }

    fn status(&self) -> PowerStatus {
        self.power.status()
    }

    async fn cycle_for(&self, permit: &Permit, off_ms: u32) -> Result<(), Error> {
        let off = Duration::from_millis(u64::from(off_ms));
        if off > MAX_CYCLE_OFF {
            return Err(Error::InvalidArgs(format!(
                "off_ms {off_ms} is longer than {} s",
                MAX_CYCLE_OFF.as_secs()
            )));
        }
        self.power
            .cycle(permit, (off_ms > 0).then_some(off))
            .await?;
        Ok(())
    }

    /// A supply-only property: an error on a plain switch (GetAll then leaves it out).
    fn supply_value(&self, value: impl Fn(&PowerStatus) -> f64) -> Result<f64, Error> {
        if self.power.limits().is_none() {
            return Err(Error::NotConfigured(format!(
                "the {} backend has no setpoints or measurements",
                self.power.backend()
            )));
        }
        Ok(value(&self.status()))
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Power")]
impl PowerIface {
    gated {
        #[gated("Power.On", String::new())]
        /// Switches on; returns when the hardware reports on.
        async fn on(&self) -> Result<(), Error> |permit| {
            self.power.on(&permit).await?;
            Ok(())
        }

        #[gated("Power.Off", String::new())]
        async fn off(&self) -> Result<(), Error> |permit| {
            self.power.off(&permit).await?;
            Ok(())
        }

        #[gated("Power.Cycle", format!("{off_ms} ms"))]
        /// Off, wait `off_ms` (0: the configured `cycle_off_ms`), on.
        async fn cycle(&self, off_ms: u32) -> Result<(), Error> |permit| {
            self.cycle_for(&permit, off_ms).await
        }

        #[gated("Power.SetVoltage", format!("{volts} V"))]
        async fn set_voltage(&self, volts: f64) -> Result<(), Error> |permit| {
            Ok(self.power.set_voltage(&permit, volts).await?)
        }

        #[gated("Power.SetCurrentLimit", format!("{amps} A"))]
        async fn set_current_limit(&self, amps: f64) -> Result<(), Error> |permit| {
            Ok(self.power.set_current_limit(&permit, amps).await?)
        }

        #[gated("Power.ApplyProfile", clip(name, 64))]
        #[zbus(out_args("volts"))]
        async fn apply_profile(&self, name: &str) -> Result<f64, Error> |permit| {
            Ok(self.power.apply_profile(&permit, name).await?)
        }
    }

    /// Reads the state from the hardware without switching (an extension of the contract).
    #[zbus(out_args("state"))]
    async fn refresh(&self) -> Result<String, Error> {
        Ok(self.power.refresh().await?.as_str().to_string())
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.status().state.as_str().to_string()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn backend(&self) -> &str {
        self.power.backend()
    }

    /// The last failure of the hardware, empty after a success.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.status().last_error.unwrap_or_default()
    }

    #[zbus(property)]
    fn voltage_setpoint(&self) -> Result<f64, Error> {
        self.supply_value(|s| s.voltage_setpoint)
    }

    #[zbus(property)]
    fn current_limit(&self) -> Result<f64, Error> {
        self.supply_value(|s| s.current_limit)
    }

    /// Measured output voltage (NaN until the first measurement).
    #[zbus(property)]
    fn voltage(&self) -> Result<f64, Error> {
        self.supply_value(|s| s.measured.map_or(f64::NAN, |m| m.voltage))
    }

    #[zbus(property)]
    fn current(&self) -> Result<f64, Error> {
        self.supply_value(|s| s.measured.map_or(f64::NAN, |m| m.current))
    }

    #[zbus(property)]
    fn temperature(&self) -> Result<f64, Error> {
        self.supply_value(|s| s.measured.and_then(|m| m.temperature).unwrap_or(f64::NAN))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn profiles(&self) -> Vec<String> {
        self.power
            .limits()
            .map(|l| l.profiles.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn voltage_range(&self) -> Result<(f64, f64), Error> {
        let limits = self
            .power
            .limits()
            .ok_or_else(|| Error::NotConfigured("not a lab supply".to_string()))?;
        Ok(limits.voltage_range)
    }
}
}

/// Emits `PropertiesChanged` for every field of the power status that changes, whoever
/// caused it (a method call, the measurement poll, a failed retry).
pub async fn spawn_change_signals(connection: &Connection, power: Power) -> zbus::Result<()> {
    let iface = connection
        .object_server()
        .interface::<_, PowerIface>(PATH)
        .await?;
    let mut rx = power.subscribe();
    let mut last = rx.borrow().clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            let emitter = iface.signal_emitter();
            let i = iface.get().await;
            // Errors here mean the connection is gone; the daemon notices that elsewhere.
            if now.state != last.state {
                let _ = i.state_changed(emitter).await;
            }
            if now.last_error != last.last_error {
                let _ = i.last_error_changed(emitter).await;
            }
            if power.limits().is_some() {
                if now.voltage_setpoint != last.voltage_setpoint {
                    let _ = i.voltage_setpoint_changed(emitter).await;
                }
                if now.current_limit != last.current_limit {
                    let _ = i.current_limit_changed(emitter).await;
                }
                let (a, b) = (
                    now.measured.unwrap_or_default(),
                    last.measured.unwrap_or_default(),
                );
                if a.voltage != b.voltage {
                    let _ = i.voltage_changed(emitter).await;
                }
                if a.current != b.current {
                    let _ = i.current_changed(emitter).await;
                }
                if a.temperature != b.temperature {
                    let _ = i.temperature_changed(emitter).await;
                }
            }
            last = now;
        }
    });
    Ok(())
}
