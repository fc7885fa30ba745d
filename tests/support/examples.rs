//! Running the example programs as a user does: each built once per test process, then run
//! as its own process with a private config directory, no credentials and no API base from
//! the caller's environment, and a time limit. [`SimulatorProcess`] runs the simulator
//! example on fixed ports, as a service beside the program under test.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
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
    "simulator",
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
        let manifest = super::crate_dir().join("Cargo.toml");
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

/// The simulator example running as its own process, on a fixed port (the CDN and web origins
/// on the next two); killed when dropped, if still running.
pub struct SimulatorProcess {
    child: Child,
    /// The API port; the CDN is on `port + 1`, the web site on `port + 2`.
    pub port: u16,
    /// `http://127.0.0.1:<port>`, as the process printed it.
    pub base_url: String,
    /// Its stdout, line by line, after the first.
    lines: Receiver<String>,
}

impl SimulatorProcess {
    /// Starts `simulator --port <p> <args>` on a port chosen outside the ephemeral range, and
    /// waits for its first line. A port taken by a parallel test (the process exits saying
    /// so) is retried with another.
    pub fn start(args: &[&str]) -> SimulatorProcess {
        for _ in 0..20 {
            let port = super::net::fixed_port_candidate();
            match Self::start_on(port, args) {
                Ok(process) => return process,
                Err(stderr) if stderr.contains("in use") => continue,
                Err(stderr) => panic!("the simulator did not start on port {port}: {stderr}"),
            }
        }
        panic!("no free port for the simulator after 20 tries");
    }

    /// Starts it on `port`; `Err(stderr)` if it exited instead of printing its first line.
    pub fn start_on(port: u16, args: &[&str]) -> Result<SimulatorProcess, String> {
        let mut child = Command::new(example_binary("simulator"))
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the simulator starts");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        // A limit for a hung process, not a deadline: a cold start on a busy machine is slow.
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(first) => {
                let base_url = first
                    .strip_prefix("NemoVideo simulator at ")
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_else(|| panic!("unexpected first line: {first}"))
                    .to_string();
                Ok(SimulatorProcess {
                    child,
                    port,
                    base_url,
                    lines,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                let output = child.wait_with_output().expect("output");
                Err(String::from_utf8_lossy(&output.stderr).into_owned())
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the simulator printed nothing within 120 s");
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `<base URL>/__admin<path>`.
    pub fn admin(&self, path: &str) -> String {
        format!("{}/__admin{path}", self.base_url)
    }

    /// Sends SIGTERM and waits (up to 120 s) for the process to end; returns its status and
    /// the rest of its stdout.
    #[cfg(unix)]
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid this test started and has not yet waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the simulator did not stop within 120 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at the end of the pipe, once it has passed every line on.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            rest.push(line);
        }
        (status, rest)
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
