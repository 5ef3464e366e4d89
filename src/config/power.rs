//! The `[power]` section, typed per backend.
//!
//! Each backend's keys are one serde struct: [`RawPowerCommon`] (the keys every backend
//! takes, `backend` among them), then [`RawEgpms`], [`RawSupply`] (both lab supplies) plus
//! [`RawDpm86xx`], [`RawPdudaemon`] or [`RawCommand`], each `deny_unknown_fields`. serde's
//! `flatten` cannot combine them (it loses spans and does not work with
//! `deny_unknown_fields`), so the section is taken as a TOML table whose keys and values keep their spans, and split by key:
//! each struct takes the keys it declares (its serde field list, [`field_names`]) and is
//! deserialized from those alone. A key that none of the chosen backend's structs took is
//! refused at its position, naming the backends it does belong to, if any.
//!
//! Adding a key is one edit: a field in the struct of the backend it belongs to (and its use
//! in the validation here). Nothing else lists keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::Visitor;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{
    BackendConfig, CommandConfig, ConfigError, Cx, DpmProtocol, EgpmsConfig, EgpmsModel, OnStop,
    PdudaemonConfig, PowerConfig, S, SupplyConfig,
};

/// Keys every backend takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPowerCommon {
    backend: Spanned<String>,
    cycle_off_ms: S<u32>,
    on_stop: S<String>,
    timeout_ms: S<u32>,
    retries: S<u32>,
    retry_backoff_ms: S<u32>,
}

/// `backend = "egpms"`: an Energenie strip on the network.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgpms {
    host: S<String>,
    port: S<u16>,
    outlet: S<u16>,
    model: S<String>,
    password: S<String>,
    password_file: S<String>,
    password_credential: S<String>,
}

/// The keys of both lab supplies, `dpm86xx` and `riden`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupply {
    device: S<String>,
    baud: S<u32>,
    address: S<u8>,
    voltage: S<f64>,
    current_limit: S<f64>,
    max_current: S<f64>,
    voltage_range: S<[f64; 2]>,
    profiles: S<BTreeMap<String, Spanned<f64>>>,
    poll_ms: S<u32>,
}

/// `backend = "dpm86xx"`: what it takes besides [`RawSupply`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpm86xx {
    protocol: S<String>,
}

/// `backend = "pdudaemon"`: a port of a PDU that pdudaemon drives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPdudaemon {
    host: S<String>,
    port: S<u16>,
    pdu: S<String>,
    outlet: S<u16>,
}

/// `backend = "command"`: shell commands.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    on_command: S<String>,
    off_command: S<String>,
    status_command: S<String>,
}

/// The backend's own keys, by backend.
enum RawBackend {
    Egpms(RawEgpms),
    Dpm86xx(RawSupply, RawDpm86xx),
    Riden(RawSupply),
    Pdudaemon(RawPdudaemon),
    Command(RawCommand),
}

impl RawBackend {
    /// Every backend, as `backend = "..."` names it (a test checks that [`RawBackend::take`]
    /// takes each and that each names its variant as [`BackendConfig::name`] does).
    const NAMES: [&'static str; 5] = ["egpms", "dpm86xx", "riden", "pdudaemon", "command"];

    /// Takes the keys of backend `name`'s structs out of `table` and deserializes them;
    /// `Ok(None)`: there is no backend `name`.
    fn take(name: &str, table: &mut PowerTable<'_>) -> Result<Option<RawBackend>, toml::de::Error> {
        Ok(Some(match name {
            "egpms" => RawBackend::Egpms(table.take()?),
            "dpm86xx" => RawBackend::Dpm86xx(table.take()?, table.take()?),
            "riden" => RawBackend::Riden(table.take()?),
            "pdudaemon" => RawBackend::Pdudaemon(table.take()?),
            "command" => RawBackend::Command(table.take()?),
            _ => return Ok(None),
        }))
    }

    /// The keys backend `name` takes besides the common ones.
    fn keys(name: &str) -> Vec<&'static str> {
        let mut probe = PowerTable::new(0..0, DeTable::new());
        // From an empty table every field is absent, and each is optional.
        let _ = RawBackend::take(name, &mut probe);
        probe.accepted
    }
}

