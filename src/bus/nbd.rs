//! `org.rtmd.Dut1.Nbd`: exports an image of the image folder over NBD, `ro` or `cow`, and
//! resets the overlay. One export at a time; the same export again returns the same URI.

use zbus::{Connection, interface};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::{Permit, clip};
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
    gate: BusGate,
}

impl NbdIface {
    pub fn new(nbd: Nbd, images: Store, gate: BusGate) -> Self {
        NbdIface { nbd, images, gate }
    }

    async fn export_image(&self, permit: Permit, image: &str, mode: &str) -> Result<String, Error> {
        let mode = Mode::parse(mode).ok_or_else(|| {
            Error::InvalidArgs(format!("mode {mode:?}: expected \"ro\" or \"cow\""))
        })?;
        let (path, name) = self.images.resolve(image)?;
        let nbd = self.nbd.clone();
        // Opening a cow overlay reads its map from disk.
        tokio::task::spawn_blocking(move || nbd.export(&permit, &name, &path, mode))
            .await
            .map_err(|e| Error::Hardware(e.to_string()))?
            .map_err(Error::from)
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Nbd")]
impl NbdIface {
    gated {
        #[gated("Nbd.Export", format!("{}, {}", clip(image, 120), clip(mode, 8)))]
        /// Exports `image` (a name in the image folder) with `mode` `ro` or `cow`; returns the
        /// `nbd://` URI a client connects to.
        #[zbus(out_args("uri"))]
        async fn export(&self, image: &str, mode: &str) -> Result<String, Error> |permit| {
            self.export_image(permit, image, mode).await
        }

        #[gated("Nbd.Unexport", String::new())]
        /// Withdraws the export, disconnecting its clients; the overlay is kept. Nothing
        /// exported is not an error (an undo step may run twice).
        async fn unexport(&self) -> Result<(), Error> |permit| {
            match self.nbd.unexport(&permit).await {
                Ok(()) | Err(NbdServerError::NotExported) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }

        #[gated("Nbd.ResetOverlay", String::new())]
        /// Discards what clients wrote to the current `cow` export: its clients are
        /// disconnected, and it reads as the pristine image again.
        async fn reset_overlay(&self) -> Result<(), Error> |permit| {
            Ok(self.nbd.reset_overlay(&permit).await?)
        }
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
