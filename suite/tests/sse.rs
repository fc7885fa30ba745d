//! Behaviour of `nemo_video::sse` against the WHATWG event-stream rules, chunking
//! independence, dispatch timing, and the size limit.

use std::time::Duration;

use bytes::Bytes;
use nemo_video::sse::{SseError, SseEvent, SseFrame, SseParser};
use proptest::prelude::*;

/// What a test expects, in a form that is easy to write in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum F {
    /// data, event type, id, retry in ms
    Ev(String, Option<String>, Option<String>, Option<u64>),
    Comment(String),
    TooLarge(usize),
}

fn ev(data: &str) -> F {
    F::Ev(data.to_owned(), None, None, None)
}

fn ev_full(data: &str, event_type: Option<&str>, id: Option<&str>, retry: Option<u64>) -> F {
    F::Ev(
        data.to_owned(),
        event_type.map(str::to_owned),
        id.map(str::to_owned),
        retry,
    )
}

fn comment(text: &str) -> F {
    F::Comment(text.to_owned())
}

fn to_f(frame: Result<SseFrame, SseError>) -> F {
    match frame {
        Ok(SseFrame::Event(event)) => F::Ev(
            event.data().to_owned(),
            event.event_type().map(str::to_owned),
            event.id().map(str::to_owned),
            event.retry().map(|retry| retry.as_millis() as u64),
        ),
        Ok(SseFrame::Comment(text)) => F::Comment(text),
        Err(SseError::EventTooLarge { limit }) => F::TooLarge(limit),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(other) => panic!("unexpected frame {other:?}"),
    }
}

/// How bytes reach the parser. Every entry point must give the same frames and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `push(&[u8])`: copied into the parser's buffer.
    Copy,
    /// `push_bytes(Bytes)`: parsed where it lies.
    Shared,
    /// Alternating between the two, push by push.
    Mixed,
}

const FEEDS: [Feed; 3] = [Feed::Copy, Feed::Shared, Feed::Mixed];

/// A parser and the entry point it is fed through; derefs to the parser for everything else.
struct Fed {
    parser: SseParser,
    feed: Feed,
    pushes: usize,
}

impl Fed {
    fn new(feed: Feed, parser: SseParser) -> Fed {
        Fed {
            parser,
            feed,
            pushes: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.pushes += 1;
        let shared = match self.feed {
            Feed::Copy => false,
            Feed::Shared => true,
            Feed::Mixed => self.pushes % 2 == 0,
        };
        if shared {
            self.parser.push_bytes(Bytes::copy_from_slice(chunk));
        } else {
            self.parser.push(chunk);
        }
    }
}

impl std::ops::Deref for Fed {
    type Target = SseParser;
    fn deref(&self) -> &SseParser {
        &self.parser
    }
}

impl std::ops::DerefMut for Fed {
    fn deref_mut(&mut self) -> &mut SseParser {
        &mut self.parser
    }
}

/// Feeds `chunks` in order, draining after each, then finishes.
fn feed_chunks(parser: &mut Fed, chunks: &[&[u8]]) -> Vec<F> {
    let mut frames = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(frame) = parser.next_frame() {
            frames.push(to_f(frame));
        }
    }
    while let Some(frame) = parser.finish() {
        frames.push(to_f(frame));
    }
    frames
}

/// [`feed_chunks`] through every entry point, each with a parser from `parser`; checks that
/// they agree and returns their frames.
fn parse_chunks(parser: impl Fn() -> SseParser, chunks: &[&[u8]]) -> Vec<F> {
    let frames = feed_chunks(&mut Fed::new(Feed::Copy, parser()), chunks);
    for feed in [Feed::Shared, Feed::Mixed] {
        assert_eq!(
            feed_chunks(&mut Fed::new(feed, parser()), chunks),
            frames,
            "fed through {feed:?}, chunks {chunks:?}"
        );
    }
    frames
}

fn parse(input: &[u8]) -> Vec<F> {
    parse_chunks(SseParser::new, &[input])
}

fn parse_bytewise(input: &[u8]) -> Vec<F> {
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    parse_chunks(SseParser::new, &chunks)
}

