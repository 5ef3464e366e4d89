//! The fixed newstyle handshake: the greeting, then option haggling until the client picks
//! an export (`GO` or `EXPORT_NAME`) or leaves. Every option the spec defines that this
//! server does not offer is answered with `ERR_UNSUP`, and the client may go on.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::Export;
use super::proto::{self, Invalid};

/// Where the handshake finds exports: the server's current one.
pub trait Exports {
    /// The export a client asks for by name ("" is the default export).
    fn find(&self, name: &str) -> Option<Arc<Export>>;
    /// Every export, for `NBD_OPT_LIST`: (name, description).
    fn list(&self) -> Vec<(String, String)>;
}

/// What the client chose.
pub struct Negotiated {
    pub export: Arc<Export>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected: BLOCK_STATUS may be used.
    pub allocation: bool,
}

/// Why a handshake ended without an export.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("client flags {0:#x} include bits this server does not know")]
    ClientFlags(u32),
    #[error("bad option magic {0:#x}")]
    OptionMagic(u64),
    #[error("option {option} with {len} bytes of data, more than this server reads")]
    TooBig { option: u32, len: u32 },
    #[error("the client asked for export {0:?}, which does not exist")]
    UnknownExport(String),
    #[error("the client aborted the handshake")]
    Aborted,
}

