//! A simulated Energenie strip on a real TCP socket, speaking the native protocol exactly as
//! the strip does (and as Debian's `egctl` expects): one session at a time, silence on a
//! wrong password (never a close: `egctl` 0.1 crashes on EOF there), status after every
//! control frame.
//!
//! An independent witness for `crate::power::egpms`: this module owns its wire facts (start
//! byte, key, challenge/response, cipher, byte order, status and control values), written
//! from `docs/protocols/energenie-egpms.md`, and imports nothing from the backend. A wrong
//! cipher step on either side therefore fails the tests instead of passing on both. The only
//! outside type is `crate::config::EgpmsModel`, a selector (no wire values) that `rtm-sim`
//! passes in and that is mapped onto this module's own [`Protocol`] at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Events;
use super::board::PowerInput;
use crate::config::EgpmsModel;

// ---- Wire facts (docs/protocols/energenie-egpms.md) -------------------------------------------

/// "Session": the client opens a session with this lone byte and ends it with it again.
const START: u8 = 0x11;

/// "Values": control bytes. Anything else (0x04, "leave as is", included) leaves a socket alone.
const CTRL_ON: u8 = 0x01;
const CTRL_OFF: u8 = 0x02;
#[cfg(test)]
const CTRL_KEEP: u8 = 0x04;

/// The strip's protocol generation, by egtab's names: it decides the status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// EG-PMS-LAN.
    Pms20,
    /// EG-PMS2-LAN, EG-PM2-LAN.
    Pms21,
    /// EG-PMS-WLAN.
    PmsWlan,
}

impl Protocol {
    /// "Values": the status byte a socket reports (pms20's 0x12/0x21 variants need a
    /// voltage sensor the simulation does not have).
    pub fn status(self, on: bool) -> u8 {
        match self {
            Protocol::Pms20 => {
                if on {
                    0x11
                } else {
                    0x22
                }
            }
            Protocol::Pms21 => {
                if on {
                    0x41
                } else {
                    0x82
                }
            }
            Protocol::PmsWlan => {
                if on {
                    0x51
                } else {
                    0x92
                }
            }
        }
    }
}

impl From<EgpmsModel> for Protocol {
    fn from(model: EgpmsModel) -> Self {
        match model {
            EgpmsModel::Pms20 => Protocol::Pms20,
            EgpmsModel::Pms21 => Protocol::Pms21,
            EgpmsModel::PmsWlan => Protocol::PmsWlan,
        }
    }
}

/// "Key": the password's first 8 bytes, right-padded with spaces.
fn strip_key(password: &[u8]) -> [u8; 8] {
    let mut key = *b"        ";
    for (slot, b) in key.iter_mut().zip(password) {
        *slot = *b;
    }
    key
}

/// "Session" step 3: the answer the strip expects to its task, `lo` then `hi`, each a u16
/// little-endian. Computed in u32 and masked to 16 bits ("all mod 2^16").
fn expected_answer(task: [u8; 4], key: &[u8; 8]) -> [u8; 4] {
    let [t0, t1, t2, t3] = task.map(u32::from);
    let [k0, k1, k2, k3, k4, k5, k6, k7] = key.map(u32::from);
    let lo = (((t0 ^ k2) * k0) ^ (k6 | (k4 << 8)) ^ t2) & 0xffff;
    let hi = (((t1 ^ k3) * k1) ^ (k7 | (k5 << 8)) ^ t3) & 0xffff;
    [lo as u8, (lo >> 8) as u8, hi as u8, (hi >> 8) as u8]
}

/// "Cipher": one byte, strip to client: `c = (((p ^ T2) + T3) ^ K0) + K1` mod 256.
fn encipher(p: u8, task: [u8; 4], key: &[u8; 8]) -> u8 {
    let step = (u16::from(p ^ task[2]) + u16::from(task[3])) as u8;
    ((u16::from(step ^ key[0]) + u16::from(key[1])) & 0xff) as u8
}

