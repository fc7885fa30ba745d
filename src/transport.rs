//! The only place that sends HTTP: headers, envelopes, errors, retries, re-authentication.
//!
//! Policy (defaults in [`RetryConfig`](crate::RetryConfig)):
//! - Every request carries `X-Skill-Source`, `X-Skill-Version`, `X-Skill-Platform` and a
//!   `User-Agent`; every request but the anonymous-token call carries
//!   `Authorization: Bearer <token>`, marked sensitive. Tokens never reach a URL, a log line or
//!   an error, and are never sent to a host other than the API's own.
//! - Envelopes: `{"code", "message"|"msg", "data"}`, `{"success", "data"|"error"}`,
//!   `{"detail"}` (FastAPI) and non-JSON bodies (proxies). A non-zero body code wins over the
//!   HTTP status; otherwise the status decides.
//! - Retries follow [`Error::retry_policy`]: 1001/401 → one new token and one replay;
//!   429 → the server's wait (`retry-after-ms`, then `Retry-After`, else 30 s) and one replay;
//!   transient failures → exponential backoff with jitter, but a request that is not safe to
//!   replay (a message, an upload) is re-sent only when it certainly never reached the server
//!   or the server refused it before doing any work.
//! - What HTTP/2 proves was not processed is sent again, POSTs included (a streamed body is
//!   rebuilt by its factory): a request above a GOAWAY's last stream id at once, up to 10
//!   times outside the retry budget (connections rotate; each resend goes to one that is not
//!   closing); one refused with `REFUSED_STREAM`, or handed back unsent by hyper because a
//!   fresh connection closed first, with backoff within the budget. What counts as proof is
//!   in `connections.rs` (`refusal_of`).
//! - Requests go out through the connection pool of `connections.rs`: several HTTP/2
//!   connections per origin, each under a cap of requests in flight.
//! - Each attempt runs in a `tracing` span `nemo.request` with method, path, attempt and status;
//!   bodies and tokens are never logged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE,
    USER_AGENT,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::Instrument;
use url::Url;

use crate::auth::{Chosen, Identity, Invalidated, SecretToken, TokenEndpoint};
use crate::config::{Config, RetryConfig};
use crate::connections::{
    refusal_in, refusal_of, Connections, Lane, Refusal, Refused, MAX_RESENDS_AFTER_GOAWAY,
};
use crate::error::{ApiInfo, ConnectFailure, Error, Result, RetryPolicy, TimeoutKind};

/// Produces a fresh streaming body for each attempt (a body can be sent only once).
pub(crate) type BodyFactory = Arc<dyn Fn() -> Result<StreamBody> + Send + Sync>;

/// A streamed request body with its headers.
pub(crate) struct StreamBody {
    pub(crate) body: reqwest::Body,
    pub(crate) content_type: String,
    pub(crate) content_length: u64,
}

/// A request body.
#[derive(Clone)]
pub(crate) enum Body {
    Empty,
    Json(Bytes),
    Stream(BodyFactory),
}

/// Whether a request may be sent again after it may have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Reads and idempotent calls: retry transient failures.
    Safe,
    /// Calls that do work or charge credits: re-send only when the request certainly did not
    /// reach the server, or the server refused it before doing anything (1001, 429).
    OnlyIfNotReceived,
}

/// Where a request goes.
#[derive(Clone)]
enum Target {
    /// An API path made of segments, each percent-encoded onto the base URL.
    Api(Vec<String>),
    /// An absolute URL (a render output). It gets the token and the attribution headers only
    /// when it is on the API's own origin.
    Url(Url),
}

/// One API call, described by a resource module.
#[derive(Clone)]
pub(crate) struct Request {
    method: Method,
    target: Target,
    body: Body,
    replay: Replay,
    authenticated: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Option<Duration>,
    use_default_timeout: bool,
    /// Per-attempt limit on waiting for the response head, for requests without an overall
    /// limit (streams, downloads), and the error kind it produces.
    head_timeout: Option<(Duration, TimeoutKind)>,
    /// Whether a 429 is waited out and replayed here. Off for the anonymous-token call, whose
    /// one wait belongs to the identity layer (which also re-reads the credential store).
    rate_limit_replay: bool,
    /// Whether an attempt that got no answer in time is retried. Off for the anonymous-token
    /// call: its answer may still be on the way, and a second request would be refused.
    retry_silence: bool,
    expected: &'static str,
    session_id: Option<String>,
}

impl Request {
    /// A request to the API path made of `segments`, each percent-encoded.
    pub(crate) fn new<S: AsRef<str>>(method: Method, segments: &[S]) -> Request {
        let replay = if method == Method::GET || method == Method::HEAD {
            Replay::Safe
        } else {
            Replay::OnlyIfNotReceived
        };
        Request {
            method,
            target: Target::Api(segments.iter().map(|s| s.as_ref().to_string()).collect()),
            body: Body::Empty,
            replay,
            authenticated: true,
            headers: Vec::new(),
            timeout: None,
            use_default_timeout: true,
            head_timeout: None,
            rate_limit_replay: true,
            retry_silence: true,
            expected: "a response",
            session_id: None,
        }
    }

