//! Interrupting the examples, as a person does with Ctrl-C (or a supervisor with SIGTERM, a
//! closed terminal with SIGHUP, the OOM killer with SIGKILL), then running the same command
//! again: the example stops at once with status 130 (killed: at once, with no word), says
//! what was kept and how to resume, and the rerun finishes the job paying for nothing twice
//! (one session, one upload on it, one message, one render id), leaving only the result in
//! the output folder. Also: the same command started twice at once runs the job once, an
//! error answer to the message fails at once and a rerun sends it once more, and `chat`
//! stops at its prompt.
//!
//! The simulator runs in this test process, slowed down, so it outlives the example process;
//! the example reaches it through `NEMO_API_BASE` as it would the real service.
#![cfg(unix)]

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nemo_video::simulator::{Endpoint, Simulator, SAMPLE_OUTPUT_MP4};
use support::examples::{example, names_in, run, texts};
use support::{eventually, patterned_bytes, tempdir};

/// Where a run is interrupted.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Upload,
    AgentTurn,
    RenderWait,
    Download,
}

impl Phase {
    /// The request that shows the example is in this phase (it is recorded when it arrives).
    fn marker(self) -> Endpoint {
        match self {
            Phase::Upload => Endpoint::Upload,
            Phase::AgentTurn => Endpoint::RunSse,
            Phase::RenderWait => Endpoint::RenderStatus,
            Phase::Download => Endpoint::CdnOutput,
        }
    }
}

/// A simulator whose every phase lasts long enough to be interrupted on a busy machine (the
/// test signals as soon as the phase's request arrives): uploads and downloads are paced
/// (a 256 KiB upload and the 8 KiB output take one to a few seconds), the agent's tools work
/// for 1.5 s, renders take 2 s.
async fn slow_simulator() -> Simulator {
    Simulator::builder()
        .fast()
        .transfer_pace(Duration::from_millis(200))
        .work_duration(Duration::from_millis(1500))
        .render_time(Duration::from_secs(2))
        .start()
        .await
        .expect("simulator starts")
}

/// A clip big enough that its paced upload takes a while (its bytes do not matter to the
/// simulator, its name does).
fn write_clip(dir: &Path) -> std::path::PathBuf {
    let clip = dir.join("clip.mp4");
    std::fs::write(&clip, patterned_bytes(256 * 1024)).unwrap();
    clip
}

/// `remove_object <clip> --output <out>/edited.mp4` against `sim`. The request timeout (3 s)
/// is also an upload's stall limit, and so how long a resumed job waits for an interrupted
/// upload that could still land; the settle time (0.3 s) is how long a resumed job watches a
/// changed timeline before it calls the edit finished.
fn remove_object(sim: &Simulator, work: &Path, clip: &Path, extra: &[&str]) -> Command {
    let mut command = example("remove_object", &work.join("cwd"), &work.join("config"));
    command
        .env("NEMO_API_BASE", sim.base_url())
        .arg(clip)
        .arg("--output")
        .arg(work.join("out").join("edited.mp4"))
        .args([
            "--poll-interval",
            "0.1",
            "--timeout",
            "3",
            "--settle",
            "0.3",
        ])
        .args(extra);
    command
}

fn spawn(mut command: Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for `child` to exit (a hung child fails the test after a generous limit), and
/// returns its status code, stdout and stderr, and how long it took after the signal.
fn finish(mut child: Child, signalled: Instant) -> (Option<i32>, String, String, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let took = signalled.elapsed();
            let mut stdout = String::new();
            let mut stderr = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stdout, stderr, took);
        }
        if signalled.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the example did not stop within 60 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn prepare() -> (tempfile::TempDir, std::path::PathBuf) {
    let work = tempdir();
    for dir in ["cwd", "config", "out", "in"] {
        std::fs::create_dir(work.path().join(dir)).unwrap();
    }
    let clip = write_clip(&work.path().join("in"));
    (work, clip)
}

