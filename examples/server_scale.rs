//! Server-scale benchmark: what one more concurrent user costs a server built on the SDK.
//!
//! ```text
//! cargo run --release --example server_scale                       # 1,000 users, plain HTTP/1.1
//! cargo run --release --example server_scale -- --users 10,100,1000,5000 --rounds 3
//! cargo run --release --example server_scale -- --tls --hold-ms 20000 --goaway-after 100
//! cargo run --release --example server_scale -- --tls --http1 --hold-ms 20000
//! scripts/server-scale-nginx 1000        # the same behind a real nginx (TLS, http2)
//! ```
//!
//! N users, each with its own identity (`NemoClient::for_identity` over one `MemoryStore`,
//! all sharing the SDK's connections), each create a session, import a clip by URL and run
//! one full turn (`run_turn`: a state read, then the `/run_sse` stream to its end) against the
//! simulator.
//!
//! - **Protocol.** Plain HTTP/1.1 by default. `--tls` serves HTTPS as production gateways do:
//!   ALPN picks HTTP/2, whose connections allow `--max-streams` streams each (default 128,
//!   nginx's), and `--goaway-after N` rotates each connection after N requests (nginx's
//!   `keepalive_requests`); `--http1` offers only HTTP/1.1 over TLS. `--base-url` measures
//!   against a server started elsewhere (nginx in front of `--serve`, see
//!   `scripts/server-scale-nginx`); an `https` URL is trusted with the simulator's test CA.
//! - **Time to first event**: from the start of a user's turn to its first agent event,
//!   p50 / p99 / max over the users: what a user waits when the connections are full.
//! - **Connections**: the sockets this process holds when every stream is open.
//!
//! - **Out of process.** The simulator runs in a second process (this example re-executed
//!   with `--serve`), so the numbers are the client's alone. It prints its base URL on stdout
//!   and exits when its stdin closes, which also happens when this process dies.
//! - **Concurrent.** All users do their setup at once and wait on a barrier. Then the turns
//!   start, spread evenly over `--ramp-ms` (default N ms: 1,000 new turns a second, as a busy
//!   server sees them; 0 starts them all in the same instant). Each turn's tool call "works"
//!   for `--hold-ms` (default: the ramp plus 5 s, with 4 heartbeats whatever N), so every
//!   stream is still open when the last one opens. The program counts open streams and
//!   fails if they were not all open at the same time.
//! - **Measured** (Linux `/proc` and `getrusage`). The baseline is taken once the shared
//!   client, the simulator and one warm-up user (a short turn) are in place, so one-time costs
//!   are not charged to the users. Peak RSS is `VmHWM`; RSS per user is (peak − baseline) / N;
//!   CPU per turn is this process's user + system time from the baseline to the end, divided
//!   by N (a "turn" is one user's whole visit: token, session, import, turn); open file
//!   descriptors are counted in `/proc/self/fd` when all streams are open. A counting
//!   allocator adds the heap per user at each stage and the allocations per user.
//! - `--raw` runs the turn's two requests through plain reqwest instead (the stream read to
//!   its end, not parsed): the floor that shows what the connection itself costs.
//!
//! Several user counts, or `--rounds` above 1, run each measurement in a fresh process and
//! print one table with the range over the rounds. The open-file limit is raised to the hard
//! limit when N needs it; when even that is too low the program says which `ulimit -n` to use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemo_video::auth::MemoryStore;
use nemo_video::events::AgentEvent;
use nemo_video::simulator::Simulator;
use nemo_video::turn::TurnOptions;
use nemo_video::NemoClient;

#[path = "support/mod.rs"]
mod support;

/// Targets at 1,000 users: RSS of one more concurrent user above the baseline, over HTTP/1.1
/// (plain or TLS) and over HTTP/2; connections and time to first event over HTTP/2.
const TARGET_KIB_PER_USER: f64 = 48.0;
const TARGET_KIB_PER_USER_HTTP2: f64 = 16.0;
const TARGET_CONNECTIONS_HTTP2: usize = 16;
const TARGET_FIRST_EVENT_P99_HTTP2: Duration = Duration::from_secs(1);
/// File descriptors besides one socket per user: runtime, pipes, std streams, spare pooled
/// connections (a burst of turns can open up to two per user).
const FD_HEADROOM: u64 = 256;
const MESSAGE: &str = "remove the background person and replace it with a solid color";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// A counting allocator: live heap bytes, their peak since the last reset, and allocations.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        grew(layout.size());
        // SAFETY: the caller's layout is passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        grew(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Process measurements.

