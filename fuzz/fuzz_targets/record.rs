//! The `record` target: see sidecar_fuzz::record::check, whose broken invariant becomes a crash here.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = sidecar_fuzz::record::check(data) {
        panic!("{violation}");
    }
});
