//! One fetch: a job with progress, run on its own threads.
//!
//! ```text
//! reader thread        source bytes -> sha256 -> progress (bytes done)  ─┐ 1 MiB chunks
//! fetch thread         magic-byte detection -> decoder                  <─┘ ─┐ 1 MiB blocks
//! writer thread        sparse writer (holes for zero blocks) -> fsync       <─┘
//! ```
//!
//! The data goes to a partial file in `<dir>/.rtmd/partial/` (same filesystem as the image),
//! which becomes the image by `rename` only after the checksum matched and the data was
//! fsynced; then the folder is fsynced. Any failure, or a cancel, deletes the partial file:
//! nothing half-written is ever visible under an image's name. A process that has the old
//! image open (an NBD export) keeps reading the old file.
//!
//! A partial file is named after the process (`<pid>.<n>.<image>`) and holds an exclusive
//! `flock` from its creation until it is renamed or removed. Several rtmd (boards sharing a
//! folder, or a second instance started by mistake) clean up only partial files whose lock is
//! free, that is files of a process that ended ([`clean_partials`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use nix::fcntl::{Flock, FlockArg};

use super::cache::{self, Record};
use super::decode::{self, Format, SUFFIXES};
use super::local::{self, Opened};
use super::source::Source;
use super::sparse::{BLOCK, SparseWriter};
use super::{Error, Store, check_components};
use crate::access::clip;

pub const PARTIAL_DIR: &str = "partial";
/// Unit of work between the threads.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between two threads.
const QUEUE: usize = 8;
/// How often a thread blocked on its neighbour looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        self != JobState::Running
    }
}

/// A fetch's progress and, once finished, its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub state: JobState,
    /// Source bytes read (compressed bytes, for a compressed source).
    pub done: u64,
    /// Source size, when known (file size, Content-Length).
    pub total: Option<u64>,
    /// The image name (relative to the folder), known from the start.
    pub image: Option<String>,
    pub error: Option<String>,
    /// [`Error::kind`] of the failure.
    pub error_kind: Option<&'static str>,
    /// The image was already there: nothing was fetched.
    pub cached: bool,
    /// sha256 of the source, once read completely.
    pub sha256: Option<String>,
    /// Size of the image written.
    pub size: u64,
    pub source: String,
}

impl Progress {
    fn running(source: &str, image: &str) -> Progress {
        Progress {
            state: JobState::Running,
            done: 0,
            total: None,
            image: Some(image.to_string()),
            error: None,
            error_kind: None,
            cached: false,
            sha256: None,
            size: 0,
            source: source.to_string(),
        }
    }
}

/// A running or finished fetch.
pub struct FetchJob {
    progress: watch::Receiver<Progress>,
    cancel: Arc<AtomicBool>,
}

