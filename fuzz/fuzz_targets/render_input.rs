//! The `render_input` target: see sidecar_fuzz::render_input::check, whose broken invariant becomes a crash here.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = sidecar_fuzz::render_input::check(data) {
        panic!("{violation}");
    }
});