#[test]
fn conformance_table() {
    fn s(text: &str) -> Option<&str> {
        Some(text)
    }
    let cases: Vec<(&str, &[u8], Vec<F>)> = vec![
        // Fields.
        ("data field", b"data: hello\n\n", vec![ev("hello")]),
        (
            "event field",
            b"event: update\ndata: x\n\n",
            vec![ev_full("x", s("update"), None, None)],
        ),
        (
            "id field",
            b"id: 42\ndata: x\n\n",
            vec![ev_full("x", None, s("42"), None)],
        ),
        (
            "retry field",
            b"retry: 1500\ndata: x\n\n",
            vec![ev_full("x", None, None, Some(1500))],
        ),
        (
            "all fields, any order",
            b"data: x\nretry: 7\nid: a\nevent: e\n\n",
            vec![ev_full("x", s("e"), s("a"), Some(7))],
        ),
        // Colon and space handling.
        ("no space after colon", b"data:hello\n\n", vec![ev("hello")]),
        (
            "only one space stripped",
            b"data:  two\n\n",
            vec![ev(" two")],
        ),
        ("tab is not stripped", b"data:\tx\n\n", vec![ev("\tx")]),
        (
            "later colons belong to the value",
            b"data: a:b: c\n\n",
            vec![ev("a:b: c")],
        ),
        (
            "field without colon is a field with empty value",
            b"data\n\n",
            vec![ev("")],
        ),
        (
            "event without colon resets to default type",
            b"event\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "field name is case-sensitive",
            b"Data: x\ndata: y\n\n",
            vec![ev("y")],
        ),
        (
            "space before colon is part of the name",
            b"data : x\ndata: y\n\n",
            vec![ev("y")],
        ),
        // Multi-line and empty data.
        ("multi-line data", b"data: a\ndata: b\n\n", vec![ev("a\nb")]),
        (
            "empty data line is an event with empty data",
            b"data:\n\n",
            vec![ev("")],
        ),
        (
            "empty data line with one space",
            b"data: \n\n",
            vec![ev("")],
        ),
        (
            "two empty data lines give one newline",
            b"data:\ndata:\n\n",
            vec![ev("\n")],
        ),
        (
            "empty line inside multi-line data",
            b"data: a\ndata:\ndata: b\n\n",
            vec![ev("a\n\nb")],
        ),
        (
            "data with trailing empty line keeps the inner newline",
            b"data: a\ndata:\n\n",
            vec![ev("a\n")],
        ),
        (
            "heartbeat text is ordinary data",
            b"data: heartbeat\n\n",
            vec![ev("heartbeat")],
        ),
        // Blocks without data.
        ("blank lines alone dispatch nothing", b"\n\n\n", vec![]),
        (
            "event-only block dispatches nothing",
            b"event: x\n\ndata: y\n\n",
            vec![ev("y")],
        ),
        ("id-only block dispatches nothing", b"id: 5\n\n", vec![]),
        // Comments.
        ("comment", b": ping\n\n", vec![comment("ping")]),
        ("empty comment", b":\n", vec![comment("")]),
        (
            "comment keeps further spaces",
            b":  two\n",
            vec![comment(" two")],
        ),
        (
            "comment inside an event comes out first",
            b"data: a\n: keep-alive\ndata: b\n\n",
            vec![comment("keep-alive"), ev("a\nb")],
        ),
        // Line endings.
        ("CRLF", b"data: a\r\ndata: b\r\n\r\n", vec![ev("a\nb")]),
        ("CR", b"data: a\rdata: b\r\r", vec![ev("a\nb")]),
        (
            "mixed endings",
            b"data: a\rdata: b\r\ndata: c\n\r\n",
            vec![ev("a\nb\nc")],
        ),
        (
            "CR CR is a blank line, not one CRLF",
            b"data: a\r\rdata: b\n\n",
            vec![ev("a"), ev("b")],
        ),
        (
            "LF CR is two line endings",
            b"data: a\n\rdata: b\n\n",
            vec![ev("a"), ev("b")],
        ),
        // BOM.
        (
            "leading BOM stripped",
            b"\xEF\xBB\xBFdata: x\n\n",
            vec![ev("x")],
        ),
        (
            "only one BOM stripped",
            b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n",
            vec![ev("y")],
        ),
        (
            "BOM later in the stream is not stripped",
            b"data: a\n\n\xEF\xBB\xBFdata: x\n\ndata: y\n\n",
            vec![ev("a"), ev("y")],
        ),
        (
            "BOM inside a value is kept",
            b"data: \xEF\xBB\xBFx\n\n",
            vec![ev("\u{FEFF}x")],
        ),
        // Event type reset.
        (
            "event type resets after dispatch",
            b"event: a\ndata: 1\n\ndata: 2\n\n",
            vec![ev_full("1", s("a"), None, None), ev("2")],
        ),
        (
            "event type resets after a block without data",
            b"event: a\n\ndata: 2\n\n",
            vec![ev("2")],
        ),
        (
            "last event line wins",
            b"event: a\nevent: b\ndata: 1\n\n",
            vec![ev_full("1", s("b"), None, None)],
        ),
        // Ids.
        (
            "id applies to its own block only",
            b"id: 1\ndata: a\n\ndata: b\n\n",
            vec![ev_full("a", None, s("1"), None), ev("b")],
        ),
        (
            "empty id is Some(\"\")",
            b"id:\ndata: a\n\n",
            vec![ev_full("a", None, s(""), None)],
        ),
        (
            "id with NUL is ignored",
            b"id: a\0b\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "id with NUL does not override an earlier id",
            b"id: good\nid: b\0d\ndata: x\n\n",
            vec![ev_full("x", None, s("good"), None)],
        ),
        // Retry.
        (
            "retry zero",
            b"retry: 0\ndata: x\n\n",
            vec![ev_full("x", None, None, Some(0))],
        ),
        (
            "retry with letters ignored",
            b"retry: 10s\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "retry negative ignored",
            b"retry: -5\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "retry with plus sign ignored",
            b"retry: +5\ndata: x\n\n",
            vec![ev("x")],
        ),
        ("retry empty ignored", b"retry:\ndata: x\n\n", vec![ev("x")]),
        (
            "retry with space inside ignored",
            b"retry: 1 0\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "retry decimal ignored",
            b"retry: 1.5\ndata: x\n\n",
            vec![ev("x")],
        ),
        (
            "retry overflowing u64 ignored",
            b"retry: 99999999999999999999999\ndata: x\n\n",
            vec![ev("x")],
        ),
        // Unknown fields.
        (
            "unknown field ignored",
            b"foo: bar\ndata: x\nbaz\n\n",
            vec![ev("x")],
        ),
        (
            "unknown-only block dispatches nothing",
            b"foo: bar\n\ndata: y\n\n",
            vec![ev("y")],
        ),
        // End of stream.
        ("finish on empty input", b"", vec![]),
        (
            "final event without blank line",
            b"data: a\n\ndata: last\n",
            vec![ev("a"), ev("last")],
        ),
        (
            "final line without any line ending",
            b"data: a\n\ndata: last",
            vec![ev("a"), ev("last")],
        ),
        (
            "final unterminated multi-line event",
            b"data: a\ndata: b",
            vec![ev("a\nb")],
        ),
        ("final unterminated comment", b": bye", vec![comment("bye")]),
        (
            "final block without data dispatches nothing",
            b"event: x\nid: 3",
            vec![],
        ),
        ("final CR ends the line", b"data: a\r", vec![ev("a")]),
        // Lossy UTF-8.
        (
            "invalid UTF-8 in data is replaced",
            b"data: a\xFFb\n\n",
            vec![ev("a\u{FFFD}b")],
        ),
        (
            "truncated sequence before the line ending",
            b"data: \xE2\x82\n\n",
            vec![ev("\u{FFFD}")],
        ),
        (
            "invalid UTF-8 in event type and id",
            b"event: \xC0x\nid: \xFF\ndata: ok\n\n",
            vec![ev_full("ok", s("\u{FFFD}x"), s("\u{FFFD}"), None)],
        ),
        (
            "invalid UTF-8 in a comment",
            b": \xFE\n",
            vec![comment("\u{FFFD}")],
        ),
        (
            "valid multi-byte text",
            "data: 点击导出 café ✓\n\n".as_bytes(),
            vec![ev("点击导出 café ✓")],
        ),
    ];
    for (name, input, expected) in cases {
        assert_eq!(parse(input), expected, "case {name:?} fed whole");
        assert_eq!(
            parse_bytewise(input),
            expected,
            "case {name:?} fed byte by byte"
        );
    }
}

