//! `org.rtmd.Dut1.Capture`: snapshots, recordings and the checks on what the board shows and
//! plays (docs/capture.md). Every call runs on the blocking pool: GStreamer waits for
//! devices and frames.

use std::path::PathBuf;
use std::time::Duration;

use zbus::{Connection, interface};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::clip;
use crate::capture::{Capture, CaptureError, Kind};

impl From<CaptureError> for Error {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::NotConfigured(m) => Error::NotConfigured(m),
            CaptureError::Device(m) | CaptureError::Storage(m) => Error::Hardware(m),
            CaptureError::Busy(m) => Error::Busy(m),
            CaptureError::NotRecording(m) => Error::NotFound(m),
            CaptureError::BadReference(m) | CaptureError::InvalidArgument(m) => {
                Error::InvalidArgs(m)
            }
            CaptureError::Timeout(m) => Error::Timeout(m),
        }
    }
}

/// Longest wait a check may ask for: past it a D-Bus client would have given up long ago.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

pub struct CaptureIface {
    capture: Capture,
    gate: BusGate,
}

impl CaptureIface {
    pub fn new(capture: Capture, gate: BusGate) -> Self {
        CaptureIface { capture, gate }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Capture) -> Result<T, CaptureError> + Send + 'static,
    ) -> Result<T, Error> {
        let capture = self.capture.clone();
        tokio::task::spawn_blocking(move || f(capture))
            .await
            .map_err(|e| Error::Hardware(e.to_string()))?
            .map_err(Error::from)
    }
}

fn kind(word: &str) -> Result<Kind, Error> {
    Kind::parse(word).ok_or_else(|| {
        Error::InvalidArgs(format!(
            "kind {word:?}: expected \"video\", \"audio\" or \"both\""
        ))
    })
}

fn timeout(ms: u32) -> Result<Duration, Error> {
    let t = Duration::from_millis(u64::from(ms));
    if t > MAX_TIMEOUT {
        return Err(Error::InvalidArgs(format!(
            "timeout_ms must be at most {}",
            MAX_TIMEOUT.as_millis()
        )));
    }
    Ok(t)
}

fn text(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Capture")]
impl CaptureIface {
    gated {
        #[gated("Capture.Snapshot", String::new())]
        /// Saves the screen as a PNG in the capture folder; returns its path.
        #[zbus(out_args("png_path"))]
        async fn snapshot(&self) -> Result<String, Error> |permit| {
            self.blocking(move |c| c.snapshot(&permit)).await.map(text)
        }

        #[gated("Capture.StartRecording", clip(kind, 8))]
        /// Starts recording `kind` (`video`, `audio`, `both`) into Matroska; returns the path.
        #[zbus(out_args("path"))]
        async fn start_recording(&self, kind: &str) -> Result<String, Error> |permit| {
            let kind = self::kind(kind)?;
            self.blocking(move |c| c.start_recording(&permit, kind))
                .await
                .map(text)
        }

        #[gated("Capture.StopRecording", clip(kind, 8))]
        /// Stops the `kind` recording; returns once the file is finalized.
        async fn stop_recording(&self, kind: &str) -> Result<(), Error> |permit| {
            let kind = self::kind(kind)?;
            self.blocking(move |c| c.stop_recording(&permit, kind))
                .await
                .map(drop)
        }
    }

    /// Compares the screen with a PNG: (score >= threshold, score in 0..1).
    #[zbus(out_args("match", "score"))]
    async fn compare_snapshot(
        &self,
        reference_png: &str,
        threshold: f64,
    ) -> Result<(bool, f64), Error> {
        let reference = PathBuf::from(reference_png);
        self.blocking(move |c| c.compare_snapshot(&reference, threshold))
            .await
    }

    /// Waits until the screen matches the PNG; returns the score. `Timeout` otherwise.
    #[zbus(out_args("score"))]
    async fn wait_for_screen(
        &self,
        reference_png: &str,
        threshold: f64,
        timeout_ms: u32,
    ) -> Result<f64, Error> {
        let reference = PathBuf::from(reference_png);
        let timeout = timeout(timeout_ms)?;
        self.blocking(move |c| c.wait_for_screen(&reference, threshold, timeout))
            .await
    }

    /// RMS level of the next `window_ms` of audio, in dBFS (full-scale sine: -3).
    #[zbus(out_args("dbfs"))]
    async fn audio_level(&self, window_ms: u32) -> Result<f64, Error> {
        let window = Duration::from_millis(u64::from(window_ms));
        self.blocking(move |c| c.audio_level(window)).await
    }

    /// Listens for a tone at `freq_hz ± tolerance_hz` for up to `timeout_ms`.
    #[zbus(out_args("present"))]
    async fn detect_tone(
        &self,
        freq_hz: f64,
        tolerance_hz: f64,
        timeout_ms: u32,
    ) -> Result<bool, Error> {
        let timeout = timeout(timeout_ms)?;
        self.blocking(move |c| c.detect_tone(freq_hz, tolerance_hz, timeout))
            .await
    }

    /// The snapshots and recordings in the capture folder, oldest first.
    #[zbus(property)]
    fn artifacts(&self) -> Vec<String> {
        self.capture.status().artifacts
    }

    /// Kinds recording now.
    #[zbus(property)]
    fn recording(&self) -> Vec<String> {
        self.capture.status().recording
    }

    /// Why the last recording ended: `<kind>: stopped`, `<kind>: device lost: ...`, ...
    #[zbus(property)]
    fn last_stop(&self) -> String {
        self.capture.status().last_stop
    }

    /// How the running video recording writes its frames: `passthrough` (the grabber's own
    /// JPEG frames), `jpegenc` (raw frames encoded by rtmd), empty when none runs (extension).
    #[zbus(property)]
    fn video_encoding(&self) -> String {
        self.capture.status().video_encoding
    }

    /// The capture folder (extension).
    #[zbus(property(emits_changed_signal = "const"))]
    fn dir(&self) -> String {
        self.capture.dir().to_string_lossy().into_owned()
    }
}
}

/// `PropertiesChanged` for every property that changed with the capture status.
pub async fn spawn_change_signals(connection: &Connection, capture: Capture) -> zbus::Result<()> {
    spawn_status_signals!(connection, CaptureIface, capture.subscribe(), {
        artifacts => artifacts_changed,
        recording => recording_changed,
        last_stop => last_stop_changed,
        video_encoding => video_encoding_changed,
    })
}
