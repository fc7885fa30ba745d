//! Property tests over the decoders that take server input: the SSE parser, agent events,
//! the response envelope, drafts and session states. They check the same properties as the
//! fuzz targets under `fuzz/` (see fuzz/README.md), on a few hundred generated cases each, so
//! that `cargo test` keeps them true between fuzzing campaigns.

use std::time::Duration;

use bytes::Bytes;
use nemo_video::__fuzz::decode_envelope;
use nemo_video::draft::Draft;
use nemo_video::events::decode_frame;
use nemo_video::sse::{SseError, SseEvent, SseFrame, SseParser, DEFAULT_MAX_EVENT_SIZE};
use nemo_video::state::{SessionState, StateDiff};
use proptest::prelude::*;
use serde_json::value::RawValue;

type Frame = Result<SseFrame, SseError>;

// ---------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------

/// Bytes that look like an event stream often enough to reach every branch: field names,
/// colons, every line ending, a BOM, NUL, invalid and multi-byte UTF-8, digits.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"event:".to_vec()),
        Just(b"id:".to_vec()),
        Just(b"retry:".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\0".to_vec()),
        Just("é".as_bytes().to_vec()),
        Just(b"\xE2\x82".to_vec()),
        Just(b"\xFF".to_vec()),
        Just(b"1234".to_vec()),
        Just(b"{\"text\":\"hi\"}".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

/// The two entry points, which must give the same frames and errors.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// `push(&[u8])`, which copies.
    Copy,
    /// `push_bytes(Bytes)`, which parses the chunk where it lies.
    Shared,
}

const FEEDS: [Feed; 2] = [Feed::Copy, Feed::Shared];

fn push(parser: &mut SseParser, feed: Feed, chunk: &[u8]) {
    match feed {
        Feed::Copy => parser.push(chunk),
        Feed::Shared => parser.push_bytes(Bytes::copy_from_slice(chunk)),
    }
}

fn feed_whole(parser: &mut SseParser, input: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    parser.push(input);
    while let Some(frame) = parser.next_frame() {
        frames.push(frame);
    }
    while let Some(frame) = parser.finish() {
        frames.push(frame);
    }
    frames
}

fn feed_chunked(parser: &mut SseParser, feed: Feed, input: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        push(parser, feed, chunk);
        while let Some(frame) = parser.next_frame() {
            frames.push(frame);
        }
    }
    while let Some(frame) = parser.finish() {
        frames.push(frame);
    }
    frames
}

/// One push of a feeding plan: its size, whether it goes through `push_bytes`, and whether
/// the frames are drained after it.
type Step = (usize, bool, bool);

/// Feeds `input` by `plan` (cycled), each chunk a slice of one shared buffer as the network
/// hands them out, draining only where the plan says.
fn feed_planned(parser: &mut SseParser, input: &[u8], plan: &[Step]) -> Vec<Frame> {
    let shared = Bytes::copy_from_slice(input);
    let mut frames = Vec::new();
    let mut at = 0;
    for &(size, zero_copy, drain) in plan.iter().cycle() {
        if at == input.len() {
            break;
        }
        let end = (at + size.max(1)).min(input.len());
        if zero_copy {
            parser.push_bytes(shared.slice(at..end));
        } else {
            parser.push(&input[at..end]);
        }
        at = end;
        if drain {
            while let Some(frame) = parser.next_frame() {
                frames.push(frame);
            }
        }
    }
    while let Some(frame) = parser.finish() {
        frames.push(frame);
    }
    frames
}

