//! The board's TOML file, parsed into a typed, validated [`Config`].
//!
//! Parsing happens in two steps. `serde` reads the file into `Raw*` structs whose fields keep
//! their byte spans (`toml::Spanned`), with `deny_unknown_fields` everywhere; then [`validate`]
//! turns them into the typed config, checking what serde cannot (board name syntax, ranges).
//! `[power]` is typed per backend ([`power`]): each backend's keys are one struct, so a key of
//! another backend is refused by name. Every error carries the file path and the line and
//! column of the offending key or value itself, so an admin can jump straight to it. Secrets
//! are read here too, from a file or a systemd credential, never logged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

pub use crate::access::{AccessConfig, Identity, OnRelease};
pub use power::DEFAULT_CREDENTIAL;

mod power;

/// A configuration mistake, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// A validated board configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Board name, `[a-z][a-z0-9_-]*`.
    pub name: String,
    pub power: Option<PowerConfig>,
    pub console: Option<ConsoleConfig>,
    pub pdudaemon_api: Option<PduApiConfig>,
    pub images: Option<ImagesConfig>,
    pub nbd: Option<NbdConfig>,
    pub storage: Option<StorageConfig>,
    pub capture: Option<CaptureConfig>,
    /// Leases and the audit history (`[access]`; defaults when the section is absent).
    pub access: AccessConfig,
    /// Sections of the config contract that a later subsystem will own; kept so that a
    /// complete lab config validates today. The daemon warns that they are not served yet.
    pub pending_sections: Vec<&'static str>,
    /// Non-fatal remarks made while loading (an inline password, a truncated one), for the
    /// daemon to log once logging is set up.
    pub warnings: Vec<String>,
}

/// What happens to the board's power when the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    Keep,
    Off,
}

/// The `[power]` section: one backend plus the behaviour common to all.
#[derive(Debug, Clone)]
pub struct PowerConfig {
    pub backend: BackendConfig,
    /// Off time of `Cycle(0)`.
    pub cycle_off: Duration,
    pub on_stop: OnStop,
    /// Upper bound of one hardware operation (one attempt).
    pub timeout: Duration,
    /// Further attempts after a transient failure (I/O error, timeout).
    pub retries: u32,
    /// Wait before the first retry; doubles for each further one.
    pub retry_backoff: Duration,
    /// Interval at which a supply's measurements are read.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    Egpms(EgpmsConfig),
    Dpm86xx(SupplyConfig, DpmProtocol),
    Riden(SupplyConfig),
    Pdudaemon(PdudaemonConfig),
    Command(CommandConfig),
}

impl BackendConfig {
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Egpms(_) => "egpms",
            BackendConfig::Dpm86xx(..) => "dpm86xx",
            BackendConfig::Riden(_) => "riden",
            BackendConfig::Pdudaemon(_) => "pdudaemon",
            BackendConfig::Command(_) => "command",
        }
    }
}

/// Energenie strip models, by the names egctl's egtab uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgpmsModel {
    Pms20,
    Pms21,
    PmsWlan,
}

#[derive(Clone)]
pub struct EgpmsConfig {
    pub host: String,
    pub port: u16,
    pub outlet: u8,
    pub model: EgpmsModel,
    /// The password bytes (at most 8 are used by the protocol).
    pub password: Vec<u8>,
}

impl fmt::Debug for EgpmsConfig {
    // Never print the password, not even in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgpmsConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("outlet", &self.outlet)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmProtocol {
    Ascii,
    Modbus,
}

/// A programmable supply on a serial line (RS485 or TTL).
#[derive(Debug, Clone)]
pub struct SupplyConfig {
    pub device: PathBuf,
    pub baud: u32,
    pub address: u8,
    /// Voltage applied before the output goes on.
    pub voltage: f64,
    /// Current limit applied before the output goes on.
    pub current_limit: f64,
    /// Voltage setpoints outside are refused before anything reaches the wire.
    pub voltage_range: (f64, f64),
    /// Current-limit setpoints above are refused (default: `current_limit`).
    pub max_current: f64,
    /// Named voltages for `ApplyProfile`.
    pub profiles: BTreeMap<String, f64>,
}