    pub(crate) fn get<S: AsRef<str>>(segments: &[S]) -> Request {
        Request::new(Method::GET, segments)
    }

    pub(crate) fn post<S: AsRef<str>>(segments: &[S]) -> Request {
        Request::new(Method::POST, segments)
    }

    /// A GET of an absolute URL, with no overall limit (the body may be large).
    pub(crate) fn get_url(url: Url) -> Request {
        let mut request = Request::new::<&str>(Method::GET, &[]);
        request.target = Target::Url(url);
        request.timeout(None)
    }

    /// A JSON body.
    pub(crate) fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Request> {
        let bytes = serde_json::to_vec(body).map_err(|err| {
            Error::invalid_input(format!("could not encode the request body: {err}"))
        })?;
        self.body = Body::Json(Bytes::from(bytes));
        Ok(self)
    }

    /// A streamed body, rebuilt for each attempt.
    pub(crate) fn stream_body(mut self, factory: BodyFactory) -> Request {
        self.body = Body::Stream(factory);
        self
    }

    /// Safe to send again even if it may have reached the service (the caller chose an
    /// idempotency key, such as a render id): transient failures are retried like a read's.
    pub(crate) fn idempotent(mut self) -> Request {
        self.replay = Replay::Safe;
        self
    }

    pub(crate) fn unauthenticated(mut self) -> Request {
        self.authenticated = false;
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Request {
        self.headers.push((name, value));
        self
    }

    /// Per-attempt time limit; `None` for no limit (streams, large transfers).
    pub(crate) fn timeout(mut self, timeout: Option<Duration>) -> Request {
        self.timeout = timeout;
        self.use_default_timeout = false;
        self
    }

    /// Longest wait for the response head, for a request with no overall limit (a stream or
    /// a download); running out fails with `Error::Timeout { kind, .. }`.
    pub(crate) fn head_timeout(mut self, timeout: Duration, kind: TimeoutKind) -> Request {
        self.head_timeout = Some((timeout, kind));
        self
    }

    /// What the response's data is, for decode error messages ("a session").
    pub(crate) fn expect(mut self, what: &'static str) -> Request {
        self.expected = what;
        self
    }

    /// The session this request concerns, for 1002 messages.
    pub(crate) fn session(mut self, session_id: &str) -> Request {
        self.session_id = Some(session_id.to_string());
        self
    }
}

/// A response read whole (JSON calls and errors).
pub(crate) struct ReadResponse {
    pub(crate) status: StatusCode,
    pub(crate) request_id: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

impl ReadResponse {
    pub(crate) fn decode<T: DeserializeOwned>(&self, expected: &'static str) -> Result<T> {
        decode_envelope(
            self.status,
            self.request_id.clone(),
            &self.body,
            expected,
            self.retry_after,
        )
    }

    /// The error this response stands for (it was not the success the caller wanted).
    pub(crate) fn into_error(self, expected: &'static str) -> Error {
        match self.decode::<serde::de::IgnoredAny>(expected) {
            Err(err) => err,
            Ok(_) => Error::Decode {
                expected,
                detail: "the service answered with something else".to_string(),
                info: Box::new(ApiInfo {
                    http_status: Some(self.status.as_u16()),
                    request_id: self.request_id,
                    ..ApiInfo::default()
                }),
            },
        }
    }
}

/// A successful response whose body has not been read (streams and downloads).
pub(crate) struct RawResponse {
    pub(crate) response: reqwest::Response,
}

/// Sends requests. Owned by the client; shared by its clones.
pub(crate) struct Transport {
    settings: Arc<Settings>,
    identity: Identity,
    /// Makes the anonymous-token requests: a transport of its own (with an identity that is
    /// never asked for a token), shared, so the identity layer can run a token request in a
    /// task that outlives the call that needed it. `None` in that transport itself.
    token_endpoint: Option<Arc<dyn TokenEndpoint>>,
}

/// What every identity's transport shares: the connection pool and the settings. A server
/// with a client per end user holds one of these.
pub(crate) struct Settings {
    connections: Connections,
    base_url: Url,
    web_url: Url,
    static_headers: HeaderMap,
    retry: RetryConfig,
    request_timeout: Duration,
    /// The connect timeout of `http`, when this crate built it (for messages).
    connect_timeout: Option<Duration>,
    max_response_bytes: usize,
}

impl std::ops::Deref for Transport {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// The envelope fields the transport understands; `data` stays raw for the caller's type.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    code: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    detail: Option<&'a RawValue>,
    #[serde(default, borrow)]
    status: Option<&'a RawValue>,
}

const REQUEST_ID_HEADERS: &[&str] = &[
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "x-trace-id",
];

impl Transport {
    /// `connect_timeout` is the limit the clients were built with, or `None` for a caller's
    /// client whose limit is unknown; it only goes into error messages.
    pub(crate) fn new(
        connections: Connections,
        config: &Config,
        identity: Identity,
        connect_timeout: Option<Duration>,
    ) -> Result<Transport> {
        let mut static_headers = HeaderMap::new();
        let header = |name: &str, value: &str| -> Result<(HeaderName, HeaderValue)> {
            let value = HeaderValue::from_str(value).map_err(|_| {
                Error::config(format!("the {name} value {value:?} cannot be sent as an HTTP header; use printable ASCII"))
            })?;
            Ok((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| Error::config("bad header name"))?,
                value,
            ))
        };
        for (name, value) in [
            ("x-skill-source", config.skill_source.as_str()),
            ("x-skill-version", config.skill_version.as_str()),
            ("x-skill-platform", config.skill_platform.as_str()),
        ] {
            let (name, value) = header(name, value)?;
            static_headers.insert(name, value);
        }
        let (_, agent) = header("user-agent", &config.user_agent)?;
        static_headers.insert(USER_AGENT, agent);
        if let Some(token) = identity.static_token() {
            bearer_header(token)?;
        }
        let settings = Arc::new(Settings {
            connections,
            base_url: config.base_url.clone(),
            web_url: config.web_url.clone(),
            static_headers,
            retry: config.retry.clone(),
            request_timeout: config.request_timeout,
            connect_timeout,
            max_response_bytes: config.max_response_bytes,
        });
        let token_endpoint: Arc<dyn TokenEndpoint> = Arc::new(Transport {
            settings: Arc::clone(&settings),
            identity: Identity::detached(),
            token_endpoint: None,
        });
        Ok(Transport {
            settings,
            identity,
            token_endpoint: Some(token_endpoint),
        })
    }

