//! `org.rtmd.Dut1.Storage`: the USB mass-storage gadget. `Attach` puts an image of the
//! image folder into the board's USB disk (`ro`, or `cow` on a private copy), `Eject` takes
//! the medium out without unplugging, `Detach` unplugs the gadget (docs/storage.md).

use zbus::{Connection, interface};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::{Permit, clip};
use crate::gadget::{GadgetError, Mode, Storage};
use crate::images::Store;

impl From<GadgetError> for Error {
    fn from(e: GadgetError) -> Self {
        match e {
            GadgetError::NotConfigured(m) => Error::NotConfigured(m),
            GadgetError::Busy(m) => Error::Busy(m),
            GadgetError::NotFound(m) => Error::NotFound(m),
            GadgetError::InvalidArgs(m) => Error::InvalidArgs(m),
            GadgetError::Hardware(m) => Error::Hardware(m),
            GadgetError::Timeout(m) => Error::Timeout(m),
        }
    }
}

pub struct StorageIface {
    storage: Storage,
    images: Store,
    gate: BusGate,
}

impl StorageIface {
    pub fn new(storage: Storage, images: Store, gate: BusGate) -> Self {
        StorageIface {
            storage,
            images,
            gate,
        }
    }

    async fn attach_lun(
        &self,
        permit: &Permit,
        lun: u32,
        image: &str,
        mode: &str,
    ) -> Result<(), Error> {
        let mode = Mode::parse(mode).ok_or_else(|| {
            Error::InvalidArgs(format!("mode {mode:?}: expected \"ro\" or \"cow\""))
        })?;
        let (path, name) = self.images.resolve(image)?;
        Ok(self
            .storage
            .attach(permit, lun as usize, &name, &path, mode)
            .await?)
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Storage")]
impl StorageIface {
    gated {
        #[gated("Storage.Attach", format!("{}, {}", clip(image, 120), clip(mode, 8)))]
        /// Attaches `image` (a name in the image folder, or an absolute path inside it) to
        /// LUN 0, `ro` or `cow`. Something attached already is `Busy`.
        async fn attach(&self, image: &str, mode: &str) -> Result<(), Error> |permit| {
            self.attach_lun(&permit, 0, image, mode).await
        }

        #[gated(
            "Storage.AttachLun",
            format!("lun {lun}, {}, {}", clip(image, 120), clip(mode, 8))
        )]
        /// `Attach` for another LUN (extension; `[storage] luns`).
        #[zbus(name = "AttachLun")]
        async fn attach_to_lun(&self, lun: u32, image: &str, mode: &str) -> Result<(), Error>
            |permit| {
            self.attach_lun(&permit, lun, image, mode).await
        }

        #[gated("Storage.Detach", String::new())]
        /// Unplugs the gadget (mass storage and keyboard); a cow copy is discarded. Nothing
        /// attached is `NotFound` (rtmctl usbg-ms off takes that as done).
        async fn detach(&self) -> Result<(), Error> |permit| {
            Ok(self.storage.detach(&permit).await?)
        }

        #[gated("Storage.Eject", String::new())]
        /// Takes the medium out of LUN 0 without unplugging: the board sees an empty drive.
        async fn eject(&self) -> Result<(), Error> |permit| {
            Ok(self.storage.eject(&permit, 0).await?)
        }
    }

    #[zbus(property)]
    fn attached(&self) -> bool {
        self.storage.status().attached
    }

    /// The attached image's name in the image folder.
    #[zbus(property)]
    fn image(&self) -> String {
        self.storage.status().image
    }

    #[zbus(property)]
    fn mode(&self) -> String {
        self.storage.status().mode
    }

    /// The UDC the gadget is bound to; empty while there is no gadget.
    #[zbus(property)]
    fn udc(&self) -> String {
        self.storage.status().udc
    }
}
}

/// `PropertiesChanged` for every property that changed with the gadget's status.
pub async fn spawn_change_signals(connection: &Connection, storage: Storage) -> zbus::Result<()> {
    spawn_status_signals!(connection, StorageIface, storage.subscribe(), {
        attached => attached_changed,
        image => image_changed,
        mode => mode_changed,
        udc => udc_changed,
    })
}
