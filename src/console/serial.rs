//! The serial owner: the one task that holds the board's console port. It reads the board
//! into the hub and the log, writes client input to the board, sends breaks, and when the
//! port goes away (EOF, EIO: a USB adapter unplugged with the board's power) reports
//! `Connected=false` and reopens the same path with backoff until it is back. Clients stay
//! connected throughout. A port missing at start is not fatal: it is simply not there yet.

// TEMPORARY: removed when the lead fixes this file after the merge (issue 13 item 1)
#![allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tracing::{info, warn};

use super::hub::Hub;
use super::log::ConsoleLog;
use super::{ConsoleError, ConsoleStatus};
use crate::config::{ConsoleConfig, FlowControl, Parity};

/// How long a break holds the line low (the classic 250 ms; Linux's tcsendbreak(0) too).
const BREAK: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;
/// Client input waiting for the port beyond which no more is taken from the clients.
const MAX_UNWRITTEN: usize = 64 * 1024;

pub enum Input {
    Data(Bytes),
    /// A break, from whom (for the log line that says it was sent), and where to answer.
    Break {
        from: String,
        reply: oneshot::Sender<Result<(), ConsoleError>>,
    },
}

pub struct Owner {
    pub config: ConsoleConfig,
    pub hub: Arc<Hub>,
    pub input: mpsc::Receiver<Input>,
    pub status: watch::Sender<ConsoleStatus>,
    pub log: Option<ConsoleLog>,
    /// The log could not be written last time (warned about once).
    pub log_failing: bool,
}

fn open(config: &ConsoleConfig) -> Result<SerialStream, String> {
    let path = &config.device;
    let builder = tokio_serial::new(path.to_string_lossy(), config.baud)
        .data_bits(match config.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match config.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if config.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match config.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            FlowControl::Software => tokio_serial::FlowControl::Software,
        });
    let port = builder
        .open_native_async()
        .map_err(|e| describe_open_error(path, &e))?;
    Ok(port)
}

fn describe_open_error(path: &Path, e: &tokio_serial::Error) -> String {
    let d = path.display();
    match e.kind {
        tokio_serial::ErrorKind::NoDevice => format!("{d} is not there (unplugged?)"),
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => {
            format!("{d} is not there (unplugged?)")
        }
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
            format!("permission denied opening {d} (is rtmd in its group, e.g. dialout?)")
        }
        _ if e.description.contains("Not a typewriter")
            || e.description.contains("Inappropriate ioctl") =>
        {
            format!("{d} is not a serial port (not a tty)")
        }
        _ => format!("cannot open {d}: {}", e.description),
    }
}

