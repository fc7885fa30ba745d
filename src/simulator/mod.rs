//! An in-process fake NemoVideo service on loopback, for offline examples and tests.
//!
//! Policy and defaults: the simulator binds `127.0.0.1` only, on three ephemeral ports — the
//! API origin ([`SimulatorHandle::base_url`]), a second origin standing in for the CDN that
//! serves render outputs ([`SimulatorHandle::cdn_base_url`]), and a third standing in for the
//! web site ([`SimulatorHandle::web_url`]), which serves the registration and claim-link pages
//! so that links built for simulator accounts never point at the real site. Give a client of
//! the simulator `.web_url(sim.web_url())`. It speaks the wire protocol
//! described in the SDK's API notes: `{"code":0,"data":..}` envelopes, `{"success":..}` render envelopes,
//! FastAPI-style `{"detail":..}` errors, and a real, paced `text/event-stream` on `/run_sse`
//! carrying Google-ADK-shaped events. State (tokens, credits, sessions, drafts, renders) lives
//! in memory and disappears with the simulator.
//!
//! Everything stops when the [`Simulator`] is dropped: listeners close and every connection
//! task is cancelled the next time the runtime runs. Use [`Simulator::shutdown`] to wait for
//! that to have happened.
//!
//! Work happens on the "server" whatever the client does: a `/run_sse` turn changes the draft
//! and charges its credits when the request is accepted, so a client whose stream breaks can
//! reconcile by reading session state, as the API notes require. One turn runs per session at
//! a time, as on the service: a `/run_sse` request while the session's stream is still open
//! is refused (HTTP 409, `{"detail": "the session already has a turn running; ..."}`) before
//! anything of it is accepted or charged.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use nemo_video::simulator::{Endpoint, Failure, Simulator};
//! use std::time::Duration;
//!
//! let sim = Simulator::builder()
//!     .render_time(Duration::from_millis(500))
//!     .start()
//!     .await?;
//! println!("API at {}, CDN at {}", sim.base_url(), sim.cdn_base_url());
//! // The next credits call fails like a proxy in trouble, then things recover.
//! sim.fail_next(Endpoint::Credits, 1, Failure::Status(503));
//! # Ok(())
//! # }
//! ```

mod agent;
mod body;
mod multipart;
mod server;
mod state;
mod web;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use state::Shared;

/// The MP4 served as every render's output: the sample scene with a solid blue box where the
/// walking "person" was (320x180, 5 s, H.264).
pub const SAMPLE_OUTPUT_MP4: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/sample_output.mp4"
));

/// A small input clip for demos: a 5 s, 320x180 H.264 scene with a "person" walking in frame.
pub const SAMPLE_INPUT_MP4: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/sample_input.mp4"
));

/// One API area of the simulated service, used to inject faults and count requests.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /api/auth/anonymous-token`.
    AnonymousToken,
    /// `POST /api/tasks/me/with-session/nemo_agent`.
    CreateSession,
    /// `POST /run_sse`.
    RunSse,
    /// `POST /api/upload-video/nemo_agent/me/<sid>`.
    Upload,
    /// `GET /api/credits/balance/simple`.
    Credits,
    /// `GET /api/state/nemo_agent/me/<sid>/latest`.
    State,
    /// `POST /api/render/proxy/lambda`.
    RenderSubmit,
    /// `GET /api/render/proxy/lambda/<id>`.
    RenderStatus,
    /// `POST /api/render/proxy/lambda/<id>/cancel`.
    RenderCancel,
    /// `GET /api/render/proxy/<id>/download`.
    RenderDownload,
    /// `POST /api/auth/claim-token`.
    ClaimToken,
    /// `GET /renders/<id>.mp4` on the CDN origin.
    CdnOutput,
}

/// How an injected failure answers a request (see [`SimulatorHandle::fail_next`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This HTTP status with a JSON error body in the endpoint's envelope:
    /// `{"code":<status>,"message":..}`, or `{"success":false,"error":..}` on render endpoints.
    Status(u16),
    /// A body code with the given HTTP status, e.g. `http: 200, code: 2001`:
    /// `{"code":<code>,"message":..}`.
    Code {
        /// The HTTP status line.
        http: u16,
        /// The `code` field of the JSON body.
        code: i64,
    },
    /// A non-JSON body, as a proxy in front of the service sends (e.g. a 502 page).
    PlainText {
        /// The HTTP status line.
        status: u16,
        /// The `text/plain` body.
        body: String,
    },
    /// A JSON error with a `Retry-After: <secs>` header (use 429 or 503).
    RetryAfter {
        /// The HTTP status line.
        status: u16,
        /// The `Retry-After` value, in seconds.
        secs: u64,
    },
    /// Accept the request, start a `200` JSON response, then drop the connection mid-body.
    CloseConnection,
}

