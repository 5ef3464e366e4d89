//! `org.rtmd.Dut1.Nbd`: exports an image of the image folder over NBD, `ro` or `cow`, and
//! resets the overlay. One export at a time; the same export again returns the same URI.

use zbus::message::Header;
use zbus::{Connection, interface};

use super::access::Gate;
use super::{Error, PATH};
use crate::claims::Claims;
use crate::images::Store;
use crate::nbd::{Mode, Nbd, NbdServerError};

impl From<NbdServerError> for Error {
    fn from(e: NbdServerError) -> Self {
        match e {
            NbdServerError::Busy(m) => Error::Busy(m),
            NbdServerError::NotExported => Error::NotFound(e.to_string()),
            NbdServerError::Io(m) => Error::Hardware(m),
        }
    }
}

pub struct NbdIface {
    nbd: Nbd,
    images: Store,
    /// What the USB gadget holds: an image is never writable there and here at once.
    claims: Claims,
    gate: Gate,
}

impl NbdIface {
    pub fn new(nbd: Nbd, images: Store, claims: Claims, gate: Gate) -> Self {
        NbdIface {
            nbd,
            images,
            claims,
            gate,
        }
    }
}

impl NbdIface {
    async fn export_image(&self, image: &str, mode: &str) -> Result<String, Error> {
        let mode = Mode::parse(mode).ok_or_else(|| {
            Error::InvalidArgs(format!("mode {mode:?}: expected \"ro\" or \"cow\""))
        })?;
        let (path, name) = self.images.resolve(image)?;
        let nbd = self.nbd.clone();
        let claims = self.claims.clone();
        // Opening a cow overlay reads its map from disk. The claims stay locked from the
        // check to the export, so the gadget cannot take the image in between.
        tokio::task::spawn_blocking(move || {
            let held = claims.lock();
            if let Some(claim) = held.get(&path)
                && (claim.writable || mode == Mode::Cow)
            {
                return Err(NbdServerError::Busy(format!(
                    "{name} is attached to the USB gadget{}; detach it first: an image is \
                     never writable through the gadget and NBD at once",
                    if claim.writable { " (cow)" } else { "" }
                )));
            }
            nbd.export(&name, &path, mode)
        })
        .await
        .map_err(|e| Error::Hardware(e.to_string()))?
        .map_err(Error::from)
    }
}

#[interface(name = "org.rtmd.Dut1.Nbd")]
impl NbdIface {
    /// Exports `image` (a name in the image folder) with `mode` `ro` or `cow`; returns the
    /// `nbd://` URI a client connects to.
    #[zbus(out_args("uri"))]
    async fn export(
        &self,
        image: &str,
        mode: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        let args = format!(
            "{}, {}",
            crate::access::clip(image, 120),
            crate::access::clip(mode, 8)
        );
        self.gate
            .run(
                &hdr,
                conn,
                "Nbd.Export",
                args,
                self.export_image(image, mode),
            )
            .await
    }

    /// Withdraws the export, disconnecting its clients; the overlay is kept. Nothing
    /// exported is not an error (an undo step may run twice).
    async fn unexport(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.gate
            .run(&hdr, conn, "Nbd.Unexport", String::new(), async {
                match self.nbd.unexport().await {
                    Ok(()) | Err(NbdServerError::NotExported) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }

    /// Discards what clients wrote to the current `cow` export: its clients are
    /// disconnected, and it reads as the pristine image again.
    async fn reset_overlay(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.gate
            .run(&hdr, conn, "Nbd.ResetOverlay", String::new(), async {
                Ok(self.nbd.reset_overlay().await?)
            })
            .await
    }

    #[zbus(property)]
    fn exported(&self) -> bool {
        self.nbd.status().exported
    }

    #[zbus(property)]
    fn uri(&self) -> String {
        self.nbd.status().uri
    }

    #[zbus(property)]
    fn mode(&self) -> String {
        self.nbd.status().mode
    }

    /// The exported image's name in the image folder (extension).
    #[zbus(property)]
    fn image(&self) -> String {
        self.nbd.status().image
    }

    #[zbus(property)]
    fn clients(&self) -> u32 {
        self.nbd.status().clients
    }

    /// Where the server listens (extension).
    #[zbus(property(emits_changed_signal = "const"))]
    fn listen_address(&self) -> String {
        self.nbd.local_addr().to_string()
    }
}

/// `PropertiesChanged` for every property that changed with the server's status.
pub async fn spawn_change_signals(connection: &Connection, nbd: Nbd) -> zbus::Result<()> {
    spawn_status_signals!(connection, NbdIface, nbd.subscribe(), {
        exported => exported_changed,
        uri => uri_changed,
        mode => mode_changed,
        image => image_changed,
        clients => clients_changed,
    })
}
