//! Transfer benchmark: the SDK's upload and download against `curl` on loopback.
//!
//! ```text
//! cargo run --release --example transfer_bench [-- --size-mib 500 --rounds 5 --dir DIR]
//! ```
//!
//! Starts a sink/source HTTP server on 127.0.0.1 (`POST /api/upload-video/nemo_agent/me/<sid>`
//! counts and discards a multipart body; `GET /file` serves `--size-mib` MiB with a
//! `Content-Length`; `GET /api/render/proxy/lambda/bench` says the render `bench` is complete,
//! its output at `/file`), writes a test file of that size (a random 1 MiB block repeated),
//! then for each round runs, in alternating order:
//!
//! - SDK upload (`NemoClient::upload`) vs `curl -s -F files=@FILE URL`
//! - SDK download (`NemoClient::download` of the finished render, after one status request
//!   that says where it is) vs `curl -s -o OUT URL`
//!
//! Each transfer runs in its own process under `/usr/bin/time -v`, so its peak RSS is its own
//! and not the server's: the SDK side is this example re-invoked with a hidden
//! `--child upload|download URL PATH`. Wall time is measured around that process (so both
//! sides pay process start-up); `/usr/bin/time`'s own "Elapsed" is shown as a cross-check.
//! Prints each round, the medians of the paired SDK/curl ratios, and PASS/MISS against the
//! targets. Every file lives in one temporary directory (under `--dir`, default the system's),
//! removed at exit, on error, on Ctrl-C and on SIGTERM. `--serve-only` just runs the server and prints
//! the commands, for profiling one side by hand.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nemo_video::render::{RenderJob, WaitOptions};
use nemo_video::{NemoClient, Session};
use tokio::net::TcpListener;

#[path = "support/mod.rs"]
mod support;

const BLOCK: usize = 1024 * 1024;
const UPLOAD_PATH: &str = "/api/upload-video/nemo_agent/me/bench";
/// The render whose output `/file` is; its status is at [`RENDER_STATUS_PATH`].
const RENDER_ID: &str = "bench";
const RENDER_STATUS_PATH: &str = "/api/render/proxy/lambda/bench";
const TIME: &str = "/usr/bin/time";

/// Targets from the issue: SDK wall time as a fraction of curl's, and the SDK's peak RSS.
const UPLOAD_RATIO_TARGET: f64 = 0.9;
const DOWNLOAD_RATIO_TARGET: f64 = 0.6;
const RSS_TARGET_KIB: u64 = 32 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upload and download throughput and memory of the SDK against curl, on loopback.
#[derive(clap::Parser, Debug)]
#[command(name = "transfer_bench", version)]
struct Options {
    /// Size of the test file, in MiB
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = at_least_one)]
    size_mib: u64,
    /// Rounds of each transfer per side
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = at_least_one)]
    rounds: u64,
    /// Folder for the temporary files [default: the system's temporary folder]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Only run the server and print its URLs, e.g. to profile one side by hand
    #[arg(long)]
    serve_only: bool,
    /// One SDK transfer in this process (how the parent measures the SDK side)
    #[arg(long, hide = true, num_args = 3, value_names = ["MODE", "URL", "PATH"])]
    child: Option<Vec<String>>,
}

fn at_least_one(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "expected a whole number of at least 1".to_string())
}

fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    let result = match &options.child {
        Some(args) => child(args),
        None => parent(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child: one SDK transfer, nothing else, so /usr/bin/time sees only the SDK's memory.

fn child(args: &[String]) -> Result<(), BoxError> {
    let [mode, url, path] = args else {
        return Err("--child needs: upload|download URL PATH".into());
    };
    // What `#[tokio::main]` gives a user: the multi-threaded runtime.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let url = url::Url::parse(url)?;
        let base = format!("{}://{}", url.scheme(), url.authority());
        let client = NemoClient::builder()
            .base_url(base)
            .token("bench")
            .no_persistence()
            .build()?;
        match mode.as_str() {
            "upload" => {
                let result = client
                    .upload(&Session::from_id("bench"), &[Path::new(path)])
                    .await?;
                if result.files.len() != 1 {
                    return Err(format!("expected one uploaded file, got {:?}", result).into());
                }
            }
            "download" => {
                // A download is of a finished render: the server's status answer puts its
                // output at `url`.
                let export = client
                    .wait_for_render(
                        &RenderJob::from_id(RENDER_ID, "bench"),
                        &WaitOptions::default(),
                    )
                    .await?;
                if export.output_url() != Some(url.as_str()) {
                    return Err(format!(
                        "the render's output is at {:?}, not {url}",
                        export.output_url()
                    )
                    .into());
                }
                client.download(&export, path).await?;
            }
            other => return Err(format!("unknown child mode {other:?}").into()),
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Parent: server, test file, rounds, report.

#[derive(Default)]
struct ServerState {
    /// Body bytes counted by the last completed upload.
    last_upload: AtomicU64,
}

struct Source {
    block: Bytes,
    blocks: u64,
}

fn parent(options: &Options) -> Result<(), BoxError> {
    for tool in [TIME, "curl"] {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|err| format!("{tool} is needed to run this benchmark: {err}"))?;
    }
    let dir = match &options.dir {
        Some(parent) => tempfile::Builder::new()
            .prefix("nemo-transfer-bench-")
            .tempdir_in(parent)?,
        None => tempfile::Builder::new()
            .prefix("nemo-transfer-bench-")
            .tempdir()?,
    };
    // A signal ends the process without unwinding, so the handler removes the directory
    // itself. On Ctrl-C the children share our process group and get the same signal.
    let dir_path = dir.path().to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => terminate.recv().await,
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        let _ = std::fs::remove_dir_all(&dir_path);
        eprintln!("\ninterrupted; removed {}", dir_path.display());
        std::process::exit(130);
    });

    let mut seed = [0u8; BLOCK];
    let mut rng = fastrand::Rng::with_seed(0x6e656d6f);
    rng.fill(&mut seed);
    let source = Arc::new(Source {
        block: Bytes::copy_from_slice(&seed),
        blocks: options.size_mib,
    });
    let size = options.size_mib * BLOCK as u64;
    let input = dir.path().join("input.mp4");
    write_input(&input, &source)?;

    let state = Arc::new(ServerState::default());
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    runtime.spawn(serve(listener, state.clone(), source.clone()));
    let upload_url = format!("http://127.0.0.1:{port}{UPLOAD_PATH}");
    let download_url = format!("http://127.0.0.1:{port}/file");

    support::say_offline(
        "a local upload sink and download source (not the NemoVideo service)",
        &format!("http://127.0.0.1:{port}"),
    );
    if options.serve_only {
        println!("serving on 127.0.0.1:{port} until Ctrl-C:\n  upload:   curl -s -F files=@{} {upload_url}\n  download: curl -s -o OUT {download_url}", input.display());
        loop {
            std::thread::park();
        }
    }
    print_machine(options);
    println!(
        "{:>5}  {:<8}  {:>7} {:>7}  {:>5}  {:>8} {:>8}  {:>7} {:>7}  {:>11}",
        "round",
        "transfer",
        "sdk ms",
        "curl ms",
        "ratio",
        "sdk RSS",
        "curl RSS",
        "sdk cpu",
        "curl cpu",
        "time(1) s/c"
    );
    let mut uploads = Vec::new();
    let mut downloads = Vec::new();
    let self_exe = std::env::current_exe()?;
    for round in 1..=options.rounds {
        // Alternate which side goes first so neither always inherits the other's leftovers.
        let sdk_first = round % 2 == 1;
        // Upload.
        let sdk = || -> Result<Run, BoxError> {
            let run = timed(
                Command::new(&self_exe)
                    .args(["--child", "upload", &upload_url])
                    .arg(&input),
            )?;
            check_upload(&state, size, "SDK")?;
            Ok(run)
        };
        let curl = || -> Result<Run, BoxError> {
            let run = timed(
                Command::new("curl")
                    .args(["-s", "-F"])
                    .arg(format!("files=@{}", input.display()))
                    .arg(&upload_url),
            )?;
            check_upload(&state, size, "curl")?;
            Ok(run)
        };
        let pair = run_pair(sdk_first, sdk, curl)?;
        print_row(round, "upload", &pair);
        uploads.push(pair);

        // Download. Outputs are removed before and after each run, outside the timing.
        let sdk_out = dir.path().join("sdk-out.mp4");
        let curl_out = dir.path().join("curl-out.mp4");
        let sdk = || -> Result<Run, BoxError> {
            let run = timed(
                Command::new(&self_exe)
                    .args(["--child", "download", &download_url])
                    .arg(&sdk_out),
            )?;
            check_download(&sdk_out, &source, size, "SDK")?;
            Ok(run)
        };
        let curl = || -> Result<Run, BoxError> {
            let run = timed(
                Command::new("curl")
                    .args(["-s", "-o"])
                    .arg(&curl_out)
                    .arg(&download_url),
            )?;
            check_download(&curl_out, &source, size, "curl")?;
            Ok(run)
        };
        let pair = run_pair(!sdk_first, sdk, curl)?;
        print_row(round, "download", &pair);
        downloads.push(pair);
    }

    println!();
    let upload_pass = summarize("upload", &uploads, UPLOAD_RATIO_TARGET);
    let download_pass = summarize("download", &downloads, DOWNLOAD_RATIO_TARGET);
    println!(
        "\noverall: {}",
        if upload_pass && download_pass {
            "PASS"
        } else {
            "MISS"
        }
    );
    runtime.shutdown_background();
    dir.close()?;
    Ok(())
}

fn write_input(path: &Path, source: &Source) -> Result<(), BoxError> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..source.blocks {
        file.write_all(&source.block)?;
    }
    file.into_inner().map_err(|err| err.into_error())?;
    Ok(())
}

