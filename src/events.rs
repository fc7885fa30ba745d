//! Typed agent events, decoded from the `data` of one SSE frame of `POST /run_sse`.
//!
//! # Rules
//!
//! Decoding a frame never fails and never panics: every input gives at least one event, and
//! anything it does not understand comes back as [`AgentEvent::Unknown`] with the raw text
//! kept. One frame gives a small ordered list of events because one Google ADK event
//! can carry several parts plus a state delta. The order is:
//!
//! 1. the simplified shape's own event (`{"type":"text"|"tool_call"|"tool_result"|"heartbeat"}`);
//! 2. one event per `content.parts[]` entry, in order: `text` → [`AgentEvent::Text`] (with
//!    `thought: true` kept as [`TextChunk::thought`]), `functionCall` → [`AgentEvent::ToolCall`],
//!    `functionResponse` → [`AgentEvent::ToolResult`]; a part with none of these (for example
//!    `inlineData`, or a part that is not an object) → [`AgentEvent::Unknown`] holding the
//!    part's JSON;
//! 3. [`AgentEvent::StateDelta`] when `actions.stateDelta` is a non-empty object;
//! 4. [`AgentEvent::Error`] when the frame is an error (`{"error": ...}`, `errorCode`,
//!    `errorMessage`, or `{"type":"error"}`): last, because the stream ends after it;
//! 5. [`AgentEvent::TurnComplete`] only when `turnComplete` is `true` and nothing above was
//!    produced;
//! 6. [`AgentEvent::Unknown`] with the whole frame when nothing above was produced (JSON of
//!    another shape, an ADK event carrying only `artifactDelta` or `usageMetadata`, non-JSON
//!    text, invalid JSON, duplicate keys).
//!
//! Empty or whitespace-only data and the plain text `heartbeat` (any ASCII case) give
//! [`AgentEvent::Heartbeat`]; so does `{"type":"heartbeat"}`. SSE comment lines never reach
//! this module: the SSE parser surfaces them and the stream turns them into heartbeats.
//! [`AgentEvent::StillWorking`] is never decoded; the stream layer synthesizes it after every
//! 2 minutes without text (configurable).
//!
//! Decoding is tolerant field by field: a field of the wrong type (`"partial": "yes"`,
//! `"text": 5`, `"content": []`) is treated as absent instead of rejecting the frame. Ids
//! (`id`, `invocationId`, `functionCall.id`, `errorCode`) that arrive as JSON numbers keep
//! their exact digits, never going through `f64`. ADK's snake_case spellings
//! (`invocation_id`, `function_call`, ...) are accepted too.
//!
//! JSON payloads (tool arguments, tool responses, state deltas, error details) are kept as
//! [`RawJson`]: the exact JSON text, copied once, parsed only when you ask for it
//! ([`ToolCall::args_as`]). The benchmark (`cargo bench -p nemo-video-benches --bench events`) chose this over
//! `serde_json::Value`, which costs an allocation per key and per string of every payload
//! whether or not anyone reads it.
//!
//! ```
//! use nemo_video::events::{decode_frame, AgentEvent};
//!
//! let frame = r#"{"author":"nemo_agent","content":{"role":"model","parts":[
//!     {"text":"Removing the person now."},
//!     {"functionCall":{"id":"call-1","name":"remove_object","args":{"target":"person"}}}
//! ]},"actions":{"stateDelta":{"draft_version":3}}}"#;
//! let events = decode_frame(frame);
//! assert_eq!(events.len(), 3);
//! assert_eq!(events[0].text(), Some("Removing the person now."));
//! let AgentEvent::ToolCall(call) = &events[1] else { panic!("expected a tool call") };
//! assert_eq!(call.name, "remove_object");
//! assert!(matches!(events[2], AgentEvent::StateDelta(_)));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A JSON value kept as its exact text: tool arguments, tool responses, state deltas.
///
/// Equality compares the text, not the meaning: `{"a":1}` and `{ "a": 1 }` differ.
///
/// ```
/// use nemo_video::events::RawJson;
///
/// let json = RawJson::from_json(r#"{"volume": 35}"#)?;
/// #[derive(serde::Deserialize)]
/// struct Args { volume: u8 }
/// assert_eq!(json.parse::<Args>()?.volume, 35);
/// assert_eq!(json.as_str(), r#"{"volume": 35}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `json` is one valid JSON value and keeps its text.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.to_owned()).map(RawJson)
    }

    /// The JSON `null`, used when a tool call carries no arguments.
    pub fn null() -> Self {
        RawJson(RawValue::NULL.to_owned())
    }

    /// The JSON text, exactly as received.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value as a `serde_json` [`RawValue`].
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// Gives back the boxed [`RawValue`].
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }

    /// Whether the value is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.as_str() == "null"
    }

    /// Whether the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.as_str().starts_with('{')
    }

    /// Parses the value into `T` (use `serde_json::Value` for an untyped tree).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// The keys of a JSON object, in the order they appear; empty for any other value.
    pub fn keys(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .map(|(key, _)| key.into_owned())
            .collect()
    }

    /// The value under `key` when this is a JSON object that has it (the last one wins when
    /// the key is repeated).
    pub fn get(&self, key: &str) -> Option<RawJson> {
        self.entries()
            .into_iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| RawJson(value.to_owned()))
    }

    fn entries(&self) -> Vec<(Cow<'_, str>, &RawValue)> {
        serde_json::from_str::<ObjectEntries<'_>>(self.as_str())
            .map(|entries| entries.0)
            .unwrap_or_default()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson(raw)
    }
}

