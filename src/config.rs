//! Configuration: the resolved settings of a client, their defaults, and what is read from
//! the environment. Pure data; nothing here sends a request.
//!
//! Defaults (each overridable on [`NemoClientBuilder`](crate::NemoClientBuilder); the README
//! has the full table): base URL `https://mega-api-prod.nemovideo.ai` (env `NEMO_API_BASE`, or
//! `NEMO_API_URL`), web URL `https://nemovideo.com` (`NEMO_WEB_URL`), token from `NEMO_TOKEN`
//! or else an anonymous identity kept in a credential store (default: a file store under
//! `~/.config/nemovideo/`, `NEMO_CONFIG_DIR`), connect timeout 10 s, request timeout 60 s,
//! 2 retries with backoff from 0.5 s doubling to 8 s with jitter, and server-requested waits
//! honoured up to 60 s.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};

pub use crate::error::DEFAULT_RATE_LIMIT_WAIT;

/// Production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://mega-api-prod.nemovideo.ai";
/// Web app base URL, for links a person opens in a browser.
pub const DEFAULT_WEB_URL: &str = "https://nemovideo.com";
/// Default `X-Skill-Source` attribution value.
pub const DEFAULT_SKILL_SOURCE: &str = "video-object-ops";
/// Default `X-Skill-Version`: this crate's version.
pub const DEFAULT_SKILL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default upload size limit: 500 MiB (524,288,000 bytes), the service's documented maximum ("500MB").
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 500 * 1024 * 1024;
/// Default cap on a JSON response body: 64 MiB (state documents can be large).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Default cap on requests in flight on one HTTP/2 connection before the transport opens
/// another: 100, at or under the stream limits gateways announce (nginx and cloud load
/// balancers 128, others 100 to 256).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Retry settings for transient failures.
///
/// Defaults: 2 retries, 0.5 s base delay doubling to at most 8 s, full jitter on, and a
/// server-requested wait (`retry-after-ms` / `Retry-After`) honoured up to 60 s.
///
/// What is retried with backoff ([`RetryPolicy::Backoff`](crate::RetryPolicy::Backoff)): a
/// connection that could not be made (refused, name lookup failed, connect timed out; not a
/// TLS failure), for every request, since it never reached the service; and, for requests
/// that are safe to replay (reads), no answer within the request timeout, a lost connection
/// and HTTP 408, 409 and 5xx. A call makes at most `1 + max_retries` attempts for these (3
/// by default), each limited by the connect timeout and the request timeout. 1001/401 (one
/// new token and one replay) and 429 (one wait and one replay) are handled on top of that.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt for transient failures. Default 2 (3 attempts).
    pub max_retries: u32,
    /// Delay before the first retry. Default 500 ms.
    pub base_delay: Duration,
    /// Longest delay between two attempts. Default 8 s.
    pub max_delay: Duration,
    /// Randomise each delay between 75% and 100% of its value. Default true.
    pub jitter: bool,
    /// Longest server-requested wait the client honours; longer waits fail with
    /// [`Error::RateLimited`] at once. Default 60 s.
    pub max_server_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            jitter: true,
            max_server_wait: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// No retries at all (useful in tests of your own error handling).
    pub fn disabled() -> Self {
        RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        }
    }

    /// Sets the retries after the first attempt for transient failures (default 2).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets the delay before the first retry (default 500 ms); each later one doubles it.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Sets the longest delay between two attempts (default 8 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets whether each delay is randomised between 75% and 100% of its value (default
    /// true).
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the longest server-requested wait the client honours (default 60 s); a longer
    /// `Retry-After` fails with [`Error::RateLimited`](crate::Error::RateLimited) at once.
    pub fn max_server_wait(mut self, wait: Duration) -> Self {
        self.max_server_wait = wait;
        self
    }

    /// The delay before retry number `retry` (0-based), with jitter when enabled.
    pub(crate) fn delay_for(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(16));
        let delay = self.base_delay.saturating_mul(factor).min(self.max_delay);
        if self.jitter {
            delay.mul_f64(0.75 + fastrand::f64() * 0.25)
        } else {
            delay
        }
    }
}

/// Resolved configuration of a client. Read it with [`NemoClient::config`](crate::NemoClient::config).
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// API base URL.
    pub base_url: Url,
    /// Web app base URL.
    pub web_url: Url,
    /// Directory of the default credential store (`credentials.json`); `None` when the
    /// identities are kept elsewhere (in memory, or an app's own store).
    pub config_dir: Option<PathBuf>,
    /// `X-Skill-Source` header value.
    pub skill_source: String,
    /// `X-Skill-Version` header value.
    pub skill_version: String,
    /// `X-Skill-Platform` header value.
    pub skill_platform: String,
    /// `User-Agent` header value.
    pub user_agent: String,
    /// Limit on establishing a connection (TCP and TLS), per attempt.
    pub connect_timeout: Duration,
    /// Limit on one ordinary request (not streams, which have their own). For downloads: the
    /// limit on waiting for the response head and for each next chunk of the body.
    pub request_timeout: Duration,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Cap on a JSON response body in bytes.
    pub max_response_bytes: usize,
    /// Largest file [`NemoClient::upload_files`](crate::NemoClient) accepts, in bytes.
    pub max_upload_bytes: u64,
    /// Limit on every call to the credential store.
    pub store_timeout: Duration,
    /// Time to live of the identity leases this client takes in the credential store.
    pub lease_ttl: Duration,
    /// Requests in flight on one HTTP/2 connection before the transport opens another.
    pub max_streams_per_connection: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url.as_str())
            .field("web_url", &self.web_url.as_str())
            .field("config_dir", &self.config_dir)
            .field("skill_source", &self.skill_source)
            .field("skill_version", &self.skill_version)
            .field("skill_platform", &self.skill_platform)
            .field("user_agent", &self.user_agent)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("store_timeout", &self.store_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .finish()
    }
}

pub(crate) fn parse_base(raw: &str, what: &str) -> Result<Url> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|err| {
        Error::config(format!(
            "the {what} {trimmed:?} is not a valid URL ({err}); use a form like https://host"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::config(format!(
            "the {what} {trimmed:?} must be an http or https URL with a host"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::config(format!(
            "the {what} {trimmed:?} must not carry a query or fragment"
        )));
    }
    Ok(url)
}

/// `X-Skill-Platform` from the running executable's path.
pub(crate) fn detect_platform() -> String {
    let exe = std::env::current_exe()
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    platform_for_path(&exe).to_string()
}

pub(crate) fn platform_for_path(path: &str) -> &'static str {
    if path.contains("/.clawhub/") {
        "clawhub"
    } else if path.contains("/.cursor/skills/") {
        "cursor"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_detection() {
        assert_eq!(platform_for_path("/home/a/.clawhub/bin/x"), "clawhub");
        assert_eq!(platform_for_path("/home/a/.cursor/skills/x/bin"), "cursor");
        assert_eq!(platform_for_path("/usr/bin/x"), "unknown");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let retry = RetryConfig {
            jitter: false,
            ..RetryConfig::default()
        };
        assert_eq!(retry.delay_for(0), Duration::from_millis(500));
        assert_eq!(retry.delay_for(1), Duration::from_secs(1));
        assert_eq!(retry.delay_for(5), Duration::from_secs(8));
        let jittered = RetryConfig::default().delay_for(1);
        assert!(jittered >= Duration::from_millis(750) && jittered <= Duration::from_secs(1));
    }
}
