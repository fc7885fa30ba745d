//! The reliability fault matrix: every endpoint the SDK calls, crossed with every fault the
//! network or the service can throw at it, each with the outcome the SDK documents.
//!
//! Each row runs against its own simulator, behind a raw TCP front proxy (faults the simulator
//! cannot produce: resets, stalls, truncated, malformed and endless bodies) and a scripted DNS
//! resolver (refused connections). The proxy sees every request that reached "the server", so
//! the counts below are what a user would be charged for.
//!
//! The test (a) compares every observed outcome with the expected one and (b) keeps the
//! generated table in `docs/reliability.md` in sync: run
//! `UPDATE_RELIABILITY_DOC=1 cargo test -p nemo-video-suite --test fault_matrix` to rewrite it.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nemo_video::render::{Export, RenderJob};
use nemo_video::simulator::{Endpoint, Failure, Simulator, SAMPLE_INPUT_MP4, SAMPLE_OUTPUT_MP4};
use nemo_video::{
    draft::Draft, render::RenderOptions, render::WaitOptions, stream::MessageOptions, Error,
    NemoClient, RetryConfig, Session,
};
use support::faults::{head, response, Action, Proxy, ScriptedResolver, API_HOST, CDN_HOST};
use support::mock::finished_export;

const CLIENT_ID: &str = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b";
/// Per-attempt limit for ordinary requests (and the stream idle limit) in the rows that test
/// a stall, and in the single-fault tests below. The stall itself lasts until the row ends;
/// the limit also applies to the retry after it, so it stays far above what a busy machine
/// needs to answer (a 300 ms limit used to time out retries under load).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The same limits in every other row: a fault there must not depend on a timer, so a busy
/// machine answering slowly cannot turn into a timeout (and an extra retry).
const CALM_TIMEOUT: Duration = Duration::from_secs(30);
/// JSON body cap in this file (the default is 64 MiB; the bounded-memory tests use it).
const BODY_CAP: usize = 64 * 1024;
/// SSE event cap in this file (the default is 16 MiB).
const EVENT_CAP: usize = 64 * 1024;
/// Retry-After the simulator sends for 429 and 503 rows, in seconds.
const RETRY_AFTER_SECS: u64 = 1;
/// Longest a single row may take before it counts as hung.
const ROW_LIMIT: Duration = Duration::from_secs(60);

const DOC_BEGIN: &str = "<!-- matrix:begin -->";
const DOC_END: &str = "<!-- matrix:end -->";

// ---------------------------------------------------------------------------------------------
// Endpoints and faults

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ep {
    AnonymousToken,
    CreateSession,
    Upload,
    RunSse,
    Credits,
    State,
    RenderSubmit,
    RenderStatus,
    Cancel,
    DownloadCdn,
    DownloadFallback,
}

const ENDPOINTS: [Ep; 11] = [
    Ep::AnonymousToken,
    Ep::CreateSession,
    Ep::Upload,
    Ep::RunSse,
    Ep::Credits,
    Ep::State,
    Ep::RenderSubmit,
    Ep::RenderStatus,
    Ep::Cancel,
    Ep::DownloadCdn,
    Ep::DownloadFallback,
];

