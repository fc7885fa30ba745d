//! `SessionState` decoding, summary, diff and re-encoding.
//!
//! Input: one document, or two separated by a NUL byte (which JSON text cannot contain)
//! to exercise the diff between different states.
//!
//! Checked: no panic; a state diffed with itself has no changes; re-encoding is stable
//! (encode → decode → encode gives the same bytes) and the re-decoded state has no changes
//! from the original.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nemo_video::state::SessionState;

fn check(text: &str) -> Option<SessionState> {
    let state = SessionState::from_json(text).ok()?;
    let summary = state.summary();
    assert!(summary.starts_with("Timeline"));
    let same = state.diff(&state);
    assert!(same.is_empty(), "a state differs from itself: {same}");
    let _ = (
        state.is_ready_for_export(),
        state.session_id(),
        state.task_id(),
    );
    let _ = (state.video_infos(), state.generated_media(), state.draft());
    for media in state.video_infos().iter().chain(state.generated_media()) {
        let _ = (media.display_name(), media.duration_secs(), media.url());
    }
    let _ = format!("{state:?}");

    let encoded = serde_json::to_string(&state).expect("a state serializes");
    let decoded = SessionState::from_json(&encoded)
        .unwrap_or_else(|err| panic!("re-encoded state {encoded:?} does not decode: {err}"));
    let again = serde_json::to_string(&decoded).expect("a state serializes");
    assert_eq!(again, encoded, "re-encoding is not stable");
    let diff = state.diff(&decoded);
    assert!(diff.is_empty(), "re-encoding changed the state: {diff}");
    Some(state)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = match text.split_once('\0') {
        Some((first, second)) => (first, Some(second)),
        None => (text, None),
    };
    let first = check(first);
    let second = second.and_then(check);
    if let (Some(first), Some(second)) = (&first, &second) {
        let _ = first.diff(second).to_string();
        let _ = second.diff(first).to_string();
    }
});
