//! A fake NemoVideo service on loopback, for offline examples and tests: in your test's
//! process, or as a process of its own beside an app, a fleet or a CI job
//! (`cargo run --example simulator -- --port 8080`).
//!
//! Policy and defaults: the simulator binds `127.0.0.1`, on three ephemeral ports unless
//! [`SimulatorBuilder::bind`] fixes them — the API origin ([`SimulatorHandle::base_url`]), a
//! second origin standing in for the CDN that serves render outputs
//! ([`SimulatorHandle::cdn_base_url`]), and a third standing in for the web site
//! ([`SimulatorHandle::web_url`]), which serves the registration and claim-link pages so that
//! links built for simulator accounts never point at the real site. Give a client of the
//! simulator `.web_url(sim.web_url())`. It speaks the wire protocol described in the SDK's
//! API notes: `{"code":0,"data":..}` envelopes, `{"success":..}` render envelopes,
//! FastAPI-style `{"detail":..}` errors, and a real, paced `text/event-stream` on `/run_sse`
//! carrying Google-ADK-shaped events. State (tokens, credits, sessions, drafts, renders) lives
//! in memory and disappears with the simulator.
//!
//! Each simulator is a service of its own, as a staging deployment is beside production: it
//! issues its own tokens (one per client id per 7 days, counted per client id by
//! [`SimulatorHandle::token_requests_for`]) and rejects every other service's, so one config
//! directory used against production and a simulator keeps an identity for each.
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
//!
//! # Counters and the request log
//!
//! [`SimulatorHandle::counters`] counts every request since the start (or the last
//! [`SimulatorHandle::reset`]): in all, per [`Endpoint`], and per client id and per session
//! the work accepted — tokens issued, sessions, uploads, messages, renders. A request counts
//! for a client id when it names it (`X-Client-Id` of an anonymous-token request) or carries a
//! token issued to it. [`SimulatorHandle::requests`] is the log of the most recent requests
//! (1000 by default, [`SimulatorBuilder::request_log_size`]), each with its headers and body,
//! every secret redacted (see [`RecordedRequest`]). The log is a ring and the counters do
//! not read it, so memory stays flat however long the simulator runs, and counts stay exact.
//!
//! # The admin API
//!
//! The same facts and the same fault injection over HTTP, for tests and tools in other
//! processes, under `/__admin` on the API origin ([`SimulatorHandle::admin_url`]). Each route
//! calls the matching [`SimulatorHandle`] method (`/credits` calls `set_credits` or
//! `set_credits_for_client`, `/drop_next_stream` `drop_next_stream_after`, `/text_less`
//! `set_text_less` or `clear_text_less`, the others the method of their name), so the two
//! never tell different stories; admin requests are neither counted nor logged. Answers are JSON; a mistake answers 400, 404 or 405 with
//! `{"error":"<what is wrong and what to send>"}`. There is no authentication: expose the
//! port to nothing but the tests that use it.
//!
//! | route | body / answer |
//! |---|---|
//! | `GET /__admin` | `{"base_url","cdn_base_url","web_url","admin_url","request_log_size","render_time_ms","routes":{..}}` |
//! | `GET /__admin/counters` | [`Counters`]: `{"requests":14,"by_endpoint":{"run_sse":1,..},"clients":{"<client id>":{"requests","token_requests","tokens_issued","sessions","uploads","uploaded_files","messages","renders"}},"sessions":{"<session id>":{"client_id","uploads","uploaded_files","messages","renders"}},"cdn_requests_with_authorization":0}` |
//! | `GET /__admin/requests` | `{"requests":[<RecordedRequest>..]}`, oldest first; query `since=<seq>` (only later ones), `limit=<n>` (the newest n), `endpoint=<name>`, `client_id=<id>` |
//! | `GET /__admin/sessions/<id>` | the session's counters plus `"session_id"`, `"draft"` and `"media"` |
//! | `GET /__admin/renders` | `{"render_ids":[..]}` |
//! | `POST /__admin/reset` | no body; [`SimulatorHandle::reset`] |
//! | `POST /__admin/fail_next` | `{"endpoint":"credits","times":1,"failure":{"status":503}}` (`times` defaults to 1; failures as in [`Failure`]) |
//! | `POST /__admin/expire_tokens` | no body |
//! | `POST /__admin/drop_next_stream` | `{"after_events":2}` |
//! | `POST /__admin/stall_next_stream` | `{"after_events":1,"for_ms":3000}` |
//! | `POST /__admin/text_less` | `{"text_less":true}`; `false`: always text; `null`: the builder's pattern again |
//! | `POST /__admin/fail_next_render` | `{"message":"GPU unavailable"}` |
//! | `POST /__admin/credits` | `{"available":0}` for every user, or `{"available":0,"client_id":"<id>"}` |
//! | `POST /__admin/advance_renders` | `{"ms":2000}` |
//!
//! A `POST` answers `{"ok":true}`. A logged request reads
//! `{"seq":6,"method":"POST","path":"/run_sse","endpoint":"run_sse","client_id":"worker-1",
//! "headers":{"authorization":"Bearer ***",..},"has_authorization":true,"body_len":175,
//! "body":{"kind":"json","json":{"app_name":"nemo_agent",..}}}`; a body is one of
//! `{"kind":"json","json":..}`, `{"kind":"text","text":".."}`,
//! `{"kind":"multipart","parts":[{"name":"files","filename":"clip.mp4","bytes":6926}]}` and
//! `{"kind":"summary","content_type":"..","bytes":..}` (see [`RecordedBody`]), or `null`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = nemo_video::simulator::Simulator::start().await?;
//! // What another process reads with `curl <admin url>/counters`:
//! let answer = nemo_video::reqwest::get(format!("{}/counters", sim.admin_url()))
//!     .await?
//!     .text()
//!     .await?;
//! let counters: serde_json::Value = serde_json::from_str(&answer)?;
//! assert_eq!(counters, serde_json::to_value(sim.counters())?);
//! # Ok(())
//! # }
//! ```