/// The `[console]` section: the board's serial console and who may reach it.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub device: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    /// Telnet-protocol listener (LAVA's telnet connection, people with `telnet`).
    pub tcp: Option<SocketAddr>,
    /// Raw-bytes listener (socat, nc, scripts).
    pub tcp_raw: Option<SocketAddr>,
    /// Raw-bytes unix socket.
    pub unix: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub input: ConsoleInput,
    /// Output a client may have queued before it is disconnected as too slow.
    pub client_buffer: usize,
    /// Who the telnet and raw TCP listeners act as when their clients type (`tcp_identity`;
    /// default: the label `console-tcp`).
    pub tcp_identity: Identity,
    /// Connections at once per listener (`tcp`, `tcp_raw`, `unix`, and `Attach` sockets).
    pub max_clients: usize,
}

/// The `[images]` section: the one image folder (`docs/images.md`).
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// Fetched images land here; NBD exports and USB storage take images from here only.
    /// A relative path is taken from the config file's folder.
    pub dir: PathBuf,
    /// Extra CA certificates (PEM) trusted for `https://` sources, besides the system store.
    pub ca_file: Option<PathBuf>,
    /// Folders local sources (`file://`, absolute paths) may be fetched from (`local_dirs`;
    /// none by default: local fetches are off). Absolute.
    pub local_dirs: Vec<PathBuf>,
}

/// `[nbd]`: the NBD server that exports images from the image folder.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    /// Default `127.0.0.1:10809`; in a lab, the address the board reaches.
    pub listen: SocketAddr,
    /// The host put into export URIs (default: the listen address, or the host name when
    /// listening on all addresses).
    pub uri_host: Option<String>,
    /// Where `cow` overlays live (default: `<images dir>/.rtmd/overlays/<board>`).
    pub overlay_dir: Option<PathBuf>,
    /// Connections at once, handshakes included (default 32).
    pub max_clients: u32,
    /// A client's whole handshake must be done within this (default 10 s).
    pub handshake_timeout_s: u64,
}

/// `[storage]`: the USB gadget (docs/storage.md): mass storage and a keyboard.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The USB device controller; `None`: the only one present.
    pub udc: Option<String>,
    /// A HID keyboard in the same composite gadget.
    pub keyboard: bool,
    /// Mass-storage LUNs, 1..=8.
    pub luns: usize,
    /// LUNs present as CD-ROMs (read-only).
    pub cdrom: bool,
    /// LUNs are removable: media change without unbinding.
    pub removable: bool,
    /// SCSI INQUIRY string, at most 28 characters (default: "rtmd", the board name).
    pub inquiry: Option<String>,
    /// Between two keyboard reports.
    pub key_delay_ms: u64,
    /// The kernel's configfs, or a folder laid out like it (`configfs`, `fake_configfs`).
    pub configfs: ConfigfsChoice,
    /// Where `cow` copies live (default: `<images dir>/.rtmd/gadget/<board>`).
    pub cow_dir: Option<PathBuf>,
}

/// Which configfs the gadget drives: chosen explicitly, so that a mistyped path can never
/// turn a real board's gadget into a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigfsChoice {
    /// The kernel's configfs, mounted at the path (`configfs = "PATH"`), or where
    /// `/proc/mounts` says when `None` (neither key given).
    Kernel(Option<PathBuf>),
    /// A folder laid out like configfs (`fake_configfs = "PATH"`): tests, the demo.
    Folder(PathBuf),
}

impl ConfigfsChoice {
    /// The folder double's path, when that is the choice.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            ConfigfsChoice::Folder(dir) => Some(dir),
            ConfigfsChoice::Kernel(_) => None,
        }
    }
}

/// `[capture]`: HDMI and audio capture (docs/capture.md).
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The video source: a V4L2 device (`/dev/...`), `sim:FILE` (a test picture that follows
    /// a simulated board's state file), or a GStreamer source pipeline.
    pub video: Option<String>,
    /// The audio source: an ALSA device (`hw:...`, `plughw:...`, `default`), `sim:FILE`, or a
    /// GStreamer source pipeline.
    pub audio: Option<String>,
    /// Where snapshots and recordings land (relative: from the config file's folder).
    pub dir: PathBuf,
    /// The folder's quota: past it, the oldest artifacts are removed.
    pub quota_bytes: u64,
}

