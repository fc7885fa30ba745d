//! Incremental parser for `text/event-stream` (server-sent events): bytes in, frames out.
//!
//! # Policy and defaults
//!
//! - **Spec.** Lines are interpreted as in the WHATWG HTML standard, section "Interpreting an
//!   event stream": `data`, `event`, `id` and `retry` fields; a line without a colon is a field
//!   name with an empty value; one space after the colon is stripped (only one); several `data`
//!   lines are joined with `\n`; a blank line dispatches the event; LF, CRLF and CR all end a
//!   line (a CR at the end of one push and an LF at the start of the next are one line
//!   ending); one leading UTF-8 byte order mark is ignored at the start of the
//!   stream; unknown fields are ignored; an `id` containing NUL is ignored; `retry` is used
//!   only when it is all ASCII digits.
//! - **No data, no event.** A block without any `data` line (for example only `event:` or
//!   `id:`) dispatches nothing, as the spec says. A block with an *empty* `data:` line is an
//!   event whose data is the empty string: this service sends those as heartbeats.
//! - **Comments are frames.** A line starting with `:` becomes [`SseFrame::Comment`] as soon as
//!   its line ending arrives (one space after the colon is stripped). This service uses them
//!   as heartbeats, so they are surfaced instead of dropped.
//! - **Timing.** An event comes out of [`next_frame`](SseParser::next_frame) exactly when the
//!   blank line that ends it has been pushed: no earlier, no later.
//! - **End of stream.** Unlike a browser, [`finish`](SseParser::finish) dispatches a final
//!   event whose blank line never arrived, and treats a last line without a line ending as a
//!   complete line: this service may close the connection right after the last event.
//! - **Invalid UTF-8** is decoded lossily (U+FFFD); it is never an error and never panics.
//! - **Bounded memory.** Default limit: 16 MiB ([`DEFAULT_MAX_EVENT_SIZE`]) per event,
//!   counted over the raw bytes the parser must hold for it (its data so far, the lines
//!   between, and the line being read, field names included); a single line or comment is
//!   bounded the same way. Past the limit [`next_frame`](SseParser::next_frame) returns
//!   [`SseError::EventTooLarge`] once, drops what it holds of that event, discards input up
//!   to and including the next blank line, and then continues normally with the next event.
//!   The parser buffers what you push until you call `next_frame`, so drain it (call
//!   `next_frame` until `None`) after each push; then it never holds more than the limit
//!   plus one pushed chunk, and once drained it holds no chunk given to
//!   [`push_bytes`](SseParser::push_bytes).
//! - **Ids.** [`SseEvent::id`] is the `id` set in that event's own block (`None` if the block
//!   had no valid `id` line); [`SseParser::last_event_id`] is the spec's persistent "last
//!   event ID", the value to send as `Last-Event-ID` when reconnecting.
//! - **Two ways in, one result.** [`push`](SseParser::push) takes a borrowed `&[u8]` and
//!   copies it into the parser's buffer; [`push_bytes`](SseParser::push_bytes) takes an owned
//!   [`Bytes`] (what an HTTP client hands out) and parses it where it lies. Both give exactly
//!   the same frames and errors for the same bytes, however they are chunked, and they can be
//!   mixed.
//! - **Cost.** Work is linear in the bytes pushed, whatever the chunking: the scan for a line
//!   ending resumes where it stopped. Each event's data is validated as UTF-8 once, when the
//!   event is dispatched (with [`simdutf8`], which uses SIMD where the CPU has it), and an
//!   event with one data line is handed out as a slice of the input without copying it (it
//!   keeps that allocation alive while you hold it). Copies: `push` copies every byte once;
//!   `push_bytes` copies only a line cut by the end of a chunk (its two parts are joined),
//!   the data of an event whose blank line is in a later chunk, and (both ways) data spread
//!   over several `data` lines, comments, and the `event` and `id` values.
//!
//! # Example
//!
//! ```
//! use nemo_video::sse::{SseFrame, SseParser};
//!
//! let mut parser = SseParser::new();
//! let mut frames = Vec::new();
//! // Bytes arrive in arbitrary pieces, here split inside a line.
//! for chunk in [&b": ping\n\ndata: {\"author\""[..], b":\"nemo\"}\n\ndata: last"] {
//!     parser.push(chunk);
//!     while let Some(frame) = parser.next_frame() {
//!         frames.push(frame.expect("events are far below the size limit"));
//!     }
//! }
//! // The connection closed: flush the last event, which lacks its blank line.
//! while let Some(frame) = parser.finish() {
//!     frames.push(frame.expect("events are far below the size limit"));
//! }
//!
//! assert!(matches!(&frames[0], SseFrame::Comment(text) if text == "ping"));
//! let SseFrame::Event(event) = &frames[1] else { panic!("expected an event") };
//! assert_eq!(event.data(), r#"{"author":"nemo"}"#);
//! assert_eq!(event.event_type(), None); // the default type, "message"
//! let SseFrame::Event(last) = &frames[2] else { panic!("expected an event") };
//! assert_eq!(last.data(), "last");
//! assert_eq!(frames.len(), 3);
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

