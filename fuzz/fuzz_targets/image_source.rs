//! Fetch sources and image names on arbitrary caller text (see rtmd::images::fuzz). Run:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run image_source corpus/image_source seeds/image_source`
//! (docs/images.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = rtmd::images::fuzz::source(data) {
        panic!("{broken}");
    }
});
