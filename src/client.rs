//! [`NemoClient`] and its builder: configuration, defaults, and the environment.
//!
//! Defaults (each overridable on [`NemoClientBuilder`]; the README has the full table):
//! base URL `https://mega-api-prod.nemovideo.ai` (env `NEMO_API_BASE`, or `NEMO_API_URL`), web
//! URL `https://nemovideo.com` (`NEMO_WEB_URL`), token from `NEMO_TOKEN` or else an anonymous
//! token persisted under `~/.config/nemovideo/` (`NEMO_CONFIG_DIR`), connect timeout 10 s,
//! request timeout 60 s, 2 retries with backoff from 0.5 s doubling to 8 s with jitter, and
//! server-requested waits honoured up to 60 s.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::auth::{Auth, SecretToken};
use crate::error::{Error, Result};
use crate::transport::Transport;

/// Production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://mega-api-prod.nemovideo.ai";
/// Web app base URL, for links a person opens in a browser.
pub const DEFAULT_WEB_URL: &str = "https://nemovideo.com";
/// Default `X-Skill-Source` attribution value.
pub const DEFAULT_SKILL_SOURCE: &str = "video-object-ops";
/// Default `X-Skill-Version`: this crate's version.
pub const DEFAULT_SKILL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default upload size limit: 500 MB, the service's documented maximum.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 500 * 1024 * 1024;
/// Default cap on a JSON response body: 64 MiB (state documents can be large).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Wait used for HTTP 429 when the server names no wait: 30 s, as the service documents.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);

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

/// Resolved configuration of a client. Read it with [`NemoClient::config`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// API base URL.
    pub base_url: Url,
    /// Web app base URL.
    pub web_url: Url,
    /// Directory for the persisted client id and token; `None` keeps them in memory only.
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
    pub(crate) static_token: Option<SecretToken>,
    pub(crate) client_id: Option<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url.as_str())
            .field("web_url", &self.web_url.as_str())
            .field("config_dir", &self.config_dir)
            .field("static_token", &self.static_token)
            .field("client_id", &self.client_id)
            .field("skill_source", &self.skill_source)
            .field("skill_version", &self.skill_version)
            .field("skill_platform", &self.skill_platform)
            .field("user_agent", &self.user_agent)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .finish()
    }
}

/// The NemoVideo client. Cheap to clone (an `Arc` inside), `Send + Sync`: one client can
/// serve a whole bot or server.
///
/// ```no_run
/// # async fn run() -> nemo_video::Result<()> {
/// let client = nemo_video::NemoClient::from_env()?;
/// let session = client.create_session(None).await?;
/// println!("credits left: {}", client.credits().await?.available);
/// # let _ = session; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NemoClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) transport: Transport,
}

impl fmt::Debug for NemoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NemoClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl NemoClient {
    /// A builder with every setting at its default (nothing read from the environment).
    pub fn builder() -> NemoClientBuilder {
        NemoClientBuilder::default()
    }

    /// A client configured from the environment (see [`NemoClientBuilder::from_env`]).
    pub fn from_env() -> Result<NemoClient> {
        NemoClientBuilder::from_env().build()
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }
}

/// Builds a [`NemoClient`]. Every setter documents its default.
#[derive(Default, Clone)]
pub struct NemoClientBuilder {
    base_url: Option<String>,
    web_url: Option<String>,
    token: Option<SecretToken>,
    client_id: Option<String>,
    config_dir: Option<Option<PathBuf>>,
    skill_source: Option<String>,
    skill_version: Option<String>,
    skill_platform: Option<String>,
    user_agent: Option<String>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    retry: Option<RetryConfig>,
    max_response_bytes: Option<usize>,
    max_upload_bytes: Option<u64>,
    http_client: Option<reqwest::Client>,
}

impl fmt::Debug for NemoClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NemoClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

impl NemoClientBuilder {
    /// A builder pre-filled from the environment: `NEMO_TOKEN`, `NEMO_API_BASE` (or
    /// `NEMO_API_URL`), `NEMO_WEB_URL`, `NEMO_CONFIG_DIR`, `NEMO_CLIENT_ID`, `SKILL_SOURCE`
    /// (the platform attribution). Unset or empty variables leave the default. Setters called
    /// afterwards override the environment.
    pub fn from_env() -> NemoClientBuilder {
        let mut builder = NemoClientBuilder::default();
        if let Some(token) = env_var("NEMO_TOKEN") {
            builder = builder.token(token);
        }
        if let Some(base) = env_var("NEMO_API_BASE").or_else(|| env_var("NEMO_API_URL")) {
            builder = builder.base_url(base);
        }
        if let Some(web) = env_var("NEMO_WEB_URL") {
            builder = builder.web_url(web);
        }
        if let Some(dir) = env_var("NEMO_CONFIG_DIR") {
            builder = builder.config_dir(PathBuf::from(dir));
        }
        if let Some(client_id) = env_var("NEMO_CLIENT_ID") {
            builder = builder.client_id(client_id);
        }
        if let Some(platform) = env_var("SKILL_SOURCE") {
            builder = builder.skill_platform(platform);
        }
        builder
    }

    /// API base URL. Default `https://mega-api-prod.nemovideo.ai`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Web app base URL for browser links (registration, claim links). Default
    /// `https://nemovideo.com`.
    pub fn web_url(mut self, url: impl Into<String>) -> Self {
        self.web_url = Some(url.into());
        self
    }

