//! `org.rtmd.Dut1.Images` and its fetch jobs (`org.rtmd.Dut1.Images.Job`).
//!
//! `Fetch` returns at once with a job object at `/org/rtmd/Dut1/Images/Jobs/<n>`; the job's
//! properties follow the fetch (`PropertiesChanged`, at most [`THROTTLE`]-spaced so a fast
//! fetch does not flood the bus; the final state is always sent) and `Finished` says how it
//! ended. Finished jobs stay for [`KEEP_FOR`], and at most [`KEEP_FINISHED`] of them, so a
//! client that looks late still sees the result.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, ObjectServer, interface};
use zbus::{OwnedObjectPath, Variant as Value};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::{Permit, clip};
use crate::images::{self, FetchJob, JobState, Progress, Store};

pub const JOB_INTERFACE: &str = "org.rtmd.Dut1.Images.Job";
/// Minimum spacing of a job's property-change signals.
const THROTTLE: Duration = Duration::from_millis(100);
/// How long a finished job stays on the bus.
const KEEP_FOR: Duration = Duration::from_secs(600);
/// How many finished jobs stay on the bus at most.
const KEEP_FINISHED: usize = 16;

impl From<images::Error> for Error {
    fn from(e: images::Error) -> Self {
        use images::Error as E;
        let message = e.to_string();
        match e {
            E::InvalidArgs(_) | E::Outside(_) => Error::InvalidArgs(message),
            E::NotFound(_) => Error::NotFound(message),
            E::Busy(_) => Error::Busy(message),
            E::Denied(_) => Error::AccessDenied(message),
            E::Io(_)
            | E::Source(_)
            | E::Checksum { .. }
            | E::Corrupt(_)
            | E::NoSpace(_)
            | E::Cancelled => Error::Hardware(message),
        }
    }
}

pub struct ImagesIface {
    store: Store,
    gate: BusGate,
    next_job: Arc<AtomicU64>,
    finished: Arc<Mutex<VecDeque<String>>>,
}

impl ImagesIface {
    pub fn new(store: Store, gate: BusGate) -> Self {
        ImagesIface {
            store,
            gate,
            next_job: Arc::new(AtomicU64::new(1)),
            finished: Arc::new(Mutex::new(VecDeque::new())),
        }
    }
}

impl ImagesIface {
    async fn start_fetch(
        &self,
        permit: &Permit,
        source: &str,
        sha256: &str,
        server: &ObjectServer,
        connection: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let job = self.store.fetch(permit, source, Some(sha256))?;
        let n = self.next_job.fetch_add(1, Ordering::Relaxed);
        let path = format!("{PATH}/Images/Jobs/{n}");
        let object_path = OwnedObjectPath::try_from(path.clone())
            .map_err(|e| Error::Hardware(format!("job path {path}: {e}")))?;
        let progress = job.progress();
        server
            .at(
                path.as_str(),
                JobIface {
                    job,
                    gate: self.gate.clone(),
                },
            )
            .await
            .map_err(|e| Error::Hardware(format!("cannot serve the job {path}: {e}")))?;
        tokio::spawn(follow(
            connection.clone(),
            path,
            progress,
            self.finished.clone(),
        ));
        Ok(object_path)
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Images")]
impl ImagesIface {
    gated {
        #[gated("Images.Remove", clip(name, 160))]
        /// Removes an image (refuses names outside the folder, and an image NBD or the USB
        /// gadget serves).
        async fn remove(&self, name: &str) -> Result<(), Error> |permit| {
            Ok(self.store.remove(&permit, name)?)
        }
    }

    /// Starts fetching `source` (http://, https://, file:// or an absolute path) into the
    /// folder; `sha256` is the source's checksum ("" fetches without verifying). Returns the
    /// job at once; bad arguments fail here, before a job exists. (Written out rather than
    /// in the `gated` block: it also takes the object server.)
    #[zbus(out_args("job"))]
    async fn fetch(
        &self,
        source: &str,
        sha256: &str,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<OwnedObjectPath, Error> {
        let args = format!("{}, sha256 {}", clip(source, 160), clip(sha256, 64));
        self.gate
            .run(&hdr, connection, "Images.Fetch", args, |permit| async move {
                self.start_fetch(&permit, source, sha256, server, connection)
                    .await
            })
            .await
    }

    /// Every image: (name, size, allocated bytes, source sha256, source).
    #[zbus(out_args("images"))]
    async fn list(&self) -> Result<Vec<(String, u64, u64, String, String)>, Error> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|i| (i.name, i.size, i.allocated, i.sha256, i.source))
            .collect())
    }

    /// An image name -> (its absolute path, its normalized name); refuses what lies outside
    /// the folder.
    #[zbus(out_args("path", "name"))]
    async fn resolve(&self, name: &str) -> Result<(String, String), Error> {
        let (path, name) = self.store.resolve(name)?;
        Ok((path.display().to_string(), name))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn dir(&self) -> String {
        self.store.dir().display().to_string()
    }

    /// The image names; changes when an image is fetched or removed.
    #[zbus(property)]
    fn images(&self) -> Vec<String> {
        self.store
            .list()
            .map(|l| l.into_iter().map(|i| i.name).collect())
            .unwrap_or_default()
    }
}
}

/// One fetch job on the bus.
pub struct JobIface {
    job: FetchJob,
    gate: BusGate,
}

