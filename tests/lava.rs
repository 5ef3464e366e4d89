//! LAVA end to end: Debian's real dispatcher (`lava-run` from lava-dispatcher 2023.01) runs
//! jobs on a simulated board through rtmd, with the device dictionaries a lab pastes
//! (contrib/lava/, docs/lava.md): every hook an `rtmctl` call.
//!
//! `scripts/lava-setup` makes lava-run available (unpacked debs in `target/lava/`); the jobs
//! and a small Python wrapper are in `tests/lava/`. The dictionaries are contrib/lava/'s,
//! verbatim but for the folder the simulated board's shell runs in (and the telnet port): the
//! hooks say plain `rtmctl`, found on the PATH lava-run gets (the built one first), and
//! `RTM_BUS_ADDRESS` points them at the test's private bus. Each test starts its own bus,
//! simulator (a strip or a lab supply whose output feeds a simulated board with a real shell),
//! rtmd, and an HTTP server for the dispatcher (the board's shell downloads the test overlay
//! from it), all on loopback.
//!
//! Timing figures are printed (`cargo test --test lava -- --nocapture`), never asserted.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// Debian's python, where apt installs python3-yaml and the rest (the first python3 on PATH
/// may be another one).
const PYTHON: &str = "/usr/bin/python3";
/// A job that has not ended by then has hung; each takes a few seconds.
const JOB_DEADLINE: Duration = Duration::from_secs(110);

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files() -> PathBuf {
    here().join("tests/lava")
}

/// The device-type template and the device dictionaries a lab pastes.
fn contrib() -> PathBuf {
    here().join("contrib/lava")
}

/// Where scripts/lava-setup unpacked lava-dispatcher; runs it once per test binary.
fn lava_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let out = Command::new(here().join("scripts/lava-setup"))
            .arg(here().join("target/lava"))
            .output()
            .expect("cannot run scripts/lava-setup");
        assert!(
            out.status.success(),
            "scripts/lava-setup failed, so lava-run is not available ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let root = text(&out.stdout).lines().last().unwrap_or("").to_string();
        assert!(
            Path::new(&root).join("usr/bin/lava-run").is_file(),
            "scripts/lava-setup printed {root:?}, which holds no usr/bin/lava-run"
        );
        PathBuf::from(root)
    })
}

/// A device dictionary of contrib/lava/ as a lab pastes it, with `replace` applied (each must
/// occur) and the folder the simulated board's test shell uses, `lava_test_results_dir`,
/// added (a real board's is `/lava-<job>`; the simulated board's shell runs on this host).
fn dictionary(file: &str, replace: &[(&str, &str)], home: &Path) -> String {
    let mut s = std::fs::read_to_string(contrib().join(file)).unwrap();
    for (from, to) in replace {
        assert!(s.contains(from), "contrib/lava/{file} has no {from:?}");
        s = s.replace(from, to);
    }
    s.push_str(&format!(
        "{{% set lava_test_results_dir = '{}/lava-%s' %}}\n",
        home.display()
    ));
    s
}

/// Replaces the `@name@` placeholders of a file in tests/lava/; fails on one left over.
fn fill(file: &str, values: &[(&str, String)]) -> String {
    let mut s = std::fs::read_to_string(files().join(file)).unwrap();
    for (k, v) in values {
        s = s.replace(&format!("@{k}@"), v);
    }
    let left = s.split('@').skip(1).find(|w| {
        !w.is_empty() && w.len() < 20 && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    });
    assert!(
        left.is_none(),
        "{file}: placeholder @{}@ not filled in",
        left.unwrap_or("")
    );
    s
}

/// The dispatcher's side: its configuration, its download folder and the HTTP server the
/// board fetches the overlay from (`http://127.0.0.1:PORT/tmp/...` is the download folder).
struct Dispatcher {
    dir: tempfile::TempDir,
    _http: Proc,
}

