//! One message, run to the end, always with an answer.
//!
//! [`NemoClient::run_turn`] reads the session state, sends the message, follows the stream,
//! and returns a [`Turn`]:
//! - the agent's text shown once: partial chunks are replaced by the final full text; thoughts
//!   are left out;
//! - the tool calls and results, and whether the agent now waits for the user (a final tool
//!   call with no result, such as `ask_question`, with its question);
//! - when the turn had no text (about 30% of edits) or the stream was cut off or timed out
//!   (but not when the agent asked a question):
//!   what changed, found by reading the state again and comparing it with the state before
//!   the message. The state is read up to 4 times, 1 s, 2 s, 4 s apart, before concluding that
//!   nothing changed (the service may apply an edit a moment after the stream closes).
//!
//! The message is never sent twice. What the wire proves decides how a turn ends:
//! - **refused before any work** (an error answer head other than 504: 2001 no credits, 1002,
//!   a gateway's 502, a refused connection, ...): returned as `Err`; the agent never began, so
//!   sending the message again cannot repeat work;
//! - **answered** (the stream opened): the turn ran, whatever its end. A clean end is
//!   [`TurnEnd::Completed`] (or [`TurnEnd::WaitingForUser`]); an error the agent reports inside
//!   the stream is [`TurnEnd::AgentError`], and a stream cut off or timed out is
//!   [`TurnEnd::Disconnected`]. Both come with what the state says changed: the agent may have
//!   edited before it failed;
//! - **unknown** (no answer head within the idle limit, a 504, the connection lost before the
//!   head): [`TurnEnd::Disconnected`] with what the state says changed.
//!
//! ## Crash-safe turns
//!
//! A process can die while the agent works. To find out afterwards whether the edit landed,
//! without sending the message again (which would charge twice):
//!
//! 1. save the state read before the message, before the message leaves:
//!    [`TurnOptions::on_before_send`] hands it over (also kept in [`Turn::state_before`]);
//! 2. after a restart, pass the saved state to [`NemoClient::reconcile_turn`]: it reads the
//!    state again (a few times, as a turn does) and says what changed since, sending nothing.
//!    [`TurnCheck::landed`] is true when the timeline changed.
//!
//! Sending the message again is safe only when the turn cannot be running any more and did
//! not land: it was refused (an error head), or the longest a turn can take (the stream's
//! total limit, 15 minutes by default) has passed since it was sent and the timeline still
//! shows no change. A few seconds of unchanged state prove nothing: a turn can run for 15
//! minutes, and the agent may apply its edit at the end. [`crate::job::EditJob`] follows these
//! rules (and waits for a changing timeline to settle before it calls an edit landed).
//!
//! Comparing two big states takes a while (tens of milliseconds for hundreds of thousands of
//! segments), so when the two reads hold more than 1,000 segments together a turn compares
//! them on tokio's blocking pool (`spawn_blocking`) instead of the task's worker thread,
//! where it would hold up every other task on that thread; smaller states are compared in
//! place, which costs less than the hand-off. [`NemoClient::reconcile_turn`], which borrows
//! the caller's state, compares in place.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::client::NemoClient;
use crate::error::{Error, Result};
use crate::events::{AgentEvent, ToolCall, ToolResult};
use crate::session::Session;
use crate::state::{SessionState, StateDiff};
use crate::stream::{MessageOptions, MessageStream};

/// Callback receiving each event as it arrives (for live display).
pub(crate) type EventFn = Arc<dyn Fn(&AgentEvent) + Send + Sync>;

/// Callback receiving the state read before the message is sent (to save it). An error stops
/// the turn before the message leaves.
pub(crate) type StateFn = Arc<dyn Fn(&SessionState) -> Result<()> + Send + Sync>;

