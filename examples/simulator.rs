//! The offline simulator as a process of its own, to run beside an app, a fleet of workers or
//! a CI job, the way stripe-mock or LocalStack are run.
//!
//! ```text
//! cargo run --example simulator -- [--host IP] [--port N] [--cdn-port N] [--web-port N]
//!                                  [--public-host NAME] [--fast] [--event-pacing SECS]
//!                                  [--heartbeat-interval SECS] [--work-duration SECS]
//!                                  [--render-time SECS] [--manual-renders]
//!                                  [--initial-credits N] [--credits-per-edit N]
//!                                  [--token-lifetime SECS] [--token-quota-window SECS]
//!                                  [--text-less-every N] [--status-shape SHAPE]
//!                                  [--max-upload-bytes N] [--transfer-pace SECS]
//!                                  [--token-answer-delay SECS]
//!                                  [--request-log-size N]
//! ```
//!
//! It listens on `127.0.0.1:8080` (API), `:8081` (CDN) and `:8082` (web site) by default,
//! prints their URLs (the first line: `NemoVideo simulator at <base URL> ...`), and serves
//! until Ctrl-C or SIGTERM, then closes its ports and exits with status 0. Every setting of
//! `SimulatorBuilder` is an option; the admin API (counters, the request log, fault
//! injection, reset) is under `<base URL>/__admin`. Exit status: 0 stopped by a signal, 1 could
//! not start (a port taken: one `error: ...` line on stderr), 2 bad usage.
//!
//! It is an example rather than a binary of the crate so that `clap` stays a dev-dependency:
//! a `[[bin]]` would put it in every application's build, since the `simulator` feature is on
//! by default. Install it as a program with
//! `cargo install nemo-video --example simulator`, or run it from a checkout.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nemo_video::simulator::{Simulator, SimulatorBuilder, StatusShape};

/// Run the offline NemoVideo simulator until Ctrl-C or SIGTERM.
///
/// The CDN and web origins take the two ports after --port unless told otherwise; the admin
/// API is under <base URL>/__admin.
#[derive(Parser, Debug)]
#[command(name = "simulator", version)]
struct Args {
    /// The IP address to listen on (0.0.0.0: every interface, as in a container)
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    host: IpAddr,
    /// The API origin's port (0: any free port)
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// The CDN origin's port [default: --port + 1, or any free port with --port 0]
    #[arg(long, value_name = "N")]
    cdn_port: Option<u16>,
    /// The web origin's port [default: --port + 2, or any free port with --port 0]
    #[arg(long, value_name = "N")]
    web_port: Option<u16>,
    /// The host name in the URLs handed out (such as the service name in a compose file)
    /// [default: the --host address, 127.0.0.1 for 0.0.0.0]
    #[arg(long, value_name = "NAME")]
    public_host: Option<String>,
    /// Short timings for tests: pacing 0.01 s, heartbeats 0.04 s, work 0.1 s, render 0.4 s
    /// (options below override them)
    #[arg(long)]
    fast: bool,
    /// Seconds between the events of a message's stream [default: 0.15]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    event_pacing: Option<Duration>,
    /// Seconds between heartbeats while a tool works [default: 1]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Seconds each tool call of an edit works [default: 2]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    work_duration: Option<Duration>,
    /// Seconds from a render's submission to `completed` [default: 3]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    render_time: Option<Duration>,
    /// Renders move only when POST /__admin/advance_renders moves them
    #[arg(long)]
    manual_renders: bool,
    /// Credits of each new anonymous user [default: 100]
    #[arg(long, value_name = "N")]
    initial_credits: Option<u64>,
    /// Credits charged per edit [default: 5]
    #[arg(long, value_name = "N")]
    credits_per_edit: Option<u64>,
    /// Seconds an anonymous token stays valid [default: 604800, 7 days]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    token_lifetime: Option<Duration>,
    /// Seconds before a client id may get another anonymous token (429 until then)
    /// [default: 604800, 7 days]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    token_quota_window: Option<Duration>,
    /// Every Nth edit of a session streams no text, only tool calls (0: never) [default: 3]
    #[arg(long, value_name = "N")]
    text_less_every: Option<usize>,
    /// The shape of render status answers [default: success-data]
    #[arg(long, value_name = "SHAPE")]
    status_shape: Option<Shape>,
    /// Largest accepted upload, in bytes [default: 524288000]
    #[arg(long, value_name = "N")]
    max_upload_bytes: Option<u64>,
    /// Pause after each KiB of a render download and each piece of an upload [default: none]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    transfer_pace: Option<Duration>,
    /// Answer each anonymous-token request this long after issuing its token [default: none]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    token_answer_delay: Option<Duration>,
    /// How many recent requests the request log keeps [default: 1000]
    #[arg(long, value_name = "N")]
    request_log_size: Option<usize>,
}

