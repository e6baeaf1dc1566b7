//! Replays every checked-in seed of every fuzz target (`fuzz/seeds/<target>/`) through the
//! target's check, so the checks keep compiling and keep holding on stable, where CI runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use sidecar_fuzz::engine::{Case, Earlier, Ending, check_case};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_passes_its_targets_check() {
    for (target, check) in sidecar_fuzz::TARGETS {
        let files = seeds(target);
        assert!(
            files.len() >= 3,
            "fuzz/seeds/{target} holds only {} seeds",
            files.len()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if let Err(violation) = check(&data) {
                panic!("{}: {violation}", file.display());
            }
        }
    }
}

/// The engine seeds are bytes that only mean something through the `Case` shapes; this keeps
/// them meaningful as the shapes change: they must still reach every ending.
#[test]
fn the_engine_seeds_reach_every_ending() {
    let mut endings = Vec::new();
    for file in seeds("engine") {
        let data = std::fs::read(&file).unwrap();
        let case = Case::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        endings.push(check_case(&case).unwrap());
    }
    for ending in [Ending::Injected, Ending::Untouched, Ending::Refused] {
        assert!(
            endings.contains(&ending),
            "no engine seed ends {ending:?}: {endings:?}"
        );
    }
}

/// Beyond the seeds: a few thousand cases from a fixed pseudo-random stream, a poor fuzzer that
/// runs on stable in a second.
#[test]
fn the_engine_check_holds_on_pseudo_random_cases() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64: fixed, so a failure reproduces.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..2000 {
        let len = 16 + (next() % 512) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Err(violation) = sidecar_fuzz::engine::check(&data) {
            panic!("case {case} ({data:?}): {violation}");
        }
    }
}

/// Not a check: prints how each engine input of a directory ends, to pick new seeds from a grown
/// corpus (docs/fuzzing.md):
/// `SIDECAR_FUZZ_CLASSIFY=fuzz/corpus/engine cargo test -p sidecar-fuzz --test seeds classify -- --ignored --nocapture`
#[test]
#[ignore = "a tool, run by hand"]
fn classify() {
    let dir = std::env::var("SIDECAR_FUZZ_CLASSIFY").expect("SIDECAR_FUZZ_CLASSIFY names a directory");
    // Relative to the repository root (tests run in the crate's directory).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(&data)) else {
            continue;
        };
        let earlier = match &case.earlier {
            Earlier::Nothing => "nothing".to_owned(),
            Earlier::Rendered(policies) => format!("rendered-{}", policies.len()),
            Earlier::Written(_) => "written".to_owned(),
        };
        let ending = check_case(&case).map_or_else(|v| format!("VIOLATION {v}"), |e| format!("{e:?}"));
        println!(
            "{ending} policies={} earlier={earlier} bytes={} {}",
            case.policies.len(),
            data.len(),
            path.display()
        );
    }
}