impl Ep {
    fn title(self) -> &'static str {
        match self {
            Ep::AnonymousToken => "`POST /api/auth/anonymous-token`",
            Ep::CreateSession => "`POST /api/tasks/me/with-session/nemo_agent`",
            Ep::Upload => "`POST /api/upload-video/…` (multipart)",
            Ep::RunSse => "`POST /run_sse` (`send_message`)",
            Ep::Credits => "`GET /api/credits/balance/simple`",
            Ep::State => "`GET /api/state/…/latest`",
            Ep::RenderSubmit => "`POST /api/render/proxy/lambda`",
            Ep::RenderStatus => "`GET /api/render/proxy/lambda/<id>`",
            Ep::Cancel => "`POST /api/render/proxy/lambda/<id>/cancel`",
            Ep::DownloadCdn => "download: CDN output URL",
            Ep::DownloadFallback => "download: `GET /api/render/proxy/<id>/download`",
        }
    }

    /// The proxy's label for this endpoint's requests.
    fn label(self) -> &'static str {
        match self {
            Ep::AnonymousToken => "anonymous-token",
            Ep::CreateSession => "create-session",
            Ep::Upload => "upload",
            Ep::RunSse => "run_sse",
            Ep::Credits => "credits",
            Ep::State => "state",
            Ep::RenderSubmit => "render-submit",
            Ep::RenderStatus => "render-status",
            Ep::Cancel => "render-cancel",
            Ep::DownloadCdn => "cdn-output",
            Ep::DownloadFallback => "render-download",
        }
    }

    fn sim(self) -> Endpoint {
        match self {
            Ep::AnonymousToken => Endpoint::AnonymousToken,
            Ep::CreateSession => Endpoint::CreateSession,
            Ep::Upload => Endpoint::Upload,
            Ep::RunSse => Endpoint::RunSse,
            Ep::Credits => Endpoint::Credits,
            Ep::State => Endpoint::State,
            Ep::RenderSubmit => Endpoint::RenderSubmit,
            Ep::RenderStatus => Endpoint::RenderStatus,
            Ep::Cancel => Endpoint::RenderCancel,
            Ep::DownloadCdn => Endpoint::CdnOutput,
            Ep::DownloadFallback => Endpoint::RenderDownload,
        }
    }

    /// POSTs that do work or charge: a second send is a second charge.
    fn does_work(self) -> bool {
        matches!(
            self,
            Ep::CreateSession | Ep::Upload | Ep::RunSse | Ep::RenderSubmit | Ep::Cancel
        )
    }

    fn is_download(self) -> bool {
        matches!(self, Ep::DownloadCdn | Ep::DownloadFallback)
    }

    fn is_render_envelope(self) -> bool {
        matches!(
            self,
            Ep::RenderSubmit | Ep::RenderStatus | Ep::Cancel | Ep::DownloadFallback
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Refused,
    Reset,
    Stall,
    Status500,
    PlainText502,
    RetryAfter503,
    RateLimited429,
    Code1001,
    Truncated,
    InvalidJson,
    WrongShape,
    Oversized,
}

const FAULTS: [Fault; 12] = [
    Fault::Refused,
    Fault::Reset,
    Fault::Stall,
    Fault::Status500,
    Fault::PlainText502,
    Fault::RetryAfter503,
    Fault::RateLimited429,
    Fault::Code1001,
    Fault::Truncated,
    Fault::InvalidJson,
    Fault::WrongShape,
    Fault::Oversized,
];

impl Fault {
    fn title(self) -> &'static str {
        match self {
            Fault::Refused => "connection refused",
            Fault::Reset => "reset mid-response",
            Fault::Stall => "stall past timeout",
            Fault::Status500 => "500",
            Fault::PlainText502 => "502 plain text",
            Fault::RetryAfter503 => "503 + Retry-After",
            Fault::RateLimited429 => "429 + Retry-After",
            Fault::Code1001 => "1001 / 401",
            Fault::Truncated => "truncated body",
            Fault::InvalidJson => "invalid JSON",
            Fault::WrongShape => "wrong JSON shape",
            Fault::Oversized => "oversized body",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes

/// What happened in one row. `sent` counts the requests for the row's endpoint that reached
/// the server (a refused connection never does).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    /// `ok`, or the error: `Http 500`, `Timeout(Request)`, `stream: StreamDisconnected`, ...
    result: String,
    sent: usize,
    /// Connections refused before the request got through.
    refused: usize,
    /// New anonymous tokens fetched because the token was rejected.
    reauth: usize,
    /// The server's Retry-After was waited out.
    waited: bool,
    /// The CDN download failed and the API's download endpoint delivered the file.
    fallback: bool,
}

fn base(result: &str, sent: usize) -> Outcome {
    Outcome {
        result: result.to_string(),
        sent,
        refused: 0,
        reauth: 0,
        waited: false,
        fallback: false,
    }
}

/// Succeeded at the first attempt.
fn ok() -> Outcome {
    base("ok", 1)
}

/// Succeeded after `sent` attempts reached the server (backoff retries).
fn retried(sent: usize) -> Outcome {
    base("ok", sent)
}

/// The connection was refused once (nothing reached the server), then the request went through.
fn reconnected() -> Outcome {
    Outcome {
        refused: 1,
        ..base("ok", 1)
    }
}

/// 1001/401: one new anonymous token, one replay.
fn reauthed() -> Outcome {
    Outcome {
        reauth: 1,
        ..base("ok", 2)
    }
}

/// The server's Retry-After was waited out, then one replay succeeded.
fn waited() -> Outcome {
    Outcome {
        waited: true,
        ..base("ok", 2)
    }
}

/// The CDN answered `sent` times without a usable file; the API's download endpoint delivered.
fn fell_back(sent: usize) -> Outcome {
    Outcome {
        fallback: true,
        ..base("ok", sent)
    }
}

/// A typed error after exactly one request reached the server (never replayed).
fn err(label: &str) -> Outcome {
    base(label, 1)
}

impl Outcome {
    /// The short form used in the generated table.
    fn cell(&self) -> String {
        let what = if self.result == "ok" {
            if self.fallback {
                "CDN failed → fallback ok"
            } else if self.refused > 0 {
                "reconnect → ok"
            } else if self.reauth > 0 {
                "re-auth → ok"
            } else if self.waited {
                "wait → ok"
            } else if self.sent > 1 {
                "retry → ok"
            } else {
                "ok"
            }
            .to_string()
        } else {
            format!("`{}`", self.result)
        };
        format!("{what} ({})", self.sent)
    }
}

struct Row {
    ep: Ep,
    fault: Fault,
    expected: Outcome,
}

/// The matrix: every (endpoint, fault) the SDK can meet, with the documented outcome.
/// Downloads have no JSON body, so the JSON faults do not apply to them.
fn rows() -> Vec<Row> {
    use Fault::*;
    let mut rows = Vec::new();
    let mut add = |ep: Ep, cells: Vec<(Fault, Outcome)>| {
        for (fault, expected) in cells {
            rows.push(Row {
                ep,
                fault,
                expected,
            });
        }
    };

    // The token is fetched on behalf of a call (here a read, `credits`). The token POST does
    // no billable work; its own loop replays it only when it never arrived or was refused up
    // front (429), and otherwise its failure is the read's failure, which the read's backoff
    // retries (fetching the token again). A POST that does work would not retry it. A token
    // request that gets no answer is not sent again: the answer may still be on its way,
    // and the service issues one token per client id per week (it waits twice the request
    // timeout for it).
    add(
        Ep::AnonymousToken,
        vec![
            (Refused, reconnected()),
            (Reset, retried(2)),
            (Stall, err("Timeout(Request)")),
            (Status500, retried(2)),
            (PlainText502, retried(2)),
            (RetryAfter503, waited()),
            (RateLimited429, waited()),
            // Nothing to refresh: the token call itself was refused.
            (Code1001, err("Unauthorized")),
            (Truncated, retried(2)),
            (InvalidJson, err("Decode")),
            (WrongShape, err("Decode")),
            (Oversized, err("ResponseTooLarge")),
        ],
    );

    // POSTs that do work: re-sent only when they never arrived (refused) or the server
    // refused them before doing anything (1001, 429). Any other failure after sending is
    // `Unconfirmed` (policy "reconcile"), whatever the underlying cause.
    for ep in [Ep::CreateSession, Ep::Upload, Ep::Cancel] {
        // Cancel ignores the response body.
        let wrong_shape = if ep == Ep::Cancel {
            ok()
        } else {
            err("Unconfirmed: Decode")
        };
        add(
            ep,
            vec![
                (Refused, reconnected()),
                (Reset, err("Unconfirmed: Network")),
                (Stall, err("Unconfirmed: Timeout(Request)")),
                (Status500, err("Unconfirmed: Http 500")),
                (PlainText502, err("Unconfirmed: Http 502")),
                (RetryAfter503, err("Unconfirmed: Http 503")),
                (RateLimited429, waited()),
                (Code1001, reauthed()),
                (Truncated, err("Unconfirmed: Network")),
                (InvalidJson, err("Unconfirmed: Decode")),
                (WrongShape, wrong_shape),
                (Oversized, err("Unconfirmed: ResponseTooLarge")),
            ],
        );
    }

    // Render submit: the client chose the id, which is the service's idempotency key, so the
    // same submission can be sent again like a read (a duplicate answers 409: "submitted").
    add(
        Ep::RenderSubmit,
        vec![
            (Refused, reconnected()),
            (Reset, retried(2)),
            (Stall, retried(2)),
            (Status500, retried(2)),
            (PlainText502, retried(2)),
            (RetryAfter503, waited()),
            (RateLimited429, waited()),
            (Code1001, reauthed()),
            (Truncated, retried(2)),
            (InvalidJson, err("Decode")),
            (WrongShape, ok()),
            (Oversized, err("ResponseTooLarge")),
        ],
    );

    // The message stream: never re-sent once it may have reached the server. An error answer
    // head (other than 504) proves the agent never began, since its stream opens first: the
    // error is returned as it is (refused, not "reconcile"), and not re-sent either.
    add(
        Ep::RunSse,
        vec![
            (Refused, reconnected()),
            (Reset, err("stream: StreamDisconnected")),
            (Stall, err("Unconfirmed: Timeout(StreamIdle)")),
            (Status500, err("Http 500")),
            (PlainText502, err("Http 502")),
            (RetryAfter503, err("Http 503")),
            (RateLimited429, waited()),
            (Code1001, reauthed()),
            (Truncated, err("stream: StreamDisconnected")),
            // A frame that is not JSON, or JSON of an unknown shape, is kept as an unknown
            // event: the stream carries on.
            (InvalidJson, ok()),
            (WrongShape, ok()),
            // An endless line over max_event_bytes.
            (Oversized, err("stream: StreamDisconnected")),
        ],
    );

    // Reads: transient failures are retried with backoff (2 retries by default).
    for ep in [Ep::Credits, Ep::State, Ep::RenderStatus] {
        // The state decoder is tolerant by design: `data` that is not an object reads as an
        // empty state (a new session may answer `null`).
        let wrong_shape = if ep == Ep::State { ok() } else { err("Decode") };
        add(
            ep,
            vec![
                (Refused, reconnected()),
                (Reset, retried(2)),
                (Stall, retried(2)),
                (Status500, retried(2)),
                (PlainText502, retried(2)),
                (RetryAfter503, waited()),
                (RateLimited429, waited()),
                (Code1001, reauthed()),
                (Truncated, retried(2)),
                (InvalidJson, err("Decode")),
                (WrongShape, wrong_shape),
                (Oversized, err("ResponseTooLarge")),
            ],
        );
    }

    // Downloads: the CDN URL first (no token), then the API's own download endpoint.
    add(
        Ep::DownloadCdn,
        vec![
            (Refused, reconnected()),
            (Reset, fell_back(1)),
            (Stall, retried(2)),
            (Status500, retried(2)),
            (PlainText502, retried(2)),
            (RetryAfter503, waited()),
            (RateLimited429, waited()),
            // The CDN never gets the token, so there is nothing to refresh there.
            (Code1001, fell_back(1)),
            (Truncated, fell_back(1)),
        ],
    );
    add(
        Ep::DownloadFallback,
        vec![
            (Refused, reconnected()),
            // A body cut short is not resumed: the error, and no file at the target.
            (Reset, err("Network")),
            (Stall, retried(2)),
            (Status500, retried(2)),
            (PlainText502, retried(2)),
            (RetryAfter503, waited()),
            (RateLimited429, waited()),
            (Code1001, reauthed()),
            (Truncated, err("Network")),
        ],
    );
    rows
}

// ---------------------------------------------------------------------------------------------
// One row's world: simulator, proxies, resolver, client

struct World {
    sim: Simulator,
    api: Proxy,
    cdn: Proxy,
    resolver: Arc<ScriptedResolver>,
    /// The client under test: fast retries; `timeout` per attempt.
    client: NemoClient,
    /// The client's request timeout, also used as the stream idle limit.
    timeout: Duration,
    /// The same identity (config directory, client id) with generous timeouts, for the
    /// set-up before a fault is armed, so a slow moment on a busy machine cannot fail it.
    warm: NemoClient,
    dir: tempfile::TempDir,
}

/// The tests in this file measure time; they run one at a time so they do not slow each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared fast retries, but waiting out the rows' 1 s `Retry-After`.
fn fast_retry() -> RetryConfig {
    let mut retry = support::fast_retry();
    retry.max_server_wait = Duration::from_secs(2);
    retry
}

impl World {
    async fn new() -> World {
        World::with(BODY_CAP, Renders::Timed, REQUEST_TIMEOUT).await
    }

    async fn for_row(ep: Ep, fault: Fault) -> World {
        let timeout = if fault == Fault::Stall {
            REQUEST_TIMEOUT
        } else {
            CALM_TIMEOUT
        };
        // Rows that act on a render in progress keep it in progress however long they take.
        let renders = if matches!(ep, Ep::Cancel | Ep::RenderStatus) {
            Renders::Manual
        } else {
            Renders::Timed
        };
        World::with(BODY_CAP, renders, timeout).await
    }

    async fn with(max_response_bytes: usize, renders: Renders, timeout: Duration) -> World {
        let mut sim = Simulator::builder()
            .fast()
            .render_time(Duration::from_millis(400));
        if renders == Renders::Manual {
            sim = sim.manual_renders();
        }
        let sim = sim.start().await.unwrap();
        let api = Proxy::start(sim.base_url()).await;
        let cdn = Proxy::start(sim.cdn_base_url()).await;
        let resolver = Arc::new(ScriptedResolver::default());
        let http = reqwest::Client::builder()
            .dns_resolver(resolver.clone())
            // One connection per request, so every request resolves (and can be refused).
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let builder = NemoClient::builder()
            .base_url(format!("http://{API_HOST}:{}", api.port()))
            .web_url("https://web.nemo.test")
            .config_dir(dir.path().join("config"))
            .client_id(CLIENT_ID)
            .skill_platform("fault-matrix")
            .retry(fast_retry())
            .max_response_bytes(max_response_bytes)
            .http_client(http);
        let warm = builder
            .clone()
            .request_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let client = builder.request_timeout(timeout).build().unwrap();
        World {
            sim,
            api,
            cdn,
            resolver,
            client,
            timeout,
            warm,
            dir,
        }
    }

    fn proxy(&self, ep: Ep) -> &Proxy {
        if ep == Ep::DownloadCdn {
            &self.cdn
        } else {
            &self.api
        }
    }

    fn message_options(&self) -> MessageOptions {
        MessageOptions::default()
            .idle_timeout(self.timeout)
            .total_timeout(Duration::from_secs(60))
            .max_event_bytes(EVENT_CAP)
    }
}

/// How a world's renders progress.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Renders {
    /// Completed 400 ms after submit.
    Timed,
    /// Never, unless the test advances them: in progress for as long as a row takes.
    Manual,
}

/// What a row's action needs, created before the fault is armed.
#[derive(Default)]
struct Prepared {
    session: Option<Session>,
    clip: Option<PathBuf>,
    draft: Option<Draft>,
    job: Option<RenderJob>,
    /// The finished render to download: its output at the CDN (through the fault proxy)
    /// for [`Ep::DownloadCdn`], without an output URL (the API's endpoint) for
    /// [`Ep::DownloadFallback`].
    export: Option<Export>,
    out: Option<PathBuf>,
}

async fn prepare(world: &World, ep: Ep) -> Prepared {
    let client = &world.warm;
    let mut prepared = Prepared::default();
    if ep == Ep::AnonymousToken {
        return prepared;
    }
    // Fetch the token up front (persisted, so the client under test loads it), so the
    // action's first request is the endpoint's own.
    client.credits().await.expect("warm-up: credits");
    if matches!(ep, Ep::CreateSession | Ep::Credits) {
        return prepared;
    }
    let session = client.create_session().await.expect("warm-up: session");
    let clip = world.dir.path().join("clip.mp4");
    std::fs::write(&clip, SAMPLE_INPUT_MP4).unwrap();
    prepared.clip = Some(clip.clone());
    if !matches!(ep, Ep::Upload | Ep::RunSse | Ep::State) {
        client
            .upload(&session, &[&clip])
            .await
            .expect("warm-up: upload");
        let state = client.state(&session).await.expect("warm-up: state");
        let draft = state.draft().cloned().expect("warm-up: a draft");
        if ep != Ep::RenderSubmit {
            let job = RenderJob::new(&session);
            client
                .submit_render(&job, &draft, &RenderOptions::default())
                .await
                .expect("warm-up: render");
            if ep.is_download() {
                let wait = WaitOptions::default()
                    .poll_interval(Duration::from_millis(50))
                    .max_wait(Duration::from_secs(10));
                let finished = client
                    .wait_for_render(&job, &wait)
                    .await
                    .expect("warm-up: render finishes");
                let output = finished.output_url().expect("warm-up: an output URL");
                let mut url = url::Url::parse(output).unwrap();
                url.set_host(Some(CDN_HOST)).unwrap();
                url.set_port(Some(world.cdn.port())).unwrap();
                let output_url = match ep {
                    Ep::DownloadCdn => Some(url.to_string()),
                    _ => None,
                };
                prepared.export =
                    Some(finished_export(&job.id, session.id(), output_url.as_deref()).await);
                let out_dir = world.dir.path().join("out");
                std::fs::create_dir(&out_dir).unwrap();
                prepared.out = Some(out_dir.join("edited.mp4"));
            }
            prepared.job = Some(job);
        }
        prepared.draft = Some(draft);
    }
    prepared.session = Some(session);
    prepared
}

const PARTIAL_JSON: &[u8] = br#"{"code":0,"message":"ok","data":{"session_id":"12"#;
const SSE_EVENT: &[u8] =
    b"data: {\"author\":\"nemo_agent\",\"partial\":true,\"content\":{\"parts\":[{\"text\":\"Work\"}]}}\n\n";

fn arm(world: &World, ep: Ep, fault: Fault) {
    let label = ep.label();
    let proxy = world.proxy(ep);
    let sse = ep == Ep::RunSse;
    let (content_type, partial, full_len) = if sse {
        ("text/event-stream", SSE_EVENT.to_vec(), 100_000)
    } else if ep.is_download() {
        let half = SAMPLE_OUTPUT_MP4.len() / 2;
        (
            "video/mp4",
            SAMPLE_OUTPUT_MP4[..half].to_vec(),
            SAMPLE_OUTPUT_MP4.len(),
        )
    } else {
        ("application/json", PARTIAL_JSON.to_vec(), 4096)
    };
    let json_body = |data: &str| -> Vec<u8> {
        let body = if ep.is_render_envelope() {
            format!(r#"{{"success":true,"data":{data}}}"#)
        } else {
            format!(r#"{{"code":0,"message":"ok","data":{data}}}"#)
        };
        response(200, "application/json", body.as_bytes())
    };
    match fault {
        Fault::Refused => world.resolver.refuse_next(
            if ep == Ep::DownloadCdn {
                CDN_HOST
            } else {
                API_HOST
            },
            1,
        ),
        Fault::Reset => proxy.on(
            label,
            1,
            Action::Reset {
                head: head(200, content_type, (!sse).then_some(full_len)),
                partial,
            },
        ),
        Fault::Stall => proxy.on(label, 1, Action::Stall),
        Fault::Status500 => world.sim.fail_next(ep.sim(), 1, Failure::Status(500)),
        Fault::PlainText502 => world.sim.fail_next(
            ep.sim(),
            1,
            Failure::PlainText {
                status: 502,
                body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
            },
        ),
        Fault::RetryAfter503 => world.sim.fail_next(
            ep.sim(),
            1,
            Failure::RetryAfter {
                status: 503,
                secs: RETRY_AFTER_SECS,
            },
        ),
        Fault::RateLimited429 => world.sim.fail_next(
            ep.sim(),
            1,
            Failure::RetryAfter {
                status: 429,
                secs: RETRY_AFTER_SECS,
            },
        ),
        Fault::Code1001 => match ep {
            // Tokens are not involved on these: the answer itself says 1001.
            Ep::AnonymousToken | Ep::DownloadCdn => world.sim.fail_next(
                ep.sim(),
                1,
                Failure::Code {
                    http: 401,
                    code: 1001,
                },
            ),
            // The real thing: the token the client holds is now expired.
            _ => world.sim.expire_tokens(),
        },
        Fault::Truncated => proxy.on(
            label,
            1,
            Action::Truncated {
                head: head(200, content_type, Some(full_len)),
                partial,
            },
        ),
        Fault::InvalidJson => {
            let bytes = if sse {
                response(200, "text/event-stream", b"data: {nope, not json\n\n")
            } else {
                response(200, "application/json", br#"{"code":0,"data":{nope}}"#)
            };
            proxy.on(label, 1, Action::Respond(bytes));
        }
        Fault::WrongShape => {
            let bytes = if sse {
                response(
                    200,
                    "text/event-stream",
                    b"data: {\"unexpected\":[1,2,3]}\n\n",
                )
            } else {
                json_body(r#""a string where an object belongs""#)
            };
            proxy.on(label, 1, Action::Respond(bytes));
        }
        Fault::Oversized => {
            if sse {
                // One line that never ends.
                let mut head = head(200, "text/event-stream", None);
                head.push_str("data: ");
                proxy.on(
                    label,
                    1,
                    Action::Endless {
                        head,
                        unit: vec![b'a'; 16 * 1024],
                    },
                );
            } else {
                // Four times the cap, with no Content-Length to warn about it.
                let mut body = br#"{"code":0,"message":"ok","data":""#.to_vec();
                body.extend(std::iter::repeat_n(b'a', 4 * BODY_CAP));
                body.extend_from_slice(br#""}"#);
                let mut bytes = head(200, "application/json", None).into_bytes();
                bytes.extend_from_slice(&body);
                proxy.on(label, 1, Action::Respond(bytes));
            }
        }
    }
}

fn label_of(err: &Error) -> String {
    match err {
        Error::Http { status, .. } => format!("Http {status}"),
        Error::Api { code, .. } => format!("Api {code}"),
        Error::Timeout { kind, .. } => format!("Timeout({kind:?})"),
        Error::Network { .. } => "Network".into(),
        Error::Unconfirmed { cause, .. } => format!("Unconfirmed: {}", label_of(cause)),
        Error::Connect { .. } => "Connect".into(),
        Error::Decode { .. } => "Decode".into(),
        Error::ResponseTooLarge { .. } => "ResponseTooLarge".into(),
        Error::Unauthorized { .. } => "Unauthorized".into(),
        Error::RateLimited { .. } => "RateLimited".into(),
        Error::StreamDisconnected { .. } => "StreamDisconnected".into(),
        Error::Rejected { .. } => "Rejected".into(),
        other => support::variant_of(other),
    }
}

/// Runs the endpoint's call once. Errors come back as (label, the error) after checking that
/// no token leaked into them.
async fn act(world: &World, ep: Ep, prepared: &Prepared) -> Result<(), (String, String)> {
    let client = &world.client;
    let fail = |prefix: &str, err: Error| {
        (
            format!("{prefix}{}", label_of(&err)),
            format!("{err} / {err:?}"),
        )
    };
    let session = || prepared.session.as_ref().expect("a session");
    let job = || prepared.job.as_ref().expect("a render job");
    let export = || prepared.export.as_ref().expect("a finished render");
    match ep {
        Ep::AnonymousToken | Ep::Credits => client.credits().await.map(drop),
        Ep::CreateSession => client.create_session().await.map(drop),
        Ep::Upload => client
            .upload(session(), &[prepared.clip.as_ref().unwrap()])
            .await
            .map(drop),
        Ep::RunSse => {
            let mut stream = client
                .send_message_with(session(), "remove the person", &world.message_options())
                .await
                .map_err(|err| fail("", err))?;
            while let Some(event) = stream.next().await {
                event.map_err(|err| fail("stream: ", err))?;
            }
            Ok(())
        }
        Ep::State => client.state(session()).await.map(drop),
        Ep::RenderSubmit => {
            client
                .submit_render(
                    &RenderJob::new(session()),
                    prepared.draft.as_ref().unwrap(),
                    &RenderOptions::default(),
                )
                .await
        }
        Ep::RenderStatus => client.render_status(job()).await.map(drop),
        Ep::Cancel => client.cancel_render(job()).await,
        Ep::DownloadCdn | Ep::DownloadFallback => client
            .download(export(), prepared.out.as_ref().unwrap())
            .await
            .map(drop),
    }
    .map_err(|err| fail("", err))
}

/// Runs one row; returns the outcome and any broken invariant.
async fn run_row(ep: Ep, fault: Fault) -> (Outcome, Vec<String>) {
    let world = World::for_row(ep, fault).await;
    let prepared = prepare(&world, ep).await;
    let proxy = world.proxy(ep);
    let label = ep.label();
    let sent_before = proxy.seen(label);
    let intercepted_before = proxy.intercepted(label);
    let sim_before = world.sim.request_count(ep.sim());
    let tokens_before = world.api.seen("anonymous-token");
    let fallback_before = world.api.seen("render-download");
    arm(&world, ep, fault);
    let result = act(&world, ep, &prepared).await;

    let mut problems = Vec::new();
    let sent = proxy.seen(label) - sent_before;
    let intercepted = proxy.intercepted(label) - intercepted_before;
    let sim_seen = world.sim.request_count(ep.sim()) - sim_before;
    if sent != sim_seen + intercepted {
        problems.push(format!(
            "count mismatch: proxy saw {sent}, simulator {sim_seen} + proxy faults {intercepted}"
        ));
    }
    let token_calls = world.api.seen("anonymous-token") - tokens_before;
    let outcome = Outcome {
        result: match &result {
            Ok(()) => "ok".to_string(),
            Err((label, _)) => label.clone(),
        },
        sent,
        refused: world.resolver.refused(),
        reauth: if ep == Ep::AnonymousToken {
            0
        } else {
            token_calls
        },
        // A replay that came at least the Retry-After after the request before it. Not the
        // call's elapsed time: on a busy machine a call that never waited can take a second.
        waited: matches!(fault, Fault::RetryAfter503 | Fault::RateLimited429)
            && proxy.arrivals(label)[sent_before..].windows(2).any(|pair| {
                pair[1] - pair[0] >= Duration::from_millis(RETRY_AFTER_SECS * 1000 - 100)
            }),
        fallback: ep == Ep::DownloadCdn && world.api.seen("render-download") > fallback_before,
    };

    // Never charge twice: a POST that does work goes out a second time only when the server
    // refused the first one before doing anything. A render submission carries the client's
    // idempotency key (its id), so it may go out again, but must make one render at most.
    if ep == Ep::RenderSubmit {
        let renders = world.sim.render_ids().len();
        if renders > 1 {
            problems.push(format!("{renders} renders were made"));
        }
    } else if ep.does_work()
        && sent > 1
        && !matches!(fault, Fault::Code1001 | Fault::RateLimited429)
    {
        problems.push(format!("{} was sent {sent} times", ep.label()));
    }
    if let Err((_, text)) = &result {
        if text.contains("nmv_usr_") {
            problems.push(format!("the error shows a token: {text}"));
        }
    }
    if let Some(out) = &prepared.out {
        match &result {
            Ok(()) => match std::fs::read(out) {
                Ok(bytes) if bytes == SAMPLE_OUTPUT_MP4 => {}
                Ok(bytes) => problems.push(format!(
                    "downloaded file has {} bytes, expected {}",
                    bytes.len(),
                    SAMPLE_OUTPUT_MP4.len()
                )),
                Err(err) => problems.push(format!("no downloaded file: {err}")),
            },
            Err(_) if out.exists() => problems.push("a failed download left a file".into()),
            Err(_) => {}
        }
        let leftovers = leftover_files(out.parent().unwrap(), out);
        if !leftovers.is_empty() {
            problems.push(format!("temporary files left behind: {leftovers:?}"));
        }
    }
    (outcome, problems)
}

fn leftover_files(dir: &Path, target: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path != target)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The matrix and its document

fn render_table(observed: &[(Ep, Fault, Outcome)]) -> String {
    let mut out = String::new();
    out.push_str(
        "Each cell: what the SDK call returned, then (in parentheses) how many requests for that \
         endpoint reached the server. `—`: not applicable (a download body is not JSON).\n\n",
    );
    out.push_str("| endpoint |");
    for fault in FAULTS {
        out.push_str(&format!(" {} |", fault.title()));
    }
    out.push_str("\n|---|");
    for _ in FAULTS {
        out.push_str("---|");
    }
    out.push('\n');
    for ep in ENDPOINTS {
        out.push_str(&format!("| {} |", ep.title()));
        for fault in FAULTS {
            let cell = observed
                .iter()
                .find(|(e, f, _)| *e == ep && *f == fault)
                .map_or_else(|| "—".to_string(), |(_, _, o)| o.cell());
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

fn doc_path() -> PathBuf {
    Path::new(env!("NEMO_VIDEO_DIR")).join("docs/reliability.md")
}

fn check_doc(table: &str) {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (Some(begin), Some(end)) = (doc.find(DOC_BEGIN), doc.find(DOC_END)) else {
        panic!(
            "{} has no {DOC_BEGIN} / {DOC_END} markers; add them, then run \
             `UPDATE_RELIABILITY_DOC=1 cargo test -p nemo-video-suite --test fault_matrix`",
            path.display()
        );
    };
    let current = &doc[begin + DOC_BEGIN.len()..end];
    let wanted = format!("\n{table}");
    if current == wanted {
        return;
    }
    if std::env::var_os("UPDATE_RELIABILITY_DOC").is_some() {
        let updated = format!("{}{DOC_BEGIN}{wanted}{}", &doc[..begin], &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "the fault matrix in {} is out of date; run \
         `UPDATE_RELIABILITY_DOC=1 cargo test -p nemo-video-suite --test fault_matrix` to rewrite it.\n\
         --- in the file ---\n{current}\n--- observed ---\n{wanted}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let rows = rows();
    // Unordered, so a row waiting out a stall does not hold back the rows behind it; sorted
    // back into table order below.
    let mut results: Vec<(usize, (Outcome, Vec<String>))> =
        futures_util::stream::iter(rows.iter().enumerate())
            .map(|(index, row)| {
                let (ep, fault) = (row.ep, row.fault);
                async move {
                    // A task of its own: a panic or a hang is reported for this row, not the run.
                    let task = tokio::spawn(tokio::time::timeout(ROW_LIMIT, run_row(ep, fault)));
                    let result = match task.await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => (
                            base("HUNG", 0),
                            vec![format!("no outcome in {ROW_LIMIT:?}")],
                        ),
                        Err(join) => (base("PANIC", 0), vec![format!("panicked: {join}")]),
                    };
                    (index, result)
                }
            })
            .buffer_unordered(24)
            .collect()
            .await;
    results.sort_by_key(|(index, _)| *index);
    let results = results.into_iter().map(|(_, result)| result);

    let mut failures = Vec::new();
    let mut observed = Vec::new();
    for (row, (outcome, problems)) in rows.iter().zip(results) {
        if outcome != row.expected {
            failures.push(format!(
                "{} × {}: expected {:?}, observed {:?}",
                row.ep.label(),
                row.fault.title(),
                row.expected,
                outcome
            ));
        }
        for problem in problems {
            failures.push(format!(
                "{} × {}: {problem}",
                row.ep.label(),
                row.fault.title()
            ));
        }
        observed.push((row.ep, row.fault, outcome));
    }
    eprintln!(
        "fault matrix: {} rows in {:?}",
        rows.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows differ from the documented outcome:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    check_doc(&render_table(&observed));
}

// ---------------------------------------------------------------------------------------------
// Bounded memory: endless bodies end in a typed error, quickly, whatever the default caps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_json_body_hits_the_default_cap_quickly() {
    let _serial = SERIAL.lock().await;
    let world = World::with(
        nemo_video::DEFAULT_MAX_RESPONSE_BYTES,
        Renders::Timed,
        CALM_TIMEOUT,
    )
    .await;
    world.warm.credits().await.unwrap();
    world.api.on(
        "credits",
        1,
        Action::Endless {
            head: head(200, "application/json", None) + r#"{"code":0,"data":""#,
            unit: vec![b'a'; 64 * 1024],
        },
    );
    let started = Instant::now();
    // The error, not a timeout, proves the cap ended the call; the limits only catch a hang.
    let err = tokio::time::timeout(Duration::from_secs(60), world.client.credits())
        .await
        .expect("an endless body must not hang the call")
        .unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { limit } if limit == 64 * 1024 * 1024),
        "{err:?}"
    );
    assert_eq!(world.api.seen("credits"), 2, "not retried");
    eprintln!(
        "endless JSON body: ResponseTooLarge after {:?}, {} MiB written by the server",
        started.elapsed(),
        world.api.endless_bytes() / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_is_refused_before_reading_it() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    world.warm.credits().await.unwrap();
    world.api.on(
        "credits",
        1,
        Action::Endless {
            head: head(200, "application/json", Some(1 << 40)),
            unit: vec![b' '; 64 * 1024],
        },
    );
    let err = world.client.credits().await.unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { limit: BODY_CAP }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_sse_line_ends_the_stream_at_the_default_event_cap() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    world.warm.credits().await.unwrap();
    let session = world.warm.create_session().await.unwrap();
    world.api.on(
        "run_sse",
        1,
        Action::Endless {
            head: head(200, "text/event-stream", None) + "data: ",
            unit: vec![b'a'; 64 * 1024],
        },
    );
    let started = Instant::now();
    // Default limits: 16 MiB per event.
    let mut stream = world
        .client
        .send_message(&session, "remove the person")
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = stream.next().await {
            if let Err(err) = event {
                return Some(err);
            }
        }
        None
    })
    .await
    .expect("an endless line must not hang the stream");
    let err = outcome.expect("the stream ends with an error");
    assert!(
        matches!(&err, Error::StreamDisconnected { detail, .. } if detail.contains("16777216")),
        "{err:?}"
    );
    assert_eq!(world.api.seen("run_sse"), 1, "never re-sent");
    eprintln!(
        "endless SSE line: error after {:?}, {} MiB written by the server",
        started.elapsed(),
        world.api.endless_bytes() / (1024 * 1024)
    );
}

// ---------------------------------------------------------------------------------------------
// Downloads: a body that stalls half-way ends in a timeout and leaves nothing behind

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_that_stalls_mid_body_times_out_and_leaves_no_file() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let prepared = prepare(&world, Ep::DownloadFallback).await;
    let half = SAMPLE_OUTPUT_MP4.len() / 2;
    world.api.on(
        "render-download",
        1,
        Action::StallMidBody {
            head: head(200, "video/mp4", Some(SAMPLE_OUTPUT_MP4.len())),
            partial: SAMPLE_OUTPUT_MP4[..half].to_vec(),
        },
    );
    let out = prepared.out.as_ref().unwrap();
    // StreamIdle (checked below) says which limit ended it; this one only catches a hang.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        world
            .client
            .download(prepared.export.as_ref().unwrap(), out),
    )
    .await
    .expect("a stalled body must not hang the download")
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: nemo_video::TimeoutKind::StreamIdle,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!out.exists(), "nothing at the target");
    assert!(leftover_files(out.parent().unwrap(), out).is_empty());
}