/// A direct reading of the WHATWG "interpreting an event stream" steps plus this crate's
/// documented additions (comments as frames, dispatch at end of stream), with no size limit.
/// It works on the whole input at once, so it shares no code path with the incremental parser.
fn reference_frames(input: &[u8]) -> Vec<Frame> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\n' => {
                lines.push(&input[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                lines.push(&input[start..i]);
                i += if input.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < input.len() {
        lines.push(&input[start..]);
    }

    let mut frames = Vec::new();
    let mut block = Block::default();
    for line in lines {
        if line.is_empty() {
            frames.extend(block.dispatch());
            continue;
        }
        if line[0] == b':' {
            let text = line[1..].strip_prefix(b" ").unwrap_or(&line[1..]);
            frames.push(Ok(SseFrame::Comment(lossy(text))));
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => match &mut block.data {
                Some(joined) => {
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
                None => block.data = Some(value.to_vec()),
            },
            b"event" => block.event_type = (!value.is_empty()).then(|| lossy(value)),
            b"id" if !value.contains(&0) => block.id = Some(lossy(value)),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(millis) = std::str::from_utf8(value).unwrap_or("x").parse::<u64>() {
                    block.retry = Some(Duration::from_millis(millis));
                }
            }
            _ => {}
        }
    }
    frames.extend(block.dispatch());
    frames
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The fields of the event being read by [`reference_frames`].
#[derive(Default)]
struct Block {
    data: Option<Vec<u8>>,
    event_type: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
}

impl Block {
    /// The blank-line step: an event if the block had data; the block is reset either way.
    fn dispatch(&mut self) -> Option<Frame> {
        let block = std::mem::take(self);
        let mut event = SseEvent::new(lossy(&block.data?));
        if let Some(kind) = block.event_type {
            event = event.with_event_type(kind);
        }
        if let Some(id) = block.id {
            event = event.with_id(id);
        }
        if let Some(retry) = block.retry {
            event = event.with_retry(retry);
        }
        Some(Ok(SseFrame::Event(event)))
    }
}

fn assert_utf8(frames: &[Frame]) {
    for frame in frames {
        if let Ok(SseFrame::Event(event)) = frame {
            assert!(std::str::from_utf8(event.data_bytes()).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// However the bytes are split, and through either entry point, the frames (errors
    /// included) are those of the whole feed, with a limit small enough that
    /// `EventTooLarge` is common.
    #[test]
    fn sse_chunked_feed_equals_whole_feed(
        input in sse_bytes(),
        sizes in proptest::collection::vec(1usize..24, 1..16),
        limit in 1usize..48,
    ) {
        let whole = feed_whole(&mut SseParser::with_max_event_size(limit), &input);
        assert_utf8(&whole);
        for feed in FEEDS {
            let mut parser = SseParser::with_max_event_size(limit);
            let chunked = feed_chunked(&mut parser, feed, &input, &sizes);
            prop_assert_eq!(&chunked, &whole, "{:?}", feed);
            // Ready for a new stream after `finish`: the same bytes give the same frames.
            prop_assert_eq!(&feed_whole(&mut parser, &input), &whole, "{:?}", feed);
        }
    }

    /// Random chunkings through `push` and through `push_bytes`, the two mixed, and
    /// draining after some pushes only, all give the frames, last event id and reconnection
    /// time of `push` with the whole input.
    #[test]
    fn sse_push_bytes_equals_push_for_any_chunking(
        input in sse_bytes(),
        plan in proptest::collection::vec((1usize..24, any::<bool>(), any::<bool>()), 1..16),
        limit in prop_oneof![Just(DEFAULT_MAX_EVENT_SIZE), 1usize..48],
    ) {
        let mut reference = SseParser::with_max_event_size(limit);
        let whole = feed_whole(&mut reference, &input);
        let all_shared: Vec<Step> = plan.iter().map(|&(size, _, drain)| (size, true, drain)).collect();
        let all_copied: Vec<Step> = plan.iter().map(|&(size, _, drain)| (size, false, drain)).collect();
        for plan in [&plan, &all_shared, &all_copied] {
            let mut parser = SseParser::with_max_event_size(limit);
            prop_assert_eq!(&feed_planned(&mut parser, &input, plan), &whole, "plan {:?}", plan);
            prop_assert_eq!(parser.last_event_id(), reference.last_event_id());
            prop_assert_eq!(parser.reconnection_time(), reference.reconnection_time());
        }
    }

    /// Without hitting the limit, the parser agrees with a plain reading of the spec, for
    /// any chunking, through either entry point.
    #[test]
    fn sse_matches_the_reference_reading_of_the_spec(
        input in sse_bytes(),
        sizes in proptest::collection::vec(1usize..24, 1..16),
    ) {
        let expected = reference_frames(&input);
        for feed in FEEDS {
            let mut parser = SseParser::new();
            prop_assert_eq!(&feed_chunked(&mut parser, feed, &input, &sizes), &expected, "{:?}", feed);
        }
    }

    /// Arbitrary bytes, one at a time or whole, never panic and give valid UTF-8 data.
    #[test]
    fn sse_arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let whole = feed_whole(&mut SseParser::with_max_event_size(16), &input);
        assert_utf8(&whole);
        for feed in FEEDS {
            let bytewise = feed_chunked(&mut SseParser::with_max_event_size(16), feed, &input, &[1]);
            prop_assert_eq!(&bytewise, &whole, "{:?}", feed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON-shaped text
// ---------------------------------------------------------------------------------------

/// JSON text with the spellings a lossless decoder must keep (odd numbers, escapes,
/// whitespace, duplicate keys) and the keys the draft, state and event views look at.
/// Some of it is invalid (`1e999`, a lone `-`): decoders must agree on what they reject.
fn json_text() -> impl Strategy<Value = String> {
    let number = "-?(0|[1-9][0-9]{0,6})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?";
    let string = "\"([a-z /]|é|\\\\u00e9|\\\\n|\\\\\"|\\\\u0007){0,12}\"";
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number,
        string,
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            Just("t"),
            Just("tt"),
            Just("sg"),
            Just("d"),
            Just("m"),
            Just("st"),
            Just("s"),
            Just("e"),
            Just("end"),
            Just("id"),
            Just("name"),
            Just("text"),
            Just("file_name"),
            Just("volume"),
            Just("state"),
            Just("draft"),
            Just("video_infos"),
            Just("generated_media"),
            Just("session_id"),
            Just("content"),
            Just("parts"),
            Just("functionCall"),
            Just("args"),
            Just("actions"),
            Just("stateDelta"),
            Just("error"),
            Just("code"),
            Just("data"),
            Just("x"),
        ];
        let space = prop_oneof![Just(""), Just(""), Just(" "), Just("\n\t")];
        prop_oneof![
            proptest::collection::vec((inner.clone(), space.clone()), 0..5).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(v, s)| format!("{s}{v}{s}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            proptest::collection::vec((key, inner, space), 0..6).prop_map(|entries| {
                let entries: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v, s)| format!("{s}\"{k}\"{s}:{s}{v}"))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    })
}

/// A draft document: usually an object with a `t` array of track-like objects.
fn draft_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (json_text(), json_text()).prop_map(|(tracks, rest)| {
            format!(r#"{{"t":[{{"tt":0,"sg":{tracks}}},{rest}],"d":1000}}"#)
        }),
        1 => json_text(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text decodes to at least one event, and the same events every time.
    #[test]
    fn decode_frame_never_panics_on_arbitrary_strings(text in any::<String>()) {
        let events = decode_frame(&text);
        prop_assert!(!events.is_empty());
        prop_assert_eq!(&events, &decode_frame(&text));
    }

    /// JSON of any shape decodes to at least one event; accessors never panic.
    #[test]
    fn decode_frame_never_panics_on_json(text in json_text()) {
        let events = decode_frame(&text);
        prop_assert!(!events.is_empty());
        for event in &events {
            let _ = (event.text(), event.visible_text(), event.is_error());
            if let Some(call) = event.as_tool_call() {
                let _ = (call.question_text(), call.question_options());
            }
            if let Some(error) = event.as_error() {
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    /// Any body with any status: no panic; a non-2xx response is never a success, and the
    /// error keeps the status.
    #[test]
    fn envelope_decoder_never_panics(
        status in 100u16..=999,
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            json_text().prop_map(String::into_bytes),
        ],
    ) {
        match decode_envelope(status, &body) {
            Ok(()) => prop_assert!((200..300).contains(&status), "HTTP {} decoded as success", status),
            Err(err) => {
                prop_assert_eq!(err.http_status(), Some(status));
                prop_assert!(!err.to_string().is_empty());
            }
        }
    }

    /// Decode then encode gives the bytes serde_json's `RawValue` gives; the text is kept
    /// exactly; summaries and diffs never panic; a draft has no changes from itself.
    #[test]
    fn draft_round_trips_byte_for_byte(text in draft_text(), other in draft_text()) {
        let raw = serde_json::from_str::<&RawValue>(&text);
        let draft = Draft::from_json(&text);
        prop_assert_eq!(raw.is_ok(), draft.is_ok());
        if let (Ok(raw), Ok(draft)) = (raw, draft) {
            prop_assert_eq!(draft.as_json_str(), text.as_str());
            prop_assert_eq!(serde_json::to_string(&draft).unwrap(), serde_json::to_string(raw).unwrap());
            let via_serde: Draft = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(serde_json::to_string(&via_serde).unwrap(), raw.get());
            prop_assert!(draft.summary().starts_with("Timeline"));
            prop_assert!(StateDiff::between_drafts(Some(&draft), Some(&draft)).is_empty());
            if let Ok(other) = Draft::from_json(&other) {
                let _ = StateDiff::between_drafts(Some(&draft), Some(&other)).to_string();
                let _ = StateDiff::between_drafts(Some(&other), Some(&draft)).to_string();
            }
        }
    }

    /// States: no panic; no changes from itself; re-encoding is stable and changes nothing.
    #[test]
    fn session_state_summary_and_diff_never_panic(draft in draft_text(), rest in json_text()) {
        let text = format!(r#"{{"session_id":"s","state":{{"draft":{draft},"generated_media":{rest}}},"x":{rest}}}"#);
        for text in [text.as_str(), rest.as_str()] {
            if let Ok(state) = SessionState::from_json(text) {
                prop_assert!(state.summary().starts_with("Timeline"));
                prop_assert!(state.diff(&state).is_empty());
                let encoded = serde_json::to_string(&state).unwrap();
                let decoded = SessionState::from_json(&encoded).unwrap();
                prop_assert_eq!(serde_json::to_string(&decoded).unwrap(), encoded);
                prop_assert!(state.diff(&decoded).is_empty());
            }
        }
    }
}
