//! Tests of `command`.

use super::*;

#[test]
fn status_words() {
    assert_eq!(parse_status("on\n"), Some(PowerState::On));
    assert_eq!(parse_status(" OFF "), Some(PowerState::Off));
    assert_eq!(parse_status("1"), Some(PowerState::On));
    assert_eq!(parse_status("maybe"), None);
}

#[tokio::test]
async fn runs_commands_and_confirms_with_status() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("state");
    let f = f.display();
    let mut c = Command::new(CommandConfig {
        on: format!("echo on > {f}"),
        off: format!("echo off > {f}"),
        status: Some(format!("cat {f}")),
    });
    assert_eq!(c.switch(true).await, Ok(PowerState::On));
    assert_eq!(c.state().await, Ok(PowerState::On));
    assert_eq!(c.switch(false).await, Ok(PowerState::Off));
}

#[tokio::test]
async fn failing_command_names_itself() {
    let mut c = Command::new(CommandConfig {
        on: "echo relay jammed >&2; exit 3".into(),
        off: "true".into(),
        status: None,
    });
    let Err(PowerError::Refused(msg)) = c.switch(true).await else {
        panic!()
    };
    assert!(
        msg.contains("relay jammed") && msg.contains("exit status: 3"),
        "{msg}"
    );
    assert_eq!(c.state().await, Ok(PowerState::Unknown));
}

#[tokio::test]
async fn status_mismatch_is_an_error() {
    let mut c = Command::new(CommandConfig {
        on: "true".into(),
        off: "true".into(),
        status: Some("echo off".into()),
    });
    assert!(matches!(c.switch(true).await, Err(PowerError::Mismatch(_))));
}
