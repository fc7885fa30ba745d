//! An interactive bot loop: each line you type is routed by intent (export, credits, status,
//! upload, or an edit sent to the agent), and the agent's GUI phrasing ("click the Export
//! button", "open the timeline") is turned into API actions.
//!
//! ```text
//! cargo run --example chat -- [--simulate] [--language CODE]
//! ```
//!
//! Try: `upload assets/sample_input.mp4`, `remove the background person`, `status`,
//! `credits`, `export`. End with Ctrl-D.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nemo_video::events::AgentEvent;
use nemo_video::intent::{gui_actions, route, GuiAction, Intent};
use nemo_video::render::{RenderOptions, WaitOptions};
use nemo_video::turn::TurnOptions;
use nemo_video::{NemoClient, Session};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit(run().await)
}

struct Bot {
    client: NemoClient,
    session: Session,
    exports: u32,
    poll_interval: Duration,
}

async fn run() -> Result<(), String> {
    let mut simulate = false;
    let mut language = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--simulate" => simulate = true,
            "--language" => {
                language = Some(args.next().ok_or("--language needs a code such as en")?)
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: chat [--simulate] [--language CODE]"
                ))
            }
        }
    }
    println!("Setting things up...");
    let (client, _simulator) = support::connect(simulate).await?;
    let poll_interval = if simulate {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    let session = client
        .create_session(language.as_deref())
        .await
        .map_err(|err| err.to_string())?;
    println!("Connected. Type what you want (\"upload <file>\", an edit, \"status\", \"credits\", \"export\"); Ctrl-D to quit.");
    let mut bot = Bot {
        client,
        session,
        exports: 0,
        poll_interval,
    };

    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("> ");
        let _ = std::io::stdout().flush();
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|err| format!("could not read input: {err}"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // One failed command should not end the conversation: report it and go on.
        if let Err(err) = bot.handle(line).await {
            println!("Sorry: {err}");
        }
    }
    println!("Bye.");
    Ok(())
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
        println!("Exporting...");
        let wait = WaitOptions::default()
            .poll_interval(self.poll_interval)
            .on_progress(|p| {
                if let Some(percent) = p.progress {
                    println!("  render {}: {percent:.0}%", p.status);
                }
            });
        let export = self
            .client
            .export(&self.session, &RenderOptions::default(), &wait)
            .await?;
        self.exports += 1;
        let path = PathBuf::from(format!("chat_export_{}.mp4", self.exports));
        let bytes = self
            .client
            .download_render(&export.job, export.output_url.as_deref(), &path, |_| {})
            .await?;
        println!("Saved {} ({bytes} bytes)", path.display());
        Ok(())
    }

    async fn edit(&mut self, line: &str) -> nemo_video::Result<()> {
        let options = TurnOptions::default().on_event(|event| match event {
            AgentEvent::StillWorking { .. } => println!("⏳ Still working..."),
            AgentEvent::ToolCall(call) => println!("  (agent is running {})", call.name),
            _ => {}
        });
        let turn = self
            .client
            .run_turn_with(&self.session, line, &options)
            .await?;
        println!("{}", turn.answer());
        // The agent writes for a GUI; do through the API what it tells a person to click.
        for action in gui_actions(&turn.text) {
            match action {
                GuiAction::Export => {
                    println!("(The agent points at the Export button: exporting through the API.)");
                    self.export().await?
                }
                GuiAction::ShowSummary | GuiAction::ReadState { .. } => self.show_status().await?,
                GuiAction::SendEdit => println!(
                    "(To move things, describe the change, e.g. \"move the title to the end\".)"
                ),
                GuiAction::Execute { target } if !target.is_empty() => {
                    println!("(The agent mentions a \"{target}\" button: tell me what you want and I will do it.)")
                }
                _ => {}
            }
        }
        Ok(())
    }
}
