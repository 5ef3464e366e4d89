//! Tests of `log`.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn stamps_each_line_once_even_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = ConsoleLog::open(dir.path(), 1 << 20, 2).unwrap();
    log.write(b"U-Boot\r\nHit any", at(0)).unwrap();
    log.write(b" key\r\n", at(1)).unwrap();
    log.note("console device lost", at(2)).unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        text,
        "1970-01-01T00:00:00.000Z U-Boot\r\n1970-01-01T00:00:00.000Z Hit any key\r\n\
         1970-01-01T00:00:02.000Z [rtmd] console device lost\n"
    );
}

#[test]
fn rotates_by_size_and_keeps_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = ConsoleLog::open(dir.path(), 100, 2).unwrap();
    for i in 0..30 {
        log.write(format!("line {i}\n").as_bytes(), at(0)).unwrap();
    }
    let main = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert!(main.ends_with("line 29\n"));
    assert!(dir.path().join("console.log.1").exists());
    assert!(dir.path().join("console.log.2").exists());
    assert!(!dir.path().join("console.log.3").exists());
    for f in ["console.log", "console.log.1", "console.log.2"] {
        assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() <= 100 + 40);
    }
}