mod admin;
mod agent;
mod body;
mod log;
mod multipart;
mod server;
mod state;
mod tls;
mod web;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use state::Shared;

pub use self::log::{ClientCounters, Counters, RecordedBody, RecordedPart, SessionCounters};
pub use tls::{HttpsStats, TEST_CA_PEM};

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
///
/// In the admin API's JSON an endpoint is its name in snake case: `anonymous_token`,
/// `create_session`, `run_sse`, `upload`, `credits`, `state`, `render_submit`,
/// `render_status`, `render_cancel`, `render_download`, `claim_token`, `cdn_output`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
///
/// In the admin API's JSON: `{"status":503}`, `{"code":{"http":200,"code":2001}}`,
/// `{"plain_text":{"status":502,"body":"Bad Gateway"}}`,
/// `{"retry_after":{"status":429,"secs":2}}`, or `"close_connection"`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// One request the simulator received, as recorded in its request log
/// ([`SimulatorHandle::requests`], and `GET /__admin/requests` as JSON, where `headers` is
/// an object of lowercase names, repeated headers joined with `", "`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// Its number in arrival order, from 1, never reused (not even by
    /// [`SimulatorHandle::reset`]): read the log again from the last number seen to get only
    /// what came after.
    pub seq: u64,
    /// The HTTP method, e.g. `"POST"`.
    pub method: String,
    /// The request path as sent (still percent-encoded), without the query string.
    pub path: String,
    /// The endpoint the path maps to, if any.
    pub endpoint: Option<Endpoint>,
    /// The client id the request is counted for: the `X-Client-Id` of an anonymous-token
    /// request, or the client id whose token the request carries (valid or expired).
    pub client_id: Option<String>,
    /// All headers, names lowercased, in arrival order. Secrets are redacted: an
    /// `Authorization` value to `"Bearer ***"` (or `"***"` for other schemes; its presence is
    /// kept), cookies and headers named like tokens or keys to `"***"`, and any token inside
    /// another value to its prefix and `***`.
    #[serde(serialize_with = "headers_as_object")]
    pub headers: Vec<(String, String)>,
    /// Whether the request carried an `Authorization` header.
    pub has_authorization: bool,
    /// How many body bytes the simulator read (uploads are counted, never stored).
    pub body_len: u64,
    /// The body, as far as the log keeps it: JSON and text up to 16 KiB with secrets
    /// replaced by `***`, uploads as their parts (never their content), anything else as
    /// its content type and size. `None` when there was no body, or the simulator answered
    /// without reading it (an unknown path, an injected failure).
    pub body: Option<RecordedBody>,
}

