//! Talking to the agent: `POST /run_sse`, read as a stream of typed [`AgentEvent`]s.
//!
//! Policy and defaults ([`MessageOptions`]):
//! - The message is sent once. It is re-sent only when it certainly never reached the server
//!   (connect error) or the server refused it before doing anything (1001, 429); a connection
//!   that drops mid-stream ends the stream with [`Error::StreamDisconnected`] (events seen, last
//!   event id) and is never retried, because a second send starts the work again and charges
//!   credits twice. Reconcile by reading the state ([`NemoClient::run_turn`] does).
//! - What the answer proves (the verdict): an error answer head (any HTTP status but 504, a
//!   body code such as 2001) means the agent never began, because its stream opens before it
//!   works: [`NemoClient::send_message`] returns that error as it is, and sending the message
//!   again cannot repeat work. No head within the idle limit, a 504, a connection lost before
//!   the head, or a success head that is not `text/event-stream` leave it unknown:
//!   [`Error::Unconfirmed`], to reconcile. A stream that opened means the turn ran, whatever
//!   its end.
//! - One turn per session at a time, as the service runs them (it refuses a second one): a
//!   second `send_message` on a session, from any client of this process, waits until the
//!   first one's stream ends or is dropped.
//! - Idle limit 10 minutes, reset by any bytes (heartbeats included) and also applied to the
//!   wait for the response head; total limit 15 minutes;
//!   an [`AgentEvent::StillWorking`] every 2 minutes without text, so an app can tell its user.
//! - An `{"error": ...}` frame, or an event with `errorCode`, ends the stream with
//!   [`Error::Agent`].
//! - Events larger than 16 MiB end the stream with an error instead of growing memory.
//! - Dropping the stream closes the connection.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use reqwest::header::{HeaderValue, ACCEPT};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::NemoClient;
use crate::error::{Error, Result, TimeoutKind};
use crate::events::{decode_frame, AgentEvent};
use crate::session::Session;
use crate::sse::{SseError, SseFrame, SseParser};
use crate::transport::Request;

/// Default idle limit: 10 minutes without a byte.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default total limit for one message: 15 minutes, as the service documents.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default interval for [`AgentEvent::StillWorking`]: 2 minutes without text.
pub const DEFAULT_STILL_WORKING_INTERVAL: Duration = Duration::from_secs(2 * 60);
/// Default cap on one SSE event: 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Limits for one message's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageOptions {
    /// Longest silence (no bytes at all) before [`TimeoutKind::StreamIdle`]. Default 10 min.
    pub idle_timeout: Duration,
    /// Longest whole stream before [`TimeoutKind::StreamTotal`]. Default 15 min.
    pub total_timeout: Duration,
    /// How often [`AgentEvent::StillWorking`] is emitted while no text arrives. Default 2 min.
    pub still_working_interval: Duration,
    /// Largest single event in bytes. Default 16 MiB.
    pub max_event_bytes: usize,
}

impl Default for MessageOptions {
    fn default() -> Self {
        MessageOptions {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            still_working_interval: DEFAULT_STILL_WORKING_INTERVAL,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

impl MessageOptions {
    /// Sets the idle limit (default 10 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the total limit (default 15 minutes).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// Sets the still-working interval (default 2 minutes).
    pub fn still_working_interval(mut self, interval: Duration) -> Self {
        self.still_working_interval = interval;
        self
    }

    /// Sets the largest event accepted (default 16 MiB).
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }
}

#[derive(Serialize)]
struct RunSseBody<'a> {
    app_name: &'static str,
    user_id: &'static str,
    session_id: &'a str,
    new_message: NewMessage<'a>,
}

#[derive(Serialize)]
struct NewMessage<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

/// The agent's events for one message. Implements
/// `futures_core::Stream<Item = Result<AgentEvent>>`; ends when the server closes the
/// stream. Dropping it closes the connection.
pub struct MessageStream {
    inner: Pin<Box<dyn Stream<Item = Result<AgentEvent>> + Send>>,
    /// Held for as long as the stream lives: the session's turn.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageStream").finish_non_exhaustive()
    }
}

