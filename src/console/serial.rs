//! The serial owner: the one task that holds the board's console port. It reads the board
//! into the hub and the log, writes client input to the board, sends breaks, and when the
//! port goes away (EOF, EIO: a USB adapter unplugged with the board's power) reports
//! `Connected=false` and reopens the same path with backoff until it is back. Clients stay
//! connected throughout. A port missing at start is not fatal: it is simply not there yet.
//!
//! Input is acknowledged only once written: a `Send` is answered when the port took its last
//! byte (`write` returned), and input still queued when the port goes away fails its senders
//! (a `Send` gets the error, a client a line in its stream, the journal a warning). Breaks
//! are coalesced: requests that arrive while one is pending or on the line join it, and the
//! port is read throughout, so no number of breaks holds the board's output back.

use std::collections::VecDeque;
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
/// Longest a break waits for the input typed before it to go out. A hung board that stopped
/// taking input (flow control) is when a break (Magic SysRq) is needed most.
const BREAK_WAIT: Duration = Duration::from_secs(2);

pub enum Input {
    /// Bytes for the board, and who typed them (to answer, or to tell if they are lost).
    Data { data: Bytes, from: Typist },
    /// A break, from whom (for the log line that says it was sent), and where to answer
    /// (a telnet client gets no answer).
    Break {
        from: String,
        reply: Option<oneshot::Sender<Result<(), ConsoleError>>>,
    },
}

/// Who typed a piece of input.
pub enum Typist {
    /// A D-Bus `Send`: answered once the bytes were written to the port, or with the error.
    Call(oneshot::Sender<Result<(), ConsoleError>>),
    /// A front-end client: gets no answer, but is told in its own stream when input it
    /// typed was not written (a bounded queue, written to only if it has room).
    Client {
        label: String,
        notice: mpsc::Sender<Bytes>,
    },
}

/// Client input between the channel and the port: what waits to be written, who typed it,
/// and a break waiting for it or on the line.
#[derive(Default)]
struct InputQueue {
    unwritten: BytesMut,
    /// Bytes ever queued and written: `pending` entries end at a `queued` offset.
    queued: u64,
    written: u64,
    /// Who typed which bytes, oldest first, by the `queued` offset after their last byte.
    pending: VecDeque<(u64, Typist)>,
    brk: Option<PendingBreak>,
    /// Input that came after the pending break (it waits for the break to end).
    held: Option<(Bytes, Typist)>,
}

struct PendingBreak {
    from: String,
    replies: Vec<oneshot::Sender<Result<(), ConsoleError>>>,
    /// Requests that joined the first one.
    joined: usize,
    /// Set while the line is held low, until when.
    until: Option<tokio::time::Instant>,
    /// When it was requested: it waits for the input before it at most [`BREAK_WAIT`].
    since: tokio::time::Instant,
}

impl InputQueue {
    fn push(&mut self, data: &[u8], from: Typist) {
        self.unwritten.extend_from_slice(data);
        self.queued += data.len() as u64;
        // A client typing one byte per packet must not grow the list: consecutive input of
        // one client is one entry.
        if let (Typist::Client { label, .. }, Some((end, Typist::Client { label: last, .. }))) =
            (&from, self.pending.back_mut())
            && last == label
        {
            *end = self.queued;
            return;
        }
        self.pending.push_back((self.queued, from));
    }