fn headers_as_object<S: serde::Serializer>(
    headers: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut joined: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    for (name, value) in headers {
        joined
            .entry(name.as_str())
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    joined.serialize(serializer)
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, when it was a JSON body the log kept (secrets already `"***"`).
    pub fn body_json(&self) -> Option<serde_json::Value> {
        self.body.as_ref().and_then(RecordedBody::json)
    }
}

/// Settings of a [`Simulator`]; every setter documents its default.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct SimulatorBuilder {
    pub(crate) config: state::Config,
    pub(crate) listen: Listen,
}

/// Where the three origins listen, and the host their URLs name.
#[derive(Debug, Clone)]
pub(crate) struct Listen {
    pub(crate) api: SocketAddr,
    pub(crate) cdn_port: Option<u16>,
    pub(crate) web_port: Option<u16>,
    pub(crate) public_host: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cdn_port: None,
            web_port: None,
            public_host: None,
        }
    }
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
            listen: Listen::default(),
        }
    }

    /// Where the API origin listens: an IP address and a port (`0`: any free port). The CDN
    /// and web origins listen on the same address, by default on the next two ports
    /// (`port + 1` for the CDN, `port + 2` for the web site) when `port` is fixed, and on
    /// free ports when it is `0`; [`Self::cdn_port`] and [`Self::web_port`] choose others.
    /// Fixed ports are bound with `SO_REUSEADDR` on Unix, so a simulator restarted on the same
    /// port starts at once. Nothing but loopback is safe to expose: the simulator has no
    /// authentication of its own (its admin API is open to whoever reaches the port).
    /// Default: `127.0.0.1:0`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use nemo_video::simulator::Simulator;
    ///
    /// let sim = Simulator::builder().bind(([127, 0, 0, 1], 8080)).start().await?;
    /// assert_eq!(sim.base_url(), "http://127.0.0.1:8080");
    /// assert_eq!(sim.cdn_base_url(), "http://127.0.0.1:8081");
    /// assert_eq!(sim.web_url(), "http://127.0.0.1:8082");
    /// # Ok(())
    /// # }
    /// ```
    pub fn bind(mut self, address: impl Into<SocketAddr>) -> Self {
        self.listen.api = address.into();
        self
    }

    /// The CDN origin's port (`0`: any free port). Default: the API port + 1 when
    /// [`Self::bind`] fixes it, else a free port.
    pub fn cdn_port(mut self, port: u16) -> Self {
        self.listen.cdn_port = Some(port);
        self
    }

    /// The web origin's port (`0`: any free port). Default: the API port + 2 when
    /// [`Self::bind`] fixes it, else a free port.
    pub fn web_port(mut self, port: u16) -> Self {
        self.listen.web_port = Some(port);
        self
    }

    /// The host name in the URLs the simulator hands out ([`SimulatorHandle::base_url`],
    /// [`SimulatorHandle::cdn_base_url`], [`SimulatorHandle::web_url`], the `cdn_url` of
    /// uploads and the `outputUrl` of renders): the name other machines or containers reach
    /// it by, such as `simulator` in a compose file. Default: the bound IP address, with
    /// `0.0.0.0` and `::` shown as `127.0.0.1` and `[::1]`.
    pub fn public_host(mut self, host: impl Into<String>) -> Self {
        self.listen.public_host = Some(host.into());
        self
    }

    /// How many recent requests the request log keeps ([`SimulatorHandle::requests`],
    /// `GET /__admin/requests`); the oldest goes when a new one comes, so memory stays flat
    /// however long the simulator runs. `0` keeps none. The counters
    /// ([`SimulatorHandle::counters`], [`SimulatorHandle::request_count`], ...) count every
    /// request whatever this size. Default: 1000.
    pub fn request_log_size(mut self, entries: usize) -> Self {
        self.config.request_log_size = entries;
        self
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

    /// Answers every anonymous-token request this long after issuing its token (the token
    /// counts against the client id's weekly quota from the moment it is issued): the case of
    /// a client interrupted while its token request is in flight. Default: none.
    pub fn token_answer_delay(mut self, delay: Duration) -> Self {
        self.config.token_answer_delay = delay;
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

    /// Binds the three listeners (by default on `127.0.0.1`, ephemeral ports; see
    /// [`Self::bind`]) and starts serving on the current Tokio runtime. Fails when a port is
    /// taken, naming the origin and the address.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let sim = nemo_video::simulator::Simulator::builder().fast().start().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> io::Result<Simulator> {
        let ip = self.listen.api.ip();
        // Every port is known before the first is bound, so a bad choice binds nothing.
        let cdn_port = self.listen.port_after(self.listen.cdn_port, 1)?;
        let web_port = self.listen.port_after(self.listen.web_port, 2)?;
        let https = self.config.tls.enabled();
        if https {
            tls::check(&self.config.tls)?;
        }
        let api = listen(self.listen.api, "API")?;
        let cdn = listen(SocketAddr::new(ip, cdn_port), "CDN")?;
        let web = listen(SocketAddr::new(ip, web_port), "web")?;
        let base_url = self
            .listen
            .url(api.local_addr()?, if https { "https" } else { "http" });
        let cdn_base_url = self.listen.url(cdn.local_addr()?, "http");
        let web_url = self.listen.url(web.local_addr()?, "http");
        let shared = Arc::new(Shared::new(self.config, base_url, cdn_base_url, web_url));
        let tasks = vec![
            if https {
                tokio::spawn(tls::serve(api, shared.clone()))
            } else {
                tokio::spawn(server::serve(api, shared.clone(), server::Origin::Api))
            },
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

/// A listener on `address`, with a backlog for bursts; an error names the origin and address.
fn listen(address: SocketAddr, origin: &str) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // A fixed port must be free again as soon as the last simulator on it stopped, even
        // while its old connections linger in TIME_WAIT (Tokio's own `bind` does the same).
        // Not on Windows, where the option lets two listeners share a port.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)
    })();
    bound.map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("the simulator's {origin} origin could not listen on {address}: {err}"),
        )
    })
}

