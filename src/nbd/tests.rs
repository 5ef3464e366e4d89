use super::*;

#[test]
fn uris_escape_names_and_bracket_ipv6() {
    let o = NbdOptions {
        listen: "127.0.0.1:10809".parse().unwrap(),
        uri_host: None,
        overlay_dir: PathBuf::from("/tmp"),
        claims: crate::images::Claims::new(),
        limits: Limits::default(),
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
    assert_eq!(
        uri(&named, named.listen, "a.img"),
        "nbd://dispatcher-7:10809/a.img"
    );
}

/// The server on its own, without D-Bus: `nbdinfo` sees the export as exported.
#[test]
fn nbdinfo_sees_an_export() {
    if std::process::Command::new("nbdinfo")
        .arg("--version")
        .output()
        .is_err()
    {
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
        claims: crate::images::Claims::new(),
        limits: Limits::default(),
    })
    .unwrap();
    assert!(nbd.is_alive(), "the watchdog's probe");
    let uri = nbd
        .export(
            &crate::access::Permit::for_tests(),
            "a.img",
            &image,
            Mode::Ro,
        )
        .unwrap();
    let out = std::process::Command::new("nbdinfo")
        .arg(&uri)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("export-size: 1048576"), "{text}");
    assert!(text.contains("is_read_only: true"), "{text}");
    assert!(text.contains("can_multi_conn: true"), "{text}");
    assert!(text.contains("base:allocation"), "{text}");
}

/// Two hundred FLUSHes waiting together cost two syncs: the first, and one that starts after
/// all the others arrived (they arrived while the first ran, so it cannot answer for them).
/// A failed sync answers for nobody else.
#[test]
fn flushes_waiting_together_share_one_sync() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let flushes = Arc::new(flush::Flushes::default());
    let arrived = Arc::new(AtomicUsize::new(0));
    let synced = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (flushes, arrived, synced) = (flushes.clone(), arrived.clone(), synced.clone());
            all.spawn(async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let seen = arrived.clone();
                flushes
                    .run(move || {
                        // The first sync lasts until every FLUSH has arrived.
                        while seen.load(Ordering::SeqCst) < 200 {
                            std::thread::yield_now();
                        }
                        synced.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            });
        }
        while let Some(done) = all.join_next().await {
            done.unwrap().unwrap();
        }
    });
    assert_eq!(synced.load(Ordering::SeqCst), 2);
    assert_eq!(flushes.syncs(), 2);
    // Alone afterwards: the last sync started before it arrived, so it syncs again; and
    // after a failed sync the next FLUSH syncs too.
    let failing = || Err(export::NbdError::new(proto::EIO, "disk gone"));
    assert!(runtime.block_on(flushes.run(failing)).is_err());
    runtime.block_on(flushes.run(|| Ok(()))).unwrap();
    assert_eq!(flushes.syncs(), 4);
}

/// A valid client: flags, structured replies, base:allocation, GO, then requests.
fn seed() -> Vec<u8> {
    fn option(v: &mut Vec<u8>, opt: u32, data: &[u8]) {
        v.extend_from_slice(&proto::OPTION_MAGIC.to_be_bytes());
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
    }
    fn request(v: &mut Vec<u8>, cmd: u16, flags: u16, offset: u64, len: u32) {
        v.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&cmd.to_be_bytes());
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        if cmd == 1 {
            v.extend(std::iter::repeat_n(0xab, len as usize));
        }
    }
    let mut v = vec![1];
    v.extend_from_slice(&3u32.to_be_bytes());
    option(&mut v, proto::OPT_STRUCTURED_REPLY, &[]);
    let mut meta = 4u32.to_be_bytes().to_vec();
    meta.extend_from_slice(b"fuzz");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    option(&mut v, proto::OPT_SET_META_CONTEXT, &meta);
    option(&mut v, proto::OPT_LIST, &[]);
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"fuzz");
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
    option(&mut v, proto::OPT_GO, &go);
    request(&mut v, 1, 0, 4000, 300);
    request(&mut v, 0, 0, 0, 8192);
    request(&mut v, 6, 2, 10_000, 5000);
    request(&mut v, 4, 1, 1 << 20, 1000);
    request(&mut v, 7, 0, 0, 1 << 20);
    request(&mut v, 5, 0, 4096, 4096);
    request(&mut v, 3, 0, 0, 0);
    v
}

/// The fuzz target's entry point over mutations of a valid session, as a cheap stand-in for
/// `cargo fuzz` in every test run (docs/nbd.md says how to run the real fuzzer).
#[test]
fn the_fuzz_entry_point_survives_mutated_sessions() {
    let seed = seed();
    // The unmutated session must get all the way through, in both modes.
    assert_eq!(fuzz::server(&seed), 7, "cow: all seven requests are valid");
    let mut ro = seed.clone();
    ro[0] = 0;
    assert_eq!(
        fuzz::server(&ro),
        4,
        "ro: writes, trims and zeroes are refused"
    );
    let mut mutator = crate::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
    for _ in 0..1500 {
        let mut input = seed.clone();
        mutator.mutate(&mut input, 8, &[]);
        let _ = fuzz::server(&input);
    }
}