impl FetchJob {
    /// The job's progress; changes at every chunk read and once at the end.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Asks the job to stop; it finishes as `Cancelled` (unless it already finished) and
    /// leaves nothing behind.
    pub fn cancel(&self, _: &crate::access::Permit) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Waits until the job has finished; returns its final progress.
    pub async fn finished(&self) -> Progress {
        let mut rx = self.progress.clone();
        loop {
            let now = rx.borrow_and_update().clone();
            if now.state.is_finished() || rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }
}

/// What a fetch reads: a local file already opened (and admitted) for the caller, or a URL.
enum Input {
    File(Opened),
    Url(String),
}

/// Validates (a local file is opened here, as `uid` may: `local.rs`), answers from the
/// cache, or starts the fetch threads.
pub fn start(
    store: &Store,
    source: &str,
    sha256: Option<&str>,
    uid: Option<u32>,
) -> Result<FetchJob, Error> {
    let expected = match sha256.map(str::trim) {
        None | Some("") => None,
        Some(h) => Some(parse_sha256(h)?),
    };
    let src = Source::parse(source)?;
    let name = image_name(&src)?;
    let inner = &store.inner;
    let input = match src {
        Source::File(path) => {
            let opened = local::open(&path, &inner.local_dirs, uid)?;
            info!(
                subsystem = "images",
                "{source}: local file {} admitted for uid {}",
                opened.path.display(),
                uid.map_or_else(|| "none".to_string(), |u| u.to_string())
            );
            Input::File(opened)
        }
        Source::Http(url) => Input::Url(url),
    };

    if let Some(sha) = &expected
        && let Some(record) = cache::lookup(&inner.state, sha)
        && std::fs::symlink_metadata(inner.dir.join(&record.name)).is_ok_and(|m| record.matches(&m))
    {
        info!(
            subsystem = "images",
            "{source}: already fetched as {} (sha256 {sha})", record.name
        );
        let progress = Progress {
            state: JobState::Done,
            done: 0,
            total: None,
            image: Some(record.name.clone()),
            cached: true,
            sha256: Some(sha.clone()),
            size: record.size,
            ..Progress::running(source, &record.name)
        };
        return Ok(FetchJob {
            progress: watch::Sender::new(progress).subscribe(),
            cancel: Arc::new(AtomicBool::new(false)),
        });
    }

    let active = ActiveName::claim(store, &name)?;
    let cancel = Arc::new(AtomicBool::new(false));
    if let Ok(mut running) = inner.running.lock() {
        running.retain(|w| w.strong_count() > 0);
        running.push(Arc::downgrade(&cancel));
    }
    let (tx, rx) = watch::channel(Progress::running(source, &name));
    let job = Fetch {
        store: store.clone(),
        source: source.to_string(),
        input: Some(input),
        name,
        expected,
        cancel: cancel.clone(),
        tx,
    };
    std::thread::Builder::new()
        .name("fetch".to_string())
        .spawn(move || {
            let _active = active;
            job.run();
        })
        .map_err(|e| Error::Io(format!("cannot start the fetch thread: {e}")))?;
    Ok(FetchJob {
        progress: rx,
        cancel,
    })
}

/// A sha256 in hex (either case), as lowercase.
pub(super) fn parse_sha256(h: &str) -> Result<String, Error> {
    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(Error::InvalidArgs(format!(
            "bad sha256 {h:?}: expected 64 hexadecimal digits"
        )))
    }
}

/// The source's file name without its compression suffix, checked like an image name:
/// what it decodes to becomes a file name, a D-Bus property and log lines.
pub(super) fn image_name(src: &Source) -> Result<String, Error> {
    let leaf = src.file_name()?;
    let stem = SUFFIXES
        .iter()
        .find_map(|suffix| {
            let cut = leaf.len().checked_sub(suffix.len())?;
            let tail = leaf.get(cut..)?;
            tail.eq_ignore_ascii_case(suffix)
                .then(|| leaf.get(..cut))
                .flatten()
        })
        .unwrap_or(leaf.as_str());
    if stem.is_empty() || stem.contains('/') || stem == ".." {
        return Err(Error::InvalidArgs(format!(
            "cannot name an image after the source's file name {leaf:?}"
        )));
    }
    check_components(Path::new(stem), stem)
}

/// Marks an image name as being fetched; released when dropped.
struct ActiveName {
    store: Store,
    name: String,
}