/// Settings for [`NemoClient::run_turn_with`].
#[derive(Clone)]
#[non_exhaustive]
pub struct TurnOptions {
    /// Stream limits. Default [`MessageOptions::default`].
    pub message: MessageOptions,
    /// Called with every event as it arrives. Default: none.
    pub(crate) on_event: Option<EventFn>,
    /// Called with the state read before the message, before the message is sent; an error
    /// stops the turn (nothing is sent). Default: none.
    pub(crate) on_before_send: Option<StateFn>,
    /// State reads when looking for what changed. Default 4.
    pub reconcile_attempts: u32,
    /// Delay before the second state read, doubling after. Default 1 s.
    pub reconcile_delay: Duration,
}

impl Default for TurnOptions {
    fn default() -> Self {
        TurnOptions {
            message: MessageOptions::default(),
            on_event: None,
            on_before_send: None,
            reconcile_attempts: 4,
            reconcile_delay: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for TurnOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnOptions")
            .field("message", &self.message)
            .field("on_event", &self.on_event.is_some())
            .field("on_before_send", &self.on_before_send.is_some())
            .field("reconcile_attempts", &self.reconcile_attempts)
            .field("reconcile_delay", &self.reconcile_delay)
            .finish()
    }
}

impl TurnOptions {
    /// Sets the stream limits.
    pub fn message(mut self, message: MessageOptions) -> Self {
        self.message = message;
        self
    }

    /// Sets a callback for every event as it arrives.
    pub fn on_event(mut self, callback: impl Fn(&AgentEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Sets a callback that receives the state read before the message, just before the
    /// message is sent: save it there to reconcile the turn after a crash with
    /// [`NemoClient::reconcile_turn`]. When it fails (the state could not be saved), the turn
    /// ends with its error and the message is not sent. It runs on the calling task; keep it
    /// quick. Default: none.
    pub fn on_before_send(
        mut self,
        callback: impl Fn(&SessionState) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.on_before_send = Some(Arc::new(callback));
        self
    }

    /// Sets how many times, and from what first delay, the state is re-read to find changes.
    pub fn reconcile(mut self, attempts: u32, first_delay: Duration) -> Self {
        self.reconcile_attempts = attempts.max(1);
        self.reconcile_delay = first_delay;
        self
    }
}

/// How a turn ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum TurnEnd {
    /// The stream closed normally.
    Completed,
    /// The agent asked the user something and waits for the answer.
    WaitingForUser {
        /// The unanswered tool call (e.g. `ask_question`).
        call: ToolCall,
        /// The question, when the call carried one.
        question: Option<String>,
    },
    /// The stream was cut off or timed out, or the message may have reached the service
    /// without an answer; the message was not re-sent. [`Turn::changes`] says what the state
    /// shows.
    Disconnected(Error),
    /// The agent reported an error inside the stream ([`Error::Agent`]): the turn ran and is
    /// over. It may have edited before it failed: [`Turn::changes`] says what the state shows.
    /// The message was not re-sent.
    AgentError(Error),
}

/// The outcome of one message.
#[derive(Debug)]
#[non_exhaustive]
pub struct Turn {
    /// The agent's text, once (final texts joined by blank lines). Empty when it said nothing.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Tool results, in order.
    pub tool_results: Vec<ToolResult>,
    /// How it ended.
    pub end: TurnEnd,
    /// What changed in the session, when the turn had no text or was cut off (`None` when
    /// the agent's text speaks for itself and the state was not re-read).
    pub changes: Option<StateDiff>,
    /// The state read before the message was sent.
    pub state_before: SessionState,
    /// The state after the turn, when it was re-read.
    pub state_after: Option<SessionState>,
    /// Why the state could not be re-read, when that failed (the turn itself is kept).
    pub state_error: Option<Error>,
}

impl Turn {
    /// What to show the user: the agent's text; else what changed; else a sentence saying
    /// nothing visibly changed.
    pub fn answer(&self) -> String {
        let mut answer = if !self.text.is_empty() {
            self.text.clone()
        } else if let TurnEnd::WaitingForUser {
            question: Some(question),
            ..
        } = &self.end
        {
            question.clone()
        } else if let Some(changes) = self.changes.as_ref().filter(|c| !c.is_empty()) {
            format!("Done. {changes}")
        } else if let Some(err) = &self.state_error {
            format!("The agent finished, but the timeline could not be read to see what changed ({err}).")
        } else {
            "The agent finished without changing the timeline.".to_string()
        };
        if let TurnEnd::Disconnected(err) | TurnEnd::AgentError(err) = &self.end {
            answer.push_str(&format!("\n({err})"));
        }
        answer
    }

