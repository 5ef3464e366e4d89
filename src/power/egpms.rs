//! Energenie EG-PMS/EG-PM2/EG-PMS2-LAN and EG-PMS-WLAN strips, native TCP protocol
//! (`docs/protocols/energenie-egpms.md`): the wire encoding as pure functions, and
//! [`Strip`], a client that opens one short session per operation.
//!
//! One session per operation, closed at once, because the strip serves a single session at a
//! time: holding it open would lock out `egctl` and the web UI.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{PowerError, PowerState, PowerSwitch};
use crate::config::{EgpmsConfig, EgpmsModel};

/// Sent to open and to close a session.
pub const START: u8 = 0x11;
/// How long to wait for the task after a start byte before sending it again.
pub const START_WAIT: Duration = Duration::from_millis(125);
pub const START_TRIES: usize = 4;
/// A strip given a wrong password stays silent; this is how long clients wait for it.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(4);

pub const CTRL_ON: u8 = 0x01;
pub const CTRL_OFF: u8 = 0x02;
pub const CTRL_KEEP: u8 = 0x04;

/// The key: the password's first 8 bytes, right-padded with spaces.
pub fn key(password: &[u8]) -> [u8; 8] {
    let mut k = [b' '; 8];
    for (slot, b) in k.iter_mut().zip(password) {
        *slot = *b;
    }
    k
}

/// The 4-byte answer to the strip's task.
pub fn solve(task: [u8; 4], k: &[u8; 8]) -> [u8; 4] {
    let [t0, t1, t2, t3] = task.map(u16::from);
    let k = k.map(u16::from);
    let lo = ((t0 ^ k[2]).wrapping_mul(k[0])) ^ (k[6] | (k[4] << 8)) ^ t2;
    let hi = ((t1 ^ k[3]).wrapping_mul(k[1])) ^ (k[7] | (k[5] << 8)) ^ t3;
    let [a, b] = lo.to_le_bytes();
    let [c, d] = hi.to_le_bytes();
    [a, b, c, d]
}

pub fn encrypt(plain: [u8; 4], task: [u8; 4], k: &[u8; 8]) -> [u8; 4] {
    plain.map(|p| ((p ^ task[2]).wrapping_add(task[3]) ^ k[0]).wrapping_add(k[1]))
}

pub fn decrypt(cipher: [u8; 4], task: [u8; 4], k: &[u8; 8]) -> [u8; 4] {
    cipher.map(|c| (c.wrapping_sub(k[1]) ^ k[0]).wrapping_sub(task[3]) ^ task[2])
}

/// Wire byte `j` carries socket `4 - j`. Converts between wire order and sockets 1..4.
pub fn wire_to_sockets(wire: [u8; 4]) -> [u8; 4] {
    [wire[3], wire[2], wire[1], wire[0]]
}

pub fn sockets_to_wire(sockets: [u8; 4]) -> [u8; 4] {
    wire_to_sockets(sockets)
}

/// The control bytes (wire order) that switch `outlet` (1..4) and leave the others alone.
pub fn control(outlet: u8, on: bool) -> [u8; 4] {
    let mut sockets = [CTRL_KEEP; 4];
    // Clamped to 1..=4, so the socket is always there.
    if let Some(socket) = sockets.get_mut(usize::from(outlet.clamp(1, 4) - 1)) {
        *socket = if on { CTRL_ON } else { CTRL_OFF };
    }
    sockets_to_wire(sockets)
}

