//! Batch style: several clips in one session, each with its own instruction and its own
//! render; the renders are polled concurrently.
//!
//! ```text
//! cargo run --example batch -- [--simulate] [--poll-interval SECS] [FILE=INSTRUCTION ...]
//! ```
//!
//! With no FILE=INSTRUCTION pairs it runs offline against the simulator with the sample clip
//! and two instructions.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use nemo_video::render::{RenderJob, RenderOptions, WaitOptions};
use nemo_video::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit(run().await)
}

async fn run() -> Result<(), String> {
    let mut simulate = false;
    let mut poll_interval = None;
    let mut jobs: Vec<(PathBuf, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--simulate" => simulate = true,
            "--poll-interval" => {
                let text = args
                    .next()
                    .ok_or("--poll-interval needs seconds, like 30")?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--poll-interval takes positive seconds (got {text:?})")
                    })?;
                poll_interval = Some(Duration::from_secs_f64(secs));
            }
            pair => {
                let (file, instruction) = pair.split_once('=').ok_or_else(|| {
                    format!(
                        "{pair:?} is not FILE=INSTRUCTION; quote it: \"clip.mp4=remove the logo\""
                    )
                })?;
                jobs.push((PathBuf::from(file), instruction.to_string()));
            }
        }
    }
    let demo = jobs.is_empty();
    if demo {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4");
        jobs.push((
            sample.clone(),
            "remove the background person and replace it with a solid color".to_string(),
        ));
        jobs.push((
            sample,
            "add lo-fi background music at 35% volume".to_string(),
        ));
    }
    let (client, _simulator) = support::connect(demo || simulate).await?;
    let poll_interval = poll_interval.unwrap_or(if demo {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    });

    let session = client
        .create_session(None)
        .await
        .map_err(|err| err.to_string())?;
    let mut renders: Vec<(usize, PathBuf, RenderJob)> = Vec::new();
    for (index, (file, instruction)) in jobs.iter().enumerate() {
        let number = index + 1;
        println!("[{number}] uploading {}", file.display());
        client
            .upload_files(&session, &[file])
            .await
            .map_err(|err| format!("[{number}] {err}"))?;
        println!("[{number}] asking: {instruction}");
        let turn = client
            .run_turn(&session, instruction)
            .await
            .map_err(|err| format!("[{number}] {err}"))?;
        println!("[{number}] {}", turn.answer());
        let state = client
            .state(&session)
            .await
            .map_err(|err| format!("[{number}] {err}"))?;
        let draft = state
            .draft()
            .filter(|draft| draft.is_ready_for_export())
            .ok_or_else(|| {
                format!(
                    "[{number}] {}",
                    Error::NothingToExport {
                        session_id: session.id().to_string()
                    }
                )
            })?;
        let job = client
            .render(&session, draft, &RenderOptions::default())
            .await
            .map_err(|err| format!("[{number}] {err}"))?;
        println!("[{number}] render {} submitted", job.id);
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "clip".to_string());
        renders.push((
            number,
            PathBuf::from(format!("{stem}_{number}_edited.mp4")),
            job,
        ));
    }

    // Every render is waited for at the same time; each finishes on its own.
    let wait = WaitOptions::default().poll_interval(poll_interval);
    let mut tasks = tokio::task::JoinSet::new();
    for (number, output, job) in renders {
        let client = client.clone();
        let wait = wait.clone();
        tasks.spawn(async move {
            let result = async {
                let url = client.wait_for_render(&job, &wait).await?;
                client
                    .download_render(&job, url.as_deref(), &output, |_| {})
                    .await
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
                eprintln!("[{number}] error: {err}");
            }
        }
    }
    if failures > 0 {
        return Err(format!("{failures} of the renders failed (see above)"));
    }
    Ok(())
}
