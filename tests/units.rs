//! Checks of the files that install rtmd on a dispatcher host, each with the real tool that
//! consumes it:
//! - `systemd/rtmd@.service`: `systemd-analyze verify` (no complaint about our unit) and
//!   `systemd-analyze security --offline=yes` (overall exposure at most 2.5);
//! - `systemd/org.rtmd.Dut1.conf`: a private `dbus-daemon` running our policy under the
//!   system bus's default policy, probed with `busctl` run as root, as a stand-in for user
//!   and group rtm, and as nobody;
//! - `systemd/rtmd.sysusers.conf`, `systemd/rtmd.tmpfiles.conf`: `systemd-sysusers` and
//!   `systemd-tmpfiles` applied to a scratch root;
//! - `udev/90-rtmd.rules.example`: loaded by `udevadm test` in a private mount namespace.
//!
//! The tools come from the Debian packages systemd, udev, dbus-daemon and util-linux; a
//! missing tool fails its test with the package to install. The D-Bus and udev tests must
//! run as root (switching users, mount namespaces), as CI does.
//!
//! The D-Bus tests need no rtmd: a small in-test client owns `org.rtmd.Dut1.test` and
//! answers every method call with an empty reply, so "allowed" shows up as a reply and
//! "denied" as the bus's AccessDenied error. With a running rtmd, tests of the daemon
//! itself should cover: the daemon (as user rtm) acquires both spellings of its name
//! (`org.rtmd.Dut1.rpi4_01` and `org.rtmd.Dut1.rpi4-01`); nobody can read `Name`, `State`
//! and introspect, but `Power.On` and `Properties.Set` get AccessDenied; a member of group
//! rtm can switch power.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const UNIT: &str = "systemd/rtmd@.service";
const GADGET_DROP_IN: &str = "systemd/rtmd-gadget.conf";
const POLICY: &str = "systemd/org.rtmd.Dut1.conf";
const SYSUSERS: &str = "systemd/rtmd.sysusers.conf";
const TMPFILES: &str = "systemd/rtmd.tmpfiles.conf";
const UDEV_RULES: &str = "udev/90-rtmd.rules.example";

/// The exposure level the unit must not exceed.
const MAX_EXPOSURE: f64 = 2.5;

// ---------------------------------------------------------------------------------------
// helpers

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_repo_file(rel: &str) -> String {
    let path = repo_file(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The absolute path of `tool`, or a failure that names the Debian package providing it.
fn need_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(tool);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    panic!(
        "`{tool}` not found: this test needs the Debian package {package} (apt-get install {package})"
    );
}

/// Fails unless the test runs as root.
fn need_root(why: &str) {
    assert_eq!(effective_uid(), "0", "this test must run as root: {why}");
}

/// The effective uid, as the decimal string.
fn effective_uid() -> String {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .expect("no Uid: line in /proc/self/status")
        .to_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// uid and gid of an account in the host's user database.
fn account(name: &str) -> (u32, u32) {
    let getent = need_tool("getent", "libc-bin");
    let out = run(Command::new(getent).args(["passwd", name]));
    assert!(
        out.status.success(),
        "user {name} missing from the host's user database"
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = line.trim().split(':').collect();
    let id = |i: usize| -> u32 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("bad passwd line for {name}: {line}"))
    };
    (id(2), id(3))
}

fn group_id(name: &str) -> u32 {
    let getent = need_tool("getent", "libc-bin");
    let out = run(Command::new(getent).args(["group", name]));
    assert!(
        out.status.success(),
        "group {name} missing from the host's group database"
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':')
        .nth(2)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("bad group line for {name}: {line}"))
}

/// A scratch directory that other users may enter: in /tmp (a private $TMPDIR could hide
/// it from them), and 0755 (tempfile makes it 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rtmd-units.")
        .tempdir_in("/tmp")
        .expect("create temp dir in /tmp");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

// ---------------------------------------------------------------------------------------
// systemd unit

