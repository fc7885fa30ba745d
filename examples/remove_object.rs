//! The main job: upload a clip, ask the agent to remove an object, export a 1080p MP4.
//!
//! ```text
//! cargo run --example remove_object -- [INPUT [PROMPT]] [--output PATH] [--language CODE]
//!                                       [--poll-interval SECS] [--timeout SECS]
//!                                       [--simulate | --live] [--fresh]
//! ```
//!
//! With no INPUT it runs offline against the built-in simulator with the sample clip in
//! `assets/`. It talks to a service when pointed at one: an INPUT, `--live`, or
//! `NEMO_API_BASE` (default production); `--simulate` stays offline. The first line says
//! which. Auth: `NEMO_TOKEN`, or an anonymous token persisted under `NEMO_CONFIG_DIR`
//! (default `~/.config/nemovideo/`).
//!
//! The job is a `nemo_video::job::EditJob`: everything local is checked first, then each step
//! (session, upload, the agent's edit, render, download) is recorded in a journal in
//! `<config dir>/jobs/` before its request leaves. Run the same command after an interruption
//! or a failure and it continues where it stopped: no second session, upload or message, and
//! the same render. `--fresh` starts over. The journal is removed after success. (The offline
//! simulator lives in this process, so an offline run keeps no journal.)
//!
//! Exit status: 0 done, 1 failed (one `error: ...` line on stderr, no output file), 2 bad
//! usage, 130 interrupted by Ctrl-C or SIGTERM (nothing left in the output folder).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use nemo_video::intent::translate_reply;
use nemo_video::job::{EditJob, JobEvent, JobFile, JobOptions, Stage};
use nemo_video::render::{check_output_path_for, WaitOptions};
use nemo_video::upload::check_upload_file;
use nemo_video::DEFAULT_MAX_UPLOAD_BYTES;
use support::{describe, AgentActivity, Progress, Service, ServiceArgs};

const DEFAULT_PROMPT: &str = "remove the background person and replace it with a solid color";

/// Upload a clip, ask NemoVideo's agent to remove an object, and save the edited MP4.
///
/// With no INPUT: an offline demo with the sample clip, against the built-in simulator.
/// An interrupted or failed run is resumed by running the same command again.
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
    /// Start over instead of resuming an interrupted run of the same command
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let checked = match check_inputs(&args) {
        Ok(checked) => checked,
        Err(message) => return support::exit(Err(message)),
    };
    let run = Run::new(checked);
    // Ctrl-C or SIGTERM drops the job where it stands: its temporary download file goes with
    // it, and the journal already says what may have reached the service.
    let result = tokio::select! {
        result = run.go(&args) => result,
        () = support::interrupted() => return run.interrupted().await,
    };
    support::exit(result)
}

/// What the job works on, checked.
struct Checked {
    /// Offline demo with the sample clip (no INPUT given).
    demo: bool,
    input: PathBuf,
    prompt: String,
    output: PathBuf,
}

/// Step 1: everything that can be checked locally, before anything is sent or written.
fn check_inputs(args: &Args) -> Result<Checked, String> {
    let demo = args.input.is_none();
    let input = match &args.input {
        Some(path) => path.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4"),
    };
    check_upload_file(&input, DEFAULT_MAX_UPLOAD_BYTES).map_err(|err| describe(&err))?;
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
    Ok(Checked {
        demo,
        input,
        prompt: args.prompt.clone(),
        output,
    })
}

/// One run of the command: the job, its journal, and where it got to (shared with the
/// signal handler, which reports it).
struct Run {
    checked: Checked,
    /// The stage reached, and whether a journal keeps it for the next run.
    reached: Arc<Mutex<(Stage, bool)>>,
}

impl Run {
    fn new(checked: Checked) -> Run {
        Run {
            checked,
            reached: Arc::new(Mutex::new((Stage::New, false))),
        }
    }

    async fn go(&self, args: &Args) -> Result<(), String> {
        let target = args.service.target(!self.checked.demo);
        let service = support::connect(&target, args.service.timeout).await?;
        println!("Setting things up...");
        let journal = self.journal(&service, args.fresh)?;
        let mut job = self.job(journal.as_ref(), args)?;
        let credits = service
            .client
            .credits()
            .await
            .map_err(|err| describe(&err))?;
        println!(
            "Connected and ready ({} credits available).",
            credits.available
        );
        if job.stage != Stage::New {
            println!("Resuming: {}", job.stage.done_so_far());
        }
        let options = display(&service, args.poll_interval);
        let reached = Arc::clone(&self.reached);
        let kept = journal.is_some();
        let outcome = job
            .run(&service.client, &options, |job| {
                if let Some(journal) = &journal {
                    journal.save(job)?;
                }
                *reached.lock().unwrap_or_else(|e| e.into_inner()) = (job.stage, kept);
                Ok(())
            })
            .await
            .map_err(|err| match (&journal, job.stage) {
                (Some(_), stage) if stage != Stage::New => format!(
                    "{}; run the same command again to resume ({}), or add --fresh to start over",
                    describe(&err),
                    stage.done_so_far()
                ),
                _ => describe(&err),
            })?;
        if let Some(journal) = &journal {
            journal.remove().map_err(|err| describe(&err))?;
        }
        println!(
            "Saved {} ({} bytes)",
            self.checked.output.display(),
            outcome.bytes
        );
        Ok(())
    }