/// The default for [`SseParser::with_max_event_size`]: 16 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Minimum growth of the input buffer; see [`SseParser::push`].
const MIN_RESERVE: usize = 32 * 1024;

/// Scratch space for multi-line data above this size is released after the event, so one
/// huge event does not pin its memory for the rest of the stream.
const MAX_RETAINED_SCRATCH: usize = 64 * 1024;

/// One unit of an event stream: a dispatched event or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseFrame {
    /// An event, dispatched by a blank line (or by [`SseParser::finish`]).
    Event(SseEvent),
    /// A comment line (`: text`), with the colon and one following space removed. This
    /// service sends comments as heartbeats.
    Comment(String),
}

/// A dispatched server-sent event.
///
/// Cloning is cheap: the data is reference-counted.
#[derive(Clone)]
pub struct SseEvent {
    /// Always valid UTF-8: it holds either the bytes of a `String` or bytes that `is_utf8`
    /// accepted, and it is never mutated after the event is built.
    data: Bytes,
    /// Boxed because most events have none: keeps frames small to move around.
    meta: Option<Box<Meta>>,
}

/// The fields of a block besides its data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Meta {
    event_type: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.event_type.is_none() && self.id.is_none() && self.retry.is_none()
    }
}

impl SseEvent {
    /// Creates an event with the given data, the default type and no id or retry; useful to
    /// build expected values in tests.
    #[must_use]
    pub fn new(data: impl Into<String>) -> Self {
        Self {
            data: Bytes::from(data.into()),
            meta: None,
        }
    }

    /// Sets the event type (an empty string means the default type, as on the wire).
    #[must_use]
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        let event_type = event_type.into();
        self.meta_mut().event_type = (!event_type.is_empty()).then_some(event_type);
        self
    }

    /// Sets the id given in this event's block.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.meta_mut().id = Some(id.into());
        self
    }

    /// Sets the reconnection time given in this event's block.
    #[must_use]
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.meta_mut().retry = Some(retry);
        self
    }

    fn meta_mut(&mut self) -> &mut Meta {
        self.meta.get_or_insert_with(Box::default)
    }

    /// The event data: the `data` lines of the block joined with `\n`. Empty for a block
    /// whose only data line is an empty `data:` (a heartbeat on this service).
    #[must_use]
    pub fn data(&self) -> &str {
        // SAFETY: `data` is valid UTF-8. Only two places build an `SseEvent`: `SseEvent::new`
        // stores the bytes of a `String`, and `SseParser::dispatch` stores either bytes that
        // `is_utf8` (simdutf8) has just accepted or the bytes of a lossily decoded `String`.
        // No method mutates `data` afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.data) }
    }

    /// The data as shared bytes (valid UTF-8), without copying.
    #[must_use]
    pub fn data_bytes(&self) -> &Bytes {
        &self.data
    }

    /// Consumes the event and returns its data as shared bytes (valid UTF-8), without copying.
    #[must_use]
    pub fn into_data_bytes(self) -> Bytes {
        self.data
    }

    /// The event type from an `event:` line, or `None` for the default type `"message"`
    /// (no `event` line, or an empty one).
    #[must_use]
    pub fn event_type(&self) -> Option<&str> {
        self.meta.as_ref()?.event_type.as_deref()
    }

    /// The id set by an `id` line in this event's own block (the last one if several);
    /// `Some("")` for an `id` line without a value; `None` if the block had no `id` line or
    /// only ones containing NUL. For the id that persists across events, see
    /// [`SseParser::last_event_id`].
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.meta.as_ref()?.id.as_deref()
    }

    /// The reconnection time from a valid `retry` line (all ASCII digits, in milliseconds)
    /// in this event's own block. For the value that persists, see
    /// [`SseParser::reconnection_time`].
    #[must_use]
    pub fn retry(&self) -> Option<Duration> {
        self.meta.as_ref()?.retry
    }
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("data", &self.data())
            .field("event_type", &self.event_type())
            .field("id", &self.id())
            .field("retry", &self.retry())
            .finish()
    }
}