impl Owner {
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut last_reason = String::new();
        loop {
            match open(&self.config) {
                Ok(port) => {
                    info!(
                        subsystem = "console",
                        "console {} connected",
                        self.config.device.display()
                    );
                    self.note("console device connected");
                    self.set(true, None);
                    last_reason.clear();
                    backoff = BACKOFF_MIN;
                    let reason = match self.pump(port).await {
                        Some(reason) => reason,
                        None => return, // the daemon is stopping
                    };
                    warn!(
                        subsystem = "console",
                        "console device lost: {reason}; clients stay connected, reopening"
                    );
                    self.note(&format!("console device lost: {reason}"));
                    self.set(false, Some(reason));
                }
                Err(reason) => {
                    if reason != last_reason {
                        warn!(subsystem = "console", "{reason}; retrying until it appears");
                        self.set(false, Some(reason.clone()));
                        last_reason = reason;
                    }
                }
            }
            if !self.wait_disconnected(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Serves the open port until it fails (returns why) or the input channel closes (`None`).
    ///
    /// Reading never waits for writing: client input goes into `unwritten` and out with
    /// single `write` calls in their own select branch, so a board that does not read its
    /// input (or a slow line under a long paste) never stops its output from being read and
    /// published. Input is taken from the channel only while less than [`MAX_UNWRITTEN`]
    /// waits, which pushes back on the clients. A break first writes what waits, then holds
    /// the line, so it comes where the client put it.
    async fn pump(&mut self, port: SerialStream) -> Option<String> {
        use std::os::fd::AsRawFd;
        let fd = port.as_raw_fd();
        let (mut reader, mut writer) = tokio::io::split(port);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut extra = vec![0u8; 16 * 1024];
        let mut unwritten = BytesMut::new();
        loop {
            if buf.capacity() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => return Some("end of file".to_string()),
                    Ok(_) => {
                        // Take what else the port already holds (a pty hands out 4 KiB per
                        // read) so one burst is one chunk for the log and every client.
                        // Polled once each, never waited for: a timer of zero would
                        // still wait for the timer wheel's next tick (1 ms).
                        while buf.len() < READ_CHUNK {
                            match read_ready(&mut reader, &mut extra).await {
                                Some(n) if n > 0 => buf.extend_from_slice(&extra[..n]),
                                _ => break,
                            }
                        }
                        let chunk = buf.split().freeze();
                        if let Some(log) = self.log.as_mut() {
                            match log.write(&chunk, SystemTime::now()) {
                                // Said once per failure spell, not once per chunk (a full disk).
                                Err(e) if !self.log_failing => {
                                    warn!(subsystem = "console", "cannot write the console log: {e}");
                                    self.log_failing = true;
                                }
                                Err(_) => {}
                                Ok(()) => self.log_failing = false,
                            }
                        }
                        self.hub.publish(&chunk);
                    }
                    Err(e) => return Some(e.to_string()),
                },
                // One `write` per turn: cancel-safe, and the loop reads again in between.
                written = writer.write(&unwritten), if !unwritten.is_empty() => match written {
                    Ok(n) => {
                        let _ = unwritten.split_to(n);
                    }
                    Err(e) => return Some(e.to_string()),
                },
                input = self.input.recv(), if unwritten.len() < MAX_UNWRITTEN => match input {
                    None => return None,
                    Some(Input::Data(data)) => unwritten.extend_from_slice(&data),
                    Some(Input::Break { from, reply }) => {
                        if !unwritten.is_empty() {
                            if let Err(e) = writer.write_all(&unwritten).await {
                                return Some(e.to_string());
                            }
                            unwritten.clear();
                        }
                        let sent = send_break(fd).await;
                        if sent.is_ok() {
                            // The evidence that a break went out: a pseudo-terminal (the
                            // tests' board) accepts TIOCSBRK and does nothing with it, so
                            // nothing on the board side can see one.
                            info!(
                                subsystem = "console",
                                "break sent on {} for {} ms (requested by {from})",
                                self.config.device.display(),
                                BREAK.as_millis()
                            );
                            self.note(&format!("break sent for {} ms", BREAK.as_millis()));
                        }
                        let _ = reply.send(sent);
                    }
                },
            }
        }
    }

    /// Waits `delay` while the port is away, answering requests; false when stopping.
    async fn wait_disconnected(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                input = self.input.recv() => match input {
                    None => return false,
                    Some(Input::Data(_)) => {} // nobody to type to; the sender was told
                    Some(Input::Break { reply, .. }) => {
                        let _ = reply.send(Err(ConsoleError::NotConnected(self.config.device.display().to_string())));
                    }
                },
            }
        }
    }

    fn set(&self, connected: bool, error: Option<String>) {
        self.status.send_if_modified(|s| {
            let changed = s.connected != connected || s.last_error != error;
            s.connected = connected;
            s.last_error = error;
            changed
        });
    }

    fn note(&mut self, text: &str) {
        if let Some(log) = self.log.as_mut() {
            let _ = log.note(text, SystemTime::now());
        }
    }
}

/// Reads what the port has right now, without waiting: `None` when nothing is ready (or on
/// an error, which the next ordinary read reports).
async fn read_ready<R: AsyncRead + Unpin>(port: &mut R, into: &mut [u8]) -> Option<usize> {
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(into);
        Poll::Ready(match Pin::new(&mut *port).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Some(rb.filled().len()),
            _ => None,
        })
    })
    .await
}

/// A real break: the line held low for [`BREAK`] (TIOCSBRK, then TIOCCBRK, as the serialport
/// crate's `set_break` does; on the descriptor, since the port is split for reading and
/// writing).
async fn send_break(fd: std::os::fd::RawFd) -> Result<(), ConsoleError> {
    let ioctl = |request| {
        // SAFETY: TIOCSBRK and TIOCCBRK take no argument; `fd` is the open port, which the
        // caller's halves keep open for the whole call.
        if unsafe { nix::libc::ioctl(fd, request) } == 0 {
            Ok(())
        } else {
            Err(ConsoleError::Hardware(format!(
                "cannot send a break: {}",
                std::io::Error::last_os_error()
            )))
        }
    };
    ioctl(nix::libc::TIOCSBRK)?;
    tokio::time::sleep(BREAK).await;
    ioctl(nix::libc::TIOCCBRK)
}
