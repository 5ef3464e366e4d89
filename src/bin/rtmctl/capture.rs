//! `rtmctl capture`: snapshots, recordings and the screen and sound checks of the board's
//! HDMI and audio capture (docs/capture.md).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::{Client, Failure};

pub const CAPTURE: &str = "org.rtmd.Dut1.Capture";

#[derive(Subcommand)]
pub enum CaptureAction {
    /// Save the screen as a PNG; prints its path (in the capture folder, or FILE with -o).
    Snapshot {
        /// Also copy the PNG to FILE.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Start or stop a recording (Matroska, in the capture folder).
    Record {
        #[arg(value_enum)]
        action: RecordAction,
        #[arg(long, value_enum, default_value = "both")]
        kind: RecordKind,
    },
    /// Compare the screen with a PNG; exit 0 when it matches, 1 when not.
    Compare {
        reference: PathBuf,
        /// Score (0..1) that counts as a match.
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
    },
    /// Wait until the screen matches a PNG; exit 1 on timeout.
    #[command(name = "wait-screen")]
    WaitScreen {
        reference: PathBuf,
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
        /// Give up after this many ms.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u32,
    },
    /// Listen for a tone of HZ; exit 0 when heard, 1 when not.
    Tone {
        hz: f64,
        #[arg(long, default_value_t = 20.0)]
        tolerance: f64,
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u32,
    },
    /// Print the audio level (dBFS, RMS) over a window.
    Level {
        #[arg(long, default_value_t = 500)]
        window_ms: u32,
    },
    /// Show what is recording, why the last recording ended, and the artifacts.
    Status,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RecordAction {
    Start,
    Stop,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RecordKind {
    Video,
    Audio,
    Both,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::Video => "video",
            RecordKind::Audio => "audio",
            RecordKind::Both => "both",
        }
    }
}

/// A reference as the daemon must see it: absolute (rtmd does not share our folder).
fn absolute(p: &Path) -> Result<String, Failure> {
    std::path::absolute(p)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Failure {
            code: 2,
            message: format!("{}: {e}", p.display()),
        })
}

fn not_matched(message: String) -> Failure {
    Failure { code: 1, message }
}

pub async fn run(c: &Client, action: &CaptureAction) -> Result<String, Failure> {
    match action {
        CaptureAction::Snapshot { output } => {
            let reply = c.call(CAPTURE, "Snapshot", &()).await?;
            let path: String = reply.body().deserialize().map_err(|e| c.fail(e))?;
            match output {
                None => Ok(path),
                Some(out) => {
                    std::fs::copy(&path, out).map_err(|e| Failure {
                        code: 1,
                        message: format!("cannot copy {path} to {}: {e}", out.display()),
                    })?;
                    Ok(out.display().to_string())
                }
            }
        }
        CaptureAction::Record { action, kind } => {
            let kind = kind.as_str();
            match action {
                RecordAction::Start => {
                    let reply = c.call(CAPTURE, "StartRecording", &(kind,)).await?;
                    let path: String = reply.body().deserialize().map_err(|e| c.fail(e))?;
                    Ok(path)
                }
                RecordAction::Stop => {
                    c.call(CAPTURE, "StopRecording", &(kind,)).await?;
                    Ok(format!("{}: {kind} recording stopped", c.board))
                }
            }
        }
        CaptureAction::Compare {
            reference,
            threshold,
        } => {
            let reference = absolute(reference)?;
            let reply = c
                .call(
                    CAPTURE,
                    "CompareSnapshot",
                    &(reference.as_str(), *threshold),
                )
                .await?;
            let (matched, score): (bool, f64) =
                reply.body().deserialize().map_err(|e| c.fail(e))?;
            if matched {
                Ok(format!("{}: screen matches (score {score:.3})", c.board))
            } else {
                Err(not_matched(format!(
                    "screen does not match {reference} (score {score:.3}, threshold {threshold:.3})"
                )))
            }
        }
        CaptureAction::WaitScreen {
            reference,
            threshold,
            timeout_ms,
        } => {
            let reference = absolute(reference)?;
            let reply = c
                .call(
                    CAPTURE,
                    "WaitForScreen",
                    &(reference.as_str(), *threshold, *timeout_ms),
                )
                .await?;
            let score: f64 = reply.body().deserialize().map_err(|e| c.fail(e))?;
            Ok(format!("{}: screen matches (score {score:.3})", c.board))
        }
        CaptureAction::Tone {
            hz,
            tolerance,
            timeout_ms,
        } => {
            let reply = c
                .call(CAPTURE, "DetectTone", &(*hz, *tolerance, *timeout_ms))
                .await?;
            let heard: bool = reply.body().deserialize().map_err(|e| c.fail(e))?;
            if heard {
                Ok(format!("{}: tone {hz} Hz heard", c.board))
            } else {
                Err(not_matched(format!(
                    "no tone of {hz} Hz (± {tolerance} Hz) within {timeout_ms} ms"
                )))
            }
        }
        CaptureAction::Level { window_ms } => {
            let reply = c.call(CAPTURE, "AudioLevel", &(*window_ms,)).await?;
            let level: f64 = reply.body().deserialize().map_err(|e| c.fail(e))?;
            Ok(format!("{}: audio level {level:.1} dBFS", c.board))
        }
        CaptureAction::Status => status(c).await,
    }
}

async fn status(c: &Client) -> Result<String, Failure> {
    let props = c.properties(CAPTURE).await?;
    let recording: Vec<String> = props.value("Recording").unwrap_or_default();
    let encoding = props.text("VideoEncoding");
    let mut line = format!(
        "{}: recording {}",
        c.board,
        if recording.is_empty() {
            "nothing".to_string()
        } else {
            recording.join(", ")
        }
    );
    if !encoding.is_empty() {
        line.push_str(&format!(" (video: {encoding})"));
    }
    let artifacts: Vec<String> = props.value("Artifacts").unwrap_or_default();
    line.push_str(&format!("; {} artifacts", artifacts.len()));
    let last = props.text("LastStop");
    if !last.is_empty() {
        line.push_str(&format!("; last recording: {last}"));
    }
    Ok(line)
}
