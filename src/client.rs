//! [`NemoClient`] and its builder.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{
    AnonymousCredentials, CredentialStore, FileStore, Identity, IdentityEvent, IdentityEventFn,
    IdentityOptions, MemoryStore, SecretToken,
};
use crate::config::{
    detect_platform, parse_base, Config, RetryConfig, DEFAULT_BASE_URL, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_SKILL_SOURCE,
    DEFAULT_SKILL_VERSION, DEFAULT_WEB_URL,
};
use crate::connections::{ClientFactory, Connections};
use crate::error::{Error, Result};
use crate::transport::Transport;

/// The NemoVideo client. Cheap to clone (an `Arc` inside), `Send + Sync`: one client can
/// serve a whole bot or server.
///
/// ```no_run
/// # async fn run() -> nemo_video::Result<()> {
/// let client = nemo_video::NemoClient::from_env()?;
/// let session = client.create_session().await?;
/// println!("credits left: {}", client.credits().await?.available);
/// # let _ = session; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NemoClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) transport: Transport,
}

impl fmt::Debug for NemoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self.transport().identity();
        f.debug_struct("NemoClient")
            .field("config", &self.inner.config)
            .field("static_token", &identity.static_token())
            .field("client_id", &identity.fixed_client_id())
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

    /// A client for another anonymous identity (an end user of a bot or server), sharing this
    /// client's settings, HTTP connection pool and credential store. Cheap: only the identity
    /// is new. The identity's token is loaded from the store, or fetched on first use.
    ///
    /// Fails with [`Error::Config`] for an unusable client id, or when this client uses a
    /// fixed token (a fixed token is one identity).
    ///
    /// ```no_run
    /// # async fn run(server: nemo_video::NemoClient) -> nemo_video::Result<()> {
    /// // One client per end user, all over one store and one connection pool.
    /// let alice = server.for_identity("alice-5d1b3e8e")?;
    /// println!("{} credits", alice.credits().await?.available);
    /// # Ok(()) }
    /// ```
    pub fn for_identity(&self, client_id: impl Into<String>) -> Result<NemoClient> {
        let identity = self.transport().identity();
        if identity.static_token().is_some() {
            return Err(Error::config(
                "this client uses a fixed token (NEMO_TOKEN or NemoClientBuilder::token), which is a single identity; build clients for anonymous identities without a token",
            ));
        }
        let client_id = client_id.into();
        crate::auth::validate_client_id(&client_id)?;
        let identity = Identity::new(
            None,
            Some(client_id),
            Arc::clone(identity.store()),
            identity.options().clone(),
        );
        Ok(NemoClient {
            inner: Arc::new(Inner {
                config: Arc::clone(&self.inner.config),
                transport: self.transport().with_identity(identity),
            }),
        })
    }

    /// The client id of this client's anonymous identity: the configured one, else the
    /// credential store's default identity (created on first use). `None` for a client with
    /// a fixed token.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) -> nemo_video::Result<()> {
    /// if let Some(id) = client.client_id().await? {
    ///     println!("client id {id}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn client_id(&self) -> Result<Option<String>> {
        let identity = self.transport().identity();
        if identity.static_token().is_some() {
            return Ok(None);
        }
        identity.client_id().await.map(Some)
    }

    /// The anonymous identity in use (or, before the first request, the one the credential
    /// store holds for this client). `None` for a fixed token or an identity without a token
    /// yet. The token inside prints as `***`.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) {
    /// if let Some(creds) = client.anonymous_credentials().await {
    ///     println!("anonymous user {:?}, expires at {}", creds.user_id, creds.expires_at_unix());
    /// }
    /// # }
    /// ```
    pub async fn anonymous_credentials(&self) -> Option<AnonymousCredentials> {
        self.transport().identity().credentials().await
    }

    /// The registration link for an anonymous user
    /// (`<web>/register?bind=<anonymous user id>`), which keeps the work and adds credits.
    /// Async like [`client_id`](Self::client_id): before this client has made a request, the
    /// user id comes from the credential store. `None` for a fixed token or an identity
    /// without a token yet.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) {
    /// if let Some(url) = client.registration_url().await {
    ///     println!("register here: {url}");
    /// }
    /// # }
    /// ```
    pub async fn registration_url(&self) -> Option<String> {
        if let Some(url) = self.transport().registration_url() {
            return Some(url);
        }
        let user_id = self.anonymous_credentials().await?.user_id?;
        Some(self.transport().register_url_for(&user_id))
    }

    /// True while a token request or a save of this client's identity is in flight (it runs
    /// on even if the call that started it was cancelled).
    ///
    /// ```no_run
    /// # fn run(client: nemo_video::NemoClient) {
    /// if client.identity_busy() {
    ///     eprintln!("saving the token the service just issued...");
    /// }
    /// # }
    /// ```
    pub fn identity_busy(&self) -> bool {
        self.transport().identity().busy()
    }

    /// Waits, for at most `limit`, until no token request or save of this client's identity
    /// is in flight; `true` when none is left. A token request runs in a task of its own, so
    /// that a cancelled call (a timeout, Ctrl-C) never loses a token the service issued; a
    /// program about to exit after an interruption calls this first, because the task ends
    /// with the runtime. Immediate when nothing is in flight.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) {
    /// use std::time::Duration;
    /// if !client.settle_identity(Duration::from_secs(5)).await {
    ///     eprintln!("the token being issued may not have been saved");
    /// }
    /// # }
    /// ```
    pub async fn settle_identity(&self, limit: Duration) -> bool {
        self.transport().identity().settle(limit).await
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }
}