/// The shape of `GET /api/render/proxy/lambda/<id>` answers (both are documented).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusShape {
    /// `{"success":true,"data":{"id","status","progress","outputUrl"?,"error"?}}` (default).
    #[default]
    SuccessData,
    /// `{"id","status","progress","output":{"url"}?,"error"?}` at the top level.
    TopLevel,
}

/// One request the simulator received, as recorded for tests.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `"POST"`.
    pub method: String,
    /// The request path as sent (still percent-encoded), without the query string.
    pub path: String,
    /// The endpoint the path maps to, if any.
    pub endpoint: Option<Endpoint>,
    /// All headers, names lowercased, in arrival order. An `Authorization` value is redacted
    /// to `"Bearer ***"` (or `"***"` for other schemes); its presence is kept.
    pub headers: Vec<(String, String)>,
    /// Whether the request carried an `Authorization` header.
    pub has_authorization: bool,
    /// How many body bytes the simulator read (uploads are counted, never stored).
    pub body_len: u64,
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Settings of a [`Simulator`]; every setter documents its default.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct SimulatorBuilder {
    pub(crate) config: state::Config,
}

impl Default for SimulatorBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatorBuilder {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        SimulatorBuilder {
            config: state::Config::default(),
        }
    }

    /// Delay between consecutive `/run_sse` events. Default: 150 ms.
    pub fn event_pacing(mut self, delay: Duration) -> Self {
        self.config.event_pacing = delay;
        self
    }

    /// Interval between heartbeats (`: ping` comments and empty `data:` lines, alternating)
    /// while a turn's tool "works". Default: 1 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// How long each tool call of an edit turn "works" (between its `functionCall` and its
    /// `functionResponse`), during which heartbeats are sent. Default: 2 s.
    pub fn work_duration(mut self, duration: Duration) -> Self {
        self.config.work_duration = duration;
        self
    }

    /// Render time from submit to `completed`: the status is `pending` for the first 15 %,
    /// then `processing` with progress rising with it, then `completed` (a render armed by
    /// [`SimulatorHandle::fail_next_render`] fails at 50 %). Renders work on Tokio's clock,
    /// so a paused test clock pauses them too. Default: 3 s.
    pub fn render_time(mut self, duration: Duration) -> Self {
        self.config.render_time = duration;
        self
    }

    /// Renders move only when [`SimulatorHandle::advance_renders`] moves them, never with
    /// time: a test sees `pending`, `processing` and `completed` exactly when it chooses,
    /// however slow the machine. Default: off (renders progress in real time).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use nemo_video::simulator::Simulator;
    /// use std::time::Duration;
    ///
    /// let sim = Simulator::builder()
    ///     .render_time(Duration::from_secs(4))
    ///     .manual_renders()
    ///     .start()
    ///     .await?;
    /// // ... submit a render: it stays `pending` until ...
    /// sim.advance_renders(Duration::from_secs(2)); // ... now `processing`, progress 50
    /// sim.advance_renders(Duration::from_secs(2)); // ... now `completed`
    /// # Ok(())
    /// # }
    /// ```
    pub fn manual_renders(mut self) -> Self {
        self.config.manual_renders = true;
        self
    }

    /// Credits granted to each new anonymous user. Default: 100.
    pub fn initial_credits(mut self, credits: u64) -> Self {
        self.config.initial_credits = credits;
        self
    }

    /// Credits charged per edit turn (a turn that changes the draft; chat and questions are
    /// free). A `/run_sse` request is refused with code 2001 (HTTP 200, JSON, before any
    /// stream) when the user has none or fewer than this available. Default: 5.
    pub fn credits_per_edit(mut self, credits: u64) -> Self {
        self.config.credits_per_edit = credits;
        self
    }

    /// Lifetime of issued anonymous tokens. Default: 7 days.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.token_lifetime = lifetime;
        self
    }

    /// How long after issuing a client id's anonymous token the simulator refuses another for
    /// the same client id (HTTP 429 with `Retry-After: 30`), valid or not, as the service does.
    /// Default: 7 days. [`SimulatorHandle::expire_tokens`] lifts it.
    pub fn token_quota_window(mut self, window: Duration) -> Self {
        self.config.token_quota_window = window;
        self
    }

    /// Every `n`th edit turn of a session carries no text at all, only tool calls and results
    /// (deterministic; `0` = never). Default: 3.
    pub fn text_less_every(mut self, n: usize) -> Self {
        self.config.text_less_every = n;
        self
    }

    /// Shape of render status answers. Default: [`StatusShape::SuccessData`].
    pub fn status_shape(mut self, shape: StatusShape) -> Self {
        self.config.status_shape = shape;
        self
    }

    /// Largest accepted uploaded file; bigger files get code 4002.
    /// Default: 500 MiB (524 288 000 bytes).
    pub fn max_upload_bytes(mut self, bytes: u64) -> Self {
        self.config.max_upload_bytes = bytes;
        self
    }

    /// Slows transfers down so a test can interrupt them midway: a render output (CDN or
    /// fallback download) is sent 1 KiB at a time with this pause after each KiB, and an
    /// upload body is read with this pause after each piece that arrives. Default: none
    /// (full speed).
    pub fn transfer_pace(mut self, pause: Duration) -> Self {
        self.config.transfer_pace = Some(pause);
        self
    }

    /// Short timings for tests: pacing 10 ms, heartbeats every 40 ms, work 100 ms, render
    /// 400 ms. Default: off (the timings above).
    pub fn fast(self) -> Self {
        self.event_pacing(Duration::from_millis(10))
            .heartbeat_interval(Duration::from_millis(40))
            .work_duration(Duration::from_millis(100))
            .render_time(Duration::from_millis(400))
    }

    /// Binds the three listeners on `127.0.0.1` (ephemeral ports) and starts serving on the
    /// current Tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let sim = nemo_video::simulator::Simulator::builder().fast().start().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> io::Result<Simulator> {
        let api = listen_on_loopback()?;
        let cdn = listen_on_loopback()?;
        let web = listen_on_loopback()?;
        let base_url = format!("http://{}", api.local_addr()?);
        let cdn_base_url = format!("http://{}", cdn.local_addr()?);
        let web_url = format!("http://{}", web.local_addr()?);
        let shared = Arc::new(Shared::new(self.config, base_url, cdn_base_url, web_url));
        let tasks = vec![
            tokio::spawn(server::serve(api, shared.clone(), server::Origin::Api)),
            tokio::spawn(server::serve(cdn, shared.clone(), server::Origin::Cdn)),
            tokio::spawn(web::serve(web, shared.clone())),
        ];
        tracing::debug!(base_url = %shared.base_url, cdn = %shared.cdn_base_url, "simulator started");
        Ok(Simulator {
            handle: SimulatorHandle { shared },
            tasks,
        })
    }
}

