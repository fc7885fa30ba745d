//! Helpers for the security, load and cancellation tests: a `tracing` capture into memory,
//! clients pointed at the simulator, raw TCP servers that misbehave on purpose, and probes
//! for leaks (tasks, threads, TCP connections, temporary files).
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nemo_video::{NemoClient, NemoClientBuilder, RetryConfig};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

/// Everything the installed subscriber wrote, shared with the test.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// One write handle into a [`LogBuffer`].
pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(Arc::clone(&self.0))
    }
}

/// Installs a TRACE-level `fmt` subscriber writing into memory for the current thread (use a
/// current-thread runtime so every task of the test logs into it). Span opening and closing
/// are logged too, with their fields, so the `nemo.request` spans show up even when no
/// event fires inside them.
///
/// Tests that capture logs run one at a time: `tracing` caches each callsite's interest
/// process-wide, and thread-local subscribers coming and going in parallel tests can leave a
/// callsite cached as uninteresting, so a span would silently be missing from the capture.
pub fn capture_logs() -> (LogBuffer, CaptureGuard) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let buffer = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(buffer.clone())
        .finish();
    let subscriber = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (
        buffer,
        CaptureGuard {
            _subscriber: subscriber,
            _serial: serial,
        },
    )
}

/// Keeps the capturing subscriber installed, and other capturing tests waiting, until dropped.
pub struct CaptureGuard {
    _subscriber: tracing::subscriber::DefaultGuard,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Retries as in production (2), but 10 ms doubling to 40 ms, no jitter.
pub fn fast_retry() -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.base_delay = Duration::from_millis(10);
    retry.max_delay = Duration::from_millis(40);
    retry.jitter = false;
    retry
}

/// A builder for a client of `base_url` with fast retries and short timeouts, persisting
/// nothing unless the caller sets a config directory.
pub fn builder(base_url: &str) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(base_url)
        .web_url("https://web.nemo.test")
        .skill_platform("test-platform")
        .no_persistence()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(10))
        .retry(fast_retry())
}

/// Writes the simulator's sample input clip into `dir` and returns its path.
pub fn sample_clip(dir: &Path) -> PathBuf {
    let path = dir.join("sample_input.mp4");
    std::fs::write(&path, nemo_video::simulator::SAMPLE_INPUT_MP4).expect("write sample clip");
    path
}

/// Names of files in `dir` (not recursive), sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Download temporaries (`.nemo-download-*.part`) left in `dir`.
pub fn part_files(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|name| name.starts_with(".nemo-download-") || name.ends_with(".part"))
        .collect()
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Threads of this process whose name starts with `prefix` (names are cut to 15 bytes by the
/// kernel: the upload reader shows as `nemo-upload-rea`).
pub fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

/// Live tasks of the current Tokio runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Client-side TCP connections in state ESTABLISHED whose remote end is `127.0.0.1:port`
/// (from `/proc/net/tcp`).
pub fn established_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2] == remote && fields[3] == "01"
        })
        .count()
}

/// The port of an `http://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .expect("url")
        .port_or_known_default()
        .expect("port")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Asserts that no way of showing `value` contains any of `secrets`.
pub fn assert_hidden<T: std::fmt::Debug + ?Sized>(what: &str, value: &T, secrets: &[&str]) {
    for shown in [format!("{value:?}"), format!("{value:#?}")] {
        for secret in secrets {
            assert!(!shown.contains(secret), "{what} leaked a token: {shown}");
        }
    }
}

/// Asserts that an error's `Display`, `Debug` and `{:#?}` contain none of `secrets`, nor
/// anything of its source chain.
pub fn assert_error_hides(err: &nemo_video::Error, secrets: &[&str]) {
    let mut shown = vec![err.to_string(), format!("{err:?}"), format!("{err:#?}")];
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        shown.push(inner.to_string());
        shown.push(format!("{inner:?}"));
        source = inner.source();
    }
    for text in shown {
        for secret in secrets {
            assert!(!text.contains(secret), "an error leaked a token: {text}");
        }
    }
}

/// Reads an HTTP/1.1 request head from `stream` (up to the blank line); returns the head and
/// whatever body bytes arrived with it.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> io::Result<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head ended",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            return Ok((head, rest));
        }
    }
}