async fn interrupt_then_resume(phase: Phase, signal_name: &str) {
    let sim = slow_simulator().await;
    let (work, clip) = prepare();
    let out = work.path().join("out");

    let child = spawn(remove_object(&sim, work.path(), &clip, &[]));
    let handle = sim.handle();
    assert!(
        eventually(Duration::from_secs(120), || handle
            .request_count(phase.marker())
            >= 1)
        .await,
        "{phase:?}: the example never got there"
    );
    let signalled = Instant::now();
    signal(&child, signal_name);
    let (code, stdout, stderr, took) =
        tokio::task::spawn_blocking(move || finish(child, signalled))
            .await
            .unwrap();
    assert!(
        took < Duration::from_secs(10),
        "{phase:?}: stopped after {took:?}"
    );
    if signal_name == "KILL" {
        // No word from a killed process; a download's temporary file may be left behind.
        assert_eq!(code, None, "{phase:?}: {stdout}\n{stderr}");
    } else {
        assert_eq!(code, Some(130), "{phase:?}: {stdout}\n{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{phase:?}: one line: {stderr}");
        assert!(
            lines[0].starts_with("interrupted: run the same command again to resume ("),
            "{phase:?}: {stderr}"
        );
        assert!(
            lines[0].contains("the job is kept in "),
            "{phase:?}: says what was kept: {stderr}"
        );
        assert!(names_in(&out).is_empty(), "{phase:?}: {:?}", names_in(&out));
    }

    // The same command again, left to finish.
    let output = run(&mut remove_object(&sim, work.path(), &clip, &[]), "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{phase:?}: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("Resuming: "), "{phase:?}: {stdout}");
    assert_eq!(
        std::fs::read(out.join("edited.mp4")).unwrap(),
        SAMPLE_OUTPUT_MP4,
        "{phase:?}"
    );
    assert_eq!(names_in(&out), ["edited.mp4"], "{phase:?}");

    // Over both runs: one session, one clip on it, one message, one render id.
    let sessions = sim.session_ids();
    assert_eq!(sessions.len(), 1, "{phase:?}: sessions");
    assert_eq!(
        sim.media(&sessions[0]).len(),
        1,
        "{phase:?}: uploads landed"
    );
    assert_eq!(sim.request_count(Endpoint::CreateSession), 1, "{phase:?}");
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        1,
        "{phase:?}: messages"
    );
    assert_eq!(sim.render_ids().len(), 1, "{phase:?}: render ids");
    let uploads = sim.request_count(Endpoint::Upload);
    match phase {
        // The interrupted upload either still landed (what was written when the process
        // stopped reached the service), and the resume waited and found it, or it did not,
        // and the resume sent it again once it could no longer land: one copy either way.
        Phase::Upload => assert!((1..=2).contains(&uploads), "{phase:?}: {uploads}"),
        _ => assert_eq!(uploads, 1, "{phase:?}"),
    }
    // The journal is gone after success.
    let jobs = work.path().join("config").join("jobs");
    assert!(
        !jobs.exists() || names_in(&jobs).is_empty(),
        "{:?}",
        names_in(&jobs)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_upload_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::Upload, "INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_agent_turn_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::AgentTurn, "INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_render_wait_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::RenderWait, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_download_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::Download, "INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_the_render_wait_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::RenderWait, "HUP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_upload_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::Upload, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_agent_turn_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::AgentTurn, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_render_wait_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::RenderWait, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_download_then_the_same_command_resumes() {
    interrupt_then_resume(Phase::Download, "KILL").await;
}

/// The job's lock file, once the running example holds the job.
fn lock_file(work: &Path) -> Option<std::path::PathBuf> {
    let jobs = work.join("config").join("jobs");
    if !jobs.is_dir() {
        return None;
    }
    names_in(&jobs)
        .into_iter()
        .find(|name| name.ends_with(".json.lock"))
        .map(|name| jobs.join(name))
        .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_command_started_twice_at_once_runs_the_job_once() {
    let sim = slow_simulator().await;
    let (work, clip) = prepare();
    let out = work.path().join("out");
    let first = spawn(remove_object(&sim, work.path(), &clip, &[]));
    let held = work.path().to_path_buf();
    assert!(
        eventually(Duration::from_secs(120), || lock_file(&held).is_some()).await,
        "the first run never took the job"
    );
    // The second, while the first holds the job.
    let second = run(&mut remove_object(&sim, work.path(), &clip, &[]), "");
    let (stdout, stderr) = texts(&second);
    assert_eq!(second.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is running elsewhere (pid "), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {} on host ", first.id())),
        "names the process: {stderr}"
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");

    let (code, stdout, stderr, _) =
        tokio::task::spawn_blocking(move || finish(first, Instant::now()))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(names_in(&out), ["edited.mp4"]);
    let sessions = sim.session_ids();
    assert_eq!(sessions.len(), 1, "sessions");
    assert_eq!(sim.media(&sessions[0]).len(), 1, "uploads landed");
    assert_eq!(sim.request_count(Endpoint::Upload), 1);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1, "messages");
    assert_eq!(sim.render_ids().len(), 1, "render ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_to_the_message_fails_at_once_and_the_same_command_sends_it_once_more() {
    let sim = slow_simulator().await;
    let (work, clip) = prepare();
    let out = work.path().join("out");
    sim.fail_next(
        Endpoint::RunSse,
        1,
        nemo_video::simulator::Failure::PlainText {
            status: 502,
            body: "<html>502 Bad Gateway</html>".into(),
        },
    );
    let started = Instant::now();
    let output = run(&mut remove_object(&sim, work.path(), &clip, &[]), "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failed at once, not after watching: {:?}",
        started.elapsed()
    );
    assert!(!stdout.contains("Checking"), "nothing to watch: {stdout}");
    assert!(!stdout.contains("may still be in progress"), "{stdout}");
    assert!(stderr.contains("HTTP 502"), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume (upload already done)"),
        "{stderr}"
    );
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);

    let output = run(&mut remove_object(&sim, work.path(), &clip, &[]), "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(sim.request_count(Endpoint::RunSse), 2, "sent once more");
    assert_eq!(sim.request_count(Endpoint::Upload), 1);
    assert_eq!(sim.session_ids().len(), 1);
    assert_eq!(names_in(&out), ["edited.mp4"]);
}

/// Reads `child`'s stdout on a thread until `marker` appears; false when it ended first.
fn wait_for_output(child: &mut Child, marker: &'static str) -> bool {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (seen, saw) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains(marker) {
                let _ = seen.send(());
                // Keep draining, so the child never blocks on a full pipe.
            }
            line.clear();
        }
    });
    saw.recv_timeout(Duration::from_secs(120)).is_ok()
}