/// The `[power]` table while its keys are handed out to the structs that declare them.
struct PowerTable<'i> {
    /// The section's span, for errors about the section as a whole (a missing `backend`).
    span: Range<usize>,
    /// The keys no struct has taken yet.
    rest: DeTable<'i>,
    /// The keys of the structs taken so far, in declaration order.
    accepted: Vec<&'static str>,
}

impl<'i> PowerTable<'i> {
    fn new(span: Range<usize>, rest: DeTable<'i>) -> PowerTable<'i> {
        PowerTable {
            span,
            rest,
            accepted: Vec::new(),
        }
    }

    /// Moves the keys `T` declares out of the table and deserializes `T` from them alone.
    fn take<T: Deserialize<'i>>(&mut self) -> Result<T, toml::de::Error> {
        let keys = field_names::<T>();
        self.accepted.extend_from_slice(keys);
        let mut part = DeTable::new();
        for key in keys {
            if let Some((k, v)) = self.rest.remove_entry(*key) {
                part.insert(k, v);
            }
        }
        T::deserialize(ValueDeserializer::from(Spanned::new(
            self.span.clone(),
            DeValue::Table(part),
        )))
    }
}

/// The keys a derived `Deserialize` struct reads: serde hands the struct's field list to
/// `deserialize_struct`, and this deserializer only notes it and stops.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("field names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

/// Validates the `[power]` section (its value in the document, with every span).
pub(super) fn validate(
    cx: &Cx<'_>,
    section: Spanned<DeValue<'_>>,
    warnings: &mut Vec<String>,
) -> Result<PowerConfig, ConfigError> {
    let span = section.span();
    let DeValue::Table(table) = section.into_inner() else {
        return Err(cx.err(span, "`power` must be a table: a [power] section"));
    };
    let mut table = PowerTable::new(span.clone(), table);
    let common: RawPowerCommon = table.take().map_err(|e| cx.toml(e, span.clone()))?;
    let name = common.backend.get_ref().as_str();
    let backend = RawBackend::take(name, &mut table)
        .map_err(|e| cx.toml(e, span.clone()))?
        .ok_or_else(|| {
            cx.at(
                &common.backend,
                format!(
                    "unknown power backend {name:?}: expected one of {}",
                    RawBackend::NAMES.join(", ")
                ),
            )
        })?;
    // What no struct of this backend took, the first in the file.
    if let Some((key, _)) = table.rest.iter().min_by_key(|(k, _)| k.span().start) {
        let key_name: &str = key.get_ref();
        let owners: Vec<&str> = RawBackend::NAMES
            .into_iter()
            .filter(|other| RawBackend::keys(other).contains(&key_name))
            .collect();
        let message = if owners.is_empty() {
            let mut expected = String::new();
            for (i, k) in table.accepted.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(expected, "{sep}`{k}`");
            }
            format!(
                "unknown field `{key_name}` for power backend `{name}`, expected one of {expected}"
            )
        } else {
            format!(
                "key `{key_name}` does not apply to power backend `{name}` (only to {})",
                owners.join(", ")
            )
        };
        return Err(cx.err(key.span(), message));
    }
    backend_config(cx, common, backend, warnings)
}

/// The periods of `[power]`, in milliseconds: what each may be, and its default. Zero would
/// stop the daemon at start (a measurement interval of 0 is a panic in the timer) or make a
/// cycle that never cuts power; the upper bounds are where a value stops being a setting
/// and becomes a mistake (a hook would wait hours).
struct Period {
    key: &'static str,
    min: u32,
    max: u32,
    default: u32,
}

