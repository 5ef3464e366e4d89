//! The kernel's configfs, through the `usb-gadget` crate: builds the composite gadget
//! (mass storage and keyboard in one configuration), binds it, changes media, removes it.
//!
//! One thing the crate cannot do: change a LUN's `ro` flag after registration (the kernel
//! accepts it only while the LUN has no medium, which is exactly when a medium changes).
//! That single attribute is written directly, in the function folder the crate reports.

use std::path::{Path, PathBuf};

use usb_gadget::function::hid::Hid;
use usb_gadget::function::msd::{Lun, Msd};
use usb_gadget::{Class, Config, Gadget, Id, RegGadget, Strings};

use super::GadgetError;
use super::configfs::{Configfs, GadgetSpec, PRODUCT_ID, VENDOR_ID, gadgets_in};

/// Where the kernel's configfs is mounted, from `/proc/mounts`.
pub fn configfs_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dest, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "configfs").then(|| PathBuf::from(dest))
    })
}

struct Bound {
    reg: RegGadget,
    msd: Option<Msd>,
    hid: Option<Hid>,
}

#[derive(Default)]
pub struct KernelConfigfs {
    gadget: Option<Bound>,
}

impl KernelConfigfs {
    pub fn new() -> KernelConfigfs {
        KernelConfigfs::default()
    }

    fn root(&self) -> Result<PathBuf, GadgetError> {
        configfs_mount().ok_or_else(|| {
            GadgetError::NotConfigured(
                "configfs is not mounted (mount -t configfs none /sys/kernel/config, \
                 and load libcomposite)"
                    .to_string(),
            )
        })
    }

    fn msd(&self, lun: usize) -> Result<&Msd, GadgetError> {
        self.gadget
            .as_ref()
            .and_then(|g| g.msd.as_ref())
            .ok_or_else(|| GadgetError::Hardware(format!("no mass-storage LUN {lun}")))
    }
}

fn hw(what: &str) -> impl Fn(std::io::Error) -> GadgetError + '_ {
    move |e| GadgetError::Hardware(format!("{what}: {e}"))
}

impl Configfs for KernelConfigfs {
    fn check_mounted(&self) -> Result<(), GadgetError> {
        let root = self.root()?;
        if !root.join("usb_gadget").is_dir() {
            // configfs is there but libcomposite is not loaded; the crate loads it when the
            // gadget is registered.
            let _ = std::process::Command::new("modprobe")
                .args(["-q", "libcomposite"])
                .status();
        }
        if root.join("usb_gadget").is_dir() {
            Ok(())
        } else {
            Err(GadgetError::NotConfigured(format!(
                "configfs at {} has no usb_gadget folder: load libcomposite",
                root.display()
            )))
        }
    }

    fn udcs(&self) -> Result<Vec<String>, GadgetError> {
        let mut names: Vec<String> = usb_gadget::udcs()
            .map_err(hw("cannot list the USB device controllers"))?
            .iter()
            .map(|u| u.name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn bound_to(&self, udc: &str) -> Result<Option<String>, GadgetError> {
        Ok(gadgets_in(&self.root()?)?
            .into_iter()
            .find(|(_, bound)| bound == udc)
            .map(|(name, _)| name))
    }

    fn create(&mut self, spec: &GadgetSpec, udc: &str) -> Result<(), GadgetError> {
        let controller = usb_gadget::udcs()
            .map_err(hw("cannot list the USB device controllers"))?
            .into_iter()
            .find(|u| u.name() == udc)
            .ok_or_else(|| GadgetError::NotConfigured(format!("no UDC {udc}")))?;
        let mut config = Config::new("rtmd");
        let mut msd = None;
        if !spec.luns.is_empty() {
            let mut builder = Msd::builder();
            for l in &spec.luns {
                let mut lun = Lun::empty();
                if let Some(file) = &l.file {
                    lun.set_file(Some(file)).map_err(hw("LUN"))?;
                }
                lun.read_only = l.read_only;
                lun.cdrom = l.cdrom;
                lun.removable = l.removable;
                lun.inquiry_string = l.inquiry.clone();
                builder.add_lun(lun);
            }
            let (m, handle) = builder.build();
            config.add_function(handle);
            msd = Some(m);
        }
        let mut hid = None;
        if let Some(desc) = &spec.keyboard {
            let mut builder = Hid::builder();
            builder.sub_class = 1; // boot interface
            builder.protocol = 1; // keyboard
            builder.report_desc = desc.clone();
            builder.report_len = 8;
            let (h, handle) = builder.build();
            config.add_function(handle);
            hid = Some(h);
        }
        let mut gadget = Gadget::new(
            Class::INTERFACE_SPECIFIC,
            Id::new(VENDOR_ID, PRODUCT_ID),
            Strings::new(&spec.manufacturer, &spec.product, &spec.serial),
        )
        .with_config(config);
        gadget.name = Some(spec.name.clone());
        // The crate removes a gadget that fails to register or bind.
        let reg = gadget.bind(&controller).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::EBUSY) {
                GadgetError::Busy(format!("UDC {udc} is busy (bound to another gadget)"))
            } else {
                GadgetError::Hardware(format!("cannot bind gadget {} to {udc}: {e}", spec.name))
            }
        })?;
        self.gadget = Some(Bound { reg, msd, hid });
        Ok(())
    }

    fn set_lun_file(
        &mut self,
        lun: usize,
        file: Option<&Path>,
        read_only: bool,
    ) -> Result<(), GadgetError> {
        let msd = self.msd(lun)?;
        if file.is_some()
            && let Some(dir) = msd.status().path()
        {
            // Not in the crate's API (see the module comment).
            std::fs::write(
                dir.join(format!("lun.{lun}/ro")),
                if read_only { "1" } else { "0" },
            )
            .map_err(hw("LUN ro flag"))?;
        }
        msd.set_file(lun, file).map_err(hw("LUN file"))
    }

    fn force_eject(&mut self, lun: usize) -> Result<(), GadgetError> {
        let msd = self.msd(lun)?;
        // `forced_eject` is there since Linux 5.19; older kernels: clear the file (which the
        // board's OS may refuse while it has the door locked).
        msd.force_eject(lun)
            .or_else(|_| msd.set_file(lun, None::<&Path>))
            .map_err(hw("eject"))
    }

    fn keyboard_device(&self) -> Result<PathBuf, GadgetError> {
        let hid = self
            .gadget
            .as_ref()
            .and_then(|g| g.hid.as_ref())
            .ok_or_else(|| GadgetError::Hardware("the gadget has no keyboard".to_string()))?;
        hid.device_path().map_err(hw("keyboard device"))
    }

    fn remove(&mut self) -> Result<(), GadgetError> {
        match self.gadget.take() {
            Some(bound) => bound.reg.remove().map_err(hw("cannot remove the gadget")),
            None => Ok(()),
        }
    }

    fn gadgets(&self) -> Result<Vec<String>, GadgetError> {
        Ok(gadgets_in(&self.root()?)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }
}
