//! Recordings: one pipeline and one owner thread each, into Matroska.
//!
//! ```text
//! source ! tee ! queue(vq) ! [jpegenc] ! matroskamux ! filesink
//!            \-> leaky queue ! 5 fps ! RGB ! appsink(vtap)  (snapshots and checks meanwhile)
//! audio  ! tee ! queue(aq) ! flacenc  ! (the same matroskamux for `both`)
//!            \-> leaky queue ! f32 mono 48 kHz ! appsink(atap)
//! ```
//! A V4L2 grabber is first asked for MJPEG, which is written as it comes (no re-encoding);
//! when it cannot give MJPEG (the source fails to negotiate before its first frame) the raw
//! frames are encoded with `jpegenc`. Audio is FLAC: lossless, and cheap next to video.
//!
//! **Finalizing.** Whatever ends a recording (a stop request, the daemon stopping, the
//! device failing, the quota), the owner thread pushes EOS into the muxer's queues itself
//! (a dead source would never send one) and waits, bounded, until EOS reaches the file
//! sink: the muxer has then written its index and sizes, and the file is playable. Then it
//! reports why the recording ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::CaptureError;
use super::frames::{AUDIO_CAPS, RGB_CAPS, Running, bus_error};
use super::source::{Medium, Source};

/// How long the muxer may take to write its index once EOS is sent.
const FINALIZE: Duration = Duration::from_secs(10);
/// How long streaming sources get to end their streams before EOS goes into the muxer.
const SOURCE_EOS: Duration = Duration::from_secs(3);
/// Frames per second the video tap of a re-encoding recording converts to RGB: enough for
/// snapshots and screen checks, and a fraction of the CPU of converting every 1080p frame.
const TAP_FPS: u32 = 5;
/// How often the owner thread looks at the quota.
const QUOTA_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Video,
    Audio,
    Both,
}

impl Kind {
    pub fn parse(word: &str) -> Option<Kind> {
        match word {
            "video" => Some(Kind::Video),
            "audio" => Some(Kind::Audio),
            "both" => Some(Kind::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
            Kind::Both => "both",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Kind::Audio => "mka",
            Kind::Video | Kind::Both => "mkv",
        }
    }

    /// Two recordings that would need the same device.
    pub fn overlaps(self, other: Kind) -> bool {
        self == other || self == Kind::Both || other == Kind::Both
    }
}

/// Called by the owner thread with the recording's kind, path and why it ended.
pub type OnEnd = Box<dyn FnOnce(Kind, &Path, String) + Send>;
/// Called now and then by the owner thread: cleans up, and says whether the folder is
/// still over its quota.
pub type OverQuota = Box<dyn Fn() -> bool + Send>;

/// A running recording: cheap to clone.
#[derive(Clone)]
pub struct Recording {
    pub path: PathBuf,
    /// For a recording with video: whether it writes the source's JPEG frames as they come.
    pub video_passthrough: Option<bool>,
    video_tap: Option<gst::Element>,
    audio_tap: Option<gst::Element>,
    control: Arc<Sender<(String, Sender<()>)>>,
}

impl Recording {
    pub fn start(
        kind: Kind,
        path: PathBuf,
        video: Option<&Source>,
        audio: Option<&Source>,
        on_end: OnEnd,
        over_quota: OverQuota,
    ) -> Result<Recording, CaptureError> {
        let (running, video_passthrough) = match video {
            Some(v) if v.may_be_mjpeg() => match build(&path, Some((v, true)), audio) {
                Ok(r) => (r, Some(true)),
                Err(e) => {
                    tracing::info!(
                        subsystem = "capture",
                        "no MJPEG from the video source ({e}); encoding its raw frames"
                    );
                    (build(&path, Some((v, false)), audio)?, Some(false))
                }
            },
            Some(v) => (build(&path, Some((v, false)), audio)?, Some(false)),
            None => (build(&path, None, audio)?, None),
        };
        let (control, requests) = mpsc::channel();
        let recording = Recording {
            path: path.clone(),
            video_passthrough,
            video_tap: running.pipeline.0.by_name("vtap"),
            audio_tap: running.pipeline.0.by_name("atap"),
            control: Arc::new(control),
        };
        std::thread::Builder::new()
            .name(format!("capture-{}", kind.as_str()))
            .spawn(move || own(running, kind, &path, requests, on_end, over_quota))
            .map_err(|e| CaptureError::Device(format!("cannot start the recording thread: {e}")))?;
        Ok(recording)
    }

