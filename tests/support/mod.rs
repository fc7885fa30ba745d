//! Every helper the integration tests share, in one place. A test file says `mod support;`
//! and imports what it needs from the area it works in:
//!
//! - [`mock`]: clients against a wiremock `MockServer`, envelope builders, request inspection
//!   (only in the `suite/` package, whose build script sets `cfg(nemo_suite)`: wiremock is a
//!   dev-dependency of that package, not of nemo-video, so `cargo run --example` never builds it);
//! - [`sim`]: clients against the built-in simulator and the first steps of the main flow;
//! - [`logs`]: an in-memory `tracing` capture scoped to one test;
//! - [`faults`]: a scripted DNS resolver and a fault-injecting TCP proxy (the fault matrix);
//! - [`stream_server`]: a loopback server that streams `/run_sse` by script, plus ADK payloads;
//! - [`raw_http`]: raw TCP servers for responses no mock can produce, and request-head reading;
//! - [`multipart`]: a strict `multipart/form-data` parser;
//! - [`probes`]: leak probes (threads, tasks, TCP connections, memory, temporary files);
//! - [`net`]: connection faults on loopback (closed, silent, stuck ports), a tripwire port that
//!   proves nothing was sent, and a count of the SDK's attempts;
//! - [`examples`]: the example programs built once and run as a user runs them;
//! - [`redis`]: a real `redis-server` on a free loopback port, stopped by pid.
//!
//! This module holds what all of them build on: fast retries, the base client builder,
//! private temporary directories, waiting on a condition, and the "no secret shows" asserts.
//!
//! Policy: nothing here races the clock. Helpers wait on observable conditions (with a
//! generous limit that only ends a hung test), every server binds `127.0.0.1:0`, and every
//! test writes into its own temporary directory.
#![allow(dead_code)]

pub mod examples;
pub mod faults;
pub mod logs;
#[cfg(nemo_suite)]
pub mod mock;
pub mod multipart;
pub mod net;
pub mod probes;
pub mod raw_http;
pub mod redis;
pub mod sim;
pub mod stream_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nemo_video::{NemoClient, NemoClientBuilder, RetryConfig};

/// The nemo-video package's directory (where its `Cargo.toml`, `assets/` and `docs/` are), from
/// the tests of either package: the `suite/` package's build script sets `NEMO_VIDEO_DIR`.
pub fn crate_dir() -> &'static Path {
    Path::new(match option_env!("NEMO_VIDEO_DIR") {
        Some(dir) => dir,
        None => env!("CARGO_MANIFEST_DIR"),
    })
}

/// The web URL test clients use for browser links (when a helper sets one).
pub const WEB_URL: &str = "https://web.nemo.test";
/// The platform attribution test clients send (when a helper sets one).
pub const PLATFORM: &str = "test-platform";

/// Retries as in production (2), but 10 ms doubling to 40 ms, no jitter.
pub fn fast_retry() -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.base_delay = Duration::from_millis(10);
    retry.max_delay = Duration::from_millis(40);
    retry.jitter = false;
    retry
}

/// [`fast_retry`] with `max_retries` retries.
pub fn retries(max_retries: u32) -> RetryConfig {
    let mut retry = fast_retry();
    retry.max_retries = max_retries;
    retry
}

/// The base every test client starts from: `base_url`, [`fast_retry`], and timeouts generous
/// enough that a busy machine answering slowly never turns into a timeout (tests of timeouts
/// set their own). Everything else is the SDK's default.
pub fn client_builder(base_url: &str) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(base_url)
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(30))
        .retry(fast_retry())
}

/// [`client_builder`] with the test web URL and platform, persisting nothing unless the
/// caller sets a config directory.
pub fn ephemeral_builder(base_url: &str) -> NemoClientBuilder {
    client_builder(base_url)
        .web_url(WEB_URL)
        .skill_platform(PLATFORM)
        .no_persistence()
}

/// A private temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Writes the simulator's sample input clip into `dir` and returns its path.
pub fn sample_clip(dir: &Path) -> PathBuf {
    let path = dir.join("sample_input.mp4");
    std::fs::write(&path, nemo_video::simulator::SAMPLE_INPUT_MP4).expect("write sample clip");
    path
}

/// Names of the entries in `dir` (not recursive), sorted.
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

/// Bytes that differ from position to position, so misplaced bytes are noticed.
pub fn patterned_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns whether it held.
/// `limit` only ends a test that would otherwise hang: make it generous.
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

/// [`eventually`] for a condition that must await (a request log, a store call).
pub async fn eventually_async<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a test without a runtime: polls every 10 ms, blocking the thread.
pub fn eventually_blocking(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// What a `FileStore` in `dir` holds for `client_id` at the service `base_url`: the
/// credentials as JSON (`Null` when there are none).
pub fn stored_credentials(dir: &Path, base_url: &str, client_id: &str) -> serde_json::Value {
    let origin = url::Url::parse(base_url)
        .expect("a base URL")
        .origin()
        .ascii_serialization();
    stored_file(dir)["services"][origin][client_id]["credentials"].clone()
}

/// The whole credentials file of a `FileStore` in `dir`, as JSON.
pub fn stored_file(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dir.join(nemo_video::auth::CREDENTIALS_FILE))
        .expect("the credentials file was written");
    serde_json::from_slice(&bytes).expect("the credentials file is JSON")
}

/// An error's variant name (`"Http"`, `"Unconfirmed"`), read from its `Debug`, which ends in
/// `(Error::<variant>...)`.
pub fn variant_of(err: &nemo_video::Error) -> String {
    let debug = format!("{err:?}");
    debug
        .rsplit_once("(Error::")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_alphanumeric()).next())
        .unwrap_or("?")
        .to_string()
}