fn identity_options(config: &Config, on_event: Option<IdentityEventFn>) -> IdentityOptions {
    IdentityOptions {
        origin: config.base_url.origin().ascii_serialization(),
        max_server_wait: config.retry.max_server_wait,
        store_timeout: config.store_timeout,
        lease_ttl: config.lease_ttl,
        // One token request's answer, its connection attempts and its saves fit inside.
        lease_hold: crate::auth::MAX_LEASE_HOLD.max(
            config
                .request_timeout
                .saturating_mul(crate::auth::TOKEN_ANSWER_FACTOR)
                .saturating_add(Duration::from_secs(120)),
        ),
        on_event,
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
    root_certificates: Vec<reqwest::Certificate>,
    configure_http_client: Option<HttpClientHook>,
    max_streams_per_connection: Option<usize>,
    credential_store: Option<Arc<dyn CredentialStore>>,
    store_timeout: Option<Duration>,
    lease_ttl: Option<Duration>,
    on_identity_event: Option<IdentityEventFn>,
}

/// What [`NemoClientBuilder::configure_http_client`] keeps.
type HttpClientHook =
    Arc<dyn Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static>;

impl fmt::Debug for NemoClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NemoClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("client_id", &self.client_id)
            .field("config_dir", &self.config_dir)
            .field("credential_store", &self.credential_store.is_some())
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
    /// `NEMO_API_URL`), `NEMO_WEB_URL`, `NEMO_CONFIG_DIR`, `NEMO_CLIENT_ID`,
    /// `NEMO_SKILL_PLATFORM` (the `X-Skill-Platform` attribution; `SKILL_SOURCE`, the name
    /// the service's notes use, is read when it is unset). Unset or empty variables leave the
    /// default. Setters called afterwards override the environment.
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
        if let Some(platform) = env_var("NEMO_SKILL_PLATFORM").or_else(|| env_var("SKILL_SOURCE")) {
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

    /// The client id (the identity; a UUID is best) used to request anonymous tokens.
    /// Default: the credential store's default identity, created on first use and shared by
    /// every client and process over the same store. A server gives each end user its own.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Keep identities in a [`FileStore`] in `dir` (`credentials.json`, mode 0600 in a 0700
    /// directory, replaced atomically, safe to share between processes). Default
    /// `~/.config/nemovideo/`.
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(Some(dir.into()));
        self.credential_store = None;
        self
    }

    /// Keep identities in memory only (a new [`MemoryStore`]). Default: a file store (see
    /// [`config_dir`](Self::config_dir)). Beware: the service issues one anonymous token per
    /// client id per 7 days, so an identity kept only in memory cannot get a second token
    /// after a restart.
    pub fn no_persistence(mut self) -> Self {
        self.config_dir = Some(None);
        self.credential_store = None;
        self
    }

    /// Keep identities in `store`: a [`FileStore`], a [`MemoryStore`], or the app's own
    /// [`CredentialStore`] over its database. Share one `Arc` between all the clients of a
    /// server (one per end user, each with its [`client_id`](Self::client_id)). Default: a
    /// file store in `~/.config/nemovideo/`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use nemo_video::auth::MemoryStore;
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let http = nemo_video::reqwest::Client::new();
    /// let clients: Vec<_> = ["user-1", "user-2"]
    ///     .iter()
    ///     .map(|user| {
    ///         nemo_video::NemoClient::builder()
    ///             .http_client(http.clone())
    ///             .credential_store(store.clone())
    ///             .client_id(*user)
    ///             .build()
    ///     })
    ///     .collect::<Result<_, _>>()?;
    /// # let _: Vec<nemo_video::NemoClient> = clients;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn credential_store(mut self, store: Arc<dyn CredentialStore>) -> Self {
        self.credential_store = Some(store);
        self.config_dir = Some(None);
        self
    }

    /// Limit on every call to the credential store (load, save, lease); a call that runs out
    /// fails the SDK call with [`Error::StoreTimeout`]. Default 10 s.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// Time to live of the lease this client takes on an identity in the credential store
    /// while it asks the service for a token (renewed every third of it, released when
    /// done). A holder that dies keeps others waiting at most this long. Default 30 s
    /// ([`auth::DEFAULT_LEASE_TTL`](crate::auth::DEFAULT_LEASE_TTL)).
    pub fn identity_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// Calls `callback` for what happens to identities: a token issued, a save that failed
    /// (and is being retried), a save that recovered, a refused token request. Use it to alert
    /// when the credential store fails: a token that is never saved is lost when the process
    /// ends. Default: none (the same events are logged through `tracing`). Clients made with
    /// [`NemoClient::for_identity`] share it.
    ///
    /// ```
    /// use nemo_video::auth::IdentityEvent;
    /// let client = nemo_video::NemoClient::builder()
    ///     .on_identity_event(|event| {
    ///         if let IdentityEvent::SaveFailed { key, error, .. } = event {
    ///             eprintln!("ALERT: the token of {key} is not saved: {error}");
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn on_identity_event(
        mut self,
        callback: impl Fn(&IdentityEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_identity_event = Some(Arc::new(callback));
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

    /// `X-Skill-Platform` attribution header. Default: env `NEMO_SKILL_PLATFORM` or `SKILL_SOURCE` (through
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
    /// gets it for the response head and for each chunk, not for the whole body; an upload, as
    /// the longest time without progress). Default 60 s.
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

    /// Send everything through this one `reqwest::Client` (its connection pool, proxies and
    /// TLS settings). Default: the SDK builds its own clients, as many per origin as HTTP/2
    /// needs (see [`max_streams_per_connection`](Self::max_streams_per_connection)), each
    /// with the connect timeout above, the [root certificates](Self::add_root_certificate)
    /// and the [hook](Self::configure_http_client).
    ///
    /// What a client of your own gives up: **spreading** (a `reqwest::Client`'s pool cannot
    /// be copied, so over HTTP/2 every request of every identity shares its one connection,
    /// and past the server's stream limit, 128 on nginx, requests wait in hyper until a
    /// stream ends: a turn can wait for another turn to finish), the **connect timeout**
    /// setting (set your own with `connect_timeout` on its builder), and the transport's
    /// resend of requests HTTP/2 refused goes through that client's own retry policy as well
    /// as the SDK's. Prefer [`configure_http_client`](Self::configure_http_client) for
    /// proxies and TLS settings. Build the client with [`crate::reqwest`], the re-exported
    /// `reqwest` of the right version, to need no `reqwest` dependency of your own.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Trust `certificate` as a root, in addition to the built-in roots: a corporate proxy
    /// that inspects TLS, a private gateway, the [simulator's HTTPS
    /// mode](crate::simulator::SimulatorBuilder::https). May be called several times. It
    /// applies to every client the SDK builds. Default: the built-in roots only (webpki roots
    /// with `rustls`, the system's with `native-tls`).
    ///
    /// ```no_run
    /// # fn demo(pem: &[u8]) -> nemo_video::Result<()> {
    /// let ca = nemo_video::reqwest::Certificate::from_pem(pem)
    ///     .map_err(|err| nemo_video::Error::Config { message: err.to_string() })?;
    /// let client = nemo_video::NemoClient::builder().add_root_certificate(ca).build()?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn add_root_certificate(mut self, certificate: reqwest::Certificate) -> Self {
        self.root_certificates.push(certificate);
        self
    }

    /// Adjust every `reqwest::ClientBuilder` the SDK builds (one per HTTP/2 connection it
    /// opens, see [`max_streams_per_connection`](Self::max_streams_per_connection)): proxies,
    /// TLS settings, local address, anything `reqwest` offers. The hook gets a builder that
    /// already has the SDK's settings (the connect timeout, the [root
    /// certificates](Self::add_root_certificate), reqwest's own replays turned off because
    /// the SDK resends what HTTP/2 refused itself) and may change any of them. Default: none.
    ///
    /// ```no_run
    /// # fn demo() -> nemo_video::Result<()> {
    /// use nemo_video::reqwest;
    ///
    /// let proxy = reqwest::Proxy::https("http://proxy.internal:3128")
    ///     .map_err(|err| nemo_video::Error::Config { message: err.to_string() })?;
    /// let client = nemo_video::NemoClient::builder()
    ///     .configure_http_client(move |http| http.proxy(proxy.clone()).tcp_nodelay(true))
    ///     .build()?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn configure_http_client(
        mut self,
        hook: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure_http_client = Some(Arc::new(hook));
        self
    }

    /// Requests in flight on one HTTP/2 connection before the transport opens another (each
    /// new request goes to the least loaded connection; a stream counts until its body ends).
    /// Keep it at or below the stream limit your gateway announces: reqwest does not expose
    /// that limit, and requests past it wait for a stream to end. Has no effect over HTTP/1
    /// (a connection per request in flight, as always) or with
    /// [`http_client`](Self::http_client). Default 100
    /// ([`DEFAULT_MAX_STREAMS_PER_CONNECTION`](crate::DEFAULT_MAX_STREAMS_PER_CONNECTION)).
    pub fn max_streams_per_connection(mut self, streams: usize) -> Self {
        self.max_streams_per_connection = Some(streams.max(1));
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
            store_timeout: self.store_timeout.unwrap_or(Duration::from_secs(10)),
            lease_ttl: self
                .lease_ttl
                .unwrap_or(crate::auth::DEFAULT_LEASE_TTL)
                .max(Duration::from_millis(30)),
            max_streams_per_connection: self
                .max_streams_per_connection
                .unwrap_or(DEFAULT_MAX_STREAMS_PER_CONNECTION),
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
        if let Some(client_id) = &self.client_id {
            crate::auth::validate_client_id(client_id)?;
        }
        let (connections, known_connect_timeout) = match self.http_client {
            Some(_) if !self.root_certificates.is_empty() || self.configure_http_client.is_some() => {
                return Err(Error::config(
                    "add_root_certificate and configure_http_client apply to the HTTP clients the SDK builds, not to one passed to http_client: configure that client yourself, or drop http_client",
                ))
            }
            Some(client) => (Connections::fixed(client), None),
            None => (
                Connections::new(
                    http_client_factory(
                        connect_timeout,
                        self.root_certificates,
                        self.configure_http_client,
                    ),
                    config.max_streams_per_connection,
                )?,
                Some(connect_timeout),
            ),
        };
        let store: Arc<dyn CredentialStore> = match (self.credential_store, &config.config_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => Arc::new(FileStore::new(dir.clone())),
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let identity = Identity::new(
            self.token,
            self.client_id,
            store,
            identity_options(&config, self.on_identity_event),
        );
        let transport = Transport::new(connections, &config, identity, known_connect_timeout)?;
        Ok(NemoClient {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                transport,
            }),
        })
    }
}

/// What builds each `reqwest::Client` of the pool: the SDK's settings, then the caller's.
fn http_client_factory(
    connect_timeout: Duration,
    root_certificates: Vec<reqwest::Certificate>,
    hook: Option<HttpClientHook>,
) -> ClientFactory {
    Arc::new(move |http2_only| {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // The transport resends what HTTP/2 refused itself, through its pool and within
            // its retry budget; reqwest's replays would do it a second time, on the same
            // client, unseen.
            .retry(reqwest::retry::never());
        for certificate in &root_certificates {
            builder = builder.add_root_certificate(certificate.clone());
        }
        if let Some(hook) = &hook {
            builder = hook(builder);
        }
        if http2_only {
            // For an origin that answered over HTTP/2 (see connections.rs).
            builder = builder.http2_prior_knowledge();
        }
        builder
            .build()
            .map_err(|err| Error::config(format!("could not build the HTTP client: {err}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