    pub fn tap(&self, medium: Medium) -> Option<gst::Element> {
        match medium {
            Medium::Video => self.video_tap.clone(),
            Medium::Audio => self.audio_tap.clone(),
        }
    }

    /// Asks the owner thread to end the recording and waits until the file is finalized;
    /// false when that takes longer than the finalization bound (the thread carries on).
    pub fn stop(&self, reason: &str) -> bool {
        let (done, finished) = mpsc::channel();
        if self.control.send((reason.to_string(), done)).is_err() {
            return true; // ended already
        }
        finished
            .recv_timeout(FINALIZE + Duration::from_secs(5))
            .is_ok()
    }
}

/// A recording's pipeline and the signal that EOS reached its file.
struct Built {
    pipeline: Running,
    eos: Receiver<()>,
}

fn build(
    path: &Path,
    video: Option<(&Source, bool)>,
    audio: Option<&Source>,
) -> Result<Built, CaptureError> {
    let mut description =
        String::from("matroskamux name=mux ! filesink name=out sync=false async=false");
    if let Some((source, mjpeg)) = video {
        let encode = if mjpeg {
            ""
        } else {
            "videoconvert ! jpegenc quality=85 ! "
        };
        // The tap of a passthrough recording keeps the grabber's JPEG frames as they are,
        // every one of them (the latest is never older than a frame), and decodes one only
        // when a snapshot or a check takes it (frames.rs). Raw frames are converted here,
        // so only TAP_FPS of them.
        let tap = if mjpeg {
            String::new()
        } else {
            format!("videorate drop-only=true max-rate={TAP_FPS} ! videoconvert ! {RGB_CAPS} ! ")
        };
        description.push_str(&format!(
            " {} ! tee name=vt ! queue name=vq ! {encode}mux. \
             vt. ! queue leaky=downstream max-size-buffers=2 ! {tap}appsink name=vtap \
             max-buffers=1 drop=true sync=false async=false",
            source.describe_for_recording(Medium::Video, mjpeg)
        ));
    }
    if let Some(source) = audio {
        description.push_str(&format!(
            " {} ! audioconvert ! tee name=at ! queue name=aq ! audioconvert ! flacenc ! mux. \
             at. ! queue leaky=downstream max-size-buffers=200 ! audioconvert ! audioresample \
             ! {AUDIO_CAPS} ! appsink name=atap max-buffers=200 drop=true sync=false async=false",
            source.describe(Medium::Audio, false)
        ));
    }
    // One source per medium: both sources are configured on the one pipeline, each found
    // under its own name.
    let description = rename_sources(&description, video.map(|v| v.0), audio);
    let (first, first_data) = mpsc::channel();
    let (eos_tx, eos) = mpsc::channel();
    let element = gst::parse::launch(&description).map_err(|e| {
        CaptureError::Device(format!("cannot build the pipeline `{description}`: {e}"))
    })?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| CaptureError::Device("not a pipeline".to_string()))?;
    let out = pipeline
        .by_name("out")
        .ok_or_else(|| CaptureError::Device("the pipeline lost its file sink".to_string()))?;
    out.set_property("location", path.to_string_lossy().to_string());
    let pad = out
        .static_pad("sink")
        .ok_or_else(|| CaptureError::Device("the file sink has no pad".to_string()))?;
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(_)) => {
                    let _ = first.send(());
                }
                Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::Eos => {
                    let _ = eos_tx.send(());
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    configure_sources(&pipeline, video.map(|v| v.0), audio);
    let running = Running(pipeline);
    check_devices(video.map(|v| v.0), audio)?;
    if running.0.set_state(gst::State::Playing).is_err() {
        let _ = std::fs::remove_file(path);
        return Err(CaptureError::Device(
            bus_error(&running.0).unwrap_or_else(|| "the source cannot start".to_string()),
        ));
    }
    // Started means data reached the file, or a source said why it cannot deliver.
    let deadline = Instant::now() + super::FIRST_DATA;
    loop {
        match first_data.recv_timeout(Duration::from_millis(50)) {
            // A source that fails before its first frame (v4l2src asked for MJPEG that the
            // device lacks: not-negotiated) posts its error and then sends EOS, on which
            // the muxer writes an empty file: bytes that reach the file after an error are
            // no start. The error is on the bus before that EOS leaves the source.
            Ok(()) => match bus_error(&running.0) {
                None => break,
                Some(error) => {
                    drop(running);
                    let _ = std::fs::remove_file(path);
                    return Err(CaptureError::Device(error));
                }
            },
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Some(error) = bus_error(&running.0) {
                    drop(running);
                    let _ = std::fs::remove_file(path);
                    return Err(CaptureError::Device(error));
                }
            }
            Err(_) => {
                drop(running);
                let _ = std::fs::remove_file(path);
                return Err(CaptureError::Timeout(format!(
                    "no data from the source within {} s",
                    super::FIRST_DATA.as_secs()
                )));
            }
        }
    }
    Ok(Built {
        pipeline: running,
        eos,
    })
}

