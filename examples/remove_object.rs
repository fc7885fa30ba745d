//! The main job: upload a clip, ask the agent to remove an object, export a 1080p MP4.
//!
//! ```text
//! cargo run --example remove_object -- [INPUT [PROMPT]] [--output PATH] [--language CODE]
//!                                       [--poll-interval SECS] [--timeout SECS]
//!                                       [--simulate | --live] [--fresh] [--answer TEXT]
//!                                       [--send-again] [--settle SECS]
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
//! `<config dir>/jobs/` (a `JobFile`) before its request leaves. Run the same command after an
//! interruption, a crash or a failure and it continues where it stopped: no second session,
//! upload or message, and the same render. While it runs the job is locked: the same command
//! started again meanwhile says where it is running and exits 1, sending nothing. `--fresh`
//! starts over. The journal is removed after success. (The offline simulator lives in this
//! process, so an offline run keeps no journal.)
//!
//! When the agent asks a question instead of editing, the journal keeps it: run the same
//! command with `--answer "..."` to reply (the instruction is never sent again). When a turn
//! ran and changed nothing, `--send-again` sends the instruction once more (it may be charged
//! again).
//!
//! Exit status: 0 done, 1 failed (one `error: ...` line on stderr, no output file), 2 bad
//! usage, 130 interrupted by Ctrl-C, SIGTERM or SIGHUP (nothing left in the output folder; the
//! line says what was kept and how to go on).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use nemo_video::auth::StoreFuture;
use nemo_video::intent::{translate_reply, translate_reply_with, TranslateOptions};
use nemo_video::job::{
    EditJob, JobEvent, JobFile, JobOptions, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder,
    MemoryJobStore, Stage, StoredJob,
};
use nemo_video::lease::Lease;
use nemo_video::render::{check_output_path_for, WaitOptions};
use nemo_video::upload::check_upload_file;
use nemo_video::{Error, DEFAULT_MAX_UPLOAD_BYTES};
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
    /// Answer the question the agent asked in an earlier run of the same command
    #[arg(long, value_name = "TEXT")]
    answer: Option<String>,
    /// Send the instruction again after a turn that ran and changed nothing (it may be
    /// charged again)
    #[arg(long)]
    send_again: bool,
    /// Seconds a changed timeline must stay unchanged before an edit whose stream was lost
    /// counts as finished [default: 15]
    #[arg(long, value_name = "SECS", value_parser = support::parse_seconds)]
    settle: Option<Duration>,
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
    // Ctrl-C, SIGTERM or SIGHUP drops the job where it stands: its temporary download file
    // goes with it, and the journal already says what may have reached the service.
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
    /// Where the job got to, and the journal that keeps it (if any).
    reached: Arc<Mutex<Reached>>,
}

#[derive(Clone)]
struct Reached {
    stage: Stage,
    journal: Option<PathBuf>,
}

impl Run {
    fn new(checked: Checked) -> Run {
        Run {
            checked,
            reached: Arc::new(Mutex::new(Reached {
                stage: Stage::New,
                journal: None,
            })),
        }
    }

    async fn go(&self, args: &Args) -> Result<(), String> {
        let target = args.service.target(!self.checked.demo);
        let service = support::connect(&target, args.service.timeout).await?;
        println!("Setting things up...");
        let journal = self.journal(&service, args.fresh)?;
        let mut job = self.job(journal.as_ref(), args)?;
        self.set_reached(job.stage, journal.as_ref().map(|j| j.path().to_path_buf()));
        let store = Journal {
            file: journal.clone(),
            memory: MemoryJobStore::new(),
            reached: Arc::clone(&self.reached),
        };
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
        if let Some(answer) = &args.answer {
            job.answer_question(answer.as_str())
                .map_err(|err| describe(&err))?;
        }
        if args.send_again {
            job.send_again().map_err(|err| describe(&err))?;
        }
        let options = display(&service, args.poll_interval, args.settle);
        let outcome = job
            .run(&service.client, &store, &options)
            .await
            .map_err(|err| self.failed(&err, job.stage, journal.is_some()))?;
        if let Some(journal) = &journal {
            journal.delete().map_err(|err| describe(&err))?;
        }
        println!(
            "Saved {} ({} bytes)",
            self.checked.output.display(),
            outcome.bytes
        );
        Ok(())
    }

    fn set_reached(&self, stage: Stage, journal: Option<PathBuf>) {
        *self.reached.lock().unwrap_or_else(|e| e.into_inner()) = Reached { stage, journal };
    }

    /// The error line: the library's words, then what this command does next.
    fn failed(&self, err: &Error, stage: Stage, kept: bool) -> String {
        let text = describe(err);
        match err {
            Error::NeedsAnswer { .. } if kept => format!(
                "{text}: run the same command with --answer \"...\" to reply"
            ),
            Error::NeedsAnswer { .. } => format!(
                "{text}; nothing was kept (offline): run again with a more specific instruction"
            ),
            Error::EditNotApplied { .. } if kept => format!(
                "{text}: run the same command with --send-again to send it once more, or add --fresh to start over"
            ),
            // Nothing was sent, and the other run has the job: nothing to resume here.
            Error::JobRunningElsewhere { .. } => text,
            _ if kept && stage != Stage::New => format!(
                "{text}; run the same command again to resume ({}), or add --fresh to start over",
                stage.done_so_far()
            ),
            _ => text,
        }
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
            journal.delete().map_err(|err| describe(&err))?;
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
        let saved = journal
            .map(JobFile::read)
            .transpose()
            .map_err(|err| describe(&err))?
            .flatten();
        let Some(saved) = saved else {
            return fresh();
        };
        let input = std::path::absolute(&checked.input).map_err(|err| err.to_string())?;
        let output = std::path::absolute(&checked.output).map_err(|err| err.to_string())?;
        let job = saved.job;
        let same = job.input == input
            && job.prompt == checked.prompt
            && job.output == output
            && job.input_unchanged();
        if same {
            Ok(job)
        } else {
            fresh()
        }
    }