/// Loopback and the NBD port IANA assigned.
pub const NBD_DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10809);
/// A board's kernel (one to a few connections), an `nbdcopy` (four) and an admin's client at
/// once, with room to spare; each connection costs at most about 1 MiB (docs/nbd.md).
pub const NBD_DEFAULT_MAX_CLIENTS: u32 = 32;
const NBD_MAX_CLIENTS_LIMIT: u32 = 1024;
pub const NBD_DEFAULT_HANDSHAKE_TIMEOUT_S: u64 = 10;

/// `[pdudaemon_api]`: answer pdudaemon's protocols for this board's power.
#[derive(Debug, Clone)]
pub struct PduApiConfig {
    /// HTTP listener (`GET /power/control/...`).
    pub http: Option<SocketAddr>,
    /// Legacy TCP line listener.
    pub tcp: Option<SocketAddr>,
    /// The PDU name requests must give (`hostname=`); default: the board name.
    pub hostname: String,
    /// The PDU port requests must give (`port=`).
    pub port: u16,
    /// Who its requests act as (`identity`; default: the label `pdudaemon-api`).
    pub identity: Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    Hardware,
    Software,
}

/// Who may type into the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Every client.
    All,
    /// Only the longest-connected client; the others read.
    First,
}

#[derive(Debug, Clone)]
pub struct PdudaemonConfig {
    pub host: String,
    pub port: u16,
    /// The PDU's name in pdudaemon's config (its `hostname=` parameter).
    pub pdu: String,
    /// The PDU port the board hangs on (pdudaemon's `port=`).
    pub outlet: u16,
}

#[derive(Debug, Clone)]
pub struct CommandConfig {
    pub on: String,
    pub off: String,
    /// Prints `on` or `off` (or `1`/`0`); without it the state is the last one switched.
    pub status: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Raw, span-keeping form of the file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Spanned<String>,
    /// Read per backend from the document's table instead (`power.rs`); named here so that
    /// serde accepts the key and lists it among the expected ones.
    #[serde(rename = "power")]
    _power: Option<serde::de::IgnoredAny>,
    console: Option<RawConsole>,
    images: Option<Spanned<RawImages>>,
    nbd: Option<Spanned<RawNbd>>,
    storage: Option<Spanned<RawStorage>>,
    capture: Option<Spanned<RawCapture>>,
    access: Option<Spanned<RawAccess>>,
    pdudaemon_api: Option<Spanned<RawPduApi>>,
}

type S<T> = Option<Spanned<T>>;

// The sections below belong to later subsystems; their contract keys are accepted (and only
// those) so that a full lab config validates now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    device: Spanned<String>,
    baud: S<u32>,
    data_bits: S<u8>,
    parity: S<String>,
    stop_bits: S<u8>,
    flow_control: S<String>,
    tcp: S<String>,
    tcp_raw: S<String>,
    unix: S<String>,
    log_dir: S<String>,
    log_max_bytes: S<u64>,
    log_keep: S<u32>,
    input: S<String>,
    client_buffer_kib: S<u32>,
    tcp_identity: S<String>,
    max_clients: S<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPduApi {
    listen: S<String>,
    listen_tcp: S<String>,
    hostname: S<String>,
    port: S<u16>,
    identity: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    dir: S<String>,
    ca_file: S<String>,
    local_dirs: S<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNbd {
    listen: S<String>,
    uri_host: S<String>,
    overlay_dir: S<String>,
    max_clients: S<u32>,
    handshake_timeout_s: S<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    udc: S<String>,
    keyboard: S<bool>,
    luns: S<i64>,
    cdrom: S<bool>,
    removable: S<bool>,
    inquiry: S<String>,
    key_delay_ms: S<i64>,
    configfs: S<String>,
    fake_configfs: S<String>,
    cow_dir: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    video: S<String>,
    audio: S<String>,
    dir: S<String>,
    quota_mib: S<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    admin_group: S<String>,
    on_release: S<String>,
    max_ttl_s: S<u64>,
    max_label: S<u64>,
    audit_entries: S<u64>,
}

// ---------------------------------------------------------------------------------------------

/// Reads and validates a board config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is used for messages and to resolve relative secret files.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let cx = Cx { path, text };
    let doc = DeTable::parse(text).map_err(|e| cx.toml(e, 0..0))?;
    // `[power]` is split among its backend's structs (power.rs), from this table: a
    // `DeValue` keeps the span of every key and value.
    let power = doc.get_ref().get("power").cloned();
    let raw =
        RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| cx.toml(e, 0..0))?;
    validate(&cx, raw, power)
}

