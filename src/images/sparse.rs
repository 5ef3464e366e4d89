//! The sparse writer: writes decoded data at its offsets, skipping every all-zero 4 KiB
//! block, so zero regions of an image become holes and cost no disk space. The file's
//! length is set at the end (a trailing zero region is a hole too).
//!
//! Writeback of what was written is started every [`FLUSH_EVERY`] bytes
//! (`sync_file_range`), so the final fsync has little left to wait for and dirty pages do
//! not pile up in memory.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The hole granularity: a block is skipped when all of it is zero.
pub const BLOCK: usize = 4096;
const FLUSH_EVERY: u64 = 64 << 20;

pub struct SparseWriter {
    file: File,
    /// Bytes written or skipped so far (the file's final length).
    offset: u64,
    flushed: u64,
}

impl SparseWriter {
    pub fn new(file: File) -> SparseWriter {
        SparseWriter {
            file,
            offset: 0,
            flushed: 0,
        }
    }

    /// Writes `data` at the current offset; `data` should be a multiple of [`BLOCK`] except
    /// for the last call, so that holes stay block-aligned.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut run_start = None;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            let at = i * BLOCK;
            if is_zero(block) {
                if let Some(start) = run_start.take() {
                    self.file.write_all_at(
                        data.get(start..at).unwrap_or_default(),
                        self.offset + start as u64,
                    )?;
                }
            } else if run_start.is_none() {
                run_start = Some(at);
            }
        }
        if let Some(start) = run_start {
            self.file.write_all_at(
                data.get(start..).unwrap_or_default(),
                self.offset + start as u64,
            )?;
        }
        self.offset += data.len() as u64;
        if self.offset - self.flushed >= FLUSH_EVERY {
            start_writeback(&self.file, self.flushed, self.offset - self.flushed);
            self.flushed = self.offset;
        }
        Ok(())
    }

    /// Sets the length, fsyncs; returns the file and its length.
    pub fn finish(self) -> std::io::Result<(File, u64)> {
        self.file.set_len(self.offset)?;
        self.file.sync_all()?;
        Ok((self.file, self.offset))
    }
}

/// Starts writeback of a written range without waiting for it (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`; nix has no wrapper). Only a hint: errors surface at the final
/// fsync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed.
    unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            len,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// True when every byte is zero. An OR over the whole block without early exit, which the
/// compiler vectorizes: a 4 KiB block costs well under a microsecond.
pub fn is_zero(block: &[u8]) -> bool {
    block.iter().fold(0u8, |a, b| a | b) == 0
}