fn print_machine(options: &Options) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "transfer_bench: {} MiB x {} rounds; {cpus} CPUs ({cpu}); load average {}",
        options.size_mib,
        options.rounds,
        load.join(" ")
    );
}

// ---------------------------------------------------------------------------------------
// Measuring.

#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    /// `/usr/bin/time`'s "Elapsed (wall clock)", 10 ms resolution.
    time_elapsed: Option<Duration>,
    max_rss_kib: u64,
    /// User plus system CPU time: much less sensitive to other load on the machine than wall
    /// time, so it shows whether a slow round was our work or a wait for a CPU.
    cpu: Duration,
}

struct Pair {
    sdk: Run,
    curl: Run,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.sdk.wall.as_secs_f64() / self.curl.wall.as_secs_f64()
    }
}

fn run_pair(
    sdk_first: bool,
    sdk: impl FnOnce() -> Result<Run, BoxError>,
    curl: impl FnOnce() -> Result<Run, BoxError>,
) -> Result<Pair, BoxError> {
    if sdk_first {
        let sdk = sdk()?;
        let curl = curl()?;
        Ok(Pair { sdk, curl })
    } else {
        let curl = curl()?;
        let sdk = sdk()?;
        Ok(Pair { sdk, curl })
    }
}

/// Runs `command` under `/usr/bin/time -v`; fails when it fails.
fn timed(command: &mut Command) -> Result<Run, BoxError> {
    let mut wrapped = Command::new(TIME);
    wrapped
        .arg("-v")
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = wrapped.output()?;
    let wall = started.elapsed();
    let report = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{:?} failed:\n{report}", command.get_program()).into());
    }
    let field = |name: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .map(str::trim)
    };
    let max_rss_kib = field("Maximum resident set size (kbytes):")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no peak RSS in /usr/bin/time's report:\n{report}"))?;
    let time_elapsed = field("Elapsed (wall clock) time (h:mm:ss or m:ss):").and_then(parse_clock);
    let seconds = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = Duration::from_secs_f64(
        seconds("User time (seconds):") + seconds("System time (seconds):"),
    );
    Ok(Run {
        wall,
        time_elapsed,
        max_rss_kib,
        cpu,
    })
}

