//! The console log: every byte from the board, each line prefixed with the time it began
//! (RFC 3339, UTC, milliseconds), in `<log_dir>/console.log`, rotated by size into
//! `console.log.1` ... `console.log.<keep>`. Reconnects and other events are written as lines
//! of their own, starting `[rtmd]`, so the log reads as the board's whole history.
//!
//! Rotation happens at a line start once the file has reached `max_bytes`, so a line is not
//! split between files. A board printing without newlines (a stuck loop, binary output)
//! must not fill the disk, though: a line still open when the file passes `max_bytes` plus
//! [`MID_LINE_SLACK`] is cut there. The old file gets an `[rtmd]` line saying so (on a line of
//! its own, as for a lost device), and the line continues in the new file after a fresh
//! timestamp. A file is thus at most `max_bytes` + [`MID_LINE_SLACK`] + one `[rtmd]` line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How far past `max_bytes` a line may run before the log rotates in the middle of it.
pub const MID_LINE_SLACK: u64 = 64 * 1024;

/// What the old file says when a line is cut by a rotation.
const CUT_NOTE: &str = "the log rotated mid-line; the line continues in the next file";

pub struct ConsoleLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
    at_line_start: bool,
}

impl ConsoleLog {
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<ConsoleLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("console.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(ConsoleLog {
            path,
            max_bytes,
            keep,
            file,
            size,
            at_line_start: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends board output, stamping each line that starts in it.
    pub fn write(&mut self, chunk: &[u8], now: SystemTime) -> io::Result<()> {
        let mut out = Vec::with_capacity(chunk.len() + 32);
        for mut line in chunk.split_inclusive(|&b| b == b'\n') {
            loop {
                if self.at_line_start {
                    if self.size + out.len() as u64 >= self.max_bytes {
                        self.flush_out(&mut out)?;
                        self.rotate()?;
                    }
                    out.extend_from_slice(stamp(now).as_bytes());
                    self.at_line_start = false;
                }
                let room =
                    (self.max_bytes + MID_LINE_SLACK).saturating_sub(self.size + out.len() as u64);
                if line.len() as u64 <= room {
                    out.extend_from_slice(line);
                    self.at_line_start = line.ends_with(b"\n");
                    break;
                }
                // A line without end in sight: cut it here (see the module doc).
                let (head, rest) = line.split_at(room as usize);
                out.extend_from_slice(head);
                self.flush_out(&mut out)?;
                self.note(CUT_NOTE, now)?;
                self.rotate()?;
                line = rest;
            }
        }
        self.flush_out(&mut out)
    }

    /// A line of rtmd's own (device lost, device back), on a line of its own.
    pub fn note(&mut self, text: &str, now: SystemTime) -> io::Result<()> {
        let lead = if self.at_line_start { "" } else { "\n" };
        self.at_line_start = true;
        let line = format!("{lead}{}[rtmd] {text}\n", stamp(now));
        self.write_raw(line.as_bytes())
    }

    fn flush_out(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            let data = std::mem::take(out);
            self.write_raw(&data)?;
        }
        Ok(())
    }

    fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |k: u32| PathBuf::from(format!("{}.{k}", self.path.display()));
        if self.keep > 0 {
            for k in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(k), numbered(k + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn stamp(now: SystemTime) -> String {
    format!("{} ", humantime::format_rfc3339_millis(now))
}

#[cfg(test)]
mod tests;