/// Location context: turns byte spans into `file:line:column` errors.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Cx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        // Counted in characters up to the span's start, wherever that falls.
        let (mut line, mut column) = (1, 1);
        for (_, c) in self
            .text
            .char_indices()
            .take_while(|&(i, _)| i < span.start)
        {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn at<T>(&self, v: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.err(v.span(), message)
    }

    /// A TOML or serde error, at its own span or else at `fallback`.
    fn toml(&self, e: toml::de::Error, fallback: Range<usize>) -> ConfigError {
        self.err(e.span().unwrap_or(fallback), e.message())
    }
}

/// A path from the file, as the kernel will get it: not empty, and without NUL (a C string
/// cannot carry one: opening it would fail at start, or a shorter path would be opened).
fn path_text<'a>(cx: &Cx<'_>, v: &'a Spanned<String>, key: &str) -> Result<&'a str, ConfigError> {
    let s = v.get_ref();
    if s.is_empty() {
        return Err(cx.at(v, format!("`{key}` must not be empty")));
    }
    if s.contains('\0') {
        return Err(cx.at(v, format!("`{key}` must not contain a NUL character")));
    }
    Ok(s)
}

/// The longest path a unix socket can be bound to: `sun_path` holds 108 bytes, the last
/// one the terminating NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// Board names become part of a D-Bus name, a unit instance and paths under `/dev/rtm/`.
pub fn valid_board_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        && name.len() <= 64
}

fn validate(
    cx: &Cx<'_>,
    raw: RawConfig,
    power: Option<Spanned<toml::de::DeValue<'_>>>,
) -> Result<Config, ConfigError> {
    if !valid_board_name(raw.name.get_ref()) {
        return Err(cx.at(
            &raw.name,
            format!(
                "invalid board name {:?}: expected a lowercase letter, then lowercase letters, \
                 digits, `_` or `-` (at most 64 characters)",
                raw.name.get_ref()
            ),
        ));
    }
    let mut warnings = Vec::new();
    let power = match power {
        Some(section) => Some(power::validate(cx, section, &mut warnings)?),
        None => None,
    };
    let console = match &raw.console {
        Some(c) => Some(validate_console(cx, c)?),
        None => None,
    };
    let pdudaemon_api = match &raw.pdudaemon_api {
        Some(section) => {
            let api = section.get_ref();
            let http = socket_addr(cx, &api.listen, "listen")?;
            let tcp = socket_addr(cx, &api.listen_tcp, "listen_tcp")?;
            if http.is_none() && tcp.is_none() {
                return Err(cx.at(
                    section,
                    "[pdudaemon_api] needs `listen` (HTTP) or `listen_tcp` (legacy TCP)",
                ));
            }
            if power.is_none() {
                return Err(cx.at(section, "[pdudaemon_api] needs a [power] section to switch"));
            }
            Some(PduApiConfig {
                http,
                tcp,
                hostname: api
                    .hostname
                    .as_ref()
                    .map_or_else(|| raw.name.get_ref().clone(), |h| h.get_ref().clone()),
                port: api.port.as_ref().map_or(1, |p| *p.get_ref()),
                identity: identity(cx, &api.identity, "identity", "pdudaemon-api")?,
            })
        }
        None => None,
    };
    let images = match &raw.images {
        Some(section) => Some(validate_images(cx, section)?),
        None => None,
    };
    let nbd = match &raw.nbd {
        Some(section) => {
            if raw.images.is_none() {
                return Err(cx.at(
                    section,
                    "[nbd] exports images from the image folder: add [images] with `dir`",
                ));
            }
            let n = section.get_ref();
            let listen = socket_addr(cx, &n.listen, "listen")?.unwrap_or(NBD_DEFAULT_LISTEN);
            let uri_host = match &n.uri_host {
                Some(h) if h.get_ref().is_empty() || h.get_ref().contains(['/', ' ', '\0']) => {
                    return Err(cx.at(h, "`uri_host` must be a host name or address"));
                }
                Some(h) => Some(h.get_ref().clone()),
                None => None,
            };
            let overlay_dir = match &n.overlay_dir {
                Some(d) if !Path::new(path_text(cx, d, "overlay_dir")?).is_absolute() => {
                    return Err(cx.at(d, "`overlay_dir` must be an absolute path"));
                }
                Some(d) => Some(PathBuf::from(d.get_ref())),
                None => None,
            };
            let max_clients = match &n.max_clients {
                Some(v) if !(1..=NBD_MAX_CLIENTS_LIMIT).contains(v.get_ref()) => {
                    return Err(cx.at(
                        v,
                        format!("`max_clients` must be between 1 and {NBD_MAX_CLIENTS_LIMIT}"),
                    ));
                }
                Some(v) => *v.get_ref(),
                None => NBD_DEFAULT_MAX_CLIENTS,
            };
            let handshake_timeout_s = match &n.handshake_timeout_s {
                Some(v) if !(1..=600).contains(v.get_ref()) => {
                    return Err(cx.at(v, "`handshake_timeout_s` must be between 1 and 600"));
                }
                Some(v) => *v.get_ref(),
                None => NBD_DEFAULT_HANDSHAKE_TIMEOUT_S,
            };
            Some(NbdConfig {
                listen,
                uri_host,
                overlay_dir,
                max_clients,
                handshake_timeout_s,
            })
        }
        None => None,
    };
    let storage = match &raw.storage {
        Some(section) => {
            if raw.images.is_none() {
                return Err(cx.at(
                    section,
                    "[storage] takes images from the image folder: add [images] with `dir`",
                ));
            }
            Some(validate_storage(cx, section.get_ref())?)
        }
        None => None,
    };
    let capture = match &raw.capture {
        Some(section) => Some(validate_capture(cx, section)?),
        None => None,
    };
    let access = match &raw.access {
        Some(section) => validate_access(cx, section.get_ref())?,
        None => AccessConfig::default(),
    };
    let pending_sections: Vec<&'static str> = Vec::new();
    Ok(Config {
        path: cx.path.to_path_buf(),
        name: raw.name.into_inner(),
        power,
        console,
        pdudaemon_api,
        images,
        nbd,
        storage,
        capture,
        access,
        pending_sections,
        warnings,
    })
}

