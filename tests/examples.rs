//! The example programs as a user runs them: usage and exit statuses, every local check made
//! before the first request (and nothing sent, nothing written when one fails), errors that
//! name their cause, the simulator's pace and links, and the README's sample output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nemo_video::simulator::{Endpoint, Simulator};
use support::examples::{example, names_in, run, run_example, texts, EXAMPLES};
use support::net::{closed_port, LoopbackServer, Tripwire};
use support::tempdir;

/// Asserts a run-time failure: exit status 1, exactly `expected` as the one line on stderr.
fn assert_failed_with(output: &Output, expected: &str) {
    let (stdout, stderr) = texts(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stderr, format!("error: {expected}\n"), "stdout:\n{stdout}");
}

/// A folder with a real clip, an empty one, a text file and a sub-folder.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Inputs {
        let dir = tempdir();
        std::fs::copy(sample_input(), dir.path().join("clip.mp4")).unwrap();
        std::fs::write(dir.path().join("empty.mp4"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a video").unwrap();
        std::fs::create_dir(dir.path().join("some_dir")).unwrap();
        Inputs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn names() -> Vec<String> {
        ["clip.mp4", "empty.mp4", "notes.txt", "some_dir"]
            .map(String::from)
            .to_vec()
    }
}

fn sample_input() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("sample_input.mp4")
}

