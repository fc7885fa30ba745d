//! The main job: upload a clip, ask the agent to remove an object, export a 1080p MP4.
//!
//! ```text
//! cargo run --example remove_object -- [INPUT [PROMPT]] [--output PATH] [--language CODE]
//!                                       [--poll-interval SECS] [--timeout SECS] [--simulate]
//! ```
//!
//! With no INPUT it runs offline against the built-in simulator with the sample clip in
//! `assets/`. With INPUT it talks to the real service (`NEMO_API_BASE`, default production)
//! unless `--simulate` is given. Auth: `NEMO_TOKEN`, or an anonymous token persisted under
//! `NEMO_CONFIG_DIR` (default `~/.config/nemovideo/`).
//!
//! The job runs as steps, each a function: check the inputs (everything local, before any
//! request) → connect → open a session → upload → the agent's turn → the timeline summary →
//! export → download. Exit status: 0 done, 1 failed (one `error: ...` line on stderr, no
//! output file), 2 bad usage.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nemo_video::intent::translate_reply;
use nemo_video::render::{check_output_path_for, Export, RenderOptions, WaitOptions};
use nemo_video::turn::TurnEnd;
use nemo_video::upload::check_upload_file;
use nemo_video::{Session, DEFAULT_MAX_UPLOAD_BYTES};
use support::{describe, AgentActivity, Progress, Service, ServiceArgs};

const DEFAULT_PROMPT: &str = "remove the background person and replace it with a solid color";

/// Upload a clip, ask NemoVideo's agent to remove an object, and save the edited MP4.
///
/// With no INPUT: an offline demo with the sample clip, against the built-in simulator.
#[derive(Parser, Debug)]
#[command(name = "remove_object", version)]
struct Args {
    /// The clip to edit (mp4, mov, avi, webm, mkv, ...) [default: the sample clip, offline]
    input: Option<PathBuf>,
    /// What the agent should do
    #[arg(default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Where to save the edited video [default: <input stem>_edited.mp4]
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// The session's language, such as en or zh
    #[arg(long, value_name = "CODE")]
    language: Option<String>,
    /// Seconds between render status checks [default: 30; the simulator's pace offline]
    #[arg(long, value_name = "SECS", value_parser = support::parse_seconds)]
    poll_interval: Option<Duration>,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit(run(Args::parse()).await)
}

/// The job, step by step.
async fn run(args: Args) -> Result<(), String> {
    let job = check_inputs(&args)?;
    println!("Setting things up...");
    let service = connect(&job, &args).await?;
    let session = open_session(&service, args.language.as_deref()).await?;
    upload(&service, &session, &job).await?;
    ask_agent(&service, &session, &job.prompt).await?;
    show_timeline(&service, &session).await?;
    let export = export(&service, &session, args.poll_interval).await?;
    download(&service, &export, &job.output).await
}

/// What the job works on, checked.
struct Job {
    /// Offline demo with the sample clip (no INPUT given).
    demo: bool,
    input: PathBuf,
    size: u64,
    prompt: String,
    output: PathBuf,
}

/// Step 1: everything that can be checked locally, before anything is sent or written.
fn check_inputs(args: &Args) -> Result<Job, String> {
    let demo = args.input.is_none();
    let input = match &args.input {
        Some(path) => path.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4"),
    };
    let size = check_upload_file(&input, DEFAULT_MAX_UPLOAD_BYTES).map_err(|err| describe(&err))?;
    let output = match &args.output {
        Some(path) => path.clone(),
        None => {
            let stem = input
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "video".to_string());
            PathBuf::from(format!("{stem}_edited.mp4"))
        }
    };
    check_output_path_for(&output, &input).map_err(|err| describe(&err))?;
    Ok(Job {
        demo,
        input,
        size,
        prompt: args.prompt.clone(),
        output,
    })
}