/// The two documented shapes of a render status answer.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Shape {
    /// {"success":true,"data":{"id","status","progress","outputUrl"}}
    SuccessData,
    /// {"id","status","progress","output":{"url"}}
    TopLevel,
}

/// Seconds as a duration: 0 or more, like `0.5` or `604800`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "expected a number of seconds, 0 or more, like 0.5 or 604800".to_string())
}

impl Args {
    fn builder(&self) -> SimulatorBuilder {
        let mut builder = Simulator::builder().bind(SocketAddr::new(self.host, self.port));
        if self.fast {
            builder = builder.fast();
        }
        if let Some(port) = self.cdn_port {
            builder = builder.cdn_port(port);
        }
        if let Some(port) = self.web_port {
            builder = builder.web_port(port);
        }
        if let Some(host) = &self.public_host {
            builder = builder.public_host(host);
        }
        if let Some(pacing) = self.event_pacing {
            builder = builder.event_pacing(pacing);
        }
        if let Some(interval) = self.heartbeat_interval {
            builder = builder.heartbeat_interval(interval);
        }
        if let Some(work) = self.work_duration {
            builder = builder.work_duration(work);
        }
        if let Some(render) = self.render_time {
            builder = builder.render_time(render);
        }
        if self.manual_renders {
            builder = builder.manual_renders();
        }
        if let Some(credits) = self.initial_credits {
            builder = builder.initial_credits(credits);
        }
        if let Some(credits) = self.credits_per_edit {
            builder = builder.credits_per_edit(credits);
        }
        if let Some(lifetime) = self.token_lifetime {
            builder = builder.token_lifetime(lifetime);
        }
        if let Some(window) = self.token_quota_window {
            builder = builder.token_quota_window(window);
        }
        if let Some(n) = self.text_less_every {
            builder = builder.text_less_every(n);
        }
        if let Some(shape) = self.status_shape {
            builder = builder.status_shape(match shape {
                Shape::SuccessData => StatusShape::SuccessData,
                Shape::TopLevel => StatusShape::TopLevel,
            });
        }
        if let Some(bytes) = self.max_upload_bytes {
            builder = builder.max_upload_bytes(bytes);
        }
        if let Some(pause) = self.transfer_pace {
            builder = builder.transfer_pace(pause);
        }
        if let Some(delay) = self.token_answer_delay {
            builder = builder.token_answer_delay(delay);
        }
        if let Some(entries) = self.request_log_size {
            builder = builder.request_log_size(entries);
        }
        builder
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Before the ports open: a signal that comes as soon as the URLs are printed must find its
    // handler in place, not end the process with the signal's default action.
    let stop = match Stop::install() {
        Ok(stop) => stop,
        Err(err) => {
            return support::exit(Err(format!(
                "could not watch for Ctrl-C and SIGTERM: {err}"
            )))
        }
    };
    let sim = match args.builder().start().await {
        Ok(sim) => sim,
        Err(err) => {
            return support::exit(Err(format!(
            "{err}; stop whatever holds the port, or choose others with --port (0: any free port)"
        )))
        }
    };
    // The line a script or a test waits for, then what to point an app at. A closed stdout
    // (the reader went away) must not stop the simulator, hence no `println!`.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "NemoVideo simulator at {} (offline: nothing leaves this machine)",
        sim.base_url()
    );
    let _ = writeln!(out, "  CDN:   {}", sim.cdn_base_url());
    let _ = writeln!(out, "  web:   {}", sim.web_url());
    let _ = writeln!(out, "  admin: {}", sim.admin_url());
    let _ = writeln!(
        out,
        "Point an app at it: NEMO_API_BASE={} NEMO_WEB_URL={}",
        sim.base_url(),
        sim.web_url()
    );
    let _ = writeln!(out, "Ctrl-C or SIGTERM stops it.");
    let _ = out.flush();
    drop(out);

    stop.wait().await;
    sim.shutdown().await;
    let _ = writeln!(std::io::stdout(), "Stopped; the ports are closed.");
    ExitCode::SUCCESS
}

/// Ctrl-C and, on Unix, SIGTERM, watched from the moment they are installed.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> std::io::Result<Stop> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Stop {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Stop {})
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