const CYCLE_OFF_MS: Period = Period {
    key: "cycle_off_ms",
    min: 1,
    // As long as the longest `Cycle(off_ms)` a caller may ask for.
    max: crate::bus::MAX_CYCLE_OFF.as_millis() as u32,
    default: 2000,
};
const TIMEOUT_MS: Period = Period {
    key: "timeout_ms",
    min: 1,
    // A power hook waits for retries × timeout: five minutes per attempt is already more
    // than any switch, supply or pdudaemon driver takes.
    max: 300_000,
    default: 5000,
};
const RETRY_BACKOFF_MS: Period = Period {
    key: "retry_backoff_ms",
    // 0: retry at once.
    min: 0,
    // Doubled per retry (up to 10 retries): one minute is already hours in the worst case.
    max: 60_000,
    default: 250,
};
const POLL_MS: Period = Period {
    key: "poll_ms",
    // A poll is three requests on a serial line; faster than this would crowd out the
    // requests that matter.
    min: 100,
    max: 3_600_000,
    default: 1000,
};

impl Period {
    fn take(&self, cx: &Cx<'_>, v: &S<u32>) -> Result<Duration, ConfigError> {
        let ms = match v {
            None => self.default,
            Some(v) if !(self.min..=self.max).contains(v.get_ref()) => {
                return Err(cx.at(
                    v,
                    format!("{} must be between {} and {}", self.key, self.min, self.max),
                ));
            }
            Some(v) => *v.get_ref(),
        };
        Ok(Duration::from_millis(u64::from(ms)))
    }
}

/// The largest setpoints a supply's 16-bit registers can carry; beyond them the encoding
/// would clamp, and the supply would get another value than the one asked for. DPM86xx:
/// 0.01 V and 0.001 A steps (src/power/dpm86xx.rs). Riden: the model, read at run time,
/// decides the steps (src/power/riden.rs `scale`); the voltage bound is the finest model's
/// (RD6006P, 1 mV: 65.535 V, above every RD60xx's 60 V), the current bound the coarsest's
/// (10 mA: 655.35 A), since the finest (RD6006P, 0.1 mA: 6.5535 A) would refuse an RD6024's
/// 24 A.
struct WireLimits {
    volts: f64,
    amps: f64,
}

const DPM86XX_WIRE: WireLimits = WireLimits {
    volts: 655.35,
    amps: 65.535,
};
const RIDEN_WIRE: WireLimits = WireLimits {
    volts: 65.535,
    amps: 655.35,
};

fn backend_config(
    cx: &Cx<'_>,
    common: RawPowerCommon,
    raw: RawBackend,
    warnings: &mut Vec<String>,
) -> Result<PowerConfig, ConfigError> {
    let on_stop = match common.on_stop.as_ref() {
        None => OnStop::Keep,
        Some(v) => match v.get_ref().as_str() {
            "keep" => OnStop::Keep,
            "off" => OnStop::Off,
            other => {
                return Err(cx.at(
                    v,
                    format!("invalid on_stop {other:?}: expected \"keep\" or \"off\""),
                ));
            }
        },
    };
    let cycle_off = CYCLE_OFF_MS.take(cx, &common.cycle_off_ms)?;
    let timeout = TIMEOUT_MS.take(cx, &common.timeout_ms)?;
    let retry_backoff = RETRY_BACKOFF_MS.take(cx, &common.retry_backoff_ms)?;
    if let Some(r) = &common.retries
        && *r.get_ref() > 10
    {
        return Err(cx.at(r, "retries must be at most 10"));
    }

    let name = &common.backend;
    let poll_interval = match &raw {
        RawBackend::Dpm86xx(s, _) | RawBackend::Riden(s) => POLL_MS.take(cx, &s.poll_ms)?,
        _ => Duration::from_millis(u64::from(POLL_MS.default)),
    };
    let backend = match raw {
        RawBackend::Egpms(p) => BackendConfig::Egpms(egpms(cx, &p, name, warnings)?),
        RawBackend::Dpm86xx(s, d) => {
            let protocol = match d.protocol.as_ref() {
                None => DpmProtocol::Ascii,
                Some(v) => match v.get_ref().as_str() {
                    "ascii" => DpmProtocol::Ascii,
                    "modbus" => DpmProtocol::Modbus,
                    other => {
                        return Err(cx.at(
                            v,
                            format!("invalid protocol {other:?}: expected \"ascii\" or \"modbus\""),
                        ));
                    }
                },
            };
            BackendConfig::Dpm86xx(supply(cx, &s, name, 9600, &DPM86XX_WIRE)?, protocol)
        }
        RawBackend::Riden(s) => BackendConfig::Riden(supply(cx, &s, name, 115_200, &RIDEN_WIRE)?),
        RawBackend::Pdudaemon(p) => {
            let outlet = required(cx, &p.outlet, "outlet", name)?;
            BackendConfig::Pdudaemon(PdudaemonConfig {
                host: match &p.host {
                    Some(h) => text(cx, h, "host")?.to_string(),
                    None => "127.0.0.1".to_string(),
                },
                port: port(cx, &p.port, 16421)?,
                pdu: text_required(cx, &p.pdu, "pdu", name)?,
                outlet,
            })
        }
        RawBackend::Command(c) => BackendConfig::Command(CommandConfig {
            on: text_required(cx, &c.on_command, "on_command", name)?,
            off: text_required(cx, &c.off_command, "off_command", name)?,
            status: match &c.status_command {
                Some(s) => Some(text(cx, s, "status_command")?.to_string()),
                None => None,
            },
        }),
    };

    Ok(PowerConfig {
        backend,
        cycle_off,
        on_stop,
        timeout,
        retries: common.retries.as_ref().map_or(2, |v| *v.get_ref()),
        retry_backoff,
        poll_interval,
    })
}