    /// `n` bytes went out: answers the `Send`s now written completely.
    fn wrote(&mut self, n: usize) {
        let _ = self.unwritten.split_to(n.min(self.unwritten.len()));
        self.written += n as u64;
        while self
            .pending
            .front()
            .is_some_and(|(end, _)| *end <= self.written)
        {
            if let Some((_, Typist::Call(reply))) = self.pending.pop_front() {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Whether more input may be taken from the channel now: below the bound with no break
    /// pending, or (while one is) until something other than a break arrives.
    fn accepts(&self) -> bool {
        match self.brk {
            None => self.unwritten.len() < MAX_UNWRITTEN,
            Some(_) => self.held.is_none(),
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Data { data, from } if self.brk.is_some() => self.held = Some((data, from)),
            Input::Data { data, from } => self.push(&data, from),
            Input::Break { from, reply } => match &mut self.brk {
                Some(b) => {
                    b.joined += 1;
                    b.replies.extend(reply);
                }
                None => {
                    self.brk = Some(PendingBreak {
                        from,
                        replies: reply.into_iter().collect(),
                        joined: 0,
                        until: None,
                        since: tokio::time::Instant::now(),
                    })
                }
            },
        }
    }

    /// The break is over (or failed): answers its requesters and lets held input in.
    fn end_break(&mut self, result: Result<(), ConsoleError>) -> Option<PendingBreak> {
        let mut b = self.brk.take()?;
        for reply in b.replies.drain(..) {
            let _ = reply.send(result.clone());
        }
        if let Some((data, from)) = self.held.take() {
            self.push(&data, from);
        }
        Some(b)
    }

    /// The port went away: everything queued fails its senders. Returns how many bytes
    /// were lost and who had typed them, for the log.
    fn fail_all(&mut self, device: &str, reason: &str) -> Option<String> {
        if let Some(b) = self.brk.as_mut() {
            b.until = None;
        }
        let _ = self.end_break(Err(ConsoleError::Hardware(format!(
            "the console device {device} went away before the break was sent ({reason})"
        ))));
        let lost = self.unwritten.len();
        if lost == 0 {
            self.pending.clear();
            return None;
        }
        let mut who: Vec<String> = Vec::new();
        let mut start = self.written;
        for (end, from) in self.pending.drain(..) {
            let n = end.saturating_sub(start);
            start = end;
            let error = format!(
                "the console device {device} went away before {n} bytes of input were \
                 written ({reason})"
            );
            match from {
                Typist::Call(reply) => {
                    let _ = reply.send(Err(ConsoleError::Hardware(error)));
                    who.push("Send".to_string());
                }
                Typist::Client { label, notice } => {
                    let _ = notice.try_send(Bytes::from(format!("\r\n[rtmd: {error}]\r\n")));
                    who.push(label);
                }
            }
        }
        who.dedup();
        self.unwritten.clear();
        self.written = self.queued;
        Some(format!(
            "{lost} bytes of console input were not written (typed by {})",
            who.join(", ")
        ))
    }
}

pub struct Owner {
    config: ConsoleConfig,
    hub: Arc<Hub>,
    input: mpsc::Receiver<Input>,
    status: watch::Sender<ConsoleStatus>,
    log: Option<ConsoleLog>,
    /// The log could not be written last time (warned about once).
    log_failing: bool,
    queue: InputQueue,
    /// Clients told, since the port went away, that their typing was not written: one line
    /// each per outage (at most [`TOLD_MAX`] remembered, then the rest are not told).
    told: Vec<String>,
}

const TOLD_MAX: usize = 64;

impl Owner {
    pub fn new(
        config: ConsoleConfig,
        hub: Arc<Hub>,
        input: mpsc::Receiver<Input>,
        status: watch::Sender<ConsoleStatus>,
        log: Option<ConsoleLog>,
    ) -> Owner {
        Owner {
            config,
            hub,
            input,
            status,
            log,
            log_failing: false,
            queue: InputQueue::default(),
            told: Vec::new(),
        }
    }
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
                    self.told.clear();
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
                    let device = self.config.device.display().to_string();
                    if let Some(lost) = self.queue.fail_all(&device, &reason) {
                        warn!(subsystem = "console", "{lost}: {device} went away");
                        self.note(&lost);
                    }
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
    /// Reading never waits for writing: client input goes into the queue and out with single
    /// `write` calls in their own select branch, so a board that does not read its input (or
    /// a slow line under a long paste) never stops its output from being read and published.
    /// Input is taken from the channel only while less than [`MAX_UNWRITTEN`] waits, which
    /// pushes back on the clients. A break waits until the input before it is written, then
    /// holds the line for [`BREAK`] while reading goes on; breaks requested meanwhile join it.
    async fn pump(&mut self, port: SerialStream) -> Option<String> {
        use std::os::fd::AsRawFd;
        let fd = port.as_raw_fd();
        let (mut reader, mut writer) = tokio::io::split(port);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut extra = vec![0u8; 16 * 1024];
        loop {
            // A pending break goes on the line once the input before it is out, or once it
            // waited long enough for it.
            let now = tokio::time::Instant::now();
            if let Some(b) = self.queue.brk.as_mut()
                && b.until.is_none()
                && (self.queue.unwritten.is_empty() || now >= b.since + BREAK_WAIT)
            {
                if !self.queue.unwritten.is_empty() {
                    warn!(
                        subsystem = "console",
                        "sending a break before {} bytes of earlier input: {} has not taken \
                         them in {} s",
                        self.queue.unwritten.len(),
                        self.config.device.display(),
                        BREAK_WAIT.as_secs()
                    );
                }
                match break_ctl(fd, true) {
                    Ok(()) => b.until = Some(tokio::time::Instant::now() + BREAK),
                    Err(e) => {
                        let _ = self.queue.end_break(Err(e));
                    }
                }
            }
            let holding = self.queue.brk.as_ref().and_then(|b| b.until);
            // The next moment the loop must act without I/O: the end of the break on the
            // line, or the end of a pending break's wait for earlier input.
            let wake = self
                .queue
                .brk
                .as_ref()
                .map(|b| b.until.unwrap_or(b.since + BREAK_WAIT));
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
                                Some(n) if n > 0 => {
                                    buf.extend_from_slice(extra.get(..n).unwrap_or_default())
                                }
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
                // Nothing is written while the line is held in a break.
                written = writer.write(&self.queue.unwritten),
                    if !self.queue.unwritten.is_empty() && holding.is_none() => match written {
                    Ok(n) => self.queue.wrote(n),
                    Err(e) => return Some(e.to_string()),
                },
                input = self.input.recv(), if self.queue.accepts() => match input {
                    None => return None,
                    Some(input) => self.queue.take(input),
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {
                    if holding.is_none() {
                        continue; // the pending break's wait is over: the top of the loop sends it
                    }
                    let cleared = break_ctl(fd, false);
                    let ok = cleared.is_ok();
                    if let Some(b) = self.queue.end_break(cleared)
                        && ok
                    {
                        // The evidence that a break went out: a pseudo-terminal (the
                        // tests' board) accepts TIOCSBRK and does nothing with it, so
                        // nothing on the board side can see one.
                        let joined = match b.joined {
                            0 => String::new(),
                            n => format!(", and {n} more requests joined it"),
                        };
                        info!(
                            subsystem = "console",
                            "break sent on {} for {} ms (requested by {}{joined})",
                            self.config.device.display(),
                            BREAK.as_millis(),
                            b.from
                        );
                        self.note(&format!("break sent for {} ms", BREAK.as_millis()));
                    }
                }
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
                    Some(input) => self.refuse(input),
                },
            }
        }
    }

    /// Input while the port is away: a `Send` or break gets `NotConnected`, a client a line
    /// in its stream (once per outage), the journal a line per client.
    fn refuse(&mut self, input: Input) {
        let device = self.config.device.display().to_string();
        match input {
            Input::Data {
                from: Typist::Call(reply),
                ..
            } => {
                let _ = reply.send(Err(ConsoleError::NotConnected(device)));
            }
            Input::Data {
                data,
                from: Typist::Client { label, notice },
            } => {
                if !self.told.contains(&label) && self.told.len() < TOLD_MAX {
                    warn!(
                        subsystem = "console",
                        "{} bytes typed by {label} not written: {device} is not connected",
                        data.len()
                    );
                    let _ = notice.try_send(Bytes::from(format!(
                        "\r\n[rtmd: input not written: the console device {device} is not connected]\r\n"
                    )));
                    self.told.push(label);
                }
            }
            Input::Break { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ConsoleError::NotConnected(device)));
                }
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

/// Sets (`on`) or clears the break condition on the line (TIOCSBRK, TIOCCBRK, as the
/// serialport crate's `set_break` does; on the descriptor, since the port is split for reading
/// and writing). The owner holds it for [`BREAK`] in between, reading all the while.
fn break_ctl(fd: std::os::fd::RawFd, on: bool) -> Result<(), ConsoleError> {
    let request = if on {
        nix::libc::TIOCSBRK
    } else {
        nix::libc::TIOCCBRK
    };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> (Typist, oneshot::Receiver<Result<(), ConsoleError>>) {
        let (tx, rx) = oneshot::channel();
        (Typist::Call(tx), rx)
    }

    #[test]
    fn a_send_is_answered_once_its_last_byte_is_written() {
        let mut q = InputQueue::default();
        let (a, mut ra) = call();
        let (b, mut rb) = call();
        q.push(b"hello", a);
        q.push(b"world", b);
        q.wrote(4);
        assert!(ra.try_recv().is_err(), "answered before its last byte");
        q.wrote(1);
        assert_eq!(ra.try_recv().unwrap(), Ok(()));
        q.wrote(5);
        assert_eq!(rb.try_recv().unwrap(), Ok(()));
        assert!(q.pending.is_empty() && q.unwritten.is_empty());
    }

    #[test]
    fn input_queued_when_the_device_goes_fails_each_sender() {
        let mut q = InputQueue::default();
        let (notice, mut told) = mpsc::channel(4);
        let client = |label: &str| Typist::Client {
            label: label.to_string(),
            notice: notice.clone(),
        };
        q.push(b"typed", client("127.0.0.1:5000"));
        q.push(b" more", client("127.0.0.1:5000"));
        assert_eq!(q.pending.len(), 1, "one client's run of input is one entry");
        let (s, mut rs) = call();
        q.push(&[b'x'; 100], s);
        q.wrote(3);
        let log = q.fail_all("/dev/ttyUSB0", "Input/output error").unwrap();
        assert_eq!(
            log,
            "107 bytes of console input were not written (typed by 127.0.0.1:5000, Send)"
        );
        assert_eq!(
            rs.try_recv().unwrap(),
            Err(ConsoleError::Hardware(
                "the console device /dev/ttyUSB0 went away before 100 bytes of input were \
                 written (Input/output error)"
                    .to_string()
            ))
        );
        let line = told.try_recv().unwrap();
        assert_eq!(
            &line[..],
            b"\r\n[rtmd: the console device /dev/ttyUSB0 went away before 7 bytes of input \
              were written (Input/output error)]\r\n"
        );
        assert!(
            q.fail_all("/dev/ttyUSB0", "again").is_none(),
            "nothing left"
        );
    }

    #[test]
    fn breaks_join_the_pending_one_and_input_after_waits_for_it() {
        let mut q = InputQueue::default();
        let mut replies = Vec::new();
        for i in 0..2048 {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            assert!(q.accepts());
            q.take(Input::Break {
                from: format!("client {i}"),
                reply: Some(tx),
            });
        }
        let (s, mut rs) = call();
        q.take(Input::Data {
            data: Bytes::from_static(b"b"),
            from: s,
        });
        assert!(!q.accepts(), "nothing more until the break is over");
        assert!(q.unwritten.is_empty(), "input after a break waits for it");
        let b = q.end_break(Ok(())).unwrap();
        assert_eq!((b.from.as_str(), b.joined), ("client 0", 2047));
        assert!(replies.iter_mut().all(|r| r.try_recv() == Ok(Ok(()))));
        assert_eq!(&q.unwritten[..], b"b");
        q.wrote(1);
        assert_eq!(rs.try_recv().unwrap(), Ok(()));
    }
}
