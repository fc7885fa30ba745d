//! # nemo-video
//!
//! The Rust client SDK for NemoVideo's AI video agent: get a token, open a session, upload
//! clips, talk to the agent in plain language, read the timeline, and export an MP4.
//!
//! ## The whole job in one function
//!
//! ```no_run
//! use nemo_video::{NemoClient, SessionOptions};
//!
//! # async fn run() -> nemo_video::Result<()> {
//! // 1. Connect: NEMO_TOKEN if set, else an anonymous token (100 free credits), fetched once
//! //    and persisted under ~/.config/nemovideo/ so a restart reuses it.
//! let client = NemoClient::from_env()?;
//!
//! // 2. A session is a project with its own timeline. It is Serialize: store it to resume.
//! let session = client.create_session_with(&SessionOptions::default().language("en")).await?;
//!
//! // 3. Upload: checked locally first, then streamed from disk in one multipart request.
//! client.upload(&session, &["clip.mp4"]).await?;
//!
//! // 4. Talk to the agent. A turn always ends in an answer: the agent's words, or, when it
//! //    says nothing (about 30% of edits), what changed on the timeline.
//! let turn = client
//!     .run_turn(&session, "remove the background person and replace it with a solid color")
//!     .await?;
//! println!("{}", turn.answer());
//!
//! // 5. Read the timeline.
//! println!("{}", client.state(&session).await?.summary());
//!
//! // 6. Export and download: the file lands whole or not at all.
//! let export = client.export(&session).await?;
//! let bytes = client.download(&export, "edited.mp4").await?;
//! println!("Saved edited.mp4 ({bytes} bytes)");
//! # Ok(()) }
//! ```
//!
//! ## Where to go next
//!
//! - [`NemoClientBuilder`]: every setting and its default; [`NemoClient::from_env`] for the
//!   environment variables.
//! - [`stream`]: the agent's raw event stream ([`NemoClient::send_message`]) with idle and total
//!   limits; [`turn`] runs one message to an answer; [`events`] are the typed events.
//! - [`state`] and [`draft`]: the timeline, its summary, and diffs between two states.
//! - [`render`]: export in one call, or submit (with an id you save first), wait, cancel;
//!   download with progress.
//! - [`job`]: the whole job (upload → edit → render → download), saved in a job store after
//!   every step, leased to one runner at a time, and resumable after a crash, on any machine,
//!   without paying twice.
//! - [`intent`]: routing a bot user's words, and translating the agent's GUI phrasing.
//! - [`sse`]: the SSE parser, usable on its own.
//! - `simulator` (feature `simulator`, on by default): a fake service on loopback to test your
//!   app against.
//!
//! ## Errors
//!
//! Every failure is an [`Error`] whose message says what happened and what to do, and whose
//! [`Error::retry_policy`] says whether trying again can help. The client already retries what
//! is safe to retry: reads on transient failures, and anything the service refused before doing
//! work (an expired token, a rate limit). A message or an upload that may have reached the
//! service is never sent twice, so credits are never charged twice.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
mod client;
mod config;
mod connections;
mod credits;
pub mod draft;
mod error;
pub mod events;
mod files;
pub mod intent;
pub mod job;
pub mod lease;
#[cfg(feature = "redis")]
mod redis_kv;
pub mod render;
mod session;
#[cfg(feature = "simulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulator")))]
pub mod simulator;
pub mod sse;
pub mod state;
pub mod stream;
mod transport;
pub mod turn;
pub mod upload;
mod wire;

/// The README, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide `docs/using-the-client.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/using-the-client.md")]
pub struct UsingTheClientDoctests;

/// The guide `docs/serving-many-users.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/serving-many-users.md")]
pub struct ServingManyUsersDoctests;

/// The guide `docs/work-that-survives-a-crash.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/work-that-survives-a-crash.md")]
pub struct WorkThatSurvivesACrashDoctests;

/// The guide `docs/configuration.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
pub struct ConfigurationDoctests;

/// The guide `docs/errors-and-retries.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/errors-and-retries.md")]
pub struct ErrorsAndRetriesDoctests;

/// The guide `docs/testing-with-the-simulator.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/testing-with-the-simulator.md")]
pub struct TestingWithTheSimulatorDoctests;

/// The guide `docs/performance.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/performance.md")]
pub struct PerformanceDoctests;

/// The guide `docs/reliability.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/reliability.md")]
pub struct ReliabilityDoctests;

/// The guide `docs/msrv.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/msrv.md")]
pub struct MsrvDoctests;

/// The guide `docs/examples.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../docs/examples.md")]
pub struct ExamplesDoctests;

/// `CONTRIBUTING.md`, compiled as doc tests so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../CONTRIBUTING.md")]
pub struct ContributingDoctests;

/// The `reqwest` this crate is built with, so that [`NemoClientBuilder::http_client`] can be
/// given a configured `reqwest::Client` (proxy, extra root certificates, a shared connection
/// pool) without a `reqwest` line in your own `Cargo.toml`, and always of the right version.
///
/// ```no_run
/// # fn demo() -> nemo_video::Result<()> {
/// let http = nemo_video::reqwest::Client::builder()
///     .pool_max_idle_per_host(4)
///     .build()
///     .expect("a reqwest client");
/// let client = nemo_video::NemoClient::builder().http_client(http).build()?;
/// # let _ = client; Ok(()) }
/// ```
pub use reqwest;

// The root holds the client, its configuration, its errors and the session: what every
// program names. Every other type lives in its module only (one path per item; see
// CONTRIBUTING.md).
pub use client::{NemoClient, NemoClientBuilder};
pub use config::{
    Config, RetryConfig, DEFAULT_BASE_URL, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_RATE_LIMIT_WAIT,
    DEFAULT_SKILL_SOURCE, DEFAULT_SKILL_VERSION, DEFAULT_WEB_URL,
};
pub use credits::Credits;
pub use error::{
    ApiCode, ApiInfo, ConnectFailure, Error, Result, RetryPolicy, TimeoutKind, SUPPORTED_FORMATS,
};
pub use session::{ClaimLink, Session, SessionOptions};

/// Entry points for the fuzz targets under `fuzz/`, which live in their own crate and so
/// cannot reach crate-private decoders. **Not public API**: hidden from the docs, exempt from
/// semver, and may change or disappear in any release.
#[doc(hidden)]
pub mod __fuzz {
    /// Runs the response-envelope decoder on `body` as if it came with HTTP `status`, asking
    /// for an untyped `serde_json::Value`. A status outside `100..=999` is a configuration
    /// error (no such response can exist).
    pub fn decode_envelope(status: u16, body: &[u8]) -> Result<(), crate::Error> {
        let status = reqwest::StatusCode::from_u16(status)
            .map_err(|_| crate::Error::config(format!("{status} is not an HTTP status")))?;
        crate::transport::decode_envelope::<serde_json::Value>(status, None, body, "a value", None)
            .map(drop)
    }
}
