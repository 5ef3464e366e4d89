//! Unit tests of the image store: naming rules, sources and their decoding, magic bytes, the
//! sparse writer, fetches of local files through the whole pipeline, and the partial files'
//! locks.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use super::decode::Format;
use super::fetch::{self, image_name, parse_sha256};
use super::source::Source;
use super::*;

/// A store in `tmp/images`, fetching local files from anywhere in `tmp`.
fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config(dir.path())).unwrap();
    (dir, store)
}

fn config(tmp: &Path) -> ImagesConfig {
    ImagesConfig {
        dir: tmp.join("images"),
        ca_file: None,
        local_dirs: vec![tmp.to_path_buf()],
    }
}

/// A fetch by root (uid 0): what the D-Bus face does for a caller the bus says is root.
fn fetch_as_root(s: &Store, source: &Path, sha256: Option<&str>) -> FetchJob {
    fetch::start(s, source.to_str().unwrap(), sha256, Some(0)).unwrap()
}

fn finish(job: FetchJob) -> Progress {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(job.finished())
}

#[test]
fn magic_bytes_decide_the_format() {
    assert_eq!(
        Format::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
        Format::Xz
    );
    assert_eq!(Format::detect(&[0x1f, 0x8b, 8]), Format::Gzip);
    assert_eq!(Format::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
    assert_eq!(Format::detect(b"BZh91AY"), Format::Bzip2);
    assert_eq!(Format::detect(b"BZh0"), Format::Raw);
    assert_eq!(Format::detect(b""), Format::Raw);
}

#[test]
fn image_names_lose_the_compression_suffix() {
    let name = |s: &str| image_name(&Source::Http(s.to_string()));
    assert_eq!(name("http://h/a/rootfs.img.xz").unwrap(), "rootfs.img");
    assert_eq!(
        name("https://h/x/disk.IMG.GZ?token=1#f").unwrap(),
        "disk.IMG"
    );
    assert_eq!(name("http://h/my%20disk.img.zst").unwrap(), "my disk.img");
    assert_eq!(name("http://h/raw.img").unwrap(), "raw.img");
    assert!(matches!(name("http://h/"), Err(Error::InvalidArgs(_))));
    assert!(matches!(name("http://h/.xz"), Err(Error::InvalidArgs(_))));
    assert!(matches!(
        name("http://h/.hidden.img"),
        Err(Error::InvalidArgs(_))
    ));
    assert!(matches!(
        name("http://h/..%2Fx.img"),
        Err(Error::InvalidArgs(_))
    ));
}

#[test]
fn sources_and_checksums_are_checked_before_a_job() {
    assert!(matches!(
        Source::parse("ftp://h/x"),
        Err(Error::InvalidArgs(_))
    ));
    assert!(matches!(
        Source::parse("rel/x.img"),
        Err(Error::InvalidArgs(_))
    ));
    // Parsing is lexical; a missing file is found missing when it is opened.
    assert_eq!(
        Source::parse("/no/such/file").unwrap(),
        Source::File("/no/such/file".into())
    );
    let (tmp, s) = store();
    let missing = tmp.path().join("missing.img");
    assert!(matches!(
        fetch::start(&s, missing.to_str().unwrap(), None, Some(0)),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        image_name(&Source::parse("/").unwrap()),
        Err(Error::InvalidArgs(_))
    ));
    assert!(matches!(
        Source::parse("http:///x"),
        Err(Error::InvalidArgs(_))
    ));
    assert_eq!(
        Source::parse("HTTPS://h/x").unwrap(),
        Source::Http("HTTPS://h/x".to_string())
    );
    assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    assert!(parse_sha256("abc").is_err());
    assert!(parse_sha256(&"g".repeat(64)).is_err());
}

#[test]
fn resolve_stays_inside_the_folder() {
    let (tmp, s) = store();
    std::fs::create_dir(s.dir().join("nightly")).unwrap();
    std::fs::write(s.dir().join("nightly/rpi4.img"), b"x").unwrap();
    std::fs::write(tmp.path().join("outside.img"), b"x").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.img"), s.dir().join("out.img")).unwrap();
    std::os::unix::fs::symlink("nightly/rpi4.img", s.dir().join("latest.img")).unwrap();

    let (path, name) = s.resolve("nightly/./rpi4.img").unwrap();
    assert_eq!(
        (path.clone(), name.as_str()),
        (s.dir().join("nightly/rpi4.img"), "nightly/rpi4.img")
    );
    assert_eq!(
        s.resolve(path.to_str().unwrap()).unwrap().1,
        "nightly/rpi4.img"
    );
    assert_eq!(s.resolve("latest.img").unwrap().1, "nightly/rpi4.img");
    assert!(matches!(s.resolve(""), Err(Error::InvalidArgs(_))));
    assert!(matches!(
        s.resolve("../outside.img"),
        Err(Error::Outside(_))
    ));
    assert!(matches!(
        s.resolve("nightly/../../outside.img"),
        Err(Error::Outside(_))
    ));
    assert!(matches!(s.resolve("out.img"), Err(Error::Outside(_))));
    let abs = tmp.path().join("outside.img");
    assert!(matches!(
        s.resolve(abs.to_str().unwrap()),
        Err(Error::Outside(_))
    ));
    assert!(matches!(
        s.resolve(".rtmd/cache"),
        Err(Error::InvalidArgs(_))
    ));
    assert!(matches!(s.resolve("nightly"), Err(Error::InvalidArgs(_))));
    assert!(matches!(s.resolve("missing.img"), Err(Error::NotFound(_))));

    // A symlink inside is removed itself, not its target.
    s.remove(&crate::access::Permit::for_tests(), "latest.img")
        .unwrap();
    assert!(s.dir().join("nightly/rpi4.img").exists());
    assert!(matches!(
        s.remove(&crate::access::Permit::for_tests(), "out.img"),
        Err(Error::Outside(_))
    ));
    assert!(tmp.path().join("outside.img").exists());
    let names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["nightly/rpi4.img"]);
}