/// One thing the agent's stream told us. See the [module docs](self) for how frames map to
/// events.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// Text from the agent: a partial chunk, a final reply, or a thought.
    Text(TextChunk),
    /// The agent called a tool. A call with no matching result at the end of a turn (for
    /// example [`ToolCall::is_question`]) means the agent waits for the user.
    ToolCall(ToolCall),
    /// A tool's result came back to the agent.
    ToolResult(ToolResult),
    /// The session state changed (`actions.stateDelta`).
    StateDelta(StateDelta),
    /// The agent said its turn is over, with nothing else in the frame.
    TurnComplete,
    /// A keep-alive: keep waiting.
    Heartbeat,
    /// The agent or the server reported an error; the stream ends after it.
    Error(StreamError),
    /// A frame (or a part of one) of a shape this version does not know; the raw text is kept.
    Unknown(UnknownEvent),
    /// Never decoded from the wire: the stream layer emits it after every 2 minutes without
    /// text from the agent (configurable), so callers can show "⏳ Still working...".
    StillWorking {
        /// How long since the agent's last text (or the previous `StillWorking`).
        elapsed: Duration,
    },
}

impl AgentEvent {
    /// Whether this is [`AgentEvent::Error`].
    ///
    /// ```
    /// use nemo_video::events::decode_frame;
    /// assert!(decode_frame(r#"{"error":"session expired"}"#)[0].is_error());
    /// ```
    pub fn is_error(&self) -> bool {
        matches!(self, AgentEvent::Error(_))
    }

