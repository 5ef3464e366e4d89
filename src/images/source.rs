//! Where an image comes from: an `http://` or `https://` URL, or a local file (an absolute
//! path, or a `file://` URL). Parsing is lexical and happens before a job exists, so a bad
//! source is an immediate error; a local file is then opened by `local.rs` (which decides
//! whether the caller may fetch it), a URL on the fetch thread.
//!
//! Percent-escapes are decoded by the percent-encoding crate, the one decoder of the
//! project, and what they decode to must be UTF-8 without control characters: an image name
//! or a path made of them ends up in D-Bus properties, file names and log lines.
//!
//! HTTPS trusts the system CA store the way curl does on Debian
//! (`/etc/ssl/certs/ca-certificates.crt`, or `$SSL_CERT_FILE` instead), plus `[images]
//! ca_file`. Proxies come from the usual variables (`http_proxy`, `https_proxy`,
//! `ALL_PROXY`, `NO_PROXY`, upper or lower case), which ureq reads.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use ureq::http::Uri;

use super::Error;

/// Debian's (and most distributions') bundle of the system's trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Longest source accepted. Many servers refuse request lines past 8 KiB anyway.
pub const MAX_SOURCE: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(String),
    /// A local file, as named (a `file://` URL decoded); not yet opened nor checked.
    File(PathBuf),
}

/// `text` without its ASCII `prefix`, compared case-insensitively (`HTTP://` is `http://`).
fn strip_scheme<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

impl Source {
    /// Parses a source: an unknown scheme, a URL that is not one, a relative path, control
    /// characters anywhere, or escapes that decode to a NUL are errors. Touches nothing.
    pub fn parse(source: &str) -> Result<Source, Error> {
        if source.is_empty() {
            return Err(Error::InvalidArgs("the source is empty".to_string()));
        }
        if source.len() > MAX_SOURCE {
            return Err(Error::InvalidArgs(format!(
                "the source is longer than {MAX_SOURCE} bytes"
            )));
        }
        if source.chars().any(char::is_control) {
            return Err(Error::InvalidArgs(format!(
                "{source:?} has control characters"
            )));
        }
        if strip_scheme(source, "http://").is_some() || strip_scheme(source, "https://").is_some() {
            check_url_text(source)?;
            let uri: Uri = source
                .parse()
                .map_err(|e| Error::InvalidArgs(format!("{source:?} is not a valid URL: {e}")))?;
            if uri.host().is_none_or(str::is_empty) {
                return Err(Error::InvalidArgs(format!("{source:?} has no host")));
            }
            return Ok(Source::Http(source.to_string()));
        }
        let path = if let Some(rest) = strip_scheme(source, "file://") {
            check_url_text(source)?;
            file_url_path(source, rest)?
        } else if let Some((scheme, _)) = source.split_once("://") {
            return Err(Error::InvalidArgs(format!(
                "unknown source scheme {scheme:?}: expected http://, https://, file:// or an \
                 absolute path"
            )));
        } else {
            PathBuf::from(source)
        };
        if !path.is_absolute() {
            return Err(Error::InvalidArgs(format!(
                "a local source must be an absolute path (rtmd runs elsewhere): {source:?}"
            )));
        }
        Ok(Source::File(path))
    }

    /// The last component of the path (of a URL: without query and fragment, decoded), as
    /// the image will be named before its suffix is taken off.
    pub fn file_name(&self) -> Result<String, Error> {
        let none = || Error::InvalidArgs(format!("{self} names no file"));
        match self {
            Source::File(p) => {
                let leaf = p.file_name().ok_or_else(none)?;
                leaf.to_str().map(str::to_string).ok_or_else(|| {
                    Error::InvalidArgs(format!("the file name {leaf:?} is not UTF-8"))
                })
            }
            Source::Http(url) => {
                let uri: Uri = url
                    .parse()
                    .map_err(|e| Error::InvalidArgs(format!("{url:?} is not a valid URL: {e}")))?;
                let leaf = uri.path().rsplit('/').next().unwrap_or("");
                let decoded = percent_decode_str(leaf).decode_utf8().map_err(|_| {
                    Error::InvalidArgs(format!(
                        "the file name {leaf:?} in {url:?} is not UTF-8 once decoded"
                    ))
                })?;
                Ok(decoded.into_owned())
            }
        }
    }

