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

#[test]
fn a_line_without_end_rotates_mid_line_past_the_slack() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = ConsoleLog::open(dir.path(), 4096, 4).unwrap();
    // 250 KB of output without one newline, in serial-read-sized pieces.
    let piece = vec![b'x'; 1000];
    for _ in 0..250 {
        log.write(&piece, at(0)).unwrap();
    }
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let files = [
        "console.log.3",
        "console.log.2",
        "console.log.1",
        "console.log",
    ];
    let stamp = "1970-01-01T00:00:00.000Z ";
    let note = format!("\n{stamp}[rtmd] {CUT_NOTE}\n");
    let mut xs = 0;
    for (i, f) in files.iter().enumerate() {
        let text = read(f);
        let limit = 4096 + MID_LINE_SLACK as usize + note.len();
        assert!(text.len() <= limit, "{f} is {} bytes", text.len());
        // Each file starts the line (again) with a timestamp; all but the newest end with
        // the note that the line was cut.
        assert!(text.starts_with(stamp), "{f}");
        let body = if i < files.len() - 1 {
            assert!(text.ends_with(&note), "{f}");
            &text[stamp.len()..text.len() - note.len()]
        } else {
            &text[stamp.len()..]
        };
        assert!(body.bytes().all(|b| b == b'x'), "{f}");
        xs += body.len();
    }
    assert!(!dir.path().join("console.log.4").exists());
    assert_eq!(xs, 250 * 1000, "bytes lost or repeated at the cuts");
}