    /// Whether this is [`AgentEvent::Heartbeat`].
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, AgentEvent::Heartbeat)
    }

    /// The text of a [`AgentEvent::Text`], thoughts included; `None` for other events.
    ///
    /// ```
    /// use nemo_video::events::decode_frame;
    /// let events = decode_frame(r#"{"type":"text","content":"Done!"}"#);
    /// assert_eq!(events[0].text(), Some("Done!"));
    /// ```
    pub fn text(&self) -> Option<&str> {
        match self {
            AgentEvent::Text(chunk) => Some(&chunk.text),
            _ => None,
        }
    }

    /// The text of a [`AgentEvent::Text`] that is meant for the user: `None` for thoughts and
    /// for other events.
    ///
    /// ```
    /// use nemo_video::events::decode_frame;
    /// let events = decode_frame(r#"{"content":{"parts":[{"text":"plan...","thought":true}]}}"#);
    /// assert_eq!(events[0].text(), Some("plan..."));
    /// assert_eq!(events[0].visible_text(), None);
    /// ```
    pub fn visible_text(&self) -> Option<&str> {
        match self {
            AgentEvent::Text(chunk) if !chunk.thought => Some(&chunk.text),
            _ => None,
        }
    }

    /// The tool call of a [`AgentEvent::ToolCall`].
    pub fn as_tool_call(&self) -> Option<&ToolCall> {
        match self {
            AgentEvent::ToolCall(call) => Some(call),
            _ => None,
        }
    }

    /// The error of a [`AgentEvent::Error`].
    pub fn as_error(&self) -> Option<&StreamError> {
        match self {
            AgentEvent::Error(error) => Some(error),
            _ => None,
        }
    }
}

/// Text from the agent.
///
/// With streaming on, the agent sends chunks with `partial: true` and then one event with the
/// whole text and `partial: false`: show one or the other, not both.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TextChunk {
    /// The text.
    pub text: String,
    /// The agent that wrote it (`author`), when given.
    pub author: Option<String>,
    /// Whether this is a streaming chunk that a later complete event repeats.
    pub partial: bool,
    /// Whether this is the model's reasoning (`thought: true`), not meant for the user.
    pub thought: bool,
    /// The ADK event `id`, when given.
    pub event_id: Option<String>,
    /// The ADK `invocationId`, when given.
    pub invocation_id: Option<String>,
}

/// Names (compared after [normalising](ToolCall::is_question)) of the tools that ask the user a
/// question and wait for the answer.
pub const QUESTION_TOOL_NAMES: &[&str] = &[
    "ask_question",
    "ask_questions",
    "ask_user",
    "ask_user_question",
    "ask_human",
    "ask_followup_question",
    "ask_for_clarification",
    "ask_clarifying_question",
    "request_user_input",
    "get_user_input",
    "human_input",
    "user_input",
];

/// A tool call made by the agent (`functionCall`, or the simplified `tool_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolCall {
    /// The call id, matching [`ToolResult::id`], when given.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The arguments, as sent (JSON `null` when absent).
    pub args: RawJson,
    /// The agent that made the call, when given.
    pub author: Option<String>,
}

impl ToolCall {
    /// Parses the arguments into `T`.
    ///
    /// ```
    /// use nemo_video::events::decode_frame;
    /// #[derive(serde::Deserialize)]
    /// struct Trim { start_ms: u64, end_ms: u64 }
    ///
    /// let events = decode_frame(r#"{"type":"tool_call","name":"trim","args":{"start_ms":0,"end_ms":3000}}"#);
    /// let call = events[0].as_tool_call().expect("a tool call");
    /// let trim: Trim = call.args_as()?;
    /// assert_eq!((trim.start_ms, trim.end_ms), (0, 3000));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn args_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.args.parse()
    }

    /// Whether this tool asks the user something and waits for the answer.
    ///
    /// The name is normalised (ASCII lowercase; `camelCase` split into `camel_case`; `-`, `.`
    /// and spaces read as `_`) and compared with [`QUESTION_TOOL_NAMES`]: `ask_question`,
    /// `ask_user`, `askUser`, `Ask-Human`, `request_user_input`, ... match; `ask_llm` does not.
    ///
    /// ```
    /// use nemo_video::events::decode_frame;
    /// let events = decode_frame(r#"{"type":"tool_call","name":"askUser","args":{"question":"Which person?"}}"#);
    /// let call = events[0].as_tool_call().expect("a tool call");
    /// assert!(call.is_question());
    /// assert_eq!(call.question_text().as_deref(), Some("Which person?"));
    /// ```
    pub fn is_question(&self) -> bool {
        let normalised = normalise_tool_name(&self.name);
        QUESTION_TOOL_NAMES.contains(&normalised.as_str())
    }

    /// The question in the arguments: the first of the keys `question`, `text`, `prompt` that
    /// holds a string. Works whatever the tool's name.
    pub fn question_text(&self) -> Option<String> {
        let args = self.question_args()?;
        [args.question, args.text, args.prompt]
            .into_iter()
            .find_map(|field| field.0)
            .map(Cow::into_owned)
    }

    /// The answers offered with the question: the strings of an `options` (or `choices`) array
    /// in the arguments; for objects in it, their `label`, `text` or `value` string. Empty when
    /// there are none.
    pub fn question_options(&self) -> Vec<String> {
        let Some(args) = self.question_args() else {
            return Vec::new();
        };
        args.options
            .0
            .or(args.choices.0)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|option| option.0)
            .map(Cow::into_owned)
            .collect()
    }

    fn question_args(&self) -> Option<QuestionArgs<'_>> {
        // `Lenient`: a derived struct would also accept a JSON array, field by position.
        serde_json::from_str::<Lenient<QuestionArgs<'_>>>(self.args.as_str())
            .ok()?
            .0
    }
}

