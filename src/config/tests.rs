//! Config parsing: the contract's example validates, every mistake is located precisely.

use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/rtmd/b.toml"), text)
}

fn err(text: &str) -> ConfigError {
    match parse_str(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

const EGPMS: &str = r#"name = "rpi4-01"
[power]
backend = "egpms"
host = "127.0.0.1"
outlet = 2
model = "pms21"
password = "hackme"
cycle_off_ms = 1500
on_stop = "off"
"#;

#[test]
fn egpms_board_validates_with_defaults() {
    let c = parse_str(EGPMS).unwrap();
    assert_eq!(c.name, "rpi4-01");
    let p = c.power.unwrap();
    assert_eq!(p.cycle_off, Duration::from_millis(1500));
    assert_eq!(p.on_stop, OnStop::Off);
    let BackendConfig::Egpms(e) = p.backend else {
        panic!("not egpms")
    };
    assert_eq!((e.port, e.outlet, e.model), (5000, 2, EgpmsModel::Pms21));
    assert_eq!(e.password, b"hackme");
    assert_eq!(c.warnings.len(), 1, "inline password must be warned about");
    assert!(
        !format!("{e:?}").contains("hackme"),
        "debug output leaks the password"
    );
}

#[test]
fn name_only_is_a_valid_board() {
    let c = parse_str("name = \"b\"\n").unwrap();
    assert!(c.power.is_none());
}

#[test]
fn unknown_key_is_located_at_the_key() {
    let e = err("name = \"b\"\n[power]\nbackend = \"egpms\"\n  colour = 1\n");
    assert_eq!((e.line, e.column), (4, 3));
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    assert!(e.to_string().starts_with("/etc/rtmd/b.toml:4:3: "), "{e}");
}

#[test]
fn wrong_type_is_located_at_the_value() {
    let e = err("name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = \"two\"\n");
    assert_eq!((e.line, e.column), (5, 10));
    assert!(e.message.contains("expected u16"), "{e}");
}

#[test]
fn bad_board_names_are_refused() {
    for bad in ["Rpi4", "4pi", "", "rpi 4", "rpi.4", "rpi4/01"] {
        let e = err(&format!("name = {bad:?}\n"));
        assert_eq!((e.line, e.column), (1, 8), "{bad}: {e}");
        assert!(e.message.contains("invalid board name"), "{e}");
    }
    assert!(valid_board_name("rpi4-01_b"));
}

#[test]
fn key_of_another_backend_is_named() {
    let e = err(
        "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\nvoltage = 5.0\n",
    );
    assert_eq!(e.line, 6);
    assert!(
        e.message
            .contains("`voltage` does not apply to power backend `egpms`"),
        "{e}"
    );
}

#[test]
fn key_of_another_backend_is_located_at_the_key_and_names_its_backends() {
    let e = err(&DPM.replace("protocol = \"modbus\"\n", "outlet = 1\n"));
    assert_eq!((e.line, e.column), (5, 1));
    assert_eq!(
        e.message,
        "key `outlet` does not apply to power backend `dpm86xx` (only to egpms, pdudaemon)"
    );
    let e = err(&DPM.replace("backend = \"dpm86xx\"", "backend = \"riden\""));
    assert_eq!((e.line, e.column), (5, 1));
    assert_eq!(
        e.message,
        "key `protocol` does not apply to power backend `riden` (only to dpm86xx)"
    );
    // In an inline table and with dotted keys, too.
    let e = err(
        "name = \"b\"\npower = { backend = \"command\", on_command = \"a\", off_command = \"b\", \
         poll_ms = 5 }\n",
    );
    assert_eq!((e.line, e.column), (2, 69));
    assert!(e.message.contains("(only to dpm86xx, riden)"), "{e}");
    let e = err(
        "name = \"b\"\npower.backend = \"command\"\npower.on_command = \"a\"\n\
         power.off_command = \"b\"\npower.host = \"h\"\n",
    );
    assert_eq!((e.line, e.column), (5, 7));
}

#[test]
fn unknown_power_key_lists_only_the_backends_keys() {
    let e = err(
        "name = \"b\"\n[power]\nbackend = \"command\"\non_command = \"a\"\noff_command = \"b\"\n  colour = 1\n",
    );
    assert_eq!((e.line, e.column), (6, 3));
    assert_eq!(
        e.message,
        "unknown field `colour` for power backend `command`, expected one of `backend`, \
         `cycle_off_ms`, `on_stop`, `timeout_ms`, `retries`, `retry_backoff_ms`, `on_command`, \
         `off_command`, `status_command`"
    );
}

#[test]
fn power_section_shape_and_types_are_located() {
    let e = err("name = \"b\"\npower = 3\n");
    assert_eq!((e.line, e.column), (2, 9));
    assert!(e.message.contains("must be a table"), "{e}");
    let e = err("name = \"b\"\n[power]\nhost = \"h\"\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("missing field `backend`"), "{e}");
    let e = err("name = \"b\"\n[power]\nbackend = 3\n");
    assert_eq!((e.line, e.column), (3, 11));
    // A common key's type, and a backend key's.
    let e = err("name = \"b\"\n[power]\nbackend = \"command\"\ntimeout_ms = \"x\"\n");
    assert_eq!((e.line, e.column), (4, 14));
    assert!(e.message.contains("expected u32"), "{e}");
    let e = err(&DPM.replace("high = 5.6", "high = \"x\""));
    assert_eq!((e.line, e.column), (9, 47));
    assert!(e.message.contains("expected f64"), "{e}");
    // Top-level keys still name `power` among the expected ones.
    let e = err("name = \"b\"\npowr = 1\n");
    assert!(e.message.contains("`power`"), "{e}");
}

#[test]
fn every_backend_validates_and_is_named_as_configured() {
    let boards = [
        ("egpms", "host = \"h\"\noutlet = 1\n"),
        (
            "dpm86xx",
            "device = \"/d\"\nvoltage = 5.0\ncurrent_limit = 1.0\nvoltage_range = [4.0, 6.0]\n",
        ),
        (
            "riden",
            "device = \"/d\"\nvoltage = 5.0\ncurrent_limit = 1.0\nvoltage_range = [4.0, 6.0]\npoll_ms = 300\n",
        ),
        ("pdudaemon", "pdu = \"p\"\noutlet = 7\n"),
        ("command", "on_command = \"a\"\noff_command = \"b\"\n"),
    ];
    for (backend, keys) in boards {
        let c = parse_str(&format!(
            "name = \"b\"\n[power]\nbackend = \"{backend}\"\nretries = 3\n{keys}"
        ))
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let p = c.power.unwrap();
        assert_eq!(p.backend.name(), backend);
        assert_eq!(p.retries, 3);
        let poll = if backend == "riden" { 300 } else { 1000 };
        assert_eq!(p.poll_interval, Duration::from_millis(poll), "{backend}");
    }
}

#[test]
fn outlet_out_of_range() {
    let e = err("name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 5\n");
    assert_eq!((e.line, e.column), (5, 10));
    assert!(e.message.contains("outlets 1 to 4"), "{e}");
}

#[test]
fn unknown_backend_and_missing_keys() {
    let e = err("name = \"b\"\n[power]\nbackend = \"relay\"\n");
    assert_eq!((e.line, e.column), (3, 11));
    assert!(e.message.contains("unknown power backend"), "{e}");
    let e = err("name = \"b\"\n[power]\nbackend = \"egpms\"\noutlet = 1\n");
    assert!(e.message.contains("needs the key `host`"), "{e}");
}

#[test]
fn missing_password_file_is_an_error_at_its_value() {
    let e = err(
        "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\npassword_file = \"/nonexistent/pw\"\n",
    );
    assert_eq!((e.line, e.column), (6, 17));
    assert!(
        e.message
            .contains("cannot read password file /nonexistent/pw"),
        "{e}"
    );
}

#[test]
fn password_file_loses_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let cfg = dir.path().join("b.toml");
    let text = "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\npassword_file = \"pw\"\n";
    let c = parse(&cfg, text).unwrap();
    let Some(PowerConfig {
        backend: BackendConfig::Egpms(e),
        ..
    }) = c.power
    else {
        panic!()
    };
    assert_eq!(e.password, b"s3cret");
    assert!(c.warnings.is_empty());
}

const DPM: &str = r#"name = "b"
[power]
backend = "dpm86xx"
device = "/dev/rtm/b/psu"
protocol = "modbus"
voltage = 5.1
current_limit = 3.0
voltage_range = [4.0, 5.8]
profiles = { low = 4.6, nominal = 5.1, high = 5.6 }
"#;

#[test]
fn supply_validates() {
    let c = parse_str(DPM).unwrap();
    let Some(PowerConfig {
        backend: BackendConfig::Dpm86xx(s, proto),
        ..
    }) = c.power
    else {
        panic!()
    };
    assert_eq!(proto, DpmProtocol::Modbus);
    assert_eq!((s.baud, s.address, s.max_current), (9600, 1, 3.0));
    assert_eq!(s.profiles.get("low"), Some(&4.6));
}

#[test]
fn supply_profile_outside_range_is_located() {
    let e = err(&DPM.replace("high = 5.6", "high = 6.6"));
    assert_eq!(e.line, 9);
    assert!(
        e.message
            .contains("profile \"high\" 6.6 V is outside voltage_range"),
        "{e}"
    );
}

#[test]
fn supply_needs_a_voltage_range() {
    let e = err(&DPM
        .replace("voltage_range = [4.0, 5.8]\n", "")
        .replace("profiles = { low = 4.6, nominal = 5.1, high = 5.6 }\n", ""));
    assert!(e.message.contains("needs `voltage_range"), "{e}");
    let e = err(&DPM.replace("[4.0, 5.8]", "[5.8, 4.0]"));
    assert!(e.message.contains("0 <= min < max"), "{e}");
}

#[test]
fn nbd_defaults_and_mistakes() {
    let c = parse_str("name = \"b\"\n[images]\ndir = \"/srv/img\"\n[nbd]\n").unwrap();
    let n = c.nbd.unwrap();
    assert_eq!(n.listen, NBD_DEFAULT_LISTEN);
    assert_eq!((n.uri_host, n.overlay_dir), (None, None));
    assert_eq!((n.max_clients, n.handshake_timeout_s), (32, 10));
    let n = parse_str(
        "name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\nmax_clients = 4\nhandshake_timeout_s = 2\n",
    )
    .unwrap()
    .nbd
    .unwrap();
    assert_eq!((n.max_clients, n.handshake_timeout_s), (4, 2));
    for (line, key) in [
        ("max_clients = 0", "max_clients"),
        ("max_clients = 1025", "max_clients"),
        ("max_clients = -1", "max_clients"),
        ("handshake_timeout_s = 0", "handshake_timeout_s"),
        ("handshake_timeout_s = 601", "handshake_timeout_s"),
    ] {
        let e = err(&format!(
            "name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\n{line}\n"
        ));
        assert_eq!(e.line, 5, "{line}: {e}");
        assert_eq!(e.column, key.len() + 4, "{line}: {e}");
    }

    let e = err("name = \"b\"\n[nbd]\nlisten = \"127.0.0.1:10809\"\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("add [images]"), "{e}");

    let e = err("name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\nlisten = \"nowhere\"\n");
    assert_eq!((e.line, e.column), (5, 10));
    let e = err("name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\noverlay_dir = \"rel\"\n");
    assert_eq!(e.line, 5);
    assert!(e.message.contains("absolute"), "{e}");
    let e = err("name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\nport = 1\n");
    assert_eq!((e.line, e.column), (5, 1));
}

#[test]
fn images_section_is_served_and_relative_dirs_follow_the_config_file() {
    let c =
        parse_str("name = \"b\"\n[images]\ndir = \"images\"\nca_file = \"/etc/rtmd/lab-ca.pem\"\n")
            .unwrap();
    let i = c.images.unwrap();
    assert_eq!(i.dir, Path::new("/etc/rtmd/images"));
    assert_eq!(
        i.ca_file.as_deref(),
        Some(Path::new("/etc/rtmd/lab-ca.pem"))
    );
    assert!(!c.pending_sections.contains(&"images"));
    let c = parse_str("name = \"b\"\n[images]\ndir = \"/var/lib/rtmd/images\"\n[nbd]\nlisten = \"127.0.0.1:10809\"\n")
        .unwrap();
    assert_eq!(c.images.unwrap().dir, Path::new("/var/lib/rtmd/images"));
    assert!(c.pending_sections.is_empty());
}

#[test]
fn images_mistakes_are_located() {
    let e = err("name = \"b\"\n[images]\ndir = \"/x\"\n  colour = 1\n");
    assert_eq!((e.line, e.column), (4, 3));
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    let e = err("name = \"b\"\n[images]\nca_file = \"/x\"\n");
    assert!(e.message.contains("needs `dir`"), "{e}");
    let e = err("name = \"b\"\n[images]\ndir = \"\"\n");
    assert_eq!((e.line, e.column), (3, 7));
    let e = err("name = \"b\"\n[images]\ndir = 3\n");
    assert_eq!(e.line, 3);
}

#[test]
fn storage_section_is_served_with_defaults() {
    let c = parse_str(
        "name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\nudc = \"fe980000.usb\"\nkeyboard = true\n",
    )
    .unwrap();
    let s = c.storage.unwrap();
    assert_eq!(s.udc.as_deref(), Some("fe980000.usb"));
    assert!(s.keyboard && s.removable && !s.cdrom);
    assert_eq!((s.luns, s.key_delay_ms), (1, 20));
    assert_eq!(s.configfs, ConfigfsChoice::Kernel(None));
    assert!(s.cow_dir.is_none() && s.inquiry.is_none());
    assert!(!c.pending_sections.contains(&"storage"));
    let c = parse_str(
        "name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\nluns = 2\ncdrom = true\n\
         removable = false\ninquiry = \"Lab     Disk\"\nkey_delay_ms = 0\n\
         configfs = \"/tmp/cfs\"\ncow_dir = \"/var/tmp/cow\"\n",
    )
    .unwrap();
    let s = c.storage.unwrap();
    assert_eq!(
        (s.luns, s.cdrom, s.removable, s.key_delay_ms),
        (2, true, false, 0)
    );
    assert_eq!(s.configfs, ConfigfsChoice::Kernel(Some("/tmp/cfs".into())));
    assert_eq!(s.configfs.folder(), None);
}

#[test]
fn the_configfs_folder_double_is_chosen_explicitly() {
    let head = "name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\n";
    let c = parse_str(&format!("{head}fake_configfs = \"/tmp/cfs\"\n")).unwrap();
    let s = c.storage.unwrap();
    assert_eq!(s.configfs, ConfigfsChoice::Folder("/tmp/cfs".into()));
    assert_eq!(s.configfs.folder(), Some(Path::new("/tmp/cfs")));
    // The kernel's mount point stays the kernel's, whatever the path.
    let c = parse_str(&format!("{head}configfs = \"/sys/kernel/config\"\n")).unwrap();
    assert_eq!(
        c.storage.unwrap().configfs,
        ConfigfsChoice::Kernel(Some("/sys/kernel/config".into()))
    );

    let e = err(&format!("{head}fake_configfs = \"relative\"\n"));
    assert_eq!((e.line, e.column), (5, 17));
    assert_eq!(e.message, "`fake_configfs` must be an absolute path");
    let e = err(&format!("{head}fake_configfs = 3\n"));
    assert_eq!((e.line, e.column), (5, 17));
    // Both: the error is at the second one, whichever it is.
    let e = err(&format!(
        "{head}configfs = \"/sys/kernel/config\"\nkeyboard = true\nfake_configfs = \"/tmp/cfs\"\n"
    ));
    assert_eq!((e.line, e.column), (7, 17));
    assert!(e.message.contains("give only one of `configfs`"), "{e}");
    assert!(e.message.contains("`fake_configfs`"), "{e}");
    let e = err(&format!(
        "{head}fake_configfs = \"/tmp/cfs\"\nconfigfs = \"/sys/kernel/config\"\n"
    ));
    assert_eq!((e.line, e.column), (6, 12));
    assert!(e.message.contains("give only one of `configfs`"), "{e}");
}

#[test]
fn storage_mistakes_are_located() {
    let head = "name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\n";
    let e = err(&format!("{head}luns = 9\n"));
    assert_eq!((e.line, e.column), (5, 8));
    assert!(e.message.contains("1 to 8"), "{e}");
    let e = err(&format!("{head}  speed = 1\n"));
    assert_eq!((e.line, e.column), (5, 3));
    let e = err(&format!("{head}inquiry = \"{}\"\n", "x".repeat(29)));
    assert_eq!((e.line, e.column), (5, 11));
    let e = err(&format!("{head}key_delay_ms = -1\n"));
    assert_eq!((e.line, e.column), (5, 16));
    let e = err(&format!("{head}configfs = \"relative\"\n"));
    assert_eq!((e.line, e.column), (5, 12));
    assert!(e.message.contains("absolute"), "{e}");
    let e = err(&format!("{head}udc = \"\"\n"));
    assert_eq!((e.line, e.column), (5, 7));
    let e = err(&format!("{head}keyboard = \"yes\"\n"));
    assert_eq!(e.line, 5);
    let e = err("name = \"b\"\n[storage]\nkeyboard = true\n");
    assert!(e.message.contains("add [images]"), "{e}");
    assert_eq!((e.line, e.column), (2, 1));
}

#[test]
fn capture_section_is_served_with_defaults() {
    let c = parse_str(
        "name = \"b\"\n[capture]\nvideo = \"/dev/rtm/b/hdmi\"\naudio = \"hw:CARD=MS2109\"\n\
         dir = \"captures\"\n",
    )
    .unwrap();
    let k = c.capture.unwrap();
    assert_eq!(k.video.as_deref(), Some("/dev/rtm/b/hdmi"));
    assert_eq!(k.audio.as_deref(), Some("hw:CARD=MS2109"));
    assert_eq!(k.dir, Path::new("/etc/rtmd/captures"));
    assert_eq!(k.quota_bytes, 1024 << 20);
    assert!(c.pending_sections.is_empty());
    let c =
        parse_str("name = \"b\"\n[capture]\naudio = \"default\"\ndir = \"/c\"\nquota_mib = 5\n")
            .unwrap();
    let k = c.capture.unwrap();
    assert!(k.video.is_none());
    assert_eq!(k.quota_bytes, 5 << 20);
}

#[test]
fn capture_mistakes_are_located() {
    let e = err("name = \"b\"\n[capture]\ndir = \"/c\"\n");
    assert!(e.message.contains("needs `video`, `audio` or both"), "{e}");
    let e = err("name = \"b\"\n[capture]\nvideo = \"/dev/video0\"\n");
    assert!(e.message.contains("needs `dir`"), "{e}");
    let e = err("name = \"b\"\n[capture]\nvideo = \" \"\ndir = \"/c\"\n");
    assert_eq!((e.line, e.column), (3, 9));
    let e = err("name = \"b\"\n[capture]\nvideo = \"/dev/video0\"\ndir = \"/c\"\nquota_mib = 0\n");
    assert_eq!((e.line, e.column), (5, 13));
    let e = err("name = \"b\"\n[capture]\nvideo = \"/dev/video0\"\ndir = \"/c\"\n  fps = 30\n");
    assert_eq!((e.line, e.column), (5, 3));
}

#[test]
fn access_section_is_served_with_defaults() {
    let c = parse_str("name = \"b\"\n").unwrap();
    assert_eq!(c.access.on_release, OnRelease::Keep);
    assert!(c.access.admin_group.is_none());
    assert_eq!(c.access.max_ttl, Duration::from_secs(7 * 24 * 3600));
    let c = parse_str(
        "name = \"b\"\n[access]\nadmin_group = \"rtm-admin\"\non_release = \"off\"\n\
         max_ttl_s = 3600\nmax_label = 50\naudit_entries = 10\n",
    )
    .unwrap();
    assert!(!c.pending_sections.contains(&"access"));
    let a = c.access;
    assert_eq!(a.admin_group.as_deref(), Some("rtm-admin"));
    assert_eq!(a.on_release, OnRelease::Off);
    assert_eq!(
        (a.max_ttl, a.max_label, a.audit_entries),
        (Duration::from_secs(3600), 50, 10)
    );
}

#[test]
fn access_mistakes_are_located() {
    let e = err("name = \"b\"\n[access]\non_release = \"later\"\n");
    assert_eq!((e.line, e.column), (3, 14));
    assert!(e.message.contains("\"keep\", \"off\""), "{e}");
    let e = err("name = \"b\"\n[access]\nmax_ttl_s = 0\n");
    assert_eq!((e.line, e.column), (3, 13));
    let e = err("name = \"b\"\n[access]\nmax_label = 100000\n");
    assert!(e.message.contains("between 1 and 1024"), "{e}");
    let e = err("name = \"b\"\n[access]\nadmin_group = \"Bad Group\"\n");
    assert!(e.message.contains("not a group name"), "{e}");
    let e = err("name = \"b\"\n[access]\nholders = 2\n");
    assert!(e.message.contains("unknown field `holders`"), "{e}");
}

#[test]
fn a_listener_given_as_a_port_alone_is_on_loopback() {
    let c = parse_str(
        "name = \"b\"\n[console]\ndevice = \"/dev/ttyUSB0\"\ntcp = \"2000\"\n\
         tcp_raw = \"0.0.0.0:2001\"\n",
    )
    .unwrap();
    let console = c.console.unwrap();
    assert_eq!(console.tcp, Some("127.0.0.1:2000".parse().unwrap()));
    assert_eq!(console.tcp_raw, Some("0.0.0.0:2001".parse().unwrap()));
    let e = err("name = \"b\"\n[console]\ndevice = \"/dev/ttyUSB0\"\ntcp = \"localhost:2000\"\n");
    assert_eq!((e.line, e.column), (4, 7));
    assert!(e.message.contains("expected a port (on loopback)"), "{e}");
}

#[test]
fn identities_default_to_their_faces_labels() {
    let c = parse_str(
        "name = \"b\"\n[power]\nbackend = \"command\"\non_command = \"a\"\noff_command = \"b\"\n\
         [pdudaemon_api]\nlisten = \"16421\"\n[console]\ndevice = \"/dev/ttyUSB0\"\n",
    )
    .unwrap();
    assert_eq!(
        c.pdudaemon_api.unwrap().identity,
        Identity::Label("pdudaemon-api".into())
    );
    assert_eq!(
        c.console.unwrap().tcp_identity,
        Identity::Label("console-tcp".into())
    );
}

/// `[pdudaemon_api] identity` (line 8) given as `api`, `[console] tcp_identity` (line 11)
/// as `console`.
fn identities(api: &str, console: &str) -> Result<(Identity, Identity), ConfigError> {
    let c = parse_str(&format!(
        "name = \"b\"\n[power]\nbackend = \"command\"\non_command = \"a\"\noff_command = \"b\"\n\
         [pdudaemon_api]\nlisten = \"16421\"\nidentity = {api:?}\n\
         [console]\ndevice = \"/dev/ttyUSB0\"\ntcp_identity = {console:?}\n"
    ))?;
    Ok((
        c.pdudaemon_api.unwrap().identity,
        c.console.unwrap().tcp_identity,
    ))
}

#[test]
fn identities_take_a_uid_a_user_or_a_label() {
    for (value, expected) in [
        ("uid:1000", Identity::Uid(1000)),
        ("uid:0", Identity::Uid(0)),
        ("uid:4294967294", Identity::Uid(4_294_967_294)),
        ("user:root", Identity::Uid(0)),
        (
            "lava-worker@lab1",
            Identity::Label("lava-worker@lab1".into()),
        ),
        ("A.b_c-9", Identity::Label("A.b_c-9".into())),
        (&"x".repeat(64), Identity::Label("x".repeat(64))),
    ] {
        let (api, console) = identities(value, value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(api, expected, "{value}");
        assert_eq!(console, expected, "{value}");
    }
}

#[test]
fn bad_identities_are_located_at_the_value() {
    let bad: [(&str, &str); 12] = [
        ("uid:", "`uid:` takes a user id"),
        ("uid:x", "`uid:` takes a user id"),
        ("uid:+5", "`uid:` takes a user id"),
        ("uid:-1", "`uid:` takes a user id"),
        ("uid:4294967295", "`uid:` takes a user id"),
        ("uid:4294967296", "`uid:` takes a user id"),
        (
            "user:rtmd-no-such-user",
            "there is no local user \"rtmd-no-such-user\"",
        ),
        ("user:", "there is no local user \"\""),
        ("", "a label of 1 to 64 characters"),
        ("lab worker", "a label of 1 to 64 characters"),
        ("lab/worker", "a label of 1 to 64 characters"),
        ("wörker", "a label of 1 to 64 characters"),
    ];
    let long = "x".repeat(65);
    for (value, message) in bad.into_iter().chain([(long.as_str(), "1 to 64")]) {
        let e = identities(value, "ok").unwrap_err();
        assert_eq!((e.line, e.column), (8, 12), "{value}: {e}");
        assert!(e.message.contains(message), "{value}: {e}");
        assert!(
            e.message
                .starts_with(&format!("invalid identity {value:?}: ")),
            "{value}: {e}"
        );
        let e = identities("ok", value).unwrap_err();
        assert_eq!((e.line, e.column), (11, 16), "{value}: {e}");
        assert!(e.message.contains(message), "{value}: {e}");
        assert!(
            e.message
                .starts_with(&format!("invalid tcp_identity {value:?}: ")),
            "{value}: {e}"
        );
    }
    let e = err("name = \"b\"\n[console]\ndevice = \"/dev/ttyUSB0\"\ntcp_identity = 5\n");
    assert_eq!((e.line, e.column), (4, 16));
}

// ---------------------------------------------------------------------------------------------
// What would fail at start is refused by --check (issue 13, item 9).

/// `DPM` (9 lines) with `line` added as line 10; the error of `err` must be at its value.
fn dpm_with(line: &str) -> Result<Config, ConfigError> {
    parse_str(&format!("{DPM}{line}\n"))
}

/// The column of the value in a `key = value` line: after `key = `.
fn value_column(line: &str) -> usize {
    line.find(" = ").unwrap() + 4
}

#[test]
fn every_power_period_is_bounded_at_its_value() {
    // (key, smallest accepted, largest accepted)
    for (key, min, max) in [
        ("cycle_off_ms", 1u64, 600_000u64),
        ("timeout_ms", 1, 300_000),
        ("retry_backoff_ms", 0, 60_000),
        ("poll_ms", 100, 3_600_000),
    ] {
        for ok in [min, max] {
            let c =
                dpm_with(&format!("{key} = {ok}")).unwrap_or_else(|e| panic!("{key} = {ok}: {e}"));
            let p = c.power.unwrap();
            let got = match key {
                "cycle_off_ms" => p.cycle_off,
                "timeout_ms" => p.timeout,
                "retry_backoff_ms" => p.retry_backoff,
                _ => p.poll_interval,
            };
            assert_eq!(got, Duration::from_millis(ok), "{key}");
        }
        let mut bad = vec![max + 1, u64::from(u32::MAX)];
        if min > 0 {
            bad.push(min - 1);
        }
        for value in bad {
            let line = format!("{key} = {value}");
            let e = dpm_with(&line).unwrap_err();
            assert_eq!((e.line, e.column), (10, value_column(&line)), "{line}: {e}");
            assert_eq!(
                e.message,
                format!("{key} must be between {min} and {max}"),
                "{line}"
            );
            assert!(e.to_string().starts_with("/etc/rtmd/b.toml:10:"), "{e}");
        }
    }
}

/// The case of the issue: `poll_ms = 0` passed --check, then the measurement timer aborted
/// the daemon at start.
#[test]
fn poll_ms_0_is_refused_at_its_value() {
    let e = dpm_with("poll_ms = 0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/rtmd/b.toml:10:11: poll_ms must be between 100 and 3600000"
    );
    // In an inline table, too.
    let inline = "power = { backend = \"riden\", device = \"/d\", voltage = 5.0, \
                  current_limit = 1.0, voltage_range = [4.0, 6.0], poll_ms = 0 }";
    let e = err(&format!("name = \"b\"\n{inline}\n"));
    let at = inline.find("poll_ms = 0").unwrap() + "poll_ms = ".len() + 1;
    assert_eq!((e.line, e.column), (2, at), "{e}");
}

#[test]
fn empty_and_nul_paths_are_refused_at_their_value() {
    // (config, line, column, message)
    let nul = "\\u0000";
    let cases = [
        (
            DPM.replace("\"/dev/rtm/b/psu\"", "\"\""),
            4,
            10,
            "`device` must not be empty".to_string(),
        ),
        (
            DPM.replace("\"/dev/rtm/b/psu\"", &format!("\"/dev/rtm{nul}/psu\"")),
            4,
            10,
            "`device` must not contain a NUL character".to_string(),
        ),
        (
            "name = \"b\"\n[console]\ndevice = \"\"\n".to_string(),
            3,
            10,
            "`device` must not be empty".to_string(),
        ),
        (
            format!("name = \"b\"\n[console]\ndevice = \"/dev/tty{nul}S0\"\n"),
            3,
            10,
            "`device` must not contain a NUL character".to_string(),
        ),
        (
            format!("name = \"b\"\n[console]\ndevice = \"/dev/ttyS0\"\nlog_dir = \"/l{nul}\"\n"),
            4,
            11,
            "`log_dir` must not contain a NUL character".to_string(),
        ),
        (
            "name = \"b\"\n[console]\ndevice = \"/dev/ttyS0\"\nunix = \"\"\n".to_string(),
            4,
            8,
            "`unix` must not be empty".to_string(),
        ),
        (
            format!("name = \"b\"\n[images]\ndir = \"/i{nul}\"\n"),
            3,
            7,
            "`dir` must not contain a NUL character".to_string(),
        ),
        (
            format!("name = \"b\"\n[images]\ndir = \"/i\"\nca_file = \"{nul}\"\n"),
            4,
            11,
            "`ca_file` must not contain a NUL character".to_string(),
        ),
        (
            format!("name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\noverlay_dir = \"/o{nul}\"\n"),
            5,
            15,
            "`overlay_dir` must not contain a NUL character".to_string(),
        ),
        (
            "name = \"b\"\n[images]\ndir = \"/i\"\n[nbd]\noverlay_dir = \"\"\n".to_string(),
            5,
            15,
            "`overlay_dir` must not be empty".to_string(),
        ),
        (
            format!("name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\ncow_dir = \"/c{nul}\"\n"),
            5,
            11,
            "`cow_dir` must not contain a NUL character".to_string(),
        ),
        (
            format!("name = \"b\"\n[images]\ndir = \"/i\"\n[storage]\nudc = \"u{nul}\"\n"),
            5,
            7,
            "`udc` must be a UDC name, as listed in /sys/class/udc".to_string(),
        ),
        (
            format!("name = \"b\"\n[capture]\nvideo = \"/dev/video0\"\ndir = \"/c{nul}\"\n"),
            4,
            7,
            "`dir` must not contain a NUL character".to_string(),
        ),
        (
            format!("name = \"b\"\n[capture]\nvideo = \"/dev/video{nul}\"\ndir = \"/c\"\n"),
            3,
            9,
            "a capture source must not contain a NUL character".to_string(),
        ),
        (
            format!(
                "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\n\
                 password_file = \"pw{nul}\"\n"
            ),
            6,
            17,
            "`password_file` must not contain a NUL character".to_string(),
        ),
    ];
    for (config, line, column, message) in cases {
        let e = err(&config);
        assert_eq!((e.line, e.column), (line, column), "{config}: {e}");
        assert_eq!(e.message, message, "{config}");
    }
}

#[test]
fn empty_and_nul_power_strings_and_port_0_are_refused_at_their_value() {
    let nul = "\\u0000";
    let command = "name = \"b\"\n[power]\nbackend = \"command\"\n";
    let cases = [
        (
            format!("{command}on_command = \"\"\noff_command = \"b\"\n"),
            4,
            14,
            "`on_command` must not be empty",
        ),
        (
            format!("{command}on_command = \"a\"\noff_command = \"b{nul}\"\n"),
            5,
            15,
            "`off_command` must not contain a NUL character",
        ),
        (
            format!("{command}on_command = \"a\"\noff_command = \"b\"\nstatus_command = \"\"\n"),
            6,
            18,
            "`status_command` must not be empty",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"\"\noutlet = 1\n".to_string(),
            4,
            8,
            "`host` must not be empty",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\nport = 0\n"
                .to_string(),
            6,
            8,
            "`port` must be between 1 and 65535",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"pdudaemon\"\npdu = \"\"\noutlet = 1\n".to_string(),
            4,
            7,
            "`pdu` must not be empty",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"pdudaemon\"\npdu = \"p\"\noutlet = 1\nport = 0\n"
                .to_string(),
            6,
            8,
            "`port` must be between 1 and 65535",
        ),
        (
            format!("{DPM}baud = 0\n"),
            10,
            8,
            "baud must be greater than 0",
        ),
    ];
    for (config, line, column, message) in cases {
        let e = err(&config);
        assert_eq!((e.line, e.column), (line, column), "{config}: {e}");
        assert_eq!(e.message, message, "{config}");
    }
}

#[test]
fn a_unix_socket_path_longer_than_the_kernel_takes_is_refused() {
    let console = |path: &str| {
        parse_str(&format!(
            "name = \"b\"\n[console]\ndevice = \"/dev/ttyS0\"\nunix = \"{path}\"\n"
        ))
    };
    // 107 bytes: sun_path's 108 with the terminating NUL.
    let longest = format!("/run/rtmd/{}", "s".repeat(UNIX_PATH_MAX - 10));
    assert_eq!(longest.len(), 107);
    let c = console(&longest).unwrap();
    assert_eq!(c.console.unwrap().unix, Some(PathBuf::from(&longest)));
    let e = console(&format!("{longest}s")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/rtmd/b.toml:4:8: `unix` is 108 bytes long; a unix socket path has at most 107"
    );
    // Bytes, not characters.
    let e = console(&format!("/run/{}", "é".repeat(52))).unwrap_err();
    assert!(e.message.contains("is 109 bytes long"), "{e}");
}

#[test]
fn setpoints_beyond_the_supplys_registers_are_refused_at_their_value() {
    let riden = DPM
        .replace("backend = \"dpm86xx\"", "backend = \"riden\"")
        .replace("protocol = \"modbus\"\n", "");
    // DPM86xx: 0.01 V and 0.001 A in 16 bits.
    let dpm_range = |range: &str| {
        parse_str(
            &DPM.replace("[4.0, 5.8]", range)
                .replace("profiles = { low = 4.6, nominal = 5.1, high = 5.6 }\n", ""),
        )
    };
    assert!(dpm_range("[4.0, 655.35]").is_ok());
    let e = dpm_range("[4.0, 655.36]").unwrap_err();
    assert_eq!((e.line, e.column), (8, 17), "{e}");
    assert_eq!(
        e.message,
        "voltage_range reaches 655.36 V, but a dpm86xx supply's setpoint register carries at \
         most 655.35 V"
    );
    let e = err(&format!("{DPM}max_current = 65.536\n"));
    assert_eq!((e.line, e.column), (10, 15), "{e}");
    assert_eq!(
        e.message,
        "max_current 65.536 A is more than a dpm86xx supply's current register carries (65.535 A)"
    );
    assert!(dpm_with("max_current = 65.535").is_ok());
    let e = err(&DPM.replace("current_limit = 3.0", "current_limit = 70.0"));
    assert_eq!((e.line, e.column), (7, 17), "{e}");
    assert!(
        e.message.starts_with("current_limit 70 A is more than"),
        "{e}"
    );

    // Riden: every model's voltage register (RD6006P: 1 mV steps), the coarsest current one.
    let riden_range = |range: &str| {
        parse_str(
            &riden
                .replace("[4.0, 5.8]", range)
                .replace("profiles = { low = 4.6, nominal = 5.1, high = 5.6 }\n", ""),
        )
    };
    assert!(riden_range("[4.0, 65.535]").is_ok());
    let e = riden_range("[4.0, 65.536]").unwrap_err();
    assert_eq!((e.line, e.column), (7, 17), "{e}");
    assert!(e.message.contains("at most 65.535 V"), "{e}");
    assert!(parse_str(&format!("{riden}max_current = 24.0\n")).is_ok());
    let e = err(&format!("{riden}max_current = 655.36\n"));
    assert_eq!((e.line, e.column), (9, 15), "{e}");
    assert!(e.message.contains("(655.35 A)"), "{e}");
}

#[test]
fn local_dirs_are_absolute_and_never_the_kernels() {
    let c = parse_str("name = \"b\"\n[images]\ndir = \"/i\"\n").unwrap();
    assert!(c.images.unwrap().local_dirs.is_empty(), "none by default");
    let c = parse_str(
        "name = \"b\"\n[images]\ndir = \"/i\"\nlocal_dirs = [\"/var/lib/lava/dispatcher/tmp\", \"/srv/images\"]\n",
    )
    .unwrap();
    assert_eq!(
        c.images.unwrap().local_dirs,
        [
            Path::new("/var/lib/lava/dispatcher/tmp"),
            Path::new("/srv/images")
        ]
    );
    for (value, message) in [
        ("\"tmp\"", "must be absolute"),
        ("\"\"", "non-empty"),
        ("\"/srv/../proc\"", "`..`"),
        ("\"/proc\"", "under /proc"),
        ("\"/sys/kernel\"", "under /sys"),
        ("\"/dev\"", "under /dev"),
        (
            "\"/run/credentials/rtmd@b.service\"",
            "under /run/credentials",
        ),
    ] {
        let text =
            format!("name = \"b\"\n[images]\ndir = \"/i\"\nlocal_dirs = [\"/ok\", {value}]\n");
        let e = err(&text);
        assert!(e.message.contains(message), "{value}: {e}");
        // At the offending element itself.
        assert_eq!((e.line, e.column), (4, 22), "{value}: {e}");
    }
    let e = err("name = \"b\"\n[images]\ndir = \"/i\"\nlocal_dirs = \"/srv\"\n");
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn locations_count_characters_and_never_split_one() {
    let text = "name = \"é\"\nxé = 1\n";
    let cx = Cx {
        path: Path::new("/etc/rtmd/b.toml"),
        text,
    };
    // `=` on the second line: after two characters (three bytes).
    let at = text.find(" = 1").unwrap() + 1;
    let e = cx.err(at..at + 1, "m");
    assert_eq!((e.line, e.column), (2, 4));
    // Inside `é`, and past the end: located, not a panic.
    let inside = text.find('é').unwrap() + 1;
    let e = cx.err(inside..inside, "m");
    assert_eq!((e.line, e.column), (1, 10));
    let e = cx.err(999..1000, "m");
    assert_eq!((e.line, e.column), (3, 1));
}