impl Dispatcher {
    fn start() -> Dispatcher {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("www/tmp")).unwrap();
        let mut cmd = Command::new(PYTHON);
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir.path().join("www"))
        .arg("0");
        let http = Proc::spawn("http.server", cmd, true);
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let line = http.wait_line("Serving HTTP on");
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        std::fs::write(
            dir.path().join("dispatcher.yaml"),
            format!("dispatcher_ip: 127.0.0.1\ndispatcher_http_ip: 127.0.0.1:{port}\n"),
        )
        .unwrap();
        Dispatcher { dir, _http: http }
    }

    /// Renders the device dictionary (already filled in) to device YAML, as lava-server does
    /// with contrib/lava/rtmd.jinja2 installed beside its own device types, and checks it
    /// against LAVA's device schema.
    fn device(&self, name: &str, dictionary: &str) -> PathBuf {
        let out = self.render(name, dictionary);
        assert!(
            out.status.success(),
            "rendering {name}: {}",
            text(&out.stderr)
        );
        self.dir.path().join(format!("{name}.yaml"))
    }

    fn render(&self, name: &str, dictionary: &str) -> Output {
        let dict = self.dir.path().join(format!("{name}.jinja2"));
        std::fs::write(&dict, dictionary).unwrap();
        Command::new(PYTHON)
            .arg(files().join("lava.py"))
            .arg("render")
            .arg(lava_root())
            .arg(&dict)
            .arg(self.dir.path().join(format!("{name}.yaml")))
            .arg(contrib())
            .output()
            .unwrap()
    }

    /// The `commands` section of a device YAML: hooks by key (`power_on`,
    /// `users.low_voltage.undo`, `connections.uart0.tags` as "primary,telnet").
    fn commands(&self, device: &Path) -> BTreeMap<String, String> {
        let out = Command::new(PYTHON)
            .arg(files().join("lava.py"))
            .arg("commands")
            .arg(device)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Runs one job with lava-run and waits for its end. The hooks find the built `rtmctl`
    /// first on their PATH, and talk to `bus` (RTM_BUS_ADDRESS; empty: none set).
    fn run(&self, id: u32, device: &Path, job: &str, bus: &str) -> Job {
        let job_file = self.dir.path().join(format!("job-{id}.yaml"));
        std::fs::write(&job_file, job).unwrap();
        let log_path = self.dir.path().join(format!("job-{id}.log"));
        let output = self.dir.path().join(format!("output-{id}"));
        let path = std::env::join_paths(
            std::iter::once(bin("rtmctl").parent().unwrap().to_path_buf()).chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(PYTHON);
        cmd.env("PATH", path)
            .env_remove("RTM_BUS")
            .env_remove("RTM_BUS_ADDRESS")
            .env_remove("RTM_DUT");
        if !bus.is_empty() {
            cmd.env("RTM_BUS_ADDRESS", bus);
        }
        let start = Instant::now();
        let mut child = cmd
            .arg(files().join("lava.py"))
            .arg("run")
            .arg(lava_root())
            .arg(self.dir.path().join("www/tmp"))
            .args(["--job-id", &id.to_string(), "--output-dir"])
            .arg(&output)
            .arg("--device")
            .arg(device)
            .arg("--dispatcher")
            .arg(self.dir.path().join("dispatcher.yaml"))
            .arg(&job_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log_path).unwrap())
            // A group of its own, so that a hung job is ended with its connection commands.
            .process_group(0)
            .spawn()
            .expect("cannot start lava-run");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > JOB_DEADLINE {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.wait();
                panic!(
                    "lava-run job {id} did not end within {JOB_DEADLINE:?}; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        let log = std::fs::read_to_string(&log_path).unwrap();
        let out = Command::new(PYTHON)
            .arg(files().join("lava.py"))
            .arg("results")
            .arg(&log_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reading the results: {}",
            text(&out.stderr)
        );
        let results = text(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                ))
            })
            .collect();
        Job {
            status,
            log,
            results,
            elapsed,
        }
    }
}

/// What a lava-run left: its exit status, its log (YAML, one mapping a line) and the results
/// in it as (definition, case, result).
struct Job {
    status: ExitStatus,
    log: String,
    results: Vec<(String, String, String)>,
    elapsed: Duration,
}

impl Job {
    /// The job ended Complete: lava-run exited 0 and its own `job` result is pass (what
    /// lava-server turns into the health Complete).
    fn assert_complete(&self) {
        let job = self
            .results
            .iter()
            .find(|(d, c, _)| d == "lava" && c == "job")
            .map(|(_, _, r)| r.as_str());
        assert!(
            self.status.success()
                && job == Some("pass")
                && self.log.contains("Job finished correctly"),
            "the job did not complete (lava-run {}, job result {job:?}); its log:\n{}",
            self.status,
            self.readable_log()
        );
    }

    /// LAVA's own steps (definition `lava`: validate, pdu-reboot, login-action, power-off, ...)
    /// all passed.
    fn assert_steps_passed(&self) {
        let failed: Vec<_> = self
            .results
            .iter()
            .filter(|(d, _, r)| d == "lava" && r != "pass")
            .collect();
        assert!(
            failed.is_empty(),
            "failed: {failed:?}\n{}",
            self.readable_log()
        );
    }

    /// The results of one test definition (`0_smoke` for the first definition `smoke`).
    fn cases(&self, definition: &str) -> BTreeMap<String, String> {
        self.results
            .iter()
            .filter(|(d, _, _)| d == definition)
            .map(|(_, c, r)| (c.clone(), r.clone()))
            .collect()
    }

