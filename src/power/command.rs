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
mod tests;