    /// True when the agent waits for the user's answer.
    pub fn is_waiting_for_user(&self) -> bool {
        matches!(self.end, TurnEnd::WaitingForUser { .. })
    }
}

/// What [`NemoClient::reconcile_turn`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TurnCheck {
    /// What changed on the timeline since the saved state.
    pub changes: StateDiff,
    /// The state now.
    pub state_after: SessionState,
}

impl TurnCheck {
    /// True when the timeline changed since the saved state: the edit landed.
    pub fn landed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// Collects a turn's events into text, calls and results.
#[derive(Default)]
struct TurnCollector {
    finals: Vec<String>,
    partial: String,
    tool_calls: Vec<ToolCall>,
    tool_results: Vec<ToolResult>,
}

impl TurnCollector {
    fn add(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::Text(chunk) if chunk.thought => {}
            AgentEvent::Text(chunk) if chunk.partial => self.partial.push_str(&chunk.text),
            AgentEvent::Text(chunk) => {
                // The complete text replaces the partial chunks that preceded it.
                self.partial.clear();
                if !chunk.text.trim().is_empty() {
                    self.finals.push(chunk.text.clone());
                }
            }
            AgentEvent::ToolCall(call) => self.tool_calls.push(call.clone()),
            AgentEvent::ToolResult(result) => self.tool_results.push(result.clone()),
            _ => {}
        }
    }

    fn text(&self) -> String {
        let mut parts: Vec<&str> = self.finals.iter().map(|s| s.trim()).collect();
        if !self.partial.trim().is_empty() {
            parts.push(self.partial.trim());
        }
        parts.join("\n\n")
    }

    /// The last tool call, when nothing answered it.
    fn unanswered_call(&self) -> Option<&ToolCall> {
        let last = self.tool_calls.last()?;
        let answered = self
            .tool_results
            .iter()
            .any(|result| match (&last.id, &result.id) {
                (Some(call_id), Some(result_id)) => call_id == result_id,
                _ => result.name == last.name,
            });
        (!answered).then_some(last)
    }
}

impl NemoClient {
    /// Runs one message to the end with default [`TurnOptions`]. See the
    /// [module docs](crate::turn).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// let turn = client.run_turn(&session, "remove the background person").await?;
    /// println!("{}", turn.answer());
    /// # Ok(()) }
    /// ```
    pub async fn run_turn(&self, session: &Session, text: &str) -> Result<Turn> {
        self.run_turn_with(session, text, &TurnOptions::default())
            .await
    }

    /// Runs one message to the end, calling `options.on_event` for each event as it arrives.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// use nemo_video::events::AgentEvent;
    /// use nemo_video::turn::TurnOptions;
    /// let options = TurnOptions::default().on_event(|event| match event {
    ///     AgentEvent::Text(chunk) if chunk.partial => print!("{}", chunk.text),
    ///     AgentEvent::StillWorking { .. } => println!("⏳ Still working..."),
    ///     _ => {}
    /// });
    /// let turn = client.run_turn_with(&session, "add lo-fi music at 35%", &options).await?;
    /// println!("\n{}", turn.answer());
    /// # Ok(()) }
    /// ```
    pub async fn run_turn_with(
        &self,
        session: &Session,
        text: &str,
        options: &TurnOptions,
    ) -> Result<Turn> {
        let before = self.state(session).await?;
        if let Some(callback) = &options.on_before_send {
            callback(&before)?;
        }
        self.run_turn_after(session, before, text, options).await
    }