/// "Cipher": one byte, client to strip: `p = (((c - K1) ^ K0) - T3) ^ T2` mod 256.
fn decipher(c: u8, task: [u8; 4], key: &[u8; 8]) -> u8 {
    let step = ((u16::from(c) + 256 - u16::from(key[1])) & 0xff) as u8 ^ key[0];
    ((u16::from(step) + 256 - u16::from(task[3])) & 0xff) as u8 ^ task[2]
}

/// "Byte order on the wire": wire byte `j` carries socket `4 - j`, so socket `s` (1..4) is
/// wire byte `4 - s`: the wire order is the socket order reversed (and back).
fn reversed(mut bytes: [u8; 4]) -> [u8; 4] {
    bytes.reverse();
    bytes
}

/// The encrypted status frame for the sockets' states (`on[0]` is socket 1).
fn status_frame(protocol: Protocol, on: [bool; 4], task: [u8; 4], key: &[u8; 8]) -> [u8; 4] {
    reversed(on.map(|on| encipher(protocol.status(on), task, key)))
}

/// What an encrypted control frame asks of sockets 1..4: `Some(on)`, or `None` to leave it.
fn control_request(frame: [u8; 4], task: [u8; 4], key: &[u8; 8]) -> [Option<bool>; 4] {
    reversed(frame).map(|byte| match decipher(byte, task, key) {
        CTRL_ON => Some(true),
        CTRL_OFF => Some(false),
        _ => None,
    })
}

/// A session that stays idle this long is dropped, so a stuck client cannot wedge the strip.
const IDLE: Duration = Duration::from_secs(10);