#[test]
fn cr_at_end_of_push_and_lf_in_next_push_are_one_line_ending() {
    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::new());
        parser.push(b"data: a\r");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        // If the LF were a line of its own, it would dispatch "a" here.
        parser.push(b"\ndata: b\r");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        parser.push(b"\n\r");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("a\nb")), "{feed:?}");
        // The blank line was a lone CR; an LF arriving now completes that CRLF, nothing else.
        parser.push(b"\n");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        parser.push(b"data: c\n\n");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("c")), "{feed:?}");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
    }
}

#[test]
fn bom_split_across_pushes_is_stripped() {
    let frames = parse_chunks(SseParser::new, &[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
    assert_eq!(frames, vec![ev("x")]);
}

#[test]
fn partial_bom_at_end_of_stream_is_not_swallowed() {
    // Two bytes of a BOM and then EOF: not a BOM, and lossily decoded as a field name.
    assert_eq!(parse(b"\xEF\xBB"), vec![]);
    // A BOM prefix followed by something else is not stripped: it makes the first line's
    // field name unknown, so this event is ignored (stripping it would yield "x").
    assert_eq!(parse(b"\xEFdata: x\n\n"), vec![]);
    let frames = parse_chunks(SseParser::new, &[b"\xEF", b"data: x\n\n"]);
    assert_eq!(frames, vec![]);
}

#[test]
fn last_event_id_persists_across_events_and_blocks() {
    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::new());
        assert_eq!(parser.last_event_id(), "", "{feed:?}");
        parser.push(b"id: 1\ndata: a\n\n");
        assert!(parser.next_frame().is_some());
        assert_eq!(parser.last_event_id(), "1", "{feed:?}");
        parser.push(b"data: b\n\n");
        let frame = parser.next_frame().map(to_f);
        assert_eq!(frame, Some(ev("b")), "the event's own id is None");
        assert_eq!(parser.last_event_id(), "1", "the last event id persists");
        // An id-only block dispatches nothing but still sets the last event id at its blank line.
        parser.push(b"id: 2\n");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        assert_eq!(parser.last_event_id(), "1", "not before the blank line");
        parser.push(b"\n");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        assert_eq!(parser.last_event_id(), "2", "{feed:?}");
        // An empty id resets it.
        parser.push(b"id\ndata: c\n\n");
        assert_eq!(
            parser.next_frame().map(to_f),
            Some(ev_full("c", None, Some(""), None))
        );
        assert_eq!(parser.last_event_id(), "", "{feed:?}");
        // A NUL id changes nothing.
        parser.push(b"id: 9\n\nid: x\0\ndata: d\n\n");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("d")), "{feed:?}");
        assert_eq!(parser.last_event_id(), "9", "{feed:?}");
        // It survives the end of a stream, for the reconnection.
        while parser.finish().is_some() {}
        assert_eq!(parser.last_event_id(), "9", "{feed:?}");
    }
}