impl Stream for MessageStream {
    type Item = Result<AgentEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl MessageStream {
    /// The next event, or `None` at the end of the stream (a convenience over
    /// `futures::StreamExt::next`).
    pub async fn next_event(&mut self) -> Option<Result<AgentEvent>> {
        std::future::poll_fn(|cx| self.inner.as_mut().poll_next(cx)).await
    }
}

impl NemoClient {
    /// Sends `text` to the agent and returns its events as a stream, with the default
    /// [`MessageOptions`].
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// use nemo_video::events::AgentEvent;
    /// let mut stream = client.send_message(&session, "add a title that says Hello").await?;
    /// while let Some(event) = stream.next_event().await {
    ///     match event? {
    ///         AgentEvent::Text(chunk) if !chunk.partial && !chunk.thought => println!("{}", chunk.text),
    ///         AgentEvent::StillWorking { .. } => println!("⏳ Still working..."),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_message(&self, session: &Session, text: &str) -> Result<MessageStream> {
        self.send_message_with(session, text, &MessageOptions::default())
            .await
    }

    /// Like [`send_message`](Self::send_message) with explicit limits.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// use std::time::Duration;
    /// use nemo_video::stream::MessageOptions;
    /// let options = MessageOptions::default().idle_timeout(Duration::from_secs(120));
    /// let stream = client.send_message_with(&session, "trim to 10 s", &options).await?;
    /// # let _ = stream; Ok(()) }
    /// ```
    pub async fn send_message_with(
        &self,
        session: &Session,
        text: &str,
        options: &MessageOptions,
    ) -> Result<MessageStream> {
        if text.trim().is_empty() {
            return Err(Error::invalid_input(
                "the message is empty; say what to change in the video",
            ));
        }
        let body = RunSseBody {
            app_name: "nemo_agent",
            user_id: "me",
            session_id: session.id(),
            new_message: NewMessage {
                parts: [TextPart { text }],
            },
        };
        let request = Request::post(&["run_sse"])
            .json(&body)?
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            // The stream has its own idle and total limits below; the idle limit also covers
            // the wait for the response head (a server that accepts and then says nothing).
            .timeout(None)
            .head_timeout(options.idle_timeout, TimeoutKind::StreamIdle)
            .session(session.id())
            .expect("the agent's event stream");
        // One turn per session at a time, as the service runs them: a second one waits here
        // until the first one's stream ends or is dropped.
        let turn = session_turn(self.config().base_url.as_str(), session.id())
            .lock_owned()
            .await;
        let opened_at = Instant::now();
        let raw = tokio::time::timeout(
            options.total_timeout,
            self.transport().open(request, "text/event-stream"),
        )
        .await
        .map_err(|_| {
            unconfirmed(Error::Timeout {
                kind: TimeoutKind::StreamTotal,
                after: options.total_timeout,
            })
        })?
        .map_err(refused_by_error_head)?;
        Ok(MessageStream {
            inner: Box::pin(event_stream(raw.response, options.clone(), opened_at)),
            _turn: Some(turn),
        })
    }
}

/// The verdict of an error answer head on `/run_sse`. The agent's stream opens (a `200
/// text/event-stream` head) before the agent begins, so any other answer head proves the
/// message was refused before any work: the error as it is, whose policy is not
/// "reconcile", so nothing waits for a turn that never ran. The exception is 504, which a
/// gateway sends when the service did not answer it in time: the service may have begun.
fn refused_by_error_head(err: Error) -> Error {
    match err {
        Error::Unconfirmed { cause, .. } if matches!(*cause, Error::Http { status, .. } if status != 504) => {
            *cause
        }
        other => other,
    }
}