fn validate_access(cx: &Cx<'_>, a: &RawAccess) -> Result<AccessConfig, ConfigError> {
    let defaults = AccessConfig::default();
    let admin_group = match &a.admin_group {
        Some(g) if !valid_group_name(g.get_ref()) => {
            return Err(cx.at(
                g,
                format!("`admin_group` {:?} is not a group name", g.get_ref()),
            ));
        }
        Some(g) => Some(g.get_ref().clone()),
        None => None,
    };
    let on_release = choose(
        cx,
        &a.on_release,
        "on_release",
        OnRelease::Keep,
        &[("keep", OnRelease::Keep), ("off", OnRelease::Off)],
    )?;
    let bounded = |v: &S<u64>, key: &str, max: u64, default: u64| match v {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > max => {
            Err(cx.at(n, format!("`{key}` must be between 1 and {max}")))
        }
        Some(n) => Ok(*n.get_ref()),
        None => Ok(default),
    };
    let max_ttl = bounded(
        &a.max_ttl_s,
        "max_ttl_s",
        crate::access::MAX_TTL_CEILING.as_secs(),
        defaults.max_ttl.as_secs(),
    )?;
    let max_label = bounded(
        &a.max_label,
        "max_label",
        crate::access::MAX_LABEL_CEILING as u64,
        defaults.max_label as u64,
    )?;
    let audit_entries = bounded(
        &a.audit_entries,
        "audit_entries",
        crate::access::AUDIT_ENTRIES_CEILING as u64,
        defaults.audit_entries as u64,
    )?;
    Ok(AccessConfig {
        admin_group,
        on_release,
        max_ttl: Duration::from_secs(max_ttl),
        // Both are below their ceilings (a few thousand), so they fit any usize.
        max_label: max_label as usize,
        audit_entries: audit_entries as usize,
    })
}

/// A POSIX-ish group name as groupadd accepts it: `[a-z_][a-z0-9_-]*`, at most 32 bytes.
fn valid_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32
}

/// Picks one of `choices` (config word, value) for an optional string key.
fn choose<T: Copy>(
    cx: &Cx<'_>,
    v: &S<String>,
    key: &str,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    choices
        .iter()
        .find(|(word, _)| *word == v.get_ref())
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let words: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            cx.at(
                v,
                format!(
                    "invalid {key} {:?}: expected {}",
                    v.get_ref(),
                    words.join(", ")
                ),
            )
        })
}

