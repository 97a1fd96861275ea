//! What the end-to-end tests of `relaymesh-sim` share.

use std::path::PathBuf;

/// The folder of the node binaries: beside this crate's binary (target/debug, or
/// CARGO_TARGET_DIR's); fails the test when they were not built.
pub fn node_bin_dir() -> PathBuf {
    let mut bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_relaymesh-sim"));
    bin_dir.pop();
    for bin in ["relaymesh-node", "relaymesh-control"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{} is missing: run `cargo build -p relaymesh-node -p relaymesh-control` first",
            bin_dir.join(bin).display()
        );
    }
    bin_dir
}
