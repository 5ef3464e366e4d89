//! Unit tests of the image store: naming rules, magic bytes, the sparse writer, and fetches
//! of local files through the whole pipeline.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use super::decode::Format;
use super::fetch::{image_name, parse_sha256};
use super::source::Source;
use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = ImagesConfig {
        dir: dir.path().join("images"),
        ca_file: None,
    };
    let store = Store::open(&config).unwrap();
    (dir, store)
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
    assert!(matches!(
        Source::parse("/no/such/file"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(Source::parse("/"), Err(Error::InvalidArgs(_))));
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

    let p = finish(
        s.fetch(
            &crate::access::Permit::for_tests(),
            src.to_str().unwrap(),
            None,
        )
        .unwrap(),
    );
    assert_eq!(p.state, JobState::Done, "{p:?}");
    assert_eq!(p.image.as_deref(), Some("pipe.img"));
    assert_eq!(p.done, std::fs::metadata(&src).unwrap().len());
    assert_eq!(std::fs::read(s.dir().join("pipe.img")).unwrap(), raw);
    let sha = p.sha256.unwrap();
    let again = finish(
        s.fetch(
            &crate::access::Permit::for_tests(),
            src.to_str().unwrap(),
            Some(&sha),
        )
        .unwrap(),
    );
    assert!(again.cached && again.state == JobState::Done);
    let list = s.list().unwrap();
    assert_eq!(list[0].sha256, sha);

    // Trailing garbage after the stream is refused, and leaves nothing.
    let mut bytes = std::fs::read(&src).unwrap();
    bytes.extend(b"garbage");
    let bad = tmp.path().join("trailing.img.gz");
    std::fs::write(&bad, bytes).unwrap();
    let p = finish(
        s.fetch(
            &crate::access::Permit::for_tests(),
            bad.to_str().unwrap(),
            None,
        )
        .unwrap(),
    );
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
fn open_removes_partial_files_of_a_crash() {
    let (tmp, s) = store();
    let partial = s.dir().join(".rtmd/partial/x.img.1.0");
    std::fs::write(&partial, b"half").unwrap();
    let _again = Store::open(&ImagesConfig {
        dir: tmp.path().join("images"),
        ca_file: None,
    })
    .unwrap();
    assert!(!partial.exists());
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