/// A decrypted status byte, per model. pms20 also reports "on, but no voltage" (0x12) and
/// "off, but voltage present" (0x21): the relay state is what we switched, so they count as
/// on and off.
pub fn decode_status(model: EgpmsModel, byte: u8) -> PowerState {
    match (model, byte) {
        (EgpmsModel::Pms20, 0x11 | 0x12) => PowerState::On,
        (EgpmsModel::Pms20, 0x22 | 0x21) => PowerState::Off,
        (EgpmsModel::Pms21, 0x41) => PowerState::On,
        (EgpmsModel::Pms21, 0x82) => PowerState::Off,
        (EgpmsModel::PmsWlan, 0x51) => PowerState::On,
        (EgpmsModel::PmsWlan, 0x92) => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

/// The status byte a strip of `model` sends for a socket.
pub fn encode_status(model: EgpmsModel, on: bool) -> u8 {
    match (model, on) {
        (EgpmsModel::Pms20, true) => 0x11,
        (EgpmsModel::Pms20, false) => 0x22,
        (EgpmsModel::Pms21, true) => 0x41,
        (EgpmsModel::Pms21, false) => 0x82,
        (EgpmsModel::PmsWlan, true) => 0x51,
        (EgpmsModel::PmsWlan, false) => 0x92,
    }
}

/// One outlet of an Energenie strip.
pub struct Strip {
    config: EgpmsConfig,
    key: [u8; 8],
}

impl Strip {
    pub fn new(config: EgpmsConfig) -> Self {
        let key = key(&config.password);
        Strip { config, key }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Opens a session, optionally sends one control frame, returns the outlet's state.
    async fn session(&self, on: Option<bool>) -> Result<PowerState, PowerError> {
        let addr = self.addr();
        let io =
            |what: &str, e: std::io::Error| PowerError::Io(format!("strip {addr}: {what}: {e}"));
        let mut stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| io("cannot connect", e))?;
        let _ = stream.set_nodelay(true);

        // The strip may ignore a start byte right after another session ended: resend.
        let mut task = [0u8; 4];
        let mut answered = false;
        for _ in 0..START_TRIES {
            stream
                .write_all(&[START])
                .await
                .map_err(|e| io("write", e))?;
            match tokio::time::timeout(START_WAIT, stream.read_exact(&mut task)).await {
                Ok(Ok(_)) => {
                    answered = true;
                    break;
                }
                Ok(Err(e)) => return Err(io("connection closed during start", e)),
                Err(_) => continue,
            }
        }
        if !answered {
            return Err(PowerError::Timeout(format!(
                "strip {addr} did not answer {START_TRIES} start bytes (busy with another client?)"
            )));
        }

        stream
            .write_all(&solve(task, &self.key))
            .await
            .map_err(|e| io("write", e))?;
        let mut status = [0u8; 4];
        match tokio::time::timeout(AUTH_TIMEOUT, stream.read_exact(&mut status)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io("connection closed during authentication", e)),
            Err(_) => {
                return Err(PowerError::Refused(format!(
                    "strip {addr} did not accept the password (no answer within {} s)",
                    AUTH_TIMEOUT.as_secs()
                )));
            }
        }
        let mut state = self.outlet_state(decrypt(status, task, &self.key));

        if let Some(on) = on {
            let frame = encrypt(control(self.config.outlet, on), task, &self.key);
            stream.write_all(&frame).await.map_err(|e| io("write", e))?;
            stream
                .read_exact(&mut status)
                .await
                .map_err(|e| io("no status after switching", e))?;
            state = self.outlet_state(decrypt(status, task, &self.key));
        }
        // End the session politely so the next client is served at once.
        let _ = stream.write_all(&[START]).await;
        let _ = stream.shutdown().await;

        if let Some(on) = on
            && state != PowerState::from_bool(on)
        {
            return Err(PowerError::Mismatch(format!(
                "strip {addr} reports outlet {} {} after switching it {}",
                self.config.outlet,
                state.as_str(),
                if on { "on" } else { "off" }
            )));
        }
        Ok(state)
    }

    fn outlet_state(&self, wire_plain: [u8; 4]) -> PowerState {
        // The config only allows outlets 1..=4; any other reads as unknown, not a panic.
        let sockets = wire_to_sockets(wire_plain);
        usize::from(self.config.outlet)
            .checked_sub(1)
            .and_then(|i| sockets.get(i))
            .map_or(PowerState::Unknown, |&byte| {
                decode_status(self.config.model, byte)
            })
    }
}

#[async_trait]
impl PowerSwitch for Strip {
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        self.session(Some(on)).await
    }

    async fn state(&mut self) -> Result<PowerState, PowerError> {
        self.session(None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vectors() {
        // docs/protocols/energenie-egpms.md, "Test vectors".
        // (password, task, response, status on the wire, control on the wire)
        type Vector = (&'static [u8], [u8; 4], [u8; 4], [u8; 4], [u8; 4]);
        let cases: [Vector; 2] = [
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
        for (pw, task, response, status, ctrl) in cases {
            let k = key(pw);
            assert_eq!(solve(task, &k), response);
            // The vectors give sockets 1..4; the wire carries socket 4 first.
            let status_plain = sockets_to_wire([0x11, 0x22, 0x11, 0x22]);
            assert_eq!(encrypt(status_plain, task, &k), status);
            assert_eq!(decrypt(status, task, &k), status_plain);
            let ctrl_plain = sockets_to_wire([CTRL_ON, CTRL_KEEP, CTRL_OFF, CTRL_KEEP]);
            assert_eq!(encrypt(ctrl_plain, task, &k), ctrl);
            assert_eq!(decrypt(ctrl, task, &k), ctrl_plain);
        }
    }

    #[test]
    fn key_pads_with_spaces_and_truncates() {
        assert_eq!(&key(b""), b"        ");
        assert_eq!(&key(b"hackme"), b"hackme  ");
        assert_eq!(&key(b"0123456789"), b"01234567");
    }

    #[test]
    fn socket_four_comes_first_on_the_wire() {
        assert_eq!(control(1, true), [CTRL_KEEP, CTRL_KEEP, CTRL_KEEP, CTRL_ON]);
        assert_eq!(
            control(4, false),
            [CTRL_OFF, CTRL_KEEP, CTRL_KEEP, CTRL_KEEP]
        );
        assert_eq!(wire_to_sockets([4, 3, 2, 1]), [1, 2, 3, 4]);
    }

    #[test]
    fn status_values_per_model() {
        use EgpmsModel::*;
        for model in [Pms20, Pms21, PmsWlan] {
            assert_eq!(
                decode_status(model, encode_status(model, true)),
                PowerState::On
            );
            assert_eq!(
                decode_status(model, encode_status(model, false)),
                PowerState::Off
            );
        }
        assert_eq!(decode_status(Pms20, 0x12), PowerState::On);
        assert_eq!(decode_status(Pms20, 0x21), PowerState::Off);
        assert_eq!(decode_status(Pms21, 0x11), PowerState::Unknown);
    }

    #[test]
    fn wire_constants_are_the_documented_ones() {
        // docs/protocols/energenie-egpms.md: "Session" and "Values".
        assert_eq!(START, 0x11);
        assert_eq!((CTRL_ON, CTRL_OFF, CTRL_KEEP), (0x01, 0x02, 0x04));
        // Socket 4 first on the wire: switching socket 1 is the last byte.
        assert_eq!(control(1, true), [0x04, 0x04, 0x04, 0x01]);
        assert_eq!(control(3, false), [0x04, 0x02, 0x04, 0x04]);
    }

    #[test]
    fn status_values_are_the_documented_table() {
        // "Values": (model, on, off, other values that still decode).
        use EgpmsModel::*;
        assert_eq!(
            (encode_status(Pms20, true), encode_status(Pms20, false)),
            (0x11, 0x22)
        );
        assert_eq!(
            (encode_status(Pms21, true), encode_status(Pms21, false)),
            (0x41, 0x82)
        );
        assert_eq!(
            (encode_status(PmsWlan, true), encode_status(PmsWlan, false)),
            (0x51, 0x92)
        );
        for (model, byte, state) in [
            (Pms20, 0x11, PowerState::On),
            (Pms20, 0x12, PowerState::On),
            (Pms20, 0x22, PowerState::Off),
            (Pms20, 0x21, PowerState::Off),
            (Pms20, 0x41, PowerState::Unknown),
            (Pms21, 0x41, PowerState::On),
            (Pms21, 0x82, PowerState::Off),
            (Pms21, 0x51, PowerState::Unknown),
            (PmsWlan, 0x51, PowerState::On),
            (PmsWlan, 0x92, PowerState::Off),
            (PmsWlan, 0x82, PowerState::Unknown),
        ] {
            assert_eq!(decode_status(model, byte), state, "{model:?} {byte:#04x}");
        }
    }

    /// A strip on a local port that plays `script`: it expects each client chunk byte for
    /// byte and answers with the strip's chunk. Returns the port and the outcome: `Err` names
    /// the first chunk that differed.
    async fn scripted_strip(
        script: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> (u16, tokio::task::JoinHandle<Result<(), String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let strip = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            for (expected, answer) in script {
                let mut got = vec![0u8; expected.len()];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await;
                if !matches!(read, Ok(Ok(_))) || got != expected {
                    return Err(format!("expected {expected:02x?}, got {got:02x?}"));
                }
                stream.write_all(&answer).await.map_err(|e| e.to_string())?;
            }
            // The client closes after its lone start byte.
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            Ok(())
        });
        (port, strip)
    }

    fn strip(port: u16, outlet: u8, password: &[u8]) -> Strip {
        Strip::new(EgpmsConfig {
            host: "127.0.0.1".to_string(),
            port,
            outlet,
            model: EgpmsModel::Pms20,
            password: password.to_vec(),
        })
    }

    #[tokio::test]
    async fn a_switch_is_the_documented_bytes_on_the_wire() {
        // The first vector: "hackme", task 01 02 03 04, answer f3 4a ed 42; the status
        // s1..s4 = 11 22 11 22 is ae df ae df on the wire. Its control frame shows 04 -> c4,
        // 02 -> ce; its status 22 -> ae, 11 -> df. Switching socket 1 off is plain 04 04 04 02
        // (socket 4 first), so c4 c4 c4 ce; the strip then reports s1..s4 = 22 22 11 22,
        // plain 22 11 22 22 on the wire, so ae df ae ae.
        let (port, peer) = scripted_strip(vec![
            (vec![0x11], vec![0x01, 0x02, 0x03, 0x04]),
            (vec![0xf3, 0x4a, 0xed, 0x42], vec![0xae, 0xdf, 0xae, 0xdf]),
            (vec![0xc4, 0xc4, 0xc4, 0xce], vec![0xae, 0xdf, 0xae, 0xae]),
            (vec![0x11], vec![]),
        ])
        .await;
        let result = strip(port, 1, b"hackme").switch(false).await;
        assert_eq!(peer.await.unwrap(), Ok(()));
        assert_eq!(result.unwrap(), PowerState::Off);
    }

    #[tokio::test]
    async fn a_state_read_is_the_documented_bytes_on_the_wire() {
        // The second vector: "1", task de ad be ef, answer 00 10 6f 31, status
        // s1..s4 = 11 22 11 22 as da cf da cf: socket 3 is on, socket 4 off.
        for (outlet, state) in [(3, PowerState::On), (4, PowerState::Off)] {
            let (port, peer) = scripted_strip(vec![
                (vec![0x11], vec![0xde, 0xad, 0xbe, 0xef]),
                (vec![0x00, 0x10, 0x6f, 0x31], vec![0xda, 0xcf, 0xda, 0xcf]),
                (vec![0x11], vec![]),
            ])
            .await;
            let result = strip(port, outlet, b"1").state().await;
            assert_eq!(peer.await.unwrap(), Ok(()));
            assert_eq!(result.unwrap(), state, "outlet {outlet}");
        }
    }
}