/// Connections the kernel queues for a listener before `accept` takes them. Tokio's
/// `TcpListener::bind` asks for 128, like the standard library, and a burst of connections (a
/// load test of a server with thousands of users) overflowed that: the kernel dropped SYNs and
/// those clients connected a second or more late. The kernel caps the value at
/// `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 8192;

/// A listener on `127.0.0.1`, on an ephemeral port, with a backlog for bursts.
fn listen_on_loopback() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(LISTEN_BACKLOG)
}

/// A running fake NemoVideo service. Stops when dropped.
///
/// Fault injection and observation live on [`SimulatorHandle`], which `Simulator` derefs to,
/// so `sim.fail_next(..)` works directly; [`Simulator::handle`] gives a cloneable copy.
pub struct Simulator {
    handle: SimulatorHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.handle.shared.base_url)
            .field("cdn_base_url", &self.handle.shared.cdn_base_url)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts a simulator with default settings (see [`SimulatorBuilder`]).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let sim = nemo_video::simulator::Simulator::start().await?;
    /// println!("{}", sim.base_url());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start() -> io::Result<Simulator> {
        SimulatorBuilder::new().start().await
    }

    /// A builder for non-default settings.
    pub fn builder() -> SimulatorBuilder {
        SimulatorBuilder::new()
    }

    /// A cloneable handle for fault injection and observation from other tasks.
    pub fn handle(&self) -> SimulatorHandle {
        self.handle.clone()
    }

    /// Stops serving and waits until every listener is closed and every connection task has
    /// ended.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let sim = nemo_video::simulator::Simulator::start().await?;
    /// sim.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // An aborted task resolves once its future (listener, connections) is dropped.
            let _ = task.await;
        }
    }
}

