//! Joy-it / Juntek DPM86xx programmable supplies, in both of the unit's protocols
//! (`docs/protocols/power-supplies.md`): the ASCII "simple protocol" (encoding and reply
//! parsing as pure functions below) and Modbus RTU (through [`ModbusLink`]).
//!
//! The unit does no range checks of its own; [`super::Power`] refuses bad setpoints before
//! they get here.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;

use super::serial::{self, ModbusLink, REPLY_TIMEOUT};
use super::{Measurement, PowerError, PowerState, PowerSupply, PowerSwitch, output_state};
use crate::config::{DpmProtocol, SupplyConfig};

/// ASCII function numbers.
pub mod func {
    pub const VOLTAGE_SET: u8 = 10;
    pub const CURRENT_SET: u8 = 11;
    pub const OUTPUT: u8 = 12;
    pub const VOLTAGE_OUT: u8 = 30;
    pub const CURRENT_OUT: u8 = 31;
    pub const TEMPERATURE: u8 = 33;
}

/// Modbus holding registers.
pub mod reg {
    pub const VOLTAGE_SET: u16 = 0x0000;
    pub const CURRENT_SET: u16 = 0x0001;
    pub const OUTPUT: u16 = 0x0002;
    pub const VOLTAGE_OUT: u16 = 0x1001;
    pub const CURRENT_OUT: u16 = 0x1002;
    pub const TEMPERATURE: u16 = 0x1003;
}

