//! The built `sidecar-operator` binary, for the tests that run it as a user would.

use std::path::{Path, PathBuf};

/// `SIDECAR_E2E_OPERATOR_BIN`, or the debug build in the target directory. Fails the test, saying
/// how to build it, when it is not there.
pub fn operator_binary() -> PathBuf {
    let binary = std::env::var_os("SIDECAR_E2E_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/sidecar-operator")
        });
    assert!(
        binary.exists(),
        "{} does not exist: build it first (`cargo build -p sidecar-operator`; `just e2e` does), \
         or set SIDECAR_E2E_OPERATOR_BIN",
        binary.display()
    );
    binary
}
