//! One error type for everything the SDK does, and the retry policy each error implies.
//!
//! Policy, in short (the transport applies it; see the README's error table):
//!
//! | signal | variant | policy |
//! |---|---|---|
//! | body code 1001 or HTTP 401 | [`Error::Unauthorized`] | [`RetryPolicy::RefreshToken`]: new anonymous token, replay once |
//! | 1002 | [`Error::SessionNotFound`] | [`RetryPolicy::NewSession`]: surfaced, never replayed |
//! | 2001 | [`Error::NoCredits`] | [`RetryPolicy::Never`] |
//! | 4001 | [`Error::UnsupportedFile`] | [`RetryPolicy::Never`] |
//! | 4002 | [`Error::FileTooLarge`] | [`RetryPolicy::Never`] |
//! | HTTP 400 "missing X-Client-Id" | [`Error::MissingClientId`] | [`RetryPolicy::RegenerateClientId`] |
//! | HTTP 402 | [`Error::ExportBlocked`] | [`RetryPolicy::Never`] |
//! | HTTP 429 | [`Error::RateLimited`] | [`RetryPolicy::WaitThenRetryOnce`] (server's wait, else 30 s) |
//! | HTTP 408/409/5xx | [`Error::Http`] | [`RetryPolicy::Backoff`] for requests safe to replay |
//! | connection refused, name lookup failed, connect timed out, other connect failure | [`Error::Connect`] ([`ConnectFailure`]) | [`RetryPolicy::Backoff`] for every request: it never reached the service |
//! | TLS handshake failed | [`Error::Connect`] ([`ConnectFailure::Tls`]) | [`RetryPolicy::Never`]: a certificate or `http`/`https` mix-up does not fix itself |
//! | no answer within the request timeout, connection lost | [`Error::Timeout`], [`Error::Network`] | [`RetryPolicy::Backoff`] for requests safe to replay |
//!
//! "Backoff" means at most [`RetryConfig::max_retries`](crate::RetryConfig::max_retries)
//! retries after the first attempt (default 2, so 3 attempts in all), 0.5 s doubling to at most
//! 8 s between them. A connect failure therefore costs at most 3 connection attempts per call.
//!
//! Messages are written for the person who reads them: what happened, then what to do.
//! No message ever contains a token.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Wait used for HTTP 429 when the server names no wait: 30 s, as the service documents.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);

/// Supported upload formats (lower-case file extensions), as the service documents them.
pub const SUPPORTED_FORMATS: &[&str] = &[
    "mp4", "mov", "avi", "webm", "mkv", "jpg", "png", "gif", "webp", "mp3", "wav", "m4a", "aac",
];

/// The `Result` type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A business code the service puts in a response body (`{"code": N, ...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiCode {
    /// 1001: the token is invalid or expired.
    TokenExpired,
    /// 1002: the session does not exist (or belongs to someone else).
    SessionNotFound,
    /// 2001: the account has no credits left.
    NoCredits,
    /// 4001: the file type is not supported.
    UnsupportedFile,
    /// 4002: the file is too large.
    FileTooLarge,
    /// Any other non-zero code, kept as sent.
    Other(i64),
}

impl ApiCode {
    /// Maps a body code to its meaning; `0` (success) is not an error and gives `None`.
    pub fn from_code(code: i64) -> Option<ApiCode> {
        Some(match code {
            0 => return None,
            1001 => ApiCode::TokenExpired,
            1002 => ApiCode::SessionNotFound,
            2001 => ApiCode::NoCredits,
            4001 => ApiCode::UnsupportedFile,
            4002 => ApiCode::FileTooLarge,
            other => ApiCode::Other(other),
        })
    }

    /// The numeric code as the service sends it.
    pub fn as_i64(self) -> i64 {
        match self {
            ApiCode::TokenExpired => 1001,
            ApiCode::SessionNotFound => 1002,
            ApiCode::NoCredits => 2001,
            ApiCode::UnsupportedFile => 4001,
            ApiCode::FileTooLarge => 4002,
            ApiCode::Other(code) => code,
        }
    }
}

impl fmt::Display for ApiCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_i64())
    }
}