/// `h:mm:ss.ss` or `m:ss.ss`.
fn parse_clock(text: &str) -> Option<Duration> {
    let mut seconds = 0.0;
    for part in text.split(':') {
        seconds = seconds * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(Duration::from_secs_f64(seconds))
}

fn check_upload(state: &ServerState, file_size: u64, who: &str) -> Result<(), BoxError> {
    let received = state.last_upload.swap(0, Ordering::SeqCst);
    // The body is the file plus a few hundred bytes of multipart framing.
    if received < file_size || received > file_size + 4096 {
        return Err(format!(
            "{who} upload: the server counted {received} body bytes for a {file_size}-byte file"
        )
        .into());
    }
    Ok(())
}

/// Checks the size and a sample of blocks, then removes the file.
fn check_download(path: &Path, source: &Source, size: u64, who: &str) -> Result<(), BoxError> {
    use std::io::{Read, Seek, SeekFrom};
    let result = (|| -> Result<(), BoxError> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if len != size {
            return Err(format!("{who} download: {len} bytes, expected {size}").into());
        }
        let mut block = vec![0u8; BLOCK];
        for index in [0, source.blocks / 2, source.blocks - 1] {
            file.seek(SeekFrom::Start(index * BLOCK as u64))?;
            file.read_exact(&mut block)?;
            if block[..] != source.block[..] {
                return Err(format!("{who} download: block {index} differs").into());
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(path);
    result
}

fn print_row(round: u64, transfer: &str, pair: &Pair) {
    let secs = |run: &Run| {
        run.time_elapsed
            .map_or_else(|| "?".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
    };
    println!(
        "{round:>5}  {transfer:<8}  {:>7.0} {:>7.0}  {:>5.2}  {:>5.1}MiB {:>5.1}MiB  {:>5.0}ms {:>5.0}ms  {:>5}/{:<5}",
        pair.sdk.wall.as_secs_f64() * 1000.0,
        pair.curl.wall.as_secs_f64() * 1000.0,
        pair.ratio(),
        pair.sdk.max_rss_kib as f64 / 1024.0,
        pair.curl.max_rss_kib as f64 / 1024.0,
        pair.sdk.cpu.as_secs_f64() * 1000.0,
        pair.curl.cpu.as_secs_f64() * 1000.0,
        secs(&pair.sdk),
        secs(&pair.curl),
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn summarize(transfer: &str, pairs: &[Pair], ratio_target: f64) -> bool {
    let ratio = median(pairs.iter().map(Pair::ratio).collect());
    let sdk_ms = median(
        pairs
            .iter()
            .map(|p| p.sdk.wall.as_secs_f64() * 1e3)
            .collect(),
    );
    let curl_ms = median(
        pairs
            .iter()
            .map(|p| p.curl.wall.as_secs_f64() * 1e3)
            .collect(),
    );
    let sdk_cpu = median(
        pairs
            .iter()
            .map(|p| p.sdk.cpu.as_secs_f64() * 1e3)
            .collect(),
    );
    let curl_cpu = median(
        pairs
            .iter()
            .map(|p| p.curl.cpu.as_secs_f64() * 1e3)
            .collect(),
    );
    let sdk_rss = pairs.iter().map(|p| p.sdk.max_rss_kib).max().unwrap_or(0);
    let curl_rss = pairs.iter().map(|p| p.curl.max_rss_kib).max().unwrap_or(0);
    let time_ok = ratio <= ratio_target;
    let rss_ok = sdk_rss <= RSS_TARGET_KIB;
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!(
        "{transfer:<8}: median wall sdk {sdk_ms:.0} ms, curl {curl_ms:.0} ms, median paired ratio {ratio:.3} (target <= {ratio_target}) {}\n          \
         median cpu sdk {sdk_cpu:.0} ms, curl {curl_cpu:.0} ms; peak RSS sdk {:.1} MiB, curl {:.1} MiB (target <= {} MiB) {}",
        verdict(time_ok),
        sdk_rss as f64 / 1024.0,
        curl_rss as f64 / 1024.0,
        RSS_TARGET_KIB / 1024,
        verdict(rss_ok),
    );
    time_ok && rss_ok
}

// ---------------------------------------------------------------------------------------
// The loopback sink/source server.

type Body = BoxBody<Bytes, Infallible>;

async fn serve(listener: TcpListener, state: Arc<ServerState>, source: Arc<Source>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                let source = source.clone();
                async move { Ok::<_, Infallible>(handle(&state, &source, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(state: &ServerState, source: &Source, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, UPLOAD_PATH) => {
            let mut body = req.into_body();
            let mut count = 0u64;
            // Enough of the start of the body to find the first part's file name.
            let mut head = Vec::<u8>::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return json(StatusCode::BAD_REQUEST, r#"{"detail":"body"}"#.into());
                };
                if let Some(data) = frame.data_ref() {
                    if head.len() < 1024 {
                        head.extend_from_slice(&data[..data.len().min(1024)]);
                    }
                    count += data.len() as u64;
                }
            }
            state.last_upload.store(count, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&head);
            let filename = head
                .split_once("filename=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("upload", |(name, _)| name);
            let files =
                serde_json::json!([{ "filename": filename, "file_type": "video", "size": count }]);
            json(
                StatusCode::OK,
                serde_json::json!({ "code": 0, "data": { "files": files } }).to_string(),
            )
        }
        (&Method::GET, "/file") => {
            let block = source.block.clone();
            let frames = futures_util::stream::iter(
                (0..source.blocks).map(move |_| Ok::<_, Infallible>(Frame::data(block.clone()))),
            );
            let mut response = Response::new(StreamBody::new(frames).boxed());
            response.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(source.blocks * BLOCK as u64),
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("video/mp4"),
            );
            response
        }
        (&Method::GET, RENDER_STATUS_PATH) => {
            // Complete, with its output at `/file` on the origin the client asked.
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .unwrap_or("127.0.0.1");
            json(
                StatusCode::OK,
                serde_json::json!({
                    "success": true,
                    "data": {
                        "id": RENDER_ID,
                        "status": "completed",
                        "progress": 100,
                        "outputUrl": format!("http://{host}/file"),
                    }
                })
                .to_string(),
            )
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#.into()),
    }
}
