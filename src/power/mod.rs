//! Board power: the hardware traits, the backends, and [`Power`], the one task that owns the
//! configured device.
//!
//! Every request (switch, setpoint, measurement poll) goes through one task, so two callers
//! never interleave frames on one wire and the strip or supply sees one session at a time.
//! That task also retries transient failures with backoff, bounds every attempt with the
//! configured timeout, refuses out-of-range setpoints before anything reaches the wire, and
//! publishes what it knows in a [`PowerStatus`] watch channel that the D-Bus layer mirrors
//! into properties.

pub mod command;
pub mod dpm86xx;
pub mod egpms;
pub mod pdudaemon;
pub mod riden;
mod serial;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::access::Permit;
use crate::config::{BackendConfig, PowerConfig, SupplyConfig};

/// The state of the board's power as the hardware last confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        }
    }

    fn from_bool(on: bool) -> Self {
        if on { PowerState::On } else { PowerState::Off }
    }
}

/// What can go wrong with power. The D-Bus layer maps each kind to a named error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerError {
    /// The device did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The transport failed (connection refused, reset, device gone).
    #[error("{0}")]
    Io(String),
    /// The device answered something we cannot accept (bad checksum, garbled frame).
    #[error("{0}")]
    Protocol(String),
    /// The device refused us (wrong password) or a command failed for good.
    #[error("{0}")]
    Refused(String),
    /// The device reports a state other than the one just commanded.
    #[error("{0}")]
    Mismatch(String),
    /// A setpoint outside the configured limits; nothing was sent.
    #[error("{0}")]
    OutOfRange(String),
    /// Not a number, or otherwise not an argument at all.
    #[error("{0}")]
    InvalidArgument(String),
    /// An unknown profile name.
    #[error("{0}")]
    NotFound(String),
    /// The configured backend cannot do this (e.g. set a voltage on a power strip).
    #[error("{0}")]
    NotSupported(String),
}

impl PowerError {
    /// Worth another attempt: the next one may well succeed.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            PowerError::Timeout(_) | PowerError::Io(_) | PowerError::Protocol(_)
        )
    }
}

/// Measured values of a lab supply.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurement {
    pub voltage: f64,
    pub current: f64,
    pub temperature: Option<f64>,
    /// The output state, when the supply reports it with the measurement.
    pub output_on: Option<bool>,
}

/// Something that switches the board's power: a strip outlet, a relay, a supply's output.
#[async_trait]
pub trait PowerSwitch: Send {
    /// Switches, then returns the state the hardware reports afterwards.
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError>;
    /// Reads the state without changing it.
    async fn state(&mut self) -> Result<PowerState, PowerError>;
    /// The supply interface, for backends that are programmable supplies.
    fn as_supply(&mut self) -> Option<&mut dyn PowerSupply> {
        None
    }
}

/// A programmable supply: setpoints and measurements besides the output switch.
/// Implementations write exactly what they are given; range checks are [`Power`]'s job.
#[async_trait]
pub trait PowerSupply: PowerSwitch {
    async fn set_voltage(&mut self, volts: f64) -> Result<(), PowerError>;
    async fn set_current_limit(&mut self, amps: f64) -> Result<(), PowerError>;
    async fn measure(&mut self) -> Result<Measurement, PowerError>;
}

/// Everything the power task knows, published after every change.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerStatus {
    pub state: PowerState,
    /// Supplies only: the setpoints in force (written to the device on the next switch-on).
    pub voltage_setpoint: f64,
    pub current_limit: f64,
    pub measured: Option<Measurement>,
    /// The last failure, cleared by the next success; shown in `STATUS=` and logs.
    pub last_error: Option<String>,
}

/// The limits a supply's setpoints are checked against, from the config.
#[derive(Debug, Clone)]
pub struct SupplyLimits {
    pub voltage_range: (f64, f64),
    pub max_current: f64,
    pub profiles: std::collections::BTreeMap<String, f64>,
}

