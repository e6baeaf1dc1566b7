//! The `engine` target: see sidecar_fuzz::engine::check, whose broken invariant becomes a crash here.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = sidecar_fuzz::engine::check(data) {
        panic!("{violation}");
    }
});
