//! Replays fuzz inputs through the fuzz targets' checks in the normal `cargo test`: every
//! seed under `fuzz/corpus/<target>/` and every input a campaign found under
//! `tests/fuzz_regressions/<target>/`. Each file uses its target's input layout (see the
//! target's doc comment in `fuzz/fuzz_targets/`), so a crash file from `fuzz/artifacts/` is
//! kept by copying it into `tests/fuzz_regressions/<target>/` as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use nemo_video::__fuzz::decode_envelope;
use nemo_video::draft::Draft;
use nemo_video::events::decode_frame;
use nemo_video::sse::{SseError, SseFrame, SseParser, DEFAULT_MAX_EVENT_SIZE};
use nemo_video::state::{SessionState, StateDiff};
use serde_json::value::RawValue;

/// The inputs for `target`, with their paths for failure messages.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fuzz_regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable directory entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("a readable fuzz input");
                found.push((path, bytes));
            }
        }
    }
    found.sort();
    // The published crate leaves fuzz/ out; in the repository the seeds must be there.
    if root.join("fuzz").is_dir() {
        assert!(!found.is_empty(), "no fuzz inputs found for {target}");
    }
    found
}

fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

// ---------------------------------------------------------------------------------------
// The targets' checks (same input layouts as fuzz/fuzz_targets/*.rs)
// ---------------------------------------------------------------------------------------

type Frame = Result<SseFrame, SseError>;

fn sse_feed(parser: &mut SseParser, chunks: impl Iterator<Item = Vec<u8>>) -> Vec<Frame> {
    sse_feed_by(parser, chunks, |_| false)
}

/// Feeds each chunk through `push_bytes` when `shared(index)`, else through `push`.
fn sse_feed_by(
    parser: &mut SseParser,
    chunks: impl Iterator<Item = Vec<u8>>,
    shared: impl Fn(usize) -> bool,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    for (index, chunk) in chunks.enumerate() {
        if shared(index) {
            parser.push_bytes(Bytes::from(chunk));
        } else {
            parser.push(&chunk);
        }
        while let Some(frame) = parser.next_frame() {
            frames.push(frame);
        }
    }
    while let Some(frame) = parser.finish() {
        frames.push(frame);
    }
    frames
}