impl PartialEq for SseEvent {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
            && self.event_type() == other.event_type()
            && self.id() == other.id()
            && self.retry() == other.retry()
    }
}

impl Eq for SseEvent {}

/// Why the parser could not produce a frame. The parser stays usable after any error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseError {
    /// An event, a line or a comment exceeded the size limit. The parser dropped it and
    /// skips input up to and including the next blank line, then continues.
    EventTooLarge {
        /// The limit in bytes that was exceeded.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTooLarge { limit } => write!(
                f,
                "a server-sent event exceeded the {limit}-byte limit and was skipped; if the \
                 server legitimately sends events this large, raise the limit with \
                 SseParser::with_max_event_size"
            ),
        }
    }
}

impl std::error::Error for SseError {}

/// Where the data of the event being read lives.
#[derive(Debug, Clone)]
enum Data {
    /// No `data` line yet: at the blank line nothing is dispatched.
    None,
    /// Exactly one `data` line, whose value is `window[start..end]`.
    Line { start: usize, end: usize },
    /// Exactly one `data` line, taken out of an earlier window without copying it (the
    /// parser moved on to the next chunk before the event's blank line came). `before`
    /// counts the bytes of this event that precede offset 0 of the window (the line, its
    /// line ending and the lines since), for the size limit. `pinned`: `value` is a slice
    /// of a chunk from `push_bytes` (not of the parser's own buffer).
    Held {
        value: Bytes,
        before: usize,
        pinned: bool,
    },
    /// Several `data` lines, joined with `\n` in `joined`.
    Joined,
}

/// The input being parsed: either the parser's own buffer, which [`SseParser::push`] copies
/// into, or a chunk handed over by [`SseParser::push_bytes`], parsed where it lies.
enum Window {
    Owned(BytesMut),
    Shared(Bytes),
}

impl std::ops::Deref for Window {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Window::Owned(bytes) => bytes,
            Window::Shared(bytes) => bytes,
        }
    }
}

impl Window {
    #[inline]
    fn advance(&mut self, n: usize) {
        match self {
            Window::Owned(bytes) => bytes.advance(n),
            Window::Shared(bytes) => bytes.advance(n),
        }
    }

    /// Removes `self[..end]` and returns `self[start..end]` as shared bytes, without copying.
    #[inline]
    fn take_front(&mut self, start: usize, end: usize) -> Bytes {
        if start == end {
            self.advance(end);
            return Bytes::new();
        }
        self.advance(start);
        match self {
            Window::Owned(bytes) => bytes.split_to(end - start).freeze(),
            Window::Shared(bytes) => bytes.split_to(end - start),
        }
    }
}

/// What [`SseParser::pull`] did.
enum Pulled {
    /// No chunk was waiting.
    Nothing,
    /// The window moved on; parse on.
    Input,
    /// The line cut by the end of the last chunk was a whole `data` event, taken.
    Event(SseEvent),
}

/// An incremental server-sent events parser. See the [module docs](self) for the policy.
///
/// Feed bytes with [`push`](Self::push) or [`push_bytes`](Self::push_bytes), take frames
/// with [`next_frame`](Self::next_frame) until it returns `None`, and at end of stream call
/// [`finish`](Self::finish) until it returns `None`.
pub struct SseParser {
    /// The input being parsed. Offset 0 is the first byte still needed: the start of the
    /// event's single data line, or else the start of the current line.
    window: Window,
    /// Chunks given to `push_bytes` that the window has not reached yet, in order.
    queue: VecDeque<Bytes>,
    /// An empty buffer kept for the next line cut by the end of a chunk, so that joining
    /// such a line does not allocate each time.
    spare: BytesMut,
    /// Start of the line being read.
    line_start: usize,
    /// Where the search for the current line's ending resumes; `line_start..scan_pos` holds
    /// no CR or LF. This is what keeps the work linear when a line arrives in many pieces.
    scan_pos: usize,
    data: Data,
    joined: Vec<u8>,
    /// `event`, `id` and `retry` of the block being read.
    meta: Meta,
    /// The spec's "last event ID buffer", set by `id` lines.
    last_event_id_buffer: String,
    /// Whether `last_event_id_buffer` changed since the last blank line (saves a copy per
    /// event on streams that never send ids).
    last_event_id_dirty: bool,
    /// The spec's "last event ID string", updated at each blank line.
    last_event_id: String,
    reconnection_time: Option<Duration>,
    max_event_size: usize,
    /// The last line ended with a CR that was the last byte available: an LF first in the
    /// next input completes that CRLF and is not a line of its own.
    skip_lf: bool,
    /// At the start of a stream: a BOM may still come.
    bom_pending: bool,
    /// `finish` was called: no more input will complete a partial BOM.
    at_eof: bool,
    /// After `EventTooLarge`: ignore lines up to and including the next blank line.
    skipping: bool,
    /// The beginning of the current line was dropped (it was too large or skipped); its
    /// remainder, up to its line ending, is ignored.
    discarding_line: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SseParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queued: usize = self.queue.iter().map(Bytes::len).sum();
        f.debug_struct("SseParser")
            .field("buffered_bytes", &(self.window.len() + queued))
            .field("max_event_size", &self.max_event_size)
            .field("last_event_id", &self.last_event_id)
            .field("reconnection_time", &self.reconnection_time)
            .finish_non_exhaustive()
    }
}