impl JobIface {
    fn now(&self) -> Progress {
        self.job.progress().borrow().clone()
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Images.Job")]
impl JobIface {
    gated {
        #[gated("Images.Job.Cancel", String::new())]
        /// Stops the fetch; it finishes as `cancelled` and leaves nothing behind. No effect on
        /// a finished job.
        async fn cancel(&self) -> Result<(), Error> |permit| {
            self.job.cancel(&permit);
            Ok(())
        }
    }

    /// `running`, `done`, `failed` or `cancelled`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.now().state.as_str().to_string()
    }

    /// 0..1 of the source read (0 while the size is unknown; 1 when done).
    #[zbus(property)]
    fn progress(&self) -> f64 {
        fraction(&self.now())
    }

    #[zbus(property)]
    fn bytes_done(&self) -> u64 {
        self.now().done
    }

    /// Source size, 0 while unknown.
    #[zbus(property)]
    fn bytes_total(&self) -> u64 {
        self.now().total.unwrap_or(0)
    }

    #[zbus(property)]
    fn image(&self) -> String {
        self.now().image.unwrap_or_default()
    }

    #[zbus(property)]
    fn error(&self) -> String {
        self.now().error.unwrap_or_default()
    }

    /// What failed: `source`, `checksum`, `corrupt`, `no-space`, `io`, `cancelled` (empty
    /// while running or done).
    #[zbus(property)]
    fn error_kind(&self) -> String {
        self.now().error_kind.unwrap_or_default().to_string()
    }

    /// True when the image was already there (same source checksum): nothing was fetched.
    #[zbus(property)]
    fn cached(&self) -> bool {
        self.now().cached
    }

    /// sha256 of the source, once it has been read completely.
    #[zbus(property)]
    fn sha256(&self) -> String {
        self.now().sha256.unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn source(&self) -> String {
        self.now().source
    }

    /// Sent once when the job ends: `ok` true when the image is in place.
    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        ok: bool,
        image: &str,
        error: &str,
    ) -> zbus::Result<()>;
}
}

fn fraction(p: &Progress) -> f64 {
    match (p.state, p.total) {
        (JobState::Done, _) => 1.0,
        (_, Some(total)) if total > 0 => (p.done as f64 / total as f64).min(1.0),
        _ => 0.0,
    }
}

/// Follows a job: throttled `PropertiesChanged`, then `Finished`, then keeps the finished
/// job around for a while.
async fn follow(
    connection: Connection,
    path: String,
    mut rx: watch::Receiver<Progress>,
    finished: Arc<Mutex<VecDeque<String>>>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, path.clone()) else {
        return;
    };
    let mut last = rx.borrow_and_update().clone();
    loop {
        let now = rx.borrow_and_update().clone();
        // Errors mean the connection is gone; the daemon notices that elsewhere.
        let _ = emit_changes(&emitter, &last, &now).await;
        last = now;
        if last.state.is_finished() {
            break;
        }
        if rx.changed().await.is_err() {
            // The fetch thread always sends a final state before it ends.
            break;
        }
        tokio::time::sleep(THROTTLE).await;
    }
    let ok = last.state == JobState::Done;
    let _ = JobIface::finished(
        &emitter,
        ok,
        last.image.as_deref().unwrap_or(""),
        last.error.as_deref().unwrap_or(""),
    )
    .await;

    let evicted = finished.lock().ok().and_then(|mut f| {
        f.push_back(path.clone());
        (f.len() > KEEP_FINISHED).then(|| f.pop_front()).flatten()
    });
    let server = connection.object_server();
    if let Some(old) = evicted {
        let _ = server.remove::<JobIface, _>(old.as_str()).await;
    }
    tokio::time::sleep(KEEP_FOR).await;
    if let Ok(mut f) = finished.lock() {
        f.retain(|p| *p != path);
    }
    let _ = server.remove::<JobIface, _>(path.as_str()).await;
}

/// One `PropertiesChanged` with every job property that differs between `old` and `new`.
async fn emit_changes(
    emitter: &SignalEmitter<'_>,
    old: &Progress,
    new: &Progress,
) -> zbus::Result<()> {
    let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
    if old.state != new.state {
        changed.insert("State", Value::from(new.state.as_str()));
    }
    if fraction(old) != fraction(new) {
        changed.insert("Progress", Value::from(fraction(new)));
    }
    if old.done != new.done {
        changed.insert("BytesDone", Value::from(new.done));
    }
    if old.total != new.total {
        changed.insert("BytesTotal", Value::from(new.total.unwrap_or(0)));
    }
    if old.image != new.image {
        changed.insert("Image", Value::from(new.image.clone().unwrap_or_default()));
    }
    if old.error != new.error {
        changed.insert("Error", Value::from(new.error.clone().unwrap_or_default()));
    }
    if old.error_kind != new.error_kind {
        changed.insert("ErrorKind", Value::from(new.error_kind.unwrap_or_default()));
    }
    if old.cached != new.cached {
        changed.insert("Cached", Value::from(new.cached));
    }
    if old.sha256 != new.sha256 {
        changed.insert(
            "Sha256",
            Value::from(new.sha256.clone().unwrap_or_default()),
        );
    }
    if changed.is_empty() {
        return Ok(());
    }
    let interface = zbus::names::InterfaceName::from_static_str_unchecked(JOB_INTERFACE);
    zbus::fdo::Properties::properties_changed(emitter, interface, changed, Cow::Borrowed(&[])).await
}

/// Emits `PropertiesChanged` for `Images` whenever the set of images changes.
pub async fn spawn_change_signals(connection: &Connection, store: Store) -> zbus::Result<()> {
    let iface = connection
        .object_server()
        .interface::<_, ImagesIface>(PATH)
        .await?;
    let mut rx = store.subscribe_changes();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let _ = iface
                .get()
                .await
                .images_changed(iface.signal_emitter())
                .await;
        }
    });
    Ok(())
}