    /// A transport for another identity over the same connection pool and settings.
    pub(crate) fn with_identity(&self, identity: Identity) -> Transport {
        Transport {
            settings: Arc::clone(&self.settings),
            identity,
            token_endpoint: self.token_endpoint.clone(),
        }
    }

    /// The per-attempt time limit for ordinary requests; also the longest silence allowed
    /// between two chunks of a download.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn web_url(&self) -> &Url {
        &self.web_url
    }

    /// The full URL of an API path.
    pub(crate) fn url_for<S: AsRef<str>>(&self, segments: &[S]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments.iter().map(AsRef::as_ref));
        }
        url
    }

    /// Sends `request` and decodes the envelope's data as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        self.call_unless_status(request, None)
            .await
            .and_then(|value| {
                value.ok_or_else(|| Error::invalid_input("no response body was expected"))
            })
    }

    /// Like [`call`](Self::call), but an answer with HTTP status `done` is a success with no
    /// value (`Ok(None)`): for example 409 "already exists" when re-submitting a render id.
    pub(crate) async fn call_unless_status<T: DeserializeOwned>(
        &self,
        request: Request,
        done: Option<StatusCode>,
    ) -> Result<Option<T>> {
        let expected = request.expected;
        let session_id = request.session_id.as_deref();
        let idle = self
            .attempt_timeout(&request)
            .unwrap_or(self.request_timeout);
        self.with_retries(&request, |response| async move {
            if done == Some(response.status()) {
                return Ok(None);
            }
            self.read_body(response, idle)
                .await?
                .decode::<T>(expected)
                .map(Some)
                .map_err(|err| self.enrich(err, session_id))
        })
        .await
        .map_err(|err| self.enrich(err, request.session_id.as_deref()))
    }

    /// Sends `request` and returns the successful response unread, for streaming bodies.
    /// Errors (HTTP status, or a JSON error envelope where a stream was expected) are decoded
    /// as [`call`](Self::call) would.
    pub(crate) async fn open(
        &self,
        request: Request,
        content_type_prefix: &'static str,
    ) -> Result<RawResponse> {
        let expected = request.expected;
        let session_id = request.session_id.as_deref();
        // The body of an error answer is read under the same silence limit as the head: a
        // server that sends a head and then nothing must not hang the caller.
        let idle = request
            .head_timeout
            .map(|(limit, _)| limit)
            .or(self.attempt_timeout(&request))
            .unwrap_or(self.request_timeout);
        self.with_retries(&request, |response| async move {
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if status.is_success() && content_type.starts_with(content_type_prefix) {
                return Ok(RawResponse { response });
            }
            // An error, or a JSON envelope (e.g. 2001 with HTTP 200) where a stream was expected.
            let read = self.read_body(response, idle).await?;
            match read.decode::<serde::de::IgnoredAny>(expected) {
                Err(err) => Err(self.enrich(err, session_id)),
                Ok(_) => Err(Error::Decode {
                    expected,
                    detail: format!("the response had content type {content_type:?}, not {content_type_prefix:?}"),
                    info: Box::new(ApiInfo { http_status: Some(read.status.as_u16()), request_id: read.request_id, ..ApiInfo::default() }),
                }),
            }
        })
        .await
    }

    /// GET an absolute URL (a render output) unread, through the same retry loop as every
    /// other read: backoff for transient failures (honouring the server's wait), one wait and
    /// replay for 429, and, on the API's own origin, one new token and replay for 1001/401.
    /// The token and the attribution headers go only to the API's own origin; reqwest strips
    /// `Authorization` on cross-host redirects. Waiting for the response head is limited by
    /// the request timeout; the body has no overall limit (the caller limits each silence).
    pub(crate) async fn open_url(&self, url: &Url) -> Result<RawResponse> {
        let request = Request::get_url(url.clone())
            .head_timeout(self.request_timeout, TimeoutKind::Request)
            .expect("a file");
        self.with_retries(&request, |response| async move {
            if response.status().is_success() {
                Ok(RawResponse { response })
            } else {
                // An error head followed by silence is cut by the same limit as the head.
                let read = self.read_body(response, self.request_timeout).await?;
                Err(read.into_error("a file"))
            }
        })
        .await
    }

    /// The retry loop shared by every call. `handle` turns a response into the result.
    ///
    /// Boxed, because inline its future (an attempt's token, send and body read, the backoff
    /// timer: about 1.5 KiB) made every caller's future that much larger, and a server holds
    /// one for each user with a call in flight, for the whole call: `run_turn` kept the space
    /// for its state read for the whole stream. One allocation per request costs less.
    async fn with_retries<T, F, Fut>(&self, request: &Request, handle: F) -> Result<T>
    where
        F: Fn(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        Box::pin(self.retry_loop(request, handle)).await
    }

    async fn retry_loop<T, F, Fut>(&self, request: &Request, handle: F) -> Result<T>
    where
        F: Fn(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let url = match &request.target {
            Target::Api(segments) => {
                // `.` and `..` would be normalised away by URL parsing and hit another endpoint.
                if let Some(bad) = segments
                    .iter()
                    .find(|s| s.is_empty() || s.as_str() == "." || s.as_str() == "..")
                {
                    return Err(Error::invalid_input(format!(
                        "{bad:?} is not a valid id; pass the id the service returned"
                    )));
                }
                self.url_for(segments)
            }
            Target::Url(url) => url.clone(),
        };
        let own_origin = url.origin() == self.base_url.origin();
        let authenticated = request.authenticated && own_origin;
        let mut attempt: u32 = 0;
        let mut backoff_retries: u32 = 0;
        let mut refreshed = false;
        let mut waited = false;
        let mut resent_after_goaway: u32 = 0;
        loop {
            attempt += 1;
            let span = tracing::info_span!(
                "nemo.request",
                method = %request.method,
                path = url.path(),
                attempt,
                status = tracing::field::Empty,
            );
            let mut chosen: Option<Chosen> = None;
            let outcome = async {
                let token = if authenticated {
                    // A token that cannot be had ends the call here: the identity layer has
                    // already applied its own policy (one shared fetch, one 429 wait), and
                    // retrying around it would multiply its requests.
                    let endpoint = self.token_endpoint.as_ref().ok_or_else(|| {
                        Attempt::NoToken(Error::config(
                            "internal: this transport cannot request tokens",
                        ))
                    })?;
                    let choice = self
                        .identity
                        .token(endpoint)
                        .await
                        .map_err(Attempt::NoToken)?;
                    let token = choice.token.clone();
                    chosen = Some(choice);
                    Some(token)
                } else {
                    None
                };
                let response = self
                    .send_once(request, &url, own_origin, token.as_ref())
                    .await
                    .map_err(Attempt::Failed)?;
                tracing::Span::current().record("status", response.status().as_u16());
                handle(response).await.map_err(Attempt::Failed)
            }
            .instrument(span)
            .await;
            let err = match outcome {
                Ok(value) => {
                    if let Some(chosen) = chosen.filter(|c| c.after_refusal.is_some()) {
                        // Used again after the service refused a new one, and accepted.
                        self.identity.accepted(&chosen.token);
                    }
                    return Ok(value);
                }
                Err(Attempt::NoToken(err)) => return Err(err),
                Err(Attempt::Failed(err)) => err,
            };
            let refusal = refusal_in(&err);
            if refusal == Some(Refusal::GoAway) && resent_after_goaway < MAX_RESENDS_AFTER_GOAWAY {
                // A connection going away says nothing about the service's health, and a
                // burst can be turned away more than once while connections rotate (every
                // 100 requests on nginx with `keepalive_requests 100`): sent again at once,
                // outside the retry budget, on a connection that is not closing.
                resent_after_goaway += 1;
                tracing::info!(path = url.path(), error = %err, "not processed: the connection went away; sending again");
                continue;
            }
            let replayable = request.replay == Replay::Safe
                || err.never_reached_server()
                || err.rejected_before_processing();
            let token_used = chosen.as_ref().map(|c| c.token.clone());
            match err.retry_policy() {
                RetryPolicy::RefreshToken if authenticated => {
                    if let Some(refusal) = chosen.and_then(|c| c.after_refusal) {
                        // The service refused a new token and now rejects this one too:
                        // nothing it accepts is left for this client id.
                        return Err(Error::TokenQuotaExceeded {
                            client_id: self.identity.known_client_id().unwrap_or_default(),
                            info: refusal,
                        });
                    }
                    let Some(token) = token_used.filter(|_| !refreshed) else {
                        return Err(err);
                    };
                    match self.identity.invalidate(&token) {
                        Invalidated::Refreshable => {
                            tracing::info!(
                                path = url.path(),
                                "token rejected; fetching a new one and replaying once"
                            );
                            refreshed = true;
                        }
                        Invalidated::Fixed => return Err(fixed_token_error(err)),
                    }
                }
                RetryPolicy::WaitThenRetryOnce(wait)
                    if !waited && replayable && request.rate_limit_replay =>
                {
                    if wait > self.retry.max_server_wait {
                        return Err(err);
                    }
                    tracing::info!(
                        path = url.path(),
                        wait_ms = wait.as_millis() as u64,
                        "rate limited; waiting then retrying once"
                    );
                    waited = true;
                    tokio::time::sleep(wait).await;
                }
                RetryPolicy::Backoff
                    if backoff_retries < self.retry.max_retries
                        && replayable
                        && (request.retry_silence || !matches!(err, Error::Timeout { .. })) =>
                {
                    backoff_retries += 1;
                    // A stream refused with REFUSED_STREAM (a server shedding load), or a
                    // fresh connection that closed before the request went out (hyper-util
                    // resends those itself on a reused one), waits like any transient failure.
                    let delay = err
                        .info()
                        .and_then(|info| info.retry_after)
                        .unwrap_or_else(|| self.retry.delay_for(backoff_retries - 1))
                        .min(self.retry.max_server_wait);
                    tracing::info!(path = url.path(), delay_ms = delay.as_millis() as u64, error = %err, "transient failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(unconfirmed_if_work(request, &url, err)),
            }
        }
    }

    async fn send_once(
        &self,
        request: &Request,
        url: &Url,
        own_origin: bool,
        token: Option<&SecretToken>,
    ) -> Result<reqwest::Response> {
        let mut http_request = reqwest::Request::new(request.method.clone(), url.clone());
        let headers = http_request.headers_mut();
        // One map, sized once, filled in place: a copy of the shared headers merged into the
        // request's map cost allocations and copying on every request.
        headers.reserve(self.static_headers.len() + request.headers.len() + 4);
        if own_origin {
            for (name, value) in &self.static_headers {
                headers.insert(name.clone(), value.clone());
            }
        } else if let Some(agent) = self.static_headers.get(USER_AGENT) {
            // Another host (a CDN) gets no token and no attribution headers.
            headers.insert(USER_AGENT, agent.clone());
        }
        if let Some(token) = token {
            headers.insert(AUTHORIZATION, bearer_header(token)?);
        }
        for (name, value) in &request.headers {
            headers.append(name.clone(), value.clone());
        }
        match &request.body {
            Body::Empty => {}
            Body::Json(bytes) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *http_request.body_mut() = Some(bytes.clone().into());
            }
            Body::Stream(factory) => {
                let body = factory()?;
                let content_type = HeaderValue::try_from(body.content_type).map_err(|_| {
                    Error::config(
                        "could not build the request: its content type is not a valid header value",
                    )
                })?;
                headers.insert(CONTENT_TYPE, content_type);
                headers.insert(CONTENT_LENGTH, HeaderValue::from(body.content_length));
                *http_request.body_mut() = Some(body.body);
            }
        }
        let headers = http_request.headers_mut();
        if matches!(request.target, Target::Api(_)) && !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        let timeout = self.attempt_timeout(request);
        *http_request.timeout_mut() = timeout;
        // Requests with a head limit and no overall one are the long reads (the message stream,
        // downloads).
        let lane = if request.head_timeout.is_some() {
            Lane::Streams
        } else {
            Lane::Calls
        };
        let (http, mut lease) = self.connections.checkout(url, lane).await?;
        let sent = http.execute(http_request);
        let response = match request.head_timeout {
            Some((limit, kind)) => tokio::time::timeout(limit, sent)
                .await
                .map_err(|_| Error::Timeout { kind, after: limit })?,
            None => sent.await,
        };
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                let err = self.map_send_error(err, url, timeout);
                if refusal_in(&err).is_none() {
                    lease.failed();
                }
                return Err(err);
            }
        };
        lease.observe(response.version());
        // The request keeps its place on the connection until its body is done: a stream
        // counts against the connection's stream limit for its whole life.
        Ok(lease.hold_until_body_ends(response))
    }

    /// The limit on one attempt of `request` (response and body), if it has one.
    fn attempt_timeout(&self, request: &Request) -> Option<Duration> {
        if request.use_default_timeout {
            Some(self.request_timeout)
        } else {
            request.timeout
        }
    }

    /// [`map_reqwest`](Self::map_reqwest) for a failure before any response head, where HTTP/2
    /// can prove the request was never processed (see [`refusal_of`]).
    fn map_send_error(&self, err: reqwest::Error, url: &Url, timeout: Option<Duration>) -> Error {
        if !err.is_connect() && !err.is_timeout() {
            if let Some(refusal) = refusal_of(&err) {
                return Error::Network {
                    may_have_reached_server: false,
                    source: Box::new(Refused::new(refusal, err.without_url())),
                };
            }
        }
        self.map_reqwest(err, url, timeout)
    }

    /// Turns a reqwest failure into an error that names its cause. `timeout` is the attempt's
    /// limit, which is what ran out when reqwest reports a timeout after connecting.
    fn map_reqwest(&self, err: reqwest::Error, url: &Url, timeout: Option<Duration>) -> Error {
        if err.is_connect() {
            let failure = connect_failure(&err, url, self.connect_timeout);
            return Error::Connect {
                host: url.host_str().unwrap_or("the service").to_string(),
                port: url.port_or_known_default(),
                failure,
                source: Box::new(err.without_url()),
            };
        }
        let err = err.without_url();
        if err.is_timeout() {
            return Error::Timeout {
                kind: TimeoutKind::Request,
                after: timeout.unwrap_or(self.request_timeout),
            };
        }
        if err.is_builder() {
            return Error::config(format!("could not build the request: {err}"));
        }
        Error::Network {
            may_have_reached_server: true,
            source: Box::new(err),
        }
    }

    /// Reads a (JSON) body, refusing more than the configured cap; a silence longer than
    /// `idle` between two chunks ends it with a timeout (a request without an overall limit,
    /// such as a stream or a download, must still not hang on an error body).
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        idle: Duration,
    ) -> Result<ReadResponse> {
        let status = response.status();
        let request_id = request_id_of(response.headers());
        let retry_after = retry_after(response.headers());
        let limit = self.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(Error::ResponseTooLarge { limit });
        }
        let mut body = Vec::with_capacity(
            response
                .content_length()
                .map_or(8 * 1024, |len| len as usize),
        );
        loop {
            let next = tokio::time::timeout(idle, response.chunk())
                .await
                .map_err(|_| Error::Timeout {
                    kind: TimeoutKind::Request,
                    after: idle,
                })?;
            match next {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(Error::ResponseTooLarge { limit });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // After the head: whatever broke, the request was received. (The URL only
                // matters for connect errors, which cannot happen here.)
                Err(err) => return Err(self.map_reqwest(err, &self.base_url, Some(idle))),
            }
        }
        // Let the connection go back to the pool before the caller's next request: hyper-util
        // returns it from a task of its own, and a request that asks the pool before that task
        // has run opens a new connection (which then stays in the pool). With many users on a
        // busy runtime this happened often: 1,000 users starting their turns at once held
        // 1.5–1.6 connections each instead of 1.4 (examples/server_scale.rs --ramp-ms 0).
        tokio::task::yield_now().await;
        Ok(ReadResponse {
            status,
            request_id,
            retry_after,
            body,
        })
    }

    /// Adds context the decoder cannot know: the session id for 1002, the registration
    /// link for 2001.
    fn enrich(&self, err: Error, session: Option<&str>) -> Error {
        match err {
            Error::SessionNotFound {
                session_id: None,
                info,
            } => Error::SessionNotFound {
                session_id: session.map(str::to_string),
                info,
            },
            Error::NoCredits {
                register_url: None,
                info,
            } => {
                let register_url = self
                    .identity
                    .known_anonymous_user_id()
                    .map(|user| self.register_url_for(&user));
                Error::NoCredits { register_url, info }
            }
            other => other,
        }
    }

    pub(crate) fn register_url_for(&self, user_id: &str) -> String {
        let mut url = self.web_url.clone();
        url.set_path("/register");
        url.query_pairs_mut().clear().append_pair("bind", user_id);
        url.to_string()
    }

    pub(crate) fn registration_url(&self) -> Option<String> {
        self.identity
            .known_anonymous_user_id()
            .map(|user| self.register_url_for(&user))
    }
}