/// Volts to the unit's 0.01 V steps.
pub fn volts_to_raw(volts: f64) -> u16 {
    (volts * 100.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// Amperes to the unit's 0.001 A steps.
pub fn amps_to_raw(amps: f64) -> u16 {
    (amps * 1000.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// `:01w10=510,` and `:01r30=0,`, with the official `\r\n` terminator.
pub fn encode_write(address: u8, function: u8, value: u32) -> String {
    format!(":{address:02}w{function:02}={value},\r\n")
}

pub fn encode_read(address: u8, function: u8) -> String {
    format!(":{address:02}r{function:02}=0,\r\n")
}

/// A parsed ASCII reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsciiReply {
    /// `:01ok`: the write was parsed.
    Ok { address: u8 },
    /// `:01r30=5339.`
    Value {
        address: u8,
        function: u8,
        value: u32,
    },
}

/// Finds the first complete reply in `buf`. `Ok(None)`: need more bytes; `Ok(Some((reply,
/// used)))`: a reply and how many bytes it took; `Err`: bytes that can never become a reply.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(AsciiReply, usize)>, String> {
    // Line noise before the frame (and the previous frame's CR LF) is skipped.
    let mut at_colon = buf.splitn(2, |&b| b == b':');
    let (Some(noise), Some(frame)) = (at_colon.next(), at_colon.next()) else {
        return if buf.iter().all(|b| b.is_ascii_whitespace()) {
            Ok(None)
        } else {
            Err(format!("garbled reply {:?}", String::from_utf8_lossy(buf)))
        };
    };
    let start = noise.len();
    let digits = |s: &[u8]| -> Option<u32> {
        if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let small = |s: &[u8]| digits(s).and_then(|v| u8::try_from(v).ok());
    let garbled = || {
        let frame = String::from_utf8_lossy(frame);
        format!("garbled reply {:?}", format!(":{frame}"))
    };
    // `:`, two address digits, then `o` or `r`.
    let Some((address, rest)) = frame.split_at_checked(2) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = rest.split_first() else {
        return Ok(None);
    };
    let address = small(address).ok_or_else(garbled)?;
    match kind {
        b'o' => match rest.first() {
            None => Ok(None),
            Some(b'k') => Ok(Some((AsciiReply::Ok { address }, start + 5))),
            Some(_) => Err(garbled()),
        },
        b'r' => {
            // `30=5339.`: function, `=`, value, `.`.
            let mut at_dot = rest.splitn(2, |&b| b == b'.');
            let (Some(body), Some(_)) = (at_dot.next(), at_dot.next()) else {
                return if rest.len() > 17 {
                    Err(garbled())
                } else {
                    Ok(None)
                };
            };
            let mut at_eq = body.splitn(2, |&b| b == b'=');
            let (Some(function), Some(value)) = (at_eq.next(), at_eq.next()) else {
                return Err(garbled());
            };
            let function = small(function).ok_or_else(garbled)?;
            let value = digits(value).ok_or_else(garbled)?;
            Ok(Some((
                AsciiReply::Value {
                    address,
                    function,
                    value,
                },
                // `:`, address, `r`, body, `.`
                start + 1 + 3 + body.len() + 1,
            )))
        }
        _ => Err(garbled()),
    }
}

/// One DPM86xx on a serial line.
pub struct Dpm86xx {
    link: Link,
}

enum Link {
    Ascii(AsciiLink),
    Modbus(ModbusLink),
}

impl Dpm86xx {
    pub fn new(config: &SupplyConfig, protocol: DpmProtocol) -> Self {
        let link = match protocol {
            DpmProtocol::Ascii => Link::Ascii(AsciiLink {
                path: config.device.clone(),
                baud: config.baud,
                address: config.address,
                port: None,
                buf: Vec::new(),
            }),
            DpmProtocol::Modbus => {
                Link::Modbus(ModbusLink::new(&config.device, config.baud, config.address))
            }
        };
        Dpm86xx { link }
    }

    async fn write(&mut self, function: u8, register: u16, value: u16) -> Result<(), PowerError> {
        match &mut self.link {
            Link::Ascii(a) => a.write(function, u32::from(value)).await,
            Link::Modbus(m) => m.write(register, value).await,
        }
    }

    async fn read(&mut self, function: u8, register: u16) -> Result<u16, PowerError> {
        match &mut self.link {
            Link::Ascii(a) => {
                let v = a.read(function).await?;
                u16::try_from(v)
                    .map_err(|_| PowerError::Protocol(format!("value {v} out of range")))
            }
            Link::Modbus(m) => {
                let [word] = m.read(register).await?;
                Ok(word)
            }
        }
    }
}

#[async_trait]
impl PowerSwitch for Dpm86xx {
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        self.write(func::OUTPUT, reg::OUTPUT, u16::from(on)).await?;
        // A write's answer only means "parsed"; the state read back is the confirmation.
        self.state().await
    }

    async fn state(&mut self) -> Result<PowerState, PowerError> {
        output_state(self.read(func::OUTPUT, reg::OUTPUT).await?)
    }

    fn as_supply(&mut self) -> Option<&mut dyn PowerSupply> {
        Some(self)
    }
}

#[async_trait]
impl PowerSupply for Dpm86xx {
    async fn set_voltage(&mut self, volts: f64) -> Result<(), PowerError> {
        self.write(func::VOLTAGE_SET, reg::VOLTAGE_SET, volts_to_raw(volts))
            .await
    }

    async fn set_current_limit(&mut self, amps: f64) -> Result<(), PowerError> {
        self.write(func::CURRENT_SET, reg::CURRENT_SET, amps_to_raw(amps))
            .await
    }

    async fn measure(&mut self) -> Result<Measurement, PowerError> {
        let (v, i, t) = match &mut self.link {
            // The three measurement registers are consecutive: one request.
            Link::Modbus(m) => {
                let [v, i, t] = m.read(reg::VOLTAGE_OUT).await?;
                (v, i, t)
            }
            Link::Ascii(_) => (
                self.read(func::VOLTAGE_OUT, 0).await?,
                self.read(func::CURRENT_OUT, 0).await?,
                self.read(func::TEMPERATURE, 0).await?,
            ),
        };
        let output = self.read(func::OUTPUT, reg::OUTPUT).await?;
        Ok(Measurement {
            voltage: f64::from(v) / 100.0,
            current: f64::from(i) / 1000.0,
            temperature: Some(f64::from(t)),
            output_on: Some(output == 1),
        })
    }
}

/// The ASCII protocol over a serial port, reopened after any failure.
struct AsciiLink {
    path: PathBuf,
    baud: u32,
    address: u8,
    port: Option<SerialStream>,
    buf: Vec<u8>,
}

impl AsciiLink {
    async fn write(&mut self, function: u8, value: u32) -> Result<(), PowerError> {
        match self
            .request(encode_write(self.address, function, value))
            .await?
        {
            AsciiReply::Ok { .. } => Ok(()),
            other => Err(PowerError::Protocol(format!("expected ok, got {other:?}"))),
        }
    }

    async fn read(&mut self, function: u8) -> Result<u32, PowerError> {
        match self.request(encode_read(self.address, function)).await? {
            AsciiReply::Value {
                function: f, value, ..
            } if f == function => Ok(value),
            other => Err(PowerError::Protocol(format!(
                "expected the value of function {function:02}, got {other:?}"
            ))),
        }
    }

    async fn request(&mut self, line: String) -> Result<AsciiReply, PowerError> {
        let result = tokio::time::timeout(REPLY_TIMEOUT, self.exchange(line.as_bytes())).await;
        let port = self.path.display().to_string();
        let result = match result {
            Ok(r) => r,
            Err(_) if self.buf.iter().all(u8::is_ascii_whitespace) => {
                Err(PowerError::Timeout(format!(
                    "{port}: supply at address {:02} is silent ({} ms)",
                    self.address,
                    REPLY_TIMEOUT.as_millis()
                )))
            }
            Err(_) => Err(PowerError::Protocol(format!(
                "{port}: incomplete reply {:?}",
                String::from_utf8_lossy(&self.buf)
            ))),
        };
        if result.is_err() {
            self.port = None;
        }
        self.buf.clear();
        result
    }

    async fn exchange(&mut self, line: &[u8]) -> Result<AsciiReply, PowerError> {
        if self.port.is_none() {
            self.port = Some(serial::open(&self.path, self.baud)?);
        }
        let path = self.path.display().to_string();
        let port = self
            .port
            .as_mut()
            .ok_or_else(|| PowerError::Io("serial port not open".to_string()))?;
        let io = |e: std::io::Error| PowerError::Io(format!("{path}: {e}"));
        self.buf.clear();
        port.write_all(line).await.map_err(io)?;
        loop {
            // Appends to what came before: a reply may arrive in pieces.
            let n = port.read_buf(&mut self.buf).await.map_err(io)?;
            if n == 0 {
                return Err(PowerError::Io(format!(
                    "{path}: the serial device went away"
                )));
            }
            match parse_reply(&self.buf) {
                Ok(Some((reply, _))) => {
                    let address = match reply {
                        AsciiReply::Ok { address } | AsciiReply::Value { address, .. } => address,
                    };
                    if address != self.address {
                        return Err(PowerError::Protocol(format!(
                            "{path}: reply from address {address:02}, expected {:02}",
                            self.address
                        )));
                    }
                    return Ok(reply);
                }
                Ok(None) => continue,
                Err(e) => return Err(PowerError::Protocol(format!("{path}: {e}"))),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_examples() {
        assert_eq!(encode_write(1, func::VOLTAGE_SET, 1234), ":01w10=1234,\r\n");
        assert_eq!(encode_read(1, func::VOLTAGE_OUT), ":01r30=0,\r\n");
        assert_eq!(volts_to_raw(12.34), 1234);
        assert_eq!(volts_to_raw(5.1), 510);
        assert_eq!(amps_to_raw(2.0), 2000);
    }

    #[test]
    fn parses_replies() {
        assert_eq!(
            parse_reply(b":01r30=5339.\r\n"),
            Ok(Some((
                AsciiReply::Value {
                    address: 1,
                    function: 30,
                    value: 5339
                },
                12
            )))
        );
        assert_eq!(
            parse_reply(b"\r\n:01ok\r\n"),
            Ok(Some((AsciiReply::Ok { address: 1 }, 7)))
        );
        assert_eq!(parse_reply(b":01r30=53"), Ok(None));
        assert_eq!(parse_reply(b":0"), Ok(None));
        assert_eq!(parse_reply(b""), Ok(None));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_reply(b"\xff\xfe").is_err());
        assert!(parse_reply(b":01x").is_err());
        assert!(parse_reply(b":0Xok").is_err());
        assert!(parse_reply(b":01r3a=1.").is_err());
        assert!(parse_reply(b":01oops").is_err());
        // A function number past a byte is not truncated into another function.
        assert!(parse_reply(b":01r286=1.").is_err());
        assert!(parse_reply(b":01r30.").is_err());
        assert!(parse_reply(b":01r30=.").is_err());
        assert!(parse_reply(b":01r0123456789012345678").is_err());
    }

    #[test]
    fn function_and_register_numbers_are_the_documented_ones() {
        // docs/protocols/power-supplies.md, the ASCII "Functions" table and the Modbus
        // register table.
        assert_eq!(
            [
                func::VOLTAGE_SET,
                func::CURRENT_SET,
                func::OUTPUT,
                func::VOLTAGE_OUT,
                func::CURRENT_OUT,
                func::TEMPERATURE
            ],
            [10, 11, 12, 30, 31, 33]
        );
        assert_eq!(
            [
                reg::VOLTAGE_SET,
                reg::CURRENT_SET,
                reg::OUTPUT,
                reg::VOLTAGE_OUT,
                reg::CURRENT_OUT,
                reg::TEMPERATURE
            ],
            [0x0000, 0x0001, 0x0002, 0x1001, 0x1002, 0x1003]
        );
        assert_eq!(encode_write(1, func::OUTPUT, 1), ":01w12=1,\r\n");
        assert_eq!(encode_write(7, func::CURRENT_SET, 2000), ":07w11=2000,\r\n");
        assert_eq!(encode_read(1, func::TEMPERATURE), ":01r33=0,\r\n");
    }

    // ---- A scripted supply on a pseudo-terminal (also used by riden's tests) ------------------

    /// CRC-16/MODBUS, the test's own (reflected 0xA001, init 0xFFFF), for scripted frames.
    pub(in crate::power) fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0xffff;
        for &b in data {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xa001
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    /// `frame` with its CRC, low byte first.
    pub(in crate::power) fn rtu(frame: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        out.extend_from_slice(&crc16(frame).to_le_bytes());
        out
    }

    #[test]
    fn the_scripts_crc_is_modbus() {
        // The catalogue check value, and the textbook "read register 0 of slave 1".
        assert_eq!(crc16(b"123456789"), 0x4b37);
        assert_eq!(
            rtu(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01]),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0a]
        );
    }

    /// The far end of a scripted serial port.
    pub(in crate::power) struct Script {
        pub path: PathBuf,
        /// Held open so that the far end never sees a hang-up while the backend reopens.
        _slave: std::os::fd::OwnedFd,
        outcome: std::sync::mpsc::Receiver<Result<(), String>>,
    }

    impl Script {
        /// How the far end fared: `Err` names the first request that differed.
        pub fn outcome(&self) -> Result<(), String> {
            self.outcome
                .recv_timeout(std::time::Duration::from_secs(3))
                .unwrap_or_else(|e| Err(format!("the script did not finish: {e}")))
        }
    }

    fn show(bytes: &[u8]) -> String {
        if bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || b" \r\n".contains(b))
        {
            format!("{:?}", String::from_utf8_lossy(bytes))
        } else {
            format!("{bytes:02x?}")
        }
    }

    /// A raw pseudo-terminal standing in for the supply's serial port: a thread on its far
    /// end expects each request byte for byte and answers with its reply.
    pub(in crate::power) fn scripted_port(script: Vec<(Vec<u8>, Vec<u8>)>) -> Script {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;

        let pair = nix::pty::openpty(None, None).unwrap();
        let mut t = tcgetattr(&pair.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd())).unwrap();
        let mut far = std::fs::File::from(pair.master);
        let (tx, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let play = || -> Result<(), String> {
                for (request, reply) in script {
                    // A byte at a time: never read into the next request.
                    let mut got = Vec::new();
                    let mut byte = [0u8; 1];
                    while got.len() < request.len() {
                        far.read_exact(&mut byte).map_err(|e| e.to_string())?;
                        got.push(byte[0]);
                    }
                    if got != request {
                        return Err(format!("expected {}, got {}", show(&request), show(&got)));
                    }
                    far.write_all(&reply).map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            let _ = tx.send(play());
            // Closing the far end would drop a reply not yet read: hold it until the near
            // end is gone.
            let mut byte = [0u8; 1];
            while matches!(far.read(&mut byte), Ok(1..)) {}
        });
        Script {
            path,
            _slave: pair.slave,
            outcome,
        }
    }

    pub(in crate::power) fn supply_config(path: &std::path::Path) -> SupplyConfig {
        SupplyConfig {
            device: path.to_path_buf(),
            baud: 9600,
            address: 1,
            voltage: 5.0,
            current_limit: 1.0,
            voltage_range: (0.0, 60.0),
            max_current: 5.0,
            profiles: Default::default(),
        }
    }

    /// Runs `ops` against a supply on `script`, and fails with the far end's view if either
    /// side went wrong.
    async fn run(
        protocol: DpmProtocol,
        script: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> (PowerState, Measurement) {
        let port = scripted_port(script);
        let mut dpm = Dpm86xx::new(&supply_config(&port.path), protocol);
        let result = async {
            dpm.set_voltage(12.34).await?;
            dpm.set_current_limit(2.0).await?;
            let state = dpm.switch(true).await?;
            let measurement = dpm.measure().await?;
            Ok::<_, PowerError>((state, measurement))
        }
        .await;
        let far_end = port.outcome();
        let result = result.unwrap_or_else(|e| panic!("{e}; the far end: {far_end:?}"));
        assert_eq!(far_end, Ok(()));
        result
    }

    #[tokio::test]
    async fn ascii_on_the_wire_is_the_documented_lines() {
        // The doc's request forms, and its replies as given (no terminator).
        let line = |s: &str| s.as_bytes().to_vec();
        let (state, m) = run(
            DpmProtocol::Ascii,
            vec![
                (line(":01w10=1234,\r\n"), line(":01ok")),
                (line(":01w11=2000,\r\n"), line(":01ok")),
                (line(":01w12=1,\r\n"), line(":01ok")),
                (line(":01r12=0,\r\n"), line(":01r12=1.")),
                (line(":01r30=0,\r\n"), line(":01r30=5339.")),
                (line(":01r31=0,\r\n"), line(":01r31=1234.")),
                (line(":01r33=0,\r\n"), line(":01r33=41.")),
                (line(":01r12=0,\r\n"), line(":01r12=1.")),
            ],
        )
        .await;
        assert_eq!(state, PowerState::On);
        assert_eq!(
            (m.voltage, m.current, m.temperature, m.output_on),
            (53.39, 1.234, Some(41.0), Some(true))
        );
    }

    #[tokio::test]
    async fn modbus_on_the_wire_is_the_documented_registers() {
        // Write one register (0x06) is echoed; read (0x03) answers a byte count and words.
        let write = |register: u16, value: u16| {
            let [rh, rl] = register.to_be_bytes();
            let [vh, vl] = value.to_be_bytes();
            let frame = rtu(&[0x01, 0x06, rh, rl, vh, vl]);
            (frame.clone(), frame)
        };
        let (state, m) = run(
            DpmProtocol::Modbus,
            vec![
                // 0x0000 = 1234 (12.34 V), 0x0001 = 2000 (2.000 A), 0x0002 = 1.
                write(0x0000, 1234),
                write(0x0001, 2000),
                write(0x0002, 1),
                (
                    rtu(&[0x01, 0x03, 0x00, 0x02, 0x00, 0x01]),
                    rtu(&[0x01, 0x03, 0x02, 0x00, 0x01]),
                ),
                // 0x1001..0x1003: 5339 (53.39 V), 1234 (1.234 A), 41 °C.
                (
                    rtu(&[0x01, 0x03, 0x10, 0x01, 0x00, 0x03]),
                    rtu(&[0x01, 0x03, 0x06, 0x14, 0xdb, 0x04, 0xd2, 0x00, 0x29]),
                ),
                (
                    rtu(&[0x01, 0x03, 0x00, 0x02, 0x00, 0x01]),
                    rtu(&[0x01, 0x03, 0x02, 0x00, 0x01]),
                ),
            ],
        )
        .await;
        assert_eq!(state, PowerState::On);
        assert_eq!(
            (m.voltage, m.current, m.temperature, m.output_on),
            (53.39, 1.234, Some(41.0), Some(true))
        );
    }
}