impl ActiveName {
    fn claim(store: &Store, name: &str) -> Result<ActiveName, Error> {
        let mut active = store
            .inner
            .active
            .lock()
            .map_err(|_| Error::Io("the image store's state is poisoned".to_string()))?;
        if !active.insert(name.to_string()) {
            return Err(Error::Busy(format!("{name} is already being fetched")));
        }
        Ok(ActiveName {
            store: store.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for ActiveName {
    fn drop(&mut self) {
        if let Ok(mut active) = self.store.inner.active.lock() {
            active.remove(&self.name);
        }
    }
}

/// A partial file of this process: locked while it exists, deleted unless the fetch
/// succeeded.
struct Partial {
    path: PathBuf,
    /// Held from creation until after the rename (or the removal): other rtmd see it taken.
    /// Never read; dropping it unlocks, after `Drop` removed the file.
    _lock: Flock<std::fs::File>,
    keep: bool,
}

impl Partial {
    /// Creates and locks a new partial file for `name` in `dir`; returns it and the file to
    /// write (a second descriptor of it: the lock stays with `Partial`).
    fn create(dir: &Path, name: &str) -> Result<(Partial, std::fs::File), Error> {
        use std::os::unix::fs::MetadataExt;
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let leaf = name.replace('/', "_");
        let mut last = None;
        for _ in 0..8 {
            let path = dir.join(format!(
                "{}.{}.{leaf}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ));
            let file = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path.display().to_string(), &e)),
            };
            // Another rtmd cleaning up may have locked it between the create and now
            // (it then removes it): take a new name.
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // Still ours under that name? A cleanup may have removed it before our lock.
            let ours = match (lock.metadata(), std::fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !ours {
                continue;
            }
            let writer = lock
                .try_clone()
                .map_err(|e| Error::io(&path.display().to_string(), &e));
            match writer {
                Ok(writer) => {
                    return Ok((
                        Partial {
                            path,
                            _lock: lock,
                            keep: false,
                        },
                        writer,
                    ));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Io(format!(
                "cannot create a partial file in {}: names kept being taken",
                dir.display()
            ))
        }))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the descriptor after this.
        if !self.keep
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(
                subsystem = "images",
                "cannot remove the partial file {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A partial file made as a fetch makes it, for the unit tests: its path, and what holds it
/// (its lock and its writer) until dropped.
#[cfg(test)]
pub(super) fn tests_partial(dir: &Path, name: &str) -> (PathBuf, impl Sized) {
    let Ok((partial, writer)) = Partial::create(dir, name) else {
        panic!("cannot create a partial file in {}", dir.display());
    };
    (partial.path.clone(), (partial, writer))
}

/// Removes the partial files in `dir` that no running fetch holds (their process ended:
/// a crash, a kill); leaves the others, which belong to a fetch of another rtmd on the same
/// folder.
pub(super) fn clean_partials(dir: &Path) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(&dir.display().to_string(), &e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(
                    subsystem = "images",
                    "cannot look at {}: {e}",
                    path.display()
                );
                continue;
            }
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Ours now: nobody writes it. Removed while locked, so a fetch that just
                // created it under this name sees it gone and takes another name.
                match std::fs::remove_file(&path) {
                    Ok(()) => info!(
                        subsystem = "images",
                        "removed {} left by an interrupted fetch",
                        path.display()
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!(
                        subsystem = "images",
                        "cannot remove {}: {e}",
                        path.display()
                    ),
                }
                drop(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => info!(
                subsystem = "images",
                "left {} alone: a running fetch (another rtmd) holds it",
                path.display()
            ),
            Err((_, e)) => warn!(subsystem = "images", "cannot lock {}: {e}", path.display()),
        }
    }
    Ok(())
}

struct Fetch {
    store: Store,
    source: String,
    /// Taken by [`Fetch::fetch`].
    input: Option<Input>,
    name: String,
    expected: Option<String>,
    cancel: Arc<AtomicBool>,
    tx: watch::Sender<Progress>,
}

impl Fetch {
    fn run(mut self) {
        let started = Instant::now();
        info!(
            subsystem = "images",
            "fetching {} as {}", self.source, self.name
        );
        let result = self.fetch();
        let result = if self.cancel.load(Ordering::SeqCst) && result.is_err() {
            Err(Error::Cancelled)
        } else {
            result
        };
        match &result {
            Ok((sha, size)) => {
                let secs = started.elapsed().as_secs_f64();
                info!(
                    subsystem = "images",
                    "fetched {} ({size} bytes, sha256 {sha}) in {secs:.1} s", self.name
                );
                self.store.changed();
            }
            Err(Error::Cancelled) => {
                info!(subsystem = "images", "fetch of {} cancelled", self.source)
            }
            Err(e) => warn!(
                subsystem = "images",
                "fetch of {} failed: {}",
                self.source,
                printable(e)
            ),
        }
        self.tx.send_modify(|p| match result {
            Ok((sha, size)) => {
                p.state = JobState::Done;
                p.sha256 = Some(sha);
                p.size = size;
            }
            Err(e) => {
                p.state = if matches!(e, Error::Cancelled) {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                p.error_kind = Some(e.kind());
                p.error = Some(printable(&e));
            }
        });
    }

    /// The pipeline; returns the source's sha256 and the image size.
    fn fetch(&mut self) -> Result<(String, u64), Error> {
        let inner = &self.store.inner;
        let (reader, total): (Box<dyn Read + Send>, Option<u64>) = match self.input.take() {
            Some(Input::File(opened)) => (Box::new(opened.file), Some(opened.size)),
            Some(Input::Url(url)) => Source::open_url(&url, inner.ca_file.as_deref())?,
            None => return Err(Error::Io("the fetch has no input".to_string())),
        };
        self.tx.send_modify(|p| p.total = total);
        if self.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }

        let (partial, file) = Partial::create(&inner.state.join(PARTIAL_DIR), &self.name)?;

        // The reader stops when the fetch is cancelled or the pipeline behind it failed.
        let stop = Arc::new(AtomicBool::new(false));
        let (chunk_tx, chunk_rx) = sync_channel(QUEUE);
        let reader = spawn("fetch-read", {
            let stop = stop.clone();
            let cancel = self.cancel.clone();
            let tx = self.tx.clone();
            let what = self.source.clone();
            move || read_source(reader, &what, chunk_tx, &tx, &cancel, &stop)
        })?;
        let (block_tx, block_rx) = sync_channel::<Vec<u8>>(QUEUE);
        let writer = spawn("fetch-write", {
            let cancel = self.cancel.clone();
            let name = self.name.clone();
            move || write_image(file, block_rx, &cancel, &name)
        })?;

        let mut input = ChannelReader {
            rx: chunk_rx,
            chunk: Vec::new(),
            pos: 0,
            cancel: self.cancel.clone(),
        };
        let decoded = decode_into(&mut input, &block_tx);
        drop(block_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Io("the writer thread panicked".to_string())));
        if decoded.is_err() || written.is_err() {
            stop.store(true, Ordering::SeqCst);
            drop(input);
            // The reader's own failure (a cut connection) explains a truncated stream
            // better than the decoder does; take it if the reader has finished. A reader
            // still blocked on a stalled server is left to notice `stop` by itself.
            // (Its `Cancelled` only says that it saw the pipeline stop.)
            if reader.is_finished()
                && let Ok(Err(e)) = reader.join()
                && !matches!(e, Error::Cancelled)
            {
                return Err(e);
            }
            decoded?;
            written?;
            return Err(Error::Io("the fetch failed".to_string()));
        }
        drop(input);
        let sha = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Io("the reader thread panicked".to_string())))?;
        let (file, size) = written?;

        match &self.expected {
            Some(expected) if *expected != sha => {
                return Err(Error::Checksum {
                    expected: expected.clone(),
                    actual: sha,
                });
            }
            Some(_) => {}
            None => warn!(
                subsystem = "images",
                "{} was fetched without a checksum to verify against; its sha256 is {sha}",
                self.source
            ),
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        drop(file);
        // The lock is held through the rename: until then, the partial file is ours.
        let mut partial = partial;
        let target = inner.dir.join(&self.name);
        std::fs::rename(&partial.path, &target)
            .map_err(|e| Error::io(&format!("cannot rename into {}", target.display()), &e))?;
        partial.keep = true;
        drop(partial);
        // The rename itself must survive a crash.
        std::fs::File::open(&inner.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&inner.dir.display().to_string(), &e))?;
        match std::fs::symlink_metadata(&target) {
            Ok(meta) => cache::store(
                &inner.state,
                &Record::new(&sha, &self.source, &self.name, &meta),
            ),
            Err(e) => warn!(subsystem = "images", "{}: {e}", target.display()),
        }
        Ok((sha, size))
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::Io(format!("cannot start a fetch thread: {e}")))
}

/// Reader thread: reads the source, hashes every byte, counts progress, passes chunks on.
fn read_source(
    mut reader: Box<dyn Read + Send>,
    what: &str,
    chunks: SyncSender<Vec<u8>>,
    progress: &watch::Sender<Progress>,
    cancel: &AtomicBool,
    stop: &AtomicBool,
) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    loop {
        if cancel.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let mut chunk = vec![0u8; CHUNK];
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Source(format!("reading {what}: {e}"))),
        };
        chunk.truncate(n);
        hasher.update(&chunk);
        done += n as u64;
        progress.send_modify(|p| p.done = done);
        if chunks.send(chunk).is_err() {
            // The decoder stopped (failed); its error is the one reported.
            return Err(Error::Cancelled);
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// An error as the job's `Error` property and the log show it: control characters escaped
/// (a server's text may carry any byte, and a NUL in a D-Bus string would cost rtmd its
/// bus connection), at most 1 KiB.
fn printable(e: &Error) -> String {
    clip(&e.to_string(), 1024)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetch thread: decodes `input` into full [`CHUNK`]-sized blocks for the writer; then
/// checks that nothing but zero padding follows the compressed stream.
fn decode_into(input: &mut ChannelReader, blocks: &SyncSender<Vec<u8>>) -> Result<(), Error> {
    let cancel = input.cancel.clone();
    let error = |e, format| classify(&cancel, e, format);
    let (format, mut decoder) = decode::decoder(&mut *input).map_err(|e| error(e, None))?;
    loop {
        let mut block = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(block.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(error(e, Some(format))),
            }
        }
        if filled == 0 {
            break;
        }
        block.truncate(filled);
        if blocks.send(block).is_err() {
            // The writer failed; its error is the one reported.
            return Ok(());
        }
        if filled < CHUNK {
            break;
        }
    }
    drop(decoder);
    // Hash every source byte, and refuse data after the stream (xz allows zero padding).
    let mut rest = vec![0u8; BLOCK * 16];
    loop {
        match input.read(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(n) if rest.get(..n).unwrap_or_default().iter().all(|b| *b == 0) => {}
            Ok(_) => {
                return Err(Error::Corrupt(format!(
                    "unexpected data after the end of the {} stream",
                    format.name()
                )));
            }
            Err(e) => return Err(error(e, Some(format))),
        }
    }
}

/// Writer thread: the sparse writer, then set_len and fsync.
fn write_image(
    file: std::fs::File,
    blocks: Receiver<Vec<u8>>,
    cancel: &AtomicBool,
    name: &str,
) -> Result<(std::fs::File, u64), Error> {
    let mut writer = SparseWriter::new(file);
    for block in blocks {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        writer.write(&block).map_err(|e| Error::io(name, &e))?;
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    writer.finish().map_err(|e| Error::io(name, &e))
}

/// The decoder's input: chunks from the reader thread. Ends when the reader ends; fails
/// when the job is cancelled.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    cancel: Arc<AtomicBool>,
}

/// Marks the error a cancelled [`ChannelReader`] returns.
const CANCELLED: &str = "fetch cancelled";

/// Classifies a decoder error: a cancel, or a corrupt stream.
fn classify(cancel: &AtomicBool, e: std::io::Error, format: Option<Format>) -> Error {
    if cancel.load(Ordering::SeqCst) || e.to_string() == CANCELLED {
        return Error::Cancelled;
    }
    match format {
        Some(f) => Error::Corrupt(format!("corrupt {} stream: {e}", f.name())),
        None => Error::Corrupt(format!("cannot read the source: {e}")),
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv_timeout(CANCEL_POLL) {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.cancel.load(Ordering::SeqCst) {
                        return Err(std::io::Error::other(CANCELLED));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let ready = self.chunk.get(self.pos..).unwrap_or_default();
        let n = buf.len().min(ready.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), ready.get(..n)) {
            to.copy_from_slice(from);
            self.pos += n;
            return Ok(n);
        }
        Ok(0)
    }
}
