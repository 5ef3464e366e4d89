//! The pdudaemon API's request reader and parsers (HTTP head and legacy line) on arbitrary
//! peer bytes (see rtmd::pdu::fuzz). Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run pdu_request
//! corpus/pdu_request seeds/pdu_request` (docs/config.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = rtmd::pdu::fuzz::request(data) {
        panic!("{broken}");
    }
});