/// A string that reaches the kernel or a peer (a host, a command, a PDU name): not empty,
/// and without NUL, which a C string (a path, `sh -c`, a resolver) cannot carry.
fn text<'a>(cx: &Cx<'_>, v: &'a Spanned<String>, key: &str) -> Result<&'a str, ConfigError> {
    let s = v.get_ref();
    if s.is_empty() {
        return Err(cx.at(v, format!("`{key}` must not be empty")));
    }
    if s.contains('\0') {
        return Err(cx.at(v, format!("`{key}` must not contain a NUL character")));
    }
    Ok(s)
}

/// [`text`] of a required key.
fn text_required(
    cx: &Cx<'_>,
    v: &S<String>,
    key: &str,
    backend: &Spanned<String>,
) -> Result<String, ConfigError> {
    match v {
        Some(v) => Ok(text(cx, v, key)?.to_string()),
        None => required(cx, v, key, backend),
    }
}

/// A peer's TCP port: 0 is no port to connect to.
fn port(cx: &Cx<'_>, v: &S<u16>, default: u16) -> Result<u16, ConfigError> {
    match v {
        Some(p) if *p.get_ref() == 0 => Err(cx.at(p, "`port` must be between 1 and 65535")),
        Some(p) => Ok(*p.get_ref()),
        None => Ok(default),
    }
}

/// The required key `key` of `[power]` for backend `backend`.
fn required<T: Clone>(
    cx: &Cx<'_>,
    v: &S<T>,
    key: &str,
    backend: &Spanned<String>,
) -> Result<T, ConfigError> {
    match v {
        Some(v) => Ok(v.get_ref().clone()),
        None => Err(cx.at(
            backend,
            format!(
                "backend `{}` needs the key `{key}` in [power]",
                backend.get_ref()
            ),
        )),
    }
}