    /// Sends the message and follows the turn, given the state read before it (which the
    /// caller may already have saved: see [crash-safe turns](crate::turn#crash-safe-turns)).
    pub(crate) async fn run_turn_after(
        &self,
        session: &Session,
        before: SessionState,
        text: &str,
        options: &TurnOptions,
    ) -> Result<Turn> {
        let stream = match self
            .send_message_with(session, text, &options.message)
            .await
        {
            Ok(stream) => stream,
            // The message may have reached the service: what the state shows is the answer.
            Err(err) if err.needs_reconcile() => {
                return Ok(Box::pin(self.finish_turn(
                    session,
                    before,
                    TurnCollector::default(),
                    Some(err),
                    options,
                ))
                .await)
            }
            Err(err) => return Err(err),
        };
        Ok(self.follow_turn(session, before, stream, options).await)
    }

    /// Follows an opened stream to the end of its turn.
    pub(crate) async fn follow_turn(
        &self,
        session: &Session,
        before: SessionState,
        mut stream: MessageStream,
        options: &TurnOptions,
    ) -> Turn {
        let mut collector = TurnCollector::default();
        let mut cut_off: Option<Error> = None;
        while let Some(item) = stream.next_event().await {
            match item {
                Ok(event) => {
                    if let Some(callback) = &options.on_event {
                        callback(&event);
                    }
                    collector.add(&event);
                }
                // The stream opened, so the turn ran: whatever ends it, the state says what it
                // did, and the message is never sent again from here.
                Err(err) => {
                    cut_off = Some(err);
                    break;
                }
            }
        }
        drop(stream);
        // Boxed: inline, the ending (the turn, the state re-reads) made this future 4.6 KiB,
        // held by every user for the whole stream; boxed, it is allocated once at the end.
        Box::pin(self.finish_turn(session, before, collector, cut_off, options)).await
    }

    /// Ends a turn whose message was sent: how it ended, and, when the words do not say what
    /// happened, what the state shows.
    async fn finish_turn(
        &self,
        session: &Session,
        before: SessionState,
        collector: TurnCollector,
        cut_off: Option<Error>,
        options: &TurnOptions,
    ) -> Turn {
        let text = collector.text();
        let end = match (cut_off, collector.unanswered_call()) {
            (Some(err @ Error::Agent { .. }), _) => TurnEnd::AgentError(err),
            (Some(err), _) => TurnEnd::Disconnected(err),
            (None, Some(call)) => TurnEnd::WaitingForUser {
                question: call.question_text(),
                call: call.clone(),
            },
            (None, None) => TurnEnd::Completed,
        };
        // A question needs the user's answer, not a timeline check; a silent or cut-off turn
        // is explained by what changed.
        let needs_state = match end {
            TurnEnd::Disconnected(_) | TurnEnd::AgentError(_) => true,
            TurnEnd::WaitingForUser { .. } => false,
            _ => text.is_empty(),
        };
        let mut turn = Turn {
            text,
            tool_calls: collector.tool_calls,
            tool_results: collector.tool_results,
            end,
            changes: None,
            state_before: before,
            state_after: None,
            state_error: None,
        };
        if needs_state {
            // Shared while the states are compared, so that a big comparison can move to the
            // blocking pool; back in the turn afterwards.
            let before = Arc::new(std::mem::take(&mut turn.state_before));
            // The message was consumed: a failed state read must not lose the turn.
            match self
                .reconcile(session, Before::Shared(&before), options)
                .await
            {
                Ok((diff, after)) => {
                    turn.changes = Some(diff);
                    turn.state_after = Some(after);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the state after the turn");
                    turn.state_error = Some(err);
                }
            }
            // The comparisons are over: this is the only handle left.
            turn.state_before = Arc::try_unwrap(before).unwrap_or_else(|shared| (*shared).clone());
        }
        turn
    }

