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
