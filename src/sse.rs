//! Incremental parser for `text/event-stream` (server-sent events): bytes in, frames out.
//!
//! # Policy and defaults
//!
//! - **Spec.** Lines are interpreted as in the WHATWG HTML standard, section "Interpreting an
//!   event stream": `data`, `event`, `id` and `retry` fields; a line without a colon is a field
//!   name with an empty value; one space after the colon is stripped (only one); several `data`
//!   lines are joined with `\n`; a blank line dispatches the event; LF, CRLF and CR all end a
//!   line (a CR at the end of one [`push`](SseParser::push) and an LF at the start of the next
//!   are one line ending); one leading UTF-8 byte order mark is ignored at the start of the
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
//!   The parser buffers what you [`push`](SseParser::push) until you call `next_frame`, so
//!   drain it (call `next_frame` until `None`) after each push; then it never holds more than
//!   the limit plus one pushed chunk.
//! - **Ids.** [`SseEvent::id`] is the `id` set in that event's own block (`None` if the block
//!   had no valid `id` line); [`SseParser::last_event_id`] is the spec's persistent "last
//!   event ID", the value to send as `Last-Event-ID` when reconnecting.
//! - **Cost.** Work is linear in the bytes pushed, whatever the chunking: the scan for a line
//!   ending resumes where it stopped. Each input byte is copied once (into the parser's
//!   buffer); on x86-64 with AVX2 it is validated as UTF-8 in the same pass, so most events
//!   need no second look. An event with one data line is handed out as a slice of that
//!   buffer without copying it (it keeps the buffer's allocation alive while you hold it).
//!   The vectorised code is private, checked against the standard library by the tests, and
//!   falls back to the standard library on other CPUs.
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
    /// Always valid UTF-8: built only from validated bytes or from a `String`.
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
        // SAFETY: every constructor stores either bytes that passed `std::str::from_utf8` or
        // the bytes of a `String`, and `data` is never mutated afterwards.
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
#[derive(Debug, Clone, Copy)]
enum Data {
    /// No `data` line yet: at the blank line nothing is dispatched.
    None,
    /// Exactly one `data` line, whose value is `buf[start..end]`.
    Line { start: usize, end: usize },
    /// Several `data` lines, joined with `\n` in `joined`.
    Joined,
}

/// An incremental server-sent events parser. See the [module docs](self) for the policy.
///
/// Feed bytes with [`push`](Self::push), take frames with [`next_frame`](Self::next_frame)
/// until it returns `None`, and at end of stream call [`finish`](Self::finish) until it
/// returns `None`.
pub struct SseParser {
    /// Unconsumed input. Offset 0 is the first byte still needed: the start of the event's
    /// single data line, or else the start of the current line.
    buf: BytesMut,
    /// Start of the line being read.
    line_start: usize,
    /// Where the search for the current line's ending resumes; `line_start..scan_pos` holds
    /// no CR or LF. This is what keeps the work linear when a line arrives in many pieces.
    scan_pos: usize,
    data: Data,
    joined: Vec<u8>,
    /// With `Data::Joined`: every joined line was known to be valid UTF-8.
    joined_valid: bool,
    /// How far `push` has validated the buffer as UTF-8 while copying it in.
    utf8: simd::Progress,
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
    /// The last line ended with a CR that was the last byte pushed: an LF first in the next
    /// push completes that CRLF and is not a line of its own.
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
        f.debug_struct("SseParser")
            .field("buffered_bytes", &self.buf.len())
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
            buf: BytesMut::new(),
            line_start: 0,
            scan_pos: 0,
            data: Data::None,
            joined: Vec::new(),
            joined_valid: false,
            utf8: simd::Progress::default(),
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

