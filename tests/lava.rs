//! LAVA end to end: Debian's real dispatcher (`lava-run` from lava-dispatcher 2023.01) runs
//! jobs on a simulated board through rtmd, with the device dictionary's hooks all `rtmctl`
//! calls, as a lab would write them (docs/lava.md).
//!
//! `scripts/lava-setup` makes lava-run available (unpacked debs in `target/lava/`); the
//! jobs, device dictionaries and a small Python wrapper are in `tests/lava/`. Each test starts
//! its own bus, simulator (a strip or a lab supply whose output feeds a simulated board with a
//! real shell), rtmd, and an HTTP server for the dispatcher (the board's shell downloads the
//! test overlay from it), all on loopback.
//!
//! Timing figures are printed (`cargo test --test lava -- --nocapture`), never asserted.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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

fn rtmctl() -> String {
    bin("rtmctl").display().to_string()
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

    /// Renders the device dictionary (already filled in) to device YAML, as lava-server does.
    fn device(&self, name: &str, dictionary: &str) -> PathBuf {
        let dict = self.dir.path().join(format!("{name}.jinja2"));
        std::fs::write(&dict, dictionary).unwrap();
        let yaml = self.dir.path().join(format!("{name}.yaml"));
        let out = Command::new(PYTHON)
            .arg(files().join("lava.py"))
            .arg("render")
            .arg(lava_root())
            .arg(&dict)
            .arg(&yaml)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rendering {name}: {}",
            text(&out.stderr)
        );
        yaml
    }

    /// Runs one job with lava-run and waits for its end.
    fn run(&self, id: u32, device: &Path, job: &str) -> Job {
        let job_file = self.dir.path().join(format!("job-{id}.yaml"));
        std::fs::write(&job_file, job).unwrap();
        let log_path = self.dir.path().join(format!("job-{id}.log"));
        let output = self.dir.path().join(format!("output-{id}"));
        let start = Instant::now();
        let mut child = Command::new(PYTHON)
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
        let bus = Bus::start();
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console");
        let home = dir.path().join("home");
        let (strip, port) = strip(&[
            "--board-console",
            console.to_str().unwrap(),
            "--board-outlet",
            "2",
            "--board-name",
            "rpi4-01",
            "--autoboot-secs",
            "1",
            "--line-delay-ms",
            "1",
            "--board-home",
            home.to_str().unwrap(),
        ]);
        let config = format!(
            "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             outlet = 2\ncycle_off_ms = 100\n[console]\ndevice = \"{}\"\ntcp = \"127.0.0.1:0\"\n\
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

    fn values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("rtmctl", rtmctl()),
            ("bus", self.daemon.bus.clone()),
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

/// Runs job 1 (minimal boot, test shell over `rtmctl console`) on a fresh lab.
fn minimal_job_through_rtmd(id: u32) -> (StripLab, Job) {
    let lab = StripLab::start();
    let dispatcher = Dispatcher::start();
    let values = lab.values();
    let device = dispatcher.device("rpi4-01", &fill("rpi4-01.jinja2", &values));
    let job = dispatcher.run(id, &device, &fill("job-minimal.yaml", &values));
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
    let calls = job.calls();
    let rtmctl = format!("'{}'", rtmctl());
    assert!(
        calls.len() == 2
            && calls[0].contains(&rtmctl)
            && calls[0].ends_with("'power' 'cycle'")
            && calls[1].contains(&rtmctl)
            && calls[1].ends_with("'power' 'off'"),
        "hooks run: {calls:#?}"
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
    let mut values = lab.values();
    values.push(("telnet", lab.telnet()));
    let device = dispatcher.device("rpi4-01-telnet", &fill("rpi4-01-telnet.jinja2", &values));
    let job = dispatcher.run(2, &device, &fill("job-minimal.yaml", &values));
    assert_minimal_job(&lab, &job);
    assert!(
        job.log.contains(&format!(
            "Connecting to device using 'telnet {}'",
            lab.telnet()
        )),
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

#[test]
fn job_3_low_voltage_user_command_browns_the_board_out_and_undo_restores_nominal() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let psu = dir.path().join("psu");
    let console = dir.path().join("console");
    let home = dir.path().join("home");
    let (supply, _) = sim(&[
        "dpm86xx",
        "--pty",
        psu.to_str().unwrap(),
        "--protocol",
        "ascii",
        "--board-console",
        console.to_str().unwrap(),
        "--board-name",
        "rpi4-lv",
        "--autoboot-secs",
        "1",
        "--line-delay-ms",
        "1",
        "--board-home",
        home.to_str().unwrap(),
    ]);
    // The supply of config/demo.toml: low (4.6 V) is below the board's brown-out (4.75 V).
    let config = format!(
        "name = \"rpi4-lv\"\n[power]\nbackend = \"dpm86xx\"\nprotocol = \"ascii\"\ndevice = \"{}\"\n\
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

    let dispatcher = Dispatcher::start();
    let values = vec![
        ("rtmctl", rtmctl()),
        ("bus", daemon.bus.clone()),
        ("home", home.display().to_string()),
        ("board", "rpi4-lv".to_string()),
    ];
    let device = dispatcher.device("rpi4-lv", &fill("rpi4-lv.jinja2", &values));
    let job = dispatcher.run(3, &device, &fill("job-low-voltage.yaml", &values));
    job.assert_complete();
    job.assert_steps_passed();
    assert_eq!(
        job.cases("0_nominal"),
        BTreeMap::from([("shell-at-nominal".to_string(), "pass".to_string())]),
        "{}",
        job.readable_log()
    );

    // do, then power off at finalize, then undo at cleanup.
    let calls: Vec<String> = job
        .calls()
        .iter()
        .map(|c| c.rsplit(" '--dut' ").next().unwrap().to_string())
        .collect();
    assert_eq!(
        calls,
        [
            "'rpi4-lv' 'power' 'cycle'",
            "'rpi4-lv' 'power' 'profile' 'low'",
            "'rpi4-lv' 'power' 'off'",
            "'rpi4-lv' 'power' 'profile' 'nominal'",
        ],
        "{}",
        job.readable_log()
    );
    assert!(
        job.log.contains(">> rpi4-lv: profile low, 4.60 V"),
        "{}",
        job.readable_log()
    );
    assert!(
        job.log.contains(">> rpi4-lv: profile nominal, 5.10 V"),
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
        &supply,
        &[
            "set voltage 5.10",
            "output on at 5.10 V",
            "set voltage 4.60",
            "output off at 4.60 V",
            "set voltage 5.10",
        ],
    );
    in_order(
        &supply,
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
        ok_line(&daemon.rtmctl(&["power", "status"])),
        "rpi4-lv: power off, 0.00 V, 0.000 A (setpoint 5.10 V)"
    );
    assert_eq!(
        daemon.property("org.rtmd.Dut1.Power", "VoltageSetpoint"),
        "d 5.1"
    );
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
        ("rtmctl", rtmctl()),
        ("bus", bus.address.clone()),
        ("home", home.path().display().to_string()),
        ("board", "rpi4-01".to_string()),
    ];
    let device = dispatcher.device("rpi4-01", &fill("rpi4-01.jinja2", &values));
    let job = dispatcher.run(4, &device, &fill("job-minimal.yaml", &values));
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
    let (strip, port) = strip(&[
        "--board-console",
        console.to_str().unwrap(),
        "--board-outlet",
        "2",
        "--board-name",
        "rpi4-01",
        "--autoboot-secs",
        "1",
        "--line-delay-ms",
        "1",
        "--board-home",
        home.to_str().unwrap(),
        "--password",
        "hackme",
    ]);
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
    let job = dispatcher.run(id, &device, &fill("job-minimal.yaml", &values));
    in_order(&strip, &["outlet 2 off", "outlet 2 on", "outlet 2 off"]);
    in_order(&strip, &["board booting", "board shell", "board off"]);
    job
}