    /// Opens a URL for reading; returns the reader and the size when known. (Local files
    /// are opened at once, by `local.rs`, as the caller is checked.)
    pub fn open_url(
        url: &str,
        ca_file: Option<&Path>,
    ) -> Result<(Box<dyn Read + Send>, Option<u64>), Error> {
        let agent = agent(url, ca_file)?;
        let response = agent
            .get(url)
            .call()
            .map_err(|e| Error::Source(format!("{url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Source(format!(
                "{url}: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )));
        }
        let size = response
            .headers()
            .get(ureq::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((Box::new(response.into_body().into_reader()), size))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => write!(f, "{url:?}"),
            Source::File(p) => write!(f, "{:?}", p.display().to_string()),
        }
    }
}

/// A URL is ASCII, and every `%` starts an escape of two hexadecimal digits (RFC 3986);
/// anything else is refused rather than guessed at (`é` is written `%C3%A9`).
fn check_url_text(source: &str) -> Result<(), Error> {
    if !source.is_ascii() {
        return Err(Error::InvalidArgs(format!(
            "{source:?} is not a valid URL: URLs are ASCII (percent-encode other characters: \
             é is %C3%A9)"
        )));
    }
    let bytes = source.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let escape = (bytes.get(i + 1), bytes.get(i + 2));
        if !matches!(escape, (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgs(format!(
                "{source:?} is not a valid URL: `%` must start an escape like %20"
            )));
        }
    }
    Ok(())
}

/// The path of a `file://` URL (`rest`: what follows the scheme): the host must be empty or
/// `localhost`; query and fragment are not part of it; escapes are decoded to bytes (paths
/// need not be UTF-8) and must not make a NUL.
fn file_url_path(source: &str, rest: &str) -> Result<PathBuf, Error> {
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(Error::InvalidArgs(format!(
            "{source:?} names the host {host:?}: a file:// URL is a file of this machine \
             (file:///path)"
        )));
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bytes: Vec<u8> = percent_decode_str(path).collect();
    if bytes.contains(&0) {
        return Err(Error::InvalidArgs(format!(
            "{source:?} decodes to a path with a NUL byte"
        )));
    }
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(Error::InvalidArgs(format!(
            "{source:?} decodes to a path with control characters"
        )));
    }
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

fn agent(url: &str, ca_file: Option<&Path>) -> Result<ureq::Agent, Error> {
    let mut config = ureq::Agent::config_builder()
        // The status is ours to report (with the URL); a body is never read on failure.
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("rtmd/", env!("CARGO_PKG_VERSION")));
    if url.to_ascii_lowercase().starts_with("https://") {
        let roots = root_certs(ca_file)?;
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    Ok(config.build().into())
}

/// The system store (or `$SSL_CERT_FILE`), plus `ca_file`.
fn root_certs(ca_file: Option<&Path>) -> Result<ureq::tls::RootCerts, Error> {
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut certs = Vec::new();
    let mut files = vec![(system, false)];
    if let Some(extra) = ca_file {
        files.push((extra.to_path_buf(), true));
    }
    for (file, required) in files {
        let pem = match std::fs::read(&file) {
            Ok(pem) => pem,
            Err(e) if required => {
                return Err(Error::Source(format!(
                    "cannot read ca_file {}: {e}",
                    file.display()
                )));
            }
            Err(_) => continue,
        };
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::Source(format!(
                        "bad certificate in {}: {e}",
                        file.display()
                    )));
                }
            }
        }
    }
    if certs.is_empty() {
        // No system store: Mozilla's roots, built in.
        return Ok(ureq::tls::RootCerts::WebPki);
    }
    Ok(ureq::tls::RootCerts::Specific(Arc::new(certs)))
}
