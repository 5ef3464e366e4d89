//! Capture sources as the config names them, and the GStreamer pipelines built from them.
//!
//! A source is a V4L2 device (`/dev/...`, through `v4l2src`), an ALSA device (`hw:...`,
//! `plughw:...`, `default`, through `alsasrc`), `sim:FILE` (a test source that follows a
//! simulated board, below), or any other text: a GStreamer source pipeline taken as it is,
//! for odd hardware and for test sources (it should be live, e.g. `videotestsrc is-live=true`,
//! or recordings run faster than real time).
//!
//! **`sim:FILE`** is how the simulated board shows a screen and plays a sound: rtm-sim
//! (`--board-screen FILE`) and `rtmd --demo` write the board's state into FILE (`off`,
//! `booting`, `booted`; `unplugged` simulates a grabber pulled out). The video is a live
//! `videotestsrc` that is black while the board is off, blue while it boots and shows SMPTE
//! colour bars once it is booted; the audio is a live `audiotestsrc`, silent unless the
//! board is booted, then a 1 kHz sine. A thread polls the file every 100 ms and sets the
//! element's properties; it ends with the pipeline. A file is the simplest link that
//! survives either side restarting, and needs nothing from rtm-sim but a write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

/// The frequency of the simulated board's tone.
pub const SIM_TONE_HZ: f64 = 1000.0;
/// The name every source element gets, so its device can be set as a property (no quoting
/// of paths into pipeline text) and the sim watcher can find it.
pub const SOURCE_NAME: &str = "rtmsrc";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    V4l2(PathBuf),
    Alsa(String),
    Sim(PathBuf),
    Pipeline(String),
}

/// Video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Video,
    Audio,
}

impl Source {
    pub fn parse(text: &str, medium: Medium) -> Source {
        if let Some(path) = text.strip_prefix("sim:") {
            return Source::Sim(PathBuf::from(path));
        }
        match medium {
            Medium::Video if text.starts_with("/dev/") => Source::V4l2(PathBuf::from(text)),
            Medium::Audio
                if text.starts_with("hw:")
                    || text.starts_with("plughw:")
                    || text == "default"
                    || text.starts_with("sysdefault") =>
            {
                Source::Alsa(text.to_string())
            }
            _ => Source::Pipeline(text.to_string()),
        }
    }

    /// A device that must exist before a pipeline is worth building.
    pub fn device(&self) -> Option<&Path> {
        match self {
            Source::V4l2(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the source may give MJPEG that a recording can keep as it is: a V4L2 grabber,
    /// or a configured pipeline (an odd grabber's may end in `image/jpeg`).
    pub fn may_be_mjpeg(&self) -> bool {
        matches!(self, Source::V4l2(_) | Source::Pipeline(_))
    }

    /// The source part of a pipeline, its first element named [`SOURCE_NAME`] when rtmd
    /// builds it; `mjpeg` asks a V4L2 grabber for its MJPEG stream.
    pub fn describe(&self, medium: Medium, mjpeg: bool) -> String {
        match (self, medium) {
            (Source::V4l2(_), _) if mjpeg => format!("v4l2src name={SOURCE_NAME} ! image/jpeg"),
            (Source::Pipeline(p), Medium::Video) if mjpeg => format!("{p} ! image/jpeg"),
            (Source::V4l2(_), _) => format!("v4l2src name={SOURCE_NAME} ! decodebin"),
            (Source::Alsa(_), _) => format!("alsasrc name={SOURCE_NAME}"),
            (Source::Sim(_), Medium::Video) => format!(
                "videotestsrc name={SOURCE_NAME} is-live=true pattern=black \
                 ! video/x-raw,width=640,height=480,framerate=15/1"
            ),
            (Source::Sim(_), Medium::Audio) => format!(
                "audiotestsrc name={SOURCE_NAME} is-live=true wave=silence freq={SIM_TONE_HZ} \
                 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1"
            ),
            (Source::Pipeline(p), Medium::Video) => format!("{p} ! decodebin"),
            (Source::Pipeline(p), Medium::Audio) => p.clone(),
        }
    }

    /// The source part of a recording: as [`Source::describe`], except that a V4L2 grabber's
    /// raw frames go without `decodebin`, whose renegotiations mid-stream v4l2src cannot
    /// follow with its buffers allocated (seen as `not-negotiated` with vivid).
    pub fn describe_for_recording(&self, medium: Medium, mjpeg: bool) -> String {
        match self {
            Source::V4l2(_) if !mjpeg => format!("v4l2src name={SOURCE_NAME}"),
            _ => self.describe(medium, mjpeg),
        }
    }

    /// Sets the device on the built pipeline's source element, and starts the sim watcher.
    pub fn configure(&self, pipeline: &gst::Pipeline, medium: Medium) {
        if let Some(element) = pipeline.by_name(SOURCE_NAME) {
            self.configure_element(&element, medium);
        }
    }

    /// Sets the device on the source element, and starts the sim watcher.
    pub fn configure_element(&self, element: &gst::Element, medium: Medium) {
        match self {
            Source::V4l2(p) => element.set_property("device", p.to_string_lossy().to_string()),
            Source::Alsa(d) => element.set_property("device", d.as_str()),
            Source::Sim(file) => {
                let mut last = SimState::read(file);
                last.apply(element, medium);
                let weak = element.downgrade();
                let followed = file.clone();
                let spawned = std::thread::Builder::new()
                    .name("capture-sim".into())
                    .spawn(move || {
                        while let Some(element) = weak.upgrade() {
                            let now = SimState::read(&followed);
                            if now != last {
                                now.apply(&element, medium);
                                last = now;
                            }
                            drop(element);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(
                        subsystem = "capture",
                        "cannot follow {}: {e}",
                        file.display()
                    );
                }
            }
            Source::Pipeline(_) => {}
        }
    }
}

/// What the simulated board's state file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimState {
    Off,
    Booting,
    Booted,
    Unplugged,
}

impl SimState {
    /// A missing or unreadable file is a board that is off.
    pub fn read(file: &Path) -> SimState {
        match std::fs::read_to_string(file).as_deref().map(str::trim) {
            Ok("booting") => SimState::Booting,
            Ok("booted") => SimState::Booted,
            Ok("unplugged") => SimState::Unplugged,
            _ => SimState::Off,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SimState::Off => "off",
            SimState::Booting => "booting",
            SimState::Booted => "booted",
            SimState::Unplugged => "unplugged",
        }
    }

    fn apply(self, element: &gst::Element, medium: Medium) {
        if self == SimState::Unplugged {
            // What v4l2src and alsasrc post when their device disappears.
            gst::element_error!(
                element,
                gst::ResourceError::NotFound,
                ("the device was unplugged (simulated)")
            );
            return;
        }
        match medium {
            Medium::Video => element.set_property_from_str(
                "pattern",
                match self {
                    SimState::Booted => "smpte",
                    SimState::Booting => "blue",
                    _ => "black",
                },
            ),
            Medium::Audio => element.set_property_from_str(
                "wave",
                if self == SimState::Booted {
                    "sine"
                } else {
                    "silence"
                },
            ),
        }
    }
}
