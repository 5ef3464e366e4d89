//! The NBD server's handshake, request parser and export operations on arbitrary client
//! bytes (see rtmd::nbd::fuzz). Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run nbd_server` (docs/nbd.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtmd::nbd::fuzz::server(data);
});
