//! Power through shell commands, for any hardware without a backend of its own (a relay
//! board's CLI, `usbrelay`, `sispmctl`, a vendor script).
//!
//! `on_command` and `off_command` must exit 0. `status_command`, when given, prints `on` or
//! `off` (also `1`/`0`, `true`/`false`) and is run after every switch to confirm it; without
//! it the state is the last one switched. Commands run under `sh -c`; the attempt timeout of
//! [`super::Power`] kills a command that hangs (`kill_on_drop`), and so does the daemon's stop.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::process::Command as Process;

use super::{PowerError, PowerState, PowerSwitch};
use crate::config::CommandConfig;

/// Reads a status command's output.
pub fn parse_status(stdout: &str) -> Option<PowerState> {
    match stdout.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" => Some(PowerState::On),
        "off" | "0" | "false" => Some(PowerState::Off),
        _ => None,
    }
}

pub struct Command {
    config: CommandConfig,
    last: PowerState,
}

impl Command {
    pub fn new(config: CommandConfig) -> Self {
        Command {
            config,
            last: PowerState::Unknown,
        }
    }
}

/// Runs `script` and returns its stdout; a non-zero exit is an error with its stderr.
async fn run(script: &str) -> Result<String, PowerError> {
    let output = Process::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| PowerError::Io(format!("cannot run `{script}`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_line = stderr.lines().last().unwrap_or("").trim();
        return Err(PowerError::Refused(format!(
            "`{script}` failed ({}){}{last_line}",
            output.status,
            if last_line.is_empty() { "" } else { ": " }
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait]
impl PowerSwitch for Command {
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        run(if on {
            &self.config.on
        } else {
            &self.config.off
        })
        .await?;
        self.last = PowerState::from_bool(on);
        if self.config.status.is_some() {
            let state = self.state().await?;
            if state != self.last {
                return Err(PowerError::Mismatch(format!(
                    "status command reports {} after switching {}",
                    state.as_str(),
                    self.last.as_str()
                )));
            }
        }
        Ok(self.last)
    }

    async fn state(&mut self) -> Result<PowerState, PowerError> {
        let Some(script) = &self.config.status else {
            return Ok(self.last);
        };
        let out = run(script).await?;
        parse_status(&out).ok_or_else(|| {
            PowerError::Protocol(format!(
                "`{script}` printed {:?}; expected on or off",
                out.trim()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
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
}