/// Runs the handshake on `stream`.
pub async fn negotiate<S, E>(stream: &mut S, exports: &E) -> Result<Negotiated, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Exports + ?Sized,
{
    stream.write_all(&proto::greeting()).await?;
    stream.flush().await?;
    let client_flags = stream.read_u32().await?;
    if client_flags & !(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & proto::CLIENT_NO_ZEROES != 0;
    let mut structured = false;
    // The export name `base:allocation` was selected for, if it was.
    let mut allocation_for: Option<String> = None;
    loop {
        let magic = stream.read_u64().await?;
        if magic != proto::OPTION_MAGIC {
            return Err(HandshakeError::OptionMagic(magic));
        }
        let option = stream.read_u32().await?;
        let len = stream.read_u32().await?;
        if len > proto::MAX_OPTION {
            reply_error(
                stream,
                option,
                proto::REP_ERR_TOO_BIG,
                "option data too large",
            )
            .await?;
            return Err(HandshakeError::TooBig { option, len });
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;
        match option {
            proto::OPT_EXPORT_NAME => {
                // No error reply exists for this option: an unknown name closes the connection.
                let name = proto::string(&data)
                    .map_err(|_| HandshakeError::UnknownExport(lossy(&data)))?;
                let Some(export) = exports.find(&name) else {
                    return Err(HandshakeError::UnknownExport(name));
                };
                let reply =
                    proto::export_name_reply(export.size, export.flags(structured), no_zeroes);
                stream.write_all(&reply).await?;
                stream.flush().await?;
                let allocation = allocation_for.as_deref() == Some(export.name.as_str())
                    || allocation_for.as_deref() == Some(name.as_str());
                return Ok(Negotiated {
                    export,
                    structured,
                    allocation,
                });
            }
            proto::OPT_ABORT => {
                // The client may close without reading this; an error here is no matter.
                let _ = stream
                    .write_all(&proto::option_reply(option, proto::REP_ACK, 0))
                    .await;
                let _ = stream.flush().await;
                return Err(HandshakeError::Aborted);
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    reply_error(stream, option, proto::REP_ERR_INVALID, "LIST takes no data")
                        .await?;
                    continue;
                }
                let mut out = Vec::new();
                for (name, description) in exports.list() {
                    out.extend(proto::option_reply_with(
                        option,
                        proto::REP_SERVER,
                        &proto::rep_server(&name, &description),
                    ));
                }
                out.extend_from_slice(&proto::option_reply(option, proto::REP_ACK, 0));
                stream.write_all(&out).await?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let request = match proto::parse_info_request(&data) {
                    Ok(r) => r,
                    Err(Invalid(why)) => {
                        reply_error(stream, option, proto::REP_ERR_INVALID, why).await?;
                        continue;
                    }
                };
                let Some(export) = exports.find(&request.name) else {
                    let message = format!("no export named {:?}", request.name);
                    reply_error(stream, option, proto::REP_ERR_UNKNOWN, &message).await?;
                    continue;
                };
                let mut out = Vec::new();
                let mut info = |payload: Vec<u8>| {
                    out.extend(proto::option_reply_with(option, proto::REP_INFO, &payload))
                };
                info(proto::info_export(export.size, export.flags(structured)));
                // Always sent: the spec lets a server send it unrequested, and the minimum
                // of 1 imposes nothing on a client that did not ask.
                info(proto::info_block_size(
                    1,
                    proto::PREFERRED_BLOCK,
                    proto::MAX_PAYLOAD,
                ));
                if request.infos.contains(&proto::INFO_NAME) {
                    info(proto::info_string(proto::INFO_NAME, &export.name));
                }
                if request.infos.contains(&proto::INFO_DESCRIPTION) {
                    info(proto::info_string(
                        proto::INFO_DESCRIPTION,
                        &description(&export),
                    ));
                }
                out.extend_from_slice(&proto::option_reply(option, proto::REP_ACK, 0));
                stream.write_all(&out).await?;
                if option == proto::OPT_GO {
                    stream.flush().await?;
                    let allocation = allocation_for.as_deref() == Some(request.name.as_str());
                    return Ok(Negotiated {
                        export,
                        structured,
                        allocation,
                    });
                }
            }
            proto::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(
                        stream,
                        option,
                        proto::REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                } else if structured {
                    reply_error(
                        stream,
                        option,
                        proto::REP_ERR_INVALID,
                        "structured replies are already on",
                    )
                    .await?;
                } else {
                    structured = true;
                    stream
                        .write_all(&proto::option_reply(option, proto::REP_ACK, 0))
                        .await?;
                }
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                let list = option == proto::OPT_LIST_META_CONTEXT;
                if !structured {
                    reply_error(
                        stream,
                        option,
                        proto::REP_ERR_INVALID,
                        "metadata contexts need structured replies first",
                    )
                    .await?;
                    continue;
                }
                let request = match proto::parse_meta_context_request(&data) {
                    Ok(r) => r,
                    Err(Invalid(why)) => {
                        reply_error(stream, option, proto::REP_ERR_INVALID, why).await?;
                        continue;
                    }
                };
                if exports.find(&request.name).is_none() {
                    let message = format!("no export named {:?}", request.name);
                    reply_error(stream, option, proto::REP_ERR_UNKNOWN, &message).await?;
                    continue;
                }
                let selected = if list && request.queries.is_empty() {
                    true
                } else {
                    request
                        .queries
                        .iter()
                        .any(|q| proto::query_matches(q, list))
                };
                if !list {
                    allocation_for = selected.then(|| request.name.clone());
                }
                let mut out = Vec::new();
                if selected {
                    out.extend(proto::option_reply_with(
                        option,
                        proto::REP_META_CONTEXT,
                        &proto::rep_meta_context(proto::BASE_ALLOCATION_ID, proto::BASE_ALLOCATION),
                    ));
                }
                out.extend_from_slice(&proto::option_reply(option, proto::REP_ACK, 0));
                stream.write_all(&out).await?;
            }
            // STARTTLS, EXTENDED_HEADERS and whatever comes next.
            other => {
                // STARTTLS gets ERR_POLICY, as from nbdkit and qemu-nbd without TLS.
                let (error, message) = match other {
                    proto::OPT_STARTTLS => (
                        proto::REP_ERR_POLICY,
                        "TLS is not offered by this server".to_string(),
                    ),
                    _ => (
                        proto::REP_ERR_UNSUP,
                        format!("option {other} is not supported by this server"),
                    ),
                };
                reply_error(stream, option, error, &message).await?;
            }
        }
        stream.flush().await?;
    }
}

/// The description an export is listed with.
pub fn description(export: &Export) -> String {
    format!("rtmd {} export of {}", export.mode.as_str(), export.name)
}

async fn reply_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    error: u32,
    message: &str,
) -> std::io::Result<()> {
    stream
        .write_all(&proto::option_reply_with(option, error, message.as_bytes()))
        .await?;
    stream.flush().await
}

fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data.get(..256).unwrap_or(data)).into_owned()
}
