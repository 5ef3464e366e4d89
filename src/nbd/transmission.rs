//! The transmission phase of one connection: requests in, replies out.
//!
//! One task reads requests (buffered: a pipelining client's headers arrive many per read),
//! validates them, does the work and writes the replies itself, into a buffer that goes out
//! in one `send` when no more requests are waiting in the read buffer; so a client at queue
//! depth 1 costs one read and one send per request, and a client with many requests in
//! flight gets many replies per send. A large READ is not copied through this process: its
//! header goes out with `MSG_MORE` and its data with `sendfile`, straight from the page cache
//! to the socket. FLUSH and FUA writes complete on blocking threads and write their replies
//! when done, so a slow `fdatasync` never holds up the reads behind it; the protocol lets
//! replies come out of order, matched by cookie.

// TEMPORARY: removed when the lead fixes this file after the merge (issue 13 item 1)
#![allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::sys::socket::{MsgFlags, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::export::{Export, NbdError, Segment};
use super::handshake::Negotiated;
use super::proto::{self, Command, REQUEST_LEN, Request};

/// How far requests are read ahead.
const READ_BUFFER: usize = 256 * 1024;
/// Replies are sent once this much is buffered, even with more requests waiting.
const SEND_BATCH: usize = 64 * 1024;
/// The most extents one BLOCK_STATUS reply carries (the client asks again for the rest).
const MAX_EXTENTS: usize = 4096;
/// READs up to this size are copied into the reply buffer (one `pread`, and the reply goes
/// out with others in one `send`); larger ones go by `sendfile`. Measured: for 4 KiB random
/// reads the copy path costs less than setting up a splice per request
/// (docs/BENCHMARKS.md).
const COPY_MAX: u32 = 64 * 1024;

/// The sending side: replies waiting to go out, and the socket.
struct Writer {
    wr: OwnedWriteHalf,
    pending: Vec<u8>,
}

impl Writer {
    async fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= SEND_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            send_all(self.wr.as_ref(), &self.pending, false).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// A large READ: what is pending and the header, then the file ranges by `sendfile`.
    async fn data(&mut self, header: &[u8], segments: &[Segment]) -> io::Result<()> {
        self.pending.extend_from_slice(header);
        send_all(self.wr.as_ref(), &self.pending, true).await?;
        self.pending.clear();
        for s in segments {
            sendfile_all(self.wr.as_ref(), s).await?;
        }
        Ok(())
    }
}

type SharedWriter = Arc<tokio::sync::Mutex<Writer>>;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("the client disconnected")]
    Disconnected,
    #[error("the client sent NBD_CMD_DISC")]
    Disc,
    #[error("the export was withdrawn")]
    Withdrawn,
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Serves requests on `stream` until the client leaves or `withdrawn` turns true.
pub async fn serve(
    stream: TcpStream,
    negotiated: Negotiated,
    mut withdrawn: watch::Receiver<bool>,
) -> Ended {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let mut connection = Connection {
        export: negotiated.export,
        structured: negotiated.structured,
        allocation: negotiated.allocation,
        writer: Arc::new(tokio::sync::Mutex::new(Writer {
            wr,
            pending: Vec::with_capacity(SEND_BATCH * 2),
        })),
        background: tokio::task::JoinSet::new(),
    };
    let ended = loop {
        // Nothing more to read at once: what was answered goes out before waiting.
        if rd.buffer().is_empty()
            && let Err(e) = connection.writer.lock().await.flush().await
        {
            break Ended::Io(e);
        }
        let mut header = [0u8; REQUEST_LEN];
        let read = tokio::select! {
            biased;
            _ = withdrawn.wait_for(|w| *w) => break Ended::Withdrawn,
            r = rd.read_exact(&mut header) => r,
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ended::Disconnected,
            Err(e) => break Ended::Io(e),
        }
        let request = match proto::parse_request(&header) {
            Ok(r) => r,
            Err(bad) => break Ended::Protocol(bad.to_string()),
        };
        match connection.handle(request, &mut rd).await {
            Ok(true) => {}
            Ok(false) => break Ended::Disc,
            Err(e) => break e,
        }
    };
    // Replies of FLUSH and FUA writes still in progress go out before the close (a DISC
    // waits for them, as the spec asks).
    while connection.background.join_next().await.is_some() {}
    let mut writer = connection.writer.lock().await;
    let flushed = writer.flush().await;
    let _ = writer.wr.shutdown().await;
    match flushed {
        Err(e) if matches!(ended, Ended::Disc) => Ended::Io(e),
        _ => ended,
    }
}

struct Connection {
    export: Arc<Export>,
    structured: bool,
    allocation: bool,
    writer: SharedWriter,
    /// FLUSH and FUA writes completing on blocking threads.
    background: tokio::task::JoinSet<()>,
}

