//! The checks' arithmetic, pure and without GStreamer: how alike two pictures are, how loud
//! a window of samples is, and whether it holds a tone.
//!
//! **Pictures** are compared as a structural similarity (SSIM) of small grayscale versions:
//! both are scaled to [`GRID`]×[`GRID`] (area averaging, then a triangle filter: both average
//! capture noise away and hide the scaling a grabber applies), then SSIM is taken over 8×8
//! windows and averaged.
//! 1.0 is the same picture; unrelated pictures score near 0. Aspect ratio is not kept: a
//! grabber that stretches 4:3 to 16:9 still matches its reference.
//!
//! **Level** is the RMS of the samples in dBFS, 0 dBFS being a full-scale square wave (so a
//! full-scale sine reads -3.0 dBFS). Silence reads [`SILENCE_DBFS`].
//!
//! **Tones** are found with the Goertzel algorithm, which measures the power at one
//! frequency; the candidate frequencies are scanned within the tolerance in steps of half a
//! bin, and the best share of the window's energy decides.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};

/// Side of the grayscale grid pictures are compared at.
pub const GRID: u32 = 64;
/// What silence (all zero samples) reads, instead of minus infinity.
pub const SILENCE_DBFS: f64 = -200.0;
/// Share of a window's energy a tone must have to count as present.
pub const TONE_SHARE: f64 = 0.5;
/// Quieter windows never hold a tone (dither and hum are not tones).
pub const TONE_FLOOR_DBFS: f64 = -60.0;

/// Scales a picture to the comparison grid, in grayscale. Large pictures are first reduced
/// by area averaging (`thumbnail`: fast, and it averages the noise away) to 4 grid sides.
pub fn grid(picture: &RgbImage) -> GrayImage {
    let side = GRID * 4;
    let gray = if picture.width() > side || picture.height() > side {
        imageops::grayscale(&imageops::thumbnail(picture, side, side))
    } else {
        imageops::grayscale(picture)
    };
    imageops::resize(&gray, GRID, GRID, FilterType::Triangle)
}

/// SSIM of two grid pictures (same size), averaged over 8×8 windows, clamped to 0..=1.
pub fn similarity(a: &GrayImage, b: &GrayImage) -> f64 {
    const WIN: u32 = 8;
    // The usual constants for 8-bit pictures: (0.01 * 255)^2 and (0.03 * 255)^2.
    const C1: f64 = 6.5025;
    const C2: f64 = 58.5225;
    let (w, h) = (a.width().min(b.width()), a.height().min(b.height()));
    let mut total = 0.0;
    let mut windows = 0u32;
    let mut y = 0;
    while y + WIN <= h {
        let mut x = 0;
        while x + WIN <= w {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..WIN {
                for dx in 0..WIN {
                    let pa = f64::from(a.get_pixel(x + dx, y + dy).0[0]);
                    let pb = f64::from(b.get_pixel(x + dx, y + dy).0[0]);
                    sa += pa;
                    sb += pb;
                    saa += pa * pa;
                    sbb += pb * pb;
                    sab += pa * pb;
                }
            }
            let n = f64::from(WIN * WIN);
            let (ma, mb) = (sa / n, sb / n);
            let va = saa / n - ma * ma;
            let vb = sbb / n - mb * mb;
            let cov = sab / n - ma * mb;
            total += ((2.0 * ma * mb + C1) * (2.0 * cov + C2))
                / ((ma * ma + mb * mb + C1) * (va + vb + C2));
            windows += 1;
            x += WIN;
        }
        y += WIN;
    }
    if windows == 0 {
        return 0.0;
    }
    (total / f64::from(windows)).clamp(0.0, 1.0)
}

/// How alike two pictures of any size are (see the module's doc).
pub fn compare(a: &RgbImage, b: &RgbImage) -> f64 {
    similarity(&grid(a), &grid(b))
}

/// RMS level of `samples` (full scale ±1.0) in dBFS.
pub fn level_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / samples.len() as f64).sqrt();
    if rms <= 0.0 {
        return SILENCE_DBFS;
    }
    (20.0 * rms.log10()).max(SILENCE_DBFS)
}

/// Share (0..=1) of the window's energy at `freq` Hz (Goertzel, any frequency).
pub fn tone_share(samples: &[f32], rate: u32, freq: f64) -> f64 {
    let n = samples.len();
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    if n == 0 || energy <= 0.0 {
        return 0.0;
    }
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure sine of amplitude A: power ~ (N A / 2)^2, energy = N A^2 / 2: the share is 1.
    (2.0 * power / (n as f64 * energy)).clamp(0.0, 1.0)
}

/// The best share of energy at a frequency within `freq ± tolerance`.
pub fn best_tone_share(samples: &[f32], rate: u32, freq: f64, tolerance: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    // Half a bin: a tone between two probed frequencies still shows most of its power.
    let step = (f64::from(rate) / samples.len() as f64 / 2.0).max(0.5);
    let tolerance = tolerance.max(0.0);
    let mut best = tone_share(samples, rate, freq);
    let mut offset = step;
    while offset <= tolerance {
        best = best
            .max(tone_share(samples, rate, freq - offset))
            .max(tone_share(samples, rate, freq + offset));
        offset += step;
    }
    best
}

/// Whether `samples` hold a tone at `freq ± tolerance` Hz.
pub fn has_tone(samples: &[f32], rate: u32, freq: f64, tolerance: f64) -> bool {
    level_dbfs(samples) > TONE_FLOOR_DBFS
        && best_tone_share(samples, rate, freq, tolerance) >= TONE_SHARE
}
