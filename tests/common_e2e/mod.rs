//! Helpers for the end-to-end tests: a fast simulator, clients pointed at it with a private
//! config directory and fast retries, and the first steps of the remove-object flow.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nemo_video::render::WaitOptions;
use nemo_video::simulator::Simulator;
use nemo_video::{NemoClient, NemoClientBuilder, RetryConfig, Session};

/// The prompt of the main job.
pub const REMOVE: &str = "remove the background person and replace it with a solid color";
/// What the simulator calls the track it adds for a solid-color removal.
pub const MASK_TRACK: &str = "solid fill mask";

/// The sample clip shipped in `assets/`.
pub fn sample_input() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("sample_input.mp4")
}

/// A simulator with the short test timings.
pub async fn simulator() -> Simulator {
    Simulator::builder()
        .fast()
        .start()
        .await
        .expect("simulator starts")
}

/// Retries as in production (2), but 10 ms doubling to 40 ms, no jitter.
pub fn fast_retry() -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.base_delay = Duration::from_millis(10);
    retry.max_delay = Duration::from_millis(40);
    retry.jitter = false;
    retry
}

/// A builder for an anonymous-token client of `sim` persisting into `dir`.
pub fn builder(sim: &Simulator, dir: &Path) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(sim.base_url())
        .config_dir(dir)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .retry(fast_retry())
}

/// An anonymous-token client of `sim` persisting into `dir`.
pub fn new_client(sim: &Simulator, dir: &Path) -> NemoClient {
    builder(sim, dir).build().expect("client builds")
}

/// Polls renders every 50 ms, for at most 10 s.
pub fn fast_wait() -> WaitOptions {
    WaitOptions::default()
        .poll_interval(Duration::from_millis(50))
        .max_wait(Duration::from_secs(10))
}

/// A new session with the sample clip uploaded.
pub async fn session_with_clip(client: &NemoClient) -> Session {
    let session = client.create_session(Some("en")).await.expect("session");
    let uploaded = client
        .upload_files(&session, &[sample_input()])
        .await
        .expect("upload");
    assert_eq!(uploaded.files.len(), 1, "{uploaded:?}");
    session
}

/// A private temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