/// A listening address: `IP:PORT`, or a port alone for loopback (`"2000"` is
/// `127.0.0.1:2000`): a listener is on loopback unless the admin names another address.
fn socket_addr(cx: &Cx<'_>, v: &S<String>, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let text = v.get_ref();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(Some(SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            port,
        ))));
    }
    text.parse().map(Some).map_err(|_| {
        cx.at(
            v,
            format!(
                "invalid {key} {text:?}: expected a port (on loopback) or an IP address and \
                 port, like \"2000\" or \"127.0.0.1:2000\""
            ),
        )
    })
}

fn validate_images(cx: &Cx<'_>, section: &Spanned<RawImages>) -> Result<ImagesConfig, ConfigError> {
    let raw = section.get_ref();
    let base = cx.path.parent().unwrap_or(Path::new("."));
    let path = |v: &Spanned<String>, key: &str| Ok(base.join(path_text(cx, v, key)?));
    let dir = match &raw.dir {
        Some(v) => path(v, "dir")?,
        None => {
            return Err(cx.at(
                section,
                "[images] needs `dir`: the folder that holds the board's images",
            ));
        }
    };
    let ca_file = match &raw.ca_file {
        Some(v) => Some(path(v, "ca_file")?),
        None => None,
    };
    let mut local_dirs = Vec::new();
    for v in raw.local_dirs.iter().flat_map(|list| list.get_ref()) {
        local_dirs.push(local_dir(cx, v)?);
    }
    Ok(ImagesConfig {
        dir,
        ca_file,
        local_dirs,
    })
}

