//! The gadget's pure parts and its logic against the configfs folder fake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::configfs::Configfs;
use super::fake::FolderConfigfs;
use super::keyboard::*;
use super::*;

#[test]
fn us_layout_maps_characters_to_usages_and_shift() {
    assert_eq!(us_layout('a'), Some((0x04, false)));
    assert_eq!(us_layout('Z'), Some((0x1d, true)));
    assert_eq!(us_layout('1'), Some((0x1e, false)));
    assert_eq!(us_layout('0'), Some((0x27, false)));
    assert_eq!(us_layout('!'), Some((0x1e, true)));
    assert_eq!(us_layout(')'), Some((0x27, true)));
    assert_eq!(us_layout('\n'), Some((0x28, false)));
    assert_eq!(us_layout(' '), Some((0x2c, false)));
    assert_eq!(us_layout('|'), Some((0x31, true)));
    assert_eq!(us_layout('?'), Some((0x38, true)));
    assert_eq!(us_layout('~'), Some((0x35, true)));
    assert_eq!(us_layout('é'), None);
}

#[test]
fn type_reports_press_and_release_each_character() {
    let r = type_reports("aB").unwrap();
    assert_eq!(
        r,
        vec![
            [0, 0, 0x04, 0, 0, 0, 0, 0],
            RELEASE,
            [LEFT_SHIFT, 0, 0x05, 0, 0, 0, 0, 0],
            RELEASE
        ]
    );
    assert_eq!(type_reports("aé"), Err(KeyError::Untypable('é')));
}

#[test]
fn chords_combine_modifiers_and_keys() {
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        chord_reports(&keys(&["ctrl", "alt", "delete"])).unwrap(),
        vec![[LEFT_CTRL | LEFT_ALT, 0, 0x4c, 0, 0, 0, 0, 0], RELEASE]
    );
    assert_eq!(
        chord_reports(&keys(&["Enter"])).unwrap()[0],
        [0, 0, 0x28, 0, 0, 0, 0, 0]
    );
    assert_eq!(key_by_name("f1"), Some(Key::Usage(0x3a)));
    assert_eq!(key_by_name("F12"), Some(Key::Usage(0x45)));
    assert_eq!(key_by_name("f13"), None);
    assert_eq!(key_by_name("x"), Some(Key::Usage(0x1b)));
    assert_eq!(key_by_name("rightalt"), Some(Key::Modifier(RIGHT_ALT)));
    assert_eq!(
        chord_reports(&keys(&["ctrl", "hyper"])),
        Err(KeyError::UnknownKey("hyper".to_string()))
    );
    assert_eq!(chord_reports(&[]), Err(KeyError::Empty));
    assert_eq!(
        chord_reports(&keys(&["a", "b", "c", "d", "e", "f", "g"])),
        Err(KeyError::TooManyKeys)
    );
}

#[test]
fn report_descriptor_is_a_boot_keyboard() {
    assert_eq!(&REPORT_DESCRIPTOR[..4], &[0x05, 0x01, 0x09, 0x06]);
    assert_eq!(REPORT_DESCRIPTOR.last(), Some(&0xc0));
}

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    image: PathBuf,
    owner: Owner,
}

