//! Batch style: several clips in one session, each with its own instruction and its own
//! render; the renders are polled concurrently.
//!
//! ```text
//! cargo run --example batch -- [--simulate | --live] [--poll-interval SECS] [--timeout SECS]
//!                              [--output-dir DIR] [FILE=INSTRUCTION ...]
//! ```
//!
//! With no FILE=INSTRUCTION pairs it runs offline against the simulator with the sample clip
//! and two instructions. It talks to a service when pointed at one: pairs, `--live`, or
//! `NEMO_API_BASE`; `--simulate` stays offline. The first line says which. Every file and
//! output is checked before the first request. Exit status: 0 all saved, 1 failed (one
//! `error: ...` line on stderr), 2 bad usage, 130 interrupted by Ctrl-C or SIGTERM (no
//! half-written file left).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemo_video::intent::{translate_reply_with, GuiAction, TranslateOptions};
use nemo_video::render::{
    check_output_path, check_output_path_for, RenderJob, RenderOptions, WaitOptions,
};
use nemo_video::upload::check_upload_file;
use nemo_video::{Error, DEFAULT_MAX_UPLOAD_BYTES};
use support::{describe, ServiceArgs};

/// Edit several clips in one NemoVideo session, each with its own instruction and render.
///
/// With no FILE=INSTRUCTION pairs: an offline demo with the sample clip, against the built-in
/// simulator.
#[derive(Parser, Debug)]
#[command(name = "batch", version)]
struct Args {
    /// A clip and what to do with it, as one argument: "clip.mp4=remove the logo"
    #[arg(value_name = "FILE=INSTRUCTION", value_parser = parse_pair)]
    jobs: Vec<(PathBuf, String)>,
    /// Folder for the edited videos (<stem>_<n>_edited.mp4)
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,
    /// Seconds between render status checks [default: 30; the simulator's pace offline]
    #[arg(long, value_name = "SECS", value_parser = support::parse_seconds)]
    poll_interval: Option<Duration>,
    #[command(flatten)]
    service: ServiceArgs,
}

fn parse_pair(text: &str) -> Result<(PathBuf, String), String> {
    match text.split_once('=') {
        Some((file, instruction)) if !file.trim().is_empty() && !instruction.trim().is_empty() => {
            Ok((PathBuf::from(file), instruction.trim().to_string()))
        }
        _ => Err(
            "expected FILE=INSTRUCTION as one quoted argument, like \"clip.mp4=remove the logo\""
                .to_string(),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit_or_interrupted(
        run(Args::parse()),
        "nothing was kept; run the same command again to start over (the saved videos are whole; a video being written was not kept)",
    )
    .await
}

/// One clip's job, checked.
struct Job {
    number: usize,
    input: PathBuf,
    instruction: String,
    output: PathBuf,
}

/// Everything local, before any request: each input, each output, and no output that is an
/// input.
fn check_jobs(args: &Args) -> Result<Vec<Job>, String> {
    let pairs = if args.jobs.is_empty() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4");
        vec![
            (
                sample.clone(),
                "remove the background person and replace it with a solid color".to_string(),
            ),
            (
                sample,
                "add lo-fi background music at 35% volume".to_string(),
            ),
        ]
    } else {
        args.jobs.clone()
    };
    let mut jobs = Vec::with_capacity(pairs.len());
    for (index, (input, instruction)) in pairs.into_iter().enumerate() {
        let number = index + 1;
        check_upload_file(&input, DEFAULT_MAX_UPLOAD_BYTES)
            .map_err(|err| format!("[{number}] {}", describe(&err)))?;
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "clip".to_string());
        let output = args.output_dir.join(format!("{stem}_{number}_edited.mp4"));
        jobs.push(Job {
            number,
            input,
            instruction,
            output,
        });
    }
    for job in &jobs {
        check_output_path(&job.output)
            .map_err(|err| format!("[{}] {}", job.number, describe(&err)))?;
        for other in &jobs {
            check_output_path_for(&job.output, &other.input)
                .map_err(|err| format!("[{}] {}", job.number, describe(&err)))?;
        }
    }
    Ok(jobs)
}

async fn run(args: Args) -> Result<(), String> {
    let jobs = check_jobs(&args)?;
    let target = args.service.target(!args.jobs.is_empty());
    let service = support::connect(&target, args.service.timeout).await?;
    let client = &service.client;
    let poll_interval = args
        .poll_interval
        .unwrap_or_else(|| service.poll_interval());

    let session = client
        .create_session()
        .await
        .map_err(|err| describe(&err))?;
    let mut renders: Vec<(usize, PathBuf, RenderJob)> = Vec::new();
    for job in &jobs {
        let number = job.number;
        let fail = |err: Error| format!("[{number}] {}", describe(&err));
        println!("[{number}] uploading {}", job.input.display());
        client.upload(&session, &[&job.input]).await.map_err(fail)?;
        println!("[{number}] asking: {}", job.instruction);
        let turn = client
            .run_turn(&session, &job.instruction)
            .await
            .map_err(fail)?;
        // Every job shows the timeline when the agent points at it, then renders: the words
        // may say so.
        let next = TranslateOptions::default()
            .shows_state(true)
            .shows_summary(true)
            .exports(true);
        let reply = translate_reply_with(turn.answer().trim(), &next);
        println!("[{number}] {}", reply.text);
        let state = client.state(&session).await.map_err(fail)?;
        if reply
            .actions
            .iter()
            .any(|action| matches!(action, GuiAction::ShowSummary | GuiAction::ReadState { .. }))
        {
            println!("[{number}] {}", state.summary());
        }
        let draft = state
            .draft()
            .filter(|draft| draft.is_ready_for_export())
            .ok_or_else(|| {
                fail(Error::NothingToExport {
                    session_id: session.id().to_string(),
                })
            })?;
        let render = RenderJob::new(&session);
        client
            .submit_render(&render, draft, &RenderOptions::default())
            .await
            .map_err(fail)?;
        println!("[{number}] render {} submitted", render.id);
        renders.push((number, job.output.clone(), render));
    }

    // Every render is waited for at the same time; each finishes on its own.
    let wait = WaitOptions::default().poll_interval(poll_interval);
    let mut tasks = tokio::task::JoinSet::new();
    for (number, output, job) in renders {
        let client = client.clone();
        let wait = wait.clone();
        tasks.spawn(async move {
            let result = async {
                let export = client.wait_for_render(&job, &wait).await?;
                client.download(&export, &output).await
            }
            .await;
            (number, output, result)
        });
    }
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        let (number, output, result) =
            joined.map_err(|err| format!("a render task failed: {err}"))?;
        match result {
            Ok(bytes) => println!("[{number}] Saved {} ({bytes} bytes)", output.display()),
            Err(err) => {
                failures += 1;
                println!("[{number}] failed: {}", describe(&err));
            }
        }
    }
    if failures > 0 {
        return Err(format!("{failures} of the renders failed (see above)"));
    }
    Ok(())
}