/// A tool's result (`functionResponse`, or the simplified `tool_result`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolResult {
    /// The id of the call this answers, when given.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The result, as sent (`response`, or `result` in the simplified shape; JSON `null` when
    /// absent).
    pub response: RawJson,
    /// The agent the result belongs to, when given.
    pub author: Option<String>,
}

impl ToolResult {
    /// Parses the result into `T`.
    pub fn response_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.response.parse()
    }
}

/// A change to the session state (`actions.stateDelta`): an object of the keys that changed
/// and their new values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateDelta {
    /// The `stateDelta` object, as sent; never empty.
    pub delta: RawJson,
    /// The agent whose event carried it, when given.
    pub author: Option<String>,
}

impl StateDelta {
    /// The keys that changed, in the order sent.
    ///
    /// ```
    /// use nemo_video::events::{decode_frame, AgentEvent};
    /// let events = decode_frame(r#"{"actions":{"stateDelta":{"draft":{"t":[]},"credits":90}}}"#);
    /// let AgentEvent::StateDelta(delta) = &events[0] else { panic!("expected a state delta") };
    /// assert_eq!(delta.keys(), ["draft", "credits"]);
    /// assert_eq!(delta.get("credits").map(|v| v.to_string()).as_deref(), Some("90"));
    /// ```
    pub fn keys(&self) -> Vec<String> {
        self.delta.keys()
    }

    /// The new value of `key`, when it changed.
    pub fn get(&self, key: &str) -> Option<RawJson> {
        self.delta.get(key)
    }

    /// Parses the whole delta into `T`.
    pub fn delta_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.delta.parse()
    }
}

/// An error reported inside the stream; the stream ends after it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamError {
    /// The error code (`errorCode`, `code`, or `error.code`), as text; numbers keep their
    /// digits.
    pub code: Option<String>,
    /// What went wrong: `errorMessage`, the `error` string, `error.message`, or a sentence
    /// naming the code when the server sent no text.
    pub message: String,
    /// `error_details` (or `errorDetails`), else the `error` object itself, as sent.
    pub details: Option<RawJson>,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(
                f,
                "the agent stopped with an error ({code}): {}",
                self.message
            ),
            None => write!(f, "the agent stopped with an error: {}", self.message),
        }
    }
}

impl std::error::Error for StreamError {}

/// A frame, or a part of one, that this version does not understand.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UnknownEvent {
    /// The text exactly as received (the whole `data`, or the part's JSON).
    pub raw: String,
    /// The parsed JSON, when `raw` is valid JSON.
    pub json: Option<serde_json::Value>,
}

