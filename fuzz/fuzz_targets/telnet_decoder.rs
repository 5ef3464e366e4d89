//! The console's telnet decoder on arbitrary client bytes, cut into reads where the input
//! says (see rtmd::console::fuzz). Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run telnet_decoder`
//! (docs/config.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtmd::console::fuzz::telnet_decoder(data);
});
