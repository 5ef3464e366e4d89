//! Where an image comes from: an `http://` or `https://` URL, or a local file (an absolute
//! path, or a `file://` URL). Parsing happens before a job exists, so a bad source is an
//! immediate error; opening happens on the fetch thread.
//!
//! HTTPS trusts the system CA store the way curl does on Debian
//! (`/etc/ssl/certs/ca-certificates.crt`, or `$SSL_CERT_FILE` instead), plus `[images]
//! ca_file`. Proxies come from the usual variables (`http_proxy`, `https_proxy`,
//! `ALL_PROXY`, `NO_PROXY`, upper or lower case), which ureq reads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Error;

/// Debian's (and most distributions') bundle of the system's trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(String),
    File(PathBuf),
}

impl Source {
    /// Parses and checks a source: an unknown scheme, a relative path, or a missing local
    /// file is an error.
    pub fn parse(source: &str) -> Result<Source, Error> {
        if source.is_empty() {
            return Err(Error::InvalidArgs("the source is empty".to_string()));
        }
        let lower = source.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let rest = &source[source.find("://").map_or(0, |i| i + 3)..];
            if rest.is_empty() || rest.starts_with('/') {
                return Err(Error::InvalidArgs(format!("{source:?} has no host")));
            }
            return Ok(Source::Http(source.to_string()));
        }
        let path = if let Some(path) = lower.strip_prefix("file://").map(|_| &source[7..]) {
            path
        } else if let Some(i) = source.find("://") {
            return Err(Error::InvalidArgs(format!(
                "unknown source scheme {:?}: expected http://, https://, file:// or an absolute path",
                &source[..i]
            )));
        } else {
            source
        };
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(Error::InvalidArgs(format!(
                "a local source must be an absolute path (rtmd runs elsewhere): {source:?}"
            )));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Source::File(path.to_path_buf())),
            Ok(_) => Err(Error::InvalidArgs(format!(
                "{} is not a regular file",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("no such file: {}", path.display())))
            }
            Err(e) => Err(Error::io(&path.display().to_string(), &e)),
        }
    }

    /// The last component of the path (of a URL: without query and fragment).
    pub fn file_name(&self) -> Option<String> {
        match self {
            Source::File(p) => p.file_name()?.to_str().map(str::to_string),
            Source::Http(url) => {
                let rest = &url[url.find("://")? + 3..];
                let path = rest.find('/').map(|i| &rest[i..])?;
                let path = path.split(['?', '#']).next()?;
                let leaf = path.rsplit('/').next()?;
                Some(percent_decode(leaf))
            }
        }
    }

    /// Opens the source for reading; returns the reader and the size when known.
    pub fn open(
        &self,
        ca_file: Option<&Path>,
    ) -> Result<(Box<dyn Read + Send>, Option<u64>), Error> {
        match self {
            Source::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::Source(format!("cannot open {}: {e}", path.display())))?;
                let size = file.metadata().ok().map(|m| m.len());
                Ok((Box::new(file), size))
            }
            Source::Http(url) => {
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
    }
}

/// `%xx` escapes of a URL's file name decoded (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