    /// The journal of this command (input file, prompt, output, service), or none for the
    /// offline simulator, which does not outlive the process.
    fn journal(&self, service: &Service, fresh: bool) -> Result<Option<JobFile>, String> {
        if service.simulator.is_some() {
            return Ok(None);
        }
        let Some(dir) = support::config_dir() else {
            return Ok(None);
        };
        let input = std::path::absolute(&self.checked.input).map_err(|err| err.to_string())?;
        let output = std::path::absolute(&self.checked.output).map_err(|err| err.to_string())?;
        let (size, modified) = std::fs::metadata(&input)
            .map(|meta| {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (meta.len(), modified)
            })
            .map_err(|err| format!("cannot read {}: {err}", input.display()))?;
        let mut key = Fnv64::default();
        for part in [
            service.client.config().base_url.as_str().as_bytes(),
            input.as_os_str().as_encoded_bytes(),
            &size.to_le_bytes(),
            &modified.to_le_bytes(),
            self.checked.prompt.as_bytes(),
            output.as_os_str().as_encoded_bytes(),
        ] {
            key.update(part);
            key.update(&[0]);
        }
        let journal = JobFile::new(
            dir.join("jobs")
                .join(format!("remove_object-{:016x}.json", key.0)),
        );
        if fresh {
            journal.remove().map_err(|err| describe(&err))?;
        }
        Ok(Some(journal))
    }

    /// The journal's job when it is this command's and its input is unchanged, else a new one.
    fn job(&self, journal: Option<&JobFile>, args: &Args) -> Result<EditJob, String> {
        let checked = &self.checked;
        let fresh = || {
            let job = EditJob::new(&checked.input, &checked.prompt, &checked.output)
                .map_err(|err| describe(&err))?;
            Ok::<_, String>(match &args.language {
                Some(language) => job.language(language),
                None => job,
            })
        };
        let Some(saved) = journal
            .map(JobFile::load)
            .transpose()
            .map_err(|err| describe(&err))?
        else {
            return fresh();
        };
        let Some(saved) = saved else {
            return fresh();
        };
        let new = fresh()?;
        let same = saved.input == new.input
            && saved.prompt == new.prompt
            && saved.output == new.output
            && saved.input_unchanged();
        Ok(if same { saved } else { new })
    }

    /// Ctrl-C or SIGTERM: the job was dropped where it stood. One line on what to do next.
    async fn interrupted(&self) -> ExitCode {
        let (stage, kept) = *self.reached.lock().unwrap_or_else(|e| e.into_inner());
        let next = if kept {
            format!(
                "run the same command again to resume ({})",
                stage.done_so_far()
            )
        } else {
            "nothing was kept; run the same command again to start over".to_string()
        };
        support::exit_interrupted(&next).await
    }
}

/// What the terminal shows as the job goes: the same lines, bars and spinner as a person
/// would expect step by step.
fn display(service: &Service, poll_interval: Option<Duration>) -> JobOptions {
    let poll_interval = poll_interval.unwrap_or_else(|| service.poll_interval());
    let upload = Arc::new(Progress::new("upload", true));
    let render = Arc::new(Progress::new("render", false));
    let download = Arc::new(Progress::new("download", true));
    let activity = Arc::new(AgentActivity::new());
    let (upload_bar, render_bar, download_bar) = (
        Arc::clone(&upload),
        Arc::clone(&render),
        Arc::clone(&download),
    );
    let wait = WaitOptions::default()
        .poll_interval(poll_interval)
        .on_progress(move |p| render_bar.set(p.progress.unwrap_or(0.0).round() as u64, 100));
    let turn = activity.turn_options();
    let shown = Arc::clone(&activity);
    JobOptions::default()
        .turn(turn)
        .wait(wait)
        .on_upload(move |p| upload_bar.set(p.sent, p.total))
        .on_download(move |p| download_bar.set(p.received, p.total.unwrap_or(p.received)))
        .on_event(move |event| match event {
            JobEvent::Uploading { path, size } => support::start_line(&format!(
                "Uploading {} ({size} bytes)...",
                path.display()
            )),
            JobEvent::Uploaded => upload.finish(),
            JobEvent::UploadFound => println!("The clip uploaded before the interruption is there."),
            JobEvent::Asking(prompt) => {
                println!("Asking the agent: \"{prompt}\"");
                shown.begin();
            }
            JobEvent::CheckingEdit { at_most } => println!(
                "Checking whether the edit sent before the interruption landed (for up to {} min)...",
                at_most.as_secs().div_ceil(60)
            ),
            JobEvent::Answer(answer) => {
                shown.finish();
                println!("Agent: {}", translate_reply(answer.trim()).text);
            }
            JobEvent::Timeline(summary) => println!("{summary}"),
            JobEvent::Rendering(_) => support::start_line(&format!(
                "Exporting (checking every {} s)...",
                poll_interval.as_secs_f64()
            )),
            JobEvent::Rendered => {
                render.set(100, 100);
                render.finish();
            }
            JobEvent::Downloading => support::start_line("Downloading..."),
            JobEvent::Downloaded { .. } => download.finish(),
            _ => {}
        })
}

/// FNV-1a, 64 bits: a stable name for a journal (the standard library's hasher may change
/// between Rust releases, and a journal must be found again by the next build).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