    /// A fixed API token (as `NEMO_TOKEN`). Default: none, so an anonymous token is fetched
    /// and persisted. A fixed token that the service rejects is reported, never swapped for
    /// an anonymous one behind your back.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(SecretToken::new(token.into()));
        self
    }

    /// The client id (a UUID) used to request anonymous tokens. Default: the persisted one,
    /// or a new random UUID (persisted).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Directory where the client id and anonymous token are persisted (files mode 0600,
    /// written atomically). Default `~/.config/nemovideo/`.
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(Some(dir.into()));
        self
    }

    /// Keep the client id and token in memory only. Default: persisted (see
    /// [`config_dir`](Self::config_dir)). Beware: the service issues one anonymous token per
    /// client per 7 days, so an unpersisted client cannot get a second one after a restart.
    pub fn no_persistence(mut self) -> Self {
        self.config_dir = Some(None);
        self
    }

    /// `X-Skill-Source` attribution header. Default `video-object-ops`.
    pub fn skill_source(mut self, value: impl Into<String>) -> Self {
        self.skill_source = Some(value.into());
        self
    }

    /// `X-Skill-Version` attribution header. Default: this crate's version.
    pub fn skill_version(mut self, value: impl Into<String>) -> Self {
        self.skill_version = Some(value.into());
        self
    }

    /// `X-Skill-Platform` attribution header. Default: env `SKILL_SOURCE` (through
    /// [`from_env`](Self::from_env)), else `clawhub` when the executable's path contains
    /// `/.clawhub/`, `cursor` when it contains `/.cursor/skills/`, else `unknown`.
    pub fn skill_platform(mut self, value: impl Into<String>) -> Self {
        self.skill_platform = Some(value.into());
        self
    }

    /// `User-Agent` header. Default `nemo-video-rust/<version>`.
    pub fn user_agent(mut self, value: impl Into<String>) -> Self {
        self.user_agent = Some(value.into());
        self
    }

    /// Limit on establishing a connection (TCP and TLS), per attempt. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Limit on one ordinary request, per attempt (streams have their own limits; a download
    /// gets it for the response head and for each chunk, not for the whole body). Default 60 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Retry settings. Default [`RetryConfig::default`]: 2 retries, 0.5 s doubling to 8 s,
    /// jitter, server waits honoured up to 60 s.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Cap on a JSON response body, in bytes. Default 64 MiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = Some(bytes);
        self
    }

    /// Largest file accepted for upload, checked locally before sending. Default 500 MiB.
    pub fn max_upload_bytes(mut self, bytes: u64) -> Self {
        self.max_upload_bytes = Some(bytes);
        self
    }

    /// Reuse an existing `reqwest::Client` (connection pool, proxies, TLS settings). Default:
    /// a new client with the connect timeout above. The connect timeout setting does not
    /// apply to a client you pass in.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Builds the client. Fails with [`Error::Config`] on an unusable URL or header value.
    pub fn build(self) -> Result<NemoClient> {
        let base_url = parse_base(
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            "base URL",
        )?;
        let web_url = parse_base(
            self.web_url.as_deref().unwrap_or(DEFAULT_WEB_URL),
            "web URL",
        )?;
        let config_dir = match self.config_dir {
            Some(choice) => choice,
            None => dirs::home_dir().map(|home| home.join(".config").join("nemovideo")),
        };
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(10));
        let config = Config {
            base_url,
            web_url,
            config_dir,
            skill_source: self
                .skill_source
                .unwrap_or_else(|| DEFAULT_SKILL_SOURCE.to_string()),
            skill_version: self
                .skill_version
                .unwrap_or_else(|| DEFAULT_SKILL_VERSION.to_string()),
            skill_platform: self.skill_platform.unwrap_or_else(detect_platform),
            user_agent: self
                .user_agent
                .unwrap_or_else(|| format!("nemo-video-rust/{}", env!("CARGO_PKG_VERSION"))),
            connect_timeout,
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(60)),
            retry: self.retry.unwrap_or_default(),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            max_upload_bytes: self.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
            static_token: self.token,
            client_id: self.client_id,
        };
        for (name, value) in [
            ("X-Skill-Source", &config.skill_source),
            ("X-Skill-Version", &config.skill_version),
            ("X-Skill-Platform", &config.skill_platform),
        ] {
            if value.trim().is_empty() {
                return Err(Error::config(format!(
                    "{name} is empty; the service refuses exports (HTTP 402) without attribution, so leave it at its default or set a value"
                )));
            }
        }
        if let Some(client_id) = &config.client_id {
            crate::auth::validate_client_id(client_id)?;
        }
        let (http, known_connect_timeout) = match self.http_client {
            Some(client) => (client, None),
            None => (
                reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .build()
                    .map_err(|err| {
                        Error::config(format!("could not build the HTTP client: {err}"))
                    })?,
                Some(connect_timeout),
            ),
        };
        let auth = Auth::new(&config);
        let transport = Transport::new(http, &config, auth, known_connect_timeout)?;
        Ok(NemoClient {
            inner: Arc::new(Inner { config, transport }),
        })
    }
}

fn parse_base(raw: &str, what: &str) -> Result<Url> {
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
fn detect_platform() -> String {
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

    #[test]
    fn bad_base_url_is_a_config_error() {
        let err = NemoClient::builder()
            .base_url("ftp://x")
            .no_persistence()
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }
}
