//! The power task's own rules, independent of any backend: range checks before the wire.

use super::*;
use std::collections::BTreeMap;

fn limits() -> SupplyLimits {
    SupplyLimits {
        voltage_range: (4.0, 5.8),
        max_current: 3.0,
        profiles: BTreeMap::from([("low".to_string(), 4.6)]),
    }
}

#[test]
fn voltage_limits() {
    let l = limits();
    assert_eq!(l.check_voltage(5.1), Ok(5.1));
    assert_eq!(l.check_voltage(4.0), Ok(4.0));
    assert!(matches!(
        l.check_voltage(5.81),
        Err(PowerError::OutOfRange(_))
    ));
    assert!(matches!(
        l.check_voltage(-1.0),
        Err(PowerError::OutOfRange(_))
    ));
    assert!(matches!(
        l.check_voltage(f64::NAN),
        Err(PowerError::InvalidArgument(_))
    ));
    assert!(matches!(
        l.check_voltage(f64::INFINITY),
        Err(PowerError::InvalidArgument(_))
    ));
}

#[test]
fn current_limits() {
    let l = limits();
    assert_eq!(l.check_current(3.0), Ok(3.0));
    assert!(matches!(
        l.check_current(0.0),
        Err(PowerError::OutOfRange(_))
    ));
    assert!(matches!(
        l.check_current(3.5),
        Err(PowerError::OutOfRange(_))
    ));
    assert!(matches!(
        l.check_current(f64::NAN),
        Err(PowerError::InvalidArgument(_))
    ));
}

#[test]
fn profiles_by_name() {
    let l = limits();
    assert_eq!(l.profile("low"), Ok(4.6));
    let Err(PowerError::NotFound(msg)) = l.profile("turbo") else {
        panic!()
    };
    assert!(msg.contains("turbo") && msg.contains("low"), "{msg}");
}

/// The watchdog's test of the power task (src/daemon.rs feeds systemd only while it holds):
/// idle or within an attempt's bound is alive; an attempt running past its timeout plus a
/// second means the owner task is wedged (a blocking call, a lost wake-up), and the daemon
/// must stop feeding the watchdog so that systemd restarts it.
#[tokio::test]
async fn the_power_task_is_alive_until_an_attempt_outlasts_its_bound() {
    let config = crate::config::parse(
        std::path::Path::new("/etc/rtmd/w.toml"),
        "name = \"w\"\n[power]\nbackend = \"command\"\non_command = \"true\"\n\
         off_command = \"true\"\ntimeout_ms = 1000\n",
    )
    .unwrap();
    let power = Power::spawn(config.power.as_ref().unwrap());
    assert!(power.is_alive(), "idle");
    let now = Instant::now();
    *power.busy_since.lock().unwrap() = Some(now);
    assert!(power.is_alive(), "an attempt just started");
    let Some(long_ago) = now.checked_sub(power.attempt_bound + Duration::from_millis(1)) else {
        return; // the clock started less than the bound ago: nothing to go back to
    };
    *power.busy_since.lock().unwrap() = Some(long_ago);
    assert!(!power.is_alive(), "an attempt past its bound");
    *power.busy_since.lock().unwrap() = None;
    assert!(power.is_alive(), "idle again");
}
