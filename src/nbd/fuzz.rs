//! The entry point for fuzzing (`fuzz/`, docs/nbd.md "Fuzzing"): feeds arbitrary bytes to the
//! real handshake, then parses what follows as requests and runs the real validation and the
//! export's read, write and block-status paths on them, checking what each returns. Then the
//! same bytes go to the real server over a loopback TCP connection: the handshake and the
//! whole transmission phase (replies, `sendfile`, chunked writes, coalesced FLUSHes,
//! backpressure) as a client's bytes reach them. Any panic is a bug.

use std::path::PathBuf;
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::export::{Export, Mode};
use super::handshake::{self, Exports};
use super::proto::{self, Command, REQUEST_LEN};
use super::transmission;

struct One(std::sync::Arc<Export>);

impl Exports for One {
    fn find(&self, name: &str) -> Option<std::sync::Arc<Export>> {
        (name.is_empty() || name == self.0.name).then(|| self.0.clone())
    }

    fn list(&self) -> Vec<(String, String)> {
        vec![(self.0.name.clone(), handshake::description(&self.0))]
    }
}

/// A small image (1 MiB and a bit, so the last cluster is partial) in the temp folder.
fn image() -> Option<&'static PathBuf> {
    static IMAGE: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("rtmd-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let path = dir.join("fuzz.img");
            let data: Vec<u8> = (0..(1 << 20) + 1000).map(|i| (i % 253) as u8).collect();
            std::fs::write(&path, data).ok()?;
            Some(path)
        })
        .as_ref()
}

/// Runs one input; returns how many requests passed validation. The first byte picks the
/// mode (even: `ro`, odd: `cow`).
pub fn server(data: &[u8]) -> usize {
    let Some(path) = image() else { return 0 };
    let Some((&first, data)) = data.split_first() else {
        return 0;
    };
    let (mode, overlay) = if first % 2 == 0 {
        (Mode::Ro, None)
    } else {
        (Mode::Cow, Some(path.with_extension("cow")))
    };
    let Ok(export) = Export::open("fuzz", path, mode, overlay.as_deref()) else {
        return 0;
    };
    let exports = One(std::sync::Arc::new(export));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 0;
    };
    let valid = runtime.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        // The client's bytes, then EOF.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let mut valid = 0;
        if let Ok(negotiated) = handshake::negotiate(&mut server, &exports).await {
            valid = requests(&mut server, &negotiated.export, negotiated.allocation).await;
        }
        drop(server);
        let _ = drain.await;
        valid
    });
    runtime.block_on(over_tcp(data, &exports));
    valid
}

/// The bytes as a client on loopback sends them, to the real handshake and transmission
/// phase; the client reads every reply, concurrently (a client that does not read is
/// tests/nbd.rs's business).
async fn over_tcp(data: &[u8], exports: &One) {
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Ok(client) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let Ok((mut server, peer)) = listener.accept().await else {
        return;
    };
    let (mut rd, mut wr) = client.into_split();
    let bytes = data.to_vec();
    let send = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.shutdown().await;
    });
    let drain = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
    });
    if let Ok(negotiated) = handshake::negotiate(&mut server, exports).await {
        let (_withdraw, withdrawn) = tokio::sync::watch::channel(false);
        let _ = transmission::serve(server, peer, negotiated, withdrawn).await;
    } else {
        drop(server);
    }
    let _ = send.await;
    let _ = drain.await;
}

async fn requests(
    stream: &mut tokio::io::DuplexStream,
    export: &Export,
    allocation: bool,
) -> usize {
    let mut valid = 0;
    let mut header = [0u8; REQUEST_LEN];
    while stream.read_exact(&mut header).await.is_ok() {
        let Ok(r) = proto::parse_request(&header) else {
            return valid;
        };
        let mut payload = Vec::new();
        if r.command == Command::Write {
            let len = r.length.min(1 << 16);
            payload.resize(len as usize, 0);
            if stream.read_exact(&mut payload).await.is_err() {
                return valid;
            }
        }
        if transmission::validate(export, allocation, &r).is_err() {
            continue;
        }
        valid += 1;
        let (offset, len) = (r.offset, u64::from(r.length));
        match r.command {
            Command::Read | Command::Cache => {
                let planned: u64 = export.read_plan(offset, len).iter().map(|s| s.len).sum();
                assert_eq!(planned, len, "a read plan covers the request exactly");
            }
            Command::Write if payload.len() as u64 == len => {
                let _ = export.write(&payload, offset);
            }
            Command::Trim | Command::WriteZeroes => {
                let _ = export.zero(offset, len, r.flags & proto::CMD_FLAG_NO_HOLE != 0);
            }
            Command::BlockStatus => {
                if let Ok(extents) = export.block_status(offset, len, 64) {
                    let covered: u64 = extents.iter().map(|(l, _)| u64::from(*l)).sum();
                    assert!(covered <= len, "block status stays inside the request");
                    assert!(!extents.is_empty(), "block status says something");
                }
            }
            _ => {}
        }
    }
    valid
}