impl Connection {
    /// Handles one request; false when the client asked to disconnect.
    async fn handle<R>(&mut self, r: Request, rd: &mut R) -> Result<bool, Ended>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        // A WRITE's payload follows its header whatever we answer: read it first, so the
        // stream stays in step even when the request is refused.
        let payload = if r.command == Command::Write {
            if r.length > proto::MAX_PAYLOAD {
                discard(rd, u64::from(r.length)).await?;
                self.error(
                    &r,
                    NbdError::new(
                        proto::ENOMEM,
                        format!(
                            "write of {} bytes is larger than the maximum of {}",
                            r.length,
                            proto::MAX_PAYLOAD
                        ),
                    ),
                )
                .await?;
                return Ok(true);
            }
            let mut data = vec![0u8; r.length as usize];
            rd.read_exact(&mut data).await.map_err(eof)?;
            Some(data)
        } else {
            None
        };
        if let Err(e) = validate(&self.export, self.allocation, &r) {
            self.error(&r, e).await?;
            return Ok(true);
        }
        let export = &self.export;
        match r.command {
            Command::Read => {
                let header = if self.structured {
                    proto::offset_data_header(r.cookie, r.offset, r.length).to_vec()
                } else {
                    proto::simple_reply(r.cookie, 0).to_vec()
                };
                let segments = export.read_plan(r.offset, u64::from(r.length));
                if r.length <= COPY_MAX {
                    // Small: one buffer with the header, coalesced with other replies.
                    match copy_segments(header, &segments, r.length) {
                        Ok(bytes) => self.send(&bytes).await?,
                        Err(e) => {
                            self.error(&r, NbdError::io("reading the image", &e))
                                .await?
                        }
                    }
                } else {
                    self.writer.lock().await.data(&header, &segments).await?;
                }
            }
            Command::Write => {
                let data = payload.unwrap_or_default();
                let result = export.write(&data, r.offset);
                self.finish(&r, result).await?;
            }
            Command::Trim | Command::WriteZeroes => {
                // TRIM may leave anything behind; zeros (a hole in the overlay) are the
                // cheapest answer that is also the most predictable.
                let allocate =
                    r.command == Command::WriteZeroes && r.flags & proto::CMD_FLAG_NO_HOLE != 0;
                let result = export.zero(r.offset, u64::from(r.length), allocate);
                self.finish(&r, result).await?;
            }
            Command::Flush => self.flush_then_reply(&r),
            Command::Cache => {
                export.cache(r.offset, u64::from(r.length));
                self.ok(&r).await?;
            }
            Command::BlockStatus => {
                let max = if r.flags & proto::CMD_FLAG_REQ_ONE != 0 {
                    1
                } else {
                    MAX_EXTENTS
                };
                match export.block_status(r.offset, u64::from(r.length), max) {
                    Ok(extents) => {
                        self.send(&proto::block_status_chunk(r.cookie, &extents))
                            .await?
                    }
                    Err(e) => self.error(&r, e).await?,
                }
            }
            Command::Disc => return Ok(false),
            // Refused by validate().
            Command::Unknown(_) => {}
        }
        Ok(true)
    }

    /// Answers a completed write: at once, or after a flush when the client asked for FUA.
    async fn finish(&mut self, r: &Request, result: Result<(), NbdError>) -> Result<(), Ended> {
        if result.is_ok() && r.flags & proto::CMD_FLAG_FUA != 0 {
            self.flush_then_reply(r);
            return Ok(());
        }
        if let Err(e) = &result {
            // Not the client's mistake (a full overlay disk, an I/O error): the admin's.
            warn!(
                subsystem = "nbd",
                "{} failed: {}",
                r.command.name(),
                e.message
            );
        }
        self.send(&reply_for(r, self.structured, result)).await
    }

    /// Flushes on a blocking thread and replies from there when done.
    fn flush_then_reply(&mut self, r: &Request) {
        let export = self.export.clone();
        let writer = self.writer.clone();
        let structured = self.structured;
        let r = *r;
        self.background.spawn(async move {
            let result = tokio::task::spawn_blocking(move || export.flush())
                .await
                .unwrap_or_else(|e| Err(NbdError::new(proto::EIO, e.to_string())));
            if let Err(e) = &result {
                warn!(subsystem = "nbd", "FLUSH failed: {}", e.message);
            }
            let mut w = writer.lock().await;
            // A client gone meanwhile is noticed by the reader.
            if w.push(&reply_for(&r, structured, result)).await.is_ok() {
                let _ = w.flush().await;
            }
        });
    }

    async fn ok(&self, r: &Request) -> Result<(), Ended> {
        self.send(&reply_for(r, self.structured, Ok(()))).await
    }

    async fn error(&self, r: &Request, e: NbdError) -> Result<(), Ended> {
        debug!(
            subsystem = "nbd",
            "{} refused: {}",
            r.command.name(),
            e.message
        );
        self.send(&reply_for(r, self.structured, Err(e))).await
    }

    /// Queues a reply; it goes out with the next batch.
    async fn send(&self, reply: &[u8]) -> Result<(), Ended> {
        Ok(self.writer.lock().await.push(reply).await?)
    }
}