/// The events decoded from one frame, in order. Usually one; never empty.
///
/// Derefs to `[AgentEvent]` and iterates by value or by reference.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvents {
    events: Vec<AgentEvent>,
}

impl DecodedEvents {
    /// The events as a `Vec`.
    pub fn into_vec(self) -> Vec<AgentEvent> {
        self.events
    }
}

impl std::ops::Deref for DecodedEvents {
    type Target = [AgentEvent];
    fn deref(&self) -> &[AgentEvent] {
        &self.events
    }
}

impl IntoIterator for DecodedEvents {
    type Item = AgentEvent;
    type IntoIter = std::vec::IntoIter<AgentEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

impl<'e> IntoIterator for &'e DecodedEvents {
    type Item = &'e AgentEvent;
    type IntoIter = std::slice::Iter<'e, AgentEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

impl From<DecodedEvents> for Vec<AgentEvent> {
    fn from(events: DecodedEvents) -> Self {
        events.events
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes the `data` of one SSE frame into events, following the [module rules](self).
/// Never fails: the worst case is one [`AgentEvent::Unknown`] holding `data`.
///
/// ```
/// use nemo_video::events::{decode_frame, AgentEvent};
///
/// assert_eq!(decode_frame("").into_vec(), [AgentEvent::Heartbeat]);
/// assert_eq!(decode_frame("heartbeat").into_vec(), [AgentEvent::Heartbeat]);
/// let AgentEvent::Unknown(unknown) = &decode_frame("<html>502</html>")[0] else {
///     panic!("expected Unknown")
/// };
/// assert_eq!(unknown.raw, "<html>502</html>");
/// ```
#[doc(hidden)]
pub fn decode_frame(data: &str) -> DecodedEvents {
    let trimmed = data.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("heartbeat") {
        return DecodedEvents {
            events: vec![AgentEvent::Heartbeat],
        };
    }
    let mut events = Vec::new();
    if let Ok(Lenient(Some(frame))) = serde_json::from_str::<Lenient<WireFrame<'_>>>(trimmed) {
        decode_wire_frame(frame, &mut events);
    }
    if events.is_empty() {
        events.push(unknown(data));
    }
    DecodedEvents { events }
}

fn decode_wire_frame(frame: WireFrame<'_>, out: &mut Vec<AgentEvent>) {
    let author = frame.author.0.as_deref();
    match frame.kind.0.as_deref() {
        Some("heartbeat") => out.push(AgentEvent::Heartbeat),
        Some("text") => {
            if let WireContentField::Text(text) = &frame.content {
                out.push(AgentEvent::Text(TextChunk {
                    text: text.clone().into_owned(),
                    author: author.map(str::to_owned),
                    partial: frame.partial.0,
                    thought: frame.thought.0,
                    event_id: id_text(frame.id),
                    invocation_id: id_text(frame.invocation_id),
                }));
            }
        }
        Some("tool_call") => {
            if let Some(name) = &frame.name.0 {
                out.push(AgentEvent::ToolCall(ToolCall {
                    id: id_text(frame.id),
                    name: name.clone().into_owned(),
                    args: raw_or_null(frame.args),
                    author: author.map(str::to_owned),
                }));
            }
        }
        Some("tool_result") => {
            if let Some(name) = &frame.name.0 {
                out.push(AgentEvent::ToolResult(ToolResult {
                    id: id_text(frame.id),
                    name: name.clone().into_owned(),
                    response: raw_or_null(frame.result.or(frame.response)),
                    author: author.map(str::to_owned),
                }));
            }
        }
        _ => {}
    }

    if let WireContentField::Object(content) = &frame.content {
        let meta = EventMeta {
            author,
            partial: frame.partial.0,
            event_id: frame.id,
            invocation_id: frame.invocation_id,
        };
        for part in &content.parts.0 {
            decode_part(part, &meta, out);
        }
    }

    if let Some(Some(delta)) = frame.actions.0.as_ref().map(|actions| actions.state_delta) {
        if is_non_empty_object(delta) {
            out.push(AgentEvent::StateDelta(StateDelta {
                delta: RawJson(delta.to_owned()),
                author: author.map(str::to_owned),
            }));
        }
    }

    if let Some(error) = stream_error(&frame) {
        out.push(AgentEvent::Error(error));
    }

    if out.is_empty() && frame.turn_complete.0 {
        out.push(AgentEvent::TurnComplete);
    }
}

struct EventMeta<'f> {
    author: Option<&'f str>,
    partial: bool,
    event_id: Option<&'f RawValue>,
    invocation_id: Option<&'f RawValue>,
}

fn decode_part(raw_part: &RawValue, meta: &EventMeta<'_>, out: &mut Vec<AgentEvent>) {
    let before = out.len();
    if let Ok(Lenient(Some(part))) = serde_json::from_str::<Lenient<WirePart<'_>>>(raw_part.get()) {
        if let Some(text) = part.text.0 {
            out.push(AgentEvent::Text(TextChunk {
                text: text.into_owned(),
                author: meta.author.map(str::to_owned),
                partial: meta.partial,
                thought: part.thought.0,
                event_id: id_text(meta.event_id),
                invocation_id: id_text(meta.invocation_id),
            }));
        }
        if let Some(call) = part.function_call.0 {
            if let Some(name) = call.name.0 {
                out.push(AgentEvent::ToolCall(ToolCall {
                    id: id_text(call.id),
                    name: name.into_owned(),
                    args: raw_or_null(call.args),
                    author: meta.author.map(str::to_owned),
                }));
            }
        }
        if let Some(response) = part.function_response.0 {
            if let Some(name) = response.name.0 {
                out.push(AgentEvent::ToolResult(ToolResult {
                    id: id_text(response.id),
                    name: name.into_owned(),
                    response: raw_or_null(response.response),
                    author: meta.author.map(str::to_owned),
                }));
            }
        }
    }
    if out.len() == before {
        out.push(unknown(raw_part.get()));
    }
}

fn stream_error(frame: &WireFrame<'_>) -> Option<StreamError> {
    let is_error = frame.error.is_some()
        || frame.error_code.is_some()
        || frame.error_message.0.is_some()
        || frame.kind.0.as_deref() == Some("error");
    if !is_error {
        return None;
    }
    let error_object = frame
        .error
        .filter(|raw| raw.get().starts_with('{'))
        .and_then(|raw| serde_json::from_str::<Lenient<WireErrorObject<'_>>>(raw.get()).ok())
        .and_then(|object| object.0);
    let error_string = frame
        .error
        .and_then(|raw| serde_json::from_str::<LStr<'_>>(raw.get()).ok())
        .and_then(|text| text.0);

    let code = id_text(frame.error_code)
        .or_else(|| id_text(frame.code))
        .or_else(|| {
            error_object
                .as_ref()
                .and_then(|object| id_text(object.code))
        });
    let message = frame
        .error_message
        .0
        .clone()
        .or(error_string)
        .or_else(|| {
            error_object
                .as_ref()
                .and_then(|object| object.message.0.clone())
        })
        .or_else(|| frame.message.0.clone())
        .or_else(|| match &frame.content {
            WireContentField::Text(text) => Some(text.clone()),
            _ => None,
        })
        .map(Cow::into_owned)
        .or_else(|| {
            // A non-string, non-object `error` (a number, an array): its JSON is the best text.
            frame
                .error
                .filter(|raw| !raw.get().starts_with('{'))
                .map(|raw| raw.get().to_owned())
        })
        .unwrap_or_else(|| match &code {
            Some(code) => format!("the agent reported error code {code} without a message"),
            None => "the agent reported an error without a message".to_owned(),
        });
    let details = frame
        .error_details
        .filter(|raw| raw.get() != "null")
        .or_else(|| frame.error.filter(|raw| raw.get().starts_with('{')))
        .map(|raw| RawJson(raw.to_owned()));
    Some(StreamError {
        code,
        message,
        details,
    })
}

fn unknown(raw: &str) -> AgentEvent {
    AgentEvent::Unknown(UnknownEvent {
        raw: raw.to_owned(),
        json: serde_json::from_str(raw).ok(),
    })
}

fn raw_or_null(raw: Option<&RawValue>) -> RawJson {
    RawJson(raw.unwrap_or(RawValue::NULL).to_owned())
}

/// An id as text: a JSON string's contents, or a JSON number's exact digits.
fn id_text(raw: Option<&RawValue>) -> Option<String> {
    let text = raw?.get();
    let first = text.as_bytes().first()?;
    match first {
        b'"' => match text.get(1..text.len() - 1) {
            Some(inner) if !inner.contains('\\') => Some(inner.to_owned()),
            _ => serde_json::from_str::<String>(text).ok(),
        },
        b'-' | b'0'..=b'9' => Some(text.to_owned()),
        _ => None,
    }
}

fn is_non_empty_object(raw: &RawValue) -> bool {
    let text = raw.get();
    text.starts_with('{') && !text[1..].trim_start().starts_with('}')
}

fn normalise_tool_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut previous_lower_or_digit = false;
    for c in name.trim().chars() {
        if c.is_ascii_uppercase() {
            if previous_lower_or_digit {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            previous_lower_or_digit = false;
        } else if matches!(c, '-' | '.' | ' ') {
            out.push('_');
            previous_lower_or_digit = false;
        } else {
            out.push(c);
            previous_lower_or_digit = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Wire types: borrowed from the frame, every field optional and tolerant of wrong types.
// No `flatten` or `untagged`: both buffer the input into serde's `Content` tree.
// ---------------------------------------------------------------------------------------------

/// Implements the `Visitor` methods for every JSON value a tolerant field does not want:
/// they consume the value and give `$default`.
macro_rules! ignore_other_values {
    ($default:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($default)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($default)
        }
    };
}

/// Same as [`ignore_other_values`] minus `visit_map`, for visitors that want objects.
macro_rules! ignore_non_objects {
    ($default:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($default)
        }
    };
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireFrame<'a> {
    #[serde(borrow, rename = "type")]
    kind: LStr<'a>,
    #[serde(borrow)]
    content: WireContentField<'a>,
    #[serde(borrow)]
    name: LStr<'a>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    response: Option<&'a RawValue>,
    thought: LBool,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow, alias = "errorDetails")]
    error_details: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    message: LStr<'a>,
    #[serde(borrow, rename = "invocationId", alias = "invocation_id")]
    invocation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    author: LStr<'a>,
    partial: LBool,
    #[serde(rename = "turnComplete", alias = "turn_complete")]
    turn_complete: LBool,
    #[serde(borrow, rename = "errorCode", alias = "error_code")]
    error_code: Option<&'a RawValue>,
    #[serde(borrow, rename = "errorMessage", alias = "error_message")]
    error_message: LStr<'a>,
    #[serde(borrow)]
    actions: Lenient<WireActions<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireContent<'a> {
    #[serde(borrow)]
    parts: RawList<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireActions<'a> {
    #[serde(borrow, rename = "stateDelta", alias = "state_delta")]
    state_delta: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WirePart<'a> {
    #[serde(borrow)]
    text: LStr<'a>,
    thought: LBool,
    #[serde(borrow, rename = "functionCall", alias = "function_call")]
    function_call: Lenient<WireFunctionCall<'a>>,
    #[serde(borrow, rename = "functionResponse", alias = "function_response")]
    function_response: Lenient<WireFunctionResponse<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireFunctionCall<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: LStr<'a>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireFunctionResponse<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: LStr<'a>,
    #[serde(borrow)]
    response: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireErrorObject<'a> {
    #[serde(borrow, alias = "msg", alias = "detail")]
    message: LStr<'a>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct QuestionArgs<'a> {
    #[serde(borrow)]
    question: LStr<'a>,
    #[serde(borrow)]
    text: LStr<'a>,
    #[serde(borrow)]
    prompt: LStr<'a>,
    #[serde(borrow)]
    options: LList<OptionLabel<'a>>,
    #[serde(borrow)]
    choices: LList<OptionLabel<'a>>,
}

/// An answer option: a string, or an object's `label`/`text`/`value` string.
#[derive(Default)]
struct OptionLabel<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for OptionLabel<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Labelled<'a> {
            #[serde(borrow)]
            label: LStr<'a>,
            #[serde(borrow)]
            text: LStr<'a>,
            #[serde(borrow)]
            value: LStr<'a>,
        }
        struct OptionVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for OptionVisitor<'a> {
            type Value = OptionLabel<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an answer option")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(OptionLabel(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OptionLabel(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let labelled = Labelled::deserialize(MapAccessDeserializer::new(map))?;
                Ok(OptionLabel(
                    labelled.label.0.or(labelled.text.0).or(labelled.value.0),
                ))
            }
            ignore_non_objects!(OptionLabel(None));
        }
        deserializer.deserialize_any(OptionVisitor(PhantomData))
    }
}