/// One of `[images] local_dirs`: an absolute folder, not one of the places never fetched
/// from (images/local.rs refuses those at fetch time too, wherever a listed folder leads).
fn local_dir(cx: &Cx<'_>, v: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    let text = v.get_ref();
    if text.is_empty() || text.contains('\0') {
        return Err(cx.at(v, "a local_dirs folder must be a non-empty path"));
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(cx.at(
            v,
            format!(
                "local_dirs folder {text:?} must be absolute: callers name their files by \
                 absolute paths"
            ),
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(cx.at(
            v,
            format!("local_dirs folder {text:?} must not contain `..`"),
        ));
    }
    if let Some(place) = crate::images::FORBIDDEN_SOURCES
        .iter()
        .find(|f| path.starts_with(f))
    {
        return Err(cx.at(
            v,
            format!("local_dirs folder {text:?} is under {place}, which is never fetched from"),
        ));
    }
    Ok(path)
}

fn validate_capture(
    cx: &Cx<'_>,
    section: &Spanned<RawCapture>,
) -> Result<CaptureConfig, ConfigError> {
    let c = section.get_ref();
    let source = |v: &S<String>| match v {
        Some(s) if s.get_ref().trim().is_empty() => Err(cx.at(
            s,
            "a capture source must not be empty: a device, `sim:FILE` or a GStreamer pipeline",
        )),
        Some(s) if s.get_ref().contains('\0') => {
            Err(cx.at(s, "a capture source must not contain a NUL character"))
        }
        Some(s) => Ok(Some(s.get_ref().trim().to_string())),
        None => Ok(None),
    };
    let video = source(&c.video)?;
    let audio = source(&c.audio)?;
    if video.is_none() && audio.is_none() {
        return Err(cx.at(section, "[capture] needs `video`, `audio` or both"));
    }
    let dir = match &c.dir {
        // Relative to the config file's folder, as [images] dir.
        Some(d) => cx
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(path_text(cx, d, "dir")?),
        None => {
            return Err(cx.at(
                section,
                "[capture] needs `dir`: the folder snapshots and recordings land in",
            ));
        }
    };
    let quota_bytes = match &c.quota_mib {
        Some(v) if !(1..=16 * 1024 * 1024).contains(v.get_ref()) => {
            return Err(cx.at(v, "`quota_mib` must be 1 to 16777216"));
        }
        Some(v) => (*v.get_ref() as u64) << 20,
        None => 1024 << 20,
    };
    Ok(CaptureConfig {
        video,
        audio,
        dir,
        quota_bytes,
    })
}

fn validate_storage(cx: &Cx<'_>, s: &RawStorage) -> Result<StorageConfig, ConfigError> {
    let udc = match &s.udc {
        Some(v) if v.get_ref().is_empty() || v.get_ref().contains(['/', '\n', '\0']) => {
            return Err(cx.at(v, "`udc` must be a UDC name, as listed in /sys/class/udc"));
        }
        Some(v) => Some(v.get_ref().clone()),
        None => None,
    };
    let luns = match &s.luns {
        Some(v) if !(1..=8).contains(v.get_ref()) => {
            return Err(cx.at(v, "`luns` must be 1 to 8"));
        }
        Some(v) => *v.get_ref() as usize,
        None => 1,
    };
    let inquiry = match &s.inquiry {
        Some(v) if v.get_ref().len() > 28 || !v.get_ref().is_ascii() => {
            return Err(cx.at(v, "`inquiry` must be at most 28 ASCII characters"));
        }
        Some(v) => Some(v.get_ref().clone()),
        None => None,
    };
    let key_delay_ms = match &s.key_delay_ms {
        Some(v) if !(0..=1000).contains(v.get_ref()) => {
            return Err(cx.at(v, "`key_delay_ms` must be 0 to 1000"));
        }
        Some(v) => *v.get_ref() as u64,
        None => 20,
    };
    let absolute = |d: &Spanned<String>, key: &str| {
        if Path::new(path_text(cx, d, key)?).is_absolute() {
            Ok(PathBuf::from(d.get_ref()))
        } else {
            Err(cx.at(d, format!("`{key}` must be an absolute path")))
        }
    };
    let configfs = match (&s.configfs, &s.fake_configfs) {
        (Some(kernel), Some(fake)) => {
            let second = if kernel.span().start > fake.span().start {
                kernel
            } else {
                fake
            };
            return Err(cx.at(
                second,
                "give only one of `configfs` (the kernel's configfs, mounted there) and \
                 `fake_configfs` (a folder laid out like configfs, for tests)",
            ));
        }
        (None, Some(fake)) => ConfigfsChoice::Folder(absolute(fake, "fake_configfs")?),
        (Some(kernel), None) => ConfigfsChoice::Kernel(Some(absolute(kernel, "configfs")?)),
        (None, None) => ConfigfsChoice::Kernel(None),
    };
    Ok(StorageConfig {
        udc,
        keyboard: s.keyboard.as_ref().is_some_and(|v| *v.get_ref()),
        luns,
        cdrom: s.cdrom.as_ref().is_some_and(|v| *v.get_ref()),
        removable: s.removable.as_ref().is_none_or(|v| *v.get_ref()),
        inquiry,
        key_delay_ms,
        configfs,
        cow_dir: match &s.cow_dir {
            Some(d) => Some(absolute(d, "cow_dir")?),
            None => None,
        },
    })
}

fn validate_console(cx: &Cx<'_>, c: &RawConsole) -> Result<ConsoleConfig, ConfigError> {
    let data_bits = c.data_bits.as_ref().map_or(8, |v| *v.get_ref());
    if let Some(v) = &c.data_bits
        && !(5..=8).contains(&data_bits)
    {
        return Err(cx.at(v, "data_bits must be 5, 6, 7 or 8"));
    }
    let stop_bits = c.stop_bits.as_ref().map_or(1, |v| *v.get_ref());
    if let Some(v) = &c.stop_bits
        && !(1..=2).contains(&stop_bits)
    {
        return Err(cx.at(v, "stop_bits must be 1 or 2"));
    }
    if let Some(v) = &c.baud
        && *v.get_ref() == 0
    {
        return Err(cx.at(v, "baud must be greater than 0"));
    }
    let device = PathBuf::from(path_text(cx, &c.device, "device")?);
    let unix = match &c.unix {
        Some(v) if path_text(cx, v, "unix")?.len() > UNIX_PATH_MAX => {
            return Err(cx.at(
                v,
                format!(
                    "`unix` is {} bytes long; a unix socket path has at most {UNIX_PATH_MAX}",
                    v.get_ref().len()
                ),
            ));
        }
        Some(v) => Some(PathBuf::from(v.get_ref())),
        None => None,
    };
    let log_dir = match &c.log_dir {
        Some(v) => Some(PathBuf::from(path_text(cx, v, "log_dir")?)),
        None => None,
    };
    let tcp = socket_addr(cx, &c.tcp, "tcp")?;
    let tcp_raw = socket_addr(cx, &c.tcp_raw, "tcp_raw")?;
    if let (Some(a), Some(b), Some(v)) = (tcp, tcp_raw, &c.tcp_raw)
        && a == b
        && a.port() != 0
    {
        return Err(cx.at(v, "tcp_raw must differ from tcp"));
    }
    if let Some(v) = &c.log_keep
        && *v.get_ref() > 100
    {
        return Err(cx.at(v, "log_keep must be at most 100"));
    }
    let log_max_bytes = c.log_max_bytes.as_ref().map_or(16 << 20, |v| *v.get_ref());
    if let Some(v) = &c.log_max_bytes
        && log_max_bytes < 4096
    {
        return Err(cx.at(v, "log_max_bytes must be at least 4096"));
    }
    let client_kib = c.client_buffer_kib.as_ref().map_or(1024, |v| *v.get_ref());
    if let Some(v) = &c.client_buffer_kib
        && !(16..=1 << 20).contains(&client_kib)
    {
        return Err(cx.at(v, "client_buffer_kib must be between 16 and 1048576"));
    }
    let max_clients = c.max_clients.as_ref().map_or(64, |v| *v.get_ref());
    if let Some(v) = &c.max_clients
        && !(1..=4096).contains(&max_clients)
    {
        return Err(cx.at(v, "max_clients must be between 1 and 4096"));
    }
    Ok(ConsoleConfig {
        device,
        baud: c.baud.as_ref().map_or(115_200, |v| *v.get_ref()),
        data_bits,
        parity: choose(
            cx,
            &c.parity,
            "parity",
            Parity::None,
            &[
                ("none", Parity::None),
                ("odd", Parity::Odd),
                ("even", Parity::Even),
            ],
        )?,
        stop_bits,
        flow_control: choose(
            cx,
            &c.flow_control,
            "flow_control",
            FlowControl::None,
            &[
                ("none", FlowControl::None),
                ("hardware", FlowControl::Hardware),
                ("software", FlowControl::Software),
            ],
        )?,
        tcp,
        tcp_raw,
        unix,
        log_dir,
        log_max_bytes,
        log_keep: c.log_keep.as_ref().map_or(4, |v| *v.get_ref()),
        input: choose(
            cx,
            &c.input,
            "input",
            ConsoleInput::All,
            &[("all", ConsoleInput::All), ("first", ConsoleInput::First)],
        )?,
        client_buffer: client_kib as usize * 1024,
        tcp_identity: identity(cx, &c.tcp_identity, "tcp_identity", "console-tcp")?,
        max_clients: max_clients as usize,
    })
}

/// Who a face without credentials acts as: `uid:N`, `user:NAME` (that local user's uid) or a
/// label for the audit trail, 1 to 64 characters from `A-Z a-z 0-9 . _ @ -`.
fn identity(cx: &Cx<'_>, v: &S<String>, key: &str, default: &str) -> Result<Identity, ConfigError> {
    let Some(v) = v else {
        return Ok(Identity::Label(default.to_string()));
    };
    let text = v.get_ref();
    if let Some(number) = text.strip_prefix("uid:") {
        // Digits only (`u32::from_str` would take `+5`); `(uid_t)-1` is no user.
        return match number.parse::<u32>() {
            Ok(uid) if number.bytes().all(|b| b.is_ascii_digit()) && uid != u32::MAX => {
                Ok(Identity::Uid(uid))
            }
            _ => Err(cx.at(
                v,
                format!("invalid {key} {text:?}: `uid:` takes a user id, 0 to 4294967294"),
            )),
        };
    }
    if let Some(name) = text.strip_prefix("user:") {
        return match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(Identity::Uid(user.uid.as_raw())),
            Ok(None) => Err(cx.at(
                v,
                format!("invalid {key} {text:?}: there is no local user {name:?}"),
            )),
            Err(e) => Err(cx.at(
                v,
                format!("invalid {key} {text:?}: cannot look up the user {name:?}: {e}"),
            )),
        };
    }
    let label_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if (1..=64).contains(&text.chars().count()) && text.chars().all(label_char) {
        Ok(Identity::Label(text.clone()))
    } else {
        Err(cx.at(
            v,
            format!(
                "invalid {key} {text:?}: expected `uid:N`, `user:NAME` or a label of 1 to 64 \
                 characters from A-Z a-z 0-9 . _ @ -"
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
