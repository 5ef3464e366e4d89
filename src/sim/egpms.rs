//! A simulated Energenie strip on a real TCP socket, speaking the native protocol exactly as
//! the strip does (and as Debian's `egctl` expects): one session at a time, silence on a
//! wrong password (never a close: `egctl` 0.1 crashes on EOF there), status after every
//! control frame.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Events;
use super::board::PowerInput;
use crate::config::EgpmsModel;
use crate::power::egpms::{
    CTRL_OFF, CTRL_ON, START, decrypt, encode_status, encrypt, key, sockets_to_wire, solve,
    wire_to_sockets,
};

/// A session that stays idle this long is dropped, so a stuck client cannot wedge the strip.
const IDLE: Duration = Duration::from_secs(10);

/// The strip's behaviour.
#[derive(Debug, Clone)]
pub struct StripSpec {
    pub model: EgpmsModel,
    pub password: Vec<u8>,
    /// Start bytes to ignore at the beginning of each session (exercises clients' resends).
    pub ignore_starts: u32,
    /// Outlets (1..4) whose relay ignores switching, as a welded or dead relay does: the
    /// strip accepts the control frame and reports the unchanged state, so only a client
    /// that reads the state back notices.
    pub stuck_outlets: Vec<u8>,
}

/// The strip's outlets, and the simulated board hanging on one of them.
#[derive(Debug, Default)]
pub struct Outlets {
    pub on: [bool; 4],
    /// (outlet index 0..3, the board's power input): the board sees mains as 5 V.
    pub board: Option<(usize, PowerInput)>,
}

impl Outlets {
    pub fn set(&mut self, index: usize, on: bool) {
        self.on[index] = on;
        if let Some((i, board)) = &self.board
            && *i == index
        {
            board.set_power(if on { 5.0 } else { 0.0 });
        }
    }
}

/// Serves sessions one after another until the listener fails.
pub async fn serve(
    listener: TcpListener,
    spec: StripSpec,
    outlets: Arc<Mutex<Outlets>>,
    events: Events,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // One session at a time, like the strip: the next client waits in the backlog.
        let _ = tokio::time::timeout(IDLE * 6, session(stream, &spec, &outlets, &events)).await;
    }
}

fn random_task() -> [u8; 4] {
    // Not security: the strip's task only has to differ between sessions.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = nanos ^ 0x9e37_79b9 ^ std::process::id().rotate_left(13);
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x.to_le_bytes()
}

async fn read_exact_idle(stream: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    match tokio::time::timeout(IDLE, stream.read_exact(buf)).await {
        Ok(Ok(_)) => Some(()),
        _ => None,
    }
}

async fn session(
    mut stream: TcpStream,
    spec: &StripSpec,
    outlets: &Mutex<Outlets>,
    events: &Events,
) -> Option<()> {
    let k = key(&spec.password);
    let mut ignored = 0;
    loop {
        let mut b = [0u8; 1];
        read_exact_idle(&mut stream, &mut b).await?;
        if b[0] != START {
            continue;
        }
        if ignored < spec.ignore_starts {
            ignored += 1;
            continue;
        }
        break;
    }
    let task = random_task();
    stream.write_all(&task).await.ok()?;
    let mut response = [0u8; 4];
    read_exact_idle(&mut stream, &mut response).await?;
    if response != solve(task, &k) {
        events.emit("auth refused");
        // A real strip stays silent and keeps the connection until the client gives up.
        let mut sink = [0u8; 64];
        while let Ok(Ok(n)) = tokio::time::timeout(IDLE, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        return None;
    }
    let status = |outlets: &Mutex<Outlets>| {
        let on = outlets.lock().map(|o| o.on).unwrap_or_default();
        encrypt(
            sockets_to_wire(on.map(|on| encode_status(spec.model, on))),
            task,
            &k,
        )
    };
    stream.write_all(&status(outlets)).await.ok()?;
    loop {
        let mut frame = [0u8; 4];
        // A lone START then EOF ends the session; so does any EOF.
        read_exact_idle(&mut stream, &mut frame).await?;
        let sockets = wire_to_sockets(decrypt(frame, task, &k));
        for (i, ctrl) in sockets.iter().enumerate() {
            let new = match *ctrl {
                CTRL_ON => true,
                CTRL_OFF => false,
                _ => continue,
            };
            if spec.stuck_outlets.contains(&(i as u8 + 1)) {
                events.emit(&format!(
                    "outlet {} stuck, ignored {}",
                    i + 1,
                    if new { "on" } else { "off" }
                ));
                continue;
            }
            if let Ok(mut o) = outlets.lock() {
                o.set(i, new);
            }
            events.emit(&format!(
                "outlet {} {}",
                i + 1,
                if new { "on" } else { "off" }
            ));
        }
        stream.write_all(&status(outlets)).await.ok()?;
    }
}
