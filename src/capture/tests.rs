//! Unit tests of the capture subsystem's pure parts: the checks' arithmetic, source
//! names, recording kinds, the quota and PNG references; and a recording whose source
//! cannot start.

use image::{Rgb, RgbImage};

use super::analysis::{compare, has_tone, level_dbfs};
use super::frames::decode_jpeg;
use super::source::{Medium, Source};
use super::{Capture, CaptureError, Kind, store};

fn sine(freq: f64, amplitude: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin() as f32)
        .collect()
}

/// Eight vertical colour bars, like videotestsrc's SMPTE pattern's top.
fn bars(w: u32, h: u32) -> RgbImage {
    let colours = [
        [192, 192, 192],
        [192, 192, 0],
        [0, 192, 192],
        [0, 192, 0],
        [192, 0, 192],
        [192, 0, 0],
        [0, 0, 192],
        [0, 0, 0],
    ];
    RgbImage::from_fn(w, h, |x, _| Rgb(colours[(x * 8 / w) as usize]))
}

#[test]
fn a_full_scale_sine_reads_minus_3_dbfs() {
    let level = level_dbfs(&sine(1000.0, 1.0, 4800));
    assert!((level + 3.01).abs() < 0.05, "{level}");
    assert_eq!(level_dbfs(&[0.0; 100]), super::analysis::SILENCE_DBFS);
    assert_eq!(level_dbfs(&[]), super::analysis::SILENCE_DBFS);
}

#[test]
fn tones_are_found_within_their_tolerance_only() {
    let tone = sine(1000.0, 0.5, 4800);
    assert!(has_tone(&tone, 48_000, 1000.0, 0.0));
    assert!(has_tone(&tone, 48_000, 1020.0, 30.0));
    assert!(!has_tone(&tone, 48_000, 440.0, 20.0));
    assert!(!has_tone(&[0.0; 4800], 48_000, 1000.0, 50.0));
    // A tone between two probed frequencies.
    assert!(has_tone(&sine(1003.0, 0.5, 4800), 48_000, 1000.0, 10.0));
    // Noise is not a tone.
    let mut x: u32 = 1;
    let noise: Vec<f32> = (0..4800)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as f32 / 32768.0 - 1.0
        })
        .collect();
    assert!(!has_tone(&noise, 48_000, 1000.0, 50.0));
}

#[test]
fn pictures_match_through_noise_and_scaling_but_not_others() {
    let reference = bars(320, 240);
    assert!(compare(&reference, &reference) > 0.99);
    // Captured at another size, with noise.
    let mut captured = image::imageops::resize(
        &bars(1920, 1080),
        1280,
        720,
        image::imageops::FilterType::Nearest,
    );
    for (i, p) in captured.pixels_mut().enumerate() {
        let n = ((i * 7919) % 17) as u8;
        p.0 = p.0.map(|c| c.saturating_add(n));
    }
    // rtmctl's default threshold is 0.8.
    let score = compare(&captured, &reference);
    assert!(score > 0.8, "{score}");
    let black = RgbImage::new(640, 480);
    let score = compare(&black, &reference);
    assert!(score < 0.5, "{score}");
}

#[test]
fn sources_are_told_apart_by_their_names() {
    assert_eq!(
        Source::parse("/dev/rtm/b/hdmi", Medium::Video),
        Source::V4l2("/dev/rtm/b/hdmi".into())
    );
    assert_eq!(
        Source::parse("hw:CARD=MS2109", Medium::Audio),
        Source::Alsa("hw:CARD=MS2109".into())
    );
    assert_eq!(
        Source::parse("sim:/run/x", Medium::Audio),
        Source::Sim("/run/x".into())
    );
    assert_eq!(
        Source::parse("videotestsrc is-live=true", Medium::Video),
        Source::Pipeline("videotestsrc is-live=true".into())
    );
}

#[test]
fn kinds_overlap_when_they_share_a_device() {
    assert_eq!(Kind::parse("both"), Some(Kind::Both));
    assert_eq!(Kind::parse("screen"), None);
    assert!(Kind::Video.overlaps(Kind::Both));
    assert!(Kind::Audio.overlaps(Kind::Audio));
    assert!(!Kind::Audio.overlaps(Kind::Video));
}

