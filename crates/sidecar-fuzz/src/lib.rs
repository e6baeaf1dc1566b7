//! The checks behind the fuzz targets in `fuzz/` (cargo-fuzz, nightly only). Each target is one
//! line that hands libFuzzer's bytes to a `check` here; the checks live in this stable crate so
//! that `cargo test --workspace` builds them and replays the checked-in seeds
//! (`fuzz/seeds/<target>/`) through them: CI has no nightly, and a check that only nightly
//! compiles would rot.
//!
//! A check returns the broken invariant as an `Err` instead of panicking, so that the seed test
//! can name the seed; the fuzz target turns it into a panic, which libFuzzer reports as a crash.
//! A panic inside the engine or the reader is a crash either way.

pub mod engine;
pub mod record;
pub mod render_input;

/// An invariant the input broke, in words.
pub type Violation = String;

/// A target's check of one input.
pub type Check = fn(&[u8]) -> Result<(), Violation>;

/// The fuzz targets, by the name of their file in `fuzz/fuzz_targets/` and their seed directory.
pub const TARGETS: [(&str, Check); 3] = [
    ("record", record::check),
    ("render_input", render_input::check),
    ("engine", engine::check),
];

/// `Err` with `what` and where `left` and `right` first differ, when they do.
fn same<T: PartialEq + std::fmt::Debug>(what: &str, left: &T, right: &T) -> Result<(), Violation> {
    if left == right {
        return Ok(());
    }
    // Deployments print as hundreds of lines: show the first differing one, with context.
    let (left, right) = (format!("{left:#?}"), format!("{right:#?}"));
    let (left, right): (Vec<&str>, Vec<&str>) = (left.lines().collect(), right.lines().collect());
    let first = left.iter().zip(&right).take_while(|(l, r)| l == r).count();
    let around = |lines: &[&str]| lines[first.saturating_sub(6)..lines.len().min(first + 6)].join("\n");
    Err(format!(
        "{what}, from line {}:\n--- left\n{}\n--- right\n{}",
        first + 1,
        around(&left),
        around(&right)
    ))
}
