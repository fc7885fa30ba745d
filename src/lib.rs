//! # nemo-video
//!
//! The Rust client SDK for NemoVideo's AI video agent: get a token, open a session, upload
//! clips, talk to the agent in plain language, read the timeline, and export an MP4.
//!
//! ```no_run
//! # async fn run() -> nemo_video::Result<()> {
//! use nemo_video::NemoClient;
//!
//! // NEMO_TOKEN if set, else an anonymous token persisted under ~/.config/nemovideo/.
//! let client = NemoClient::from_env()?;
//! let session = client.create_session(Some("en")).await?;
//! let credits = client.credits().await?;
//! println!("session {} ready, {} credits", session.id(), credits.available);
//! # Ok(()) }
//! ```
//!
//! Every failure is an [`Error`] whose message says what happened and what to do, and whose
//! [`Error::retry_policy`] says whether trying again can help.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
mod client;
mod credits;
pub mod draft;
pub mod error;
pub mod events;
pub mod intent;
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

pub use auth::{AnonymousCredentials, SecretToken};
pub use client::{
    Config, NemoClient, NemoClientBuilder, RetryConfig, DEFAULT_BASE_URL,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_RATE_LIMIT_WAIT,
    DEFAULT_SKILL_SOURCE, DEFAULT_SKILL_VERSION, DEFAULT_WEB_URL,
};
pub use credits::Credits;
pub use draft::{Draft, Track, TrackKind};
pub use error::{ApiCode, ApiInfo, Error, Result, RetryPolicy, TimeoutKind, SUPPORTED_FORMATS};
pub use events::AgentEvent;
pub use render::{RenderJob, RenderOptions, RenderStatus, WaitOptions};
pub use session::{ClaimLink, Session};
pub use state::{SessionState, StateDiff};
pub use stream::{MessageOptions, MessageStream};
pub use turn::{Turn, TurnEnd, TurnOptions};
pub use upload::{UploadProgress, UploadResult, UploadedFile};

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
