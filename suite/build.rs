//! Tells the shared test helpers (../tests/support/) that they are built in this package: the
//! `mock` module, which needs wiremock, is compiled here only; and where nemo-video's own
//! directory is and which version it has, for the tests that read its files or check the
//! version it sends.
use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(nemo_suite)");
    println!("cargo::rustc-cfg=nemo_suite");
    let suite = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let crate_dir = Path::new(&suite)
        .parent()
        .expect("suite/ is inside the nemo-video repository");
    println!("cargo::rustc-env=NEMO_VIDEO_DIR={}", crate_dir.display());
    let manifest = crate_dir.join("Cargo.toml");
    println!("cargo::rerun-if-changed={}", manifest.display());
    let text = std::fs::read_to_string(&manifest).expect("read nemo-video's Cargo.toml");
    // The first `version = "..."` is the [package] one (it comes before any dependency table).
    let version = text
        .lines()
        .find_map(|line| line.strip_prefix("version = \"")?.strip_suffix('"'))
        .expect("nemo-video's Cargo.toml has a version line");
    println!("cargo::rustc-env=NEMO_VIDEO_VERSION={version}");
}