#[test]
fn reconnection_time_persists_even_without_an_event() {
    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::new());
        assert_eq!(parser.reconnection_time(), None, "{feed:?}");
        parser.push(b"retry: 2500\n\n");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        assert_eq!(
            parser.reconnection_time(),
            Some(Duration::from_millis(2500))
        );
        parser.push(b"retry: soon\ndata: x\n\n");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("x")), "{feed:?}");
        assert_eq!(
            parser.reconnection_time(),
            Some(Duration::from_millis(2500))
        );
    }
}

#[test]
fn finish_resets_for_a_new_stream() {
    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::new());
        let first = feed_chunks(&mut parser, &[b"\xEF\xBB\xBFdata: a\n\ndata: tail"]);
        assert_eq!(first, vec![ev("a"), ev("tail")], "{feed:?}");
        // A new connection: its BOM is stripped again and nothing of the old stream remains.
        let second = feed_chunks(&mut parser, &[b"\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(second, vec![ev("b")], "{feed:?}");
        assert_eq!(parser.finish(), None, "{feed:?}");
    }
}

#[test]
fn frames_come_out_exactly_when_the_blank_line_arrives() {
    for feed in FEEDS {
        let input = b"event: e\nid: 7\ndata: {\"a\":1}\ndata: more\n\n";
        let mut parser = Fed::new(feed, SseParser::new());
        // Everything but the final newline: nothing yet, however often we ask.
        parser.push(&input[..input.len() - 1]);
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        parser.push(b"\n");
        assert_eq!(
            parser.next_frame().map(to_f),
            Some(ev_full("{\"a\":1}\nmore", Some("e"), Some("7"), None))
        );
        assert_eq!(parser.next_frame(), None, "{feed:?}");

        // Same with CR endings: the lone CR completes the blank line immediately.
        parser.push(b"data: x\r");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        parser.push(b"\r");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("x")), "{feed:?}");

        // A comment comes out when its own line ends, not at the blank line.
        parser.push(b": ping");
        assert_eq!(parser.next_frame(), None, "{feed:?}");
        parser.push(b"\n");
        assert_eq!(
            parser.next_frame().map(to_f),
            Some(comment("ping")),
            "{feed:?}"
        );
    }
}

#[test]
fn event_too_large_is_reported_and_the_parser_recovers() {
    let limit = 64;
    let big = "x".repeat(100);

    // One huge data line, terminated, in one push.
    let input = format!("data: {big}\ndata: more\n\ndata: next\n\n");
    let frames = parse_chunks(
        || SseParser::with_max_event_size(limit),
        &[input.as_bytes()],
    );
    assert_eq!(frames, vec![F::TooLarge(limit), ev("next")]);

    // The same, byte by byte: the error comes before the line ends, and the rest of that
    // line and event are skipped.
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
    let frames = parse_chunks(|| SseParser::with_max_event_size(limit), &chunks);
    assert_eq!(frames, vec![F::TooLarge(limit), ev("next")]);

    // Many small data lines adding up past the limit.
    let many = "data: 0123456789\n".repeat(10);
    let input = format!("{many}\ndata: ok\n\n");
    let frames = parse_chunks(
        || SseParser::with_max_event_size(limit),
        &[input.as_bytes()],
    );
    assert_eq!(frames, vec![F::TooLarge(limit), ev("ok")]);

    // A huge comment.
    let input = format!(":{big}\n\ndata: ok\n\n");
    let frames = parse_chunks(
        || SseParser::with_max_event_size(limit),
        &[input.as_bytes()],
    );
    assert_eq!(frames, vec![F::TooLarge(limit), ev("ok")]);

    // A huge line that never ends: memory stays bounded while it streams in.
    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::with_max_event_size(limit));
        let mut errors = 0;
        for _ in 0..1000 {
            parser.push(&[b'y'; 1000]);
            while let Some(frame) = parser.next_frame() {
                assert_eq!(to_f(frame), F::TooLarge(limit), "{feed:?}");
                errors += 1;
            }
            let debug = format!("{:?}", *parser);
            assert!(
                debug.contains("buffered_bytes: 0"),
                "the oversized line must not be buffered ({feed:?}): {debug}"
            );
        }
        assert_eq!(errors, 1, "one error per oversized event ({feed:?})");
        parser.push(b"\n\ndata: after\n\n");
        assert_eq!(parser.next_frame().map(to_f), Some(ev("after")), "{feed:?}");
        assert_eq!(parser.finish(), None, "{feed:?}");
    }

    // Events at the limit's scale that fit are untouched.
    let small = format!("data: {}\n\n", "z".repeat(40));
    let frames = parse_chunks(
        || SseParser::with_max_event_size(limit),
        &[small.as_bytes()],
    );
    assert_eq!(frames, vec![ev(&"z".repeat(40))]);
}