#[test]
fn the_quota_removes_the_oldest_artifacts_but_not_active_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = store::Store::open(dir.path(), 2500).unwrap();
    let mut paths = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("a{i}.png"));
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        paths.push(p);
    }
    // a0 is a running recording: kept although oldest.
    s.enforce_quota(&paths[..1]);
    assert!(paths[0].exists());
    assert!(!paths[1].exists());
    assert!(!paths[2].exists());
    assert!(paths[3].exists());
}

#[test]
fn references_must_be_readable_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = store::read_png(&dir.path().join("none.png")).unwrap_err();
    assert!(missing.to_string().contains("none.png"), "{missing}");
    let text = dir.path().join("text.png");
    std::fs::write(&text, "hello").unwrap();
    assert!(
        store::read_png(&text)
            .unwrap_err()
            .to_string()
            .contains("not a PNG")
    );
    let png = dir.path().join("ok.png");
    store::write_png(&png, &bars(64, 48)).unwrap();
    assert_eq!(store::read_png(&png).unwrap().dimensions(), (64, 48));
    let broken = dir.path().join("broken.png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&broken, &bytes[..40]).unwrap();
    assert!(store::read_png(&broken).is_err());
}

#[test]
fn a_full_disk_is_said_plainly() {
    // /dev/full: every write fails with ENOSPC. The temporary file cannot be created in
    // /dev by an unprivileged user, so this uses the store's words on the error itself.
    let e = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
    assert_eq!(super::store::storage_words(e), "disk full");
}

/// `data` without its DHT segments, as an MJPEG grabber sends its frames.
fn without_huffman_tables(data: &[u8]) -> Vec<u8> {
    let mut out = data[..2].to_vec(); // SOI
    let mut at = 2;
    while at + 4 <= data.len() && data[at] == 0xFF {
        let marker = data[at + 1];
        if marker == 0xDA {
            break; // SOS: the entropy-coded data follows; keep the rest as it is
        }
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        if marker != 0xC4 {
            out.extend_from_slice(&data[at..at + 2 + len]);
        }
        at += 2 + len;
    }
    out.extend_from_slice(&data[at..]);
    out
}

#[test]
fn a_grabbers_mjpeg_frame_decodes_even_without_huffman_tables() {
    let picture = bars(320, 180);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&picture)
        .unwrap();
    let stripped = without_huffman_tables(&jpeg);
    assert!(stripped.len() < jpeg.len(), "no DHT segment was removed");
    for data in [&jpeg, &stripped] {
        let frame = decode_jpeg(data).unwrap();
        assert_eq!(frame.dimensions(), (320, 180));
        let score = compare(&frame, &picture);
        assert!(score > 0.95, "{score}");
    }
    assert!(decode_jpeg(b"\xff\xd8 not a jpeg").is_err());
}

/// A source that cannot negotiate posts its error and then sends EOS, on which the muxer
/// writes an empty file: that file is no start. (vivid has no MJPEG: the recording's MJPEG
/// attempt was taken for started, and the recording ended at once with not-negotiated.)
#[test]
fn a_source_that_cannot_negotiate_starts_no_recording() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(&crate::config::CaptureConfig {
        video: None,
        // 8 kHz cannot become 16 kHz; behind a funnel only negotiation finds that out.
        audio: Some(
            "audiotestsrc is-live=true ! audio/x-raw,rate=8000 ! funnel \
             ! audio/x-raw,rate=16000"
                .into(),
        ),
        dir: dir.path().to_path_buf(),
        quota_bytes: 1 << 20,
    })
    .unwrap();
    for _ in 0..5 {
        match capture.start_recording(&crate::access::Permit::for_tests(), Kind::Audio) {
            Err(CaptureError::Device(e)) => assert!(e.contains("not-negotiated"), "{e}"),
            other => panic!("started: {other:?}"),
        }
        assert!(capture.status().recording.is_empty());
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left: {left:?}");
}
