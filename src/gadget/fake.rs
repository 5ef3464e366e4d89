//! A plain folder laid out like configfs (`usb_gadget/<name>/functions/...`), for tests and
//! the demo: `<root>/usb_gadget/` stands for the mounted configfs, `<root>/udc/<name>` files
//! for the USB device controllers in `/sys/class/udc`, and `<root>/hidg0` for the keyboard's
//! character device (reports are appended to it).
//!
//! It keeps the kernel's rules that matter to rtmd: one gadget per UDC (`EBUSY`), a gadget
//! name taken, a missing configfs; and it writes the same attribute files, so a test reads
//! back what rtmd configured (`lun.0/file`, `ro`, `cdrom`, `inquiry_string`, `report_desc`).

use std::fs;
use std::path::{Path, PathBuf};

use super::GadgetError;
use super::configfs::{Configfs, GadgetSpec, gadgets_in};

pub struct FolderConfigfs {
    root: PathBuf,
    gadget: Option<PathBuf>,
}

impl FolderConfigfs {
    pub fn new(root: &Path) -> FolderConfigfs {
        FolderConfigfs {
            root: root.to_path_buf(),
            gadget: None,
        }
    }

    fn lun_dir(&self, lun: usize) -> Result<PathBuf, GadgetError> {
        let gadget = self
            .gadget
            .as_ref()
            .ok_or_else(|| GadgetError::Hardware("no gadget".to_string()))?;
        let dir = gadget.join(format!("functions/mass_storage.0/lun.{lun}"));
        if !dir.is_dir() {
            return Err(GadgetError::Hardware(format!("no LUN {lun}")));
        }
        Ok(dir)
    }

    fn write_tree(&self, dir: &Path, spec: &GadgetSpec, udc: &str) -> std::io::Result<()> {
        let put = |rel: &str, value: &[u8]| -> std::io::Result<()> {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, value)
        };
        put(
            "idVendor",
            format!("{:#06x}", super::configfs::VENDOR_ID).as_bytes(),
        )?;
        put(
            "idProduct",
            format!("{:#06x}", super::configfs::PRODUCT_ID).as_bytes(),
        )?;
        put("strings/0x409/manufacturer", spec.manufacturer.as_bytes())?;
        put("strings/0x409/product", spec.product.as_bytes())?;
        put("strings/0x409/serialnumber", spec.serial.as_bytes())?;
        fs::create_dir_all(dir.join("configs/c.1"))?;
        if !spec.luns.is_empty() {
            for (i, lun) in spec.luns.iter().enumerate() {
                let l = format!("functions/mass_storage.0/lun.{i}");
                let file = lun.file.as_deref().map(Path::as_os_str).unwrap_or_default();
                put(&format!("{l}/file"), file.as_encoded_bytes())?;
                put(&format!("{l}/ro"), bit(lun.read_only))?;
                put(&format!("{l}/cdrom"), bit(lun.cdrom))?;
                put(&format!("{l}/removable"), bit(lun.removable))?;
                put(&format!("{l}/inquiry_string"), lun.inquiry.as_bytes())?;
            }
            std::os::unix::fs::symlink(
                dir.join("functions/mass_storage.0"),
                dir.join("configs/c.1/mass_storage.0"),
            )?;
        }
        if let Some(desc) = &spec.keyboard {
            put("functions/hid.0/protocol", b"1")?;
            put("functions/hid.0/subclass", b"1")?;
            put("functions/hid.0/report_length", b"8")?;
            put("functions/hid.0/report_desc", desc)?;
            std::os::unix::fs::symlink(dir.join("functions/hid.0"), dir.join("configs/c.1/hid.0"))?;
            // The character device the kernel would create.
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join("hidg0"))?;
        }
        put("UDC", udc.as_bytes())
    }
}

fn bit(b: bool) -> &'static [u8] {
    if b { b"1" } else { b"0" }
}

impl Configfs for FolderConfigfs {
    fn check_mounted(&self) -> Result<(), GadgetError> {
        if self.root.join("usb_gadget").is_dir() {
            Ok(())
        } else {
            Err(GadgetError::NotConfigured(format!(
                "configfs is not mounted at {} (no usb_gadget folder): \
                 mount -t configfs none {} and load libcomposite",
                self.root.display(),
                self.root.display()
            )))
        }
    }

    fn udcs(&self) -> Result<Vec<String>, GadgetError> {
        let mut names: Vec<String> = match fs::read_dir(self.root.join("udc")) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        Ok(names)
    }

    fn bound_to(&self, udc: &str) -> Result<Option<String>, GadgetError> {
        Ok(gadgets_in(&self.root)?
            .into_iter()
            .find(|(_, bound)| bound == udc)
            .map(|(name, _)| name))
    }

    fn create(&mut self, spec: &GadgetSpec, udc: &str) -> Result<(), GadgetError> {
        self.check_mounted()?;
        let dir = self.root.join("usb_gadget").join(&spec.name);
        if dir.exists() {
            return Err(GadgetError::Busy(format!(
                "a gadget named {} exists already",
                spec.name
            )));
        }
        if let Some(other) = self.bound_to(udc)? {
            // The kernel answers EBUSY when writing UDC.
            return Err(GadgetError::Busy(format!(
                "UDC {udc} is bound to gadget {other}"
            )));
        }
        if let Err(e) = self.write_tree(&dir, spec, udc) {
            let _ = fs::remove_dir_all(&dir);
            return Err(GadgetError::Hardware(format!(
                "cannot create gadget {}: {e}",
                spec.name
            )));
        }
        self.gadget = Some(dir);
        Ok(())
    }

    fn set_lun_file(
        &mut self,
        lun: usize,
        file: Option<&Path>,
        read_only: bool,
    ) -> Result<(), GadgetError> {
        let dir = self.lun_dir(lun)?;
        let io = |e: std::io::Error| GadgetError::Hardware(format!("LUN {lun}: {e}"));
        if file.is_some() {
            fs::write(dir.join("ro"), bit(read_only)).map_err(io)?;
        }
        let value = file.map(Path::as_os_str).unwrap_or_default();
        fs::write(dir.join("file"), value.as_encoded_bytes()).map_err(io)
    }

    fn force_eject(&mut self, lun: usize) -> Result<(), GadgetError> {
        let dir = self.lun_dir(lun)?;
        fs::write(dir.join("file"), b"")
            .map_err(|e| GadgetError::Hardware(format!("LUN {lun}: {e}")))
    }

    fn keyboard_device(&self) -> Result<PathBuf, GadgetError> {
        match &self.gadget {
            Some(g) if g.join("functions/hid.0").is_dir() => Ok(self.root.join("hidg0")),
            _ => Err(GadgetError::Hardware(
                "the gadget has no keyboard".to_string(),
            )),
        }
    }

    fn remove(&mut self) -> Result<(), GadgetError> {
        if let Some(dir) = self.gadget.take() {
            fs::remove_dir_all(&dir).map_err(|e| {
                GadgetError::Hardware(format!("cannot remove {}: {e}", dir.display()))
            })?;
        }
        Ok(())
    }

    fn gadgets(&self) -> Result<Vec<String>, GadgetError> {
        Ok(gadgets_in(&self.root)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }
}
