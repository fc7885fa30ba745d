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
//!   ending resumes where it stopped. An event with one data line is handed out as a slice of
//!   the input buffer without copying it.
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
#[derive(Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Always valid UTF-8: built only from validated bytes or from a `String`.
    data: Bytes,
    event_type: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
}

impl SseEvent {
    /// Creates an event with the given data, the default type and no id or retry; useful to
    /// build expected values in tests.
    #[must_use]
    pub fn new(data: impl Into<String>) -> Self {
        Self {
            data: Bytes::from(data.into()),
            event_type: None,
            id: None,
            retry: None,
        }
    }

    /// Sets the event type (an empty string means the default type, as on the wire).
    #[must_use]
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        let event_type = event_type.into();
        self.event_type = (!event_type.is_empty()).then_some(event_type);
        self
    }

    /// Sets the id given in this event's block.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the reconnection time given in this event's block.
    #[must_use]
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
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
        self.event_type.as_deref()
    }

    /// The id set by an `id` line in this event's own block (the last one if several);
    /// `Some("")` for an `id` line without a value; `None` if the block had no `id` line or
    /// only ones containing NUL. For the id that persists across events, see
    /// [`SseParser::last_event_id`].
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection time from a valid `retry` line (all ASCII digits, in milliseconds)
    /// in this event's own block. For the value that persists, see
    /// [`SseParser::reconnection_time`].
    #[must_use]
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("data", &self.data())
            .field("event_type", &self.event_type)
            .field("id", &self.id)
            .field("retry", &self.retry)
            .finish()
    }
}

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
    event_type: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
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
            event_type: None,
            id: None,
            retry: None,
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
        self.buf.extend_from_slice(bytes);
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
            self.buf.clear();
            self.line_start = 0;
            self.scan_pos = 0;
            return None;
        }
        let keep_from = self.keep_from(self.line_start);
        if self.line_start < len && len - keep_from + self.joined_len() > self.max_event_size {
            self.reset_event();
            self.skipping = true;
            self.discarding_line = true;
            self.buf.clear();
            self.line_start = 0;
            self.scan_pos = 0;
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            }));
        }
        if keep_from > 0 {
            self.buf.advance(keep_from);
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
                self.event_type = (!value.is_empty()).then(|| lossy(value));
            }
            b"id" => {
                let value = &self.buf[value_start..end];
                if memchr::memchr(0, value).is_none() {
                    let id = lossy(value);
                    self.last_event_id_buffer.clone_from(&id);
                    self.last_event_id_dirty = true;
                    self.id = Some(id);
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
                        self.retry = Some(retry);
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
                self.joined.clear();
                self.joined.extend_from_slice(&self.buf[start..end]);
                self.joined.push(b'\n');
                self.joined
                    .extend_from_slice(&self.buf[value_start..value_end]);
                self.data = Data::Joined;
            }
            Data::Joined => {
                self.joined.push(b'\n');
                self.joined
                    .extend_from_slice(&self.buf[value_start..value_end]);
            }
        }
    }

    /// The blank-line step of the spec. Returns the event if the block had data.
    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.last_event_id_dirty {
            self.last_event_id.clone_from(&self.last_event_id_buffer);
            self.last_event_id_dirty = false;
        }
        let event_type = self.event_type.take();
        let id = self.id.take();
        let retry = self.retry.take();
        let data = match std::mem::replace(&mut self.data, Data::None) {
            Data::None => return None,
            Data::Line { start, end } if start == end => Bytes::new(),
            Data::Line { start, end } => {
                if utf8::is_valid(&self.buf[start..end]) {
                    // Hand out the line itself: no copy. Offsets are rebased past it.
                    self.buf.advance(start);
                    let data = self.buf.split_to(end - start).freeze();
                    self.line_start -= end;
                    self.scan_pos -= end;
                    data
                } else {
                    Bytes::from(lossy(&self.buf[start..end]))
                }
            }
            Data::Joined => {
                let data = if utf8::is_valid(&self.joined) {
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
        Some(SseEvent {
            data,
            event_type,
            id,
            retry,
        })
    }

    /// Forgets the event being read (after an error).
    fn reset_event(&mut self) {
        self.data = Data::None;
        self.joined = Vec::new();
        self.event_type = None;
        self.id = None;
        self.retry = None;
    }

    /// Prepares for a new stream; keeps what the spec keeps across reconnections.
    fn reset_stream(&mut self) {
        self.reset_event();
        self.buf.clear();
        self.line_start = 0;
        self.scan_pos = 0;
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

/// UTF-8 validation that stays fast on non-ASCII text.
///
/// `std::str::from_utf8` runs at about 1 GB/s on text that mixes ASCII with other scripts,
/// which made validation the bottleneck of the whole parser. On x86-64 with AVX2 this uses
/// the vectorised lookup algorithm of Keiser and Lemire ("Validating UTF-8 In Less Than One
/// Instruction Per Byte", 2021), as simdjson and simdutf8 do; elsewhere, and for short
/// inputs, it uses the standard library. Either way the answer is exactly
/// `std::str::from_utf8(bytes).is_ok()` (the tests check this exhaustively for short
/// sequences and by property over long ones).
mod utf8 {
    /// Below this length the standard library is as fast and needs no setup.
    const SIMD_MIN_LEN: usize = 64;

    #[inline]
    pub(super) fn is_valid(bytes: &[u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if bytes.len() >= SIMD_MIN_LEN && std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { avx2::is_valid(bytes) };
            }
        }
        std::str::from_utf8(bytes).is_ok()
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::{
            __m256i, _mm256_alignr_epi8, _mm256_and_si256, _mm256_loadu_si256,
            _mm256_movemask_epi8, _mm256_or_si256, _mm256_permute2x128_si256, _mm256_set1_epi8,
            _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_srli_epi16,
            _mm256_subs_epu8, _mm256_testz_si256, _mm256_xor_si256,
        };

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

        /// Whether `bytes` is valid UTF-8.
        ///
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn is_valid(bytes: &[u8]) -> bool {
            let mut state = State {
                error: _mm256_setzero_si256(),
                prev_input: _mm256_setzero_si256(),
                prev_incomplete: _mm256_setzero_si256(),
                byte_1_high: table(&BYTE_1_HIGH),
                byte_1_low: table(&BYTE_1_LOW),
                byte_2_high: table(&BYTE_2_HIGH),
            };
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
                // Lead bytes in the last three positions need bytes from the next block.
                let max_complete = _mm256_setr_epi8(
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
                );
                self.prev_incomplete = _mm256_subs_epu8(input, max_complete);
                self.prev_input = input;
            }
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
