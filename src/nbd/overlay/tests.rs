use super::*;
use std::io::Write;

fn base(dir: &Path, content: &[u8]) -> Arc<File> {
    let p = dir.join("base.img");
    let mut f = File::create(&p).unwrap();
    f.write_all(content).unwrap();
    Arc::new(File::open(&p).unwrap())
}

fn read(o: &Overlay, base: &File, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (start, len, allocated) in o.runs(offset, len) {
        let mut buf = vec![0u8; len as usize];
        let f: &File = if allocated { &o.file } else { base };
        read_full_at(f, &mut buf, start).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

#[test]
fn partial_writes_copy_up_and_the_base_stays() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..3 * CLUSTER + 100).map(|i| (i % 251) as u8).collect();
    let b = base(dir.path(), &content);
    let path = dir.path().join("o/base.img.cow");
    let o = Overlay::open(&path, b.clone(), content.len() as u64).unwrap();
    o.write(b"hello", CLUSTER + 10).unwrap();
    let mut expected = content.clone();
    expected[CLUSTER as usize + 10..CLUSTER as usize + 15].copy_from_slice(b"hello");
    assert_eq!(read(&o, &b, 0, content.len() as u64), expected);
    // The last, partial cluster.
    o.write(b"end", content.len() as u64 - 3).unwrap();
    let n = expected.len();
    expected[n - 3..].copy_from_slice(b"end");
    assert_eq!(read(&o, &b, 0, content.len() as u64), expected);
    assert_eq!(std::fs::read(dir.path().join("base.img")).unwrap(), content);
    assert_eq!(o.written(), 2 * CLUSTER);
}

#[test]
fn flushed_writes_survive_a_reopen_and_reset_discards_them() {
    let dir = tempfile::tempdir().unwrap();
    let content = vec![7u8; 10 * CLUSTER as usize];
    let b = base(dir.path(), &content);
    let path = dir.path().join("base.img.cow");
    {
        let o = Overlay::open(&path, b.clone(), content.len() as u64).unwrap();
        o.write(&[1u8; 4096], 2 * CLUSTER).unwrap();
        o.zero(5 * CLUSTER, CLUSTER + 7, false).unwrap();
        o.flush().unwrap();
    }
    let o = Overlay::open(&path, b.clone(), content.len() as u64).unwrap();
    let got = read(&o, &b, 0, content.len() as u64);
    assert_eq!(&got[2 * 4096..3 * 4096], &[1u8; 4096][..]);
    assert!(got[5 * 4096..6 * 4096 + 7].iter().all(|&x| x == 0));
    assert_eq!(got[6 * 4096 + 7], 7);
    o.reset().unwrap();
    assert_eq!(read(&o, &b, 0, content.len() as u64), content);
    drop(o);
    let o = Overlay::open(&path, b.clone(), content.len() as u64).unwrap();
    assert_eq!(o.written(), 0);
}

#[test]
fn an_overlay_of_another_base_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let b = base(dir.path(), &[1u8; 8192]);
    let path = dir.path().join("base.img.cow");
    {
        let o = Overlay::open(&path, b.clone(), 8192).unwrap();
        o.write(&[2u8; 10], 0).unwrap();
        o.flush().unwrap();
    }
    // The image is replaced (as a new fetch does): a new inode.
    std::fs::remove_file(dir.path().join("base.img")).unwrap();
    let b = base(dir.path(), &[3u8; 8192]);
    let o = Overlay::open(&path, b.clone(), 8192).unwrap();
    assert_eq!(o.written(), 0);
    assert_eq!(read(&o, &b, 0, 8192), vec![3u8; 8192]);
}
