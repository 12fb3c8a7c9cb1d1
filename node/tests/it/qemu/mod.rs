//! Shared helpers for the tests that drive NBD exports with Debian's
//! qemu-utils (`qemu-io`, `qemu-img`). A missing tool fails the test with
//! the package to install; it never skips.

use std::process::Command;

/// The Debian package with `qemu-io` and `qemu-img`.
pub const QEMU_PACKAGE: &str = "qemu-utils";

/// Runs a tool, failing the test if it is missing or fails; stdout+stderr.
pub fn run(tool: &str, args: &[String]) -> String {
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run {tool} ({e}): install the Debian package {QEMU_PACKAGE} \
             (apt-get install {QEMU_PACKAGE})"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed: {text}");
    text
}

/// Runs `qemu-io` commands on `uri`; fails on any I/O error or pattern
/// mismatch (qemu-io exits 0 on those).
pub fn qemu_io(uri: &str, commands: &[String]) -> String {
    let mut args = vec!["-f".into(), "raw".into(), uri.to_owned()];
    for c in commands {
        args.push("-c".into());
        args.push(c.clone());
    }
    let out = run("qemu-io", &args);
    for bad in ["Pattern verification failed", "failed", "error", "Error"] {
        assert!(!out.contains(bad), "qemu-io reported {bad:?}:\n{out}");
    }
    out
}

/// Deterministic pseudo-random bytes (splitmix64).
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}