// ---------------------------------------------------------------------------------------------
// Usage: one parser, documented exit statuses
// ---------------------------------------------------------------------------------------------

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    let cwd = tempdir();
    for name in EXAMPLES {
        let output = run_example(name, cwd.path(), cwd.path(), &["--help"]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{name} --help: {stderr}");
        assert!(stderr.is_empty(), "{name} --help wrote to stderr: {stderr}");
        assert!(
            stdout.contains(&format!("Usage: {name} [OPTIONS]")),
            "{name}:\n{stdout}"
        );
        assert!(stdout.contains("-h, --help"), "{name}:\n{stdout}");

        let output = run_example(name, cwd.path(), cwd.path(), &["--version"]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{name} --version: {stderr}");
        assert_eq!(stdout, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
    }
    assert!(names_in(cwd.path()).is_empty(), "nothing written");
}

#[test]
fn usage_errors_say_error_and_exit_2() {
    let cwd = tempdir();
    let mut cases: Vec<(&str, Vec<&str>, String)> = EXAMPLES
        .iter()
        .map(|name| {
            (
                *name,
                vec!["--no-such-option"],
                "error: unexpected argument '--no-such-option' found".to_string(),
            )
        })
        .collect();
    let seconds = "expected a number of seconds above 0 and at most 3600, like 30 or 0.5";
    cases.extend([
        (
            "remove_object",
            vec!["-v"],
            "error: unexpected argument '-v' found".to_string(),
        ),
        (
            "remove_object",
            vec!["--poll-interval", "0"],
            format!("error: invalid value '0' for '--poll-interval <SECS>': {seconds}"),
        ),
        (
            "batch",
            vec!["--poll-interval", "-1"],
            "error: unexpected argument '-1' found".to_string(),
        ),
        (
            "chat",
            vec!["--timeout", "soon"],
            format!("error: invalid value 'soon' for '--timeout <SECS>': {seconds}"),
        ),
        (
            "credits",
            vec!["--timeout", "inf"],
            format!("error: invalid value 'inf' for '--timeout <SECS>': {seconds}"),
        ),
        (
            "remove_object",
            vec!["clip.mp4", "remove", "the logo"],
            "error: unexpected argument 'the logo' found".to_string(),
        ),
        (
            "batch",
            vec!["clip.mp4"],
            "error: invalid value 'clip.mp4' for '[FILE=INSTRUCTION]...': expected FILE=INSTRUCTION as one quoted argument, like \"clip.mp4=remove the logo\"".to_string(),
        ),
        (
            "transfer_bench",
            vec!["--rounds", "0"],
            "error: invalid value '0' for '--rounds <N>': expected a whole number of at least 1"
                .to_string(),
        ),
        (
            "server_scale",
            vec!["--users", "10,0"],
            "error: invalid value '0' for '--users <N[,N...]>': expected a whole number of at least 1"
                .to_string(),
        ),
    ]);
    for (name, args, first_line) in cases {
        let output = run_example(name, cwd.path(), cwd.path(), &args);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(stdout.is_empty(), "{name} {args:?}: {stdout}");
        assert_eq!(
            stderr.lines().next(),
            Some(first_line.as_str()),
            "{name} {args:?}:\n{stderr}"
        );
        assert!(
            stderr.ends_with("For more information, try '--help'.\n"),
            "{name} {args:?}:\n{stderr}"
        );
    }
    assert!(names_in(cwd.path()).is_empty(), "nothing written");
}

// ---------------------------------------------------------------------------------------------
// Local checks before the first request: one line, exit 1, nothing sent, nothing written
// ---------------------------------------------------------------------------------------------

#[test]
fn remove_object_refuses_bad_inputs_and_outputs_before_sending_anything() {
    let inputs = Inputs::new();
    let dir = inputs.path();
    let config = tempdir();
    let shown = |name: &str| dir.join(name).display().to_string();
    let supported = nemo_video::SUPPORTED_FORMATS.join(", ");
    let clip = shown("clip.mp4");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![shown("empty.mp4")],
            format!("{} is empty (0 bytes); pass a media file with content", shown("empty.mp4")),
        ),
        (
            vec![shown("notes.txt")],
            format!(
                "{} is not a supported file type; supported formats: {supported}",
                shown("notes.txt")
            ),
        ),
        (
            vec![shown("missing.mp4")],
            format!("{} does not exist; check the path", shown("missing.mp4")),
        ),
        (
            vec![shown("some_dir")],
            format!("{} is not a regular file; pass a media file", shown("some_dir")),
        ),
        (
            vec![clip.clone(), "--output".into(), "no_such_dir/x.mp4".into()],
            format!(
                "the folder {} does not exist; create it or choose another output path",
                shown("no_such_dir")
            ),
        ),
        (
            vec![clip.clone(), "--output".into(), "some_dir".into()],
            "some_dir is a folder; name a file inside it, such as some_dir/edited.mp4".into(),
        ),
        (
            vec![clip.clone(), "--output".into(), "/proc/x.mp4".into()],
            "the folder /proc is not writable (it does not accept new files); choose another output folder".into(),
        ),
        (
            vec![clip.clone(), "--output".into(), "./clip.mp4".into()],
            "the output ./clip.mp4 is the input file; choose another output path (saving there would overwrite the input)".into(),
        ),
        (
            vec![clip.clone(), "-o".into(), clip.clone()],
            format!("the output {clip} is the input file; choose another output path (saving there would overwrite the input)"),
        ),
    ];
    for (args, expected) in cases {
        let tripwire = Tripwire::new();
        let output = run(
            example("remove_object", dir, config.path())
                .args(&args)
                .env("NEMO_API_BASE", tripwire.url()),
            "",
        );
        assert_failed_with(&output, &expected);
        assert!(
            output.stdout.is_empty(),
            "{args:?}: not even 'Setting things up'"
        );
        assert_eq!(tripwire.connections(), 0, "{args:?}: nothing was sent");
        assert_eq!(
            names_in(dir),
            Inputs::names(),
            "{args:?}: nothing was written"
        );
        assert!(
            names_in(config.path()).is_empty(),
            "{args:?}: no credentials"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("clip.mp4")).unwrap(),
        std::fs::read(sample_input()).unwrap()
    );

    // The offline demo checks its output before starting the simulator too.
    let output = run_example("remove_object", dir, config.path(), &["-o", "/proc/x.mp4"]);
    assert_failed_with(
        &output,
        "the folder /proc is not writable (it does not accept new files); choose another output folder",
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn batch_refuses_bad_pairs_before_sending_anything() {
    let inputs = Inputs::new();
    let dir = inputs.path();
    let config = tempdir();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["clip.mp4=trim it", "empty.mp4=trim it"],
            "[2] empty.mp4 is empty (0 bytes); pass a media file with content".into(),
        ),
        (
            vec!["notes.txt=trim it"],
            format!(
                "[1] notes.txt is not a supported file type; supported formats: {}",
                nemo_video::SUPPORTED_FORMATS.join(", ")
            ),
        ),
        (
            vec!["--output-dir", "no_such_dir", "clip.mp4=trim it"],
            format!(
                "[1] the folder {} does not exist; create it or choose another output path",
                dir.join("no_such_dir").display()
            ),
        ),
        (
            // The first job's output would overwrite the second job's input.
            vec!["clip.mp4=trim it", "clip_1_edited.mp4=add music"],
            "[1] the output ./clip_1_edited.mp4 is the input file; choose another output path (saving there would overwrite the input)".into(),
        ),
    ];
    std::fs::copy(sample_input(), dir.join("clip_1_edited.mp4")).unwrap();
    let mut names = Inputs::names();
    names.insert(1, "clip_1_edited.mp4".into());
    for (args, expected) in cases {
        let tripwire = Tripwire::new();
        let output = run(
            example("batch", dir, config.path())
                .args(&args)
                .env("NEMO_API_BASE", tripwire.url())
                .env("NEMO_TOKEN", "nmv_usr_unused"),
            "",
        );
        assert_failed_with(&output, &expected);
        assert_eq!(tripwire.connections(), 0, "{args:?}: nothing was sent");
        assert_eq!(names_in(dir), names, "{args:?}: nothing was written");
    }
}