/// How one attempt failed.
enum Attempt {
    /// No token could be had: the identity layer's final answer.
    NoToken(Error),
    /// The request failed: the retry policy decides.
    Failed(Error),
}

impl TokenEndpoint for Transport {
    /// `POST /api/auth/anonymous-token` with `X-Client-Id`, no token, no body. Failures that
    /// prove no token was issued (no connection, an error answer) are retried with backoff
    /// like a read; no answer within twice the request timeout
    /// ([`TOKEN_ANSWER_FACTOR`](crate::auth::TOKEN_ANSWER_FACTOR)) is not (the answer might still come, and a second request would be refused). A 429
    /// is returned as it is (the identity layer waits once, re-reads the store, replays
    /// once); a 400 is [`Error::MissingClientId`] only when its text names the client id
    /// (a proxy's plain "Bad Request" is not about it).
    fn request_token<'a>(
        &'a self,
        client_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value>> + Send + 'a>>
    {
        Box::pin(async move {
            let value = HeaderValue::from_str(client_id)
                .map_err(|_| Error::config("the client id cannot be sent as a header"))?;
            let mut request = Request::post(&["api", "auth", "anonymous-token"])
                .unauthenticated()
                .header(HeaderName::from_static("x-client-id"), value)
                .timeout(None)
                .head_timeout(
                    self.request_timeout
                        .saturating_mul(crate::auth::TOKEN_ANSWER_FACTOR),
                    TimeoutKind::Request,
                )
                .expect("an anonymous token");
            request.rate_limit_replay = false;
            request.retry_silence = false;
            // Asking again after an answer or a lost connection cannot charge anything: at
            // worst the service answers 429 because the first request did issue a token,
            // which the identity layer handles.
            request.replay = Replay::Safe;
            self.call(request).await
        })
    }
}