impl SseParser {
    /// Creates a parser with the default size limit of 16 MiB per event
    /// ([`DEFAULT_MAX_EVENT_SIZE`]).
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// Creates a parser that rejects events, lines and comments larger than `bytes` with
    /// [`SseError::EventTooLarge`]. Default: 16 MiB ([`DEFAULT_MAX_EVENT_SIZE`]). A limit of
    /// 0 is raised to 1.
    #[must_use]
    pub fn with_max_event_size(bytes: usize) -> Self {
        Self {
            window: Window::Owned(BytesMut::new()),
            queue: VecDeque::new(),
            spare: BytesMut::new(),
            line_start: 0,
            scan_pos: 0,
            data: Data::None,
            joined: Vec::new(),
            meta: Meta::default(),
            last_event_id_buffer: String::new(),
            last_event_id_dirty: false,
            last_event_id: String::new(),
            reconnection_time: None,
            max_event_size: bytes.max(1),
            skip_lf: false,
            bom_pending: true,
            at_eof: false,
            skipping: false,
            discarding_line: false,
        }
    }

    /// The size limit in bytes for one event, line or comment.
    #[must_use]
    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// The spec's "last event ID string": the value of the most recent `id` line (without
    /// NUL) as of the last dispatched blank line, even if that block had no data; `""`
    /// before any. It persists across events and across [`finish`](Self::finish), so it can
    /// be sent as `Last-Event-ID` when reconnecting.
    #[must_use]
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The most recent valid `retry` value seen, in any block, dispatched or not (the spec's
    /// "reconnection time"); `None` before any. Persists across [`finish`](Self::finish).
    #[must_use]
    pub fn reconnection_time(&self) -> Option<Duration> {
        self.reconnection_time
    }

    /// Appends bytes received from the stream, copying them into the parser's buffer.
    /// Chunks may split lines, line endings and UTF-8 sequences anywhere. Nothing is parsed
    /// until [`next_frame`](Self::next_frame), so call it until `None` after each push to keep
    /// memory bounded. When the bytes arrive as [`Bytes`], [`push_bytes`](Self::push_bytes)
    /// avoids the copy.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let Window::Owned(buf) = &mut self.window else {
            // The window is a chunk from `push_bytes`: these bytes come after it.
            self.queue.push_back(Bytes::copy_from_slice(bytes));
            return;
        };
        if !self.queue.is_empty() {
            self.queue.push_back(Bytes::copy_from_slice(bytes));
            return;
        }
        if buf.capacity() - buf.len() < bytes.len() {
            // Reserve generously: `BytesMut` then reclaims the consumed front of its buffer
            // (moving the few unconsumed bytes back) once per `MIN_RESERVE` bytes instead of
            // once per small push. Never more than twice the event limit, though: the buffer
            // never needs to hold more than one unfinished event plus the push, so memory
            // stays proportional to the limit even when it is tiny.
            let generous = MIN_RESERVE.min(self.max_event_size.saturating_mul(2));
            buf.reserve(bytes.len().max(generous));
        }
        buf.extend_from_slice(bytes);
    }

    /// Appends a chunk received from the stream without copying it: the parser reads the
    /// chunk where it lies, and an event whose data is one line inside the chunk is handed
    /// out as a slice of it. Gives exactly the frames and errors that [`push`](Self::push)
    /// of the same bytes gives, and the two can be mixed.
    ///
    /// Only a line cut by the end of a chunk is copied (its start is kept until the rest
    /// arrives), as is data spread over several `data` lines. The parser lets go of the
    /// chunk once [`next_frame`](Self::next_frame) has returned `None`; an event's data keeps
    /// the chunk's allocation alive while you hold the event.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use nemo_video::sse::{SseFrame, SseParser};
    ///
    /// let mut parser = SseParser::new();
    /// parser.push_bytes(Bytes::from_static(b"data: {\"text\":\"hi\"}\n\ndata: par"));
    /// let Some(Ok(SseFrame::Event(event))) = parser.next_frame() else { panic!() };
    /// assert_eq!(event.data(), r#"{"text":"hi"}"#);
    /// assert!(parser.next_frame().is_none());
    /// parser.push_bytes(Bytes::from_static(b"tial\n\n"));
    /// let Some(Ok(SseFrame::Event(event))) = parser.next_frame() else { panic!() };
    /// assert_eq!(event.data(), "partial");
    /// ```
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queue.push_back(bytes);
        }
    }

    /// Returns the next complete frame, or `None` when more input is needed.
    ///
    /// An event is returned exactly when its blank line has been pushed; a comment when its
    /// line ending has. After `Some(Err(_))` keep calling: the parser has recovered.
    pub fn next_frame(&mut self) -> Option<Result<SseFrame, SseError>> {
        if self.bom_pending && !self.strip_bom() {
            return None;
        }
        loop {
            let len = self.window.len();
            if self.skip_lf {
                if self.line_start == len {
                    match self.pull() {
                        Pulled::Nothing => return self.need_more(),
                        Pulled::Input => continue,
                        Pulled::Event(event) => return Some(Ok(SseFrame::Event(event))),
                    }
                }
                self.skip_lf = false;
                if self.window[self.line_start] == b'\n' {
                    self.line_start += 1;
                    self.scan_pos = self.line_start;
                }
            }
            let Some(offset) = find_line_end(&self.window[self.scan_pos..]) else {
                match self.pull() {
                    Pulled::Nothing => return self.need_more(),
                    Pulled::Input => continue,
                    Pulled::Event(event) => return Some(Ok(SseFrame::Event(event))),
                }
            };
            let start = self.line_start;
            let end = self.scan_pos + offset;
            if let Some(event) = self.whole_data_event(start, end) {
                return Some(Ok(SseFrame::Event(event)));
            }
            let mut next = end + 1;
            if self.window[end] == b'\r' {
                if next == len {
                    self.skip_lf = true;
                } else if self.window[next] == b'\n' {
                    next += 1;
                }
            }
            self.line_start = next;
            self.scan_pos = next;
            if let Some(frame) = self.line(start, end) {
                return Some(frame);
            }
        }
    }

    /// The common event, `data: ...` then a blank line, both ended by LF, with no other
    /// `data` line before it, taken in one step. Gives exactly what the line-by-line path
    /// gives (`line` for both lines); `None` when the line is anything else.
    #[inline]
    fn whole_data_event(&mut self, start: usize, end: usize) -> Option<SseEvent> {
        let window = &self.window[..];
        if window[end] != b'\n'
            || window.get(end + 1) != Some(&b'\n')
            || !window[start..end].starts_with(b"data:")
            || !matches!(self.data, Data::None)
            || self.skipping
            || self.discarding_line
            || end - start > self.max_event_size
        {
            return None;
        }
        let mut value_start = start + 5;
        if value_start < end && window[value_start] == b' ' {
            value_start += 1;
        }
        self.data = Data::Line {
            start: value_start,
            end,
        };
        self.line_start = end + 2;
        self.scan_pos = end + 2;
        self.dispatch()
    }

    /// Call at end of stream, until it returns `None`: returns the frames still complete in
    /// the buffer, then treats a last line without a line ending as complete, then
    /// dispatches the last event even though its blank line never came.
    ///
    /// Once it has returned `None` the parser is ready for a new stream (a new connection):
    /// everything is reset except [`last_event_id`](Self::last_event_id),
    /// [`reconnection_time`](Self::reconnection_time) and the size limit.
    pub fn finish(&mut self) -> Option<Result<SseFrame, SseError>> {
        self.at_eof = true;
        if let Some(frame) = self.next_frame() {
            return Some(frame);
        }
        let (start, end) = (self.line_start, self.window.len());
        if start < end {
            self.line_start = end;
            self.scan_pos = end;
            if let Some(frame) = self.line(start, end) {
                return Some(frame);
            }
        }
        if self.skipping || self.discarding_line {
            self.skipping = false;
            self.discarding_line = false;
            self.reset_event();
        } else if let Some(event) = self.dispatch() {
            return Some(Ok(SseFrame::Event(event)));
        }
        self.reset_stream();
        None
    }

    /// Handles the optional BOM at the start of the stream. Returns false while the input
    /// could still be the start of one.
    fn strip_bom(&mut self) -> bool {
        loop {
            let head = &self.window[self.line_start..];
            if head.len() < BOM.len() && BOM.starts_with(head) {
                // (No event can come out of `pull` before the BOM is settled.)
                if !matches!(self.pull(), Pulled::Nothing) {
                    continue;
                }
                if !self.at_eof {
                    // Keep the two bytes or fewer, not the chunk they came in.
                    self.own_window(0);
                    return false;
                }
            }
            if self.window[self.line_start..].starts_with(BOM) {
                self.line_start += BOM.len();
                self.scan_pos = self.line_start;
            }
            self.bom_pending = false;
            return true;
        }
    }

    /// Moves on to the next chunk from `push_bytes`, if any. The window has no line ending
    /// after `scan_pos`; a line it has started is continued with the next chunk up to that
    /// line's end, in an owned buffer (the only copy on this path), and the rest of the chunk
    /// becomes the window after that.
    #[inline]
    fn pull(&mut self) -> Pulled {
        let Some(mut next) = self.queue.pop_front() else {
            return Pulled::Nothing;
        };
        self.detach_data();
        let len = self.window.len();
        if (self.skipping || self.discarding_line) && self.line_start < len {
            // The line is being ignored: no need to keep its start.
            self.discarding_line = true;
            self.line_start = len;
            self.scan_pos = len;
        }
        if self.line_start == len {
            self.replace_window(next);
            return Pulled::Input;
        }
        let line_end = find_line_end(&next);
        let cut = match line_end {
            // Take a blank line right after it too: the whole event is then in one place.
            Some(offset) if next[offset] == b'\n' && next.get(offset + 1) == Some(&b'\n') => {
                offset + 2
            }
            Some(offset) => offset + 1,
            None => next.len(),
        };
        self.consume_front(self.line_start);
        let carry = self.own_window(cut);
        carry.extend_from_slice(&next[..cut]);
        // Everything before the line ending just found was scanned already.
        self.scan_pos = carry.len() - (cut - line_end.unwrap_or(cut));
        if cut == next.len() {
            return Pulled::Input;
        }
        next.advance(cut);
        if let (Some(_), false) = (line_end, self.bom_pending) {
            // The common case of a cut line: a whole `data` event. Take it from the joined
            // line at once and go on with the rest of the chunk: saves a round through
            // `next_frame`.
            let end = self.scan_pos;
            if let Some(event) = self.whole_data_event(self.line_start, end) {
                self.replace_window(next);
                return Pulled::Event(event);
            }
        }
        self.queue.push_front(next);
        Pulled::Input
    }

    /// Makes `next` the window, once everything in the window is consumed (`line_start` is
    /// its end), and keeps the old window's buffer as the spare one.
    #[inline]
    fn replace_window(&mut self, next: Bytes) {
        debug_assert!(
            !matches!(self.data, Data::Line { .. }),
            "detach the data first"
        );
        if let Data::Held { before, .. } = &mut self.data {
            *before += self.line_start;
        }
        self.line_start = 0;
        self.scan_pos = 0;
        if let Window::Owned(mut owned) = std::mem::replace(&mut self.window, Window::Shared(next))
        {
            if owned.capacity() <= MAX_RETAINED_SCRATCH {
                owned.clear();
                self.spare = owned;
            }
        }
    }

    /// Makes the window an owned buffer (copying a shared window's bytes into the spare
    /// buffer) with room for `additional` more bytes, and returns it.
    #[inline]
    fn own_window(&mut self, additional: usize) -> &mut BytesMut {
        if let Window::Shared(shared) = &self.window {
            let mut owned = std::mem::take(&mut self.spare);
            owned.reserve(shared.len() + additional);
            owned.extend_from_slice(shared);
            self.window = Window::Owned(owned);
        }
        match &mut self.window {
            Window::Owned(owned) => {
                owned.reserve(additional);
                owned
            }
            Window::Shared(_) => unreachable!("the window was just made owned"),
        }
    }

    /// Takes a single data line out of the window, without copying it, so that the window
    /// can move on to another chunk.
    #[inline]
    fn detach_data(&mut self) {
        if let Data::Line { start, end } = self.data {
            let pinned = matches!(self.window, Window::Shared(_));
            let value = self.window.take_front(start, end);
            self.line_start -= end;
            self.scan_pos -= end;
            self.data = Data::Held {
                value,
                before: end - start,
                pinned,
            };
        }
    }

    /// Drops `window[..n]`, which holds nothing still needed.
    #[inline]
    fn consume_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.window.advance(n);
        self.line_start -= n;
        self.scan_pos -= n;
        match &mut self.data {
            Data::Line { start, end } => {
                *start -= n;
                *end -= n;
            }
            Data::Held { before, .. } => *before += n,
            Data::None | Data::Joined => {}
        }
    }

    /// No line ending in the input: enforce the limit on the partial line, release the
    /// bytes no longer needed, and ask for more input.
    #[inline]
    fn need_more(&mut self) -> Option<Result<SseFrame, SseError>> {
        let len = self.window.len();
        self.scan_pos = len;
        if self.skipping || self.discarding_line {
            // Nothing here is needed: drop it, remembering a partial line is being dropped.
            if self.line_start < len {
                self.discarding_line = true;
            }
            self.clear_buffer();
            return None;
        }
        if self.line_start < len && self.held(self.line_start, len) > self.max_event_size {
            self.reset_event();
            self.skipping = true;
            self.discarding_line = true;
            self.clear_buffer();
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            }));
        }
        if let Window::Shared(_) = self.window {
            // Let go of the chunk while waiting for more input, so that the network layer
            // can reuse its buffer: keep only the start of the unfinished line, copied, with
            // room for about as much again (the rest of the line).
            self.detach_data();
            self.consume_front(self.line_start);
            let partial = self.window.len();
            self.own_window(partial);
        } else {
            let keep_from = self.keep_from(self.line_start);
            self.consume_front(keep_from);
        }
        if let Data::Held { value, pinned, .. } = &mut self.data {
            // An event whose blank line has not come yet: copy its data (once) rather than
            // hold on to a chunk for as long as the server pauses.
            if *pinned {
                *value = Bytes::copy_from_slice(value);
                *pinned = false;
            }
        }
        None
    }

    /// The first window offset still needed when the current line starts at `line_start`.
    #[inline]
    fn keep_from(&self, line_start: usize) -> usize {
        match self.data {
            Data::Line { start, .. } => start,
            Data::None | Data::Held { .. } | Data::Joined => line_start,
        }
    }

    /// The bytes counted against the limit for the current event when the line starting at
    /// `line_start` reaches `end`: from its first data line (its first byte, or the current
    /// line's when it has none yet) to `end`, with joined data counted by its length.
    #[inline]
    fn held(&self, line_start: usize, end: usize) -> usize {
        match &self.data {
            Data::None => end - line_start,
            Data::Line { start, .. } => end - start,
            Data::Held { before, .. } => before + end,
            Data::Joined => end - line_start + self.joined.len(),
        }
    }

    /// Interprets the complete line `window[start..end]` (without its line ending).
    #[inline]
    fn line(&mut self, start: usize, end: usize) -> Option<Result<SseFrame, SseError>> {
        if self.discarding_line {
            self.discarding_line = false;
            return None;
        }
        if self.skipping {
            if start == end {
                self.skipping = false;
            }
            return None;
        }
        if start == end {
            return self.dispatch().map(|event| Ok(SseFrame::Event(event)));
        }
        if self.held(start, end) > self.max_event_size {
            self.reset_event();
            self.skipping = true;
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            }));
        }
        let line = &self.window[start..end];
        let (name_end, mut value_start) = if line.starts_with(b"data:") {
            (start + 4, start + 5)
        } else if line[0] == b':' {
            let text = strip_one_space(&line[1..]);
            return Some(Ok(SseFrame::Comment(lossy(text))));
        } else {
            match memchr::memchr(b':', line) {
                Some(colon) => (start + colon, start + colon + 1),
                None => (end, end),
            }
        };
        if value_start < end && self.window[value_start] == b' ' {
            value_start += 1;
        }
        match &self.window[start..name_end] {
            b"data" => self.push_data(value_start, end),
            b"event" => {
                let value = &self.window[value_start..end];
                self.meta.event_type = (!value.is_empty()).then(|| lossy(value));
            }
            b"id" => {
                let value = &self.window[value_start..end];
                if memchr::memchr(0, value).is_none() {
                    let id = lossy(value);
                    self.last_event_id_buffer.clone_from(&id);
                    self.last_event_id_dirty = true;
                    self.meta.id = Some(id);
                }
            }
            b"retry" => {
                let value = &self.window[value_start..end];
                if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
                    // Only digits, so parsing fails only on overflow: ignore such a value.
                    let millis = std::str::from_utf8(value)
                        .ok()
                        .and_then(|digits| digits.parse::<u64>().ok());
                    if let Some(millis) = millis {
                        let retry = Duration::from_millis(millis);
                        self.meta.retry = Some(retry);
                        self.reconnection_time = Some(retry);
                    }
                }
            }
            _ => {}
        }
        None
    }

    #[inline]
    fn push_data(&mut self, value_start: usize, value_end: usize) {
        let value = &self.window[value_start..value_end];
        match &self.data {
            Data::None => {
                self.data = Data::Line {
                    start: value_start,
                    end: value_end,
                };
            }
            Data::Line { start, end } => {
                self.joined.clear();
                self.joined.extend_from_slice(&self.window[*start..*end]);
                self.joined.push(b'\n');
                self.joined.extend_from_slice(value);
                self.data = Data::Joined;
            }
            Data::Held { value: first, .. } => {
                self.joined.clear();
                self.joined.extend_from_slice(first);
                self.joined.push(b'\n');
                self.joined.extend_from_slice(value);
                self.data = Data::Joined;
            }
            Data::Joined => {
                self.joined.push(b'\n');
                self.joined.extend_from_slice(value);
            }
        }
    }

    /// The blank-line step of the spec. Returns the event if the block had data.
    #[inline]
    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.last_event_id_dirty {
            self.last_event_id.clone_from(&self.last_event_id_buffer);
            self.last_event_id_dirty = false;
        }
        let meta = if self.meta.is_empty() {
            None
        } else {
            Some(Box::new(std::mem::take(&mut self.meta)))
        };
        let data = match std::mem::replace(&mut self.data, Data::None) {
            Data::None => return None,
            Data::Line { start, end } if start == end => Bytes::new(),
            Data::Line { start, end } => {
                if is_utf8(&self.window[start..end]) {
                    // Hand out the line itself: no copy. Offsets are rebased past it.
                    let rest_needed = self.line_start < self.window.len();
                    if let (Window::Shared(bytes), false) = (&mut self.window, rest_needed) {
                        // The event ends its chunk: hand over the window's own handle on the
                        // chunk (saves counting one more reference).
                        let mut data = std::mem::take(bytes);
                        data.advance(start);
                        data.truncate(end - start);
                        self.line_start = 0;
                        self.scan_pos = 0;
                        data
                    } else {
                        let data = self.window.take_front(start, end);
                        self.line_start -= end;
                        self.scan_pos -= end;
                        data
                    }
                } else {
                    Bytes::from(lossy(&self.window[start..end]))
                }
            }
            Data::Held { value, .. } => {
                if is_utf8(&value) {
                    value
                } else {
                    Bytes::from(lossy(&value))
                }
            }
            Data::Joined => {
                let data = if is_utf8(&self.joined) {
                    Bytes::copy_from_slice(&self.joined)
                } else {
                    Bytes::from(lossy(&self.joined))
                };
                if self.joined.capacity() > MAX_RETAINED_SCRATCH {
                    self.joined = Vec::new();
                } else {
                    self.joined.clear();
                }
                data
            }
        };
        Some(SseEvent { data, meta })
    }

    /// Drops all buffered input.
    fn clear_buffer(&mut self) {
        match &mut self.window {
            Window::Owned(buf) => buf.clear(),
            Window::Shared(_) => self.window = Window::Owned(std::mem::take(&mut self.spare)),
        }
        self.line_start = 0;
        self.scan_pos = 0;
    }

    /// Forgets the event being read (after an error).
    fn reset_event(&mut self) {
        self.data = Data::None;
        self.joined = Vec::new();
        self.meta = Meta::default();
    }

    /// Prepares for a new stream; keeps what the spec keeps across reconnections.
    fn reset_stream(&mut self) {
        self.reset_event();
        self.clear_buffer();
        self.queue.clear();
        self.skip_lf = false;
        self.bom_pending = true;
        self.at_eof = false;
        self.skipping = false;
        self.discarding_line = false;
    }
}

/// Index of the first CR or LF.
#[inline]
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    // Blank lines and short lines are common: look at the first byte before paying for
    // the vectorised search.
    match bytes.first() {
        None => None,
        Some(b'\n' | b'\r') => Some(0),
        Some(_) => memchr::memchr2(b'\n', b'\r', bytes),
    }
}

#[inline]
fn strip_one_space(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

/// Whether `bytes` is valid UTF-8: `std::str::from_utf8(bytes).is_ok()`, vectorised.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    simdutf8::basic::from_utf8(bytes).is_ok()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
