//! Decompression chosen by the stream's magic bytes (never by the file name): xz (with
//! liblzma's multi-threaded decoder, which decodes the blocks of a multi-block file in
//! parallel), gzip, zstd, bzip2; anything else passes through unchanged.

use std::io::{BufReader, Read};

/// What the first bytes of a source say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
    Bzip2,
    Raw,
}

impl Format {
    /// Detects the format from the stream's first bytes (at least 6 unless the stream is
    /// shorter).
    pub fn detect(head: &[u8]) -> Format {
        if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
        {
            Format::Bzip2
        } else {
            Format::Raw
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Xz => "xz",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Bzip2 => "bzip2",
            Format::Raw => "uncompressed",
        }
    }
}

/// File name suffixes of compressed sources, removed to name the image.
pub const SUFFIXES: &[&str] = &[".xz", ".gz", ".zst", ".bz2"];

/// Memory the xz decoder may use for threads before it falls back to one thread.
const XZ_THREAD_MEMORY: u64 = 1 << 30;

/// Wraps `source` in the decoder its first bytes call for.
pub fn decoder<'a, R: Read + Send + 'a>(
    source: R,
) -> std::io::Result<(Format, Box<dyn Read + Send + 'a>)> {
    // The magic is read first, then put back in front of the rest of the stream.
    let mut source = source;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match source.read(head.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let magic = head.get(..n).unwrap_or_default();
    let format = Format::detect(magic);
    let source =
        BufReader::with_capacity(1 << 20, std::io::Cursor::new(magic.to_vec()).chain(source));
    let reader: Box<dyn Read + Send + 'a> = match format {
        Format::Xz => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                .memlimit_threading(XZ_THREAD_MEMORY)
                .memlimit_stop(u64::MAX)
                .decoder()
                .map_err(std::io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(source, stream))
        }
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(source)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(source)?),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(source)),
        Format::Raw => Box::new(source),
    };
    Ok((format, reader))
}