/// The final error of a request that does work (not safe to replay) and may have been
/// processed by the service is [`Error::Unconfirmed`], whose policy is "reconcile": the
/// timeout, lost connection or 5xx alone would say "retry", and a caller following that
/// advice would repeat the work and pay twice.
fn unconfirmed_if_work(request: &Request, url: &Url, err: Error) -> Error {
    let may_have_been_processed = match &err {
        Error::Timeout { .. } => true,
        Error::Network {
            may_have_reached_server,
            ..
        } => *may_have_reached_server,
        Error::Http { status, .. } => (500..=599).contains(status),
        // A success status whose body could not be read: the work was done.
        Error::Decode { info, .. } => info.http_status.is_some_and(|s| (200..300).contains(&s)),
        Error::ResponseTooLarge { .. } => true,
        _ => false,
    };
    if request.replay == Replay::Safe || !may_have_been_processed {
        return err;
    }
    Error::Unconfirmed {
        request: format!("{} {}", request.method, url.path()),
        cause: Box::new(err),
    }
}

fn fixed_token_error(err: Error) -> Error {
    match err {
        Error::Unauthorized { info, .. } => Error::Unauthorized {
            hint: "the fixed token (NEMO_TOKEN or NemoClientBuilder::token) is invalid or expired: set a fresh one, or unset it to use an anonymous token",
            info,
        },
        other => other,
    }
}