/// A `/proc/self/status` field in KiB (Linux), e.g. `VmRSS`, `VmHWM`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Open file descriptors of this process (Linux), not counting the one used to list them.
fn open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

/// Sockets among them: the client's connections (this process listens on none).
fn open_sockets() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        entries
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count(),
    )
}

/// User + system CPU time of this process, all threads.
#[cfg(unix)]
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` fills the zeroed struct it is given and touches nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[cfg(not(unix))]
fn cpu_time() -> Duration {
    Duration::ZERO
}

/// Raises the soft limit on open files to `needed` (at most the hard limit), or says which
/// `ulimit -n` to use.
#[cfg(unix)]
fn raise_fd_limit(needed: u64) -> Result<(), BoxError> {
    // SAFETY: `getrlimit` and `setrlimit` read or write only the struct they are given.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "could not read the open-file limit ({})",
            std::io::Error::last_os_error()
        )
        .into());
    }
    let (soft, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    if soft >= needed {
        return Ok(());
    }
    limit.rlim_cur = needed.min(hard) as libc::rlim_t;
    // SAFETY: as above.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    if !raised || hard < needed {
        return Err(format!(
            "this run needs about {needed} open files, but the limit is {} (hard limit {hard}); \
             raise it with `ulimit -n {needed}` (raising the hard limit may need root or \
             /etc/security/limits.conf) and run again, or use fewer --users",
            if raised { hard } else { soft },
        )
        .into());
    }
    Ok(())
}

#[cfg(not(unix))]
fn raise_fd_limit(_needed: u64) -> Result<(), BoxError> {
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|line| {
            line.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|load| !load.is_empty())
        .unwrap_or_else(|| "n/a".into())
}

// ---------------------------------------------------------------------------------------------
// Arguments.

/// What one more concurrent user costs a server built on the SDK: N users, one identity each,
/// one shared reqwest::Client, a full turn each against the simulator in its own process.
#[derive(clap::Parser, Debug)]
#[command(name = "server_scale", version)]
struct Options {
    /// Concurrent users; several counts (10,100,1000,5000) run one after another, each in a
    /// fresh process, into one table
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',', default_value = "1000", value_parser = at_least_one)]
    users: Vec<u64>,
    /// Measurements per user count; the table shows their range
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = at_least_one)]
    rounds: u64,
    /// Turns start spread evenly over this many milliseconds (0: all in the same instant)
    /// [default: N, i.e. 1,000 new turns a second]
    #[arg(long, value_name = "MS")]
    ramp_ms: Option<u64>,
    /// How long each turn's tool works, holding its stream open [default: the ramp + 5000]
    #[arg(long, value_name = "MS")]
    hold_ms: Option<u64>,
    /// Run the turn's two requests through plain reqwest instead (the stream read, not
    /// parsed): the floor that shows what the connection itself costs
    #[arg(long)]
    raw: bool,
    /// Serve over HTTPS (the simulator's test certificate), ALPN choosing HTTP/2 or HTTP/1.1
    #[arg(long)]
    tls: bool,
    /// With --tls, offer only HTTP/1.1 (no h2 in ALPN); with an https --base-url, say that
    /// the server speaks HTTP/1.1 (for the targets)
    #[arg(long)]
    http1: bool,
    /// The simulator's limit on concurrent streams per HTTP/2 connection
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_streams: u32,
    /// Rotate each connection after N requests, as nginx's keepalive_requests (a GOAWAY over
    /// HTTP/2, Connection: close over HTTP/1.1) [default: never]
    #[arg(long, value_name = "N")]
    goaway_after: Option<u64>,
    /// The SDK's cap on requests in flight per HTTP/2 connection [default: the SDK's, 100]
    #[arg(long, value_name = "N")]
    stream_cap: Option<usize>,
    /// Measure against this server instead of starting the simulator (for example nginx in
    /// front of one started with --serve); an https URL is trusted with the simulator's test CA
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// Run the simulator and nothing else (how the measuring process starts its server)
    #[arg(long, hide = true)]
    serve: bool,
    /// Print one machine-readable result line (how a table's row is measured)
    #[arg(long, hide = true)]
    result_line: bool,
}

fn at_least_one(text: &str) -> Result<u64, String> {
    text.trim()
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "expected a whole number of at least 1".to_string())
}

impl Options {
    fn ramp_for(&self, users: usize) -> Duration {
        Duration::from_millis(self.ramp_ms.unwrap_or(users as u64))
    }

    fn hold_for(&self, users: usize) -> Duration {
        self.hold_ms.map_or(
            self.ramp_for(users) + Duration::from_secs(5),
            Duration::from_millis,
        )
    }
}

fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    let result = if options.serve {
        serve(&options)
    } else if options.users.len() == 1 && options.rounds == 1 {
        measure(&options)
    } else {
        sweep(&options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator process.

fn serve(options: &Options) -> Result<(), BoxError> {
    let users = options.users[0] as usize;
    raise_fd_limit(2 * users as u64 + FD_HEADROOM)?;
    let hold = options.hold_for(users);
    let runtime = tokio::runtime::Runtime::new()?;
    let started = cpu_time();
    runtime.block_on(async {
        // Fast pacing, so the run measures the client and not sleeps; the tool's work holds
        // every stream open, with 4 heartbeats whatever N, until all are open.
        let mut builder = Simulator::builder()
            .event_pacing(Duration::from_millis(1))
            .work_duration(hold)
            .heartbeat_interval(hold / 4)
            .text_less_every(0);
        if options.tls {
            builder = builder
                .https()
                .http2(!options.http1)
                .max_concurrent_streams(options.max_streams);
            if let Some(requests) = options.goaway_after {
                builder = builder.goaway_after(requests);
            }
        }
        let sim = builder.start().await?;
        println!("{}", sim.base_url());
        std::io::stdout().flush()?;
        // Until the parent says so, or goes away (its end of the pipe closes).
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        })
        .await?;
        let https = sim.https_stats();
        println!(
            "simulator process: peak RSS {:.1} MiB, CPU {:.2} s{}",
            status_kib("VmHWM").unwrap_or(0) as f64 / 1024.0,
            (cpu_time() - started).as_secs_f64(),
            if options.tls {
                format!(
                    "; {} TLS connections ({} HTTP/2), {} GOAWAYs, {} requests refused and sent again",
                    https.connections,
                    https.http2_connections,
                    https.goaways,
                    https.refused.len()
                )
            } else {
                String::new()
            }
        );
        Ok::<_, BoxError>(())
    })
}

/// The arguments that choose the protocol, passed on to the processes this one starts.
fn protocol_args(options: &Options) -> Vec<String> {
    let mut args = vec!["--max-streams".to_string(), options.max_streams.to_string()];
    if options.tls {
        args.push("--tls".into());
    }
    if options.http1 {
        args.push("--http1".into());
    }
    if let Some(requests) = options.goaway_after {
        args.extend(["--goaway-after".into(), requests.to_string()]);
    }
    if let Some(cap) = options.stream_cap {
        args.extend(["--stream-cap".into(), cap.to_string()]);
    }
    if let Some(url) = &options.base_url {
        args.extend(["--base-url".into(), url.clone()]);
    }
    args
}

/// ` against <url>` for a server started elsewhere.
fn against(options: &Options) -> String {
    options
        .base_url
        .as_ref()
        .map(|url| format!(" against {url}"))
        .unwrap_or_default()
}

/// What the run measures, in words (with --base-url, --http1 says what that server speaks).
fn protocol_label(options: &Options, base_url: &str) -> String {
    if !base_url.starts_with("https") {
        return format!("plain HTTP/1.1{}", against(options));
    }
    if options.base_url.is_some() {
        let protocol = if options.http1 { "HTTP/1.1" } else { "HTTP/2" };
        return format!("{protocol} over TLS{}", against(options));
    }
    let rotation = options
        .goaway_after
        .map(|n| format!(", connections rotated every {n} requests"))
        .unwrap_or_default();
    if options.http1 {
        format!("HTTP/1.1 over TLS{rotation}")
    } else {
        format!(
            "HTTP/2 over TLS, {} streams a connection{rotation}",
            options.max_streams
        )
    }
}

/// The simulator's process; stopped when dropped.
struct SimProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    base_url: String,
}

impl SimProcess {
    fn start(options: &Options, users: usize, hold: Duration) -> Result<SimProcess, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve", "--users", &users.to_string()])
            .args(["--hold-ms", &hold.as_millis().to_string()])
            .args(protocol_args(options))
            // A heap profiler preloaded into this process profiles this process only.
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let mut sim = SimProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout.ok_or("the simulator process has no stdout")?),
            base_url: String::new(),
        };
        sim.stdout.read_line(&mut sim.base_url)?;
        sim.base_url = sim.base_url.trim().to_string();
        if !sim.base_url.starts_with("http") {
            return Err("the simulator process did not start (its error is above)".into());
        }
        Ok(sim)
    }

    /// Stops the simulator and returns its summary line.
    fn stop(mut self) -> String {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim().to_string()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        // A closed stdin stops it; waiting reaps it.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement, in this process.

/// Heap, RSS, descriptors and allocations at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    heap: usize,
    rss_kib: u64,
    fds: usize,
    sockets: usize,
    allocations: usize,
}

fn snapshot() -> Snapshot {
    Snapshot {
        heap: LIVE.load(Relaxed),
        rss_kib: status_kib("VmRSS").unwrap_or(0),
        fds: open_fds().unwrap_or(0),
        sockets: open_sockets().unwrap_or(0),
        allocations: ALLOCATIONS.load(Relaxed),
    }
}

struct Outcome {
    users: usize,
    peak_rss_kib: u64,
    rss_per_user_kib: f64,
    heap_per_user_kib: f64,
    cpu_per_turn_ms: f64,
    allocations_per_user: f64,
    fds_at_peak: usize,
    sockets_at_peak: usize,
    first_event_p50: Duration,
    first_event_p99: Duration,
}

/// Streams open now, the most open at once, and users done.
#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    most_open: AtomicUsize,
    finished: AtomicUsize,
}

impl Counters {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Relaxed) + 1;
        self.most_open.fetch_max(now, Relaxed);
    }
}

/// The floor: the turn's two requests through plain reqwest, the stream read to its end
/// without parsing, so only what reqwest and hyper hold for a user is left.
#[derive(Clone)]
struct RawTurn {
    http: nemo_video::reqwest::Client,
    base_url: String,
}

impl RawTurn {
    async fn run(
        &self,
        session_id: &str,
        token: &str,
        counters: &Counters,
        shared: &Shared,
    ) -> Result<(), String> {
        let started = Instant::now();
        let bearer = format!("Bearer {token}");
        let state = self
            .http
            .get(format!(
                "{}/api/state/nemo_agent/me/{session_id}/latest",
                self.base_url
            ))
            .header("authorization", &bearer)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .map_err(|err| format!("raw state read failed: {err}"))?;
        let state = state.bytes().await.map_err(|err| err.to_string())?;
        let body = serde_json::json!({
            "app_name": "nemo_agent", "user_id": "me", "session_id": session_id,
            "new_message": {"parts": [{"text": MESSAGE}]},
        });
        let mut response = self
            .http
            .post(format!("{}/run_sse", self.base_url))
            .header("authorization", &bearer)
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .map_err(|err| format!("raw run_sse failed: {err}"))?;
        let mut received = 0;
        while let Some(chunk) = response.chunk().await.map_err(|err| err.to_string())? {
            if received == 0 {
                counters.opened();
                if let Ok(mut waits) = shared.first_events.lock() {
                    waits.push(started.elapsed());
                }
            }
            received += chunk.len();
        }
        if received > 0 {
            counters.open.fetch_sub(1, Relaxed);
        }
        if state.is_empty() || received < 1000 {
            return Err(format!(
                "raw turn too short: state {} bytes, stream {received} bytes",
                state.len()
            ));
        }
        Ok(())
    }
}

/// What each user's task shares.
struct Shared {
    ready: tokio::sync::Barrier,
    go: tokio::sync::Barrier,
    counters: Counters,
    raw: Option<RawTurn>,
    /// Each turn's wait from its start to its first event.
    first_events: std::sync::Mutex<Vec<Duration>>,
}

/// One user's visit: a session, a clip imported by URL, then (after the barrier and its place
/// in the ramp) one turn with the stream read to its end.
async fn one_user(client: NemoClient, shared: Arc<Shared>, delay: Duration) -> Result<(), String> {
    let setup = async {
        let session = client.create_session().await?;
        client
            .upload_urls(&session, &["https://example.com/clip.mp4"])
            .await?;
        Ok::<_, nemo_video::Error>(session)
    }
    .await;
    // Both barriers are reached even after a failure, so nobody waits for this user forever.
    shared.ready.wait().await;
    shared.go.wait().await;
    let session = setup.map_err(|err| format!("setup failed: {err}"))?;
    tokio::time::sleep(delay).await;
    let counters = &shared.counters;
    if let Some(raw) = &shared.raw {
        let token = client
            .anonymous_credentials()
            .await
            .ok_or("no token after the setup")?
            .token;
        let outcome = raw
            .run(session.id(), token.expose(), counters, &shared)
            .await;
        counters.finished.fetch_add(1, Relaxed);
        return outcome;
    }
    let open = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let options = {
        let (shared, open) = (shared.clone(), open.clone());
        let first = std::sync::atomic::AtomicBool::new(false);
        TurnOptions::default().on_event(move |event| {
            if !first.swap(true, Relaxed) {
                if let Ok(mut waits) = shared.first_events.lock() {
                    waits.push(started.elapsed());
                }
            }
            // The tool call: the stream is open and the tool at work.
            if matches!(event, AgentEvent::ToolCall(_)) && open.swap(1, Relaxed) == 0 {
                shared.counters.opened();
            }
        })
    };
    let turn = client.run_turn_with(&session, MESSAGE, &options).await;
    if open.load(Relaxed) == 1 {
        counters.open.fetch_sub(1, Relaxed);
    }
    counters.finished.fetch_add(1, Relaxed);
    let turn = turn.map_err(|err| format!("turn failed: {err}"))?;
    if !turn
        .tool_calls
        .iter()
        .any(|call| call.name == "remove_object")
        || turn.text.is_empty()
    {
        return Err(format!("unexpected turn: {turn:?}"));
    }
    Ok(())
}

fn measure(options: &Options) -> Result<(), BoxError> {
    let users = options.users[0] as usize;
    let (ramp, hold) = (options.ramp_for(users), options.hold_for(users));
    raise_fd_limit(2 * users as u64 + FD_HEADROOM)?;
    let load = load_average();
    let sim = match &options.base_url {
        Some(_) => None,
        None => Some(SimProcess::start(options, users, hold)?),
    };
    let base_url = match (&options.base_url, &sim) {
        (Some(url), _) => url.clone(),
        (None, Some(sim)) => sim.base_url.clone(),
        (None, None) => return Err("no server to measure".into()),
    };
    if !options.result_line {
        match &sim {
            Some(_) => support::say_offline(
                "the built-in NemoVideo simulator, in a process of its own",
                &base_url,
            ),
            None => println!("Live: measuring the server at {base_url} (--base-url)."),
        }
    }
    // What `#[tokio::main]` gives a server: the multi-threaded runtime, a worker per core.
    let runtime = tokio::runtime::Runtime::new()?;
    let label = protocol_label(options, &base_url);
    let outcome = runtime.block_on(run_users(&base_url, &label, users, ramp, hold, options))?;
    drop(runtime);
    let sim_summary = sim.map(SimProcess::stop).unwrap_or_default();
    if options.result_line {
        println!(
            "RESULT {} {} {:.2} {:.2} {:.3} {:.1} {} {} {} {:.3} {:.3}",
            outcome.users,
            outcome.peak_rss_kib,
            outcome.rss_per_user_kib,
            outcome.heap_per_user_kib,
            outcome.cpu_per_turn_ms,
            outcome.allocations_per_user,
            outcome.fds_at_peak,
            load.replace(' ', "/"),
            outcome.sockets_at_peak,
            outcome.first_event_p50.as_secs_f64(),
            outcome.first_event_p99.as_secs_f64(),
        );
    } else {
        if !sim_summary.is_empty() {
            println!("{sim_summary}");
        }
        println!("load average at the start: {load} (on 2 shared cores, CPU time is noisy)");
    }
    Ok(())
}