    /// Says whether a message sent after `before` was read (see [crash-safe
    /// turns](crate::turn#crash-safe-turns)) changed the timeline, without sending anything:
    /// reads the state (up to 4 times, 1 s, 2 s, 4 s apart, until it differs) and compares.
    ///
    /// "No change" after these few seconds does **not** mean the message can be sent again:
    /// the turn may still be running (a turn can take the stream's total limit, 15 minutes by
    /// default). Sending again is safe only once that long has passed since the message was
    /// sent with still no change, or when the message was refused before any work (an error
    /// answer head). A change may also be the first of several: the turn is over when the
    /// timeline stops changing.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// // `saved` was written by TurnOptions::on_before_send before the process died.
    /// let saved = std::fs::read_to_string("before.json").expect("the saved state");
    /// let saved: nemo_video::state::SessionState = serde_json::from_str(&saved).expect("a state");
    /// let check = client.reconcile_turn(&session, &saved).await?;
    /// if check.landed() {
    ///     println!("the edit landed: {}", check.changes);
    /// } else {
    ///     // Not yet proof that it never landed: the turn may still be running. Send it again
    ///     // only once the stream's total limit (15 min) has passed since it was sent.
    ///     println!("no change yet");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reconcile_turn(
        &self,
        session: &Session,
        before: &SessionState,
    ) -> Result<TurnCheck> {
        self.reconcile_turn_with(session, before, &TurnOptions::default())
            .await
    }

    /// [`reconcile_turn`](Self::reconcile_turn) with the re-read attempts and delays of
    /// `options` ([`TurnOptions::reconcile`]).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session, saved: nemo_video::state::SessionState) -> nemo_video::Result<()> {
    /// use std::time::Duration;
    /// use nemo_video::turn::TurnOptions;
    /// let options = TurnOptions::default().reconcile(2, Duration::from_millis(500));
    /// let check = client.reconcile_turn_with(&session, &saved, &options).await?;
    /// # let _ = check; Ok(()) }
    /// ```
    pub async fn reconcile_turn_with(
        &self,
        session: &Session,
        before: &SessionState,
        options: &TurnOptions,
    ) -> Result<TurnCheck> {
        let (changes, state_after) = self
            .reconcile(session, Before::Borrowed(before), options)
            .await?;
        Ok(TurnCheck {
            changes,
            state_after,
        })
    }