fn rig(udcs: &[&str], tweak: impl FnOnce(&mut StorageOptions)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("configfs");
    std::fs::create_dir_all(root.join("usb_gadget")).unwrap();
    std::fs::create_dir_all(root.join("udc")).unwrap();
    for u in udcs {
        std::fs::write(root.join("udc").join(u), "").unwrap();
    }
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![7u8; 8192]).unwrap();
    let mut options = StorageOptions {
        board: "b1".to_string(),
        udc: None,
        keyboard: true,
        luns: 2,
        cdrom: false,
        removable: true,
        inquiry: "rtmd    b1              1   ".to_string(),
        key_delay: Duration::ZERO,
        cow_dir: dir.path().join("cow"),
    };
    tweak(&mut options);
    let (status, _) = tokio::sync::watch::channel(Status::default());
    let owner = Owner::new(
        options,
        Box::new(FolderConfigfs::new(&root)),
        crate::images::Claims::new(),
        status,
    );
    Rig {
        _dir: dir,
        root,
        image,
        owner,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn attach_creates_the_composite_gadget_and_changes_media_in_place() {
    let mut r = rig(&["dummy_udc.0"], |_| {});
    r.owner.attach(0, "disk.img", &r.image, Mode::Ro).unwrap();
    let g = r.root.join("usb_gadget/rtmd-b1");
    assert_eq!(read(&g.join("UDC")), "dummy_udc.0");
    assert_eq!(read(&g.join("idVendor")), "0x1d6b");
    let lun0 = g.join("functions/mass_storage.0/lun.0");
    assert_eq!(read(&lun0.join("file")), r.image.to_string_lossy());
    assert_eq!(read(&lun0.join("ro")), "1");
    assert_eq!(read(&g.join("functions/mass_storage.0/lun.1/file")), "");
    assert!(g.join("configs/c.1/hid.0").exists());

    // Second LUN, cow: a copy, in place (the gadget is not re-created).
    std::fs::write(g.join("marker"), "").unwrap();
    r.owner.attach(1, "disk.img", &r.image, Mode::Cow).unwrap();
    let lun1 = g.join("functions/mass_storage.0/lun.1");
    let copy = PathBuf::from(read(&lun1.join("file")));
    assert_ne!(copy, r.image);
    assert_eq!(std::fs::read(&copy).unwrap(), vec![7u8; 8192]);
    assert_eq!(read(&lun1.join("ro")), "0");
    assert!(g.join("marker").exists(), "the gadget was re-created");

    // Busy LUN, bad LUN.
    assert!(matches!(
        r.owner.attach(0, "disk.img", &r.image, Mode::Ro),
        Err(GadgetError::Busy(_))
    ));
    assert!(matches!(
        r.owner.attach(5, "disk.img", &r.image, Mode::Ro),
        Err(GadgetError::InvalidArgs(_))
    ));

    r.owner.eject(1).unwrap();
    assert_eq!(read(&lun1.join("file")), "");
    assert!(!copy.exists());
    assert!(matches!(r.owner.eject(1), Err(GadgetError::NotFound(_))));

    r.owner.detach().unwrap();
    assert!(!g.exists());
    assert!(r.owner.media().iter().all(Option::is_none));
    assert!(matches!(r.owner.detach(), Err(GadgetError::NotFound(_))));
}

#[test]
fn a_non_removable_lun_is_only_created_with_its_medium() {
    let mut r = rig(&["u"], |o| {
        o.removable = false;
        o.luns = 1;
    });
    // The keyboard alone: no mass-storage function (it would need a medium).
    r.owner.keys(&[RELEASE]).unwrap();
    let g = r.root.join("usb_gadget/rtmd-b1");
    assert!(!g.join("functions/mass_storage.0").exists());
    assert_eq!(std::fs::read(r.root.join("hidg0")).unwrap(), vec![0u8; 8]);
    // Attaching re-creates the gadget with the medium.
    r.owner.attach(0, "disk.img", &r.image, Mode::Ro).unwrap();
    assert_eq!(
        read(&g.join("functions/mass_storage.0/lun.0/file")),
        r.image.to_string_lossy()
    );
    assert_eq!(
        read(&g.join("functions/mass_storage.0/lun.0/removable")),
        "0"
    );
    assert!(matches!(r.owner.eject(0), Err(GadgetError::InvalidArgs(_))));
}

#[test]
fn udc_choice_and_its_errors() {
    let mut r = rig(&[], |_| {});
    let e = r
        .owner
        .attach(0, "disk.img", &r.image, Mode::Ro)
        .unwrap_err();
    assert!(
        matches!(e, GadgetError::NotConfigured(ref m) if m.contains("no USB device controller"))
    );

    let mut r = rig(&["a", "b"], |_| {});
    let e = r
        .owner
        .attach(0, "disk.img", &r.image, Mode::Ro)
        .unwrap_err();
    assert!(matches!(e, GadgetError::NotConfigured(ref m) if m.contains("several UDCs (a, b)")));

    let mut r = rig(&["a", "b"], |o| o.udc = Some("b".to_string()));
    r.owner.attach(0, "disk.img", &r.image, Mode::Ro).unwrap();
    assert_eq!(r.owner.bound_udc(), Some("b"));

    let mut r = rig(&["a"], |_| {});
    std::fs::create_dir_all(r.root.join("usb_gadget/g1")).unwrap();
    std::fs::write(r.root.join("usb_gadget/g1/UDC"), "a\n").unwrap();
    let e = r
        .owner
        .attach(0, "disk.img", &r.image, Mode::Cow)
        .unwrap_err();
    assert!(matches!(e, GadgetError::Busy(ref m) if m.contains("g1")));
    // The failed cow attach left no copy behind.
    assert_eq!(
        std::fs::read_dir(r.image.parent().unwrap().join("cow"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    let mut r = rig(&["a"], |_| {});
    std::fs::remove_dir(r.root.join("usb_gadget")).unwrap();
    let e = r
        .owner
        .attach(0, "disk.img", &r.image, Mode::Ro)
        .unwrap_err();
    assert!(
        matches!(e, GadgetError::NotConfigured(ref m) if m.contains("configfs is not mounted"))
    );
}

#[test]
fn cow_copies_keep_holes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&base).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(&[2u8; 4096]).unwrap();
    }
    let copy = dir.path().join("sub/copy.img");
    cow::copy(&base, &copy).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&base).unwrap());
    use std::os::unix::fs::MetadataExt;
    // Far less than the 64 MiB of the hole are allocated.
    assert!(std::fs::metadata(&copy).unwrap().blocks() * 512 < 16 << 20);
    // Again over an existing copy.
    std::fs::write(&copy, b"board wrote").unwrap();
    cow::copy(&base, &copy).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&base).unwrap());
}

#[test]
fn folder_fake_lists_gadgets_and_refuses_a_taken_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("usb_gadget/rtmd-x")).unwrap();
    let mut f = FolderConfigfs::new(dir.path());
    assert_eq!(f.gadgets().unwrap(), vec!["rtmd-x".to_string()]);
    let spec = configfs::GadgetSpec {
        name: "rtmd-x".to_string(),
        manufacturer: String::new(),
        product: String::new(),
        serial: String::new(),
        luns: Vec::new(),
        keyboard: None,
    };
    assert!(matches!(f.create(&spec, "u"), Err(GadgetError::Busy(_))));
    // Removing nothing is fine.
    f.remove().unwrap();
}