/// Source elements are `vsrc` and `asrc` in a recording (one pipeline may hold both).
fn rename_sources(description: &str, video: Option<&Source>, audio: Option<&Source>) -> String {
    let mut text = description.to_string();
    let name = format!("name={}", super::source::SOURCE_NAME);
    if video.is_some() {
        text = text.replacen(&name, "name=vsrc", 1);
    }
    if audio.is_some() {
        text = text.replacen(&name, "name=asrc", 1);
    }
    text
}

fn configure_sources(pipeline: &gst::Pipeline, video: Option<&Source>, audio: Option<&Source>) {
    for (source, name, medium) in [
        (video, "vsrc", Medium::Video),
        (audio, "asrc", Medium::Audio),
    ] {
        if let (Some(source), Some(element)) = (source, pipeline.by_name(name)) {
            source.configure_element(&element, medium);
        }
    }
}

fn check_devices(video: Option<&Source>, audio: Option<&Source>) -> Result<(), CaptureError> {
    for device in [video, audio]
        .into_iter()
        .flatten()
        .filter_map(Source::device)
    {
        if !device.exists() {
            return Err(CaptureError::Device(format!(
                "no such device: {}",
                device.display()
            )));
        }
    }
    Ok(())
}

/// The owner thread: waits for a stop request, an error or the quota, then finalizes.
fn own(
    built: Built,
    kind: Kind,
    path: &Path,
    requests: Receiver<(String, Sender<()>)>,
    on_end: OnEnd,
    over_quota: OverQuota,
) {
    let mut last_quota_check = Instant::now();
    // Whether the sources still stream (they can end the stream themselves).
    let mut streaming = true;
    let (reason, done) = loop {
        match requests.recv_timeout(Duration::from_millis(100)) {
            Ok((reason, done)) => break (reason, Some(done)),
            Err(RecvTimeoutError::Disconnected) => break ("dropped".to_string(), None),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(error) = bus_error(&built.pipeline.0) {
            let why = if error.starts_with("out:") {
                format!("storage failed: {error}")
            } else {
                format!("device lost: {error}")
            };
            tracing::warn!(subsystem = "capture", "{} recording: {why}", kind.as_str());
            streaming = false;
            break (why, None);
        }
        if last_quota_check.elapsed() >= QUOTA_CHECK {
            last_quota_check = Instant::now();
            if over_quota() {
                break ("quota: the capture folder is full".to_string(), None);
            }
        }
    };
    let finalized = finalize(&built, streaming);
    drop(built);
    let reason = if finalized {
        reason
    } else {
        format!("{reason}; the file could not be finalized")
    };
    on_end(kind, path, reason);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Ends the streams and waits until EOS reached the file (the muxer wrote its index).
///
/// Sources that still stream end it themselves, as `gst-launch-1.0 -e` does: EOS follows
/// the frames already on their way, and no lock is fought over. (Pushing EOS into the
/// muxer's queues from here instead waits for the queue's stream lock, which the source's
/// thread takes again after every frame: with 4K frames under emulation the stop took a
/// minute.) When a source failed, or does not end its stream in time, EOS goes straight
/// into the muxer's queues.
fn finalize(built: &Built, streaming: bool) -> bool {
    let deadline = Instant::now() + FINALIZE;
    if streaming {
        built.pipeline.0.send_event(gst::event::Eos::new());
        if built.eos.recv_timeout(SOURCE_EOS).is_ok() {
            return true;
        }
        tracing::info!(
            subsystem = "capture",
            "a source did not end its stream within {} s; ending it at the muxer",
            SOURCE_EOS.as_secs()
        );
    }
    for queue in ["vq", "aq"] {
        if let Some(pad) = built
            .pipeline
            .0
            .by_name(queue)
            .and_then(|q| q.static_pad("sink"))
        {
            pad.send_event(gst::event::Eos::new());
        }
    }
    built
        .eos
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}
