//! Clients pointed at the built-in simulator (short timings, a private config directory, fast
//! retries) and the first steps of the remove-object flow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nemo_video::render::WaitOptions;
use nemo_video::simulator::Simulator;
use nemo_video::{NemoClient, NemoClientBuilder, Session};

/// The prompt of the main job.
pub const REMOVE: &str = "remove the background person and replace it with a solid color";
/// What the simulator calls the track it adds for a solid-color removal.
pub const MASK_TRACK: &str = "solid fill mask";

/// The sample clip shipped in `assets/`.
pub fn sample_input() -> PathBuf {
    super::crate_dir().join("assets").join("sample_input.mp4")
}

/// A simulator with the short test timings.
pub async fn simulator() -> Simulator {
    Simulator::builder()
        .fast()
        .start()
        .await
        .expect("simulator starts")
}

/// A builder for an anonymous-token client of `sim` persisting into `dir` (SDK defaults for
/// the web URL and attribution).
pub fn builder(sim: &Simulator, dir: &Path) -> NemoClientBuilder {
    super::client_builder(sim.base_url()).config_dir(dir)
}

/// An anonymous-token client of `sim` persisting into `dir`.
pub fn new_client(sim: &Simulator, dir: &Path) -> NemoClient {
    builder(sim, dir).build().expect("client builds")
}

/// Polls renders every 50 ms, for at most 30 s (a limit for a hung test, not a deadline).
pub fn fast_wait() -> WaitOptions {
    WaitOptions::default()
        .poll_interval(Duration::from_millis(50))
        .max_wait(Duration::from_secs(30))
}

/// A new session with the sample clip uploaded.
pub async fn session_with_clip(client: &NemoClient) -> Session {
    let session = client
        .create_session_with(&nemo_video::SessionOptions::default().language("en"))
        .await
        .expect("session");
    let uploaded = client
        .upload(&session, &[sample_input()])
        .await
        .expect("upload");
    assert_eq!(uploaded.files.len(), 1, "{uploaded:?}");
    session
}