/// The checks every server must make before touching data, in nbdkit's order, so that
/// the same bad request gets the same errno from both.
pub fn validate(export: &Export, allocation: bool, r: &Request) -> Result<(), NbdError> {
    let writes = matches!(
        r.command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if let Command::Unknown(n) = r.command {
        return Err(NbdError::new(proto::EINVAL, format!("unknown command {n}")));
    }
    if writes && export.overlay().is_none() {
        return Err(NbdError::new(proto::EPERM, "the export is read-only"));
    }
    match r.command {
        Command::Disc | Command::Flush | Command::Unknown(_) => {}
        _ => {
            if !export.in_range(r.offset, r.length) {
                let errno = if matches!(r.command, Command::Write | Command::WriteZeroes) {
                    proto::ENOSPC
                } else {
                    proto::EINVAL
                };
                return Err(NbdError::new(
                    errno,
                    format!(
                        "{} of {} bytes at {} is beyond the end of the export ({} bytes)",
                        r.command.name(),
                        r.length,
                        r.offset,
                        export.size
                    ),
                ));
            }
        }
    }
    if r.flags & !proto::CMD_FLAGS_KNOWN != 0 {
        return Err(NbdError::new(
            proto::EINVAL,
            format!("unknown command flags {:#x}", r.flags),
        ));
    }
    if r.flags & proto::CMD_FLAG_DF != 0 && r.command != Command::Read {
        return Err(NbdError::new(proto::EINVAL, "DF is only for READ"));
    }
    if r.flags & proto::CMD_FLAG_REQ_ONE != 0 && r.command != Command::BlockStatus {
        return Err(NbdError::new(
            proto::EINVAL,
            "REQ_ONE is only for BLOCK_STATUS",
        ));
    }
    if r.flags & proto::CMD_FLAG_NO_HOLE != 0 && r.command != Command::WriteZeroes {
        return Err(NbdError::new(
            proto::EINVAL,
            "NO_HOLE is only for WRITE_ZEROES",
        ));
    }
    if r.command == Command::Read && r.length > proto::MAX_PAYLOAD {
        return Err(NbdError::new(
            proto::ENOMEM,
            format!(
                "read of {} bytes is larger than the maximum of {}",
                r.length,
                proto::MAX_PAYLOAD
            ),
        ));
    }
    if matches!(r.command, Command::Read | Command::Write) && r.length == 0 {
        return Err(NbdError::new(proto::EINVAL, "zero-length request"));
    }
    if r.command == Command::BlockStatus {
        if !allocation {
            return Err(NbdError::new(
                proto::EINVAL,
                "BLOCK_STATUS without base:allocation negotiated",
            ));
        }
        if r.length == 0 {
            return Err(NbdError::new(proto::EINVAL, "zero-length BLOCK_STATUS"));
        }
    }
    Ok(())
}

fn reply_for(r: &Request, structured: bool, result: Result<(), NbdError>) -> Vec<u8> {
    match (result, structured) {
        (Ok(()), true) => proto::done_chunk(r.cookie).to_vec(),
        (Ok(()), false) => proto::simple_reply(r.cookie, 0).to_vec(),
        (Err(e), true) => proto::error_chunk(r.cookie, e.errno, &e.message),
        (Err(e), false) => proto::simple_reply(r.cookie, e.errno).to_vec(),
    }
}

/// A READ reply in one buffer: `header` then the data of `segments`.
fn copy_segments(mut header: Vec<u8>, segments: &[Segment], len: u32) -> io::Result<Vec<u8>> {
    let start = header.len();
    header.resize(start + len as usize, 0);
    let mut at = start;
    for s in segments {
        let buf = &mut header[at..at + s.len as usize];
        let n = super::overlay::read_full_at(&s.file, buf, s.offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the exported file shrank",
            ));
        }
        at += s.len as usize;
    }
    Ok(header)
}

fn eof(e: io::Error) -> Ended {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Ended::Disconnected
    } else {
        Ended::Io(e)
    }
}

/// Reads and drops `len` bytes (the payload of a refused oversized write).
async fn discard<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, len: u64) -> Result<(), Ended> {
    let copied = tokio::io::copy(&mut rd.take(len), &mut tokio::io::sink())
        .await
        .map_err(eof)?;
    if copied < len {
        return Err(Ended::Disconnected);
    }
    Ok(())
}

/// Sends all of `buf`; `more` tells the kernel that data follows (the file data of a READ),
/// so header and data leave in one segment.
async fn send_all(stream: &TcpStream, mut buf: &[u8], more: bool) -> io::Result<()> {
    let flags = if more {
        // nix has no name for MSG_MORE.
        MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            send(raw(stream), buf, flags).map_err(io::Error::from)
        }) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn sendfile_all(stream: &TcpStream, s: &Segment) -> io::Result<()> {
    let mut offset = s.offset as nix::libc::off64_t;
    let mut left = s.len as usize;
    while left > 0 {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(stream.as_fd(), s.file.as_fd(), Some(&mut offset), left)
                .map_err(io::Error::from)
        }) {
            Ok(0) => {
                // The file is shorter than when the READ was planned: a truncated image.
                // The client already has the header, so the stream cannot be kept in step.
                warn!(subsystem = "nbd", "the exported file shrank under a READ");
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the exported file shrank",
                ));
            }
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn raw(stream: &TcpStream) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    stream.as_raw_fd()
}
