//! The main job: upload a clip, ask the agent to remove an object, export a 1080p MP4.
//!
//! ```text
//! cargo run --example remove_object -- [INPUT [PROMPT]] [--output PATH] [--language CODE]
//!                                       [--poll-interval SECS] [--simulate]
//! ```
//!
//! With no INPUT it runs offline against the built-in simulator with the sample clip in
//! `assets/`. With INPUT it talks to the real service (`NEMO_API_BASE`, default production)
//! unless `--simulate` is given. Auth: `NEMO_TOKEN`, or an anonymous token persisted under
//! `NEMO_CONFIG_DIR` (default `~/.config/nemovideo/`).

#[path = "support/mod.rs"]
mod support;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nemo_video::events::AgentEvent;
use nemo_video::render::{RenderOptions, WaitOptions};
use nemo_video::turn::{TurnEnd, TurnOptions};

const DEFAULT_PROMPT: &str = "remove the background person and replace it with a solid color";
const USAGE: &str = "usage: remove_object [INPUT [PROMPT]] [--output PATH] [--language CODE] [--poll-interval SECS] [--simulate]";

struct Args {
    input: Option<PathBuf>,
    prompt: String,
    output: Option<PathBuf>,
    language: Option<String>,
    poll_interval: Option<Duration>,
    simulate: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        input: None,
        prompt: DEFAULT_PROMPT.to_string(),
        output: None,
        language: None,
        poll_interval: None,
        simulate: false,
    };
    let mut positional = Vec::new();
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        let mut value = |name: &str| {
            raw.next()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--output" | "-o" => args.output = Some(PathBuf::from(value("--output")?)),
            "--language" => args.language = Some(value("--language")?),
            "--poll-interval" => {
                let text = value("--poll-interval")?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| format!("--poll-interval takes seconds between 0 and 3600, like 30 or 0.5 (got {text:?})"))?;
                args.poll_interval = Some(Duration::from_secs_f64(secs));
            }
            "--simulate" => args.simulate = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}; {USAGE}"))
            }
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    args.input = positional.next().map(PathBuf::from);
    if let Some(prompt) = positional.next() {
        args.prompt = prompt;
    }
    if positional.next().is_some() {
        return Err(format!("too many arguments (quote the prompt); {USAGE}"));
    }
    Ok(args)
}

/// Prints progress as a bar on a terminal, as plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    last_line: Mutex<u64>,
}

impl Progress {
    fn new(label: &'static str, total: u64, unit_bytes: bool) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let template = if unit_bytes {
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})"
            } else {
                "{msg} [{bar:30}] {pos}%"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        });
        Progress {
            bar,
            label,
            last_line: Mutex::new(u64::MAX),
        }
    }

    fn set(&self, position: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total.max(1));
                bar.set_position(position);
            }
            None => {
                // Plain output: a line per 25% step.
                let step = position
                    .saturating_mul(4)
                    .checked_div(total)
                    .unwrap_or(4)
                    .min(4);
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if *last != step {
                    *last = step;
                    println!("{}: {}%", self.label, step * 25);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    support::exit(run(args).await)
}

async fn run(args: Args) -> Result<(), String> {
    let demo = args.input.is_none();
    let input = match &args.input {
        Some(path) => path.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4"),
    };
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
    // Fail before connecting (and creating a session) when the input cannot be read.
    let size = match std::fs::metadata(&input) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => {
            return Err(format!(
                "{} is not a file; pass a video file such as clip.mp4",
                input.display()
            ))
        }
        Err(err) => {
            return Err(format!(
                "cannot read {}: {err}; check the path",
                input.display()
            ))
        }
    };
    println!("Setting things up...");
    // The simulator (when used) must outlive the client's use of it.
    let (client, simulator) = support::connect(demo || args.simulate).await?;
    if let Some(simulator) = &simulator {
        println!(
            "(offline demo: using the built-in NemoVideo simulator at {})",
            simulator.base_url()
        );
    }
    let session = client
        .create_session(args.language.as_deref())
        .await
        .map_err(|err| err.to_string())?;
    let credits = client.credits().await.map_err(|err| err.to_string())?;
    println!(
        "Connected and ready ({} credits available).",
        credits.available
    );

    println!("Uploading {} ({} bytes)...", input.display(), size);
    let upload_progress = Arc::new(Progress::new("upload", size, true));
    let bar = Arc::clone(&upload_progress);
    client
        .upload_files_with_progress(&session, &[&input], move |p| bar.set(p.sent, p.total))
        .await
        .map_err(|err| err.to_string())?;
    upload_progress.finish();

    println!("Asking the agent: \"{}\"", args.prompt);
    let live = std::io::stdout().is_terminal();
    let options = TurnOptions::default().on_event(move |event| match event {
        AgentEvent::Text(chunk) if chunk.thought => {}
        AgentEvent::Text(chunk) if chunk.partial && live => {
            print!("{}", chunk.text);
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        AgentEvent::Text(chunk) if !chunk.partial => {
            if live {
                println!();
            } else {
                println!("Agent: {}", chunk.text.trim());
            }
        }
        AgentEvent::ToolCall(call) => println!("  (agent is running {})", call.name),
        AgentEvent::StillWorking { .. } => println!("⏳ Still working..."),
        _ => {}
    });
    let turn = client
        .run_turn_with(&session, &args.prompt, &options)
        .await
        .map_err(|err| err.to_string())?;
    if turn.text.is_empty() {
        println!("{}", turn.answer());
    }
    match &turn.end {
        TurnEnd::WaitingForUser { question, .. } => {
            return Err(format!(
                "the agent needs more detail before editing: {}; run again with a more specific prompt",
                question.as_deref().unwrap_or("it asked a question")
            ));
        }
        TurnEnd::Disconnected(err) => {
            println!("(the agent's stream was cut off: {err}; continuing with the saved timeline)")
        }
        _ => {}
    }

    let state = client
        .state(&session)
        .await
        .map_err(|err| err.to_string())?;
    println!("{}", state.summary());

    let poll_interval = args.poll_interval.unwrap_or(if demo {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    });
    println!(
        "Exporting (checking every {} s)...",
        poll_interval.as_secs_f64()
    );
    let render_progress = Arc::new(Progress::new("render", 100, false));
    let bar = Arc::clone(&render_progress);
    let wait = WaitOptions::default()
        .poll_interval(poll_interval)
        .on_progress(move |p| bar.set(p.progress.unwrap_or(0.0).round() as u64, 100));
    let export = client
        .export(&session, &RenderOptions::default(), &wait)
        .await
        .map_err(|err| err.to_string())?;
    render_progress.set(100, 100);
    render_progress.finish();

    println!("Downloading...");
    let download_progress = Arc::new(Progress::new("download", 0, true));
    let bar = Arc::clone(&download_progress);
    let bytes = client
        .download_render(
            &export.job,
            export.output_url.as_deref(),
            &output,
            move |p| bar.set(p.received, p.total.unwrap_or(p.received)),
        )
        .await
        .map_err(|err| err.to_string())?;
    download_progress.finish();
    println!("Saved {} ({bytes} bytes)", output.display());
    Ok(())
}