fn bearer_header(token: &SecretToken) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        Error::config(
            "the token contains characters that cannot be sent in a header; check NEMO_TOKEN",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn request_id_of(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(128).collect())
}

/// Why reqwest could not connect. reqwest and hyper-util expose no kinds for this, so it is
/// read from the error chain: an I/O error kind (refused, timed out), hyper-util's connector
/// stage ("dns error", "tcp connect error", ...), and for `https` a failure after the TCP
/// stage, which is the TLS handshake. `suite/tests/transport.rs` pins each case on loopback.
fn connect_failure(
    err: &reqwest::Error,
    url: &Url,
    connect_timeout: Option<Duration>,
) -> ConnectFailure {
    if err.is_timeout() {
        return ConnectFailure::TimedOut {
            after: connect_timeout,
        };
    }
    let mut name_lookup = false;
    let mut tcp_stage = false;
    let mut proxy = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectFailure::Refused,
                std::io::ErrorKind::TimedOut => {
                    return ConnectFailure::TimedOut {
                        after: connect_timeout,
                    }
                }
                // The peer hung up mid-handshake: a network or load problem, not TLS settings.
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof => return ConnectFailure::Other,
                _ => {}
            }
        }
        let text = current.to_string().to_ascii_lowercase();
        name_lookup |= text == "dns error" || text.starts_with("failed to lookup address");
        tcp_stage |= text.starts_with("tcp ");
        proxy |= text.contains("proxy") || text.contains("tunnel");
        cause = current.source();
    }
    if name_lookup {
        ConnectFailure::NameLookup
    } else if url.scheme() == "https" && !tcp_stage && !proxy {
        ConnectFailure::Tls
    } else {
        ConnectFailure::Other
    }
}

