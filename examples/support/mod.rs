//! What the examples share: the arguments every example takes, the one rule that decides
//! whether an example talks to a real service or to the offline simulator ([`Target`]),
//! showing progress and the agent at work, and ending with the documented exit status (0
//! done, 1 failed at run time with one `error: ...` line on stderr, 2 bad usage, which clap
//! handles).
#![allow(dead_code)] // each example uses part of this

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nemo_video::events::AgentEvent;
use nemo_video::simulator::Simulator;
use nemo_video::turn::TurnOptions;
use nemo_video::{Error, NemoClient, TimeoutKind};

/// How often the examples poll a render of the real service: the service's advice.
pub const SERVICE_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// The arguments that choose and tune the connection, shared by every example.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    /// Run offline against the built-in simulator, even with input files or NEMO_API_BASE set
    #[arg(long, conflicts_with = "live")]
    pub simulate: bool,
    /// Talk to the service (NEMO_API_BASE, default production), not the offline simulator
    #[arg(long)]
    pub live: bool,
    /// Longest wait for one answer from the service, in seconds [default: 60]
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
}

/// Seconds as a duration: more than 0, at most an hour, like `30` or `0.5`.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            "expected a number of seconds above 0 and at most 3600, like 30 or 0.5".to_string()
        })
}

/// Which service an example talks to. The rule, the same for every example: offline,
/// against a fresh built-in simulator, unless pointed at a service: `--live`, `NEMO_API_BASE`
/// (or `NEMO_API_URL`) set, or an input file given (`remove_object`, `batch`). `--simulate`
/// stays offline whatever else says so. The first line of output says which it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in simulator, in this process.
    Simulator,
    /// The service the environment names (production by default); `why` says what chose it.
    Service { why: &'static str },
}

impl ServiceArgs {
    /// The [`Target`] of a run; `input_given`: the user named files to work on.
    pub fn target(&self, input_given: bool) -> Target {
        let env_set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if self.simulate {
            Target::Simulator
        } else if env_set("NEMO_API_BASE") {
            Target::Service {
                why: "from NEMO_API_BASE",
            }
        } else if env_set("NEMO_API_URL") {
            Target::Service {
                why: "from NEMO_API_URL",
            }
        } else if self.live {
            Target::Service { why: "--live" }
        } else if input_given {
            Target::Service {
                why: "an input file was given; add --simulate to stay offline",
            }
        } else {
            Target::Simulator
        }
    }
}

/// Prints the first line of an example that talks to a stand-in on this machine: what it is
/// and where.
pub fn say_offline(what: &str, url: &str) {
    println!("Offline: using {what} at {url} (nothing leaves this machine).");
}

/// A connected client: the real service, or a fresh in-process simulator (kept alive here
/// for as long as the client is used).
pub struct Service {
    pub client: NemoClient,
    pub simulator: Option<Simulator>,
}

impl Service {
    /// How often to poll a render: the service's 30 s, or a tenth of the simulator's render
    /// time, so a demo runs at the simulator's speed.
    pub fn poll_interval(&self) -> Duration {
        match &self.simulator {
            Some(simulator) => (simulator.render_time() / 10).max(Duration::from_millis(50)),
            None => SERVICE_POLL_INTERVAL,
        }
    }
}

/// A client for `target`: the service the environment names (`NEMO_API_BASE`, `NEMO_TOKEN`,
/// ...), or a fresh in-process simulator whose tokens stay in memory and whose links
/// (registration, claim) point at the simulator. Prints the run's first line, saying which
/// one it talks to. Sends nothing.
pub async fn connect(target: &Target, timeout: Option<Duration>) -> Result<Service, String> {
    let (builder, simulator) = if *target == Target::Simulator {
        let simulator = Simulator::start()
            .await
            .map_err(|err| format!("could not start the offline simulator: {err}"))?;
        let builder = NemoClient::builder()
            .base_url(simulator.base_url())
            .web_url(simulator.web_url())
            .no_persistence();
        (builder, Some(simulator))
    } else {
        (nemo_video::NemoClientBuilder::from_env(), None)
    };
    let builder = match timeout {
        Some(timeout) => builder.request_timeout(timeout),
        None => builder,
    };
    let client = builder.build().map_err(|err| describe(&err))?;
    CONNECTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(client.clone());
    match (&simulator, target) {
        (Some(simulator), _) => {
            say_offline("the built-in NemoVideo simulator", simulator.base_url());
        }
        (None, Target::Service { why }) => println!(
            "Live: using the NemoVideo service at {} ({why}).",
            client.config().base_url.as_str().trim_end_matches('/')
        ),
        (None, Target::Simulator) => {}
    }
    Ok(Service { client, simulator })
}

/// An error as one line for a person, with the example's own advice where the library's
/// would name a setting the person cannot reach from the command line.
pub fn describe(err: &Error) -> String {
    match err {
        Error::Timeout {
            kind: TimeoutKind::Request,
            after,
        } => format!(
            "the service did not answer within {} s; it may be busy: try again later, or allow more time with --timeout SECS",
            after.as_secs_f64()
        ),
        other => other.to_string(),
    }
}

/// Exit status 0, or 1 with one clear line on stderr (never a debug dump).
pub fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Whether progress is drawn live (bars, a spinner on stderr) rather than printed as plain
/// steps: only when stderr is a terminal.
pub fn is_live() -> bool {
    std::io::stderr().is_terminal()
}