#[test]
fn zero_blocks_become_holes() {
    let (_tmp, s) = store();
    let path = s.dir().join("sparse.img");
    let mut w = sparse::SparseWriter::new(std::fs::File::create(&path).unwrap());
    let mut data = vec![0u8; 8 << 20];
    data[100] = 1;
    data[(4 << 20) + 5] = 2;
    w.write(&data).unwrap();
    w.write(&[0u8; 10]).unwrap();
    let (_, len) = w.finish().unwrap();
    assert_eq!(len, (8 << 20) + 10);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), len);
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "{} allocated",
        meta.blocks() * 512
    );
    let back = std::fs::read(&path).unwrap();
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(sparse::is_zero(&[0; 4096]) && !sparse::is_zero(&[0, 0, 1]));
}

#[test]
fn a_gzip_file_through_the_pipeline_then_from_the_cache() {
    let (tmp, s) = store();
    let mut raw: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    raw.extend(vec![0u8; 3 << 20]);
    let src = tmp.path().join("pipe.img.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    std::fs::write(&src, enc.finish().unwrap()).unwrap();

    let p = finish(fetch_as_root(&s, &src, None));
    assert_eq!(p.state, JobState::Done, "{p:?}");
    assert_eq!(p.image.as_deref(), Some("pipe.img"));
    assert_eq!(p.done, std::fs::metadata(&src).unwrap().len());
    assert_eq!(std::fs::read(s.dir().join("pipe.img")).unwrap(), raw);
    let sha = p.sha256.unwrap();
    let again = finish(fetch_as_root(&s, &src, Some(&sha)));
    assert!(again.cached && again.state == JobState::Done);
    let list = s.list().unwrap();
    assert_eq!(list[0].sha256, sha);

    // Trailing garbage after the stream is refused, and leaves nothing.
    let mut bytes = std::fs::read(&src).unwrap();
    bytes.extend(b"garbage");
    let bad = tmp.path().join("trailing.img.gz");
    std::fs::write(&bad, bytes).unwrap();
    let p = finish(fetch_as_root(&s, &bad, None));
    assert_eq!(p.state, JobState::Failed, "{p:?}");
    assert_eq!(p.error_kind, Some("corrupt"));
    assert!(!s.dir().join("trailing.img").exists());
    assert_eq!(
        std::fs::read_dir(s.dir().join(".rtmd/partial"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn open_removes_only_the_partial_files_nobody_holds() {
    use nix::fcntl::{Flock, FlockArg};
    let (tmp, s) = store();
    let crashed = s.dir().join(".rtmd/partial/1.0.x.img");
    std::fs::write(&crashed, b"half").unwrap();
    // A running fetch (of another rtmd on the same folder) holds its file's lock.
    let running = s.dir().join(".rtmd/partial/2.0.y.img");
    std::fs::write(&running, b"in progress").unwrap();
    let held = Flock::lock(
        std::fs::File::open(&running).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let _again = Store::open(&config(tmp.path())).unwrap();
    assert!(!crashed.exists());
    assert!(running.exists(), "a held partial file was removed");
    drop(held);
    let _third = Store::open(&config(tmp.path())).unwrap();
    assert!(!running.exists());
}

#[test]
fn a_partial_file_is_locked_while_it_exists() {
    let (tmp, s) = store();
    let partial_dir = s.dir().join(".rtmd/partial");
    let (partial, _held) = fetch::tests_partial(&partial_dir, "nightly/rpi4.img");
    let name = partial.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with(&format!("{}.", std::process::id()))
            && name.ends_with(".nightly_rpi4.img"),
        "{name}"
    );
    // Another store opening the folder leaves it: its lock is taken.
    let _other = Store::open(&config(tmp.path())).unwrap();
    assert!(partial.exists());
}

#[test]
fn escapes_decode_once_and_strictly() {
    let name = |s: &str| Source::parse(s).and_then(|src| image_name(&src));
    // The two sources that once took rtmd down: refused, with a reason.
    let e = name("http://127.0.0.1:9/x%aé.img").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgs(m) if m.contains("not a valid URL")),
        "{e}"
    );
    let e = name("http://127.0.0.1:9/%00.img").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgs(m) if m.contains("control")),
        "{e}"
    );
    // Escapes that decode to bytes that are not UTF-8, or to control characters.
    for bad in [
        "http://h/x%e9.img",
        "http://h/x%c3.img",
        "http://h/a%0ab.img",
        "http://h/a%7f.img",
        "http://h/%2e%2e",
        "http://h/%2e.img",
        "file:///tmp/a%00b.img",
        "file:///tmp/a%0ab.img",
        "file://otherhost/tmp/a.img",
        "/tmp/a\nb.img",
        "http://h/a\u{1}.img",
    ] {
        assert!(
            matches!(name(bad), Err(Error::InvalidArgs(_))),
            "{bad:?}: {:?}",
            name(bad)
        );
    }
    // Good escapes decode, in URLs and file:// URLs (plain paths are taken as they are).
    assert_eq!(name("http://h/a%C3%A9%20b.img.xz").unwrap(), "aé b.img");
    assert_eq!(name("http://h/100%25.img").unwrap(), "100%.img");
    // Malformed escapes and raw non-ASCII are not guessed at.
    for bad in [
        "http://h/x%zz.img",
        "http://h/x%a",
        "http://h/é.img",
        "file:///srv/%g0.img",
    ] {
        assert!(
            matches!(name(bad), Err(Error::InvalidArgs(m)) if m.contains("not a valid URL")),
            "{bad}"
        );
    }
    assert_eq!(
        Source::parse("file:///srv/my%20disk.img?x#y").unwrap(),
        Source::File("/srv/my disk.img".into())
    );
    assert_eq!(
        Source::parse("FILE://localhost/srv/a.img").unwrap(),
        Source::File("/srv/a.img".into())
    );
    assert_eq!(
        Source::parse("/srv/my%20disk.img").unwrap(),
        Source::File("/srv/my%20disk.img".into())
    );
    // Long names: a component longer than a file name may be is refused.
    let long = format!("http://h/{}.img", "a".repeat(300));
    assert!(matches!(name(&long), Err(Error::InvalidArgs(_))));
    let huge = format!("http://h/{}", "a".repeat(source::MAX_SOURCE));
    assert!(matches!(Source::parse(&huge), Err(Error::InvalidArgs(_))));
}

#[test]
fn image_names_with_control_characters_are_refused() {
    let (_tmp, s) = store();
    // A file put in by hand with such a name is not listed either.
    std::fs::write(s.dir().join("x\n.img"), b"x").unwrap();
    std::fs::write(s.dir().join("ok.img"), b"x").unwrap();
    let names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["ok.img"]);
    for bad in ["a\0b.img", "x\n.img", "nightly/\u{1b}[2J.img"] {
        assert!(
            matches!(s.resolve(bad), Err(Error::InvalidArgs(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_fuzz_entry_point_survives_mutated_sources() {
    for seed in super::fuzz::SEEDS {
        super::fuzz::source(seed.as_bytes()).unwrap();
    }
    assert_eq!(
        super::fuzz::source(b"http://h/rootfs.img.xz").unwrap(),
        Some("rootfs.img".to_string())
    );
    super::fuzz::mutations(4000).unwrap();
}

#[test]
fn a_full_disk_is_no_space() {
    // /dev/full fails every write with ENOSPC, as a full filesystem does.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut w = sparse::SparseWriter::new(full);
    let e = w.write(&[1u8; 8192]).unwrap_err();
    let err = Error::io("rootfs.img", &e);
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(err.kind(), "no-space");
}
