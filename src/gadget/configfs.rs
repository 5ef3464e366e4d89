//! The configfs operations the USB gadget needs, behind one trait ([`Configfs`]), and the
//! description of the gadget rtmd builds ([`GadgetSpec`]).
//!
//! Two implementations: [`crate::gadget::real::KernelConfigfs`] drives the kernel's configfs
//! through the `usb-gadget` crate; [`crate::gadget::fake::FolderConfigfs`] lays out the same
//! files in a plain folder (unit tests, the D-Bus tests, the demo). An implementation holds
//! at most one gadget: the board's.

use std::path::{Path, PathBuf};

use super::GadgetError;

/// USB ids of the composite gadget: the Linux Foundation's "Multifunction Composite Gadget",
/// the id the kernel's own composite gadgets use.
pub const VENDOR_ID: u16 = 0x1d6b;
pub const PRODUCT_ID: u16 = 0x0104;

/// One logical unit of the mass-storage function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// The backing file; `None` is a removable drive without a medium.
    pub file: Option<PathBuf>,
    pub read_only: bool,
    pub cdrom: bool,
    pub removable: bool,
    /// SCSI INQUIRY: vendor (8), product (16), revision (4) characters.
    pub inquiry: String,
}

/// The whole composite gadget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GadgetSpec {
    /// The gadget's folder name under `usb_gadget/`.
    pub name: String,
    pub manufacturer: String,
    pub product: String,
    pub serial: String,
    /// Mass-storage LUNs; empty: no mass-storage function.
    pub luns: Vec<LunSpec>,
    /// The HID report descriptor of the keyboard function, if there is one.
    pub keyboard: Option<Vec<u8>>,
}

/// What rtmd does with configfs. Every method is quick (file writes), so the gadget's owner
/// thread calls them directly.
pub trait Configfs: Send {
    /// Fails with `NotConfigured` (saying so) when configfs is not mounted.
    fn check_mounted(&self) -> Result<(), GadgetError>;
    /// The USB device controllers present (`/sys/class/udc`).
    fn udcs(&self) -> Result<Vec<String>, GadgetError>;
    /// The gadget (its folder name) bound to `udc`, if any.
    fn bound_to(&self, udc: &str) -> Result<Option<String>, GadgetError>;
    /// Creates the gadget and binds it to `udc`; on failure nothing is left behind.
    fn create(&mut self, spec: &GadgetSpec, udc: &str) -> Result<(), GadgetError>;
    /// Changes a LUN's medium without unbinding (`None`: no medium).
    fn set_lun_file(
        &mut self,
        lun: usize,
        file: Option<&Path>,
        read_only: bool,
    ) -> Result<(), GadgetError>;
    /// Takes the medium out even if the board's OS locked the door.
    fn force_eject(&mut self, lun: usize) -> Result<(), GadgetError>;
    /// The keyboard's character device (`/dev/hidgN`).
    fn keyboard_device(&self) -> Result<PathBuf, GadgetError>;
    /// Unbinds and removes the gadget; nothing created is not an error.
    fn remove(&mut self) -> Result<(), GadgetError>;
    /// The gadgets present under `usb_gadget/` (ours and others').
    fn gadgets(&self) -> Result<Vec<String>, GadgetError>;
}

/// The gadget folders under `<root>/usb_gadget`, and which UDC each is bound to.
pub(crate) fn gadgets_in(root: &Path) -> Result<Vec<(String, String)>, GadgetError> {
    let dir = root.join("usb_gadget");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| GadgetError::Hardware(format!("cannot list {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let udc = std::fs::read_to_string(entry.path().join("UDC")).unwrap_or_default();
        out.push((name, udc.trim().to_string()));
    }
    out.sort();
    Ok(out)
}