/// Layout: limit byte, largest-chunk byte, chunking seed, stream.
fn check_sse_parser(data: &[u8]) {
    let Some((config, input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limit = if config[0] & 0x80 != 0 {
        DEFAULT_MAX_EVENT_SIZE
    } else {
        1 + usize::from(config[0] & 0x3f)
    };
    let largest = 1 + usize::from(config[1] % 32);
    let mut state = 0x9E37_79B9 ^ u32::from(config[2]);
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let (chunk, tail) = rest.split_at((1 + state as usize % largest).min(rest.len()));
        chunks.push(chunk.to_vec());
        rest = tail;
    }

    let mut whole_parser = SseParser::with_max_event_size(limit);
    let whole = sse_feed(&mut whole_parser, std::iter::once(input.to_vec()));
    for frame in &whole {
        if let Ok(SseFrame::Event(event)) = frame {
            assert!(std::str::from_utf8(event.data_bytes()).is_ok());
        }
    }
    // Every chunk copied by `push`, every chunk through `push_bytes`, and the two alternating.
    let ways: [fn(usize) -> bool; 3] = [|_| false, |_| true, |index| index % 2 == 1];
    for shared in ways {
        let mut parser = SseParser::with_max_event_size(limit);
        assert_eq!(
            sse_feed_by(&mut parser, chunks.iter().cloned(), shared),
            whole
        );
        assert_eq!(parser.last_event_id(), whole_parser.last_event_id());
        assert_eq!(parser.reconnection_time(), whole_parser.reconnection_time());
        // Reused after `finish`, whole this time.
        assert_eq!(
            sse_feed_by(&mut parser, std::iter::once(input.to_vec()), shared),
            whole
        );
    }
}

/// Layout: two status bytes (little endian, folded into 100..=999), body.
fn check_envelope(data: &[u8]) {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_le_bytes(*status) % 900;
    match decode_envelope(status, body) {
        Ok(()) => assert!((200..300).contains(&status)),
        Err(err) => {
            assert_eq!(err.http_status(), Some(status));
            assert!(!err.to_string().is_empty());
        }
    }
}

fn check_agent_events(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let events = decode_frame(&text);
    assert!(!events.is_empty());
    assert_eq!(events, decode_frame(&text));
    for event in &events {
        let _ = (event.text(), event.visible_text(), event.is_error());
        if let Some(call) = event.as_tool_call() {
            let _ = (call.question_text(), call.question_options());
        }
        if let Some(error) = event.as_error() {
            assert!(!error.to_string().is_empty());
        }
    }
}

/// Layout: one document, or two separated by NUL.
fn split_documents(data: &[u8]) -> Option<(&str, Option<&str>)> {
    let text = std::str::from_utf8(data).ok()?;
    Some(match text.split_once('\0') {
        Some((first, second)) => (first, Some(second)),
        None => (text, None),
    })
}

fn draft_checked(text: &str) -> Option<Draft> {
    let raw = serde_json::from_str::<&RawValue>(text);
    let draft = Draft::from_json(text);
    assert_eq!(raw.is_ok(), draft.is_ok());
    let (raw, draft) = (raw.ok()?, draft.ok()?);
    assert_eq!(draft.as_json_str(), text);
    let expected = serde_json::to_string(raw).unwrap();
    assert_eq!(serde_json::to_string(&draft).unwrap(), expected);
    let via_serde: Draft = serde_json::from_str(text).unwrap();
    assert_eq!(serde_json::to_string(&via_serde).unwrap(), expected);
    assert!(draft.summary().starts_with("Timeline"));
    assert!(StateDiff::between_drafts(Some(&draft), Some(&draft)).is_empty());
    Some(draft)
}

fn check_draft_roundtrip(data: &[u8]) {
    let Some((first, second)) = split_documents(data) else {
        return;
    };
    let first = draft_checked(first);
    let second = second.and_then(draft_checked);
    if let (Some(first), Some(second)) = (&first, &second) {
        let _ = StateDiff::between_drafts(Some(first), Some(second)).to_string();
        let _ = StateDiff::between_drafts(Some(second), Some(first)).to_string();
    }
}

fn state_checked(text: &str) -> Option<SessionState> {
    let state = SessionState::from_json(text).ok()?;
    assert!(state.summary().starts_with("Timeline"));
    assert!(state.diff(&state).is_empty());
    let encoded = serde_json::to_string(&state).unwrap();
    let decoded = SessionState::from_json(&encoded).unwrap();
    assert_eq!(serde_json::to_string(&decoded).unwrap(), encoded);
    assert!(state.diff(&decoded).is_empty());
    Some(state)
}

fn check_state(data: &[u8]) {
    let Some((first, second)) = split_documents(data) else {
        return;
    };
    let first = state_checked(first);
    let second = second.and_then(state_checked);
    if let (Some(first), Some(second)) = (&first, &second) {
        let _ = first.diff(second).to_string();
        let _ = second.diff(first).to_string();
    }
}

// ---------------------------------------------------------------------------------------
// Replays
// ---------------------------------------------------------------------------------------

#[test]
fn sse_parser_inputs() {
    replay("sse_parser", check_sse_parser);
}

#[test]
fn envelope_inputs() {
    replay("envelope", check_envelope);
}

#[test]
fn agent_events_inputs() {
    replay("agent_events", check_agent_events);
}

#[test]
fn draft_roundtrip_inputs() {
    replay("draft_roundtrip", check_draft_roundtrip);
}

#[test]
fn state_inputs() {
    replay("state", check_state);
}

/// The seeds are realistic, so beyond "no panic" they must decode to what they stand for.
#[test]
fn seed_corpora_decode_as_intended() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    if !root.is_dir() {
        return;
    }
    let read = |path: &str| std::fs::read(root.join(path)).expect("a committed seed");

    let seed = read("sse_parser/adk_stream_default_limit");
    let mut parser = SseParser::new();
    let frames = sse_feed(&mut parser, std::iter::once(seed[3..].to_vec()));
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert!(frames.iter().all(Result::is_ok));
    assert_eq!(parser.last_event_id(), "2");
    assert_eq!(parser.reconnection_time(), Some(Duration::from_secs(3)));

    let seed = read("envelope/code_1002_session");
    let err = decode_envelope(200, &seed[2..]).expect_err("code 1002 is an error");
    assert!(
        matches!(err, nemo_video::Error::SessionNotFound { .. }),
        "{err:?}"
    );
    assert!(decode_envelope(200, &read("envelope/ok_code_data")[2..]).is_ok());

    let frame = String::from_utf8(read("agent_events/adk_call_delta")).unwrap();
    assert_eq!(decode_frame(&frame).len(), 3);

    let draft =
        Draft::from_json(std::str::from_utf8(&read("draft_roundtrip/spec_three_tracks")).unwrap())
            .unwrap();
    assert_eq!(draft.tracks().len(), 3);
}