    /// Ctrl-C, SIGTERM or SIGHUP: the job was dropped where it stood. One line on what was
    /// kept and what to do next.
    async fn interrupted(&self) -> ExitCode {
        let reached = self
            .reached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let next = match reached.journal {
            Some(journal) if reached.stage != Stage::New => format!(
                "run the same command again to resume ({}; the job is kept in {})",
                reached.stage.done_so_far(),
                journal.display()
            ),
            Some(_) => "nothing was sent yet; run the same command again to start".to_string(),
            None if reached.stage != Stage::New => {
                "nothing was kept (the offline simulator ends with this run); run the same command again to start over".to_string()
            }
            None => "nothing was sent; run the same command again to start".to_string(),
        };
        support::exit_interrupted(&next).await
    }
}

/// The job's store: the journal file, or memory for the offline simulator. Every save also
/// tells the signal handler where the job got to.
struct Journal {
    file: Option<JobFile>,
    memory: MemoryJobStore,
    reached: Arc<Mutex<Reached>>,
}

impl Journal {
    fn store(&self) -> &dyn JobStore {
        match &self.file {
            Some(file) => file,
            None => &self.memory,
        }
    }
}

impl JobStore for Journal {
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>> {
        self.store().load(id)
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome> {
        Box::pin(async move {
            let outcome = self.store().save(id, job, expected_version).await?;
            if let JobSaveOutcome::Saved { .. } = outcome {
                self.reached.lock().unwrap_or_else(|e| e.into_inner()).stage = job.stage;
            }
            Ok(outcome)
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.store().remove(id)
    }

    fn job_ids(&self) -> StoreFuture<'_, Vec<String>> {
        self.store().job_ids()
    }

    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt> {
        self.store().try_lease(id, ttl, holder)
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        self.store().renew_lease(lease)
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.store().release_lease(lease)
    }

    fn lease_holder<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>> {
        self.store().lease_holder(id)
    }
}

/// What the terminal shows as the job goes: the same lines, bars and spinner as a person
/// would expect step by step.
fn display(
    service: &Service,
    poll_interval: Option<Duration>,
    settle: Option<Duration>,
) -> JobOptions {
    let poll_interval = poll_interval.unwrap_or_else(|| service.poll_interval());
    // The state is read every few seconds while an outcome is reconciled, never less often
    // than the render is polled.
    let reconcile_interval = poll_interval.min(Duration::from_secs(3));
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
    let mut options = JobOptions::default()
        .turn(turn)
        .wait(wait)
        .reconcile_interval(reconcile_interval);
    if let Some(settle) = settle {
        options = options.settle(settle);
    }
    options
        .on_upload(move |p| upload_bar.set(p.sent, p.total))
        .on_download(move |p| download_bar.set(p.received, p.total.unwrap_or(p.received)))
        .on_event(move |event| match event {
            JobEvent::Uploading { path, size } => support::start_line(&format!(
                "Uploading {} ({size} bytes)...",
                path.display()
            )),
            JobEvent::Uploaded => upload.finish(),
            JobEvent::UploadFound => println!("The clip uploaded before the interruption is there."),
            JobEvent::CheckingUpload { at_most } => println!(
                "The upload sent before the interruption may still land: checking the session every {} s, for at most {} s...",
                reconcile_interval.as_secs_f64(),
                at_most.as_secs().max(1)
            ),
            JobEvent::Asking(prompt) => {
                println!("Asking the agent: \"{prompt}\"");
                shown.begin();
            }
            JobEvent::CheckingEdit {
                at_most,
                every,
                resumed,
                answered,
            } => {
                shown.finish();
                let what = match (resumed, answered) {
                    (true, _) => "The edit message sent before the interruption",
                    (false, true) => "The agent's stream ended before its turn did; the edit",
                    (false, false) => "The service did not confirm the edit message; it",
                };
                println!(
                    "{what} may still be in progress: reading the timeline every {} s until the edit shows and settles, for at most {} (nothing is sent meanwhile)...",
                    every.as_secs_f64(),
                    minutes(*at_most)
                );
            }
            JobEvent::Question(question) => {
                shown.finish();
                println!("Agent asks: {}", translate_reply(question.trim()).text);
            }
            JobEvent::Answer(answer) => {
                shown.finish();
                // After an answer the job prints the timeline and exports: the words may say so.
                let next = TranslateOptions::default()
                    .shows_state(true)
                    .shows_summary(true)
                    .exports(true);
                println!("Agent: {}", translate_reply_with(answer.trim(), &next).text);
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

/// `14 min`, or `40 s` under a minute.
fn minutes(duration: Duration) -> String {
    if duration < Duration::from_secs(60) {
        format!("{} s", duration.as_secs().max(1))
    } else {
        format!("{} min", duration.as_secs().div_ceil(60))
    }
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
