//! Running the example programs as a user does: each built once per test process, then run
//! as its own process with a private config directory, no credentials and no API base from
//! the caller's environment, and a time limit.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every example, for tests that cover them all.
pub const EXAMPLES: &[&str] = &[
    "remove_object",
    "batch",
    "chat",
    "credits",
    "transfer_bench",
    "server_scale",
];

/// Builds `name` once per test process (`cargo build --example`, in the test binary's
/// profile) and returns its binary.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    // The test binary is <target>/<profile>/deps/<test>-<hash>; examples are built beside
    // `deps`, in <target>/<profile>/examples.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    if !built.contains(name) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut command = Command::new(env!("CARGO"));
        clean_cargo_env(&mut command);
        command
            .args(["build", "-q", "--manifest-path"])
            .arg(&manifest)
            .args(["--example", name]);
        if profile_dir.ends_with("release") {
            command.arg("--release");
        }
        let output = command.stdin(Stdio::null()).output().expect("cargo starts");
        assert!(
            output.status.success(),
            "building the {name} example failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        built.insert(name.to_string());
    }
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Cargo sets these for the test binary; passed on, they look like changed inputs to build
/// scripts that watch them (ring's does) and every build would redo half the tree.
fn clean_cargo_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_BIN_")
            || matches!(
                &*name,
                "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(&*name);
        }
    }
}

/// The example `name` as a command run from `cwd` with `config_dir` as its config
/// directory, and none of the caller's `NEMO_*` settings. Add arguments and environment,
/// then [`run`] it.
pub fn example(name: &str, cwd: &Path, config_dir: &Path) -> Command {
    let mut command = Command::new(example_binary(name));
    command
        .current_dir(cwd)
        .env("NEMO_CONFIG_DIR", config_dir)
        .env_remove("NEMO_TOKEN")
        .env_remove("NEMO_API_BASE")
        .env_remove("NEMO_API_URL")
        .env_remove("NEMO_WEB_URL")
        .env_remove("NEMO_CLIENT_ID");
    command
}

/// Runs `command` with `stdin` as its input, failing the test (not hanging it) after 300 s.
pub fn run(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    {
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(stdin.as_bytes());
    }
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the example did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `name -- args` from `cwd`, with its own config dir and no input.
pub fn run_example(name: &str, cwd: &Path, config_dir: &Path, args: &[&str]) -> Output {
    run(example(name, cwd, config_dir).args(args), "")
}

/// Stdout and stderr as text.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The names in `dir`, sorted (see [`super::file_names`]).
pub fn names_in(dir: &Path) -> Vec<String> {
    super::file_names(dir)
}