/// What a caller (or the transport's retry loop) should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// Retrying cannot help: the person has to act (top up, pick another file, ...).
    Never,
    /// A transient failure: retry with exponential backoff and jitter, but only for requests
    /// that are safe to replay (or that never reached the server).
    Backoff,
    /// The server asked to wait: wait this long, then retry once.
    WaitThenRetryOnce(Duration),
    /// The token was rejected: fetch a new one, then replay the request once.
    RefreshToken,
    /// The session is gone: create a new session (never done silently, since the timeline
    /// would be lost).
    NewSession,
    /// The anonymous-token call lacked a client id: generate a new one, then retry once.
    RegenerateClientId,
    /// A request that does work (a message, an upload, a new session) failed after it may
    /// have reached the service. Sending it again could repeat the work and charge credits
    /// twice: read the session state first ([`NemoClient::reconcile_turn`](crate::NemoClient::reconcile_turn),
    /// [`NemoClient::state`](crate::NemoClient::state)) and send it again only if it did not
    /// land.
    Reconcile,
}

/// What the service said alongside an error: HTTP status, body code and text, request id.
///
/// Carried by every error that came from a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiInfo {
    /// HTTP status of the response.
    pub http_status: Option<u16>,
    /// Body code, when the body carried a non-zero one.
    pub code: Option<i64>,
    /// The service's own text (`message`, `msg`, `error` or `detail`), trimmed to 300 chars.
    pub message: Option<String>,
    /// The request id from the response headers, for support requests.
    pub request_id: Option<String>,
    /// The wait the server asked for (`retry-after-ms` or `Retry-After`), when it did.
    pub retry_after: Option<Duration>,
}

impl ApiInfo {
    fn suffix(&self) -> String {
        let mut parts = Vec::new();
        if let Some(message) = self.message.as_deref().filter(|m| !m.is_empty()) {
            parts.push(format!("server said: {message:?}"));
        }
        if let Some(status) = self.http_status {
            parts.push(format!("HTTP {status}"));
        }
        if let Some(code) = self.code {
            parts.push(format!("code {code}"));
        }
        if let Some(id) = &self.request_id {
            parts.push(format!("request id {id}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// Where a timeout happened. (A connection that could not be established in time is
/// [`Error::Connect`] with [`ConnectFailure::TimedOut`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Waiting for one request's response (the request timeout, per attempt).
    Request,
    /// No bytes arrived on a stream for the idle limit.
    StreamIdle,
    /// A stream ran past its total limit.
    StreamTotal,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Request => "waiting for the response",
            TimeoutKind::StreamIdle => "waiting for the next stream event",
            TimeoutKind::StreamTotal => "streaming (total time limit)",
        })
    }
}

/// Why a connection to the service could not be established. In every case the request never
/// reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The host name could not be resolved (DNS): a typo in the base URL, or no network.
    NameLookup,
    /// The host refused the connection: nothing listens on that port (or a firewall rejects
    /// it).
    Refused,
    /// The connection was not established within the connect timeout: the host is
    /// unreachable, or a firewall drops the packets.
    TimedOut {
        /// The connect timeout that ran out; `None` when the SDK does not know it (a
        /// `reqwest::Client` passed to
        /// [`NemoClientBuilder::http_client`](crate::NemoClientBuilder::http_client)).
        after: Option<Duration>,
    },
    /// The TCP connection was made but the TLS handshake failed: a certificate the client
    /// does not trust, or an `https` URL pointing at a plain-HTTP port.
    Tls,
    /// Anything else (no route to the host, a proxy that refused the tunnel, ...).
    Other,
}

