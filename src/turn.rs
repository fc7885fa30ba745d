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
//! The message is never sent twice. A cut-off stream ends the turn with
//! [`TurnEnd::Disconnected`]; errors before the stream starts, and agent errors inside it,
//! are returned as `Err`.
//!
//! Comparing two big states takes a while (tens of milliseconds for hundreds of thousands of
//! segments), so when the two reads hold more than 1,000 segments together the comparison
//! runs on tokio's blocking pool (`spawn_blocking`) instead of the task's worker thread,
//! where it would hold up every other task on that thread; smaller states are compared in
//! place, which costs less than the hand-off.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::client::NemoClient;
use crate::error::{Error, Result};
use crate::events::{AgentEvent, ToolCall, ToolResult};
use crate::session::Session;
use crate::state::{SessionState, StateDiff};
use crate::stream::MessageOptions;

/// Callback receiving each event as it arrives (for live display).
pub type EventFn = Arc<dyn Fn(&AgentEvent) + Send + Sync>;

/// Settings for [`NemoClient::run_turn_with`].
#[derive(Clone)]
#[non_exhaustive]
pub struct TurnOptions {
    /// Stream limits. Default [`MessageOptions::default`].
    pub message: MessageOptions,
    /// Called with every event as it arrives. Default: none.
    pub on_event: Option<EventFn>,
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
    /// The stream was cut off or timed out; the message was not re-sent.
    Disconnected(Error),
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
        if let TurnEnd::Disconnected(err) = &self.end {
            answer.push_str(&format!("\n({err})"));
        }
        answer
    }

    /// True when the agent waits for the user's answer.
    pub fn is_waiting_for_user(&self) -> bool {
        matches!(self.end, TurnEnd::WaitingForUser { .. })
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
        let before = Arc::new(self.state(session).await?);
        let mut stream = self
            .send_message_with(session, text, &options.message)
            .await?;
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
                Err(err @ (Error::StreamDisconnected { .. } | Error::Timeout { .. })) => {
                    cut_off = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        drop(stream);
        let text = collector.text();
        let end = match (cut_off, collector.unanswered_call()) {
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
            TurnEnd::Disconnected(_) => true,
            TurnEnd::WaitingForUser { .. } => false,
            _ => text.is_empty(),
        };
        let mut turn = Turn {
            text,
            tool_calls: collector.tool_calls,
            tool_results: collector.tool_results,
            end,
            changes: None,
            state_after: None,
            state_error: None,
        };
        if needs_state {
            // The message was consumed: a failed state read must not lose the turn.
            match self.reconcile(session, &before, options).await {
                Ok((diff, after)) => {
                    turn.changes = Some(diff);
                    turn.state_after = Some(after);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the state after the turn");
                    turn.state_error = Some(err);
                }
            }
        }
        Ok(turn)
    }

    /// Re-reads the state with growing delays until it differs from `before`.
    async fn reconcile(
        &self,
        session: &Session,
        before: &Arc<SessionState>,
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

/// `before.diff(&after)`, on the blocking pool for big states (see the module docs).
async fn compare(before: &Arc<SessionState>, after: SessionState) -> (StateDiff, SessionState) {
    compare_with(before, after, |before, after| before.diff(after)).await
}

/// [`compare`] with the comparison given, so that tests can watch where it runs.
async fn compare_with<F>(
    before: &Arc<SessionState>,
    after: SessionState,
    diff: F,
) -> (StateDiff, SessionState)
where
    F: FnOnce(&SessionState, &SessionState) -> StateDiff + Send + 'static,
{
    if segment_count(before) + segment_count(&after) <= INLINE_DIFF_MAX_SEGMENTS {
        let changes = diff(before, &after);
        return (changes, after);
    }
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
        let (changes, returned) = compare_with(&before, after, move |before, after| {
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
        let (changes, _) = compare_with(&before, state_with(4), move |before, after| {
            assert_eq!(std::thread::current().id(), runtime_thread);
            before.diff(after)
        })
        .await;
        assert_eq!(changes.changes().len(), 2, "{changes}");
    }
}
