//! The NBD wire format (the protocol spec, `doc/proto.md` of the NetworkBlockDevice project):
//! constants, and pure functions that parse what a client sends and encode what the server
//! answers. Nothing here does I/O, so the fuzz target and the unit tests drive it directly.

use std::fmt;

/// "NBDMAGIC": the first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the magic of every option request.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Information types in REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// The command flags this server understands; any other bit is EINVAL.
pub const CMD_FLAGS_KNOWN: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE;

// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// Block status flags of `base:allocation`.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context served, and its id in replies.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Errors on the wire are Linux errno values, whatever the server's platform.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The longest string (export name, context name) a client may send: the spec's limit.
pub const MAX_STRING: usize = 4096;
/// The largest option payload read; anything longer is refused with ERR_TOO_BIG and the
/// connection closed (its payload is not worth reading).
pub const MAX_OPTION: u32 = 64 * 1024;
/// The largest READ or WRITE payload, advertised as the maximum block size.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The preferred block size advertised: the overlay's cluster, the page size.
pub const PREFERRED_BLOCK: u32 = 4096;

pub const REQUEST_LEN: usize = 28;

/// One transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// A command this server does not know (answered with EINVAL, as nbdkit does).
    Unknown(u16),
}

impl Command {
    pub fn from_wire(t: u16) -> Command {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "READ",
            Command::Write => "WRITE",
            Command::Disc => "DISC",
            Command::Flush => "FLUSH",
            Command::Trim => "TRIM",
            Command::Cache => "CACHE",
            Command::WriteZeroes => "WRITE_ZEROES",
            Command::BlockStatus => "BLOCK_STATUS",
            Command::Unknown(_) => "unknown",
        }
    }
}

/// A request header as it came off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A request header that cannot be answered: the stream is out of step and the
/// connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMagic(pub u32);

impl fmt::Display for BadMagic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad request magic {:#010x}", self.0)
    }
}

pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
    let magic = be32(&b[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    Ok(Request {
        flags: be16(&b[4..6]),
        command: Command::from_wire(be16(&b[6..8])),
        cookie: be64(&b[8..16]),
        offset: be64(&b[16..24]),
        length: be32(&b[24..28]),
    })
}

/// What a client may ask for in `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

/// Why an option's payload is malformed (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// A cursor over an option payload that never reads past its end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Invalid> {
        if self.data.len() < n {
            return Err(Invalid(what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Invalid> {
        self.take(2, what).map(be16)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Invalid> {
        self.take(4, what).map(be32)
    }

    /// A string with a 32-bit length prefix, at most [`MAX_STRING`] bytes of UTF-8.
    fn string(&mut self, what: &'static str) -> Result<String, Invalid> {
        let len = self.u32(what)? as usize;
        if len > MAX_STRING {
            return Err(Invalid("string longer than 4096 bytes"));
        }
        let raw = self.take(len, what)?;
        string(raw)
    }

    fn end(&self) -> Result<(), Invalid> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Invalid("trailing bytes after the option's data"))
        }
    }
}

/// A name as sent with `NBD_OPT_EXPORT_NAME` (the whole payload, no length prefix).
pub fn string(raw: &[u8]) -> Result<String, Invalid> {
    if raw.len() > MAX_STRING {
        return Err(Invalid("string longer than 4096 bytes"));
    }
    let s = std::str::from_utf8(raw).map_err(|_| Invalid("string is not UTF-8"))?;
    if s.contains('\0') {
        return Err(Invalid("string contains NUL"));
    }
    Ok(s.to_string())
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, Invalid> {
    let mut c = Cursor { data };
    let name = c.string("export name")?;
    let count = c.u16("number of information requests")?;
    let mut infos = Vec::with_capacity(usize::from(count).min(16));
    for _ in 0..count {
        infos.push(c.u16("information request")?);
    }
    c.end()?;
    Ok(InfoRequest { name, infos })
}

pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, Invalid> {
    let mut c = Cursor { data };
    let name = c.string("export name")?;
    let count = c.u32("number of queries")?;
    let mut queries = Vec::new();
    for _ in 0..count {
        queries.push(c.string("query")?);
    }
    c.end()?;
    Ok(MetaContextRequest { name, queries })
}

/// Whether a metadata context query selects `base:allocation`. `base:` alone lists the
/// whole namespace (LIST only, as the spec says); other namespaces are not ours.
pub fn query_matches(query: &str, list: bool) -> bool {
    query == BASE_ALLOCATION || (list && query == "base:")
}

/// The header of one option reply.
pub fn option_reply(option: u32, reply: u32, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&reply.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A whole option reply with its payload.
pub fn option_reply_with(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + payload.len());
    v.extend_from_slice(&option_reply(option, reply, payload.len() as u32));
    v.extend_from_slice(payload);
    v
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v
}

/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block size.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v.extend_from_slice(&min.to_be_bytes());
    v.extend_from_slice(&preferred.to_be_bytes());
    v.extend_from_slice(&max.to_be_bytes());
    v
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`: a string without a length prefix.
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.len());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// The payload of `NBD_REP_SERVER` in answer to `NBD_OPT_LIST`.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len() + description.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(description.as_bytes());
    v
}

/// The payload of `NBD_REP_META_CONTEXT`.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// What `NBD_OPT_EXPORT_NAME` answers: size, flags, and 124 zero bytes unless the client
/// said `NO_ZEROES`.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(134);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        v.extend_from_slice(&[0u8; 124]);
    }
    v
}

/// The server's greeting: magic, "IHAVEOPT", handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The header of a structured reply chunk; `len` is the payload length that follows.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// The header (chunk header plus offset) of the one `OFFSET_DATA` chunk that answers a READ.
pub fn offset_data_header(cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..20].copy_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        len + 8,
    ));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk with a human-readable message.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = message
        .as_bytes()
        .get(..MAX_STRING)
        .unwrap_or(message.as_bytes());
    let mut v = Vec::with_capacity(26 + message.len());
    v.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + message.len() as u32,
    ));
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(message.len() as u16).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// A final `NBD_REPLY_TYPE_NONE` chunk: success without data.
pub fn done_chunk(cookie: u64) -> [u8; 20] {
    chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// A final `BLOCK_STATUS` chunk for `base:allocation` with `(length, flags)` extents.
pub fn block_status_chunk(cookie: u64, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut v = Vec::with_capacity(20 + len);
    v.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len as u32,
    ));
    v.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (length, flags) in extents {
        v.extend_from_slice(&length.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
    }
    v
}

/// The first `N` bytes of `b` (callers pass exactly `N`; a shorter slice reads as if padded
/// with zeros, never a panic).
fn bytes<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (to, from) in a.iter_mut().zip(b) {
        *to = *from;
    }
    a
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(bytes(b))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(bytes(b))
}

pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(bytes(b))
}

#[cfg(test)]
mod tests;