/// The lock that keeps two turns off one session (keyed by API base URL and session id),
/// shared by every client in the process. Entries go when no turn holds or waits for them.
fn session_turn(base_url: &str, session_id: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Turns = HashMap<(String, String), Weak<tokio::sync::Mutex<()>>>;
    static TURNS: OnceLock<Mutex<Turns>> = OnceLock::new();
    let mut turns = TURNS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (base_url.to_string(), session_id.to_string());
    if let Some(lock) = turns.get(&key).and_then(Weak::upgrade) {
        return lock;
    }
    // Forget sessions nobody is using, so the map stays as small as the turns in flight
    // (amortised: only when it may have doubled).
    if turns.len() >= 64 && turns.len().is_power_of_two() {
        turns.retain(|_, lock| lock.strong_count() > 0);
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    turns.insert(key, Arc::downgrade(&lock));
    lock
}

/// `from + limit`, or a time too far away to matter when the limit is "no limit"
/// (`Duration::MAX`), where plain addition would overflow and panic.
fn deadline(from: Instant, limit: Duration) -> Instant {
    from.checked_add(limit)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A time limit that ran out after the message may have reached the service.
fn unconfirmed(cause: Error) -> Error {
    Error::Unconfirmed {
        request: "POST /run_sse".to_string(),
        cause: Box::new(cause),
    }
}

/// Turns the response body into events, enforcing the limits.
fn event_stream(
    mut response: reqwest::Response,
    options: MessageOptions,
    opened_at: Instant,
) -> impl Stream<Item = Result<AgentEvent>> + Send {
    async_stream::stream! {
        let mut parser = SseParser::with_max_event_size(options.max_event_bytes);
        let total_deadline = deadline(opened_at, options.total_timeout);
        let mut last_bytes = Instant::now();
        let mut last_news = Instant::now();
        let mut events_seen: u64 = 0;
        let mut last_event_id: Option<String> = None;
        let mut finished = false;
        // `Some(error)` when the stream ends with an error, `None` at a clean end.
        let ending: Option<Error> = 'read: loop {
            // Hand out every complete frame before reading more.
            loop {
                let frame = if finished { parser.finish() } else { parser.next_frame() };
                let Some(frame) = frame else { break };
                match frame {
                    Ok(SseFrame::Event(event)) => {
                        events_seen += 1;
                        if let Some(id) = event.id() {
                            last_event_id = Some(id.to_string());
                        }
                        for decoded in decode_frame(event.data()) {
                            match decoded {
                                AgentEvent::Error(error) => {
                                    break 'read Some(Error::Agent { code: error.code.clone(), message: error.message.clone() });
                                }
                                other => {
                                    if other.visible_text().is_some() {
                                        last_news = Instant::now();
                                    }
                                    yield Ok(other);
                                }
                            }
                        }
                    }
                    Ok(SseFrame::Comment(_)) => yield Ok(AgentEvent::Heartbeat),
                    Err(SseError::EventTooLarge { limit }) => {
                        break 'read Some(Error::StreamDisconnected {
                            events_seen,
                            last_event_id: last_event_id.clone(),
                            detail: format!(
                                "the service sent an event larger than the {limit}-byte limit, so the stream was closed; raise MessageOptions::max_event_bytes if such events are expected"
                            ),
                        });
                    }
                }
            }
            if finished {
                break 'read None;
            }
            let idle_deadline = deadline(last_bytes, options.idle_timeout);
            let still_deadline = deadline(last_news, options.still_working_interval);
            let wake = idle_deadline.min(total_deadline).min(still_deadline);
            tokio::select! {
                chunk = response.chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        last_bytes = Instant::now();
                        // reqwest hands out owned chunks: parse them where they lie.
                        parser.push_bytes(bytes);
                    }
                    Ok(None) => finished = true,
                    Err(err) => {
                        break 'read Some(Error::StreamDisconnected {
                            events_seen,
                            last_event_id: last_event_id.clone(),
                            detail: err.without_url().to_string(),
                        });
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    // The message was accepted (the stream began): whatever the agent did stands,
                    // so these say "reconcile", never "retry".
                    if now >= total_deadline {
                        break 'read Some(unconfirmed(Error::Timeout { kind: TimeoutKind::StreamTotal, after: options.total_timeout }));
                    }
                    if now >= idle_deadline {
                        break 'read Some(unconfirmed(Error::Timeout { kind: TimeoutKind::StreamIdle, after: options.idle_timeout }));
                    }
                    if now >= still_deadline {
                        let elapsed = now - last_news;
                        last_news = now;
                        yield Ok(AgentEvent::StillWorking { elapsed });
                    }
                }
            }
        };
        // Close the connection before reporting the end: a caller that stops at the error
        // (and keeps the stream around) must not keep a connection the server streams into.
        drop(response);
        if let Some(error) = ending {
            yield Err(error);
        }
    }
}