impl SupplyLimits {
    fn from_config(c: &SupplyConfig) -> Self {
        SupplyLimits {
            voltage_range: c.voltage_range,
            max_current: c.max_current,
            profiles: c.profiles.clone(),
        }
    }

    /// Refuses a voltage setpoint that must never reach the wire.
    pub fn check_voltage(&self, volts: f64) -> Result<f64, PowerError> {
        let (lo, hi) = self.voltage_range;
        if !volts.is_finite() {
            return Err(PowerError::InvalidArgument(format!(
                "voltage {volts} is not a number"
            )));
        }
        if volts < lo || volts > hi {
            return Err(PowerError::OutOfRange(format!(
                "{volts} V is outside the board's voltage range {lo}..{hi} V; nothing was sent"
            )));
        }
        Ok(volts)
    }

    /// Refuses a current limit above the configured maximum.
    pub fn check_current(&self, amps: f64) -> Result<f64, PowerError> {
        if !amps.is_finite() {
            return Err(PowerError::InvalidArgument(format!(
                "current {amps} is not a number"
            )));
        }
        if amps <= 0.0 || amps > self.max_current {
            return Err(PowerError::OutOfRange(format!(
                "current limit {amps} A is outside 0..{} A; nothing was sent",
                self.max_current
            )));
        }
        Ok(amps)
    }

