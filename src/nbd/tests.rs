use super::*;

#[test]
fn uris_escape_names_and_bracket_ipv6() {
    let o = NbdOptions {
        listen: "127.0.0.1:10809".parse().unwrap(),
        uri_host: None,
        overlay_dir: PathBuf::from("/tmp"),
    };
    assert_eq!(
        uri(&o, o.listen, "nightly/rpi 4.img"),
        "nbd://127.0.0.1:10809/nightly/rpi%204.img"
    );
    assert_eq!(
        uri(&o, "[::1]:10809".parse().unwrap(), "a.img"),
        "nbd://[::1]:10809/a.img"
    );
    let named = NbdOptions {
        uri_host: Some("dispatcher-7".to_string()),
        ..o
    };
    assert_eq!(uri(&named, named.listen, "a.img"), "nbd://dispatcher-7:10809/a.img");
}

/// The server on its own, without D-Bus: `nbdinfo` sees the export as exported.
#[test]
fn nbdinfo_sees_an_export() {
    if std::process::Command::new("nbdinfo").arg("--version").output().is_err() {
        eprintln!("nbdinfo missing (scripts/test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.img");
    std::fs::write(&image, vec![5u8; 1 << 20]).unwrap();
    let nbd = Nbd::start(NbdOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        uri_host: None,
        overlay_dir: dir.path().join("overlays"),
    })
    .unwrap();
    let uri = nbd.export("a.img", &image, Mode::Ro).unwrap();
    let out = std::process::Command::new("nbdinfo")
        .arg(&uri)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("export-size: 1048576"), "{text}");
    assert!(text.contains("is_read_only: true"), "{text}");
    assert!(text.contains("can_multi_conn: true"), "{text}");
    assert!(text.contains("base:allocation"), "{text}");
}
