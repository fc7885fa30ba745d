//! `Draft` decode → encode is byte-exact, and its views never panic.
//!
//! Input: one document, or two separated by a NUL byte (which JSON text cannot contain)
//! to exercise the diff between different drafts.
//!
//! Checked: `Draft::from_json` accepts exactly what serde_json's `RawValue` accepts;
//! `as_json_str` is the input byte for byte; serializing the draft (built by `from_json` or
//! through `Deserialize`) gives the same bytes as serializing the `RawValue`; `summary`,
//! `duration`, the track views and `StateDiff::between_drafts` never panic; a draft diffed
//! with itself has no changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nemo_video::draft::Draft;
use nemo_video::state::StateDiff;
use serde_json::value::RawValue;

fn check(text: &str) -> Option<Draft> {
    let raw = serde_json::from_str::<&RawValue>(text);
    let draft = Draft::from_json(text);
    assert_eq!(
        raw.is_ok(),
        draft.is_ok(),
        "Draft::from_json and RawValue disagree on {text:?}"
    );
    let (raw, draft) = (raw.ok()?, draft.ok()?);
    assert_eq!(draft.as_json_str(), text);
    let expected = serde_json::to_string(raw).expect("a RawValue serializes");
    assert_eq!(
        serde_json::to_string(&draft).expect("a draft serializes"),
        expected
    );
    let via_serde: Draft =
        serde_json::from_str(text).expect("Deserialize accepts what from_json does");
    assert_eq!(
        serde_json::to_string(&via_serde).expect("a draft serializes"),
        expected
    );
    assert_eq!(via_serde.tracks(), draft.tracks());

    let summary = draft.summary();
    assert!(summary.starts_with("Timeline"));
    let _ = (
        draft.duration(),
        draft.duration_ms(),
        draft.is_ready_for_export(),
    );
    let _ = format!("{draft:?}");
    for track in draft.tracks() {
        let _ = (track.summary(), track.duration(), track.volume_percent());
    }
    let same = StateDiff::between_drafts(Some(&draft), Some(&draft));
    assert!(same.is_empty(), "a draft differs from itself: {same}");
    let _ = StateDiff::between_drafts(None, Some(&draft)).to_string();
    let _ = StateDiff::between_drafts(Some(&draft), None).to_string();
    Some(draft)
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
        let _ = StateDiff::between_drafts(Some(first), Some(second)).to_string();
        let _ = StateDiff::between_drafts(Some(second), Some(first)).to_string();
    }
});