fn egpms(
    cx: &Cx<'_>,
    p: &RawEgpms,
    backend: &Spanned<String>,
    warnings: &mut Vec<String>,
) -> Result<EgpmsConfig, ConfigError> {
    let host = text_required(cx, &p.host, "host", backend)?;
    let outlet = required(cx, &p.outlet, "outlet", backend)?;
    if !(1..=4).contains(&outlet) {
        let v = p.outlet.as_ref().map_or(0..0, Spanned::span);
        return Err(cx.err(
            v,
            format!("outlet {outlet} does not exist: an Energenie strip has outlets 1 to 4"),
        ));
    }
    let model = match p.model.as_ref() {
        None => EgpmsModel::Pms21,
        Some(v) => match v.get_ref().as_str() {
            "pms20" => EgpmsModel::Pms20,
            "pms21" => EgpmsModel::Pms21,
            "pmswlan" => EgpmsModel::PmsWlan,
            other => {
                return Err(cx.at(
                    v,
                    format!(
                        "invalid model {other:?}: expected \"pms20\", \"pms21\" or \"pmswlan\""
                    ),
                ));
            }
        },
    };
    let sources = [
        p.password.is_some(),
        p.password_file.is_some(),
        p.password_credential.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        let span = [&p.password, &p.password_file, &p.password_credential]
            .into_iter()
            .flatten()
            .nth(1)
            .map_or(0..0, Spanned::span);
        return Err(cx.err(
            span,
            "give only one of password, password_file and password_credential",
        ));
    }
    let password = if let Some(pw) = &p.password {
        warnings.push(format!(
            "{}: the strip password is inline; anyone who can read this file can switch the strip. \
             Use password_file or password_credential (a systemd credential) instead",
            cx.path.display()
        ));
        pw.get_ref().clone().into_bytes()
    } else if let Some(file) = &p.password_file {
        let file_path = cx
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(super::path_text(cx, file, "password_file")?);
        read_secret(&file_path).map_err(|e| {
            cx.at(
                file,
                format!("cannot read password file {}: {e}", file_path.display()),
            )
        })?
    } else if let Some(name) = &p.password_credential {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            cx.at(name, "password_credential needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=)")
        })?;
        let file_path = Path::new(&dir).join(super::path_text(cx, name, "password_credential")?);
        read_secret(&file_path).map_err(|e| {
            cx.at(
                name,
                format!("cannot read credential {}: {e}", file_path.display()),
            )
        })?
    } else if let Some(secret) = default_credential() {
        // systemd/rtmd@.service loads the credential `power-password` when the admin has put
        // one in a credential store; no config key needed.
        secret.map_err(|e| {
            cx.at(
                backend,
                format!("cannot read credential {DEFAULT_CREDENTIAL}: {e}"),
            )
        })?
    } else {
        Vec::new()
    };
    if password.len() > 8 {
        warnings.push(
            "the strip password is longer than 8 bytes; Energenie strips use only the first 8"
                .to_string(),
        );
    }
    Ok(EgpmsConfig {
        host,
        port: port(cx, &p.port, 5000)?,
        outlet: outlet as u8,
        model,
        password,
    })
}

/// The credential name the shipped unit loads (`LoadCredential=power-password:...`).
pub const DEFAULT_CREDENTIAL: &str = "power-password";

/// `$CREDENTIALS_DIRECTORY/power-password`, if systemd provided it.
fn default_credential() -> Option<std::io::Result<Vec<u8>>> {
    let path = Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?).join(DEFAULT_CREDENTIAL);
    path.exists().then(|| read_secret(&path))
}

/// A secret file's content, without its single trailing newline.
fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