    /// Appends bytes received from the stream. Chunks may split lines, line endings and
    /// UTF-8 sequences anywhere. Nothing is parsed until [`next_frame`](Self::next_frame),
    /// so call it until `None` after each push to keep memory bounded.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.buf.capacity() - self.buf.len() < bytes.len() {
            // Reserve generously: `BytesMut` then reclaims the consumed front of its buffer
            // (moving the few unconsumed bytes back) once per `MIN_RESERVE` bytes instead of
            // once per small push.
            self.buf.reserve(bytes.len().max(MIN_RESERVE));
        }
        simd::extend_validating(&mut self.buf, bytes, &mut self.utf8);
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
            let len = self.buf.len();
            if self.skip_lf {
                if self.line_start == len {
                    return self.need_more();
                }
                self.skip_lf = false;
                if self.buf[self.line_start] == b'\n' {
                    self.line_start += 1;
                    self.scan_pos = self.line_start;
                }
            }
            let Some(offset) = find_line_end(&self.buf[self.scan_pos..]) else {
                return self.need_more();
            };
            let start = self.line_start;
            let end = self.scan_pos + offset;
            let mut next = end + 1;
            if self.buf[end] == b'\r' {
                if next == len {
                    self.skip_lf = true;
                } else if self.buf[next] == b'\n' {
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
        let (start, end) = (self.line_start, self.buf.len());
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
        let head = &self.buf[self.line_start..];
        if head.len() < BOM.len() && BOM.starts_with(head) && !self.at_eof {
            return false;
        }
        if head.starts_with(BOM) {
            self.line_start += BOM.len();
            self.scan_pos = self.line_start;
        }
        self.bom_pending = false;
        true
    }

    /// No line ending in the buffer: enforce the limit on the partial line, release the
    /// bytes no longer needed, and ask for more input.
    fn need_more(&mut self) -> Option<Result<SseFrame, SseError>> {
        let len = self.buf.len();
        self.scan_pos = len;
        if self.skipping || self.discarding_line {
            // Nothing here is needed: drop it, remembering a partial line is being dropped.
            if self.line_start < len {
                self.discarding_line = true;
            }
            self.clear_buffer();
            return None;
        }
        let keep_from = self.keep_from(self.line_start);
        if self.line_start < len && len - keep_from + self.joined_len() > self.max_event_size {
            self.reset_event();
            self.skipping = true;
            self.discarding_line = true;
            self.clear_buffer();
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            }));
        }
        if keep_from > 0 {
            self.buf.advance(keep_from);
            self.utf8.consumed(keep_from);
            self.line_start -= keep_from;
            self.scan_pos -= keep_from;
            if let Data::Line { start, end } = &mut self.data {
                *start -= keep_from;
                *end -= keep_from;
            }
        }
        None
    }

    /// The first buffer offset still needed when the current line starts at `line_start`.
    #[inline]
    fn keep_from(&self, line_start: usize) -> usize {
        match self.data {
            Data::Line { start, .. } => start,
            Data::None | Data::Joined => line_start,
        }
    }

    #[inline]
    fn joined_len(&self) -> usize {
        match self.data {
            Data::Joined => self.joined.len(),
            Data::None | Data::Line { .. } => 0,
        }
    }

    /// Interprets the complete line `buf[start..end]` (without its line ending).
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
        if end - self.keep_from(start) + self.joined_len() > self.max_event_size {
            self.reset_event();
            self.skipping = true;
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            }));
        }
        let line = &self.buf[start..end];
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
        if value_start < end && self.buf[value_start] == b' ' {
            value_start += 1;
        }
        match &self.buf[start..name_end] {
            b"data" => self.push_data(value_start, end),
            b"event" => {
                let value = &self.buf[value_start..end];
                self.meta.event_type = (!value.is_empty()).then(|| lossy(value));
            }
            b"id" => {
                let value = &self.buf[value_start..end];
                if memchr::memchr(0, value).is_none() {
                    let id = lossy(value);
                    self.last_event_id_buffer.clone_from(&id);
                    self.last_event_id_dirty = true;
                    self.meta.id = Some(id);
                }
            }
            b"retry" => {
                let value = &self.buf[value_start..end];
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
        match self.data {
            Data::None => {
                self.data = Data::Line {
                    start: value_start,
                    end: value_end,
                };
            }
            Data::Line { start, end } => {
                self.joined_valid =
                    self.known_utf8(start, end) && self.known_utf8(value_start, value_end);
                self.joined.clear();
                self.joined.extend_from_slice(&self.buf[start..end]);
                self.joined.push(b'\n');
                self.joined
                    .extend_from_slice(&self.buf[value_start..value_end]);
                self.data = Data::Joined;
            }
            Data::Joined => {
                self.joined_valid &= self.known_utf8(value_start, value_end);
                self.joined.push(b'\n');
                self.joined
                    .extend_from_slice(&self.buf[value_start..value_end]);
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
                if self.known_utf8(start, end) || simd::is_utf8(&self.buf[start..end]) {
                    // Hand out the line itself: no copy. Offsets are rebased past it.
                    self.buf.advance(start);
                    let data = self.buf.split_to(end - start).freeze();
                    self.utf8.consumed(end);
                    self.line_start -= end;
                    self.scan_pos -= end;
                    data
                } else {
                    Bytes::from(lossy(&self.buf[start..end]))
                }
            }
            Data::Joined => {
                let data = if self.joined_valid || simd::is_utf8(&self.joined) {
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
        self.utf8.consumed(self.buf.len());
        self.buf.clear();
        self.line_start = 0;
        self.scan_pos = 0;
    }

    /// Whether `buf[start..end]`, a value that ends at a line ending, is known to be valid
    /// UTF-8 from the validation done in `push`.
    #[inline]
    fn known_utf8(&self, start: usize, end: usize) -> bool {
        self.utf8.covers(start, end)
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

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The two hot loops, vectorised by hand where the standard library is slow for this job.
///
/// **Copy.** glibc's `memcpy` switches to `rep movsb` for copies of a few KiB. Interleaved
/// with parsing, copying input that is not yet in cache that way was measured at about
/// 9 GB/s on AMD Zen against 14 GB/s for a plain AVX2 load/store loop, and it was the largest
/// cost of the whole parser when input arrives in 1–4 KiB pieces.
///
/// **UTF-8 validation.** `std::str::from_utf8` runs at about 1 GB/s on text that mixes ASCII with other scripts,
/// which made validation the bottleneck of the whole parser. On x86-64 with AVX2 this uses
/// the vectorised lookup algorithm of Keiser and Lemire ("Validating UTF-8 In Less Than One
/// Instruction Per Byte", 2021), as simdjson and simdutf8 do; elsewhere, and for short
/// inputs, it uses the standard library. Either way the answer is exactly
/// `std::str::from_utf8(bytes).is_ok()` (the tests check this exhaustively for short
/// sequences and by property over long ones).
mod simd {
    /// Below this length the standard library is as fast and needs no setup.
    const SIMD_MIN_LEN: usize = 64;

    use bytes::BytesMut;

    /// `std::str::from_utf8(bytes).is_ok()`, faster.
    #[inline]
    pub(super) fn is_utf8(bytes: &[u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if bytes.len() >= SIMD_MIN_LEN && std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { avx2::is_utf8(bytes) };
            }
        }
        std::str::from_utf8(bytes).is_ok()
    }

    /// What `extend_validating` knows about the buffer's UTF-8 validity.
    ///
    /// Validation runs over the whole input in 32-byte blocks while it is copied in, so the
    /// bytes are read from memory once. A data line is then known to be valid without a
    /// second pass if its line ending lies in a validated block and no error was flagged in
    /// the pushes it could have come from. Anything not known this way is checked on its
    /// own, so this only ever saves work.
    #[derive(Debug, Default)]
    pub(super) struct Progress {
        /// `buf[..validated]` has been through the validator.
        validated: usize,
        /// The validator flagged something before this offset: lines starting before it
        /// are checked on their own.
        dirty_until: usize,
        /// The last validated block, the context for the next one.
        prev_block: [u8; 32],
    }

    impl Progress {
        /// The first `count` bytes of the buffer were removed.
        #[inline]
        pub(super) fn consumed(&mut self, count: usize) {
            if count <= self.validated {
                self.validated -= count;
            } else {
                // Unvalidated bytes were dropped: start again after them, as if at the start
                // of a stream. That can only flag more than a continuous run would (a
                // sequence cut in two is flagged), never less, so it is safe anywhere.
                self.validated = 0;
                self.prev_block = [0; 32];
            }
            self.dirty_until = self.dirty_until.saturating_sub(count);
        }

        /// Whether `buf[start..end]`, followed by a line ending at `end`, is known valid.
        ///
        /// Sound because the line ending and the byte before `start` are ASCII (a line
        /// ending, `:` or a space): an invalid sequence inside the value is flagged at a
        /// position in `start..=end`, so in a validated block when `end < validated`, and
        /// in a push that moved `dirty_until` past `start`.
        #[inline]
        pub(super) fn covers(&self, start: usize, end: usize) -> bool {
            end < self.validated && start >= self.dirty_until
        }
    }

    /// `buf.extend_from_slice(bytes)`, validating the new bytes as UTF-8 on the way where
    /// the CPU allows (see [`Progress`]).
    #[inline]
    pub(super) fn extend_validating(buf: &mut BytesMut, bytes: &[u8], progress: &mut Progress) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { avx2::extend_validating(buf, bytes, progress) };
                return;
            }
        }
        // Nothing is validated here (`progress` stays at zero): every line is checked on
        // its own.
        let _ = progress;
        buf.extend_from_slice(bytes);
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use bytes::BytesMut;
        use std::arch::x86_64::{
            __m256i, _mm256_alignr_epi8, _mm256_and_si256, _mm256_loadu_si256,
            _mm256_movemask_epi8, _mm256_or_si256, _mm256_permute2x128_si256, _mm256_set1_epi8,
            _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_srli_epi16,
            _mm256_storeu_si256, _mm256_subs_epu8, _mm256_testz_si256, _mm256_xor_si256,
        };
        use std::arch::x86_64::{_mm_loadu_si128, _mm_prefetch, _mm_storeu_si128, _MM_HINT_T0};

        /// How far ahead of the copy loop input is prefetched, in bytes.
        const PREFETCH_DISTANCE: usize = 1024;

        /// How much of the input is prefetched before the copy loop starts, in bytes.
        const PREFETCH_START: usize = 1024;

        // Error classes; a pair of bytes is invalid when the classes of its first byte's high
        // nibble, its first byte's low nibble and its second byte's high nibble share a bit.
        const TOO_SHORT: u8 = 1 << 0; // lead byte not followed by a continuation
        const TOO_LONG: u8 = 1 << 1; // ASCII followed by a continuation
        const OVERLONG_3: u8 = 1 << 2; // E0 80..9F
        const TOO_LARGE: u8 = 1 << 3; // F4 90..BF, or a lead above F4
        const SURROGATE: u8 = 1 << 4; // ED A0..BF
        const OVERLONG_2: u8 = 1 << 5; // C0 or C1 lead
        const TOO_LARGE_1000: u8 = 1 << 6; // F5..FF followed by 80..8F
        const OVERLONG_4: u8 = 1 << 6; // F0 80..8F
        const TWO_CONTS: u8 = 1 << 7; // two continuations (fine as 3rd/4th byte)
        const CARRY: u8 = TOO_SHORT | TOO_LONG | TWO_CONTS;

        /// Classes by the high nibble of the first byte of a pair.
        const BYTE_1_HIGH: [u8; 16] = [
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TOO_LONG,
            TWO_CONTS,
            TWO_CONTS,
            TWO_CONTS,
            TWO_CONTS,
            TOO_SHORT | OVERLONG_2,
            TOO_SHORT,
            TOO_SHORT | OVERLONG_3 | SURROGATE,
            TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4,
        ];

        /// Classes by the low nibble of the first byte of a pair.
        const BYTE_1_LOW: [u8; 16] = [
            CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4,
            CARRY | OVERLONG_2,
            CARRY,
            CARRY,
            CARRY | TOO_LARGE,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
            CARRY | TOO_LARGE | TOO_LARGE_1000,
        ];

        /// Classes by the high nibble of the second byte of a pair.
        const BYTE_2_HIGH: [u8; 16] = [
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4,
            TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE,
            TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE,
            TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
            TOO_SHORT,
        ];

        /// See [`super::extend_validating`].
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn extend_validating(
            buf: &mut BytesMut,
            bytes: &[u8],
            progress: &mut super::Progress,
        ) {
            // Ask for the start of the input at once, so its cache misses overlap instead of
            // stalling the validation loop one after another; the loop then prefetches ahead.
            for offset in (0..bytes.len().min(PREFETCH_START)).step_by(64) {
                // SAFETY: the address is inside `bytes`; a prefetch never faults anyway.
                _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(offset).cast());
            }
            let mut state = State::new(&progress.prev_block);
            let mut at = progress.validated;
            // Whole blocks already buffered but not validated (after a restart).
            while at + 32 <= buf.len() {
                // SAFETY: `at + 32 <= buf.len()`: 32 readable bytes.
                state.check(_mm256_loadu_si256(buf.as_ptr().add(at).cast()));
                at += 32;
            }
            // Complete the partial block left by the previous push.
            let pending = buf.len() - at;
            let head = if pending == 0 {
                0
            } else {
                (32 - pending).min(bytes.len())
            };
            buf.reserve(bytes.len());
            // SAFETY: `head <= 32`; `buf` has room for all of `bytes` after the reserve.
            copy_small(buf.as_mut_ptr().add(buf.len()), bytes.as_ptr(), head);
            // SAFETY: the `head` bytes after the end were written just above.
            buf.set_len(buf.len() + head);
            if pending > 0 && buf.len() - at == 32 {
                // SAFETY: `at + 32 == buf.len()`: 32 readable bytes.
                state.check(_mm256_loadu_si256(buf.as_ptr().add(at).cast()));
                at += 32;
            }
            // The rest: copy and validate in one pass, in blocks aligned with `at`.
            let rest = &bytes[head..];
            let spare = &mut buf.spare_capacity_mut()[..rest.len()];
            let dst: *mut u8 = spare.as_mut_ptr().cast();
            let src = rest.as_ptr();
            let mut done = 0;
            while done + 64 <= rest.len() {
                // Input that is not in cache yet made this loop wait on memory; asking for
                // it a little ahead (within this push) keeps the loads flowing.
                if done + PREFETCH_DISTANCE < rest.len() {
                    // SAFETY: the address is inside `rest`; a prefetch never faults anyway.
                    _mm_prefetch::<_MM_HINT_T0>(src.add(done + PREFETCH_DISTANCE).cast());
                }
                // SAFETY: `done + 64 <= rest.len()`, and `spare` is as long as `rest`;
                // unaligned access is allowed by these intrinsics.
                let first = _mm256_loadu_si256(src.add(done).cast());
                let second = _mm256_loadu_si256(src.add(done + 32).cast());
                _mm256_storeu_si256(dst.add(done).cast(), first);
                _mm256_storeu_si256(dst.add(done + 32).cast(), second);
                if _mm256_movemask_epi8(_mm256_or_si256(first, second)) == 0 {
                    state.ascii(second);
                } else {
                    state.check(first);
                    state.check(second);
                }
                done += 64;
            }
            if done + 32 <= rest.len() {
                // SAFETY: as above, for 32 bytes.
                let block = _mm256_loadu_si256(src.add(done).cast());
                _mm256_storeu_si256(dst.add(done).cast(), block);
                state.check(block);
                done += 32;
            }
            // The tail (under 32 bytes) is validated by the next push.
            // SAFETY: in bounds of both ranges, which cannot overlap (`buf` is borrowed
            // mutably while `bytes` is borrowed).
            copy_small(dst.add(done), src.add(done), rest.len() - done);
            // SAFETY: all `rest.len()` bytes after the end were written above.
            buf.set_len(buf.len() + rest.len());
            at += done;

            progress.validated = at;
            // SAFETY: `prev_block` is 32 writable bytes.
            _mm256_storeu_si256(progress.prev_block.as_mut_ptr().cast(), state.prev_input);
            if _mm256_testz_si256(state.error, state.error) == 0 {
                progress.dirty_until = at;
            }
        }

        /// Copies `len <= 32` bytes without a call into `memcpy`: this runs twice per push.
        ///
        /// # Safety
        /// The CPU must support AVX2; `src` must be readable and `dst` writable for `len`
        /// bytes, and the two ranges must not overlap.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn copy_small(dst: *mut u8, src: *const u8, len: usize) {
            debug_assert!(len <= 32);
            // Two possibly overlapping copies of the largest size that fits, from the front
            // and from the back, cover every length in a size class.
            // SAFETY (all arms): each access lies within the first `len` bytes.
            if len >= 16 {
                let front = _mm_loadu_si128(src.cast());
                let back = _mm_loadu_si128(src.add(len - 16).cast());
                _mm_storeu_si128(dst.cast(), front);
                _mm_storeu_si128(dst.add(len - 16).cast(), back);
            } else if len >= 8 {
                let front = src.cast::<u64>().read_unaligned();
                let back = src.add(len - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(front);
                dst.add(len - 8).cast::<u64>().write_unaligned(back);
            } else if len >= 4 {
                let front = src.cast::<u32>().read_unaligned();
                let back = src.add(len - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(front);
                dst.add(len - 4).cast::<u32>().write_unaligned(back);
            } else {
                for i in 0..len {
                    *dst.add(i) = *src.add(i);
                }
            }
        }

        /// Whether `bytes` is valid UTF-8.
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn is_utf8(bytes: &[u8]) -> bool {
            let mut state = State::new(&[0; 32]);
            // Two blocks at a time: on text that mixes scripts, whether a single 32-byte block
            // is all ASCII is a coin toss, and the mispredicted branch cost more than the
            // check it skips. Over 64 bytes the answer is far more predictable.
            let mut pairs = bytes.chunks_exact(64);
            for pair in &mut pairs {
                // SAFETY: `pair` is exactly 64 readable bytes; the loads are unaligned.
                let first = _mm256_loadu_si256(pair.as_ptr().cast());
                let second = _mm256_loadu_si256(pair.as_ptr().add(32).cast());
                if _mm256_movemask_epi8(_mm256_or_si256(first, second)) == 0 {
                    state.ascii(second);
                } else {
                    state.check(first);
                    state.check(second);
                }
            }
            let mut blocks = pairs.remainder().chunks_exact(32);
            for block in &mut blocks {
                // SAFETY: `block` is exactly 32 readable bytes; the load is unaligned.
                state.check(_mm256_loadu_si256(block.as_ptr().cast()));
            }
            let rest = blocks.remainder();
            if !rest.is_empty() {
                // Pad with ASCII NUL: a sequence cut short by the end then fails as
                // TOO_SHORT, exactly as the end of input would make it fail.
                let mut padded = [0u8; 32];
                padded[..rest.len()].copy_from_slice(rest);
                // SAFETY: `padded` is 32 readable bytes.
                state.check(_mm256_loadu_si256(padded.as_ptr().cast()));
            }
            let error = _mm256_or_si256(state.error, state.prev_incomplete);
            _mm256_testz_si256(error, error) == 1
        }

        struct State {
            error: __m256i,
            prev_input: __m256i,
            prev_incomplete: __m256i,
            byte_1_high: __m256i,
            byte_1_low: __m256i,
            byte_2_high: __m256i,
        }

        impl State {
            /// Continues after `prev_block` (all zeros at the start: as if after ASCII).
            #[target_feature(enable = "avx2")]
            #[inline]
            unsafe fn new(prev_block: &[u8; 32]) -> Self {
                // SAFETY: `prev_block` is 32 readable bytes.
                let prev_input = _mm256_loadu_si256(prev_block.as_ptr().cast());
                State {
                    error: _mm256_setzero_si256(),
                    prev_input,
                    prev_incomplete: _mm256_subs_epu8(prev_input, max_complete()),
                    byte_1_high: table(&BYTE_1_HIGH),
                    byte_1_low: table(&BYTE_1_LOW),
                    byte_2_high: table(&BYTE_2_HIGH),
                }
            }

            /// An all-ASCII block: only a sequence left open before it can be wrong.
            #[target_feature(enable = "avx2")]
            #[inline]
            unsafe fn ascii(&mut self, input: __m256i) {
                self.error = _mm256_or_si256(self.error, self.prev_incomplete);
                self.prev_incomplete = _mm256_setzero_si256();
                self.prev_input = input;
            }

            /// Any block.
            #[target_feature(enable = "avx2")]
            #[inline]
            unsafe fn check(&mut self, input: __m256i) {
                let low_nibble = _mm256_set1_epi8(0x0F);
                let prev1 = prev::<15>(input, self.prev_input);
                let byte_1_high = _mm256_shuffle_epi8(
                    self.byte_1_high,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(prev1), low_nibble),
                );
                let byte_1_low =
                    _mm256_shuffle_epi8(self.byte_1_low, _mm256_and_si256(prev1, low_nibble));
                let byte_2_high = _mm256_shuffle_epi8(
                    self.byte_2_high,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(input), low_nibble),
                );
                let special =
                    _mm256_and_si256(_mm256_and_si256(byte_1_high, byte_1_low), byte_2_high);
                // A continuation after a continuation is expected exactly where it is the
                // third byte of a 3- or 4-byte sequence, or the fourth of a 4-byte one.
                let prev2 = prev::<14>(input, self.prev_input);
                let prev3 = prev::<13>(input, self.prev_input);
                let is_third_byte = _mm256_subs_epu8(prev2, _mm256_set1_epi8(0x60)); // >= E0
                let is_fourth_byte = _mm256_subs_epu8(prev3, _mm256_set1_epi8(0x70)); // >= F0
                let must_be_continuation = _mm256_and_si256(
                    _mm256_or_si256(is_third_byte, is_fourth_byte),
                    _mm256_set1_epi8(0x80u8 as i8),
                );
                self.error =
                    _mm256_or_si256(self.error, _mm256_xor_si256(must_be_continuation, special));
                self.prev_incomplete = _mm256_subs_epu8(input, max_complete());
                self.prev_input = input;
            }
        }

        /// Lead bytes in the last three positions of a block need bytes from the next one:
        /// subtracting this (saturating) leaves non-zero bytes exactly there.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn max_complete() -> __m256i {
            _mm256_setr_epi8(
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                -1,
                0xEFu8 as i8,
                0xDFu8 as i8,
                0xBFu8 as i8,
            )
        }

        /// The input shifted right by `16 - SHIFT` bytes across the 32-byte block, the gap
        /// filled from the end of the previous block: `prev::<15>` gives each byte's
        /// predecessor, `prev::<14>` the byte two back, `prev::<13>` three back.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn prev<const SHIFT: i32>(input: __m256i, prev_input: __m256i) -> __m256i {
            // [high half of prev_input, low half of input], then align lane by lane.
            let straddle = _mm256_permute2x128_si256::<0x21>(prev_input, input);
            _mm256_alignr_epi8::<SHIFT>(input, straddle)
        }

        /// A 16-entry lookup table repeated in both 128-bit lanes for `vpshufb`.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn table(entries: &[u8; 16]) -> __m256i {
            let mut both_lanes = [0u8; 32];
            both_lanes[..16].copy_from_slice(entries);
            both_lanes[16..].copy_from_slice(entries);
            // SAFETY: `both_lanes` is 32 readable bytes.
            _mm256_loadu_si256(both_lanes.as_ptr().cast())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::simd;

    /// Bytes from every class the validator distinguishes, including the boundaries.
    const INTERESTING: [u8; 24] = [
        0x00, 0x0A, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
        0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF3, 0xF4, 0xF5,
    ];

    #[test]
    fn utf8_check_agrees_with_std_on_every_short_sequence_at_every_block_position() {
        let mut buffer = [b'a'; 100];
        let offsets = [0, 14, 29, 30, 31, 32, 62, 63, 96];
        for &a in &INTERESTING {
            for &b in &INTERESTING {
                for &c in &INTERESTING {
                    for &d in &INTERESTING {
                        for &offset in &offsets {
                            buffer.fill(b'a');
                            let end = (offset + 4).min(buffer.len());
                            buffer[offset..end].copy_from_slice(&[a, b, c, d][..end - offset]);
                            for len in [end, 100] {
                                let bytes = &buffer[..len];
                                assert_eq!(
                                    simd::is_utf8(bytes),
                                    std::str::from_utf8(bytes).is_ok(),
                                    "{a:02X} {b:02X} {c:02X} {d:02X} at {offset}, length {len}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn utf8_check_agrees_with_std_on_long_text() {
        let text = "点击 export café ✓ 😀 ".repeat(50);
        let bytes = text.as_bytes();
        for start in 0..40 {
            for end in (bytes.len() - 40)..=bytes.len() {
                let slice = &bytes[start..end];
                assert_eq!(simd::is_utf8(slice), std::str::from_utf8(slice).is_ok());
            }
        }
        // Every single-byte corruption of a long valid text.
        let mut corrupted = bytes[..300].to_vec();
        for at in 0..corrupted.len() {
            for &byte in &INTERESTING {
                let original = corrupted[at];
                corrupted[at] = byte;
                assert_eq!(
                    simd::is_utf8(&corrupted),
                    std::str::from_utf8(&corrupted).is_ok(),
                    "{byte:02X} at {at}"
                );
                corrupted[at] = original;
            }
        }
    }

    #[test]
    fn extend_copies_exactly() {
        let source: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 1, 63, 64, 127, 128, 129, 255, 256, 1000, 4097, 5000] {
            let mut buf = bytes::BytesMut::from(&b"head"[..]);
            let mut progress = simd::Progress::default();
            simd::extend_validating(&mut buf, &source[..len], &mut progress);
            assert_eq!(&buf[..4], b"head");
            assert_eq!(&buf[4..], &source[..len]);
        }
    }
}
