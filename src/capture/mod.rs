//! HDMI and audio capture (docs/capture.md): snapshots, recordings, and the checks tests
//! make on what the board shows and plays. Plain Rust over GStreamer; no D-Bus here.
//!
//! GStreamer work blocks (a device opens, a frame arrives, a recording drains), so every
//! operation is a blocking function that `bus/capture.rs` runs on the blocking pool. Each
//! recording is owned by one thread (`record.rs`): it alone stops it, on request, on device
//! loss or past the quota, and always finalizes the file. A device a recording holds is not
//! opened twice: snapshots and checks read the recording's own tap (a `tee` branch ending
//! in an appsink) while it runs, and a pipeline of their own otherwise.
//!
//! Only the `gstreamer` core crate is used: appsinks are driven through their signals, which
//! spares the build `libgstreamer-plugins-base1.0-dev` (and, through it, the GL and Wayland
//! development packages). PNG files are written and read with the `image` crate (only its
//! `png` feature): a reference is decoded in the daemon, synchronously, with one clear error
//! for a file that is not a PNG.

pub mod analysis;
mod frames;
mod record;
pub mod source;
mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gstreamer as gst;
use tokio::sync::watch;

use crate::access::Permit;
use crate::config::CaptureConfig;
pub use record::Kind;
use record::Recording;
pub use source::{Medium, Source};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The board has no such source configured.
    #[error("{0}")]
    NotConfigured(String),
    /// The device is not there, or failed.
    #[error("{0}")]
    Device(String),
    /// A recording of that kind is running already.
    #[error("{0}")]
    Busy(String),
    /// Nothing of that kind is recording.
    #[error("{0}")]
    NotRecording(String),
    /// A reference picture that cannot be used.
    #[error("{0}")]
    BadReference(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Timeout(String),
    /// Writing an artifact failed (disk full, permissions).
    #[error("{0}")]
    Storage(String),
}

/// What the bus publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptureStatus {
    /// Kinds recording now (`video`, `audio`, `both`).
    pub recording: Vec<String>,
    /// Paths of the artifacts in the capture folder, oldest first.
    pub artifacts: Vec<String>,
    /// Why the last recording ended, e.g. `stopped`, `device lost: ...`, `quota`.
    pub last_stop: String,
    /// How the running video recording writes its frames: `passthrough` (the source's own
    /// JPEG frames), `jpegenc` (raw frames encoded here), empty when none runs.
    pub video_encoding: String,
}

/// The capture subsystem: cheap to clone.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Inner>,
}

struct Inner {
    video: Option<Source>,
    audio: Option<Source>,
    store: Store,
    recordings: Mutex<HashMap<Kind, Recording>>,
    status: watch::Sender<CaptureStatus>,
}

/// How long a source may take to deliver its first frame or samples.
pub const FIRST_DATA: Duration = Duration::from_secs(10);

impl Capture {
    /// Initializes GStreamer and the capture folder. Opens no device.
    pub fn start(config: &CaptureConfig) -> Result<Capture, String> {
        gst::init().map_err(|e| format!("cannot initialize GStreamer: {e}"))?;
        let store = Store::open(&config.dir, config.quota_bytes)
            .map_err(|e| format!("capture folder {}: {e}", config.dir.display()))?;
        let status = watch::Sender::new(CaptureStatus {
            artifacts: store.list_names(),
            ..CaptureStatus::default()
        });
        Ok(Capture {
            inner: Arc::new(Inner {
                video: config
                    .video
                    .as_deref()
                    .map(|v| Source::parse(v, Medium::Video)),
                audio: config
                    .audio
                    .as_deref()
                    .map(|a| Source::parse(a, Medium::Audio)),
                store,
                recordings: Mutex::new(HashMap::new()),
                status,
            }),
        })
    }

    pub fn has_video(&self) -> bool {
        self.inner.video.is_some()
    }

    pub fn has_audio(&self) -> bool {
        self.inner.audio.is_some()
    }

    pub fn dir(&self) -> &Path {
        self.inner.store.dir()
    }