    /// The commands LAVA ran (hooks), as logged: "'nice' '/path/rtmctl' ... 'power' 'cycle'".
    fn calls(&self) -> Vec<String> {
        self.log
            .lines()
            .filter_map(|l| l.split("\"msg\": \"Calling: ").nth(1))
            .map(|l| l.trim_end_matches("\"}").to_string())
            .collect()
    }

    /// Milliseconds each hook took, from LAVA's own timestamps (Calling .. Returned), named
    /// by the action that ran it (`pdu-reboot`, `power-off`, `user-command`).
    fn hook_millis(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut action = String::new();
        let mut called: Option<f64> = None;
        for line in self.log.lines() {
            let Some(t) = timestamp(line) else { continue };
            if let Some(start) = line.split("\"msg\": \"start: ").nth(1) {
                // "start: 2.2.1 pdu-reboot (timeout 00:01:00) [common]"
                action = start.split_whitespace().nth(1).unwrap_or("").to_string();
            } else if line.contains("\"msg\": \"Calling: ") {
                called = Some(t);
            } else if line.contains("\"msg\": \"Returned ")
                && let Some(t0) = called.take()
            {
                out.push((action.clone(), (t - t0) * 1000.0));
            }
        }
        out
    }

    /// How long a top-level action took, from its start and end lines.
    fn action_seconds(&self, level_and_name: &str) -> Option<f64> {
        let start = self
            .log
            .lines()
            .find(|l| l.contains(&format!("\"msg\": \"start: {level_and_name} ")))
            .and_then(timestamp)?;
        let end = self
            .log
            .lines()
            .find(|l| l.contains(&format!("\"msg\": \"end: {level_and_name} ")))
            .and_then(timestamp)?;
        Some(end - start)
    }