    /// Re-reads the state with growing delays until it differs from `before`.
    async fn reconcile(
        &self,
        session: &Session,
        before: Before<'_>,
        options: &TurnOptions,
    ) -> Result<(StateDiff, SessionState)> {
        let mut delay = options.reconcile_delay;
        let mut attempt = 1;
        loop {
            let after = self.state(session).await?;
            let (diff, after) = compare(before, after).await;
            if !diff.is_empty() || attempt >= options.reconcile_attempts {
                return Ok((diff, after));
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
            attempt += 1;
        }
    }
}

/// Above this many segments (both states together) two states are compared off the async
/// runtime: about 60 ns per segment, so at most some 60 µs in place.
const INLINE_DIFF_MAX_SEGMENTS: usize = 1_000;

fn segment_count(state: &SessionState) -> usize {
    state.draft().map_or(0, |draft| {
        draft
            .tracks()
            .iter()
            .map(|track| track.segments().len())
            .sum()
    })
}

/// The state a turn's comparisons start from.
#[derive(Clone, Copy)]
enum Before<'a> {
    /// Shared: a big comparison moves to tokio's blocking pool, on any runtime.
    Shared(&'a Arc<SessionState>),
    /// The caller's (`reconcile_turn`): compared in place, since moving the work to another
    /// thread would need a copy of the state (`block_in_place` needs tokio's multi-threaded
    /// runtime, which this crate does not require).
    Borrowed(&'a SessionState),
}

impl Before<'_> {
    fn state(&self) -> &SessionState {
        match self {
            Before::Shared(state) => state,
            Before::Borrowed(state) => state,
        }
    }
}

/// `before.diff(&after)`, off the runtime for big states (see the module docs).
async fn compare(before: Before<'_>, after: SessionState) -> (StateDiff, SessionState) {
    compare_with(before, after, |before, after| before.diff(after)).await
}

/// [`compare`] with the comparison given, so that tests can watch where it runs.
async fn compare_with<F>(
    before: Before<'_>,
    after: SessionState,
    diff: F,
) -> (StateDiff, SessionState)
where
    F: FnOnce(&SessionState, &SessionState) -> StateDiff + Send + 'static,
{
    if segment_count(before.state()) + segment_count(&after) <= INLINE_DIFF_MAX_SEGMENTS {
        let changes = diff(before.state(), &after);
        return (changes, after);
    }
    let before = match before {
        Before::Shared(before) => before,
        Before::Borrowed(before) => {
            let changes = diff(before, &after);
            return (changes, after);
        }
    };
    let after = Arc::new(after);
    let (older, newer) = (Arc::clone(before), Arc::clone(&after));
    let changes = match tokio::task::spawn_blocking(move || diff(&older, &newer)).await {
        Ok(changes) => changes,
        Err(error) => match error.try_into_panic() {
            // A panic in the comparison is a bug: surface it as if it had run here.
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled before it started, which happens only while the runtime shuts down:
            // compare here rather than lose the turn.
            Err(_) => before.diff(&after),
        },
    };
    // The blocking task is over, so `after` has one owner again.
    let after = Arc::try_unwrap(after).unwrap_or_else(|shared| (*shared).clone());
    (changes, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with `segments` segments on one video track.
    fn state_with(segments: usize) -> SessionState {
        let list: Vec<String> = (0..segments)
            .map(|i| {
                format!(
                    r#"{{"st":{},"d":1000,"m":{{"name":"clip {i}"}}}}"#,
                    i * 1000
                )
            })
            .collect();
        let json = format!(
            r#"{{"state":{{"draft":{{"t":[{{"tt":0,"sg":[{}]}}]}}}}}}"#,
            list.join(",")
        );
        SessionState::from_json(&json).expect("a valid state")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn big_states_are_compared_off_the_runtime_thread() {
        let before = Arc::new(state_with(600));
        let after = state_with(601);
        let expected = before.diff(&after);
        // The comparison waits for a message from a task on this same single-threaded
        // runtime: it can only get it if the runtime thread is free while it runs.
        // (`blocking_recv` panics outright when called on a runtime thread.)
        let (send, receive) = tokio::sync::oneshot::channel::<()>();
        let sender = tokio::spawn(async move { send.send(()) });
        let runtime_thread = std::thread::current().id();
        let (changes, returned) =
            compare_with(Before::Shared(&before), after, move |before, after| {
                assert_ne!(std::thread::current().id(), runtime_thread);
                receive
                    .blocking_recv()
                    .expect("the other task ran meanwhile");
                before.diff(after)
            })
            .await;
        assert!(sender.await.expect("the sender task finished").is_ok());
        assert_eq!(changes, expected);
        assert_eq!(changes.changes().len(), 2, "{changes}");
        assert_eq!(segment_count(&returned), 601);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_states_are_compared_in_place() {
        let before = Arc::new(state_with(3));
        let runtime_thread = std::thread::current().id();
        let (changes, _) = compare_with(
            Before::Shared(&before),
            state_with(4),
            move |before, after| {
                assert_eq!(std::thread::current().id(), runtime_thread);
                before.diff(after)
            },
        )
        .await;
        assert_eq!(changes.changes().len(), 2, "{changes}");
    }
}
