//! Serial links to lab supplies: opening the port, and [`ModbusLink`], a Modbus RTU master
//! (tokio-modbus) that reopens the port after any failure and bounds every request.
//!
//! tokio-modbus has no request timeout and silently skips bytes that fail the CRC, so a
//! garbled reply looks like silence. [`ModbusLink`] therefore counts the bytes the port
//! delivers during a request: "no reply" and "garbled reply" become two different errors.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::PowerError;

/// How long a supply may take to answer one request. At 9600 baud a 30-byte frame takes
/// 31 ms; supplies answer within a few ms of that.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);

/// Opens a serial port 8N1, exclusively, with stale input discarded.
pub fn open(path: &Path, baud: u32) -> Result<SerialStream, PowerError> {
    let port = tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| PowerError::Io(format!("cannot open {}: {e}", path.display())))?;
    // Bytes left from a request that timed out would be taken for the next reply.
    let _ = port.clear(tokio_serial::ClearBuffer::Input);
    Ok(port)
}

/// A serial port that counts what it receives.
pub struct CountingPort {
    inner: SerialStream,
    received: Arc<AtomicUsize>,
}

impl AsyncRead for CountingPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        self.received.fetch_add(got, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for CountingPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A Modbus RTU master for one slave address on one serial port.
pub struct ModbusLink {
    path: PathBuf,
    baud: u32,
    address: u8,
    context: Option<Context>,
    received: Arc<AtomicUsize>,
}

impl ModbusLink {
    pub fn new(path: &Path, baud: u32, address: u8) -> Self {
        ModbusLink {
            path: path.to_path_buf(),
            baud,
            address,
            context: None,
            received: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn context(&mut self) -> Result<&mut Context, PowerError> {
        if self.context.is_none() {
            let port = CountingPort {
                inner: open(&self.path, self.baud)?,
                received: self.received.clone(),
            };
            let mut ctx = tokio_modbus::client::rtu::attach(port);
            ctx.set_slave(Slave(self.address));
            self.context = Some(ctx);
        }
        // Just filled above when it was empty.
        self.context
            .as_mut()
            .ok_or_else(|| PowerError::Io("serial port not open".to_string()))
    }

    /// Reads `N` consecutive holding registers from `register` on. The array type means
    /// callers pick their words out by pattern, never by an index a short reply could break.
    pub async fn read<const N: usize>(&mut self, register: u16) -> Result<[u16; N], PowerError> {
        let what = format!("reading register 0x{register:04x}");
        let count = u16::try_from(N)
            .map_err(|_| PowerError::Protocol(format!("{what}: {N} registers is too many")))?;
        let ctx = self.context()?;
        let request = ctx.read_holding_registers(register, count);
        let outcome = tokio::time::timeout(REPLY_TIMEOUT, request).await;
        let words = self.finish(outcome, &what)?;
        <[u16; N]>::try_from(words).map_err(|words| {
            PowerError::Protocol(format!(
                "{what}: expected {count} registers, got {}",
                words.len()
            ))
        })
    }

    pub async fn write(&mut self, register: u16, value: u16) -> Result<(), PowerError> {
        let what = format!("writing register 0x{register:04x}");
        let ctx = self.context()?;
        let request = ctx.write_single_register(register, value);
        let outcome = tokio::time::timeout(REPLY_TIMEOUT, request).await;
        self.finish(outcome, &what)
    }

    /// Turns tokio-modbus's nested result into ours; drops the port after any failure so the
    /// next request starts from a clean line.
    fn finish<T>(
        &mut self,
        outcome: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, PowerError> {
        let received = self.received.swap(0, Ordering::Relaxed);
        let port = self.path.display();
        let address = self.address;
        let result = match outcome {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(exception))) => Err(PowerError::Refused(format!(
                "{port}: supply at address {address} answered {what} with Modbus exception {exception}"
            ))),
            Ok(Err(e)) => Err(PowerError::Io(format!("{port}: {what}: {e}"))),
            Err(_) if received == 0 => Err(PowerError::Timeout(format!(
                "{port}: supply at address {address} is silent ({what}, {} ms)",
                REPLY_TIMEOUT.as_millis()
            ))),
            Err(_) => Err(PowerError::Protocol(format!(
                "{port}: garbled reply from the supply at address {address} ({what}: {received} \
                 bytes without a valid frame, bad CRC?)"
            ))),
        };
        self.context = None;
        result
    }
}
