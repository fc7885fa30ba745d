//! An interactive bot loop: each line you type is routed by intent (export, credits, status,
//! upload, or an edit sent to the agent), and the agent's replies, written for its web editor
//! ("click the Export button", "open the timeline"), are shown translated into what you can
//! type here.
//!
//! ```text
//! cargo run --example chat -- [--simulate | --live] [--language CODE] [--output-dir DIR]
//!                             [--poll-interval SECS] [--timeout SECS]
//! ```
//!
//! Offline against the built-in simulator unless pointed at a service (`--live`, or
//! `NEMO_API_BASE`); the first line says which.
//!
//! Try: `help`, `upload assets/sample_input.mp4`, `remove the background person`, `status`,
//! `credits`, `export`. End with Ctrl-D. Chat does only what you type: `help` (also `?`,
//! `/help`, `帮助`) prints what you can type and sends nothing; only an edit goes to the
//! agent (and costs credits); a render starts only when you ask for an export, never because
//! the agent's reply mentions the Export button (the reply then says to ask for one), and
//! nothing is uploaded unless you type `upload PATH`. When the reply points at the timeline
//! or a panel, chat reads the project's state (free) and shows its summary below the reply.
//! A file is checked before it is uploaded, and the output folder before the first request.
//! Exit status: 0 at the end of input, 1 when the conversation cannot start (one
//! `error: ...` line on stderr), 2 bad usage, 130 interrupted by Ctrl-C, SIGTERM or SIGHUP,
//! at the prompt or mid-command (a video being written is not kept); a failed command in the
//! conversation is answered with "Sorry: ..." and the conversation goes on.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nemo_video::intent::{
    gui_actions, route, translate_reply_with, GuiAction, Intent, TranslateOptions,
};
use nemo_video::render::{check_output_path, ExportOptions, RenderOptions, WaitOptions};
use nemo_video::upload::check_upload_file;
use nemo_video::{NemoClient, Session, SessionOptions};
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
    let mut options = SessionOptions::default();
    if let Some(language) = &args.language {
        options = options.language(language.as_str());
    }
    let session = client
        .create_session_with(&options)
        .await
        .map_err(|err| describe(&err))?;
    println!("Connected. Type an edit in plain words, or \"help\" for what else you can type; Ctrl-D to quit.");
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
        if is_help(line) {
            print!("{HELP}");
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

/// What `help` prints: every command, and what it costs.
const HELP: &str = "\
You can type:
  upload PATH    add a video, image or audio file to the project
  status         show the project's timeline (free)
  credits        show your credit balance (free)
  export         render the video and save it as chat_export_<n>.mp4 in the output folder
  help           show this help (also ?, /help, 帮助)
  anything else  an edit in plain words, sent to the agent (it costs credits), such as
                 \"remove the background person\"
End with Ctrl-D.
";

/// Whether `line` (trimmed) asks for the help: checked before routing, so that it never
/// reaches the agent.
fn is_help(line: &str) -> bool {
    ["help", "?", "？", "/help", "帮助"]
        .iter()
        .any(|word| line.eq_ignore_ascii_case(word))
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
                        .upload(&self.session, &[PathBuf::from(&path)])
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
            .export_with(
                &self.session,
                &ExportOptions::default()
                    .render(RenderOptions::default())
                    .wait(wait),
            )
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
        let bytes = self.client.download(&export, &path).await?;
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
        let answer = turn.answer();
        let answer = answer.trim();
        // The agent writes for a GUI. Chat does only what the user typed, plus one free read:
        // when the reply points at the timeline or a panel, the state's summary is shown
        // below it. The translated words say exactly that much, and no more.
        let actions = gui_actions(answer);
        let points_at_state = actions
            .iter()
            .any(|action| matches!(action, GuiAction::ShowSummary | GuiAction::ReadState { .. }));
        let state = if points_at_state {
            Some(self.client.state(&self.session).await)
        } else {
            None
        };
        let summary_shown = matches!(state, Some(Ok(_)));
        let options = TranslateOptions::default()
            .shows_state(summary_shown)
            .shows_summary(summary_shown);
        println!("{}", translate_reply_with(answer, &options).text);
        let state_read = match state {
            Some(Ok(state)) => {
                println!("{}", state.summary());
                Ok(())
            }
            Some(Err(err)) => Err(err),
            None => Ok(()),
        };
        // What the reply asks the user to click, as the words to type here.
        if actions.contains(&GuiAction::Export) {
            println!("Type \"export\" to render and save the video.");
        }
        if actions.iter().any(
            |action| matches!(action, GuiAction::Execute { target } if is_upload_button(target)),
        ) {
            println!("Type \"upload PATH\" to add a file.");
        }
        // A failed read is said last ("Sorry: ..."), after the words that did not promise it.
        state_read
    }
}

/// The agent's upload button (`Upload`, `上传`, `Import`, `导入`), which chat never presses.
fn is_upload_button(name: &str) -> bool {
    let name = name.to_lowercase();
    ["upload", "import", "上传", "导入"]
        .iter()
        .any(|word| name.starts_with(word))
}