impl Deref for Simulator {
    type Target = SimulatorHandle;

    fn deref(&self) -> &SimulatorHandle {
        &self.handle
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Each accept loop owns its listener and a JoinSet of its connections, so aborting it
        // closes the port and cancels every connection (and stream) it started.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Fault injection and observation for a running [`Simulator`]; cheap to clone.
#[derive(Clone)]
pub struct SimulatorHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl SimulatorHandle {
    /// The API origin, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The CDN origin serving render outputs, on a different port than [`Self::base_url`].
    pub fn cdn_base_url(&self) -> &str {
        &self.shared.cdn_base_url
    }

    /// The stand-in for the web site (`https://nemovideo.com` in production), on its own
    /// port: `GET /register?bind=<user>` and `GET /workspace/claim?ct=<token>` answer a page
    /// saying the account or project exists only in this simulator. Pass it to
    /// [`NemoClientBuilder::web_url`](crate::NemoClientBuilder::web_url) so that registration
    /// and claim links point here.
    pub fn web_url(&self) -> &str {
        &self.shared.web_url
    }

    /// Time from a render's submission to `completed` ([`SimulatorBuilder::render_time`]).
    /// A client polling this simulator can poll at a fraction of it instead of the
    /// production 30 s.
    pub fn render_time(&self) -> Duration {
        self.shared.config.render_time
    }

    /// The next `times` requests to `endpoint` fail with `failure` (queued after any failures
    /// already pending for that endpoint). Faults apply before authentication and validation.
    pub fn fail_next(&self, endpoint: Endpoint, times: usize, failure: Failure) {
        self.shared.with(|inner| {
            if times > 0 {
                inner
                    .faults
                    .failures
                    .entry(endpoint)
                    .or_default()
                    .push_back((times, failure));
            }
        });
    }

    /// Every token issued so far now answers code 1001 with HTTP 401; the client ids that
    /// got them may ask for new ones at once (their quota window is lifted).
    pub fn expire_tokens(&self) {
        self.shared.with(|inner| inner.expire_all_tokens());
    }

    /// The next accepted `/run_sse` stream closes abruptly (no terminating chunk, so the
    /// client sees a broken body) after `events` data events — before the work's text is
    /// finished. Heartbeats are not counted. The edit itself is still applied server-side.
    pub fn drop_next_stream_after(&self, events: usize) {
        self.shared
            .with(|inner| inner.faults.drop_stream_after = Some(events));
    }

    /// The next accepted `/run_sse` stream goes completely silent (no bytes, not even
    /// heartbeats) for `for_` after `after_events` data events, then carries on.
    pub fn stall_next_stream(&self, after_events: usize, for_: Duration) {
        self.shared
            .with(|inner| inner.faults.stall_stream = Some((after_events, for_)));
    }

    /// The next accepted `/run_sse` stream reports an agent error (an ADK event with
    /// `errorCode` and `errorMessage: message`) after `events` data events, then ends
    /// normally. The turn itself was accepted: its edit is applied and charged, as when the
    /// service's agent fails after its tools ran.
    pub fn fail_next_stream_after(&self, events: usize, message: impl Into<String>) {
        let message = message.into();
        self.shared
            .with(|inner| inner.faults.error_stream_after = Some((events, message)));
    }

    /// Forces every edit turn to carry no text (`true`) or always carry text (`false`),
    /// overriding [`SimulatorBuilder::text_less_every`] until [`Self::clear_text_less`].
    pub fn set_text_less(&self, text_less: bool) {
        self.shared
            .with(|inner| inner.faults.text_less = Some(text_less));
    }

    /// Returns to the builder's text-less pattern after [`Self::set_text_less`].
    pub fn clear_text_less(&self) {
        self.shared.with(|inner| inner.faults.text_less = None);
    }

    /// Moves every render forward by `by` of render time (see [`SimulatorBuilder::render_time`]):
    /// with [`SimulatorBuilder::manual_renders`] this is the only way renders progress;
    /// otherwise it skips ahead of the clock. Renders submitted later start from where
    /// they are submitted.
    pub fn advance_renders(&self, by: Duration) {
        self.shared.with(|inner| inner.render_clock.advance(by));
    }

    /// The next submitted render fails half-way through with `message` as its `error`.
    pub fn fail_next_render(&self, message: impl Into<String>) {
        let message = message.into();
        self.shared
            .with(|inner| inner.faults.fail_next_render = Some(message));
    }

    /// Sets the available credits of every existing user, and of users created from now on.
    pub fn set_credits(&self, available: u64) {
        self.shared.with(|inner| {
            inner.credit_override = Some(available);
            for user in inner.users.values_mut() {
                user.available = available;
            }
        });
    }

    /// Sets the available credits of the user owning `token`; `false` if the token is unknown.
    pub fn set_credits_for_token(&self, token: &str, available: u64) -> bool {
        self.shared.with(|inner| {
            let Some(user_id) = inner.tokens.get(token).map(|t| t.user_id.clone()) else {
                return false;
            };
            match inner.users.get_mut(&user_id) {
                Some(user) => {
                    user.available = available;
                    true
                }
                None => false,
            }
        })
    }

    /// Available credits of the user owning `token`, if the token is known.
    pub fn credits_of_token(&self, token: &str) -> Option<u64> {
        self.shared.with(|inner| {
            let user_id = &inner.tokens.get(token)?.user_id;
            inner.users.get(user_id).map(|u| u.available)
        })
    }

    /// The current draft of a session, as `GET .../latest` would return it.
    pub fn draft(&self, session_id: &str) -> Option<serde_json::Value> {
        self.shared
            .with(|inner| inner.sessions.get(session_id).map(|s| s.draft.clone()))
    }

    /// How many requests reached `endpoint` (including failed and rejected ones).
    pub fn request_count(&self, endpoint: Endpoint) -> usize {
        self.shared.with(|inner| {
            inner
                .requests
                .iter()
                .filter(|r| r.endpoint == Some(endpoint))
                .count()
        })
    }

    /// How many `POST /api/auth/anonymous-token` requests named `client_id` in `X-Client-Id`
    /// (issued, refused with 429 and failed alike).
    pub fn token_requests_for(&self, client_id: &str) -> usize {
        self.shared.with(|inner| {
            inner
                .requests
                .iter()
                .filter(|r| {
                    r.endpoint == Some(Endpoint::AnonymousToken)
                        && r.header("x-client-id") == Some(client_id)
                })
                .count()
        })
    }

    /// Anonymous-token requests per client id (the `X-Client-Id` header; requests without one
    /// are counted under `""`).
    pub fn token_requests_by_client(&self) -> std::collections::BTreeMap<String, usize> {
        self.shared.with(|inner| {
            let mut counts = std::collections::BTreeMap::new();
            for request in inner
                .requests
                .iter()
                .filter(|r| r.endpoint == Some(Endpoint::AnonymousToken))
            {
                *counts
                    .entry(request.header("x-client-id").unwrap_or("").to_string())
                    .or_insert(0) += 1;
            }
            counts
        })
    }

    /// The ids of the renders the service accepted (a re-submitted id is counted once), in
    /// no particular order.
    pub fn render_ids(&self) -> Vec<String> {
        self.shared
            .with(|inner| inner.renders.keys().cloned().collect())
    }

    /// How many sessions exist.
    pub fn session_count(&self) -> usize {
        self.shared.with(|inner| inner.sessions.len())
    }

    /// The ids of all sessions, in no particular order.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared
            .with(|inner| inner.sessions.keys().cloned().collect())
    }

    /// A session's uploaded media (`video_infos`, as the state returns them).
    pub fn media(&self, session_id: &str) -> Vec<serde_json::Value> {
        self.shared.with(|inner| {
            inner
                .sessions
                .get(session_id)
                .map(|s| s.video_infos.clone())
                .unwrap_or_default()
        })
    }

    /// Every request received on either origin, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.with(|inner| inner.requests.clone())
    }

    /// How many CDN requests carried an `Authorization` header (a client must never send its
    /// bearer token to another host).
    pub fn cdn_requests_with_authorization(&self) -> usize {
        self.shared
            .with(|inner| inner.cdn_requests_with_authorization)
    }
}