#[test]
fn chat_refuses_an_unwritable_output_folder_before_sending_anything() {
    let cwd = tempdir();
    let tripwire = Tripwire::new();
    let output = run(
        example("chat", cwd.path(), cwd.path())
            .args(["--output-dir", "/proc"])
            .env("NEMO_API_BASE", tripwire.url()),
        "credits\n",
    );
    assert_failed_with(
        &output,
        "the folder /proc is not writable (it does not accept new files); choose another output folder",
    );
    assert_eq!(tripwire.connections(), 0);
    assert!(names_in(cwd.path()).is_empty());
}

#[test]
fn chat_checks_a_file_before_uploading_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The simulator serves from the runtime's worker while this thread runs the example.
    let sim = runtime.block_on(async { Simulator::builder().fast().start().await.unwrap() });
    let inputs = Inputs::new();
    let config = tempdir();
    let output = run(
        example("chat", inputs.path(), config.path()).env("NEMO_API_BASE", sim.base_url()),
        "upload empty.mp4\nupload notes.txt\nupload\n",
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("> Sorry: empty.mp4 is empty (0 bytes); pass a media file with content\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("> Sorry: notes.txt is not a supported file type"),
        "{stdout}"
    );
    assert_eq!(sim.request_count(Endpoint::CreateSession), 1);
    assert_eq!(sim.request_count(Endpoint::Upload), 0, "nothing uploaded");
    assert_eq!(names_in(inputs.path()), Inputs::names());
    drop(sim);
}

// ---------------------------------------------------------------------------------------------
// Errors that name the cause, with the option that fixes them
// ---------------------------------------------------------------------------------------------

#[test]
fn network_failures_name_their_cause_in_one_line() {
    let cwd = tempdir();
    let closed = closed_port();
    let port = closed.port();
    let silent = LoopbackServer::silent();
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        (
            format!("http://127.0.0.1:{port}"),
            vec![],
            format!("could not connect to 127.0.0.1:{port}: the connection was refused (nothing is listening on port {port}); check the base URL (NEMO_API_BASE) and that the service is running"),
        ),
        (
            "http://nemo-sdk-test.invalid".to_string(),
            vec![],
            "could not connect to nemo-sdk-test.invalid:80: the name lookup (DNS) for nemo-sdk-test.invalid failed".to_string(),
        ),
        (
            format!("http://{}", silent.address()),
            vec!["--timeout", "0.5"],
            "the service did not answer within 0.5 s; it may be busy: try again later, or allow more time with --timeout SECS".to_string(),
        ),
    ];
    for (base, args, expected) in cases {
        let output = run(
            example("credits", cwd.path(), cwd.path())
                .args(&args)
                .env("NEMO_API_BASE", &base)
                .env("NEMO_TOKEN", "nmv_usr_fixed"),
            "",
        );
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(1), "{base}: {stdout}{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{base}: one line:\n{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{base}:\n{stderr}"
        );
        assert!(!stderr.contains("error sending request"), "{stderr}");
        assert!(!stderr.contains("nmv_usr_fixed"), "{stderr}");
    }
    // A read is retried as documented: 1 + 2 retries, each waiting 0.5 s for an answer. (The
    // server's thread counts a connection when it accepts it, maybe after the client left.)
    assert!(support::eventually_blocking(
        Duration::from_secs(30),
        || { silent.accepted() >= 3 }
    ));
    assert_eq!(silent.accepted(), 3);
}