#[test]
fn event_too_large_error_says_what_to_do() {
    let error = SseError::EventTooLarge { limit: 1024 };
    let message = error.to_string();
    assert!(message.contains("1024"), "{message}");
    assert!(message.contains("with_max_event_size"), "{message}");
    let _: &dyn std::error::Error = &error;
}

#[test]
fn default_limit_is_16_mib() {
    assert_eq!(SseParser::new().max_event_size(), 16 * 1024 * 1024);
    assert_eq!(SseParser::default().max_event_size(), 16 * 1024 * 1024);
}

#[test]
fn a_large_event_within_the_default_limit_arrives_whole() {
    // Long enough for the vectorised paths, with multi-byte text across every chunk edge.
    let text = "点击 export café ✓ ".repeat(100_000);
    let input = format!("data: {text}\n\n");
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(1460).collect();
    let frames = parse_chunks(SseParser::new, &chunks);
    assert_eq!(frames, vec![ev(&text)]);
}

#[test]
fn event_accessors_and_constructors() {
    let event = SseEvent::new("d")
        .with_event_type("t")
        .with_id("i")
        .with_retry(Duration::from_secs(1));
    assert_eq!(event.data(), "d");
    assert_eq!(event.event_type(), Some("t"));
    assert_eq!(event.id(), Some("i"));
    assert_eq!(event.retry(), Some(Duration::from_secs(1)));
    assert_eq!(&event.data_bytes()[..], b"d");
    assert_eq!(SseEvent::new("d").with_event_type(""), SseEvent::new("d"));

    for feed in FEEDS {
        let mut parser = Fed::new(feed, SseParser::new());
        parser.push(b"event: t\nid: i\nretry: 1000\ndata: d\n\n");
        assert_eq!(
            parser.next_frame(),
            Some(Ok(SseFrame::Event(event.clone()))),
            "{feed:?}"
        );
    }
    assert_eq!(event.into_data_bytes(), "d".as_bytes());
}

#[test]
fn truncated_sequence_at_every_alignment_is_decoded_lossily() {
    // The parser validates input in 32-byte blocks as it is pushed; a value whose last byte
    // starts a sequence must never be taken as valid, wherever the blocks fall.
    for len in 0..100 {
        for lead in [0xC3u8, 0xE2, 0xF0] {
            let mut input = b"data:".to_vec();
            input.extend(std::iter::repeat_n(b'a', len));
            input.push(lead);
            input.extend_from_slice(b"\n\n");
            let expected = vec![ev(&format!("{}\u{FFFD}", "a".repeat(len)))];
            assert_eq!(parse(&input), expected, "{len} bytes then {lead:02X}");
            let (head, tail) = input.split_at(input.len() - 2);
            let frames = parse_chunks(SseParser::new, &[head, tail]);
            assert_eq!(frames, expected, "{len} bytes then {lead:02X}, split");
        }
    }
}

#[test]
fn validation_restarts_cleanly_after_dropped_input() {
    // First push: a 32-byte block ending in a lead byte (inside a comment), then a complete
    // data line whose value starts with a lone continuation byte. The parser drops the
    // bytes before that value before it has validated them; when the value is validated in
    // the next push, it must not be taken as completing the earlier lead byte.
    let mut first = b":".to_vec();
    first.extend(std::iter::repeat_n(b'x', 30));
    first.push(0xC3);
    first.extend_from_slice(b"\ndata:\x80bb\n");
    let mut second = b":".to_vec();
    second.extend(std::iter::repeat_n(b'y', 40));
    second.extend_from_slice(b"\n\n");
    let frames = parse_chunks(SseParser::new, &[&first, &second]);
    let expected = vec![
        comment(&format!("{}\u{FFFD}", "x".repeat(30))),
        comment(&"y".repeat(40)),
        ev("\u{FFFD}bb"),
    ];
    assert_eq!(frames, expected);
}

/// A realistic `/run_sse` stream: ADK events, heartbeats of every kind, CRLF and CR endings,
/// multi-byte text, a multi-line event, and a final event without its blank line.
fn sample_stream() -> Vec<u8> {
    let mut s = String::new();
    s.push('\u{FEFF}');
    s.push_str(": connected\n\n");
    s.push_str(
        "data: {\"invocationId\":\"e-1\",\"author\":\"nemo_agent\",\"partial\":true,\
         \"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"点击导出\"}]}}\n\n",
    );
    s.push_str("data:\n\n");
    s.push_str(": ping\r\n\r\n");
    s.push_str("data: heartbeat\r\rdata: {\"type\":\"heartbeat\"}\r\n\r\n");
    s.push_str("event: tool\nid: 17\nretry: 3000\ndata: {\"type\":\"tool_call\",\n");
    s.push_str("data:  \"name\":\"remove_object\"}\n\n");
    s.push_str(&format!(
        "data: {{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}]}}}}\n\n",
        "café ✓ ".repeat(40)
    ));
    s.push_str("id\nunknown: field\ndata: {\"turnComplete\":true}");
    s.into_bytes()
}

