//! Frames and samples out of GStreamer: short-lived pipelines that end in an appsink, and
//! pulls from a recording's tap. Video arrives as packed RGB (or as the grabber's JPEG from
//! a passthrough recording's tap, decoded here only when a frame is taken), audio as mono f32 at
//! [`AUDIO_RATE`], whatever the source gives (`videoconvert`, `audioconvert`,
//! `audioresample` in between).

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use image::RgbImage;

use super::CaptureError;
use super::source::{Medium, Source};

/// The rate samples are analysed at.
pub const AUDIO_RATE: u32 = 48_000;
/// The caps of what the video tap and grabber deliver.
pub const RGB_CAPS: &str = "video/x-raw,format=RGB";
/// The caps of what the audio tap and listener deliver.
pub const AUDIO_CAPS: &str = "audio/x-raw,format=F32LE,channels=1,rate=48000";

pub fn samples_in(window: Duration) -> usize {
    (window.as_secs_f64() * f64::from(AUDIO_RATE)).round() as usize
}

/// A running pipeline, set to NULL when dropped (which also closes its device).
pub struct Running(pub gst::Pipeline);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Builds `description`, configures its source, and sets it playing. A device that is
/// missing or busy fails here, with GStreamer's own words.
pub fn launch(description: &str, source: &Source, medium: Medium) -> Result<Running, CaptureError> {
    if let Some(device) = source.device()
        && !device.exists()
    {
        return Err(CaptureError::Device(format!(
            "no such device: {}",
            device.display()
        )));
    }
    let element = gst::parse::launch(description).map_err(|e| {
        CaptureError::Device(format!("cannot build the pipeline `{description}`: {e}"))
    })?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| CaptureError::Device(format!("`{description}` is not a pipeline")))?;
    source.configure(&pipeline, medium);
    let running = Running(pipeline);
    if running.0.set_state(gst::State::Playing).is_err() {
        return Err(CaptureError::Device(
            bus_error(&running.0).unwrap_or_else(|| "the source cannot start".to_string()),
        ));
    }
    Ok(running)
}

/// The first error on the pipeline's bus, if any, as one line.
pub fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = message.view() {
            let from = e
                .src()
                .map(|s| format!("{}: ", s.name()))
                .unwrap_or_default();
            // GStreamer's debug text says why a stream stopped ("reason not-negotiated").
            let why = e
                .debug()
                .and_then(|d| d.lines().last().map(|l| format!(" ({})", l.trim())))
                .unwrap_or_default();
            return Some(format!("{from}{}{why}", e.error()));
        }
    }
    None
}

/// Pulls the next sample of an appsink, waiting at most `timeout`.
fn pull(sink: &gst::Element, timeout: Duration) -> Option<gst::Sample> {
    let ns = gst::ClockTime::from_nseconds(timeout.as_nanos().min(u128::from(u64::MAX)) as u64);
    sink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&ns])
}

/// The latest frame of a video appsink, as RGB.
pub fn pull_frame(sink: &gst::Element, timeout: Duration) -> Result<RgbImage, CaptureError> {
    let sample = pull(sink, timeout).ok_or_else(|| {
        CaptureError::Timeout(format!(
            "no frame from the video source within {} ms",
            timeout.as_millis()
        ))
    })?;
    to_rgb(&sample)
}

fn to_rgb(sample: &gst::Sample) -> Result<RgbImage, CaptureError> {
    let bad = |what: &str| CaptureError::Device(format!("unexpected frame: {what}"));
    let caps = sample.caps().ok_or_else(|| bad("no caps"))?;
    let s = caps.structure(0).ok_or_else(|| bad("empty caps"))?;
    if s.name() == "image/jpeg" {
        // A passthrough recording's tap: the grabber's own JPEG (zune-jpeg fills in the
        // Huffman tables that MJPEG grabbers omit).
        let buffer = sample.buffer().ok_or_else(|| bad("no buffer"))?;
        let map = buffer.map_readable().map_err(|_| bad("unreadable"))?;
        return decode_jpeg(&map)
            .map_err(|e| bad(&format!("undecodable JPEG from the grabber: {e}")));
    }
    let width = s.get::<i32>("width").map_err(|_| bad("no width"))?;
    let height = s.get::<i32>("height").map_err(|_| bad("no height"))?;
    let (width, height) = (
        u32::try_from(width).map_err(|_| bad("width"))?,
        u32::try_from(height).map_err(|_| bad("height"))?,
    );
    let buffer = sample.buffer().ok_or_else(|| bad("no buffer"))?;
    let map = buffer.map_readable().map_err(|_| bad("unreadable"))?;
    let row = width as usize * 3;
    if height == 0 || row == 0 {
        return Err(bad("empty"));
    }
    // GStreamer pads RGB rows to 4 bytes.
    let stride = map.len() / height as usize;
    if stride < row {
        return Err(bad("short buffer"));
    }
    let mut data = Vec::with_capacity(row * height as usize);
    for line in map.chunks_exact(stride).take(height as usize) {
        data.extend_from_slice(line.get(..row).ok_or_else(|| bad("short buffer"))?);
    }
    RgbImage::from_raw(width, height, data).ok_or_else(|| bad("size"))
}

