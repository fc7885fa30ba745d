//! In-memory state of the simulated service: users, tokens, sessions, renders, faults, and the
//! request log. One mutex guards it all; no lock is ever held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Tokio's clock, so tests that pause time (`tokio::time::pause`) also fast-forward renders
// and token expiry.
use tokio::time::Instant;

use serde_json::Value;

use super::log::{RequestLog, Tally, DEFAULT_LOG_SIZE};
use super::{Endpoint, Failure, StatusShape};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) event_pacing: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) work_duration: Duration,
    pub(crate) render_time: Duration,
    pub(crate) manual_renders: bool,
    pub(crate) initial_credits: u64,
    pub(crate) credits_per_edit: u64,
    pub(crate) token_lifetime: Duration,
    pub(crate) token_quota_window: Duration,
    pub(crate) text_less_every: usize,
    pub(crate) status_shape: StatusShape,
    pub(crate) max_upload_bytes: u64,
    pub(crate) transfer_pace: Option<Duration>,
    pub(crate) token_answer_delay: Duration,
    pub(crate) request_log_size: usize,
    pub(crate) tls: super::tls::TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            event_pacing: Duration::from_millis(150),
            heartbeat_interval: Duration::from_secs(1),
            work_duration: Duration::from_secs(2),
            render_time: Duration::from_secs(3),
            manual_renders: false,
            initial_credits: 100,
            credits_per_edit: 5,
            token_lifetime: Duration::from_secs(7 * 24 * 3600),
            token_quota_window: Duration::from_secs(7 * 24 * 3600),
            text_less_every: 3,
            status_shape: StatusShape::SuccessData,
            max_upload_bytes: 500 * 1024 * 1024,
            transfer_pace: None,
            token_answer_delay: Duration::ZERO,
            request_log_size: DEFAULT_LOG_SIZE,
            tls: super::tls::TlsConfig::default(),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) base_url: String,
    pub(crate) cdn_base_url: String,
    /// The stand-in for the web site (registration and claim pages).
    pub(crate) web_url: String,
    /// What the HTTPS listener counts (see `tls.rs`).
    pub(crate) tls: super::tls::TlsState,
    inner: Mutex<Inner>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        base_url: String,
        cdn_base_url: String,
        web_url: String,
    ) -> Self {
        let inner = Inner::new(&config);
        Shared {
            config,
            base_url,
            cdn_base_url,
            web_url,
            tls: super::tls::TlsState::default(),
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the whole simulator down with it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with the state locked. Never call it from inside `f`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.lock())
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) tokens: HashMap<String, Token>,
    /// client id → the token it was last issued.
    pub(crate) client_tokens: HashMap<String, String>,
    /// client id → when it was last issued a token (one per client id per quota window).
    pub(crate) client_issued: HashMap<String, Instant>,
    /// client id → its user, kept across token expiry so sessions and credits survive re-auth.
    pub(crate) client_users: HashMap<String, String>,
    pub(crate) users: HashMap<String, User>,
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) renders: HashMap<String, Render>,
    pub(crate) render_clock: RenderClock,
    pub(crate) faults: Faults,
    pub(crate) credit_override: Option<u64>,
    /// The most recent requests.
    pub(crate) log: RequestLog,
    /// Counts of every request and of the work accepted, kept apart from the bounded log.
    pub(crate) tally: Tally,
}

impl Inner {
    fn new(config: &Config) -> Self {
        Inner {
            render_clock: RenderClock::new(config.manual_renders),
            log: RequestLog::new(config.request_log_size),
            ..Inner::default()
        }
    }

    /// Back to the state of a simulator just started with `config`; the log's numbering
    /// goes on.
    pub(crate) fn reset(&mut self, config: &Config) {
        let mut log = std::mem::replace(&mut self.log, RequestLog::new(0));
        log.clear();
        *self = Inner {
            log,
            ..Inner::new(config)
        };
    }

    pub(crate) fn expire_all_tokens(&mut self) {
        for token in self.tokens.values_mut() {
            token.revoked = true;
        }
        self.client_tokens.clear();
        self.client_issued.clear();
    }

    /// The phase of render `id` of `user` now, if there is one.
    pub(crate) fn render_phase(
        &self,
        id: &str,
        user: &str,
        render_time: Duration,
    ) -> Option<RenderPhase> {
        let now = self.render_clock.now();
        self.renders
            .get(id)
            .filter(|r| r.user_id == user)
            .map(|r| r.phase(now, render_time))
    }

    /// Takes one pending failure for `endpoint`, if any.
    pub(crate) fn take_failure(&mut self, endpoint: Endpoint) -> Option<Failure> {
        let queue = self.faults.failures.get_mut(&endpoint)?;
        let (remaining, failure) = queue.front_mut()?;
        let out = failure.clone();
        *remaining -= 1;
        if *remaining == 0 {
            queue.pop_front();
        }
        Some(out)
    }
}

#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) failures: HashMap<Endpoint, VecDeque<(usize, Failure)>>,
    pub(crate) drop_stream_after: Option<usize>,
    pub(crate) stall_stream: Option<(usize, Duration)>,
    pub(crate) error_stream_after: Option<(usize, String)>,
    pub(crate) text_less: Option<bool>,
    pub(crate) fail_next_render: Option<String>,
}