/// The percentile `p` (0 to 100) of `waits`, sorted.
fn percentile(waits: &[Duration], p: f64) -> Duration {
    if waits.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * waits.len() as f64).ceil() as usize;
    waits[rank.clamp(1, waits.len()) - 1]
}

async fn run_users(
    base_url: &str,
    label: &str,
    users: usize,
    ramp: Duration,
    hold: Duration,
    options: &Options,
) -> Result<Outcome, BoxError> {
    let https = base_url.starts_with("https");
    let ca = || {
        nemo_video::reqwest::Certificate::from_pem(nemo_video::simulator::TEST_CA_PEM.as_bytes())
    };
    let raw = if options.raw {
        let mut http = nemo_video::reqwest::Client::builder();
        if https {
            http = http.add_root_certificate(ca()?);
        }
        Some(RawTurn {
            http: http.build()?,
            base_url: base_url.to_string(),
        })
    } else {
        None
    };
    // The SDK's own connections: for_identity shares them between all the users.
    let mut builder = NemoClient::builder()
        .base_url(base_url)
        .credential_store(Arc::new(MemoryStore::new()));
    if https {
        builder = builder.add_root_certificate(ca()?);
    }
    if let Some(cap) = options.stream_cap {
        builder = builder.max_streams_per_connection(cap);
    }
    let server = builder.build()?;

    // Warm-up: one user with a short turn (text only), so the lazily built parts of the
    // runtime, the pool and the SDK are in the baseline instead of charged to the users.
    let warm = server.for_identity("warm-up-user")?;
    let session = warm.create_session().await?;
    warm.run_turn(&session, "hello").await?;
    drop((warm, session));

    let baseline = snapshot();
    PEAK.store(baseline.heap, Relaxed);
    let cpu_start = cpu_time();
    let started = Instant::now();

    let clients = (0..users)
        .map(|i| server.for_identity(format!("user-{i:06}")))
        .collect::<Result<Vec<_>, _>>()?;
    let built = snapshot();

    let shared = Arc::new(Shared {
        ready: tokio::sync::Barrier::new(users + 1),
        go: tokio::sync::Barrier::new(users + 1),
        counters: Counters::default(),
        raw,
        first_events: std::sync::Mutex::new(Vec::with_capacity(users)),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut task_size = 0;
    for (i, client) in clients.into_iter().enumerate() {
        let visit = one_user(
            client,
            shared.clone(),
            ramp.mul_f64(i as f64 / users as f64),
        );
        task_size = std::mem::size_of_val(&visit);
        tasks.spawn(visit);
    }
    shared.ready.wait().await;
    let after_setup = snapshot();
    let setup_time = started.elapsed();
    shared.go.wait().await;
    let released = Instant::now();

    // Until every stream is open, or some user is done before that (a failure).
    let counters = &shared.counters;
    let mut all_open = None;
    while counters.finished.load(Relaxed) == 0 {
        if counters.open.load(Relaxed) == users {
            all_open = Some((snapshot(), released.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(err),
            Err(err) => failures.push(format!("a user's task panicked: {err}")),
        }
    }
    let total = started.elapsed();
    let cpu = cpu_time() - cpu_start;
    let peak_rss_kib = status_kib("VmHWM").unwrap_or(0);
    let heap_peak = PEAK.load(Relaxed);
    let allocations = ALLOCATIONS.load(Relaxed) - baseline.allocations;

    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {users} users failed; the first: {first}",
            failures.len()
        )
        .into());
    }
    let Some((open, open_after)) = all_open else {
        return Err(format!(
            "only {} of {users} streams were open at the same time: raise --hold-ms (now {} ms)",
            counters.most_open.load(Relaxed),
            hold.as_millis()
        )
        .into());
    };

    let n = users as f64;
    let heap_kib = |heap: usize| (heap as f64 - baseline.heap as f64) / n / 1024.0;
    let rss_kib = |rss: u64| rss.saturating_sub(baseline.rss_kib) as f64 / n;
    let mut waits = shared
        .first_events
        .lock()
        .map(|waits| waits.clone())
        .unwrap_or_default();
    waits.sort();
    let outcome = Outcome {
        users,
        peak_rss_kib,
        rss_per_user_kib: rss_kib(peak_rss_kib),
        heap_per_user_kib: heap_kib(open.heap),
        cpu_per_turn_ms: cpu.as_secs_f64() * 1000.0 / n,
        allocations_per_user: allocations as f64 / n,
        fds_at_peak: open.fds,
        sockets_at_peak: open.sockets.saturating_sub(baseline.sockets),
        first_event_p50: percentile(&waits, 50.0),
        first_event_p99: percentile(&waits, 99.0),
    };
    println!(
        "{users} concurrent users, one identity each, the SDK's shared connections; {label}{}",
        if shared.raw.is_some() {
            "; the turn through plain reqwest (--raw)"
        } else {
            ""
        }
    );
    println!(
        "turns started over {:.2} s, each stream held open {:.2} s by the tool's work",
        ramp.as_secs_f64(),
        hold.as_secs_f64()
    );
    println!(
        "setup (token, session, import) {:.2} s; all {users} streams open {:.2} s after the first turn started; total {:.2} s",
        setup_time.as_secs_f64(),
        open_after.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "baseline: RSS {:.1} MiB, heap {:.2} MiB, {} open files",
        baseline.rss_kib as f64 / 1024.0,
        baseline.heap as f64 / 1048576.0,
        baseline.fds
    );
    println!("per user above the baseline:");
    println!(
        "  clients built:           heap {:6.2} KiB",
        heap_kib(built.heap)
    );
    println!(
        "  after session + import:  heap {:6.2} KiB, RSS {:6.2} KiB, {:.2} open files (idle pooled connections)",
        heap_kib(after_setup.heap),
        rss_kib(after_setup.rss_kib),
        after_setup.fds.saturating_sub(baseline.fds) as f64 / n
    );
    println!(
        "  all streams open:        heap {:6.2} KiB, RSS {:6.2} KiB, {:.2} open files",
        outcome.heap_per_user_kib,
        rss_kib(open.rss_kib),
        open.fds.saturating_sub(baseline.fds) as f64 / n
    );
    println!(
        "  peak:                    heap {:6.2} KiB, RSS {:6.2} KiB",
        heap_kib(heap_peak),
        outcome.rss_per_user_kib
    );
    println!(
        "peak RSS {:.1} MiB; {} open files with all streams open",
        peak_rss_kib as f64 / 1024.0,
        open.fds
    );
    println!(
        "CPU per turn {:.2} ms (user + system, {:.2} s in all); {:.0} allocations per user",
        outcome.cpu_per_turn_ms,
        cpu.as_secs_f64(),
        outcome.allocations_per_user
    );
    println!("one user's task: a {task_size}-byte future");
    println!(
        "time to first event: p50 {:.3} s, p99 {:.3} s, max {:.3} s; {} connections with all streams open",
        outcome.first_event_p50.as_secs_f64(),
        outcome.first_event_p99.as_secs_f64(),
        waits.last().copied().unwrap_or_default().as_secs_f64(),
        outcome.sockets_at_peak,
    );
    if users == 1000 {
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let http2 = https && !options.http1;
        let kib = if http2 {
            TARGET_KIB_PER_USER_HTTP2
        } else {
            TARGET_KIB_PER_USER
        };
        println!(
            "target: at most {kib} KiB RSS per user at 1,000 users: {} ({:.1} KiB)",
            verdict(outcome.rss_per_user_kib <= kib),
            outcome.rss_per_user_kib
        );
        if http2 {
            println!(
                "target: at most {TARGET_CONNECTIONS_HTTP2} connections: {} ({}); time to first event p99 at most {} s: {} ({:.3} s)",
                verdict(outcome.sockets_at_peak <= TARGET_CONNECTIONS_HTTP2),
                outcome.sockets_at_peak,
                TARGET_FIRST_EVENT_P99_HTTP2.as_secs(),
                verdict(outcome.first_event_p99 <= TARGET_FIRST_EVENT_P99_HTTP2),
                outcome.first_event_p99.as_secs_f64()
            );
        }
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------------
// Several measurements, each in a fresh process.

fn sweep(options: &Options) -> Result<(), BoxError> {
    println!(
        "Offline: using the built-in NemoVideo simulator, in a fresh process for each measurement (nothing leaves this machine)."
    );
    println!("load average at the start: {}", load_average());
    println!(
        "{}",
        protocol_label(options, if options.tls { "https" } else { "http" })
    );
    println!(
        "{:>6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>11} | {:>11} | {:>11} | {:>15} | load",
        "users",
        "peak RSS MiB",
        "RSS/user KiB",
        "heap/user KiB",
        "CPU/turn ms",
        "allocs/user",
        "open files",
        "connections",
        "1st event p99 s"
    );
    for users in options.users.iter().map(|&n| n as usize) {
        let mut rows: Vec<[f64; 8]> = Vec::new();
        let mut loads = Vec::new();
        for _ in 0..options.rounds {
            let output = Command::new(std::env::current_exe()?)
                .args(["--users", &users.to_string(), "--result-line"])
                .args([
                    "--ramp-ms",
                    &options.ramp_for(users).as_millis().to_string(),
                ])
                .args([
                    "--hold-ms",
                    &options.hold_for(users).as_millis().to_string(),
                ])
                .args(options.raw.then_some("--raw"))
                .args(protocol_args(options))
                .stderr(Stdio::inherit())
                .output()?;
            if !output.status.success() {
                return Err(format!("the run with {users} users failed").into());
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let fields: Vec<String> = text
                .lines()
                .find_map(|line| line.strip_prefix("RESULT "))
                .ok_or("a run printed no result")?
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let number = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            rows.push([
                number(1) / 1024.0,
                number(2),
                number(3),
                number(4),
                number(5),
                number(6),
                number(8),
                number(10),
            ]);
            loads.push(
                fields
                    .get(7)
                    .map_or("n/a".into(), |load| load.replace('/', " ")),
            );
        }
        let shown = |column: usize, digits: usize| {
            let low = rows
                .iter()
                .map(|row| row[column])
                .fold(f64::INFINITY, f64::min);
            let high = rows
                .iter()
                .map(|row| row[column])
                .fold(f64::NEG_INFINITY, f64::max);
            if format!("{low:.digits$}") == format!("{high:.digits$}") {
                format!("{low:.digits$}")
            } else {
                format!("{low:.digits$}–{high:.digits$}")
            }
        };
        println!(
            "{users:>6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>11} | {:>11} | {:>11} | {:>15} | {}",
            shown(0, 1),
            shown(1, 1),
            shown(2, 1),
            shown(3, 2),
            shown(4, 0),
            shown(5, 0),
            shown(6, 0),
            shown(7, 3),
            loads.join(", ")
        );
        if users == 1000 {
            let worst = rows
                .iter()
                .map(|row| row[1])
                .fold(f64::NEG_INFINITY, f64::max);
            let http2 = (options.tls
                || options
                    .base_url
                    .as_deref()
                    .is_some_and(|url| url.starts_with("https")))
                && !options.http1;
            let kib = if http2 {
                TARGET_KIB_PER_USER_HTTP2
            } else {
                TARGET_KIB_PER_USER
            };
            let verdict = if worst <= kib { "met" } else { "missed" };
            println!("        target: at most {kib} KiB RSS per user at 1,000 users: {verdict}");
        }
    }
    Ok(())
}