impl Listen {
    /// The port of the origin `offset` places after the API: the one asked for, else the API
    /// port + `offset` when that is fixed, else any free port.
    fn port_after(&self, asked: Option<u16>, offset: u16) -> io::Result<u16> {
        let api_port = self.api.port();
        match (asked, api_port) {
            (Some(port), _) => Ok(port),
            (None, 0) => Ok(0),
            (None, _) => api_port.checked_add(offset).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the API port {api_port} leaves no room for the CDN and web ports \
                         (port + 1, port + 2); choose a lower port, or set cdn_port and web_port"
                    ),
                )
            }),
        }
    }

    /// `<scheme>://<public host>:<port>` for a bound listener.
    fn url(&self, bound: SocketAddr, scheme: &str) -> String {
        let host = match &self.public_host {
            Some(host) => host.clone(),
            None => match bound.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
        };
        format!("{scheme}://{host}:{}", bound.port())
    }
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
    /// The API origin, e.g. `http://127.0.0.1:41234` (no trailing slash); `https://` with
    /// [`SimulatorBuilder::https`].
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
    /// already pending for that endpoint). Faults apply before authentication and validation,
    /// and change nothing else: `Failure::Code { http: 401, code: 1001 }` is a stray 401 (a
    /// gateway's, a WAF's) while the token stays valid, and with the one-token-per-week rule
    /// (on by default) a client that asks for a new token gets 429, as from the service.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use nemo_video::simulator::{Endpoint, Failure, Simulator};
    /// let sim = Simulator::start().await?;
    /// sim.fail_next(Endpoint::Credits, 1, Failure::Code { http: 401, code: 1001 });
    /// # Ok(())
    /// # }
    /// ```
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

    /// How many requests reached `endpoint` (including failed and rejected ones), since the
    /// start or the last [`Self::reset`].
    pub fn request_count(&self, endpoint: Endpoint) -> usize {
        self.shared.with(|inner| {
            let count = inner.tally.counters().by_endpoint.get(&endpoint).copied();
            usize::try_from(count.unwrap_or(0)).unwrap_or(usize::MAX)
        })
    }

    /// How many `POST /api/auth/anonymous-token` requests named `client_id` in `X-Client-Id`
    /// (issued, refused with 429 and failed alike).
    pub fn token_requests_for(&self, client_id: &str) -> usize {
        let count = self.client_counters(client_id).token_requests;
        usize::try_from(count).unwrap_or(usize::MAX)
    }

    /// Anonymous-token requests per client id (the `X-Client-Id` header; requests without one
    /// are counted under `""`).
    pub fn token_requests_by_client(&self) -> std::collections::BTreeMap<String, usize> {
        self.shared.with(|inner| {
            inner
                .tally
                .counters()
                .clients
                .iter()
                .filter(|(_, client)| client.token_requests > 0)
                .map(|(id, client)| {
                    let count = usize::try_from(client.token_requests).unwrap_or(usize::MAX);
                    (id.clone(), count)
                })
                .collect()
        })
    }

    /// Every counter: requests in all and per endpoint, and per client id and per session
    /// the tokens issued, sessions, uploads, messages and renders. `GET /__admin/counters`
    /// answers the same as JSON. Exact over any number of requests, whatever
    /// [`SimulatorBuilder::request_log_size`].
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let sim = nemo_video::simulator::Simulator::start().await?;
    /// // ... an app runs its job with client id "worker-1" ...
    /// let worker = sim.counters().clients.get("worker-1").copied().unwrap_or_default();
    /// assert_eq!((worker.tokens_issued, worker.messages, worker.renders), (1, 1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> Counters {
        self.shared.with(|inner| inner.tally.counters().clone())
    }

    /// The counters of one client id (all zero for a client id never seen).
    pub fn client_counters(&self, client_id: &str) -> ClientCounters {
        self.shared.with(|inner| inner.tally.client(client_id))
    }

    /// Forgets everything the service holds and every fault armed, as if it had just started
    /// with the same settings and ports: tokens, users, sessions, renders, credits set by
    /// [`Self::set_credits`], pending faults, the counters and the request log (whose
    /// numbering goes on). Responses already streaming carry on. `POST /__admin/reset` does
    /// the same.
    pub fn reset(&self) {
        let config = &self.shared.config;
        self.shared.with(|inner| inner.reset(config));
    }

    /// The admin API's root, `<base_url>/__admin` (see the [module docs](self)).
    pub fn admin_url(&self) -> String {
        format!("{}/__admin", self.shared.base_url)
    }

    /// Sets the available credits of the user of `client_id`; `false` if that client id was
    /// never issued a token.
    pub fn set_credits_for_client(&self, client_id: &str, available: u64) -> bool {
        self.shared.with(|inner| {
            let Some(user_id) = inner.client_users.get(client_id) else {
                return false;
            };
            match inner.users.get_mut(user_id) {
                Some(user) => {
                    user.available = available;
                    true
                }
                None => false,
            }
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

    /// The most recent requests received on the API and CDN origins, oldest first: at most
    /// [`SimulatorBuilder::request_log_size`] of them (default 1000), with their bodies as far
    /// as the log keeps them and every secret redacted. `GET /__admin/requests` answers the
    /// same as JSON.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .with(|inner| inner.log.iter().cloned().collect())
    }

    /// How many CDN requests carried an `Authorization` header (a client must never send its
    /// bearer token to another host).
    pub fn cdn_requests_with_authorization(&self) -> usize {
        self.shared.with(|inner| {
            let count = inner.tally.counters().cdn_requests_with_authorization;
            usize::try_from(count).unwrap_or(usize::MAX)
        })
    }
}