async fn chat_stops_at_its_prompt(signal_name: &'static str) {
    let work = tempdir();
    for dir in ["cwd", "config"] {
        std::fs::create_dir(work.path().join(dir)).unwrap();
    }
    let mut command = example(
        "chat",
        &work.path().join("cwd"),
        &work.path().join("config"),
    );
    // A terminal that types nothing: stdin stays open.
    let mut child = command
        .arg("--simulate")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat starts");
    let mut child = tokio::task::spawn_blocking(move || {
        assert!(
            wait_for_output(&mut child, "Connected."),
            "chat never got to its prompt"
        );
        child
    })
    .await
    .unwrap();
    let stdin = child.stdin.take();
    let signalled = Instant::now();
    signal(&child, signal_name);
    let status = tokio::task::spawn_blocking(move || {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if signalled.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("chat ignored {signal_name} at its prompt");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = signalled.elapsed();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), took, stderr)
    })
    .await
    .unwrap();
    drop(stdin);
    let (code, took, stderr) = status;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after {signal_name}"
    );
    assert!(stderr.starts_with("interrupted: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_exits_at_once_on_ctrl_c_at_its_prompt() {
    chat_stops_at_its_prompt("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_exits_at_once_on_sigterm_at_its_prompt() {
    chat_stops_at_its_prompt("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_starts_over_after_an_interruption() {
    let sim = slow_simulator().await;
    let (work, clip) = prepare();
    let child = spawn(remove_object(&sim, work.path(), &clip, &[]));
    let handle = sim.handle();
    assert!(
        eventually(Duration::from_secs(120), || handle
            .request_count(Endpoint::RunSse)
            >= 1)
        .await
    );
    let signalled = Instant::now();
    signal(&child, "INT");
    let (code, ..) = tokio::task::spawn_blocking(move || finish(child, signalled))
        .await
        .unwrap();
    assert_eq!(code, Some(130));

    let output = run(
        &mut remove_object(&sim, work.path(), &clip, &["--fresh"]),
        "",
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Resuming"), "{stdout}");
    assert_eq!(sim.session_ids().len(), 2, "a new session");
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        2,
        "the message sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_interrupted_during_a_download_leaves_no_partial_file() {
    let sim = slow_simulator().await;
    let (work, clip) = prepare();
    let out = work.path().join("out");
    let mut command = example(
        "batch",
        &work.path().join("cwd"),
        &work.path().join("config"),
    );
    command
        .env("NEMO_API_BASE", sim.base_url())
        .arg(format!("{}=remove the background person", clip.display()))
        .arg("--output-dir")
        .arg(&out)
        .args(["--poll-interval", "0.1"]);
    let child = spawn(command);
    let handle = sim.handle();
    assert!(
        eventually(Duration::from_secs(120), || handle
            .request_count(Endpoint::CdnOutput)
            >= 1)
        .await
    );
    let signalled = Instant::now();
    signal(&child, "TERM");
    let (code, stdout, stderr, _) = tokio::task::spawn_blocking(move || finish(child, signalled))
        .await
        .unwrap();
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("interrupted: "), "{stderr}");
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_token_is_issued_waits_for_its_save_and_the_rerun_asks_for_none() {
    // The service issues the token at once and answers 1.5 s later: Ctrl-C in between
    // ("Setting things up...") must not lose it, or the next run is refused for the week.
    let sim = Simulator::builder()
        .fast()
        .token_answer_delay(Duration::from_millis(1500))
        .start()
        .await
        .expect("simulator starts");
    let (work, clip) = prepare();
    let child = spawn(remove_object(&sim, work.path(), &clip, &[]));
    let handle = sim.handle();
    assert!(
        eventually(Duration::from_secs(120), || handle
            .request_count(Endpoint::AnonymousToken)
            >= 1)
        .await,
        "the example never asked for its token"
    );
    let signalled = Instant::now();
    signal(&child, "INT");
    let (code, stdout, stderr, _) = tokio::task::spawn_blocking(move || finish(child, signalled))
        .await
        .unwrap();
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Waiting up to 5 s for the token the service is issuing to be saved"),
        "says what it waits for: {stderr}"
    );
    assert!(stderr.contains("The token is saved."), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("interrupted: "),
        "{stderr}"
    );
    let config = work.path().join("config");
    let id = support::stored_file(&config)["default_client_id"]
        .as_str()
        .expect("a default identity")
        .to_string();
    assert!(
        support::stored_credentials(&config, sim.base_url(), &id)["token"].is_string(),
        "the token is saved"
    );

    // The same command again: the saved token, no second token request.
    let output = run(&mut remove_object(&sim, work.path(), &clip, &[]), "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(sim.token_requests_for(&id), 1);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
}