// ---------------------------------------------------------------------------------------------
// The simulator: its pace and its links
// ---------------------------------------------------------------------------------------------

#[test]
fn simulate_with_an_input_polls_at_the_simulators_pace() {
    let inputs = Inputs::new();
    let config = tempdir();
    let output = run_example(
        "remove_object",
        inputs.path(),
        config.path(),
        &["clip.mp4", "--simulate", "-o", "out.mp4"],
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // The default simulator renders in 3 s: checked every 0.3 s, not every 30 s.
    assert!(
        stdout.contains("\nExporting (checking every 0.3 s)... 25% 50% 75% 100%\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("Saved out.mp4 (8006 bytes)\n"), "{stdout}");
    assert!(inputs.path().join("out.mp4").is_file());
    assert!(
        names_in(config.path()).is_empty(),
        "simulator tokens stay in memory"
    );
}

#[test]
fn credits_simulate_links_to_the_simulator_not_the_web_site() {
    let cwd = tempdir();
    let output = run_example("credits", cwd.path(), cwd.path(), &["--simulate"]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0]
            .starts_with("Offline: using the built-in NemoVideo simulator at http://127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(lines[1], "Credits: 100 available, 0 frozen, 100 total");
    let link = lines[2]
        .strip_prefix("Simulator account: ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        link.starts_with("http://127.0.0.1:") && link.contains("/register?bind=anon_"),
        "{link}"
    );
    assert!(!stdout.contains("nemovideo.com"), "{stdout}");
    assert!(
        lines[2].ends_with("explains that it exists only in the simulator."),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Which service: one rule for every example, said in the first line
// ---------------------------------------------------------------------------------------------

const OFFLINE: &str = "Offline: using the built-in NemoVideo simulator at http://127.0.0.1:";
const PRODUCTION: &str = "Live: using the NemoVideo service at https://mega-api-prod.nemovideo.ai";

/// `command` with every HTTPS request sent through `proxy`: should a run pick the real service,
/// its request reaches this loopback server (and is counted there), never the network.
fn through(command: &mut std::process::Command, proxy: &LoopbackServer, stdin: &str) -> Output {
    let proxy = format!("http://{}", proxy.address());
    run(
        command
            .env("HTTPS_PROXY", &proxy)
            .env("https_proxy", &proxy)
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
        stdin,
    )
}

fn first_line(output: &Output) -> String {
    texts(output).0.lines().next().unwrap_or("").to_string()
}

#[test]
fn every_example_runs_offline_unless_pointed_at_a_service_and_says_so_first() {
    let inputs = Inputs::new();
    let dir = inputs.path();
    let config = tempdir();
    let proxy = LoopbackServer::plain_http();

    // Not pointed at a service: offline, whatever the example.
    let output = through(
        &mut example("chat", dir, config.path()),
        &proxy,
        "credits\n",
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(first_line(&output).starts_with(OFFLINE), "{stdout}");
    assert!(
        stdout.contains("> 100 credits available (0 frozen).\n"),
        "{stdout}"
    );
    for name in ["credits", "batch"] {
        let output = through(&mut example(name, dir, config.path()), &proxy, "");
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{name}: {stdout}\n{stderr}");
        assert!(first_line(&output).starts_with(OFFLINE), "{name}: {stdout}");
    }
    for (name, args) in [
        ("transfer_bench", vec!["--size-mib", "1", "--rounds", "1"]),
        (
            "server_scale",
            vec!["--users", "2", "--ramp-ms", "0", "--hold-ms", "50"],
        ),
    ] {
        let output = run_example(name, dir, config.path(), &args);
        assert!(
            first_line(&output).starts_with("Offline: using ")
                && first_line(&output).ends_with("(nothing leaves this machine)."),
            "{name}: {}",
            texts(&output).0
        );
    }
    assert_eq!(proxy.accepted(), 0, "nothing went to the real service");

    // Pointed at a service by the environment: that one (here a closed port, so the run
    // fails after its first line).
    let closed = closed_port();
    let base = format!("http://127.0.0.1:{}", closed.port());
    for variable in ["NEMO_API_BASE", "NEMO_API_URL"] {
        for name in ["credits", "chat"] {
            let output = run(example(name, dir, config.path()).env(variable, &base), "");
            assert_eq!(
                output.status.code(),
                Some(1),
                "{name}: {:?}",
                texts(&output)
            );
            assert_eq!(
                first_line(&output),
                format!("Live: using the NemoVideo service at {base} (from {variable})."),
                "{name}"
            );
        }
    }
    // `--simulate` stays offline even so.
    let output = run(
        example("credits", dir, config.path())
            .arg("--simulate")
            .env("NEMO_API_BASE", &base),
        "",
    );
    assert_eq!(output.status.code(), Some(0), "{:?}", texts(&output));
    assert!(first_line(&output).starts_with(OFFLINE));

    // `--live`, or an input file: the real service (whose requests the proxy takes here).
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("credits", vec!["--live"], "--live"),
        ("chat", vec!["--live"], "--live"),
        (
            "remove_object",
            vec!["clip.mp4"],
            "an input file was given; add --simulate to stay offline",
        ),
        (
            "batch",
            vec!["clip.mp4=trim it"],
            "an input file was given; add --simulate to stay offline",
        ),
    ];
    for (name, args, why) in cases {
        let before = proxy.accepted();
        let output = through(
            example(name, dir, config.path())
                .args(&args)
                .args(["--timeout", "5"]),
            &proxy,
            "",
        );
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}: {:?}",
            texts(&output)
        );
        assert_eq!(
            first_line(&output),
            format!("{PRODUCTION} ({why})."),
            "{name}"
        );
        assert!(proxy.accepted() > before, "{name} went through the proxy");
    }

    // Both at once is a usage error.
    let output = run_example("credits", dir, config.path(), &["--simulate", "--live"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        texts(&output)
            .1
            .starts_with("error: the argument '--simulate' cannot be used with '--live'"),
        "{:?}",
        texts(&output)
    );
}

// ---------------------------------------------------------------------------------------------
// The README's sample output is what the command prints
// ---------------------------------------------------------------------------------------------

/// The first ```text block of the README's quick start.
fn readme_sample_output() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let quick_start = &readme[readme.find("## Quick start").expect("a quick start")..];
    let block = &quick_start[quick_start.find("```text\n").expect("a text block") + 8..];
    block[..block.find("```").expect("the block ends")].to_string()
}

/// What varies from run to run, replaced by the README's placeholders: the checkout's
/// folder and the simulator's port.
fn normalise(output: &str) -> String {
    let output = output.replace(env!("CARGO_MANIFEST_DIR"), "/path/to/nemo-video");
    let mut normalised = String::with_capacity(output.len());
    let mut rest = output.as_str();
    const LOOPBACK: &str = "http://127.0.0.1:";
    while let Some(at) = rest.find(LOOPBACK) {
        normalised.push_str(&rest[..at + LOOPBACK.len()]);
        rest = rest[at + LOOPBACK.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        normalised.push_str("<port>");
    }
    normalised.push_str(rest);
    normalised
}

#[test]
fn readme_quick_start_output_is_what_the_demo_prints() {
    let cwd = tempdir();
    let config = tempdir();
    let output = run_example("remove_object", cwd.path(), config.path(), &[]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        normalise(&stdout),
        readme_sample_output(),
        "README.md's quick start no longer shows what `cargo run --example remove_object` prints"
    );
    assert_eq!(names_in(cwd.path()), ["sample_input_edited.mp4"]);
}
