use super::*;

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_both_flags() {
    let g = greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..18], &[0, 3]);
}

#[test]
fn requests_parse_and_bad_magic_is_reported() {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
    b[6..8].copy_from_slice(&1u16.to_be_bytes());
    b[8..16].copy_from_slice(&0xdead_beef_u64.to_be_bytes());
    b[16..24].copy_from_slice(&4096u64.to_be_bytes());
    b[24..28].copy_from_slice(&512u32.to_be_bytes());
    let r = parse_request(&b).unwrap();
    assert_eq!(
        r,
        Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0xdead_beef,
            offset: 4096,
            length: 512
        }
    );
    b[0] = 0;
    assert_eq!(parse_request(&b), Err(BadMagic(0x0060_9513)));
    assert_eq!(Command::from_wire(42), Command::Unknown(42));
}

fn info_payload(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

#[test]
fn info_requests_parse_and_malformed_ones_are_invalid() {
    let r = parse_info_request(&info_payload(b"rootfs.img", &[INFO_BLOCK_SIZE])).unwrap();
    assert_eq!(r.name, "rootfs.img");
    assert_eq!(r.infos, vec![INFO_BLOCK_SIZE]);
    // The name's length runs past the data.
    let mut bad = info_payload(b"x", &[]);
    bad[3] = 200;
    assert!(parse_info_request(&bad).is_err());
    // More information requests announced than sent.
    let mut short = info_payload(b"x", &[1, 2]);
    short.truncate(short.len() - 2);
    assert!(parse_info_request(&short).is_err());
    // Trailing bytes.
    let mut long = info_payload(b"x", &[]);
    long.push(0);
    assert!(parse_info_request(&long).is_err());
    // Not UTF-8, and NUL.
    assert!(parse_info_request(&info_payload(&[0xff], &[])).is_err());
    assert!(parse_info_request(&info_payload(b"a\0b", &[])).is_err());
    // Longer than the spec's 4096 bytes.
    assert!(parse_info_request(&info_payload(&[b'a'; 4097], &[])).is_err());
}

#[test]
fn meta_context_requests_parse() {
    let mut v = 0u32.to_be_bytes().to_vec();
    v.extend_from_slice(&2u32.to_be_bytes());
    for q in ["base:allocation", "qemu:dirty-bitmap:x"] {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    let r = parse_meta_context_request(&v).unwrap();
    assert_eq!(r.name, "");
    assert_eq!(r.queries, vec!["base:allocation", "qemu:dirty-bitmap:x"]);
    assert!(query_matches("base:allocation", false));
    assert!(query_matches("base:", true));
    assert!(!query_matches("base:", false));
    assert!(!query_matches("qemu:dirty-bitmap:x", true));
    // A huge query count with no data behind it fails without allocating for it.
    let mut huge = 0u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(parse_meta_context_request(&huge).is_err());
}

#[test]
fn replies_have_the_spec_layout() {
    let s = simple_reply(7, EPERM);
    assert_eq!(&s[0..4], &[0x67, 0x44, 0x66, 0x98]);
    assert_eq!(&s[4..8], &[0, 0, 0, 1]);
    assert_eq!(&s[8..16], &7u64.to_be_bytes());

    let h = offset_data_header(9, 4096, 512);
    assert_eq!(&h[0..4], &[0x66, 0x8e, 0x33, 0xef]);
    assert_eq!(&h[4..6], &REPLY_FLAG_DONE.to_be_bytes());
    assert_eq!(&h[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
    assert_eq!(&h[16..20], &520u32.to_be_bytes());
    assert_eq!(&h[20..28], &4096u64.to_be_bytes());

    let e = error_chunk(3, EINVAL, "no");
    assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
    assert_eq!(&e[16..20], &8u32.to_be_bytes());
    assert_eq!(&e[20..24], &EINVAL.to_be_bytes());
    assert_eq!(&e[24..26], &2u16.to_be_bytes());
    assert_eq!(&e[26..], b"no");

    let b = block_status_chunk(1, &[(4096, 0), (8192, STATE_HOLE | STATE_ZERO)]);
    assert_eq!(&b[16..20], &20u32.to_be_bytes());
    assert_eq!(&b[20..24], &BASE_ALLOCATION_ID.to_be_bytes());
    assert_eq!(&b[32..36], &8192u32.to_be_bytes());
    assert_eq!(&b[36..40], &3u32.to_be_bytes());

    let o = option_reply(OPT_GO, REP_ACK, 0);
    assert_eq!(&o[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    assert_eq!(export_name_reply(1, 1, false).len(), 134);
    assert_eq!(export_name_reply(1, 1, true).len(), 10);
}