/// Writes the unit as instance `rtmd@test.service` (verify and security need an instance
/// name) with ExecStart pointing at the freshly built daemon (verify checks it exists).
fn instance_unit(dir: &Path, unit_text: &str) -> PathBuf {
    let installed = "ExecStart=/usr/bin/rtmd ";
    assert!(
        unit_text.contains(installed),
        "{UNIT} must start the installed daemon: `{installed}...`"
    );
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_rtmd"));
    let path = dir.join("rtmd@test.service");
    fs::write(&path, unit_text.replace(installed, &built)).expect("write unit copy");
    path
}

/// The lines `systemd-analyze verify` prints about our unit (empty: clean).
fn verify_complaints(unit_text: &str) -> Vec<String> {
    let analyze = need_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("create temp dir");
    let unit = instance_unit(dir.path(), unit_text);
    let out = run(Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(&unit)
        .env("SYSTEMD_PAGER", "cat")
        .env("SYSTEMD_COLORS", "0"));
    let all = text(&out);
    let mut ours: Vec<String> = all
        .lines()
        .filter(|l| l.contains("rtmd"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && ours.is_empty() {
        ours.push(format!("verify failed: {all}"));
    }
    ours
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let complaints = verify_complaints(&read_repo_file(UNIT));
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains about {UNIT}:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn unit_verify_check_catches_a_broken_unit() {
    let broken = read_repo_file(UNIT).replace(
        "DeviceAllow=char-ttyUSB rw\n",
        "DeviceAllow=char-ttyUSB rwz\nNoSuchSetting=yes\n",
    );
    let complaints = verify_complaints(&broken);
    assert!(
        complaints.iter().any(|l| l.contains("rwz"))
            && complaints.iter().any(|l| l.contains("NoSuchSetting")),
        "systemd-analyze verify should reject the broken copy, said: {complaints:?}"
    );
}

#[test]
fn unit_exposure_is_at_most_2_5() {
    let level = exposure(&read_repo_file(UNIT));
    assert!(
        level <= MAX_EXPOSURE,
        "{UNIT}: exposure {level} > {MAX_EXPOSURE}"
    );
}

/// The gadget drop-in runs the daemon as root (without capabilities): still at most 2.5.
#[test]
fn unit_with_the_gadget_drop_in_exposure_is_at_most_2_5() {
    let unit = read_repo_file(UNIT);
    let drop_in = read_repo_file(GADGET_DROP_IN);
    let settings: String = drop_in
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(settings.contains("User=root") && settings.contains("DeviceAllow=char-hidg rw"));
    // A drop-in's settings come after the unit's: appending them to [Service] is the same.
    let combined = unit.replacen("\n[Install]", &format!("\n{settings}\n[Install]"), 1);
    assert!(
        verify_complaints(&combined).is_empty(),
        "{GADGET_DROP_IN} does not verify"
    );
    let level = exposure(&combined);
    assert!(
        level <= MAX_EXPOSURE,
        "{UNIT} + {GADGET_DROP_IN}: exposure {level} > {MAX_EXPOSURE}"
    );
}

/// `systemd-analyze security --offline=yes` of the unit text: the overall exposure.
fn exposure(unit_text: &str) -> f64 {
    let analyze = need_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("create temp dir");
    let unit = instance_unit(dir.path(), unit_text);
    let out = run(Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_COLORS", "0"));
    let all = text(&out);
    let level: f64 = all
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for rtmd@test.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze security output:\n{all}"));
    if level > MAX_EXPOSURE {
        eprintln!("{all}");
    }
    level
}

/// The settings other parts of rtmd and the docs rely on.
#[test]
fn unit_keeps_the_contract_settings() {
    let unit = read_repo_file(UNIT);
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "BusName=org.rtmd.Dut1.%i",
        "NotifyAccess=main",
        "WatchdogSec=10",
        "Restart=on-failure",
        "ExecStart=/usr/bin/rtmd --config /etc/rtmd/%i.toml",
        "User=rtm",
        "LoadCredential=power-password:rtmd.%i.power-password",
        "StateDirectory=rtmd",
        "LogsDirectory=rtmd/%i",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "LimitNOFILE=16384",
    ] {
        assert!(settings.contains(&wanted), "{UNIT} lacks `{wanted}`");
    }
}

// ---------------------------------------------------------------------------------------
// sysusers and tmpfiles

#[test]
fn sysusers_and_tmpfiles_create_user_and_directories() {
    need_root("systemd-tmpfiles hands directories to user rtm");
    let sysusers = need_tool("systemd-sysusers", "systemd");
    let tmpfiles = need_tool("systemd-tmpfiles", "systemd");
    let root = tempfile::tempdir().expect("create temp dir");
    let etc = root.path().join("etc");
    fs::create_dir(&etc).expect("mkdir etc");
    // A Debian host already has group dialout (gid 20).
    fs::write(etc.join("group"), "root:x:0:\ndialout:x:20:\n").expect("write group");
    fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("write passwd");

    let out = run(Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repo_file(SYSUSERS)));
    assert!(
        out.status.success(),
        "systemd-sysusers failed:\n{}",
        text(&out)
    );
    let passwd = fs::read_to_string(etc.join("passwd")).expect("read passwd");
    let group = fs::read_to_string(etc.join("group")).expect("read group");
    let rtm: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("rtm:"))
        .unwrap_or_else(|| panic!("no user rtm in\n{passwd}"))
        .split(':')
        .collect();
    let id = |i: usize| -> u32 {
        rtm.get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("bad passwd line for rtm: {rtm:?}"))
    };
    let (uid, gid) = (id(2), id(3));
    assert!(
        uid > 0 && uid < 1000,
        "rtm must be a system user, got uid {uid}"
    );
    assert!(
        group.lines().any(|l| l == format!("rtm:x:{gid}:")),
        "group rtm should be rtm's primary group:\n{group}"
    );
    assert!(
        group.lines().any(|l| l == "dialout:x:20:rtm"),
        "rtm should be added to dialout:\n{group}"
    );
    assert!(
        rtm[6].ends_with("nologin"),
        "rtm must not have a login shell: {rtm:?}"
    );

    let out = run(Command::new(tmpfiles)
        .args(["--create", &format!("--root={}", root.path().display())])
        .arg(repo_file(TMPFILES)));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-tmpfiles failed:\n{}",
        text(&out)
    );
    for (dir, owner, group, mode) in [
        ("etc/rtmd", 0, gid, 0o750),
        ("etc/rtmd/secrets", 0, gid, 0o750),
        ("var/lib/rtmd", uid, gid, 0o750),
        ("var/lib/rtmd/images", uid, gid, 0o750),
        ("var/log/rtmd", 0, gid, 0o750),
    ] {
        let meta = fs::metadata(root.path().join(dir))
            .unwrap_or_else(|e| panic!("tmpfiles did not create /{dir}: {e}"));
        assert!(meta.is_dir(), "/{dir} is not a directory");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (owner, group, mode),
            "/{dir}: owner, group, mode"
        );
    }
}