fn supply(
    cx: &Cx<'_>,
    p: &RawSupply,
    backend: &Spanned<String>,
    default_baud: u32,
    wire: &WireLimits,
) -> Result<SupplyConfig, ConfigError> {
    let device = match &p.device {
        Some(d) => super::path_text(cx, d, "device")?.to_string(),
        None => required(cx, &p.device, "device", backend)?,
    };
    let baud = match &p.baud {
        // Rate 0 is the tty's hang-up (B0), not a speed.
        Some(b) if *b.get_ref() == 0 => return Err(cx.at(b, "baud must be greater than 0")),
        Some(b) => *b.get_ref(),
        None => default_baud,
    };
    let range = p.voltage_range.as_ref().ok_or_else(|| {
        cx.at(
            backend,
            "a lab supply needs `voltage_range = [min, max]`: the supply itself checks nothing, \
             and a wrong setpoint can damage the board",
        )
    })?;
    let [lo, hi] = *range.get_ref();
    if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi) {
        return Err(cx.at(
            range,
            "voltage_range must be [min, max] with 0 <= min < max",
        ));
    }
    if hi > wire.volts {
        return Err(cx.at(
            range,
            format!(
                "voltage_range reaches {hi} V, but a {} supply's setpoint register carries at \
                 most {} V",
                backend.get_ref(),
                wire.volts
            ),
        ));
    }
    let in_range = |v: &Spanned<f64>, what: &str| {
        let x = *v.get_ref();
        if x.is_finite() && lo <= x && x <= hi {
            Ok(x)
        } else {
            Err(cx.at(
                v,
                format!("{what} {x} V is outside voltage_range [{lo}, {hi}]"),
            ))
        }
    };
    let voltage_v = p.voltage.as_ref().ok_or_else(|| {
        cx.at(
            backend,
            "a lab supply needs `voltage`: it is applied before the output goes on",
        )
    })?;
    let voltage = in_range(voltage_v, "voltage")?;
    let limit_v = p.current_limit.as_ref().ok_or_else(|| {
        cx.at(
            backend,
            "a lab supply needs `current_limit` (A): it is applied before the output goes on",
        )
    })?;
    let current_limit = *limit_v.get_ref();
    if !(current_limit.is_finite() && current_limit > 0.0) {
        return Err(cx.at(
            limit_v,
            "current_limit must be a positive number of amperes",
        ));
    }
    let beyond_wire = |v: &Spanned<f64>, key: &str| {
        cx.at(
            v,
            format!(
                "{key} {} A is more than a {} supply's current register carries ({} A)",
                v.get_ref(),
                backend.get_ref(),
                wire.amps
            ),
        )
    };
    if current_limit > wire.amps {
        return Err(beyond_wire(limit_v, "current_limit"));
    }
    let max_current = match &p.max_current {
        None => current_limit,
        Some(m) => {
            let m_v = *m.get_ref();
            if !(m_v.is_finite() && m_v >= current_limit) {
                return Err(cx.at(
                    m,
                    format!("max_current must be at least current_limit ({current_limit} A)"),
                ));
            }
            if m_v > wire.amps {
                return Err(beyond_wire(m, "max_current"));
            }
            m_v
        }
    };
    let mut profiles = BTreeMap::new();
    if let Some(table) = &p.profiles {
        for (name, v) in table.get_ref() {
            profiles.insert(name.clone(), in_range(v, &format!("profile {name:?}"))?);
        }
    }
    let address = p.address.as_ref().map_or(1, |v| *v.get_ref());
    if let Some(a) = &p.address
        && !(1..=247).contains(a.get_ref())
    {
        return Err(cx.at(a, "address must be between 1 and 247"));
    }
    Ok(SupplyConfig {
        device: PathBuf::from(device),
        baud,
        address,
        voltage,
        current_limit,
        voltage_range: (lo, hi),
        max_current,
        profiles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_name_has_its_structs() {
        for name in RawBackend::NAMES {
            let mut probe = PowerTable::new(0..0, DeTable::new());
            let Ok(Some(raw)) = RawBackend::take(name, &mut probe) else {
                panic!("backend {name} is not taken");
            };
            let named = match raw {
                RawBackend::Egpms(_) => "egpms",
                RawBackend::Dpm86xx(..) => "dpm86xx",
                RawBackend::Riden(_) => "riden",
                RawBackend::Pdudaemon(_) => "pdudaemon",
                RawBackend::Command(_) => "command",
            };
            assert_eq!(named, name);
        }
        let mut probe = PowerTable::new(0..0, DeTable::new());
        assert!(RawBackend::take("relay", &mut probe).unwrap().is_none());
    }

    #[test]
    fn field_names_are_the_struct_fields() {
        assert_eq!(
            field_names::<RawCommand>(),
            ["on_command", "off_command", "status_command"]
        );
        assert_eq!(RawBackend::keys("dpm86xx").last(), Some(&"protocol"));
        assert!(!RawBackend::keys("riden").contains(&"protocol"));
        assert!(RawBackend::keys("riden").contains(&"poll_ms"));
    }
}