/// Every error this crate returns.
///
/// Match on the variant for the cases you handle; use [`Error::retry_policy`] and the `is_*`
/// accessors for the rest. New variants may be added in minor releases.
/// `Debug` leads with the message (what happened and what to do), so that an error returned
/// from `fn main() -> Result<(), nemo_video::Error>` reads as well as its `Display`; then the
/// chain of causes, and the variant (`Error::Http`), for logs.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Code 1001 or HTTP 401: the token is invalid or expired.
    #[error("the NemoVideo token was rejected as invalid or expired{}; {hint}", info.suffix())]
    Unauthorized {
        /// What to do about it.
        hint: &'static str,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// Code 1002: the session does not exist.
    #[error("session {} was not found{}; create a new session with `NemoClient::create_session`", session_id.as_deref().unwrap_or("(unknown)"), info.suffix())]
    SessionNotFound {
        /// The session id the request named, when known.
        session_id: Option<String>,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// Code 2001: no credits left.
    #[error("no credits left on this NemoVideo account{}; {}", info.suffix(), match register_url { Some(url) => format!("register at {url} to keep this project and get more credits"), None => "top up credits in your NemoVideo account".to_string() })]
    NoCredits {
        /// For anonymous users: the registration link that binds this anonymous account.
        register_url: Option<String>,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// Code 4001, or a local check before uploading: the file type is not supported.
    #[error("{} is not a supported file type{}; supported formats: {}", file_label(file.as_ref(), extension.as_deref()), info.as_deref().map(ApiInfo::suffix).unwrap_or_default(), SUPPORTED_FORMATS.join(", "))]
    UnsupportedFile {
        /// The local file, when the check was local.
        file: Option<PathBuf>,
        /// The extension that was refused, when known.
        extension: Option<String>,
        /// Response details when the server refused it.
        info: Option<Box<ApiInfo>>,
    },
    /// Code 4002, or a local check before uploading: the file is over the size limit.
    #[error("{} is too large{}{}; compress or trim it below the limit and try again", file_label(file.as_ref(), None), match (size, limit) { (Some(size), Some(limit)) => format!(" ({}, limit {})", byte_size(*size), byte_size(*limit)), (None, Some(limit)) => format!(" (limit {})", byte_size(*limit)), _ => String::new() }, info.as_deref().map(ApiInfo::suffix).unwrap_or_default())]
    FileTooLarge {
        /// The local file, when the check was local.
        file: Option<PathBuf>,
        /// Its size in bytes, when known.
        size: Option<u64>,
        /// The limit in bytes, when known.
        limit: Option<u64>,
        /// Response details when the server refused it.
        info: Option<Box<ApiInfo>>,
    },
    /// HTTP 400 on the anonymous-token call: the `X-Client-Id` header was missing or invalid.
    #[error("the service refused the client id when issuing an anonymous token{}; set NEMO_CLIENT_ID to a UUID or leave it unset to let the SDK generate one", info.suffix())]
    MissingClientId {
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// HTTP 402: the plan does not allow export (this is not about credits).
    #[error("export is blocked on the free plan{}; register or upgrade your plan to unlock export", info.suffix())]
    ExportBlocked {
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// HTTP 429: rate limited (anonymous tokens: one per client per 7 days).
    #[error("rate limited by the service{}; {}", info.suffix(), match retry_after { Some(wait) => format!("wait {} s and try again", wait.as_secs().max(1)), None => "wait a little and try again".to_string() })]
    RateLimited {
        /// How long the server asked to wait, when it said.
        retry_after: Option<Duration>,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// HTTP 429 on the anonymous-token call, again after the one wait and replay: the service
    /// issues one anonymous token per client id per 7 days, and this client id already has
    /// this week's. Waiting a few seconds does not help, so this is never retried.
    #[error("the service will not issue another anonymous token to client id {client_id} yet (one per client id per 7 days{}); reuse the credentials already issued to it (the same config dir, NEMO_CONFIG_DIR, or credential store), register an account, or set NEMO_TOKEN", info.suffix())]
    TokenQuotaExceeded {
        /// The client id whose weekly token was already issued.
        client_id: String,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// A non-zero body code this SDK does not know.
    #[error("the service returned error code {code}{}; check the request, or report the request id to NemoVideo if it persists", info.suffix())]
    Api {
        /// The code as sent.
        code: i64,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// The service refused the request (`{"success": false, "error": ...}`) with a success
    /// status and no code.
    #[error("the service refused the request{}; check the request (for a render: that the timeline has clips)", info.suffix())]
    Rejected {
        /// Response details; `message` holds the service's reason.
        info: Box<ApiInfo>,
    },
    /// A non-success HTTP status without a known body code.
    #[error("the service answered HTTP {status}{}; {}", info.suffix(), http_hint(*status))]
    Http {
        /// The HTTP status.
        status: u16,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// Could not connect to the service (name lookup, refused, connect timeout, TLS). The
    /// request never reached it.
    #[error("{}", connect_message(host, *port, failure, source.as_ref()))]
    Connect {
        /// The host that was tried (a name or an address).
        host: String,
        /// The port that was tried (the scheme's default when the URL names none).
        port: Option<u16>,
        /// What went wrong.
        failure: ConnectFailure,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A time limit ran out after the connection was made: no answer within the request
    /// timeout, or a stream that went silent or ran too long.
    #[error("{}", timeout_message(*kind, *after))]
    Timeout {
        /// Which limit.
        kind: TimeoutKind,
        /// The limit that ran out.
        after: Duration,
    },
    /// The connection failed after the request may have reached the service.
    #[error("the connection failed{}: {source}; {}", if *may_have_reached_server { " after the request was sent" } else { "" }, if *may_have_reached_server { "the request was not repeated automatically because it may already have been processed; check the session state before sending it again" } else { "try again" })]
    Network {
        /// Whether the service may have received (and acted on) the request.
        may_have_reached_server: bool,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A response could not be decoded into what was expected.
    #[error("could not read the service's response as {expected}: {detail}{}; this SDK may be out of date with the service, please report it", info.suffix())]
    Decode {
        /// What was expected, e.g. "a session".
        expected: &'static str,
        /// What went wrong.
        detail: String,
        /// Response details.
        info: Box<ApiInfo>,
    },
    /// A response body was larger than the configured cap.
    #[error("the service sent more than {limit} bytes where a small response was expected; raise `max_response_bytes` if this is legitimate")]
    ResponseTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// An argument failed a local check; nothing was sent.
    #[error("{message}")]
    InvalidInput {
        /// What was wrong and what to do.
        message: String,
    },
    /// The client's configuration is unusable.
    #[error("configuration error: {message}")]
    Config {
        /// What was wrong and what to do.
        message: String,
    },
    /// A local file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the SDK was doing, e.g. "could not read".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A request that does work (a message, an upload, a new session, a cancel) failed after
    /// it may have reached the service, so it was not sent again: the service may have done
    /// the work. [`Error::retry_policy`] is [`RetryPolicy::Reconcile`]: read the session state
    /// before sending it again. `cause` is what went wrong (a timeout, a lost connection, a
    /// 5xx, an unreadable answer).
    #[error("{request} may have reached the service, but {}; it was not sent again, because that could repeat the work and charge credits twice: read the session state to see what was done before sending it again", unconfirmed_cause(cause))]
    Unconfirmed {
        /// The request, e.g. `POST /run_sse`.
        request: String,
        /// What went wrong; also the error's `source()` (a `Box<Error>`, for `downcast_ref`).
        #[source]
        cause: Box<Error>,
    },
    /// A call to a credential or job store (a file, a database, Redis) failed. Nothing was
    /// sent to the service because of it, and nothing stored was dropped.
    #[error("could not {operation}: {}; check that the store is reachable and writable, then try again", root_cause(source.as_ref()))]
    Store {
        /// What the SDK was doing, e.g. "save the identity to the credential store".
        operation: &'static str,
        /// The store's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A call to a credential or job store did not finish within the SDK's time limit for
    /// store calls, or a lease another holder keeps did not come free within the longest
    /// time a holder may keep it.
    #[error("could not {operation} within {} (the store time limit); check that the store (a database, Redis) is reachable and not stuck, then try again", seconds(*after))]
    StoreTimeout {
        /// What the SDK was waiting for, e.g. "load the identity from the credential store".
        operation: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// The message stream ended before the agent finished.
    #[error("the agent's stream was cut off after {events_seen} event{}{}: {detail}; the message was not sent again (that could charge credits twice): read the session state to see what was done", if *events_seen == 1 { "" } else { "s" }, last_event_id.as_deref().map(|id| format!(" (last event id {id})")).unwrap_or_default())]
    StreamDisconnected {
        /// How many events arrived before the cut.
        events_seen: u64,
        /// The last event id seen, when the server sent ids.
        last_event_id: Option<String>,
        /// What happened.
        detail: String,
    },
    /// The agent reported an error inside the stream.
    #[error("the agent reported an error{}: {message}; rephrase the request or try again later", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Agent {
        /// The error code, when sent.
        code: Option<String>,
        /// The agent's message.
        message: String,
    },
    /// The session's timeline has nothing to export.
    #[error("session {session_id} has nothing to export yet: its timeline has no clips; upload a clip or ask the agent to add one, then export")]
    NothingToExport {
        /// The session.
        session_id: String,
    },
    /// The render job failed on the server.
    #[error("render {job_id} failed: {message}; check the timeline (NemoClient::state) and export again")]
    RenderFailed {
        /// The render job id.
        job_id: String,
        /// The server's error text.
        message: String,
    },
    /// Another process or worker holds the job's lease: it is running the job right now (or
    /// died less than a lease's time to live ago). Nothing was sent.
    #[error("job {job_id} is running elsewhere ({}); nothing was sent: wait for it to finish, or stop it and run the job again", holder.as_deref().unwrap_or("another process"))]
    JobRunningElsewhere {
        /// The job.
        job_id: String,
        /// Who holds it, as its store describes it (`pid 4242 on host worker-3`), when known.
        holder: Option<String>,
    },
    /// This worker lost the job's lease while running it (the job store did not confirm it
    /// within its time to live, or another worker saved the job meanwhile), and stopped so
    /// that two workers never run one job.
    #[error("job {job_id} was stopped here: {reason}; another worker may be running it now, otherwise run it again to resume")]
    JobLeaseLost {
        /// The job.
        job_id: String,
        /// What happened.
        reason: String,
    },
    /// The agent asked a question instead of editing. The job keeps the question; answer it
    /// ([`EditJob::answer`](crate::job::EditJob::answer)) and run the job again. The
    /// instruction is never sent again by itself.
    #[error("the agent asks before editing: {question:?}; answer it to go on (the instruction was not sent again)")]
    NeedsAnswer {
        /// The agent's question.
        question: String,
    },
    /// The agent's turn ended (with an error, when `agent_error` says so) and the timeline did
    /// not change. The instruction was not sent again, since a turn that ran may have been
    /// charged: send it once more deliberately
    /// ([`EditJob::send_again`](crate::job::EditJob::send_again)), or change it.
    #[error("the agent's turn ended{} without changing the timeline; the instruction was not sent again (a turn that ran may have been charged): send it again deliberately, or rephrase it", agent_error.as_deref().map(|e| format!(" with an error ({e})")).unwrap_or_default())]
    EditNotApplied {
        /// The error the agent reported, when it reported one.
        agent_error: Option<String>,
    },
    /// The render did not finish within the maximum wait.
    #[error("render {job_id} did not finish within {} s (last status: {last_status}); it may still finish: resume waiting with the job id", waited.as_secs())]
    RenderTimedOut {
        /// The render job id.
        job_id: String,
        /// The last status seen.
        last_status: String,
        /// How long the SDK waited.
        waited: Duration,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(current) = cause {
            write!(f, "\n  caused by: {current}")?;
            cause = current.source();
        }
        f.write_str("\n  (")?;
        self.variant(f)?;
        f.write_str(")")
    }
}

impl Error {
    /// The variant, with what tells its kinds apart: `Error::Http(503)`,
    /// `Error::Timeout(StreamIdle)`, `Error::Unconfirmed, cause Error::Timeout(Request)`.
    fn variant(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unauthorized { .. } => f.write_str("Error::Unauthorized"),
            Error::SessionNotFound { .. } => f.write_str("Error::SessionNotFound"),
            Error::NoCredits { .. } => f.write_str("Error::NoCredits"),
            Error::UnsupportedFile { .. } => f.write_str("Error::UnsupportedFile"),
            Error::FileTooLarge { .. } => f.write_str("Error::FileTooLarge"),
            Error::MissingClientId { .. } => f.write_str("Error::MissingClientId"),
            Error::ExportBlocked { .. } => f.write_str("Error::ExportBlocked"),
            Error::RateLimited { .. } => f.write_str("Error::RateLimited"),
            Error::TokenQuotaExceeded { .. } => f.write_str("Error::TokenQuotaExceeded"),
            Error::Api { code, .. } => write!(f, "Error::Api({code})"),
            Error::Rejected { .. } => f.write_str("Error::Rejected"),
            Error::Http { status, .. } => write!(f, "Error::Http({status})"),
            Error::Connect { .. } => f.write_str("Error::Connect"),
            Error::Timeout { kind, .. } => write!(f, "Error::Timeout({kind:?})"),
            Error::Network { .. } => f.write_str("Error::Network"),
            Error::Decode { .. } => f.write_str("Error::Decode"),
            Error::ResponseTooLarge { .. } => f.write_str("Error::ResponseTooLarge"),
            Error::InvalidInput { .. } => f.write_str("Error::InvalidInput"),
            Error::Config { .. } => f.write_str("Error::Config"),
            Error::Io { .. } => f.write_str("Error::Io"),
            Error::Unconfirmed { cause, .. } => {
                f.write_str("Error::Unconfirmed, cause ")?;
                cause.variant(f)
            }
            Error::Store { .. } => f.write_str("Error::Store"),
            Error::StoreTimeout { .. } => f.write_str("Error::StoreTimeout"),
            Error::StreamDisconnected { .. } => f.write_str("Error::StreamDisconnected"),
            Error::Agent { .. } => f.write_str("Error::Agent"),
            Error::NothingToExport { .. } => f.write_str("Error::NothingToExport"),
            Error::RenderFailed { .. } => f.write_str("Error::RenderFailed"),
            Error::JobRunningElsewhere { .. } => f.write_str("Error::JobRunningElsewhere"),
            Error::JobLeaseLost { .. } => f.write_str("Error::JobLeaseLost"),
            Error::NeedsAnswer { .. } => f.write_str("Error::NeedsAnswer"),
            Error::EditNotApplied { .. } => f.write_str("Error::EditNotApplied"),
            Error::RenderTimedOut { .. } => f.write_str("Error::RenderTimedOut"),
        }
    }
}

fn file_label(file: Option<&PathBuf>, extension: Option<&str>) -> String {
    match (file, extension) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(ext)) => format!("a .{ext} file"),
        (None, None) => "the file".to_string(),
    }
}

/// What went wrong with an unconfirmed request, in words that fit "… may have reached the
/// service, but <this>" (the cause's own advice, such as "try again", would be wrong here).
fn unconfirmed_cause(cause: &Error) -> String {
    match cause {
        Error::Timeout { after, .. } => {
            format!("no answer came within {} s", after.as_secs_f64())
        }
        Error::Network { source, .. } => format!("the connection failed ({source})"),
        Error::Http { status, info } => {
            format!("the service answered HTTP {status}{}", info.suffix())
        }
        Error::Decode { detail, .. } => format!("its answer could not be read ({detail})"),
        Error::ResponseTooLarge { limit } => {
            format!("its answer was larger than the {limit}-byte limit")
        }
        other => other.to_string(),
    }
}

fn http_hint(status: u16) -> &'static str {
    match status {
        408 | 409 | 500..=599 => "the service had a temporary problem, try again shortly",
        404 => "the endpoint or resource was not found; check the base URL (NEMO_API_BASE)",
        403 => "the token is not allowed to do this",
        _ => "check the request; report the request id to NemoVideo if it persists",
    }
}

/// A size for people: `1001 bytes`, `12.5 MB`, `500 MB` (decimal megabytes, as the service
/// states its limit).
fn byte_size(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{bytes} bytes")
    } else if bytes % 1_000_000 == 0 {
        format!("{} MB", bytes / 1_000_000)
    } else {
        format!("{:.1} MB", bytes as f64 / 1_000_000.0)
    }
}

/// A duration for people: `60 s`, `0.3 s`.
pub(crate) fn seconds(duration: Duration) -> String {
    if duration == Duration::MAX {
        return "an unlimited time".to_string();
    }
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{} s", millis / 1000)
    } else {
        format!("{} s", millis as f64 / 1000.0)
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn host_port(host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The innermost cause's text: the part of an error chain a person can act on
/// ("Connection refused", "invalid peer certificate: UnknownIssuer").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn connect_message(
    host: &str,
    port: Option<u16>,
    failure: &ConnectFailure,
    source: &(dyn std::error::Error + Send + Sync + 'static),
) -> String {
    let address = host_port(host, port);
    match failure {
        ConnectFailure::Refused => format!(
            "could not connect to {address}: the connection was refused (nothing is listening on port {}); check the base URL (NEMO_API_BASE) and that the service is running",
            port.map_or_else(|| "?".to_string(), |p| p.to_string())
        ),
        ConnectFailure::NameLookup => format!(
            "could not connect to {address}: the name lookup (DNS) for {host} failed ({}); check the host name in the base URL (NEMO_API_BASE) and the network connection",
            root_cause(source)
        ),
        ConnectFailure::TimedOut { after } => format!(
            "could not connect to {address}: no connection within {}; check the network connection, the base URL (NEMO_API_BASE), and any firewall or proxy in between",
            match after {
                Some(after) => format!("the connect timeout of {}", seconds(*after)),
                None => "the HTTP client's connect timeout".to_string(),
            }
        ),
        ConnectFailure::Tls => format!(
            "could not set up a secure (TLS) connection to {address}: {}; check that the base URL (NEMO_API_BASE) uses the right scheme (https or http) and that the server's certificate is trusted",
            root_cause(source)
        ),
        ConnectFailure::Other => format!(
            "could not connect to {address}: {}; check the network connection and the base URL (NEMO_API_BASE)",
            root_cause(source)
        ),
    }
}

fn timeout_message(kind: TimeoutKind, after: Duration) -> String {
    match kind {
        TimeoutKind::Request => format!(
            "the service did not answer within {} (the request timeout); it may be busy: try again later, or raise the request timeout",
            seconds(after)
        ),
        TimeoutKind::StreamIdle => format!(
            "the agent's stream went silent for {} (the idle limit); the service may be busy: try again later, or raise the idle timeout",
            seconds(after)
        ),
        TimeoutKind::StreamTotal => format!(
            "the agent's stream ran past its total limit of {}; try a smaller request, or raise the total timeout",
            seconds(after)
        ),
    }
}

impl Error {
    /// The body code the service sent, when the error came with one.
    pub fn api_code(&self) -> Option<ApiCode> {
        self.info()
            .and_then(|info| info.code)
            .and_then(ApiCode::from_code)
    }

    /// The HTTP status of the response behind this error, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::Unconfirmed { cause, .. } => cause.http_status(),
            _ => self.info().and_then(|info| info.http_status),
        }
    }

    /// The server's request id, when the response carried one (quote it in support requests).
    pub fn request_id(&self) -> Option<&str> {
        self.info().and_then(|info| info.request_id.as_deref())
    }

    /// The response details, for errors that came from a response.
    pub fn info(&self) -> Option<&ApiInfo> {
        match self {
            Error::Unauthorized { info, .. }
            | Error::SessionNotFound { info, .. }
            | Error::NoCredits { info, .. }
            | Error::MissingClientId { info }
            | Error::ExportBlocked { info }
            | Error::RateLimited { info, .. }
            | Error::TokenQuotaExceeded { info, .. }
            | Error::Api { info, .. }
            | Error::Http { info, .. }
            | Error::Rejected { info }
            | Error::Decode { info, .. } => Some(&**info),
            Error::UnsupportedFile { info, .. } | Error::FileTooLarge { info, .. } => {
                info.as_deref()
            }
            Error::Unconfirmed { cause, .. } => cause.info(),
            _ => None,
        }
    }

    /// What to do about this error. The transport follows it; callers can too.
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            Error::Unauthorized { .. } => RetryPolicy::RefreshToken,
            Error::SessionNotFound { .. } => RetryPolicy::NewSession,
            Error::MissingClientId { .. } => RetryPolicy::RegenerateClientId,
            Error::RateLimited { retry_after, .. } => {
                RetryPolicy::WaitThenRetryOnce(retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT))
            }
            Error::Http {
                status: 408 | 409 | 500..=599,
                ..
            } => RetryPolicy::Backoff,
            Error::Connect {
                failure: ConnectFailure::Tls,
                ..
            } => RetryPolicy::Never,
            Error::Connect { .. }
            | Error::Timeout { .. }
            | Error::Network { .. }
            | Error::Store { .. }
            | Error::StoreTimeout { .. } => RetryPolicy::Backoff,
            Error::Unconfirmed { .. } | Error::StreamDisconnected { .. } => RetryPolicy::Reconcile,
            _ => RetryPolicy::Never,
        }
    }

    /// True for 429, including [`Error::TokenQuotaExceeded`] (which is not transient).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. } | Error::TokenQuotaExceeded { .. }
        )
    }

    /// True for any time limit running out, connecting included (also behind
    /// [`Error::Unconfirmed`]).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::Connect {
                failure: ConnectFailure::TimedOut { .. },
                ..
            } => true,
            Error::Unconfirmed { cause, .. } => cause.is_timeout(),
            _ => false,
        }
    }

    /// True when a request that does work may have reached the service without its outcome
    /// being known ([`RetryPolicy::Reconcile`]): read the state before sending it again.
    pub(crate) fn needs_reconcile(&self) -> bool {
        self.retry_policy() == RetryPolicy::Reconcile
    }

    /// Why no connection could be made, for [`Error::Connect`].
    pub fn connect_failure(&self) -> Option<ConnectFailure> {
        match self {
            Error::Connect { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    /// True when the failure is worth retrying later (see [`Error::retry_policy`]).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self.retry_policy(),
            RetryPolicy::Backoff | RetryPolicy::WaitThenRetryOnce(_)
        )
    }

    /// True when the request certainly did not reach the service, so re-sending it cannot
    /// repeat work (or charge twice).
    pub fn never_reached_server(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Network {
                    may_have_reached_server: false,
                    ..
                }
        )
    }

    /// True when the service refused the request before doing any work, so re-sending it
    /// cannot repeat work: 1001/401, 429, and the missing-client-id 400.
    pub(crate) fn rejected_before_processing(&self) -> bool {
        matches!(
            self,
            Error::Unauthorized { .. } | Error::RateLimited { .. } | Error::MissingClientId { .. }
        )
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Error {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::Config {
            message: message.into(),
        }
    }

    /// A copy of this error for other callers that waited on the same operation (one token
    /// fetch shared by many requests). Errors are not `Clone` because some carry an
    /// underlying error; the copy keeps that error's text as its source.
    pub(crate) fn duplicate(&self) -> Error {
        fn described(source: &(dyn std::error::Error + Send + Sync)) -> Described {
            Described(source.to_string())
        }
        match self {
            Error::Unauthorized { hint, info } => Error::Unauthorized {
                hint,
                info: info.clone(),
            },
            Error::SessionNotFound { session_id, info } => Error::SessionNotFound {
                session_id: session_id.clone(),
                info: info.clone(),
            },
            Error::NoCredits { register_url, info } => Error::NoCredits {
                register_url: register_url.clone(),
                info: info.clone(),
            },
            Error::UnsupportedFile {
                file,
                extension,
                info,
            } => Error::UnsupportedFile {
                file: file.clone(),
                extension: extension.clone(),
                info: info.clone(),
            },
            Error::FileTooLarge {
                file,
                size,
                limit,
                info,
            } => Error::FileTooLarge {
                file: file.clone(),
                size: *size,
                limit: *limit,
                info: info.clone(),
            },
            Error::MissingClientId { info } => Error::MissingClientId { info: info.clone() },
            Error::ExportBlocked { info } => Error::ExportBlocked { info: info.clone() },
            Error::RateLimited { retry_after, info } => Error::RateLimited {
                retry_after: *retry_after,
                info: info.clone(),
            },
            Error::TokenQuotaExceeded { client_id, info } => Error::TokenQuotaExceeded {
                client_id: client_id.clone(),
                info: info.clone(),
            },
            Error::Api { code, info } => Error::Api {
                code: *code,
                info: info.clone(),
            },
            Error::Rejected { info } => Error::Rejected { info: info.clone() },
            Error::Http { status, info } => Error::Http {
                status: *status,
                info: info.clone(),
            },
            Error::Connect {
                host,
                port,
                failure,
                source,
            } => Error::Connect {
                host: host.clone(),
                port: *port,
                failure: *failure,
                // The innermost cause is what the message quotes.
                source: Box::new(Described(root_cause(source.as_ref()))),
            },
            Error::Timeout { kind, after } => Error::Timeout {
                kind: *kind,
                after: *after,
            },
            Error::Network {
                may_have_reached_server,
                source,
            } => Error::Network {
                may_have_reached_server: *may_have_reached_server,
                source: Box::new(described(source.as_ref())),
            },
            Error::Decode {
                expected,
                detail,
                info,
            } => Error::Decode {
                expected,
                detail: detail.clone(),
                info: info.clone(),
            },
            Error::ResponseTooLarge { limit } => Error::ResponseTooLarge { limit: *limit },
            Error::InvalidInput { message } => Error::InvalidInput {
                message: message.clone(),
            },
            Error::Config { message } => Error::Config {
                message: message.clone(),
            },
            Error::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Store { operation, source } => Error::Store {
                operation,
                source: Box::new(described(source.as_ref())),
            },
            Error::StoreTimeout { operation, after } => Error::StoreTimeout {
                operation,
                after: *after,
            },
            Error::Unconfirmed { request, cause } => Error::Unconfirmed {
                request: request.clone(),
                cause: Box::new(cause.duplicate()),
            },
            Error::StreamDisconnected {
                events_seen,
                last_event_id,
                detail,
            } => Error::StreamDisconnected {
                events_seen: *events_seen,
                last_event_id: last_event_id.clone(),
                detail: detail.clone(),
            },
            Error::Agent { code, message } => Error::Agent {
                code: code.clone(),
                message: message.clone(),
            },
            Error::NothingToExport { session_id } => Error::NothingToExport {
                session_id: session_id.clone(),
            },
            Error::RenderFailed { job_id, message } => Error::RenderFailed {
                job_id: job_id.clone(),
                message: message.clone(),
            },
            Error::JobRunningElsewhere { job_id, holder } => Error::JobRunningElsewhere {
                job_id: job_id.clone(),
                holder: holder.clone(),
            },
            Error::JobLeaseLost { job_id, reason } => Error::JobLeaseLost {
                job_id: job_id.clone(),
                reason: reason.clone(),
            },
            Error::NeedsAnswer { question } => Error::NeedsAnswer {
                question: question.clone(),
            },
            Error::EditNotApplied { agent_error } => Error::EditNotApplied {
                agent_error: agent_error.clone(),
            },
            Error::RenderTimedOut {
                job_id,
                last_status,
                waited,
            } => Error::RenderTimedOut {
                job_id: job_id.clone(),
                last_status: last_status.clone(),
                waited: *waited,
            },
        }
    }

    /// A store's own error, as [`Error::Store`].
    pub(crate) fn store(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Store {
            operation,
            source: source.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The text of an underlying error, kept when an error is copied (see `Error::duplicate`).
#[derive(Debug)]
struct Described(String);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Described {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leads_with_the_message_then_the_causes_and_the_variant() {
        let err = Error::Unconfirmed {
            request: "POST /run_sse".to_string(),
            cause: Box::new(Error::Timeout {
                kind: TimeoutKind::Request,
                after: Duration::from_secs(60),
            }),
        };
        let debug = format!("{err:?}");
        assert!(debug.starts_with(&err.to_string()), "{debug}");
        assert!(
            debug.contains("\n  caused by: the service did not answer within 60 s"),
            "{debug}"
        );
        assert!(
            debug.ends_with("\n  (Error::Unconfirmed, cause Error::Timeout(Request))"),
            "{debug}"
        );
    }
}
