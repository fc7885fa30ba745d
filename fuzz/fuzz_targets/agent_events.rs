//! `decode_frame` on any text (invalid UTF-8 is decoded lossily first, as the SSE parser
//! does).
//!
//! Checked: no panic; at least one event; every accessor of every event works; decoding is
//! deterministic; an `Unknown` event for the whole frame keeps the frame's exact text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nemo_video::events::{decode_frame, AgentEvent};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let events = decode_frame(&text);
    assert!(
        !events.is_empty(),
        "decode_frame gave no event for {text:?}"
    );
    assert_eq!(events, decode_frame(&text), "decoding is not deterministic");
    let _ = format!("{events:?}");
    for event in &events {
        let _ = (
            event.is_error(),
            event.is_heartbeat(),
            event.text(),
            event.visible_text(),
        );
        if let Some(call) = event.as_tool_call() {
            let _ = (
                call.is_question(),
                call.question_text(),
                call.question_options(),
            );
            let _ = call.args_as::<serde_json::Value>();
        }
        if let Some(error) = event.as_error() {
            assert!(!error.to_string().is_empty());
        }
        match event {
            AgentEvent::ToolResult(result) => {
                let _ = result.response_as::<serde_json::Value>();
            }
            AgentEvent::StateDelta(delta) => {
                let keys = delta.keys();
                assert!(!keys.is_empty(), "a state delta event with no keys");
                for key in &keys {
                    assert!(
                        delta.get(key).is_some(),
                        "state delta key {key:?} has no value"
                    );
                }
                let _ = delta.delta_as::<serde_json::Value>();
            }
            AgentEvent::Unknown(unknown) => {
                if events.len() == 1 && !unknown.raw.is_empty() && unknown.raw != text {
                    // A lone Unknown is either the whole frame or one part of it.
                    assert!(
                        text.contains(unknown.raw.as_str()),
                        "Unknown.raw {:?} is not from the frame",
                        unknown.raw
                    );
                }
                assert_eq!(
                    unknown.json.is_some(),
                    serde_json::from_str::<serde_json::Value>(&unknown.raw).is_ok()
                );
            }
            _ => {}
        }
    }
});