/// Step 2: a client for the real service or the simulator (nothing is sent yet).
async fn connect(job: &Job, args: &Args) -> Result<Service, String> {
    let service = support::connect(job.demo || args.service.simulate, args.service.timeout).await?;
    if let Some(simulator) = &service.simulator {
        println!(
            "Offline: using the built-in NemoVideo simulator at {} (nothing leaves this machine).",
            simulator.base_url()
        );
    }
    Ok(service)
}

/// Step 3: a new session (and the first requests: a token if needed, the balance).
async fn open_session(service: &Service, language: Option<&str>) -> Result<Session, String> {
    let session = service
        .client
        .create_session(language)
        .await
        .map_err(|err| describe(&err))?;
    let credits = service
        .client
        .credits()
        .await
        .map_err(|err| describe(&err))?;
    println!(
        "Connected and ready ({} credits available).",
        credits.available
    );
    Ok(session)
}

/// Step 4: the clip goes up.
async fn upload(service: &Service, session: &Session, job: &Job) -> Result<(), String> {
    support::start_line(&format!(
        "Uploading {} ({} bytes)...",
        job.input.display(),
        job.size
    ));
    let progress = Arc::new(Progress::new("upload", true));
    let bar = Arc::clone(&progress);
    service
        .client
        .upload_files_with_progress(session, &[&job.input], move |p| bar.set(p.sent, p.total))
        .await
        .map_err(|err| describe(&err))?;
    progress.finish();
    Ok(())
}

/// Step 5: the agent's turn, its reply shown translated from GUI-speak.
async fn ask_agent(service: &Service, session: &Session, prompt: &str) -> Result<(), String> {
    println!("Asking the agent: \"{prompt}\"");
    let activity = AgentActivity::start();
    let turn = service
        .client
        .run_turn_with(session, prompt, &activity.turn_options())
        .await;
    activity.finish();
    let turn = turn.map_err(|err| describe(&err))?;
    if let TurnEnd::WaitingForUser { question, .. } = &turn.end {
        return Err(format!(
            "the agent needs more detail before editing: {}; run again with a more specific prompt",
            question.as_deref().unwrap_or("it asked a question")
        ));
    }
    println!("Agent: {}", translate_reply(turn.answer().trim()).text);
    if let TurnEnd::Disconnected(err) = &turn.end {
        println!("(The agent's stream was cut off: {err}. Continuing with the saved timeline.)");
    }
    Ok(())
}

/// Step 6: what the timeline now holds.
async fn show_timeline(service: &Service, session: &Session) -> Result<(), String> {
    let state = service
        .client
        .state(session)
        .await
        .map_err(|err| describe(&err))?;
    println!("{}", state.summary());
    Ok(())
}

/// Step 7: render, waiting at the chosen pace.
async fn export(
    service: &Service,
    session: &Session,
    poll_interval: Option<Duration>,
) -> Result<Export, String> {
    let poll_interval = poll_interval.unwrap_or_else(|| service.poll_interval());
    support::start_line(&format!(
        "Exporting (checking every {} s)...",
        poll_interval.as_secs_f64()
    ));
    let progress = Arc::new(Progress::new("render", false));
    let bar = Arc::clone(&progress);
    let wait = WaitOptions::default()
        .poll_interval(poll_interval)
        .on_progress(move |p| bar.set(p.progress.unwrap_or(0.0).round() as u64, 100));
    let export = service
        .client
        .export(session, &RenderOptions::default(), &wait)
        .await
        .map_err(|err| describe(&err))?;
    progress.set(100, 100);
    progress.finish();
    Ok(export)
}

/// Step 8: the result lands whole at the output path, or not at all.
async fn download(service: &Service, export: &Export, output: &Path) -> Result<(), String> {
    support::start_line("Downloading...");
    let progress = Arc::new(Progress::new("download", true));
    let bar = Arc::clone(&progress);
    let bytes = service
        .client
        .download_render(
            &export.job,
            export.output_url.as_deref(),
            output,
            move |p| bar.set(p.received, p.total.unwrap_or(p.received)),
        )
        .await
        .map_err(|err| describe(&err))?;
    progress.finish();
    println!("Saved {} ({bytes} bytes)", output.display());
    Ok(())
}