    pub fn status(&self) -> CaptureStatus {
        self.inner.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<CaptureStatus> {
        self.inner.status.subscribe()
    }

    fn source(&self, medium: Medium) -> Result<&Source, CaptureError> {
        let source = match medium {
            Medium::Video => self.inner.video.as_ref(),
            Medium::Audio => self.inner.audio.as_ref(),
        };
        source.ok_or_else(|| {
            CaptureError::NotConfigured(format!(
                "no {} source configured ([capture] {})",
                medium_name(medium),
                medium_name(medium)
            ))
        })
    }

    fn recordings(&self) -> MutexGuard<'_, HashMap<Kind, Recording>> {
        // A poisoned map only means a thread panicked mid-update; the map itself is whole.
        self.inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The tap of a running recording that captures `medium`, if any.
    fn tap(&self, medium: Medium) -> Option<gst::Element> {
        self.recordings().values().find_map(|r| r.tap(medium))
    }

    /// Re-reads the folder into the published status, after a cleanup.
    fn publish_artifacts(&self) {
        let names = self.inner.store.list_names();
        self.inner.status.send_if_modified(|s| {
            let changed = s.artifacts != names;
            s.artifacts = names;
            changed
        });
    }

    fn enforce_quota(&self) {
        let active: Vec<PathBuf> = self.recordings().values().map(|r| r.path.clone()).collect();
        self.inner.store.enforce_quota(&active);
        self.publish_artifacts();
    }

    /// One frame of the video source, from a running recording's tap or a pipeline of its own.
    fn grab(&self) -> Result<image::RgbImage, CaptureError> {
        let source = self.source(Medium::Video)?.clone();
        match self.tap(Medium::Video) {
            Some(tap) => frames::pull_frame(&tap, FIRST_DATA),
            None => frames::FrameGrabber::open(&source)?.next(FIRST_DATA),
        }
    }

    /// Saves one frame as a PNG in the capture folder; returns its path.
    pub fn snapshot(&self, _: &Permit) -> Result<PathBuf, CaptureError> {
        let frame = self.grab()?;
        let path = self.inner.store.new_path("snapshot", "png");
        store::write_png(&path, &frame)?;
        self.enforce_quota();
        Ok(path)
    }

    /// Compares the screen now with `reference`: (score >= threshold, score).
    pub fn compare_snapshot(
        &self,
        reference: &Path,
        threshold: f64,
    ) -> Result<(bool, f64), CaptureError> {
        check_threshold(threshold)?;
        let reference = store::read_png(reference)?;
        let frame = self.grab()?;
        let score = analysis::compare(&frame, &reference);
        Ok((score >= threshold, score))
    }

    /// Waits until the screen matches `reference`; returns the score. Frames are compared as
    /// they come (at most the source's rate).
    pub fn wait_for_screen(
        &self,
        reference: &Path,
        threshold: f64,
        timeout: Duration,
    ) -> Result<f64, CaptureError> {
        check_threshold(threshold)?;
        let reference = analysis::grid(&store::read_png(reference)?);
        let source = self.source(Medium::Video)?.clone();
        let deadline = Instant::now() + timeout;
        let mut best = 0.0f64;
        // A pipeline of its own only if no recording holds the device; it lives for the wait.
        let tap = self.tap(Medium::Video);
        let mut grabber = match tap {
            Some(_) => None,
            None => Some(frames::FrameGrabber::open(&source)?),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match (&tap, &mut grabber) {
                (Some(tap), _) => frames::pull_frame(tap, left.max(Duration::from_millis(1))),
                (None, Some(g)) => g.next(left.max(Duration::from_millis(1))),
                (None, None) => unreachable_grabber(),
            };
            match frame {
                Ok(frame) => {
                    let score = analysis::similarity(&analysis::grid(&frame), &reference);
                    if score >= threshold {
                        return Ok(score);
                    }
                    best = best.max(score);
                }
                Err(CaptureError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(CaptureError::Timeout(format!(
                    "the screen did not match within {} ms (best score {best:.3}, threshold \
                     {threshold:.3})",
                    timeout.as_millis()
                )));
            }
        }
    }

    /// RMS level of the next `window` of audio, in dBFS.
    pub fn audio_level(&self, window: Duration) -> Result<f64, CaptureError> {
        if window.is_zero() || window > Duration::from_secs(60) {
            return Err(CaptureError::InvalidArgument(
                "window_ms must be 1 to 60000".to_string(),
            ));
        }
        let mut samples = self.samples()?;
        let wanted = frames::samples_in(window);
        let mut buf = Vec::with_capacity(wanted);
        while buf.len() < wanted {
            samples.next_into(&mut buf, FIRST_DATA)?;
        }
        buf.truncate(wanted);
        Ok(analysis::level_dbfs(&buf))
    }

    /// Listens for a tone at `freq ± tolerance` Hz, in windows of 100 ms, for `timeout`.
    pub fn detect_tone(
        &self,
        freq: f64,
        tolerance: f64,
        timeout: Duration,
    ) -> Result<bool, CaptureError> {
        let nyquist = f64::from(frames::AUDIO_RATE) / 2.0;
        if !(freq > 0.0 && freq < nyquist && (0.0..nyquist).contains(&tolerance)) {
            return Err(CaptureError::InvalidArgument(format!(
                "freq_hz must be between 0 and {nyquist} Hz and tolerance_hz below it"
            )));
        }
        let mut samples = self.samples()?;
        let window = frames::samples_in(Duration::from_millis(100));
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::with_capacity(window * 2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match samples.next_into(&mut buf, left.min(FIRST_DATA)) {
                Ok(()) => {}
                Err(CaptureError::Timeout(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
            while let Some(head) = buf.get(..window) {
                if analysis::has_tone(head, frames::AUDIO_RATE, freq, tolerance) {
                    return Ok(true);
                }
                buf.drain(..window);
            }
        }
    }

    fn samples(&self) -> Result<frames::Samples, CaptureError> {
        let source = self.source(Medium::Audio)?.clone();
        match self.tap(Medium::Audio) {
            Some(tap) => Ok(frames::Samples::tap(tap)),
            None => frames::Samples::open(&source),
        }
    }

    /// Starts recording `kind` into a new file of the capture folder; returns its path.
    pub fn start_recording(&self, _: &Permit, kind: Kind) -> Result<PathBuf, CaptureError> {
        let video = match kind {
            Kind::Video | Kind::Both => Some(self.source(Medium::Video)?.clone()),
            Kind::Audio => None,
        };
        let audio = match kind {
            Kind::Audio | Kind::Both => Some(self.source(Medium::Audio)?.clone()),
            Kind::Video => None,
        };
        {
            let recordings = self.recordings();
            if let Some(other) = recordings.keys().find(|k| k.overlaps(kind)) {
                return Err(CaptureError::Busy(format!(
                    "a {} recording is running; stop it first",
                    other.as_str()
                )));
            }
        }
        self.enforce_quota();
        let path = self.inner.store.new_path(kind.as_str(), kind.extension());
        let (this, other) = (self.clone(), self.clone());
        let recording = Recording::start(
            kind,
            path.clone(),
            video.as_ref(),
            audio.as_ref(),
            Box::new(move |kind, path, reason| this.ended(kind, path, reason)),
            Box::new(move || {
                other.enforce_quota();
                other.inner.store.over_quota()
            }),
        )?;
        let mut recordings = self.recordings();
        // Checked again: another start may have won while this one opened the device.
        if recordings.keys().any(|k| k.overlaps(kind)) {
            drop(recordings);
            let _ = recording.stop("superseded");
            return Err(CaptureError::Busy(format!(
                "a {} recording started meanwhile",
                kind.as_str()
            )));
        }
        recordings.insert(kind, recording);
        let (kinds, encoding) = summary(&recordings);
        drop(recordings);
        self.inner.status.send_modify(|s| {
            s.recording = kinds;
            s.video_encoding = encoding;
        });
        self.publish_artifacts();
        Ok(path)
    }

    /// Stops the `kind` recording and waits until its file is finalized; returns its path.
    pub fn stop_recording(&self, _: &Permit, kind: Kind) -> Result<PathBuf, CaptureError> {
        let recording = {
            let recordings = self.recordings();
            match recordings.get(&kind) {
                Some(r) => r.clone(),
                None => {
                    let hint = recordings
                        .keys()
                        .find(|k| k.overlaps(kind))
                        .map(|k| format!(" (a {} recording is running)", k.as_str()))
                        .unwrap_or_default();
                    return Err(CaptureError::NotRecording(format!(
                        "no {} recording is running{hint}",
                        kind.as_str()
                    )));
                }
            }
        };
        if !recording.stop("stopped") {
            return Err(CaptureError::Timeout(format!(
                "{} is still being finalized; `LastStop` says when it is done",
                recording.path.display()
            )));
        }
        Ok(recording.path.clone())
    }

    /// Stops every recording, finalizing its file (daemon stop).
    pub fn stop_all(&self, reason: &str) {
        let all: Vec<Recording> = self.recordings().values().cloned().collect();
        for recording in all {
            if !recording.stop(reason) {
                tracing::warn!(
                    subsystem = "capture",
                    "{} was not finalized in time",
                    recording.path.display()
                );
            }
        }
    }

    /// Called by a recording's thread once its file is finalized.
    fn ended(&self, kind: Kind, path: &Path, reason: String) {
        let mut recordings = self.recordings();
        if recordings.get(&kind).is_some_and(|r| r.path == path) {
            recordings.remove(&kind);
        }
        let (kinds, encoding) = summary(&recordings);
        drop(recordings);
        tracing::info!(
            subsystem = "capture",
            "{} recording ended: {reason}",
            kind.as_str()
        );
        self.inner.status.send_modify(|s| {
            s.recording = kinds;
            s.video_encoding = encoding;
            s.last_stop = format!("{}: {reason}", kind.as_str());
        });
        self.enforce_quota();
    }
}

/// The kinds recording now, and how the video among them is encoded.
fn summary(recordings: &HashMap<Kind, Recording>) -> (Vec<String>, String) {
    let mut kinds: Vec<String> = recordings.keys().map(|k| k.as_str().to_string()).collect();
    kinds.sort();
    let encoding = recordings
        .values()
        .find_map(|r| r.video_passthrough)
        .map(|p| if p { "passthrough" } else { "jpegenc" })
        .unwrap_or_default()
        .to_string();
    (kinds, encoding)
}

fn medium_name(m: Medium) -> &'static str {
    match m {
        Medium::Video => "video",
        Medium::Audio => "audio",
    }
}

fn check_threshold(threshold: f64) -> Result<(), CaptureError> {
    if (0.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(CaptureError::InvalidArgument(format!(
            "threshold {threshold} must be between 0 and 1"
        )))
    }
}

/// `wait_for_screen` always has a tap or a grabber; this keeps the match total.
fn unreachable_grabber() -> Result<image::RgbImage, CaptureError> {
    Err(CaptureError::Device("no frame source".to_string()))
}