// ---------------------------------------------------------------------------------------
// D-Bus policy

/// Host accounts that play user rtm and group rtm in the policy under test, so the tests
/// need not create the real ones: dbus-daemon ignores rules for unknown users and groups.
/// Distinct on purpose, to tell rules for the user from rules for the group.
const RTM_USER_STANDIN: &str = "daemon";
const RTM_GROUP_STANDIN: &str = "bin";
const NOBODY: u32 = 65534;

/// The default context of Debian's /usr/share/dbus-1/system.conf: every name and every
/// method call is denied unless a policy file allows it.
const SYSTEM_BUS_DEFAULTS: &str = r#"
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"#;

/// A private system-type bus running our policy; killed on drop.
struct Bus {
    daemon: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Bus {
        need_root("it runs D-Bus clients as other users");
        let dbus_daemon = need_tool("dbus-daemon", "dbus-daemon");
        let dir = open_tempdir();

        let policy = read_repo_file(POLICY);
        for needle in [r#"user="rtm""#, r#"group="rtm""#] {
            assert!(policy.contains(needle), "{POLICY} lacks {needle}");
        }
        let policy = policy
            .replace(r#"user="rtm""#, &format!(r#"user="{RTM_USER_STANDIN}""#))
            .replace(r#"group="rtm""#, &format!(r#"group="{RTM_GROUP_STANDIN}""#));
        let policy_path = dir.path().join("org.rtmd.Dut1.conf");
        fs::write(&policy_path, policy).expect("write policy copy");

        let socket = dir.path().join("bus");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={}</listen>
{SYSTEM_BUS_DEFAULTS}
  <include>{}</include>
</busconfig>
"#,
            socket.display(),
            policy_path.display()
        );
        let config_path = dir.path().join("system.conf");
        fs::write(&config_path, config).expect("write bus config");

        let stderr_path = dir.path().join("dbus-daemon.log");
        let stderr = fs::File::create(&stderr_path).expect("create dbus-daemon log");
        let mut daemon = Command::new(dbus_daemon)
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start dbus-daemon");
        // The address is printed once the bus listens.
        let mut line = String::new();
        let stdout = daemon.stdout.take().expect("dbus-daemon stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read dbus-daemon address");
        // Configuration problems are reported before the bus listens, hence before the
        // address: a typo in an attribute makes dbus-daemon drop the whole policy file, and
        // a warning about an unknown user would mean a stand-in account is missing.
        let log = fs::read_to_string(&stderr_path).unwrap_or_default();
        let bus = Bus {
            daemon,
            socket,
            _dir: dir,
        };
        assert!(!line.is_empty(), "dbus-daemon did not start:\n{log}");
        let complaints: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("Failed to set fd limit"))
            .collect();
        assert!(
            complaints.is_empty(),
            "dbus-daemon complained about the configuration:\n{}",
            complaints.join("\n")
        );
        bus
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// `busctl call` on this bus as `uid`/`gid` with `groups` as its only supplementary
    /// groups; Ok(stdout) on a reply, Err(output) on an error.
    fn busctl_as(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        args: &[&str],
    ) -> Result<String, String> {
        let setpriv = need_tool("setpriv", "util-linux");
        let busctl = need_tool("busctl", "systemd");
        let mut cmd = Command::new(setpriv);
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        cmd.arg(busctl)
            .arg(format!("--address={}", self.address()))
            .args(["--timeout=5", "call"])
            .args(args);
        let out = run(&mut cmd);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(text(&out))
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn request_name(
    bus: &Bus,
    uid: u32,
    gid: u32,
    groups: &[u32],
    name: &str,
) -> Result<String, String> {
    // flags 4: DBUS_NAME_FLAG_DO_NOT_QUEUE. Replies "u 1" (primary owner) when allowed; the
    // name is released again when busctl exits.
    bus.busctl_as(
        uid,
        gid,
        groups,
        &[
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            name,
            "4",
        ],
    )
}

fn assert_denied(result: Result<String, String>, what: &str) {
    match result {
        Ok(out) => panic!("{what}: expected AccessDenied, got a reply: {out}"),
        Err(err) => assert!(
            // busctl prints the bus's message: "Access denied" for a refused call,
            // "... is not allowed to own the service ..." for a refused RequestName.
            err.contains("Access denied") || err.contains("is not allowed to own"),
            "{what}: expected AccessDenied, got: {err}"
        ),
    }
}

fn assert_allowed(result: Result<String, String>, what: &str) {
    if let Err(err) = result {
        panic!("{what}: expected a reply, got: {err}");
    }
}

#[test]
fn dbus_policy_name_ownership() {
    let bus = Bus::start();
    let (rtm_uid, rtm_gid) = account(RTM_USER_STANDIN);
    let rtm_group = group_id(RTM_GROUP_STANDIN);

    // The daemon's user owns both spellings of a board's name.
    for name in ["org.rtmd.Dut1.rpi4_01", "org.rtmd.Dut1.rpi4-01"] {
        let reply = request_name(&bus, rtm_uid, rtm_gid, &[], name);
        assert_eq!(reply.as_deref(), Ok("u 1\n"), "user rtm owning {name}");
    }
    // root, for running rtmd by hand.
    let reply = request_name(&bus, 0, 0, &[], "org.rtmd.Dut1.test");
    assert_eq!(
        reply.as_deref(),
        Ok("u 1\n"),
        "root owning org.rtmd.Dut1.test"
    );

    // Nothing else: not other names for rtm, not the prefix without its dot, not the
    // group rtm, not anybody else.
    assert_denied(
        request_name(&bus, rtm_uid, rtm_gid, &[], "org.example.Other"),
        "user rtm owning org.example.Other",
    );
    assert_denied(
        request_name(&bus, rtm_uid, rtm_gid, &[], "org.rtmd.Dut10"),
        "user rtm owning org.rtmd.Dut10",
    );
    assert_denied(
        request_name(&bus, NOBODY, NOBODY, &[rtm_group], "org.rtmd.Dut1.test"),
        "a member of group rtm owning org.rtmd.Dut1.test",
    );
    assert_denied(
        request_name(&bus, NOBODY, NOBODY, &[], "org.rtmd.Dut1.test"),
        "nobody owning org.rtmd.Dut1.test",
    );
}

#[test]
fn dbus_policy_method_calls() {
    let bus = Bus::start();
    let rtm_group = group_id(RTM_GROUP_STANDIN);
    let stub = wire::Stub::start(&bus.socket, "org.rtmd.Dut1.test");
    let unique = stub.unique_name.clone();

    let get = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.freedesktop.DBus.Properties",
        "Get",
        "ss",
        "org.rtmd.Dut1",
        "Name",
    ];
    let get_all = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.freedesktop.DBus.Properties",
        "GetAll",
        "s",
        "org.rtmd.Dut1.Power",
    ];
    let introspect = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
    ];
    let ping = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.freedesktop.DBus.Peer",
        "Ping",
    ];
    let set = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.freedesktop.DBus.Properties",
        "Set",
        "ssv",
        "org.rtmd.Dut1.Power",
        "State",
        "s",
        "on",
    ];
    let power_on = [
        "org.rtmd.Dut1.test",
        "/org/rtmd/Dut1",
        "org.rtmd.Dut1.Power",
        "On",
    ];
    let power_on_by_unique_name = [
        unique.as_str(),
        "/org/rtmd/Dut1",
        "org.rtmd.Dut1.Power",
        "On",
    ];

    // Anybody may read.
    for (call, what) in [
        (&get[..], "Properties.Get"),
        (&get_all[..], "Properties.GetAll"),
        (&introspect[..], "Introspect"),
        (&ping[..], "Peer.Ping"),
    ] {
        assert_allowed(
            bus.busctl_as(NOBODY, NOBODY, &[], call),
            &format!("nobody: {what}"),
        );
    }
    // Others may change nothing, also not by calling the unique name.
    for (call, what) in [
        (&set[..], "Properties.Set"),
        (&power_on[..], "Power.On"),
        (&power_on_by_unique_name[..], "Power.On via the unique name"),
    ] {
        assert_denied(
            bus.busctl_as(NOBODY, NOBODY, &[], call),
            &format!("nobody: {what}"),
        );
    }
    // Group rtm and root may call everything.
    for (call, what) in [
        (&power_on[..], "Power.On"),
        (&set[..], "Properties.Set"),
        (&power_on_by_unique_name[..], "Power.On via the unique name"),
    ] {
        assert_allowed(
            bus.busctl_as(NOBODY, NOBODY, &[rtm_group], call),
            &format!("group rtm: {what}"),
        );
        assert_allowed(bus.busctl_as(0, 0, &[], call), &format!("root: {what}"));
    }
    assert!(
        stub.calls_answered() >= 10,
        "the stub should have answered the allowed calls"
    );
}