/// Text of a JSON string or other JSON value, trimmed for messages.
fn text_of(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    let text = match serde_json::from_str::<String>(raw.get()) {
        Ok(text) => text,
        Err(_) if raw.get() == "null" => return None,
        Err(_) => raw.get().to_string(),
    };
    Some(clip(&text))
}

fn clip(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 300 {
        let mut clipped: String = text.chars().take(300).collect();
        clipped.push('…');
        clipped
    } else {
        text.to_string()
    }
}

fn code_of(raw: Option<&RawValue>) -> Option<i64> {
    let raw = raw?.get().trim();
    let raw = raw.trim_matches('"');
    raw.parse::<i64>().ok().or_else(|| {
        raw.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64)
    })
}

/// Maps an HTTP status plus what the body said to an error. A non-zero body code wins; some
/// services echo an HTTP status (401, 402, 429, 400) as the body code, which maps the same way.
pub(crate) fn error_for(
    status: StatusCode,
    code: Option<i64>,
    info: ApiInfo,
    retry_after: Option<Duration>,
) -> Error {
    let info = Box::new(info);
    // A body code that merely echoes a failing HTTP status (`503` with `{"code":503}`) says
    // nothing more than the status, so the status decides: otherwise a transient 5xx would
    // become an unknown code that is never retried.
    let echoes_status = |code: i64| !status.is_success() && code == i64::from(status.as_u16());
    let code = code.filter(|code| *code != 0 && !echoes_status(*code));
    match code {
        Some(1001) => return unauthorized(info),
        Some(1002) => {
            return Error::SessionNotFound {
                session_id: None,
                info,
            }
        }
        Some(2001) => {
            return Error::NoCredits {
                register_url: None,
                info,
            }
        }
        Some(4001) => {
            return Error::UnsupportedFile {
                file: None,
                extension: None,
                info: Some(info),
            }
        }
        Some(4002) => {
            return Error::FileTooLarge {
                file: None,
                size: None,
                limit: None,
                info: Some(info),
            }
        }
        _ => {}
    }
    let signal = code.unwrap_or(i64::from(status.as_u16()));
    match signal {
        401 => unauthorized(info),
        402 => Error::ExportBlocked { info },
        429 => Error::RateLimited { retry_after, info },
        400 if looks_like_missing_client_id(&info) => Error::MissingClientId { info },
        _ => match code {
            Some(code) => Error::Api { code, info },
            None => Error::Http {
                status: status.as_u16(),
                info,
            },
        },
    }
}