    /// The log without the debug chatter, for failure messages.
    fn readable_log(&self) -> String {
        self.log
            .lines()
            .filter(|l| {
                !l.contains("\"lvl\": \"debug\"") || l.contains("Calling") || l.contains(">> ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Seconds since midnight of a log line's `dt` (all lines of one job are on one day but for
/// a job run across midnight, which only skews a printed figure).
fn timestamp(line: &str) -> Option<f64> {
    let dt = line.split("\"dt\": \"").nth(1)?.split('"').next()?;
    let time = dt.split('T').nth(1)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// A board on outlet 2 of a simulated strip, run by rtmd (power and console), as in
/// tests/console.rs.
struct StripLab {
    strip: Proc,
    daemon: Daemon,
    home: PathBuf,
    dir: tempfile::TempDir,
    _bus: Bus,
}

impl StripLab {
    fn start() -> StripLab {
        Self::start_with(2)
    }

    /// The board on outlet 2, rtmd configured to switch `outlet` (another one: a lab's
    /// wiring mistake, the board never powers up).
    fn start_with(outlet: u32) -> StripLab {
        let bus = Bus::start();
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console");
        let home = dir.path().join("home");
        let mut args = fast_board(dir.path(), "rpi4-01");
        args.extend(["--board-outlet".to_string(), "2".to_string()]);
        let (strip, port) = strip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let config = format!(
            "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             outlet = {outlet}\ncycle_off_ms = 100\n[console]\ndevice = \"{}\"\ntcp = \"127.0.0.1:0\"\n\
             log_dir = \"{}\"\n",
            console.display(),
            dir.path().join("log").display()
        );
        let daemon = Daemon::start(&bus, &config);
        eventually("rtmd opened the board's console", || {
            daemon.property("org.rtmd.Dut1.Console", "Connected") == "b true"
        });
        assert_eq!(
            ok_line(&daemon.rtmctl(&["power", "status"])),
            "rpi4-01: power off"
        );
        assert!(strip.matching("board").is_empty(), "{}", strip.text());
        StripLab {
            strip,
            daemon,
            home,
            dir,
            _bus: bus,
        }
    }

    /// The job files' placeholders.
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("home", self.home.display().to_string()),
            ("board", "rpi4-01".to_string()),
        ]
    }

    /// The console's telnet listener as telnet's arguments, "127.0.0.1 PORT".
    fn telnet(&self) -> String {
        let prop = self.daemon.property("org.rtmd.Dut1.Console", "TcpAddress");
        let addr = prop.trim_start_matches("s ").trim_matches('"');
        let (host, port) = addr.rsplit_once(':').expect("TcpAddress is host:port");
        format!("{host} {port}")
    }

    fn power_status(&self) -> String {
        ok_line(&self.daemon.rtmctl(&["power", "status"]))
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/console.log")).unwrap_or_default()
    }
}

/// A board fed by a simulated lab supply (DPM86xx, ASCII protocol) run by rtmd, with the
/// supply of config/dpm86xx.toml: its profile low (4.6 V) is below the board's brown-out
/// (4.75 V).
struct SupplyLab {
    supply: Proc,
    daemon: Daemon,
    board: String,
    home: PathBuf,
    _dir: tempfile::TempDir,
    _bus: Bus,
}

impl SupplyLab {
    fn start(board: &str) -> SupplyLab {
        let bus = Bus::start();
        let dir = tempfile::tempdir().unwrap();
        let psu = dir.path().join("psu");
        let console = dir.path().join("console");
        let home = dir.path().join("home");
        let mut args: Vec<String> = [
            "dpm86xx",
            "--pty",
            psu.to_str().unwrap(),
            "--protocol",
            "ascii",
        ]
        .map(str::to_string)
        .to_vec();
        args.extend(fast_board(dir.path(), board));
        let (supply, _) = sim(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let config = format!(
            "name = \"{board}\"\n[power]\nbackend = \"dpm86xx\"\nprotocol = \"ascii\"\ndevice = \"{}\"\n\
             voltage = 5.1\ncurrent_limit = 2.0\nvoltage_range = [4.0, 5.8]\n\
             profiles = {{ low = 4.6, nominal = 5.1, high = 5.6 }}\npoll_ms = 1000\ncycle_off_ms = 100\n\
             [console]\ndevice = \"{}\"\n",
            psu.display(),
            console.display()
        );
        let daemon = Daemon::start(&bus, &config);
        eventually("rtmd opened the board's console", || {
            daemon.property("org.rtmd.Dut1.Console", "Connected") == "b true"
        });
        SupplyLab {
            supply,
            daemon,
            board: board.to_string(),
            home,
            _dir: dir,
            _bus: bus,
        }
    }

    fn values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("home", self.home.display().to_string()),
            ("board", self.board.clone()),
        ]
    }
}

/// Asserts that a simulator printed lines containing `needles`, in this order.
fn in_order(p: &Proc, needles: &[&str]) {
    let lines = p.lines.lock().unwrap().clone();
    let mut at = 0;
    for n in needles {
        match lines[at..].iter().position(|l| l.contains(n)) {
            Some(i) => at += i + 1,
            None => panic!(
                "{} did not print {n:?} after the lines before it ({needles:?}):\n{}",
                p.name,
                lines.join("\n")
            ),
        }
    }
}

/// The hooks a job ran, from `--dut` on: "'rpi4-01' 'power' 'cycle'", after checking that
/// each was a plain `rtmctl` (found on PATH, as on a dispatcher).
fn hooks(job: &Job) -> Vec<String> {
    job.calls()
        .iter()
        .map(|c| {
            let (command, args) = c
                .split_once(" '--dut' ")
                .unwrap_or_else(|| panic!("not an rtmctl hook: {c}"));
            assert!(
                command.ends_with("'rtmctl'"),
                "not an rtmctl hook: {c}\n{}",
                job.readable_log()
            );
            args.to_string()
        })
        .collect()
}

/// Runs job 1 (minimal boot, test shell over `rtmctl console`) on a fresh lab.
fn minimal_job_through_rtmd(id: u32) -> (StripLab, Job) {
    let lab = StripLab::start();
    let dispatcher = Dispatcher::start();
    let device = dispatcher.device(
        "rpi4-01",
        &dictionary("rpi4-rtmctl-console.jinja2", &[], &lab.home),
    );
    let job = dispatcher.run(
        id,
        &device,
        &fill("job-minimal.yaml", &lab.values()),
        &lab.daemon.bus,
    );
    (lab, job)
}

/// What jobs 1 and 2 must show: complete, the exact test results, the board booted because
/// rtmd switched its outlet, and it is off afterwards.
fn assert_minimal_job(lab: &StripLab, job: &Job) {
    job.assert_complete();
    job.assert_steps_passed();
    let expected: BTreeMap<String, String> = [
        ("shell-true", "pass"),
        ("uname", "pass"),
        ("shell-false", "fail"),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_string(), r.to_string()))
    .collect();
    assert_eq!(job.cases("0_smoke"), expected, "{}", job.readable_log());

    // The hooks were rtmctl: a hard reset (power cycle) to boot, power off at finalize.
    assert_eq!(
        hooks(job),
        ["'rpi4-01' 'power' 'cycle'", "'rpi4-01' 'power' 'off'"],
        "{}",
        job.readable_log()
    );
    assert!(
        job.log.contains(">> rpi4-01: power on"),
        "{}",
        job.readable_log()
    );
    assert!(
        job.log.contains(">> rpi4-01: power off"),
        "{}",
        job.readable_log()
    );

    // The board booted because its outlet was switched on (it was off and silent before the
    // job), and went dark at the end. The strip's and the board's lines come from different
    // threads of the simulator, so only each one's own order is checked.
    in_order(&lab.strip, &["outlet 2 off", "outlet 2 on", "outlet 2 off"]);
    assert_eq!(
        lab.strip.matching("outlet 2 on").len(),
        1,
        "{}",
        lab.strip.text()
    );
    in_order(
        &lab.strip,
        &[
            "board booting",
            "board login prompt",
            "board shell",
            "board off",
        ],
    );
    assert_eq!(
        lab.strip.matching("board booting").len(),
        1,
        "{}",
        lab.strip.text()
    );
    assert_eq!(lab.power_status(), "rpi4-01: power off");
    // LAVA's connection ended cleanly: no console client is left behind.
    eventually("LAVA's console client left", || {
        lab.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 0"
    });
    // The board's side of the session is in rtmd's console log.
    let console_log = lab.console_log();
    assert!(
        console_log.contains("rpi4-01 login: root") && console_log.contains("lava-test-runner"),
        "{console_log}"
    );
}

#[test]
fn job_1_minimal_boot_over_rtmctl_console() {
    let (lab, job) = minimal_job_through_rtmd(1);
    assert_minimal_job(&lab, &job);
    // rtmctl console said who it is once, then only the board's bytes.
    assert_eq!(
        job.log
            .matches("rtmctl: connected to rpi4-01's console")
            .count(),
        1,
        "{}",
        job.readable_log()
    );
    println!("job 1 (rtmctl console): {:.2} s", job.elapsed.as_secs_f64());
}

#[test]
fn job_2_minimal_boot_over_rtmd_telnet_listener() {
    let lab = StripLab::start();
    let dispatcher = Dispatcher::start();
    let telnet = lab.telnet();
    let device = dispatcher.device(
        "rpi4-01-telnet",
        &dictionary(
            "rpi4-telnet.jinja2",
            &[("telnet 127.0.0.1 2000", &format!("telnet {telnet}"))],
            &lab.home,
        ),
    );
    let job = dispatcher.run(
        2,
        &device,
        &fill("job-minimal.yaml", &lab.values()),
        &lab.daemon.bus,
    );
    assert_minimal_job(&lab, &job);
    assert!(
        job.log
            .contains(&format!("Connecting to device using 'telnet {telnet}'")),
        "{}",
        job.readable_log()
    );
    // Tagged telnet: LAVA left with Ctrl-] and quit.
    assert!(
        job.log.contains("Disconnecting from telnet"),
        "{}",
        job.readable_log()
    );
    println!("job 2 (telnet): {:.2} s", job.elapsed.as_secs_f64());
}

/// What jobs 3 and 5 must show: the test at the nominal voltage passed, the user command
/// low_voltage browned the board out, its undo restored the nominal voltage at cleanup.
fn assert_low_voltage_job(lab: &SupplyLab, job: &Job) {
    let board = &lab.board;
    job.assert_complete();
    job.assert_steps_passed();
    assert_eq!(
        job.cases("0_nominal"),
        BTreeMap::from([("shell-at-nominal".to_string(), "pass".to_string())]),
        "{}",
        job.readable_log()
    );

    // do, then power off at finalize, then undo at cleanup.
    assert_eq!(
        hooks(job),
        [
            format!("'{board}' 'power' 'cycle'"),
            format!("'{board}' 'power' 'profile' 'low'"),
            format!("'{board}' 'power' 'off'"),
            format!("'{board}' 'power' 'profile' 'nominal'"),
        ],
        "{}",
        job.readable_log()
    );
    assert!(
        job.log
            .contains(&format!(">> {board}: profile low, 4.60 V")),
        "{}",
        job.readable_log()
    );
    assert!(
        job.log
            .contains(&format!(">> {board}: profile nominal, 5.10 V")),
        "{}",
        job.readable_log()
    );
    // The board's brown-out reached LAVA over the console.
    assert!(
        job.log
            .contains("brown-out: supply 4.60 V below 4.75 V, resetting"),
        "{}",
        job.readable_log()
    );
    // The supply's and the board's lines come from different threads: each in its order.
    in_order(
        &lab.supply,
        &[
            "set voltage 5.10",
            "output on at 5.10 V",
            "set voltage 4.60",
            "output off at 4.60 V",
            "set voltage 5.10",
        ],
    );
    in_order(
        &lab.supply,
        &[
            "board booting",
            "board login prompt",
            "board shell",
            "board brown-out",
            "board off",
        ],
    );
    // Off, and back at nominal for the next job.
    assert_eq!(
        ok_line(&lab.daemon.rtmctl(&["power", "status"])),
        format!("{board}: power off, 0.00 V, 0.000 A (setpoint 5.10 V)")
    );
    assert_eq!(
        lab.daemon
            .property("org.rtmd.Dut1.Power", "VoltageSetpoint"),
        "d 5.1"
    );
}

#[test]
fn job_3_low_voltage_user_command_browns_the_board_out_and_undo_restores_nominal() {
    let lab = SupplyLab::start("rpi4-lv");
    let dispatcher = Dispatcher::start();
    let device = dispatcher.device(
        "rpi4-lv",
        &dictionary("rpi4-voltage-profiles.jinja2", &[], &lab.home),
    );
    let job = dispatcher.run(
        3,
        &device,
        &fill("job-low-voltage.yaml", &lab.values()),
        &lab.daemon.bus,
    );
    assert_low_voltage_job(&lab, &job);
    println!("job 3 (low voltage): {:.2} s", job.elapsed.as_secs_f64());
}

/// With no rtmd for the board, the job ends Incomplete with an InfrastructureError, and the
/// job log says why in rtmctl's one line.
#[test]
fn job_without_rtmd_is_incomplete_with_rtmctls_reason() {
    let bus = Bus::start();
    let home = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start();
    let values = vec![
        ("home", home.path().display().to_string()),
        ("board", "rpi4-01".to_string()),
    ];
    let device = dispatcher.device(
        "rpi4-01",
        &dictionary("rpi4-rtmctl-console.jinja2", &[], home.path()),
    );
    let job = dispatcher.run(4, &device, &fill("job-minimal.yaml", &values), &bus.address);
    assert!(!job.status.success(), "{}", job.readable_log());
    assert!(
        job.results
            .contains(&("lava".into(), "job".into(), "fail".into()))
            && job.log.contains("\"error_type\": \"Infrastructure\""),
        "{}",
        job.readable_log()
    );
    assert!(
        job.log
            .contains(">> rtmctl: rpi4-01: no rtmd serves board rpi4-01 on the bus at"),
        "{}",
        job.readable_log()
    );
    assert!(job.cases("0_smoke").is_empty());
}

/// The generic device type contrib/lava/rtmd.jinja2, through its commented dictionary
/// rtmd-board.jinja2 with the supply's profiles added: job 3's low-voltage job, as a job for
/// `device_type: rtmd`.
#[test]
fn job_5_generic_rtmd_device_type_boots_tests_and_runs_its_profile_commands() {
    let lab = SupplyLab::start("board-01");
    let dispatcher = Dispatcher::start();
    let mut dict = dictionary("rtmd-board.jinja2", &[], &lab.home);
    dict.push_str("{% set rtmd_profiles = ['low', 'high'] %}\n");
    let device = dispatcher.device("board-01", &dict);
    assert_eq!(
        dispatcher.commands(&device),
        expected_commands(&[
            ("connect", "rtmctl --dut board-01 console"),
            ("hard_reset", "rtmctl --dut board-01 power cycle"),
            ("power_off", "rtmctl --dut board-01 power off"),
            ("power_on", "rtmctl --dut board-01 power on"),
            (
                "users.low_voltage.do",
                "rtmctl --dut board-01 power profile low"
            ),
            (
                "users.low_voltage.undo",
                "rtmctl --dut board-01 power profile nominal"
            ),
            (
                "users.high_voltage.do",
                "rtmctl --dut board-01 power profile high"
            ),
            (
                "users.high_voltage.undo",
                "rtmctl --dut board-01 power profile nominal"
            ),
        ])
    );
    let job = fill("job-low-voltage.yaml", &lab.values());
    assert!(job.contains("device_type: bcm2711-rpi-4-b\n"));
    let job = job.replace("device_type: bcm2711-rpi-4-b\n", "device_type: rtmd\n");
    let job = dispatcher.run(5, &device, &job, &lab.daemon.bus);
    assert_low_voltage_job(&lab, &job);
    println!(
        "job 5 (rtmd device type, low voltage): {:.2} s",
        job.elapsed.as_secs_f64()
    );
}

/// rtmd switches outlet 3, the board hangs on outlet 2 (a wiring mistake): every hook
/// succeeds, the board stays dark, and LAVA must end the job Incomplete at the login prompt,
/// saying so, within the job's short timeouts; rtmd serves on.
#[test]
fn job_whose_board_never_powers_up_is_incomplete_at_the_login_prompt_and_rtmd_is_unharmed() {
    let mut lab = StripLab::start_with(3);
    let dispatcher = Dispatcher::start();
    let device = dispatcher.device(
        "rpi4-01",
        &dictionary("rpi4-rtmctl-console.jinja2", &[], &lab.home),
    );
    let job = dispatcher.run(
        6,
        &device,
        &fill("job-no-power.yaml", &lab.values()),
        &lab.daemon.bus,
    );
    assert!(!job.status.success(), "{}", job.readable_log());
    assert!(
        job.results
            .contains(&("lava".into(), "job".into(), "fail".into())),
        "{}",
        job.readable_log()
    );
    // LAVA says where it gave up: the login prompt never came within the boot's 10 s.
    assert!(
        job.log.contains(
            "\"error_msg\": \"auto-login-action timed out after 10 seconds\", \"error_type\": \"Job\""
        ),
        "{}",
        job.readable_log()
    );
    assert!(job.cases("0_smoke").is_empty(), "{}", job.readable_log());
    // The hooks did what they were asked: reset (outlet 3 off, on), off at finalize.
    assert_eq!(
        hooks(&job),
        ["'rpi4-01' 'power' 'cycle'", "'rpi4-01' 'power' 'off'"],
        "{}",
        job.readable_log()
    );
    in_order(&lab.strip, &["outlet 3 off", "outlet 3 on", "outlet 3 off"]);
    assert!(
        lab.strip.matching("outlet 2").is_empty() && lab.strip.matching("board").is_empty(),
        "the board got power:\n{}",
        lab.strip.text()
    );

    // rtmd is unharmed: running, answering, switching, and LAVA's console client is gone.
    assert!(lab.daemon.proc.is_running(), "{}", lab.daemon.proc.text());
    assert_eq!(lab.power_status(), "rpi4-01: power off");
    eventually("LAVA's console client left", || {
        lab.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 0"
    });
    assert_eq!(
        ok_line(&lab.daemon.rtmctl(&["power", "on"])),
        "rpi4-01: power on"
    );
    assert_eq!(lab.power_status(), "rpi4-01: power on");
    println!(
        "job 6 (board never powers up): Incomplete after {:.2} s",
        job.elapsed.as_secs_f64()
    );
}

fn expected_commands(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every device dictionary of contrib/lava/, verbatim, renders with lava-server's device
/// types (and rtmd.jinja2) to device YAML that LAVA's schema accepts, with exactly the hooks
/// docs/lava.md promises.
#[test]
fn contrib_dictionaries_render_to_valid_device_yaml_with_the_rtmctl_hooks() {
    let dispatcher = Dispatcher::start();
    let power = |board: &str| {
        vec![
            ("hard_reset", format!("rtmctl --dut {board} power cycle")),
            ("power_off", format!("rtmctl --dut {board} power off")),
            ("power_on", format!("rtmctl --dut {board} power on")),
        ]
    };
    let render = |file: &str| {
        let text = std::fs::read_to_string(contrib().join(file)).unwrap();
        dispatcher.commands(&dispatcher.device(file.trim_end_matches(".jinja2"), &text))
    };
    let with = |mut base: Vec<(&'static str, String)>, more: &[(&'static str, &str)]| {
        base.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
        base.into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };

    assert_eq!(
        render("rpi4-rtmctl-console.jinja2"),
        with(
            power("rpi4-01"),
            &[("connect", "rtmctl --dut rpi4-01 console")]
        )
    );
    assert_eq!(
        render("rpi4-telnet.jinja2"),
        with(
            power("rpi4-01"),
            &[
                ("connections.uart0.connect", "telnet 127.0.0.1 2000"),
                ("connections.uart0.tags", "primary,telnet"),
            ]
        )
    );
    assert_eq!(
        render("rpi4-voltage-profiles.jinja2"),
        with(
            power("rpi4-lv"),
            &[
                ("connect", "rtmctl --dut rpi4-lv console"),
                (
                    "users.low_voltage.do",
                    "rtmctl --dut rpi4-lv power profile low"
                ),
                (
                    "users.low_voltage.undo",
                    "rtmctl --dut rpi4-lv power profile nominal"
                ),
                (
                    "users.high_voltage.do",
                    "rtmctl --dut rpi4-lv power profile high"
                ),
                (
                    "users.high_voltage.undo",
                    "rtmctl --dut rpi4-lv power profile nominal"
                ),
            ]
        )
    );
    assert_eq!(
        render("rtmd-board.jinja2"),
        with(
            power("board-01"),
            &[("connect", "rtmctl --dut board-01 console")]
        )
    );

    // rtmd.jinja2's other variables: telnet, profiles with another nominal, the lab's own
    // user command and hook kept, another rtmctl.
    let device = dispatcher.device(
        "all-variables",
        "{% extends 'rtmd.jinja2' %}\n\
         {% set rtmd_board = 'imx8-01' %}\n\
         {% set rtmctl = '/opt/rtmd/bin/rtmctl --bus session' %}\n\
         {% set rtmd_telnet = '127.0.0.1 2001' %}\n\
         {% set rtmd_profiles = ['low'] %}\n\
         {% set rtmd_nominal_profile = 'typical' %}\n\
         {% set user_commands = {'relay_on': {'do': 'relay-ctl 4 on'}} %}\n\
         {% set power_off_command = 'relay-ctl 4 off' %}\n",
    );
    let rtmctl = "/opt/rtmd/bin/rtmctl --bus session --dut imx8-01";
    assert_eq!(
        dispatcher.commands(&device),
        expected_commands(&[
            ("connections.uart0.connect", "telnet 127.0.0.1 2001"),
            ("connections.uart0.tags", "primary,telnet"),
            ("hard_reset", &format!("{rtmctl} power cycle")),
            ("power_off", "relay-ctl 4 off"),
            ("power_on", &format!("{rtmctl} power on")),
            (
                "users.low_voltage.do",
                &format!("{rtmctl} power profile low")
            ),
            (
                "users.low_voltage.undo",
                &format!("{rtmctl} power profile typical")
            ),
            ("users.relay_on.do", "relay-ctl 4 on"),
        ])
    );

    // Without rtmd_board rendering fails, naming what is missing.
    let out = dispatcher.render("no-board", "{% extends 'rtmd.jinja2' %}\n");
    assert!(
        !out.status.success() && text(&out.stderr).contains("rtmd_board_is_not_set"),
        "{}",
        text(&out.stderr)
    );
}

/// Job 1 through rtmd, and the same job with rtmd out of the way: power with Debian's egctl
/// straight to the strip, the console with socat straight from the board's pseudo-terminal.
/// Prints the figures (run it alone for quiet ones: `cargo test --test lava timing --
/// --nocapture`); asserts only that both jobs complete.
#[test]
fn timing_of_job_1_with_and_without_rtmd() {
    require("egctl");
    require("socat");
    require("unshare");
    const ROUNDS: u32 = 3;
    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        let (lab, job) = minimal_job_through_rtmd(10 + round);
        job.assert_complete();
        rows.push(("rtmd", job));
        drop(lab);

        let job = direct_minimal_job(20 + round);
        job.assert_complete();
        assert_eq!(job.cases("0_smoke").len(), 3, "{}", job.readable_log());
        rows.push(("direct", job));
    }
    println!("job 1, wall time of lava-run; LAVA's actions; the hooks:");
    let mut total = BTreeMap::<&str, f64>::new();
    for (how, job) in &rows {
        *total.entry(how).or_default() += job.elapsed.as_secs_f64() / f64::from(ROUNDS);
        let actions: Vec<String> = [
            ("connect", "2.1 connect-device"),
            ("boot", "2 minimal-boot"),
            ("test", "3 lava-test-retry"),
            ("finalize", "4 finalize"),
        ]
        .iter()
        .map(|(short, action)| {
            format!(
                "{short} {:.2}",
                job.action_seconds(action).unwrap_or(f64::NAN)
            )
        })
        .collect();
        let hooks: Vec<String> = job
            .hook_millis()
            .iter()
            .map(|(action, ms)| format!("{action} {ms:.0} ms"))
            .collect();
        println!(
            "  {how:6} {:.2} s ({} s; {})",
            job.elapsed.as_secs_f64(),
            actions.join(", "),
            hooks.join(", ")
        );
    }
    println!(
        "  mean: rtmd {:.2} s, direct {:.2} s",
        total["rtmd"], total["direct"]
    );
}

/// Job 1 without rtmd (see rpi4-01-direct.jinja2).
fn direct_minimal_job(id: u32) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let home = dir.path().join("home");
    let mut args = fast_board(dir.path(), "rpi4-01");
    args.extend(["--board-outlet", "2", "--password", "hackme"].map(str::to_string));
    let (strip, port) = strip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let egtab_home = dir.path().join("egtab-home");
    std::fs::create_dir_all(&egtab_home).unwrap();
    std::fs::write(
        egtab_home.join(".egtab"),
        format!("lab pms21 127.0.0.1 {port} hackme\n"),
    )
    .unwrap();
    let user_home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("current user in the user database")
        .dir;
    let dispatcher = Dispatcher::start();
    let values = vec![
        ("egtab_home", egtab_home.display().to_string()),
        ("user_home", user_home.display().to_string()),
        ("console", console.display().to_string()),
        ("home", home.display().to_string()),
        ("board", "rpi4-01".to_string()),
    ];
    let device = dispatcher.device("rpi4-01-direct", &fill("rpi4-01-direct.jinja2", &values));
    let job = dispatcher.run(id, &device, &fill("job-minimal.yaml", &values), "");
    in_order(&strip, &["outlet 2 off", "outlet 2 on", "outlet 2 off"]);
    in_order(&strip, &["board booting", "board shell", "board off"]);
    job
}