/// Just enough of the D-Bus wire protocol (little endian, EXTERNAL auth) for a test peer
/// that owns a name and answers every method call with an empty reply.
mod wire {
    use std::io::{self, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    const METHOD_CALL: u8 = 1;
    const METHOD_RETURN: u8 = 2;
    const ERROR: u8 = 3;
    const NO_REPLY_EXPECTED: u8 = 1;

    // header field codes
    const PATH: u8 = 1;
    const INTERFACE: u8 = 2;
    const MEMBER: u8 = 3;
    const ERROR_NAME: u8 = 4;
    const REPLY_SERIAL: u8 = 5;
    const DESTINATION: u8 = 6;
    const SENDER: u8 = 7;
    const SIGNATURE: u8 = 8;

    #[derive(Default)]
    struct Buf(Vec<u8>);

    impl Buf {
        fn pad(&mut self, align: usize) {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
        }
        fn u32(&mut self, v: u32) {
            self.pad(4);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn string(&mut self, s: &str) {
            self.u32(s.len() as u32);
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
        }
        fn signature(&mut self, s: &str) {
            self.0.push(s.len() as u8);
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
        }
        fn field_str(&mut self, code: u8, sig: &str, value: &str) {
            self.pad(8);
            self.0.push(code);
            self.signature(sig);
            if sig == "g" {
                self.signature(value);
            } else {
                self.string(value);
            }
        }
        fn field_u32(&mut self, code: u8, value: u32) {
            self.pad(8);
            self.0.push(code);
            self.signature("u");
            self.u32(value);
        }
    }

    enum Field<'a> {
        Str(u8, &'a str),
        Sig(&'a str),
        U32(u8, u32),
    }

    fn message(kind: u8, flags: u8, serial: u32, fields: &[Field], body: &[u8]) -> Vec<u8> {
        let mut b = Buf::default();
        b.0.extend_from_slice(&[b'l', kind, flags, 1]);
        b.u32(body.len() as u32);
        b.u32(serial);
        b.u32(0); // header fields array length, patched below
        for f in fields {
            match f {
                Field::Str(code, v) => {
                    let sig = if *code == PATH { "o" } else { "s" };
                    b.field_str(*code, sig, v);
                }
                Field::Sig(v) => b.field_str(SIGNATURE, "g", v),
                Field::U32(code, v) => b.field_u32(*code, *v),
            }
        }
        let len = (b.0.len() - 16) as u32;
        b.0[12..16].copy_from_slice(&len.to_le_bytes());
        b.pad(8);
        b.0.extend_from_slice(body);
        b.0
    }

    #[derive(Debug, Default)]
    struct Incoming {
        kind: u8,
        flags: u8,
        serial: u32,
        reply_serial: Option<u32>,
        sender: Option<String>,
        error_name: Option<String>,
        body: Vec<u8>,
        big_endian: bool,
    }

    fn u32_at(buf: &[u8], pos: usize, big_endian: bool) -> io::Result<u32> {
        let bytes: [u8; 4] = buf
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("truncated u32"))?;
        Ok(if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    }

    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
    }

    fn align(pos: usize, to: usize) -> usize {
        pos.div_ceil(to) * to
    }

    fn read_message(stream: &mut UnixStream) -> io::Result<Incoming> {
        let mut head = [0u8; 16];
        stream.read_exact(&mut head)?;
        let big_endian = match head[0] {
            b'l' => false,
            b'B' => true,
            _ => return Err(bad("bad endianness byte")),
        };
        let body_len = u32_at(&head, 4, big_endian)? as usize;
        let fields_len = u32_at(&head, 12, big_endian)? as usize;
        let header_end = align(16 + fields_len, 8);
        let mut msg = head.to_vec();
        msg.resize(header_end + body_len, 0);
        stream.read_exact(&mut msg[16..])?;

        let mut m = Incoming {
            kind: head[1],
            flags: head[2],
            serial: u32_at(&head, 8, big_endian)?,
            big_endian,
            body: msg[header_end..].to_vec(),
            ..Incoming::default()
        };
        let mut pos = 16;
        while pos < 16 + fields_len {
            pos = align(pos, 8);
            let code = msg[pos];
            let sig_len = msg[pos + 1] as usize;
            let sig = msg
                .get(pos + 2..pos + 2 + sig_len)
                .ok_or_else(|| bad("truncated field"))?
                .to_vec();
            pos += 3 + sig_len;
            match sig.as_slice() {
                b"s" | b"o" => {
                    pos = align(pos, 4);
                    let len = u32_at(&msg, pos, big_endian)? as usize;
                    let s = msg
                        .get(pos + 4..pos + 4 + len)
                        .ok_or_else(|| bad("truncated string"))?;
                    let s = String::from_utf8_lossy(s).into_owned();
                    pos += 4 + len + 1;
                    match code {
                        SENDER => m.sender = Some(s),
                        ERROR_NAME => m.error_name = Some(s),
                        _ => {}
                    }
                }
                b"g" => {
                    let len = msg[pos] as usize;
                    pos += 1 + len + 1;
                }
                b"u" => {
                    pos = align(pos, 4);
                    let v = u32_at(&msg, pos, big_endian)?;
                    pos += 4;
                    if code == REPLY_SERIAL {
                        m.reply_serial = Some(v);
                    }
                }
                _ => return Err(bad("unexpected header field type")),
            }
        }
        Ok(m)
    }

    /// Sends a method call to the bus and waits for its reply.
    fn bus_call(
        stream: &mut UnixStream,
        serial: u32,
        member: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> io::Result<Incoming> {
        let mut fields = vec![
            Field::Str(PATH, "/org/freedesktop/DBus"),
            Field::Str(INTERFACE, "org.freedesktop.DBus"),
            Field::Str(MEMBER, member),
            Field::Str(DESTINATION, "org.freedesktop.DBus"),
        ];
        if let Some(sig) = signature {
            fields.push(Field::Sig(sig));
        }
        stream.write_all(&message(METHOD_CALL, 0, serial, &fields, body))?;
        loop {
            let m = read_message(stream)?;
            if m.reply_serial == Some(serial) {
                if m.kind == ERROR {
                    return Err(bad(&format!("{member}: {:?}", m.error_name)));
                }
                return Ok(m);
            }
        }
    }

    fn body_string(m: &Incoming) -> io::Result<String> {
        let len = u32_at(&m.body, 0, m.big_endian)? as usize;
        let s = m
            .body
            .get(4..4 + len)
            .ok_or_else(|| bad("truncated body"))?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    pub struct Stub {
        pub unique_name: String,
        answered: Arc<AtomicUsize>,
        stream: UnixStream,
        thread: Option<JoinHandle<()>>,
    }

    impl Stub {
        /// Connects to the bus at `socket`, owns `name`, and answers method calls until
        /// dropped.
        pub fn start(socket: &Path, name: &str) -> Stub {
            Stub::try_start(socket, name)
                .unwrap_or_else(|e| panic!("test peer could not own {name}: {e}"))
        }

        fn try_start(socket: &Path, name: &str) -> io::Result<Stub> {
            let mut stream = UnixStream::connect(socket)?;
            // SASL EXTERNAL with our uid, as the decimal string hex-encoded.
            let uid: String = super::effective_uid()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            stream.write_all(format!("\0AUTH EXTERNAL {uid}\r\n").as_bytes())?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte)?;
                line.push(byte[0]);
            }
            if !line.starts_with(b"OK ") {
                return Err(bad(&format!(
                    "auth refused: {}",
                    String::from_utf8_lossy(&line)
                )));
            }
            stream.write_all(b"BEGIN\r\n")?;

            let hello = bus_call(&mut stream, 1, "Hello", None, &[])?;
            let unique_name = body_string(&hello)?;
            let mut body = Buf::default();
            body.string(name);
            body.u32(4); // DO_NOT_QUEUE
            let reply = bus_call(&mut stream, 2, "RequestName", Some("su"), &body.0)?;
            let result = u32_at(&reply.body, 0, reply.big_endian)?;
            if result != 1 {
                return Err(bad(&format!("RequestName returned {result}")));
            }

            let answered = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&answered);
            let mut reader = stream.try_clone()?;
            let thread = std::thread::spawn(move || {
                let mut serial = 3;
                while let Ok(m) = read_message(&mut reader) {
                    if m.kind != METHOD_CALL || m.flags & NO_REPLY_EXPECTED != 0 {
                        continue;
                    }
                    let Some(sender) = m.sender.as_deref() else {
                        continue;
                    };
                    let reply = message(
                        METHOD_RETURN,
                        NO_REPLY_EXPECTED,
                        serial,
                        &[
                            Field::U32(REPLY_SERIAL, m.serial),
                            Field::Str(DESTINATION, sender),
                        ],
                        &[],
                    );
                    serial += 1;
                    // Counted before it is sent, so the count is complete once the caller
                    // has its reply.
                    counter.fetch_add(1, Ordering::SeqCst);
                    if reader.write_all(&reply).is_err() {
                        break;
                    }
                }
            });
            Ok(Stub {
                unique_name,
                answered,
                stream,
                thread: Some(thread),
            })
        }

        pub fn calls_answered(&self) -> usize {
            self.answered.load(Ordering::SeqCst)
        }
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// udev rules

/// What `udevadm test` says about our rules when they are the only file in
/// /etc/udev/rules.d (bind-mounted over it in a private mount namespace).
/// Returns (whether the file was read at all, lines about it other than the read notice).
fn udev_complaints(rules: &str) -> (bool, Vec<String>) {
    need_root("it bind-mounts over /etc/udev/rules.d in a private mount namespace");
    let udevadm = need_tool("udevadm", "udev");
    let unshare = need_tool("unshare", "util-linux");
    need_tool("mount", "mount");
    assert!(
        Path::new("/etc/udev/rules.d").is_dir(),
        "/etc/udev/rules.d is missing: install the Debian package udev"
    );
    // GROUP="rtm" is checked against the host's groups; the test host has no rtm group, so
    // check the rules with a group every host has (the substitution is asserted).
    assert!(
        rules.contains(r#"GROUP="rtm""#),
        "rules should hand devices to group rtm"
    );
    let rules = rules.replace(r#"GROUP="rtm""#, r#"GROUP="dialout""#);

    let dir = tempfile::tempdir().expect("create temp dir");
    fs::write(dir.path().join("90-rtmd.rules"), rules).expect("write rules copy");
    // Any device will do: rules are parsed before they are applied. mem/null exists on
    // every Linux system.
    let device = "/sys/class/mem/null";
    assert!(
        Path::new(device).exists(),
        "{device} missing: is /sys mounted?"
    );
    let out = run(Command::new(unshare)
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/udev/rules.d && exec "$2" test --action=add "$3""#)
        .arg("sh")
        .arg(dir.path())
        .arg(udevadm)
        .arg(device));
    let all = text(&out);
    assert!(out.status.success(), "udevadm test failed:\n{all}");
    let read = all.lines().any(|l| {
        l.starts_with("Reading rules file:") && l.ends_with("/etc/udev/rules.d/90-rtmd.rules")
    });
    let complaints = all
        .lines()
        .filter(|l| l.contains("90-rtmd.rules") && !l.starts_with("Reading rules file:"))
        .map(str::to_owned)
        .collect();
    (read, complaints)
}

#[test]
fn udev_rules_parse_cleanly() {
    let (read, complaints) = udev_complaints(&read_repo_file(UDEV_RULES));
    assert!(read, "udevadm test did not read our rules file");
    assert!(
        complaints.is_empty(),
        "udev complains about {UDEV_RULES}:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn udev_check_catches_broken_rules() {
    let broken = format!(
        "{}\nSUBSYSTEM=\"tty\", ATTRS{{serial}}==\"X\", SYMLNK+=\"rtm/x/console\"\n",
        read_repo_file(UDEV_RULES)
    );
    let (read, complaints) = udev_complaints(&broken);
    assert!(read, "udevadm test did not read the broken rules file");
    assert!(
        !complaints.is_empty(),
        "udevadm test should complain about the broken rule"
    );
}

/// The example names the board's devices and starts its daemon.
#[test]
fn udev_rules_name_devices_and_start_the_daemon() {
    let rules = read_repo_file(UDEV_RULES);
    for wanted in [
        r#"SYMLINK+="rtm/rpi4-01/console""#,
        r#"SYMLINK+="rtm/rpi4-01/psu""#,
        r#"ENV{SYSTEMD_WANTS}+="rtmd@rpi4-01.service""#,
        r#"TAG+="systemd""#,
        r#"MODE="0660""#,
        "ATTRS{serial}==",
        "ENV{ID_PATH}==",
    ] {
        assert!(rules.contains(wanted), "{UDEV_RULES} lacks {wanted}");
    }
}