fn unauthorized(info: Box<ApiInfo>) -> Error {
    Error::Unauthorized {
        hint: "a new token is fetched automatically; if this persists, check the token",
        info,
    }
}

fn looks_like_missing_client_id(info: &ApiInfo) -> bool {
    info.message.as_deref().is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("client-id") || m.contains("client id") || m.contains("client_id")
    })
}

/// Decodes any of the service's envelopes. Success gives `data` (or the whole body when it
/// has no envelope) decoded as `T`.
pub(crate) fn decode_envelope<T: DeserializeOwned>(
    status: StatusCode,
    request_id: Option<String>,
    body: &[u8],
    expected: &'static str,
    retry_after: Option<Duration>,
) -> Result<T> {
    let mut info = ApiInfo {
        http_status: Some(status.as_u16()),
        request_id,
        retry_after,
        ..ApiInfo::default()
    };
    let envelope = match serde_json::from_slice::<Envelope<'_>>(body) {
        Ok(envelope) => envelope,
        Err(parse_err) => {
            // Not a JSON object: a proxy page, plain text, or garbage.
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
                info.message = Some(clip(&text)).filter(|t| !t.is_empty());
                return Err(error_for(status, None, info, retry_after));
            }
            // A bare JSON value that is not an object may still be what the caller wants.
            return serde_json::from_slice::<T>(body).map_err(|_| Error::Decode {
                expected,
                detail: format!("the body is not JSON ({parse_err})"),
                info: Box::new(info),
            });
        }
    };
    let code = code_of(envelope.code);
    info.code = code.filter(|c| *c != 0);
    info.message = text_of(envelope.message)
        .or_else(|| text_of(envelope.msg))
        .or_else(|| text_of(envelope.error))
        .or_else(|| text_of(envelope.detail));
    if info.code.is_some() {
        return Err(error_for(status, code, info, retry_after));
    }
    if !status.is_success() {
        return Err(error_for(status, None, info, retry_after));
    }
    // A bare `{"error": ...}` is an error envelope, but not when the body also has its own
    // `status`: that is a resource describing itself (a render poll answers
    // `{"status":"failed","error":"..."}`), and the resource module decides what it means.
    if envelope.success == Some(false)
        || (envelope.error.is_some()
            && envelope.data.is_none()
            && envelope.success.is_none()
            && envelope.code.is_none()
            && envelope.status.is_none()
            && is_error_value(envelope.error))
    {
        return Err(Error::Rejected {
            info: Box::new(info),
        });
    }
    let data: &[u8] = match envelope.data {
        Some(raw) if envelope.code.is_some() || envelope.success.is_some() => raw.get().as_bytes(),
        // `{"data": ...}` without a code is still an envelope: decoding the whole body instead
        // would fill a type with all-default fields (credits) with zeros. The whole body stays
        // the fallback, for a bare object that merely has a field named `data`.
        Some(raw) if raw.get() != "null" => match serde_json::from_str::<T>(raw.get()) {
            Ok(value) => return Ok(value),
            Err(_) => body,
        },
        _ => body,
    };
    serde_json::from_slice::<T>(data).map_err(|err| Error::Decode {
        expected,
        detail: err.to_string(),
        info: Box::new(info),
    })
}

fn is_error_value(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| !matches!(raw.get().trim(), "null" | "\"\"" | "false"))
}

/// Parses `retry-after-ms` (milliseconds) then `Retry-After` (seconds).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(seconds_saturating(ms / 1000.0));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(seconds_saturating)
}

/// A finite, non-negative number of seconds as a `Duration`. `Duration::from_secs_f64`
/// panics past `u64::MAX` seconds, and a header like `Retry-After: 1e300` must not crash the
/// client: such a wait is "longer than any cap", so it saturates.
fn seconds_saturating(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}