/// Progress of one transfer or render: a bar on a terminal; otherwise each quarter reached
/// printed on the current stdout line (`25% 50% 75% 100%`), the same whatever the chunking.
pub struct Progress {
    bar: Option<ProgressBar>,
    quarters_shown: Mutex<u64>,
}

impl Progress {
    /// `label` names the bar; `bytes` shows byte counts instead of a percentage.
    pub fn new(label: &'static str, bytes: bool) -> Progress {
        let bar = is_live().then(|| {
            let bar = ProgressBar::new(1);
            let template = if bytes {
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
            quarters_shown: Mutex::new(0),
        }
    }

    /// `position` out of `total` done.
    pub fn set(&self, position: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(1));
            bar.set_position(position);
            return;
        }
        let reached = position
            .saturating_mul(4)
            .checked_div(total)
            .unwrap_or(4)
            .min(4);
        let mut shown = self
            .quarters_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if reached > *shown {
            let mut stdout = std::io::stdout().lock();
            for quarter in *shown + 1..=reached {
                let _ = write!(stdout, " {}%", quarter * 25);
            }
            let _ = stdout.flush();
            *shown = reached;
        }
    }

    /// Ends the bar, or the plain line.
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => println!(),
        }
    }
}

/// Starts a line that [`Progress`] continues (`Uploading x.mp4 (6926 bytes)... 25% ...`).
pub fn start_line(text: &str) {
    if is_live() {
        println!("{text}");
    } else {
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
}

/// What the terminal shows while the agent works: on a terminal a spinner with the elapsed
/// time and the tool being run; otherwise the service's "⏳ Still working..." line each time
/// the stream reports the agent still busy (every 2 minutes by default).
pub struct AgentActivity {
    spinner: Option<ProgressBar>,
}

impl AgentActivity {
    /// Shown at once.
    pub fn start() -> AgentActivity {
        let activity = AgentActivity::new();
        activity.begin();
        activity
    }

    /// Ready, not shown until [`begin`](Self::begin).
    pub fn new() -> AgentActivity {
        let spinner = is_live().then(|| {
            let spinner = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} The agent is working ({elapsed}){msg}")
            {
                spinner.set_style(style);
            }
            spinner
        });
        AgentActivity { spinner }
    }

    /// Starts showing the spinner (on a terminal).
    pub fn begin(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.reset_elapsed();
            spinner.enable_steady_tick(Duration::from_millis(120));
        }
    }

    /// Turn options that keep the display up to date.
    pub fn turn_options(&self) -> TurnOptions {
        let spinner = self.spinner.clone();
        TurnOptions::default().on_event(move |event| match (&spinner, event) {
            (Some(spinner), AgentEvent::ToolCall(call)) => {
                spinner.set_message(format!(": running {}", call.name))
            }
            (Some(spinner), AgentEvent::ToolResult(_)) => spinner.set_message(""),
            (None, AgentEvent::StillWorking { .. }) => println!("⏳ Still working..."),
            _ => {}
        })
    }

    /// Clears the spinner.
    pub fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

/// Exit status for a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM or SIGHUP (a closed terminal, handled
/// like SIGTERM). Once this future has been polled, those signals no longer kill the process:
/// the caller decides what to clean up and how to exit.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut terminate), Ok(mut hangup)) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                    _ = hangup.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `work` to its exit status, unless Ctrl-C, SIGTERM or SIGHUP comes first: then the work is
/// dropped where it stands (a download in progress takes its temporary file with it, so
/// nothing half-written is left in the output folder) and the run ends with `next` and 130.
pub async fn exit_or_interrupted(
    work: impl std::future::Future<Output = Result<(), String>>,
    next: &str,
) -> ExitCode {
    tokio::select! {
        result = work => exit(result),
        () = interrupted() => exit_interrupted(next).await,
    }
}

/// The clients [`connect`] made, so that an interruption can wait for a token being issued
/// to them (see [`settle_identities`]).
static CONNECTED: std::sync::Mutex<Vec<NemoClient>> = std::sync::Mutex::new(Vec::new());

/// The longest an interrupted example waits for a token the service is issuing to be saved.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Before exiting after an interruption: a token request in flight (it runs on even though
/// its call was dropped) gets a few seconds to land and be saved, because the service issues
/// one anonymous token per client id per 7 days, and a token lost here would lock the next run
/// out. Says what it waits for, and how it ended.
pub async fn settle_identities() {
    let clients: Vec<NemoClient> = CONNECTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for client in clients.iter().filter(|client| client.identity_busy()) {
        eprintln!(
            "Waiting up to {} s for the token the service is issuing to be saved, so the next run can use it...",
            SETTLE_LIMIT.as_secs()
        );
        if client.settle_identity(SETTLE_LIMIT).await {
            eprintln!("The token is saved.");
        } else {
            eprintln!(
                "The token could not be saved in time: if the service issued it, the next run may be refused a new one for this client id for up to 7 days (set NEMO_TOKEN, or NEMO_CLIENT_ID to another id)."
            );
        }
    }
}

/// Ends a run stopped by a signal: first a token in flight gets its few seconds to be saved
/// ([`settle_identities`]), then one line on stderr saying what to do next, status 130.
pub async fn exit_interrupted(next: &str) -> ExitCode {
    settle_identities().await;
    eprintln!("interrupted: {next}");
    ExitCode::from(EXIT_INTERRUPTED)
}

/// The folder the examples keep their state in: `NEMO_CONFIG_DIR`, else
/// `~/.config/nemovideo/`.
pub fn config_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("NEMO_CONFIG_DIR")
        .filter(|dir| !dir.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::home_dir().map(|home| home.join(".config").join("nemovideo")))
}
