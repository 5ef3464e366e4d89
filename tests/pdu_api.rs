//! rtmd's pdudaemon-compatible API: the HTTP requests `pduclient -H` sends (made with curl)
//! and pdudaemon's legacy TCP line (made with socat), switching the simulated strip.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn curl(url: &str) -> (String, String) {
    require("curl");
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = text(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.trim().to_string())
}

fn legacy(port: u16, line: &str) -> String {
    require("socat");
    let mut child = Command::new("socat")
        .args(["-t", "30", "-", &format!("TCP:127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Like pduclient: the line without a newline, then wait for the answer.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), line.as_bytes()).unwrap();
    text(&child.wait_with_output().unwrap().stdout)
}

#[test]
fn pdudaemon_requests_switch_the_board() {
    let bus = Bus::start();
    let (strip, strip_port) = strip(&[]);
    let (http, tcp) = (free_port(), free_port());
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {strip_port}\n\
         outlet = 3\ncycle_off_ms = 10\n[pdudaemon_api]\nlisten = \"127.0.0.1:{http}\"\n\
         listen_tcp = \"127.0.0.1:{tcp}\"\nhostname = \"lab-pdu\"\nport = 3\n"
    );
    let mut d = Daemon::start(&bus, &config);
    let base = format!("http://127.0.0.1:{http}/power/control");

    assert_eq!(
        curl(&format!("{base}/on?hostname=lab-pdu&port=3")),
        ("200".into(), "OK - accepted request".into())
    );
    assert_eq!(strip.matching("outlet"), ["outlet 3 on"]);
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "status"])),
        "rpi4-01: power on"
    );
    strip.clear();
    assert_eq!(
        curl(&format!("{base}/reboot?hostname=lab-pdu&port=3&delay=0.05")).0,
        "200"
    );
    assert_eq!(strip.matching("outlet"), ["outlet 3 off", "outlet 3 on"]);
    strip.clear();
    assert_eq!(legacy(tcp, "lab-pdu 3 off"), "ack\n");
    assert_eq!(strip.matching("outlet"), ["outlet 3 off"]);

    // Bad requests: a 4xx with a reason, nothing switched, the daemon unharmed.
    strip.clear();
    let (code, body) = curl(&format!("{base}/on?hostname=other-pdu&port=3"));
    assert_eq!(code, "404");
    assert!(
        body.contains("this rtmd serves lab-pdu port 3 only"),
        "{body}"
    );
    let (code, body) = curl(&format!("{base}/on?hostname=lab-pdu&port=4"));
    assert_eq!(
        (code.as_str(), body.contains("no PDU lab-pdu port 4")),
        ("404", true),
        "{body}"
    );
    let (code, body) = curl(&format!("{base}/explode?hostname=lab-pdu&port=3"));
    assert_eq!(
        (code.as_str(), body.contains("unknown command")),
        ("400", true),
        "{body}"
    );
    let (code, _) = curl(&format!("{base}/on?hostname=lab-pdu&port=abc"));
    assert_eq!(code, "400");
    let (code, _) = curl(&format!("http://127.0.0.1:{http}/"));
    assert_eq!(code, "404");
    assert_eq!(legacy(tcp, "lab-pdu 3 explode"), "nack\n");
    assert_eq!(legacy(tcp, "garbage"), "nack\n");
    assert!(strip.matching("outlet").is_empty(), "{}", strip.text());
    assert!(d.proc.is_running());
}

#[test]
fn a_pdudaemon_api_without_power_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(
        &path,
        "name = \"b\"\n[pdudaemon_api]\nlisten = \"127.0.0.1:16421\"\n",
    )
    .unwrap();
    let out = rtmd_check(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("[pdudaemon_api] needs a [power] section"),
        "{}",
        text(&out.stderr)
    );
}