pub(crate) struct Token {
    pub(crate) user_id: String,
    pub(crate) expires: Instant,
    pub(crate) revoked: bool,
}

impl Token {
    pub(crate) fn is_valid(&self) -> bool {
        !self.revoked && Instant::now() < self.expires
    }
}

pub(crate) struct User {
    pub(crate) available: u64,
    pub(crate) frozen: u64,
}

pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) task_id: String,
    pub(crate) task_name: String,
    pub(crate) language: Option<String>,
    pub(crate) draft: Value,
    pub(crate) video_infos: Vec<Value>,
    pub(crate) generated_media: Vec<Value>,
    pub(crate) video_analyses: serde_json::Map<String, Value>,
    /// Edit turns so far (drives the deterministic text-less pattern).
    pub(crate) edit_turns: usize,
    /// Last numbers used in `track_N` and `seg_N` ids.
    pub(crate) last_track: u64,
    pub(crate) last_segment: u64,
    /// Set while a turn's stream runs: the service runs one turn per session at a time.
    pub(crate) turn_running: Arc<AtomicBool>,
}

/// Marks a session's turn over when its stream body goes (ended, or its connection closed).
pub(crate) struct TurnGuard(pub(crate) Arc<AtomicBool>);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RenderPhase {
    Pending,
    Processing(u8),
    Completed,
    Failed(String),
    Cancelled,
}

impl RenderPhase {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RenderPhase::Pending => "pending",
            RenderPhase::Processing(_) => "processing",
            RenderPhase::Completed => "completed",
            RenderPhase::Failed(_) => "failed",
            RenderPhase::Cancelled => "cancelled",
        }
    }

    pub(crate) fn progress(&self) -> u8 {
        match self {
            RenderPhase::Pending => 0,
            RenderPhase::Processing(p) => *p,
            RenderPhase::Completed => 100,
            RenderPhase::Failed(_) | RenderPhase::Cancelled => 0,
        }
    }
}

/// The time renders work by. Real (Tokio's clock, so a paused test clock pauses renders too)
/// plus every [`RenderClock::advance`]; with manual renders, only the advances.
pub(crate) struct RenderClock {
    started: Instant,
    manual: bool,
    advanced: Duration,
}

impl Default for RenderClock {
    fn default() -> Self {
        RenderClock::new(false)
    }
}

impl RenderClock {
    pub(crate) fn new(manual: bool) -> Self {
        RenderClock {
            started: Instant::now(),
            manual,
            advanced: Duration::ZERO,
        }
    }

    /// Render time since the simulator started.
    pub(crate) fn now(&self) -> Duration {
        let real = if self.manual {
            Duration::ZERO
        } else {
            self.started.elapsed()
        };
        real.saturating_add(self.advanced)
    }

    pub(crate) fn advance(&mut self, by: Duration) {
        self.advanced = self.advanced.saturating_add(by);
    }
}

pub(crate) struct Render {
    pub(crate) user_id: String,
    /// The render clock's reading at submit.
    pub(crate) submitted: Duration,
    pub(crate) fail_with: Option<String>,
    /// Set once the render was cancelled, with the progress it had reached.
    pub(crate) cancelled: bool,
}

impl Render {
    /// The phase at render clock reading `now`: a pure function of the render time passed.
    pub(crate) fn phase(&self, now: Duration, render_time: Duration) -> RenderPhase {
        if self.cancelled {
            return RenderPhase::Cancelled;
        }
        let elapsed = now.saturating_sub(self.submitted).as_secs_f64();
        let total = render_time.as_secs_f64().max(0.001);
        let fraction = elapsed / total;
        if let Some(message) = &self.fail_with {
            if fraction >= 0.5 {
                return RenderPhase::Failed(message.clone());
            }
        }
        if fraction >= 1.0 {
            RenderPhase::Completed
        } else if fraction < 0.15 {
            RenderPhase::Pending
        } else {
            RenderPhase::Processing((fraction * 100.0).clamp(1.0, 99.0) as u8)
        }
    }
}

/// A fresh random hex string of `len` characters (at most 32).
pub(crate) fn random_hex(len: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(len);
    s
}

/// A 19-digit decimal string (always above 2^53, like the service's session ids).
pub(crate) fn random_session_id() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    let low = 1_000_000_000_000_000_000u128;
    let span = 9_000_000_000_000_000_000u128;
    (low + n % span).to_string()
}

/// Seconds since the Unix epoch, with sub-second precision (ADK event timestamps).
pub(crate) fn unix_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `SystemTime::now() + after` as ISO 8601 UTC, e.g. `2025-01-31T12:00:00Z`.
pub(crate) fn iso8601_after(after: Duration) -> String {
    let secs = SystemTime::now()
        .checked_add(after)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    iso8601(secs)
}

fn iso8601(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// FNV-1a, 64 bit: cheap, streaming, good enough to tell uploads apart.
#[derive(Clone, Copy)]
pub(crate) struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn session_ids_have_19_digits() {
        for _ in 0..100 {
            let id = random_session_id();
            assert_eq!(id.len(), 19, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_digit()));
            assert!(id.parse::<u64>().unwrap() > (1u64 << 53));
        }
    }
}