    pub fn profile(&self, name: &str) -> Result<f64, PowerError> {
        self.profiles.get(name).copied().ok_or_else(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            PowerError::NotFound(format!(
                "no power profile {name:?}; configured: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

/// Poll interval while a supply does not answer: polls must not crowd out real requests.
const POLL_WHILE_FAILING: Duration = Duration::from_secs(10);

enum Request {
    Switch(bool, oneshot::Sender<Result<PowerState, PowerError>>),
    Cycle(Duration, oneshot::Sender<Result<PowerState, PowerError>>),
    SetVoltage(f64, oneshot::Sender<Result<(), PowerError>>),
    SetCurrentLimit(f64, oneshot::Sender<Result<(), PowerError>>),
    /// Read the state; `true`: with the configured retries (a caller waits for the answer).
    Refresh(bool, oneshot::Sender<Result<PowerState, PowerError>>),
}

/// Handle to the power task. Cheap to clone; all clones talk to the same device owner.
#[derive(Clone)]
pub struct Power {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<PowerStatus>,
    backend: &'static str,
    limits: Option<SupplyLimits>,
    cycle_off: Duration,
    /// When the current hardware attempt started; `None` while idle. Read by the watchdog.
    busy_since: Arc<Mutex<Option<Instant>>>,
    attempt_bound: Duration,
}

impl Power {
    /// Builds the configured backend and spawns its owner task. Touches no hardware.
    pub fn spawn(config: &PowerConfig) -> Power {
        let (device, limits, initial): (Box<dyn PowerSwitch>, _, _) = match &config.backend {
            BackendConfig::Egpms(c) => (Box::new(egpms::Strip::new(c.clone())), None, None),
            BackendConfig::Dpm86xx(c, protocol) => (
                Box::new(dpm86xx::Dpm86xx::new(c, *protocol)),
                Some(SupplyLimits::from_config(c)),
                Some((c.voltage, c.current_limit)),
            ),
            BackendConfig::Riden(c) => (
                Box::new(riden::Riden::new(c)),
                Some(SupplyLimits::from_config(c)),
                Some((c.voltage, c.current_limit)),
            ),
            BackendConfig::Pdudaemon(c) => {
                (Box::new(pdudaemon::Pdudaemon::new(c.clone())), None, None)
            }
            BackendConfig::Command(c) => (Box::new(command::Command::new(c.clone())), None, None),
        };
        let (voltage_setpoint, current_limit) = initial.unwrap_or((f64::NAN, f64::NAN));
        let (status_tx, status) = watch::channel(PowerStatus {
            state: PowerState::Unknown,
            voltage_setpoint,
            current_limit,
            measured: None,
            last_error: None,
        });
        let (tx, rx) = mpsc::channel(16);
        let busy_since = Arc::new(Mutex::new(None));
        let owner = Owner {
            device,
            is_supply: limits.is_some(),
            timeout: config.timeout,
            retries: config.retries,
            backoff: config.retry_backoff,
            poll_interval: config.poll_interval,
            status: status_tx,
            busy_since: busy_since.clone(),
        };
        tokio::spawn(owner.run(rx));
        Power {
            tx,
            status,
            backend: config.backend.name(),
            limits,
            cycle_off: config.cycle_off,
            busy_since,
            attempt_bound: config.timeout + Duration::from_secs(1),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The supply limits, or `None` for a plain switch.
    pub fn limits(&self) -> Option<&SupplyLimits> {
        self.limits.as_ref()
    }

    pub fn status(&self) -> PowerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every status change.
    pub fn subscribe(&self) -> watch::Receiver<PowerStatus> {
        self.status.clone()
    }

    /// Switching and setpoints take the gate's [`Permit`]: only a call the gate admitted
    /// reaches the hardware.
    pub async fn on(&self, _: &Permit) -> Result<PowerState, PowerError> {
        self.ask(|r| Request::Switch(true, r)).await?
    }

    pub async fn off(&self, _: &Permit) -> Result<PowerState, PowerError> {
        self.ask(|r| Request::Switch(false, r)).await?
    }

    /// Off, wait, on, whatever the state before (LAVA's hard reset). `None`: `cycle_off_ms`.
    pub async fn cycle(
        &self,
        _: &Permit,
        off_time: Option<Duration>,
    ) -> Result<PowerState, PowerError> {
        let off_time = off_time.unwrap_or(self.cycle_off);
        self.ask(|r| Request::Cycle(off_time, r)).await?
    }

    /// Reads the state from the hardware (does not switch).
    pub async fn refresh(&self) -> Result<PowerState, PowerError> {
        self.ask(|r| Request::Refresh(true, r)).await?
    }

    /// The start-up read: one attempt, so a dead device does not hold up the first real
    /// request (a LAVA hook) behind a round of retries.
    pub async fn probe(&self) -> Result<PowerState, PowerError> {
        self.ask(|r| Request::Refresh(false, r)).await?
    }

    pub async fn set_voltage(&self, _: &Permit, volts: f64) -> Result<(), PowerError> {
        let volts = self.supply_limits()?.check_voltage(volts)?;
        self.ask(|r| Request::SetVoltage(volts, r)).await?
    }

    pub async fn set_current_limit(&self, _: &Permit, amps: f64) -> Result<(), PowerError> {
        let amps = self.supply_limits()?.check_current(amps)?;
        self.ask(|r| Request::SetCurrentLimit(amps, r)).await?
    }

    /// Sets the voltage of a named profile (e.g. `low` to test brown-out behaviour).
    pub async fn apply_profile(&self, _: &Permit, name: &str) -> Result<f64, PowerError> {
        let limits = self.supply_limits()?;
        let volts = limits.check_voltage(limits.profile(name)?)?;
        self.ask(|r| Request::SetVoltage(volts, r)).await??;
        Ok(volts)
    }

    /// True unless a hardware attempt has run longer than its timeout allows, which would
    /// mean the owner task is stuck. The watchdog is fed only while this holds.
    pub fn is_alive(&self) -> bool {
        let since = *self.busy_since.lock().unwrap_or_else(|p| p.into_inner());
        since.is_none_or(|t| t.elapsed() <= self.attempt_bound)
    }

    fn supply_limits(&self) -> Result<&SupplyLimits, PowerError> {
        self.limits.as_ref().ok_or_else(|| {
            PowerError::NotSupported(format!(
                "the {} backend switches power only; setpoints need a lab supply",
                self.backend
            ))
        })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, PowerError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let gone = || PowerError::Io("the power task has stopped".to_string());
        self.tx.send(make(reply_tx)).await.map_err(|_| gone())?;
        reply_rx.await.map_err(|_| gone())
    }
}

/// The task that owns the device.
struct Owner {
    device: Box<dyn PowerSwitch>,
    is_supply: bool,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    poll_interval: Duration,
    status: watch::Sender<PowerStatus>,
    busy_since: Arc<Mutex<Option<Instant>>>,
}

/// One hardware operation, retried as a unit.
#[derive(Clone, Copy)]
enum Op {
    Switch(bool),
    State,
    SetVoltage(f64),
    SetCurrentLimit(f64),
    Measure,
}

enum Done {
    State(PowerState),
    Set,
    Measured(Measurement),
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Requests first: a caller (a LAVA hook with a 10 s timeout) must never wait
                // behind a queue of measurement polls.
                biased;
                request = rx.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => break,
                },
                // Only supplies are polled: a strip session per second would lock out the
                // strip's other clients (it serves one session at a time). A poll is one
                // attempt; while the supply does not answer, polls back off.
                _ = poll.tick(), if self.is_supply => {
                    if !self.measure_with(0).await {
                        poll.reset_at(tokio::time::Instant::now() + self.poll_interval.max(POLL_WHILE_FAILING));
                    }
                }
            }
        }
    }

    /// Reads a supply's measurements into the status; a failure is already logged and kept
    /// in `last_error`.
    async fn measure(&mut self) {
        self.measure_with(self.retries).await;
    }

    /// [`Self::measure`] with a given number of retries; false if the supply did not answer.
    async fn measure_with(&mut self, retries: u32) -> bool {
        let done = self.run_op_with(Op::Measure, retries).await;
        if let Ok(Done::Measured(m)) = done {
            self.status.send_if_modified(|s| {
                let mut changed = s.measured != Some(m);
                s.measured = Some(m);
                if let Some(on) = m.output_on {
                    changed |= s.state != PowerState::from_bool(on);
                    s.state = PowerState::from_bool(on);
                }
                changed
            });
            true
        } else {
            false
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Switch(on, reply) => {
                let _ = reply.send(self.switch(on).await);
            }
            Request::Cycle(off_time, reply) => {
                let result = match self.switch(false).await {
                    Ok(_) => {
                        // Says which off time won (the caller's or `cycle_off_ms`), for
                        // whoever reads the journal after a board failed to come back.
                        info!(
                            subsystem = "power",
                            "power cycle: off for {} ms",
                            off_time.as_millis()
                        );
                        tokio::time::sleep(off_time).await;
                        self.switch(true).await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Request::Refresh(full, reply) => {
                let retries = if full { self.retries } else { 0 };
                let result = self.run_op_with(Op::State, retries).await.map(|d| match d {
                    Done::State(s) => s,
                    _ => PowerState::Unknown,
                });
                if let Ok(state) = result {
                    self.status
                        .send_if_modified(|s| replace(&mut s.state, state));
                }
                let _ = reply.send(result);
            }
            Request::SetVoltage(volts, reply) => {
                let result = self.run_op(Op::SetVoltage(volts)).await.map(|_| ());
                if result.is_ok() {
                    info!(subsystem = "power", "voltage setpoint {volts:.2} V");
                    self.status
                        .send_if_modified(|s| replace(&mut s.voltage_setpoint, volts));
                    self.measure().await;
                }
                let _ = reply.send(result);
            }
            Request::SetCurrentLimit(amps, reply) => {
                let result = self.run_op(Op::SetCurrentLimit(amps)).await.map(|_| ());
                if result.is_ok() {
                    info!(subsystem = "power", "current limit {amps:.3} A");
                    self.status
                        .send_if_modified(|s| replace(&mut s.current_limit, amps));
                    self.measure().await;
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Switches and publishes the confirmed state. A supply gets its voltage and current
    /// limit written first, so the output never comes up with whatever the panel last had.
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        if on && self.is_supply {
            let (volts, amps) = {
                let s = self.status.borrow();
                (s.voltage_setpoint, s.current_limit)
            };
            self.run_op(Op::SetVoltage(volts)).await?;
            self.run_op(Op::SetCurrentLimit(amps)).await?;
        }
        let state = match self.run_op(Op::Switch(on)).await {
            Ok(Done::State(state)) => state,
            Ok(_) => PowerState::Unknown,
            Err(e) => {
                // After a failed switch we no longer know what the board has.
                self.status
                    .send_if_modified(|s| replace(&mut s.state, PowerState::Unknown));
                return Err(e);
            }
        };
        info!(subsystem = "power", "power {}", state.as_str());
        self.status
            .send_if_modified(|s| replace(&mut s.state, state));
        if self.is_supply {
            // So that a status read right after the switch shows the new output, not the
            // last poll's.
            self.measure().await;
        }
        Ok(state)
    }

    /// Runs one operation with a timeout per attempt and retries with doubling backoff.
    async fn run_op(&mut self, op: Op) -> Result<Done, PowerError> {
        self.run_op_with(op, self.retries).await
    }

    async fn run_op_with(&mut self, op: Op, retries: u32) -> Result<Done, PowerError> {
        let mut backoff = self.backoff;
        let mut attempt = 0;
        loop {
            self.set_busy(Some(Instant::now()));
            let result = match tokio::time::timeout(self.timeout, self.attempt(op)).await {
                Ok(result) => result,
                Err(_) => Err(PowerError::Timeout(format!(
                    "no answer from the power device within {} ms",
                    self.timeout.as_millis()
                ))),
            };
            self.set_busy(None);
            match result {
                Ok(done) => {
                    self.status
                        .send_if_modified(|s| replace(&mut s.last_error, None));
                    return Ok(done);
                }
                Err(e) if e.is_transient() && attempt < retries => {
                    attempt += 1;
                    warn!(
                        subsystem = "power",
                        "attempt {attempt} failed, retrying in {} ms: {e}",
                        backoff.as_millis()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => {
                    warn!(subsystem = "power", "{e}");
                    self.status
                        .send_if_modified(|s| replace(&mut s.last_error, Some(e.to_string())));
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(&mut self, op: Op) -> Result<Done, PowerError> {
        let not_supply = || PowerError::NotSupported("not a lab supply".to_string());
        match op {
            Op::Switch(on) => self.device.switch(on).await.map(Done::State),
            Op::State => self.device.state().await.map(Done::State),
            Op::SetVoltage(v) => {
                let supply = self.device.as_supply().ok_or_else(not_supply)?;
                supply.set_voltage(v).await.map(|_| Done::Set)
            }
            Op::SetCurrentLimit(a) => {
                let supply = self.device.as_supply().ok_or_else(not_supply)?;
                supply.set_current_limit(a).await.map(|_| Done::Set)
            }
            Op::Measure => {
                let supply = self.device.as_supply().ok_or_else(not_supply)?;
                supply.measure().await.map(Done::Measured)
            }
        }
    }

    fn set_busy(&self, since: Option<Instant>) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }
}

/// A supply's output register: 0 off, 1 on, anything else a protocol error.
pub fn output_state(raw: u16) -> Result<PowerState, PowerError> {
    match raw {
        0 => Ok(PowerState::Off),
        1 => Ok(PowerState::On),
        other => Err(PowerError::Protocol(format!(
            "output state {other} is neither 0 nor 1"
        ))),
    }
}

/// Replaces `slot` with `value`; true if that changed anything (for `send_if_modified`).
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        false
    } else {
        *slot = value;
        true
    }
}

#[cfg(test)]
mod tests;
