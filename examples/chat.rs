//! An interactive bot loop: each line you type is routed by intent (export, credits, status,
//! upload, or an edit sent to the agent), and the agent's GUI phrasing ("click the Export
//! button", "open the timeline") is turned into API actions.
//!
//! ```text
//! cargo run --example chat -- [--simulate | --live] [--language CODE] [--output-dir DIR]
//!                             [--poll-interval SECS] [--timeout SECS]
//! ```
//!
//! Offline against the built-in simulator unless pointed at a service (`--live`, or
//! `NEMO_API_BASE`); the first line says which.
//!
//! Try: `upload assets/sample_input.mp4`, `remove the background person`, `status`,
//! `credits`, `export`. End with Ctrl-D. A file is checked before it is uploaded, and the
//! output folder before the first request. Exit status: 0 at the end of input, 1 when the
//! conversation cannot start (one `error: ...` line on stderr), 2 bad usage, 130 interrupted
//! by Ctrl-C, SIGTERM or SIGHUP, at the prompt or mid-command (a video being written is not
//! kept); a failed command in the conversation is answered with "Sorry: ..." and the
//! conversation goes on.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nemo_video::intent::{route, translate_reply, GuiAction, Intent};
use nemo_video::render::{check_output_path, RenderOptions, WaitOptions};
use nemo_video::upload::check_upload_file;
use nemo_video::{NemoClient, Session};
use support::{describe, AgentActivity, Progress, ServiceArgs};

/// Talk to NemoVideo's agent line by line, as a bot would: each line is routed by intent.
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    /// The session's language, such as en or zh
    #[arg(long, value_name = "CODE")]
    language: Option<String>,
    /// Folder for exported videos (chat_export_<n>.mp4)
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,
    /// Seconds between render status checks [default: 30; the simulator's pace offline]
    #[arg(long, value_name = "SECS", value_parser = support::parse_seconds)]
    poll_interval: Option<Duration>,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit_or_interrupted(
        run(Args::parse()),
        "run the example again to start a new conversation (a video being written was not kept)",
    )
    .await
}

struct Bot {
    client: NemoClient,
    session: Session,
    exports: u32,
    output_dir: PathBuf,
    poll_interval: Duration,
}

async fn run(args: Args) -> Result<(), String> {
    // The exports land here: refuse a folder that cannot take them before anything is sent.
    check_output_path(args.output_dir.join("chat_export_1.mp4")).map_err(|err| describe(&err))?;
    let service = support::connect(&args.service.target(false), args.service.timeout).await?;
    println!("Setting things up...");
    let poll_interval = args
        .poll_interval
        .unwrap_or_else(|| service.poll_interval());
    let client = service.client.clone();
    let session = client
        .create_session(args.language.as_deref())
        .await
        .map_err(|err| describe(&err))?;
    println!("Connected. Type what you want (\"upload <file>\", an edit, \"status\", \"credits\", \"export\"); Ctrl-D to quit.");
    let mut bot = Bot {
        client,
        session,
        exports: 0,
        output_dir: args.output_dir,
        poll_interval,
    };

    let mut lines = input_lines();
    loop {
        print!("> ");
        let _ = std::io::stdout().flush();
        // Awaited, not a blocking read: a signal at the prompt is seen at once.
        let Some(line) = lines.recv().await else {
            break;
        };
        let line = line.map_err(|err| format!("could not read input: {err}"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // One failed command should not end the conversation: report it and go on.
        if let Err(err) = bot.handle(line).await {
            println!("Sorry: {}", describe(&err));
        }
    }
    println!("Bye.");
    Ok(())
}

/// The lines of standard input, read on a thread of their own: a blocking read on the
/// runtime's only thread would keep it from seeing Ctrl-C. (Tokio's own stdin reads on its
/// blocking pool, which the runtime waits for when it shuts down: the process would not exit
/// until the next line.) The thread is left blocked in its read when the process exits.
fn input_lines() -> tokio::sync::mpsc::UnboundedReceiver<std::io::Result<String>> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("chat-stdin".to_string())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if sender.send(line).is_err() {
                    break;
                }
            }
        })
        .ok();
    receiver
}

impl Bot {
    async fn handle(&mut self, line: &str) -> nemo_video::Result<()> {
        match route(line) {
            Intent::Credits => {
                let credits = self.client.credits().await?;
                println!(
                    "{} credits available ({} frozen).",
                    credits.available, credits.frozen
                );
            }
            Intent::Status => self.show_status().await?,
            Intent::Export => self.export().await?,
            Intent::Upload => {
                let path = line
                    .split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ");
                if path.is_empty() {
                    println!("Which file? Type: upload <path to a video, image or audio file>");
                } else {
                    // The same checks the upload makes, spelled out: nothing is sent for a
                    // missing, empty or unsupported file.
                    check_upload_file(&path, self.client.config().max_upload_bytes)?;
                    let result = self
                        .client
                        .upload_files(&self.session, &[PathBuf::from(&path)])
                        .await?;
                    println!("Uploaded {} file(s).", result.files.len().max(1));
                }
            }
            _ => self.edit(line).await?,
        }
        Ok(())
    }

    async fn show_status(&self) -> nemo_video::Result<()> {
        let state = self.client.state(&self.session).await?;
        println!("{}", state.summary());
        Ok(())
    }

    async fn export(&mut self) -> nemo_video::Result<()> {
        support::start_line("Exporting...");
        let progress = Arc::new(Progress::new("render", false));
        let bar = Arc::clone(&progress);
        let wait = WaitOptions::default()
            .poll_interval(self.poll_interval)
            .on_progress(move |p| bar.set(p.progress.unwrap_or(0.0).round() as u64, 100));
        let export = self
            .client
            .export(&self.session, &RenderOptions::default(), &wait)
            .await;
        if export.is_ok() {
            progress.set(100, 100);
        }
        progress.finish();
        let export = export?;
        self.exports += 1;
        let path = self
            .output_dir
            .join(format!("chat_export_{}.mp4", self.exports));
        let bytes = self
            .client
            .download_render(&export.job, export.output_url.as_deref(), &path, |_| {})
            .await?;
        println!("Saved {} ({bytes} bytes)", path.display());
        Ok(())
    }

    async fn edit(&mut self, line: &str) -> nemo_video::Result<()> {
        let activity = AgentActivity::start();
        let turn = self
            .client
            .run_turn_with(&self.session, line, &activity.turn_options())
            .await;
        activity.finish();
        let turn = turn?;
        // The agent writes for a GUI: show its words translated, then do through the API what
        // it tells a person to click.
        let reply = translate_reply(turn.answer().trim());
        println!("{}", reply.text);
        let mut status_shown = false;
        for action in reply.actions {
            match action {
                GuiAction::Export => self.export().await?,
                GuiAction::ShowSummary | GuiAction::ReadState { .. } if !status_shown => {
                    self.show_status().await?;
                    status_shown = true;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