/// The entries of a JSON object, borrowed; any other value gives no entries.
struct ObjectEntries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for ObjectEntries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = ObjectEntries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    entries.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(ObjectEntries(entries))
            }
            ignore_non_objects!(ObjectEntries(Vec::new()));
        }
        deserializer.deserialize_any(EntriesVisitor(PhantomData))
    }
}

/// A string field; any other JSON value reads as absent.
#[derive(Default)]
struct LStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = LStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v))))
            }
            ignore_other_values!(LStr(None));
        }
        deserializer.deserialize_any(StrVisitor(PhantomData))
    }
}

/// A boolean field; any other JSON value reads as `false`.
#[derive(Default)]
struct LBool(bool);

impl<'de> Deserialize<'de> for LBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoolVisitor;
        impl<'de> Visitor<'de> for BoolVisitor {
            type Value = LBool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LBool(v))
            }
            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(LBool(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LBool(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LBool(false))
            }
        }
        deserializer.deserialize_any(BoolVisitor)
    }
}

/// An object field decoded as `T`; any other JSON value reads as absent. `T`'s own fields must
/// be tolerant too, so that decoding cannot fail below this point.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|value| Lenient(Some(value)))
            }
            ignore_non_objects!(Lenient(None));
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// An array of raw JSON values, borrowed; any other JSON value reads as empty.
#[derive(Default)]
struct RawList<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for RawList<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ListVisitor<'a> {
            type Value = RawList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(RawList(items))
            }
            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RawList(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawList(Vec::new()))
            }
        }
        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

/// An array of tolerant items; any other JSON value reads as absent.
struct LList<T>(Option<Vec<T>>);

impl<T> Default for LList<T> {
    fn default() -> Self {
        LList(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = LList<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<T>()? {
                    items.push(item);
                }
                Ok(LList(Some(items)))
            }
            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LList(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LList(None))
            }
        }
        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

/// `content`: an ADK content object, the simplified shape's text, or anything else (ignored).
#[derive(Default)]
enum WireContentField<'a> {
    #[default]
    Absent,
    Object(WireContent<'a>),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireContentField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
            type Value = WireContentField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content object or a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireContentField::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireContentField::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireContentField::Text(Cow::Owned(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                WireContent::deserialize(MapAccessDeserializer::new(map))
                    .map(WireContentField::Object)
            }
            ignore_non_objects!(WireContentField::Absent);
        }
        deserializer.deserialize_any(ContentVisitor(PhantomData))
    }
}