/// One JPEG frame as RGB. Many MJPEG grabbers leave out the Huffman tables (the USB video
/// class allows it: the standard tables of JPEG's annex K apply); zune-jpeg fills those in
/// only for frames marked `AVI1`, so such a frame gets that mark first.
pub fn decode_jpeg(data: &[u8]) -> Result<RgbImage, image::ImageError> {
    let decode = |d: &[u8]| {
        image::load_from_memory_with_format(d, image::ImageFormat::Jpeg).map(|i| i.to_rgb8())
    };
    if !lacks_huffman_tables(data) {
        return decode(data);
    }
    // SOI, then APP0 "AVI1" (length 7), then the frame's own segments.
    let Some((soi, segments)) = data.split_at_checked(2) else {
        return decode(data);
    };
    let mut marked = Vec::with_capacity(data.len() + 9);
    marked.extend_from_slice(soi);
    marked.extend_from_slice(b"\xff\xe0\x00\x07AVI1\x00");
    marked.extend_from_slice(segments);
    decode(&marked)
}

/// Whether a JPEG's header segments, up to its first scan, define no Huffman table.
fn lacks_huffman_tables(data: &[u8]) -> bool {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false; // not JPEG: let the decoder say so
    }
    let mut at = 2;
    while let Some(&[0xFF, marker, high, low, ..]) = data.get(at..) {
        match marker {
            0xC4 => return false,
            0xDA => return true,
            _ => at += 2 + usize::from(u16::from_be_bytes([high, low])),
        }
    }
    false
}

/// A pipeline of its own that delivers the video source's frames.
pub struct FrameGrabber {
    running: Running,
    sink: gst::Element,
}

impl FrameGrabber {
    pub fn open(source: &Source) -> Result<FrameGrabber, CaptureError> {
        let description = format!(
            "{} ! videoconvert ! {RGB_CAPS} ! appsink name=sink max-buffers=1 drop=true \
             sync=false",
            source.describe(Medium::Video, false)
        );
        let running = launch(&description, source, Medium::Video)?;
        let sink = running
            .0
            .by_name("sink")
            .ok_or_else(|| CaptureError::Device("the pipeline lost its appsink".to_string()))?;
        Ok(FrameGrabber { running, sink })
    }

    pub fn next(&mut self, timeout: Duration) -> Result<RgbImage, CaptureError> {
        match pull_frame(&self.sink, timeout) {
            Ok(frame) => Ok(frame),
            Err(e) => Err(match bus_error(&self.running.0) {
                Some(error) => CaptureError::Device(error),
                None => e,
            }),
        }
    }
}

/// Mono f32 samples, from a pipeline of their own or a recording's tap.
pub struct Samples {
    running: Option<Running>,
    sink: gst::Element,
}

impl Samples {
    pub fn open(source: &Source) -> Result<Samples, CaptureError> {
        let description = format!(
            "{} ! audioconvert ! audioresample ! {AUDIO_CAPS} ! appsink name=sink \
             max-buffers=200 drop=true sync=false",
            source.describe(Medium::Audio, false)
        );
        let running = launch(&description, source, Medium::Audio)?;
        let sink = running
            .0
            .by_name("sink")
            .ok_or_else(|| CaptureError::Device("the pipeline lost its appsink".to_string()))?;
        Ok(Samples {
            running: Some(running),
            sink,
        })
    }

    pub fn tap(sink: gst::Element) -> Samples {
        Samples {
            running: None,
            sink,
        }
    }

    /// Appends the next buffer's samples to `out`.
    pub fn next_into(&mut self, out: &mut Vec<f32>, timeout: Duration) -> Result<(), CaptureError> {
        let Some(sample) = pull(&self.sink, timeout) else {
            if let Some(error) = self.running.as_ref().and_then(|r| bus_error(&r.0)) {
                return Err(CaptureError::Device(error));
            }
            return Err(CaptureError::Timeout(format!(
                "no audio from the source within {} ms",
                timeout.as_millis()
            )));
        };
        let buffer = sample
            .buffer()
            .ok_or_else(|| CaptureError::Device("an audio sample without data".to_string()))?;
        let map = buffer
            .map_readable()
            .map_err(|_| CaptureError::Device("unreadable audio buffer".to_string()))?;
        // Whole samples only; a torn one at the end (never seen) is dropped.
        let (samples, _) = map.as_chunks::<4>();
        out.extend(samples.iter().map(|&b| f32::from_le_bytes(b)));
        Ok(())
    }
}