fn sample_expected() -> Vec<F> {
    vec![
        comment("connected"),
        ev(
            "{\"invocationId\":\"e-1\",\"author\":\"nemo_agent\",\"partial\":true,\
            \"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"点击导出\"}]}}",
        ),
        ev(""),
        comment("ping"),
        ev("heartbeat"),
        ev("{\"type\":\"heartbeat\"}"),
        ev_full(
            "{\"type\":\"tool_call\",\n \"name\":\"remove_object\"}",
            Some("tool"),
            Some("17"),
            Some(3000),
        ),
        ev(&format!(
            "{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}]}}}}",
            "café ✓ ".repeat(40)
        )),
        ev_full("{\"turnComplete\":true}", None, Some(""), None),
    ]
}

#[test]
fn sample_stream_whole() {
    assert_eq!(parse(&sample_stream()), sample_expected());
}

#[test]
fn sample_stream_split_at_every_boundary() {
    let input = sample_stream();
    let expected = sample_expected();
    for cut in 0..=input.len() {
        let (head, tail) = input.split_at(cut);
        let frames = parse_chunks(SseParser::new, &[head, tail]);
        assert_eq!(frames, expected, "split at byte {cut}");
    }
    for first in (0..=input.len()).step_by(7) {
        for second in (first..=input.len()).step_by(13) {
            let chunks = [&input[..first], &input[first..second], &input[second..]];
            let frames = parse_chunks(SseParser::new, &chunks);
            assert_eq!(frames, expected, "split at bytes {first} and {second}");
        }
    }
}

#[test]
fn sample_stream_byte_by_byte() {
    assert_eq!(parse_bytewise(&sample_stream()), sample_expected());
}

#[test]
fn sample_stream_frames_come_out_at_the_byte_that_completes_them() {
    for feed in FEEDS {
        // Byte by byte, note after which byte each frame comes out. Then for every prefix fed
        // whole, `next_frame` must give exactly the frames completed within that prefix: none
        // early, none late.
        let input = sample_stream();
        let mut parser = Fed::new(feed, SseParser::new());
        let mut completed_after = Vec::new();
        for (at, byte) in input.iter().enumerate() {
            parser.push(std::slice::from_ref(byte));
            while let Some(frame) = parser.next_frame() {
                completed_after.push((at + 1, to_f(frame)));
            }
        }
        assert!(completed_after.len() >= 7, "{completed_after:?}");
        for len in 0..=input.len() {
            let mut whole = Fed::new(feed, SseParser::new());
            whole.push(&input[..len]);
            let mut frames = Vec::new();
            while let Some(frame) = whole.next_frame() {
                frames.push(to_f(frame));
            }
            let expected: Vec<F> = completed_after
                .iter()
                .filter(|(after, _)| *after <= len)
                .map(|(_, frame)| frame.clone())
                .collect();
            assert_eq!(frames, expected, "prefix of {len} bytes");
        }
    }
}

/// Lines a stream may contain, chosen to hit every rule.
fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    let endings = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])];
    let body = prop_oneof![
        Just(b"data".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data: heartbeat".to_vec()),
        Just(b"event: tool".to_vec()),
        Just(b"event".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"id: a\0b".to_vec()),
        Just(b"id".to_vec()),
        Just(b"retry: 100".to_vec()),
        Just(b"retry: x".to_vec()),
        Just(b": ping".to_vec()),
        Just(b":".to_vec()),
        Just(b"unknown: x".to_vec()),
        Just(Vec::new()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut value| {
            value.retain(|b| *b != b'\n' && *b != b'\r');
            let mut line = b"data: ".to_vec();
            line.extend(value);
            line
        }),
        "[a-z点击é ]{0,120}".prop_map(|text| format!("data: {text}").into_bytes()),
    ];
    (body, endings).prop_map(|(mut line, ending)| {
        line.extend_from_slice(ending);
        line
    })
}

fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec(line_strategy(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(bom, lines, tail)| {
            let mut stream = if bom {
                b"\xEF\xBB\xBF".to_vec()
            } else {
                Vec::new()
            };
            for line in lines {
                stream.extend(line);
            }
            stream.extend(tail);
            stream
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunking_never_changes_the_result(
        stream in stream_strategy(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        limit in prop_oneof![Just(16 * 1024 * 1024), 8usize..64],
    ) {
        let whole = parse_chunks(|| SseParser::with_max_event_size(limit), &[&stream]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&stream[start..point]);
            start = point;
        }
        chunks.push(&stream[start..]);
        let chunked = parse_chunks(|| SseParser::with_max_event_size(limit), &chunks);
        prop_assert_eq!(&chunked, &whole);
        // Without an oversized event, byte-by-byte feeding agrees too.
        if limit > 1024 {
            prop_assert_eq!(parse_bytewise(&stream), whole);
        }
    }

    #[test]
    fn data_matches_lossy_decoding(value in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut value = value;
        value.retain(|b| *b != b'\n' && *b != b'\r');
        let mut input = b"data:".to_vec();
        input.extend(&value);
        input.extend(b"\n\n");
        let expected = String::from_utf8_lossy(&value);
        let expected = expected.strip_prefix(' ').unwrap_or(&expected);
        prop_assert_eq!(parse(&input), vec![ev(expected)]);
    }

    #[test]
    fn every_event_in_a_long_chunked_stream_matches_lossy_decoding(
        values in proptest::collection::vec(
            prop_oneof![
                "[a-z点击é✓😀 ]{0,200}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..200),
                ("[a-z点击 ]{0,150}", any::<u8>(), 0usize..150).prop_map(|(text, byte, at)| {
                    let mut value = text.into_bytes();
                    let at = at.min(value.len());
                    value.insert(at, byte);
                    value
                }),
            ],
            1..30,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        multi_line in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for value in &values {
            let mut value = value.clone();
            value.retain(|b| *b != b'\n' && *b != b'\r');
            stream.extend_from_slice(b"data:");
            stream.extend_from_slice(&value);
            let mut text = String::from_utf8_lossy(&value).into_owned();
            if multi_line {
                stream.extend_from_slice(b"\ndata:");
                stream.extend_from_slice(&value);
                text = format!("{text}\n{text}");
            }
            stream.extend_from_slice(b"\n\n");
            // One leading space after the colon is not part of the value.
            let text = text.replace("\n ", "\n");
            let text = text.strip_prefix(' ').unwrap_or(&text).to_owned();
            expected.push(ev(&text));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&stream[start..point]);
            start = point;
        }
        chunks.push(&stream[start..]);
        let frames = parse_chunks(SseParser::new, &chunks);
        for (frame, expected) in frames.iter().zip(&expected) {
            if let F::Ev(data, ..) = frame {
                prop_assert!(std::str::from_utf8(data.as_bytes()).is_ok());
            }
            prop_assert_eq!(frame, expected);
        }
        prop_assert_eq!(frames.len(), expected.len());
    }
}

#[test]
fn every_single_byte_corruption_of_a_long_value_is_decoded_lossily() {
    // Long enough for simdutf8's vectorised path; bytes from every class a validator
    // distinguishes, at every position, in single-line and multi-line data.
    const INTERESTING: [u8; 22] = [
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
        0xED, 0xEE, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
    ];
    let text = "点击 export café ✓ 😀 ".repeat(8);
    let mut value = text.as_bytes().to_vec();
    for at in 0..value.len() {
        for &byte in &INTERESTING {
            let original = value[at];
            value[at] = byte;
            let decoded = String::from_utf8_lossy(&value).into_owned();
            let mut single = b"data:".to_vec();
            single.extend_from_slice(&value);
            single.extend_from_slice(b"\n\n");
            assert_eq!(parse(&single), vec![ev(&decoded)], "{byte:02X} at {at}");
            let mut multi = b"data:".to_vec();
            multi.extend_from_slice(&value);
            multi.extend_from_slice(b"\ndata:x\n\n");
            assert_eq!(
                parse(&multi),
                vec![ev(&format!("{decoded}\nx"))],
                "{byte:02X} at {at}, multi-line"
            );
            value[at] = original;
        }
    }
}

/// Parses `input` whole, split in two at every position, in three at every pair of
/// positions, and byte by byte, and checks that every way gives `expected`.
fn assert_same_at_every_split(input: &[u8], expected: &[F]) {
    assert_eq!(parse(input), expected, "whole input");
    assert_eq!(parse_bytewise(input), expected, "byte by byte");
    for i in 0..=input.len() {
        let (a, rest) = input.split_at(i);
        assert_eq!(
            parse_chunks(SseParser::new, &[a, rest]),
            expected,
            "split at {i}"
        );
        for j in 0..=rest.len() {
            let (b, c) = rest.split_at(j);
            assert_eq!(
                parse_chunks(SseParser::new, &[a, b, c]),
                expected,
                "split at {i} and {}",
                i + j
            );
        }
    }
}

#[test]
fn multibyte_characters_split_across_pushes_at_every_position() {
    for ch in ["é", "点", "😀"] {
        // A single data line, a joined one, a comment and an event type around it.
        let input = format!(
            "data: a{ch}b\n\ndata: {ch}\ndata: x{ch}\n\n: {ch}\nevent: {ch}\ndata: {ch}{ch}\n\n"
        );
        let expected = [
            ev(&format!("a{ch}b")),
            ev(&format!("{ch}\nx{ch}")),
            comment(ch),
            ev_full(&format!("{ch}{ch}"), Some(ch), None, None),
        ];
        assert_same_at_every_split(input.as_bytes(), &expected);
        // The same with the character last before the end of the stream.
        let input = format!("data: {ch}");
        assert_same_at_every_split(input.as_bytes(), &[ev(ch)]);
    }
}

#[test]
fn invalid_utf8_in_one_event_does_not_affect_its_neighbours() {
    let input = b"data: \xE7\x82\xB9ok\n\ndata: a\xFFb\n\ndata: \xE7\x82\xB9\n\ndata: x\ndata: \xC0\n\ndata: \xF0\x9F\x98\x80\n\n";
    let expected = [
        ev("点ok"),
        ev("a\u{FFFD}b"),
        ev("点"),
        ev("x\n\u{FFFD}"),
        ev("😀"),
    ];
    assert_same_at_every_split(input, &expected);
}

#[test]
fn invalid_sequences_split_across_pushes_decode_like_from_utf8_lossy() {
    // Truncated sequences followed by ASCII, by a line ending, by another character and by
    // the end of the stream; a surrogate; an overlong form; a stray continuation byte.
    let payloads: [&[u8]; 8] = [
        b"\xE2\x82A",
        b"\xF0\x9F\x98",
        b"\xF0\x9F\x98\xE7\x82\xB9",
        b"\xE2\x82\xE2\x82\xAC",
        b"\xED\xA0\x80z",
        b"\xE0\x80\x80",
        b"\x80\xE7\x82\xB9",
        b"ok\xC3",
    ];
    for payload in payloads {
        let text = String::from_utf8_lossy(payload).into_owned();
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(payload);
        input.extend_from_slice(b"\n\ndata: \xE7\x82\xB9\n\ndata: ");
        input.extend_from_slice(payload);
        assert_same_at_every_split(&input, &[ev(&text), ev("点"), ev(&text)]);
    }
}

// ---------------------------------------------------------------------------------------
// `push_bytes`: the zero-copy entry point (it gives the same frames as `push` in every test
// above, through `parse_chunks` and `Fed`)
// ---------------------------------------------------------------------------------------

/// Whether `inner` lies inside `outer`'s bytes.
fn points_into(inner: &[u8], outer: &Bytes) -> bool {
    let range = outer.as_ptr_range();
    let inner = inner.as_ptr_range();
    range.start <= inner.start && inner.end <= range.end
}

#[test]
fn push_bytes_hands_out_one_line_data_as_a_slice_of_the_chunk() {
    let chunk = Bytes::from(
        b"data: {\"text\":\"first\"}\n\nevent: e\ndata: second\n\ndata: a\ndata: b\n\ndata: cut"
            .to_vec(),
    );
    let mut parser = SseParser::new();
    parser.push_bytes(chunk.clone());
    let mut events = Vec::new();
    while let Some(frame) = parser.next_frame() {
        let Ok(SseFrame::Event(event)) = frame else {
            panic!("unexpected {frame:?}")
        };
        events.push(event);
    }
    let data: Vec<&str> = events.iter().map(SseEvent::data).collect();
    assert_eq!(data, [r#"{"text":"first"}"#, "second", "a\nb"]);
    assert!(points_into(events[0].data_bytes(), &chunk), "not copied");
    assert!(points_into(events[1].data_bytes(), &chunk), "not copied");
    // Joined lines are a new string, necessarily.
    assert!(!points_into(events[2].data_bytes(), &chunk));

    // A line cut by the end of the chunk is completed from the next one.
    let next = Bytes::from(b" here\n\ndata: whole\n\n".to_vec());
    parser.push_bytes(next.clone());
    let frames: Vec<_> = std::iter::from_fn(|| parser.next_frame()).collect();
    let [Ok(SseFrame::Event(cut)), Ok(SseFrame::Event(whole))] = &frames[..] else {
        panic!("unexpected {frames:?}")
    };
    assert_eq!((cut.data(), whole.data()), ("cut here", "whole"));
    assert!(points_into(whole.data_bytes(), &next), "not copied");
}

#[test]
fn push_bytes_lets_go_of_every_chunk_once_drained() {
    // Whatever the chunk ends with (a partial line, half a CRLF, a data line whose blank line
    // has not come, part of a BOM), once `next_frame` has returned `None` the parser holds no
    // reference to the chunk, so the network layer can reuse its buffer while the stream is
    // idle.
    let input = sample_stream();
    let expected = sample_expected();
    for cut in 0..=input.len() {
        for second_cut in [cut, (cut + 5).min(input.len()), input.len()] {
            let pieces = [&input[..cut], &input[cut..second_cut], &input[second_cut..]];
            let mut parser = SseParser::new();
            let mut frames = Vec::new();
            for (index, piece) in pieces.into_iter().enumerate() {
                let chunk = Bytes::from(piece.to_vec());
                parser.push_bytes(chunk.clone());
                while let Some(frame) = parser.next_frame() {
                    frames.push(to_f(frame));
                }
                assert!(
                    // (An empty `Bytes` is static, never "unique"; the parser ignores it.)
                    chunk.is_empty() || chunk.is_unique(),
                    "the parser still holds chunk {index} (cuts at {cut} and {second_cut})"
                );
            }
            while let Some(frame) = parser.finish() {
                frames.push(to_f(frame));
            }
            assert_eq!(frames, expected, "cuts {cut}, {second_cut}");
        }
    }
}

#[test]
fn push_bytes_without_draining_in_between_gives_the_same_frames() {
    // Several chunks queued before the first `next_frame`, and `push` mixed in.
    let input = sample_stream();
    let expected = sample_expected();
    for size in [1, 2, 3, 7, 64, input.len()] {
        let mut parser = SseParser::new();
        for (index, chunk) in input.chunks(size).enumerate() {
            if index % 3 == 2 {
                parser.push(chunk);
            } else {
                parser.push_bytes(Bytes::copy_from_slice(chunk));
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = parser.finish() {
            frames.push(to_f(frame));
        }
        assert_eq!(frames, expected, "chunks of {size}");
    }
}
