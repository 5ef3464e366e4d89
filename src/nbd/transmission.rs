//! The transmission phase of one connection: requests in, replies out.
//!
//! One task reads requests (buffered: a pipelining client's headers arrive many per read),
//! validates them, does the work and writes the replies itself, into a buffer that goes out
//! in one `send` when no more requests are waiting in the read buffer; so a client at queue
//! depth 1 costs one read and one send per request, and a client with many requests in
//! flight gets many replies per send. A large READ is not copied through this process: its
//! header goes out with `MSG_MORE` and its data with `sendfile`, straight from the page cache
//! to the socket. FLUSH and FUA writes complete in their own tasks and write their replies
//! when done, so a slow `fdatasync` never holds up the reads behind it; the protocol lets
//! replies come out of order, matched by cookie.
//!
//! What one connection may cost is bounded, whatever the client does (docs/nbd.md):
//! - a client that does not read its replies stops being read: replies are written by the
//!   task that made them, which waits while the socket is full, and at most
//!   [`MAX_IN_FLIGHT`] FLUSH or FUA replies may be pending before the reader waits too;
//! - a WRITE's payload is read and written in pieces of [`WRITE_CHUNK`], never held whole;
//! - the reply buffer holds at most [`SEND_BATCH`] and one reply before it is sent.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

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
/// FLUSH and FUA writes whose replies are not written yet: past this, the connection is not
/// read until one is. Above any real client's queue depth (Linux's nbd driver: 128, nbdcopy:
/// 64), so only a client that stopped reading its replies ever meets it.
pub const MAX_IN_FLIGHT: usize = 256;
/// A WRITE's payload is read and written to the overlay in pieces of this size.
pub const WRITE_CHUNK: usize = 256 * 1024;
/// After a DISC, how long the replies still owed may take to go out.
const DISC_LINGER: Duration = Duration::from_secs(10);
/// After the export was withdrawn or the client broke the protocol: the same, shorter (an
/// `Unexport` waits for its connections to close).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

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
    peer: SocketAddr,
    negotiated: Negotiated,
    mut withdrawn: watch::Receiver<bool>,
) -> Ended {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let mut connection = Connection {
        peer,
        export: negotiated.export,
        structured: negotiated.structured,
        allocation: negotiated.allocation,
        writer: Arc::new(tokio::sync::Mutex::new(Writer {
            wr,
            pending: Vec::with_capacity(SEND_BATCH * 2),
        })),
        background: tokio::task::JoinSet::new(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        said_full: false,
        chunk: Vec::new(),
    };
    // Whatever the reader waits for (a request, a full socket, a free FLUSH slot), a
    // withdrawal ends it: no write lands after `Unexport` or `ResetOverlay` returned.
    let ended = tokio::select! {
        biased;
        _ = withdrawn.wait_for(|w| *w) => Ended::Withdrawn,
        e = connection.run(&mut rd) => e,
    };
    // Replies still owed (FLUSH and FUA writes in progress, batched ones) go out before the
    // close, as the spec asks after a DISC; bounded, since a client that does not read them
    // must not hold the connection, and never past a withdrawal.
    let linger = match ended {
        Ended::Disc => Some(DISC_LINGER),
        Ended::Withdrawn | Ended::Protocol(_) => Some(CLOSE_LINGER),
        // The client is gone: there is nobody to answer.
        Ended::Disconnected | Ended::Io(_) => None,
    };
    let mut flushed = Ok(());
    if let Some(linger) = linger {
        let drain = async {
            while connection.background.join_next().await.is_some() {}
            let mut writer = connection.writer.lock().await;
            let flushed = writer.flush().await;
            let _ = writer.wr.shutdown().await;
            flushed
        };
        let withdrawal = async {
            if !matches!(ended, Ended::Withdrawn) {
                let _ = withdrawn.wait_for(|w| *w).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        flushed = tokio::select! {
            biased;
            () = withdrawal => Ok(()),
            r = tokio::time::timeout(linger, drain) => r.unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not read its replies"))
            }),
        };
    }
    // Tasks still running (their replies cannot go out) are aborted with the connection.
    connection.background.abort_all();
    match flushed {
        Err(e) if matches!(ended, Ended::Disc) => Ended::Io(e),
        _ => ended,
    }
}

struct Connection {
    peer: SocketAddr,
    export: Arc<Export>,
    structured: bool,
    allocation: bool,
    writer: SharedWriter,
    /// FLUSH and FUA writes completing in their own tasks.
    background: tokio::task::JoinSet<()>,
    /// One permit per FLUSH or FUA write whose reply is not written yet.
    in_flight: Arc<Semaphore>,
    /// The log already said that this client's replies pile up.
    said_full: bool,
    /// A WRITE's payload, one piece at a time (kept between writes).
    chunk: Vec<u8>,
}

impl Connection {
    /// Reads and answers requests until the client leaves or breaks the protocol.
    async fn run<R>(&mut self, rd: &mut BufReader<R>) -> Ended
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        loop {
            // Nothing more to read at once: what was answered goes out before waiting.
            if rd.buffer().is_empty()
                && let Err(e) = self.writer.lock().await.flush().await
            {
                return Ended::Io(e);
            }
            let mut header = [0u8; REQUEST_LEN];
            match rd.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ended::Disconnected,
                Err(e) => return Ended::Io(e),
            }
            let request = match proto::parse_request(&header) {
                Ok(r) => r,
                Err(bad) => return Ended::Protocol(bad.to_string()),
            };
            match self.handle(request, rd).await {
                Ok(true) => {}
                Ok(false) => return Ended::Disc,
                Err(e) => return e,
            }
        }
    }

    /// Handles one request; false when the client asked to disconnect.
    async fn handle<R>(&mut self, r: Request, rd: &mut R) -> Result<bool, Ended>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        if r.command == Command::Write {
            self.write(&r, rd).await?;
            return Ok(true);
        }
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
            Command::Trim | Command::WriteZeroes => {
                // TRIM may leave anything behind; zeros (a hole in the overlay) are the
                // cheapest answer that is also the most predictable.
                let allocate =
                    r.command == Command::WriteZeroes && r.flags & proto::CMD_FLAG_NO_HOLE != 0;
                let result = export.zero(r.offset, u64::from(r.length), allocate);
                self.finish(&r, result).await?;
            }
            Command::Flush => self.flush_then_reply(&r).await?,
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
            // Read by write() and refused by validate().
            Command::Write | Command::Unknown(_) => {}
        }
        Ok(true)
    }

    /// A WRITE: its payload follows the header whatever we answer, so it is always read, and
    /// the stream stays in step even when the request is refused. It is written to the overlay
    /// piece by piece as it arrives: the whole of it (up to 32 MiB) is never held in memory.
    /// Like a disk, a WRITE that was not acknowledged (the client left halfway, the overlay's
    /// disk filled up) may have landed in part; its clusters read as old or new, never torn.
    async fn write<R>(&mut self, r: &Request, rd: &mut R) -> Result<(), Ended>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let refused = if r.length > proto::MAX_PAYLOAD {
            Some(NbdError::new(
                proto::ENOMEM,
                format!(
                    "write of {} bytes is larger than the maximum of {}",
                    r.length,
                    proto::MAX_PAYLOAD
                ),
            ))
        } else {
            validate(&self.export, self.allocation, r).err()
        };
        if let Some(e) = refused {
            discard(rd, u64::from(r.length)).await?;
            return self.error(r, e).await;
        }
        let total = u64::from(r.length);
        let mut done = 0u64;
        let mut result = Ok(());
        while done < total {
            let n = usize::try_from(total - done)
                .unwrap_or(WRITE_CHUNK)
                .min(WRITE_CHUNK);
            if self.chunk.len() < n {
                self.chunk.resize(WRITE_CHUNK, 0);
            }
            let Some(piece) = self.chunk.get_mut(..n) else {
                return Err(Ended::Protocol("write buffer".to_string()));
            };
            rd.read_exact(piece).await.map_err(eof)?;
            // After a failure the rest is read and dropped: the reply is the first error.
            if result.is_ok() {
                result = self.export.write(piece, r.offset + done);
            }
            done += n as u64;
        }
        self.finish(r, result).await
    }

    /// Answers a completed write: at once, or after a flush when the client asked for FUA.
    async fn finish(&mut self, r: &Request, result: Result<(), NbdError>) -> Result<(), Ended> {
        if result.is_ok() && r.flags & proto::CMD_FLAG_FUA != 0 {
            return self.flush_then_reply(r).await;
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

    /// Flushes in a task of its own and replies from there when done. Waits first while
    /// [`MAX_IN_FLIGHT`] such replies are still unwritten: the client is not reading them,
    /// and this is where it stops being read.
    async fn flush_then_reply(&mut self, r: &Request) -> Result<(), Ended> {
        if self.export.overlay().is_none() {
            // Read-only: nothing was written that could be made durable.
            return self.ok(r).await;
        }
        // Finished tasks leave their entry in the set until joined: reap them, so a long
        // connection's millions of FLUSHes do not add up.
        while self.background.try_join_next().is_some() {}
        let permit = match self.in_flight.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !self.said_full {
                    self.said_full = true;
                    info!(
                        subsystem = "nbd",
                        "{}: {MAX_IN_FLIGHT} replies are waiting for the client to read them; \
                         not reading its requests until it does",
                        self.peer
                    );
                }
                // The semaphore is never closed.
                self.in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| Ended::Protocol(e.to_string()))?
            }
        };
        let export = self.export.clone();
        let writer = self.writer.clone();
        let structured = self.structured;
        let r = *r;
        self.background.spawn(async move {
            let result = export.flushes.flush(&export).await;
            if let Err(e) = &result {
                warn!(subsystem = "nbd", "FLUSH failed: {}", e.message);
            }
            let mut w = writer.lock().await;
            // A client gone meanwhile is noticed by the reader.
            if w.push(&reply_for(&r, structured, result)).await.is_ok() {
                let _ = w.flush().await;
            }
            drop(permit);
        });
        Ok(())
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
        let Some(buf) = header.get_mut(at..at + s.len as usize) else {
            return Err(io::Error::other("a read plan larger than its READ"));
        };
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
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
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