/// The strip's behaviour.
#[derive(Debug, Clone)]
pub struct StripSpec {
    /// Which strip (a selector only: its status values are [`Protocol::status`]).
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
    /// Switches outlet `index` (0..3); there is no other outlet to switch.
    pub fn set(&mut self, index: usize, on: bool) {
        let Some(slot) = self.on.get_mut(index) else {
            return;
        };
        *slot = on;
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
        let _ = tokio::time::timeout(
            IDLE * 6,
            session(stream, &spec, &outlets, &events, random_task()),
        )
        .await;
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

/// One session with `task` as the strip's challenge.
async fn session(
    mut stream: TcpStream,
    spec: &StripSpec,
    outlets: &Mutex<Outlets>,
    events: &Events,
    task: [u8; 4],
) -> Option<()> {
    let key = strip_key(&spec.password);
    let protocol = Protocol::from(spec.model);
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
    stream.write_all(&task).await.ok()?;
    let mut response = [0u8; 4];
    read_exact_idle(&mut stream, &mut response).await?;
    if response != expected_answer(task, &key) {
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
        status_frame(protocol, on, task, &key)
    };
    stream.write_all(&status(outlets)).await.ok()?;
    loop {
        let mut frame = [0u8; 4];
        // A lone START then EOF ends the session; so does any EOF.
        read_exact_idle(&mut stream, &mut frame).await?;
        for (i, wanted) in control_request(frame, task, &key).into_iter().enumerate() {
            let Some(new) = wanted else {
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocols/energenie-egpms.md, "Test vectors", copied as literals: (password,
    /// task, response, status with s1..s4 = 11 22 11 22, control with s1..s4 = 01 04 02 04),
    /// the last two as they travel on the wire.
    type Vector = (&'static [u8], [u8; 4], [u8; 4], [u8; 4], [u8; 4]);
    const VECTORS: [Vector; 2] = [
        (
            b"hackme",
            [0x01, 0x02, 0x03, 0x04],
            [0xf3, 0x4a, 0xed, 0x42],
            [0xae, 0xdf, 0xae, 0xdf],
            [0xc4, 0xce, 0xc4, 0xcf],
        ),
        (
            b"1",
            [0xde, 0xad, 0xbe, 0xef],
            [0x00, 0x10, 0x6f, 0x31],
            [0xda, 0xcf, 0xda, 0xcf],
            [0xb8, 0xba, 0xb8, 0xbf],
        ),
    ];

    #[test]
    fn wire_constants_are_the_documented_ones() {
        assert_eq!(START, 0x11);
        assert_eq!((CTRL_ON, CTRL_OFF, CTRL_KEEP), (0x01, 0x02, 0x04));
    }

    #[test]
    fn key_is_the_password_padded_with_spaces() {
        assert_eq!(&strip_key(b""), b"        ");
        assert_eq!(&strip_key(b"hackme"), b"hackme  ");
        assert_eq!(&strip_key(b"0123456789"), b"01234567");
    }

    #[test]
    fn answer_and_cipher_match_the_documented_vectors() {
        for (password, task, response, status, control) in VECTORS {
            let key = strip_key(password);
            assert_eq!(expected_answer(task, &key), response);
            // s1..s4 = 11 22 11 22 is pms20's on, off, on, off.
            assert_eq!(
                status_frame(Protocol::Pms20, [true, false, true, false], task, &key),
                status
            );
            // Byte by byte, in wire order (socket 4 first): 22 11 22 11 and 04 02 04 01.
            assert_eq!(
                status.map(|c| decipher(c, task, &key)),
                [0x22, 0x11, 0x22, 0x11]
            );
            assert_eq!(
                [0x04, 0x02, 0x04, 0x01].map(|p| encipher(p, task, &key)),
                control
            );
            // s1..s4 = 01 04 02 04: socket 1 on, socket 3 off, 2 and 4 left alone.
            assert_eq!(
                control_request(control, task, &key),
                [Some(true), None, Some(false), None]
            );
        }
    }

    #[test]
    fn status_values_per_protocol() {
        // "Values", the status table.
        assert_eq!(
            (Protocol::Pms20.status(true), Protocol::Pms20.status(false)),
            (0x11, 0x22)
        );
        assert_eq!(
            (Protocol::Pms21.status(true), Protocol::Pms21.status(false)),
            (0x41, 0x82)
        );
        assert_eq!(
            (
                Protocol::PmsWlan.status(true),
                Protocol::PmsWlan.status(false)
            ),
            (0x51, 0x92)
        );
        // The doc's vectors use pms20's values only. Derived by hand from "Cipher" for the
        // first vector's key and task (K0 = 'h' = 0x68, K1 = 'a' = 0x61, T2 = 0x03, T3 = 0x04),
        // c = (((p ^ T2) + T3) ^ K0) + K1 mod 256:
        //   0x41: 0x42, 0x46, 0x2e, 0x8f      0x82: 0x81, 0x85, 0xed, 0x14e -> 0x4e
        //   0x51: 0x52, 0x56, 0x3e, 0x9f      0x92: 0x91, 0x95, 0xfd, 0x15e -> 0x5e
        // Wire order is socket 4 first.
        let key = strip_key(b"hackme");
        let task = [0x01, 0x02, 0x03, 0x04];
        assert_eq!(
            status_frame(Protocol::Pms21, [true, false, false, false], task, &key),
            [0x4e, 0x4e, 0x4e, 0x8f]
        );
        assert_eq!(
            status_frame(Protocol::PmsWlan, [false, true, false, true], task, &key),
            [0x9f, 0x5e, 0x9f, 0x5e]
        );
    }

    fn recorder() -> (Events, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let events = Events(Arc::new(move |line: &str| {
            sink.lock().unwrap().push(line.to_string())
        }));
        (events, lines)
    }

    /// A strip serving one session with a fixed task, and a client connected to it.
    struct Rig {
        client: TcpStream,
        outlets: Arc<Mutex<Outlets>>,
        events: Arc<Mutex<Vec<String>>>,
        session: tokio::task::JoinHandle<Option<()>>,
    }

    async fn rig(spec: StripSpec, on: [bool; 4], task: [u8; 4]) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let outlets = Arc::new(Mutex::new(Outlets { on, board: None }));
        let (events, lines) = recorder();
        let shared = outlets.clone();
        let session = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            session(stream, &spec, &shared, &events, task).await
        });
        let client = TcpStream::connect(addr).await.unwrap();
        Rig {
            client,
            outlets,
            events: lines,
            session,
        }
    }

    fn spec(password: &[u8], stuck_outlets: Vec<u8>, ignore_starts: u32) -> StripSpec {
        StripSpec {
            model: EgpmsModel::Pms20,
            password: password.to_vec(),
            ignore_starts,
            stuck_outlets,
        }
    }

    async fn read4(client: &mut TcpStream) -> [u8; 4] {
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    }

    /// Nothing arrives within `ms`, and the connection stays open.
    async fn silent(client: &mut TcpStream, ms: u64) {
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(ms), client.read(&mut buf)).await;
        assert!(read.is_err(), "the strip answered or closed: {read:?}");
    }

    #[tokio::test]
    async fn a_session_on_the_wire_is_the_documented_bytes() {
        // The second vector: sockets 1 and 3 on, then "socket 1 on, socket 3 off".
        let (password, task, response, status, control) = VECTORS[1];
        let mut r = rig(spec(password, vec![], 0), [true, false, true, false], task).await;
        r.client.write_all(&[0x11]).await.unwrap();
        assert_eq!(read4(&mut r.client).await, task);
        r.client.write_all(&response).await.unwrap();
        assert_eq!(read4(&mut r.client).await, status);
        r.client.write_all(&control).await.unwrap();
        // Now s1..s4 = 11 22 22 22; on the wire 22 22 22 11, which the vector's status shows
        // to encrypt as da da da cf.
        assert_eq!(read4(&mut r.client).await, [0xda, 0xda, 0xda, 0xcf]);
        r.client.write_all(&[0x11]).await.unwrap();
        drop(r.client);
        assert_eq!(r.session.await.unwrap(), None);
        assert_eq!(r.outlets.lock().unwrap().on, [true, false, false, false]);
        assert_eq!(*r.events.lock().unwrap(), ["outlet 1 on", "outlet 3 off"]);
    }

    #[tokio::test]
    async fn a_stuck_outlet_reports_its_unchanged_state() {
        let (password, task, response, status, control) = VECTORS[0];
        let mut r = rig(spec(password, vec![3], 0), [true, false, true, false], task).await;
        r.client.write_all(&[0x11]).await.unwrap();
        assert_eq!(read4(&mut r.client).await, task);
        r.client.write_all(&response).await.unwrap();
        assert_eq!(read4(&mut r.client).await, status);
        r.client.write_all(&control).await.unwrap();
        // Socket 3 ignored "off": the state, and so the frame, is unchanged.
        assert_eq!(read4(&mut r.client).await, status);
        assert_eq!(r.outlets.lock().unwrap().on, [true, false, true, false]);
        assert_eq!(
            *r.events.lock().unwrap(),
            ["outlet 1 on", "outlet 3 stuck, ignored off"]
        );
    }

    #[tokio::test]
    async fn a_wrong_answer_gets_silence_not_a_close() {
        let (_, task, response, _, _) = VECTORS[0];
        // The first vector's task and answer, but the password is "hackmf".
        let mut r = rig(spec(b"hackmf", vec![], 0), [false; 4], task).await;
        r.client.write_all(&[0x11]).await.unwrap();
        assert_eq!(read4(&mut r.client).await, task);
        r.client.write_all(&response).await.unwrap();
        silent(&mut r.client, 300).await;
        assert_eq!(*r.events.lock().unwrap(), ["auth refused"]);
    }

    #[tokio::test]
    async fn ignored_start_bytes_are_answered_only_when_resent() {
        let (password, task, response, status, _) = VECTORS[0];
        let mut r = rig(spec(password, vec![], 1), [true, false, true, false], task).await;
        r.client.write_all(&[0x11]).await.unwrap();
        silent(&mut r.client, 200).await;
        r.client.write_all(&[0x11]).await.unwrap();
        assert_eq!(read4(&mut r.client).await, task);
        r.client.write_all(&response).await.unwrap();
        assert_eq!(read4(&mut r.client).await, status);
    }
}
