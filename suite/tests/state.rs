//! Session state: lossless decoding, tolerance, summaries and diffs.

use nemo_video::draft::{Draft, TrackKind};
use nemo_video::state::{Change, MediaKind, SessionState, StateDiff};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn state(name: &str) -> SessionState {
    SessionState::from_json(fixture(name).trim_end()).unwrap()
}

/// A state document around a draft (and optional generated media).
fn with_draft(draft: &str, generated: &str) -> SessionState {
    SessionState::from_json(&format!(
        r#"{{"state":{{"draft":{draft},"generated_media":{generated}}}}}"#
    ))
    .unwrap()
}

fn diff_text(before: &str, after: &str) -> String {
    with_draft(before, "[]")
        .diff(&with_draft(after, "[]"))
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

#[test]
fn decodes_known_fields_and_keeps_everything_else() {
    let text = fixture("state_before.json");
    let state = SessionState::from_json(&text).unwrap();
    assert_eq!(state.session_id(), Some("7301234567890123456"));
    assert_eq!(state.task_id(), Some("task_1"));
    assert_eq!(state.task_name(), Some("project"));
    assert!(state.is_ready_for_export());
    assert_eq!(
        state.summary(),
        "Timeline (2 tracks): 1. Video: city timelapse (0-10s) 2. BGM: Lo-fi (0-10s, 35%)"
    );
    let info = &state.video_infos()[0];
    assert_eq!(info.file_name(), Some("city.mp4"));
    assert_eq!(info.file_type(), Some("video"));
    assert_eq!(info.url(), Some("https://cdn.example/u/city.mp4"));
    assert_eq!(info.duration_secs(), Some(10.0));
    assert_eq!((info.width(), info.height()), (Some(1080.0), Some(1920.0)));
    assert_eq!(info.fps(), Some(29.97));
    assert_eq!(info.hash(), Some("ab12"));
    assert!(info.as_raw().get().contains(r#""codec":"h264""#));
    assert!(state.generated_media().is_empty());
    assert_eq!(
        state.canvas_config().map(|r| r.get()),
        Some(r#"{"ratio":"9:16"}"#)
    );
    assert!(state.video_analyses().is_none(), "null reads as absent");
    let state_extra: Vec<_> = state.state_extra().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(state_extra, [("agent_memory", r#"{"turns":3}"#)]);
    let extra: Vec<_> = state.extra().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(extra, [("updated_at", r#""2024-05-01T10:00:00Z""#)]);
    // Compact input without duplicate keys comes back byte for byte.
    assert_eq!(serde_json::to_string(&state).unwrap(), text.trim_end());
}

#[test]
fn the_draft_bytes_survive_a_state_round_trip() {
    let draft = fixture("spec_three_tracks.json");
    let draft = draft.trim_end();
    let document = format!(
        "{{\"session_id\":\"1\",\"state\":{{\n  \"draft\": {draft} ,\"video_infos\":[]}}}}"
    );
    let state = SessionState::from_json(&document).unwrap();
    let decoded = state.draft().unwrap();
    assert_eq!(decoded.as_json_str(), draft);
    let encoded = serde_json::to_string(&state).unwrap();
    assert_eq!(
        encoded,
        format!("{{\"session_id\":\"1\",\"state\":{{\"draft\":{draft},\"video_infos\":[]}}}}")
    );
}

#[test]
fn wrong_types_in_every_field_do_not_fail() {
    let text = fixture("wrong_types.json");
    let state = SessionState::from_json(text.trim_end()).unwrap();
    assert_eq!(state.session_id(), None);
    assert_eq!(
        state.task_id(),
        Some("123456789012345678901234567890"),
        "a numeric id keeps every digit"
    );
    assert_eq!(state.task_name(), None);
    let extra: Vec<_> = state.extra().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(
        extra,
        [
            ("session_id", r#"{"x":1}"#),
            ("task_name", r#"["a"]"#),
            ("extra", "null")
        ]
    );
    let draft = state.draft().unwrap();
    assert_eq!(draft.tracks().len(), 2);
    assert_eq!(draft.tracks()[0].kind(), None);
    assert_eq!(draft.tracks()[1].kind(), None);
    assert!(
        state.is_ready_for_export(),
        "the second track has one object segment"
    );
    assert_eq!(
        state.summary(),
        "Timeline (2 tracks): 1. Track: empty (time unknown) 2. Track: untitled (time unknown)"
    );
    let infos = state.video_infos_list().unwrap();
    assert!(!infos.is_array());
    assert!(infos.items().is_empty());
    assert_eq!(infos.as_raw().get(), r#"{"a":{"filename":"x.mp4"}}"#);
    let generated = state.generated_media();
    assert_eq!(generated.len(), 3);
    assert_eq!(
        generated[0].url(),
        Some("https://cdn.example/g/y.mp4?sig=1")
    );
    assert_eq!(generated[0].display_name(), Some("y.mp4"));
    assert_eq!(generated[1].url(), None);
    assert_eq!(generated[2].name(), None);
    assert_eq!(generated[2].duration_secs(), None);
    assert_eq!(generated[2].width(), None);
    assert_eq!(state.canvas_config().map(|r| r.get()), Some(r#""wide""#));
    assert_eq!(state.video_analyses().map(|r| r.get()), Some("[1,2]"));
    assert_eq!(serde_json::to_string(&state).unwrap(), text.trim_end());
}

#[test]
fn odd_shapes_of_data_and_state() {
    for text in [
        "null",
        "[]",
        "5",
        "\"x\"",
        "{}",
        r#"{"state":null}"#,
        r#"{"state":{}}"#,
    ] {
        let state = SessionState::from_json(text).unwrap();
        assert!(state.draft().is_none(), "{text}");
        assert!(!state.is_ready_for_export(), "{text}");
        assert_eq!(state.summary(), "Timeline is empty: no tracks yet.");
    }
    let state = SessionState::from_json(r#"{"state":"oops","a":1}"#).unwrap();
    let extra: Vec<_> = state.extra().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(extra, [("state", r#""oops""#), ("a", "1")]);
    assert_eq!(
        serde_json::to_string(&state).unwrap(),
        r#"{"state":"oops","a":1}"#
    );
    assert!(SessionState::from_json(r#"{"state":{"draft":}}"#).is_err());
}

#[test]
fn duplicate_known_keys_keep_the_last_value_at_the_first_place() {
    let state = SessionState::from_json(
        r#"{"task_id":"a","x":1,"task_id":"b","state":{"draft":{"t":[]},"draft":{"t":[{"tt":0,"sg":[{}]}]}}}"#,
    )
    .unwrap();
    assert_eq!(state.task_id(), Some("b"));
    assert!(state.is_ready_for_export());
    assert_eq!(
        serde_json::to_string(&state).unwrap(),
        r#"{"task_id":"b","x":1,"state":{"draft":{"t":[{"tt":0,"sg":[{}]}]}}}"#
    );
}

// ---------------------------------------------------------------------------------------
// Diffs
// ---------------------------------------------------------------------------------------

#[test]
fn diff_of_the_fixture_pair() {
    let diff = state("state_before.json").diff(&state("state_after.json"));
    assert_eq!(
        diff.to_string(),
        r#"Added a video track "solid fill" (0-10s); duration 10s → 12s; 1 new generated media."#
    );
    match diff.changes() {
        [Change::TrackAdded { index, track }, Change::DurationChanged {
            before_ms,
            after_ms,
        }, Change::MediaAdded { list, count }] => {
            assert_eq!(*index, 2);
            assert_eq!(track.kind(), Some(TrackKind::Video));
            assert_eq!((*before_ms, *after_ms), (Some(10_000.0), Some(12_000.0)));
            assert_eq!((*list, *count), (MediaKind::Generated, 1));
        }
        other => panic!("unexpected changes: {other:?}"),
    }
}

#[test]
fn diff_with_no_change() {
    let before = state("state_before.json");
    let diff = before.diff(&before.clone());
    assert!(diff.is_empty());
    assert_eq!(diff.to_string(), "No changes to the timeline.");
}

const BASE: &str = r#"{"t":[{"tt":0,"sg":[{"st":0,"d":10000,"m":{"name":"city timelapse"}}]},{"tt":1,"sg":[{"st":0,"d":10000,"m":{"name":"Lo-fi","volume":0.35}}]}]}"#;

#[test]
fn diff_track_added_in_front() {
    let after = r#"{"t":[{"tt":7,"sg":[{"st":0,"d":3000,"m":{"text":"Urban Dreams"}}]},{"tt":0,"sg":[{"st":0,"d":10000,"m":{"name":"city timelapse"}}]},{"tt":1,"sg":[{"st":0,"d":10000,"m":{"name":"Lo-fi","volume":0.35}}]}]}"#;
    assert_eq!(
        diff_text(BASE, after),
        r#"Added a text track "Urban Dreams" (0-3s)."#
    );
}

#[test]
fn diff_track_removed() {
    let after = r#"{"t":[{"tt":0,"sg":[{"st":0,"d":10000,"m":{"name":"city timelapse"}}]}]}"#;
    assert_eq!(
        diff_text(BASE, after),
        r#"Removed the audio track "Lo-fi" (0-10s)."#
    );
}

#[test]
fn diff_segment_added_and_duration() {
    let after = r#"{"t":[{"tt":0,"sg":[{"st":0,"d":10000,"m":{"name":"city timelapse"}},{"st":10000,"d":2000,"m":{"name":"beach"}}]},{"tt":1,"sg":[{"st":0,"d":10000,"m":{"name":"Lo-fi","volume":0.35}}]}]}"#;
    assert_eq!(
        diff_text(BASE, after),
        r#"Added clip "beach" (10-12s) to video track 1; duration 10s → 12s."#
    );
}

#[test]
fn diff_segment_removed() {
    let before = r#"{"t":[{"tt":0,"sg":[{"st":0,"d":4000,"m":{"name":"intro"}},{"st":4000,"d":6000,"m":{"name":"city timelapse"}}]}]}"#;
    let after = r#"{"t":[{"tt":0,"sg":[{"st":4000,"d":6000,"m":{"name":"city timelapse"}}]}]}"#;
    assert_eq!(
        diff_text(before, after),
        r#"Removed clip "intro" (0-4s) from video track 1."#
    );
}

#[test]
fn diff_segment_changed() {
    let louder = BASE.replace("0.35", "0.5");
    assert_eq!(
        diff_text(BASE, &louder),
        r#"Changed clip "Lo-fi" on audio track 2: volume 35% → 50%."#
    );
    let trimmed = BASE.replacen("\"d\":10000", "\"d\":8000", 1);
    assert_eq!(
        diff_text(BASE, &trimmed),
        r#"Changed clip "city timelapse" on video track 1: 0-10s → 0-8s."#
    );
    let before = r#"{"t":[{"tt":7,"sg":[{"st":0,"d":3000,"m":{"text":"Urban Dreams"}}]}]}"#;
    let after = r#"{"t":[{"tt":7,"sg":[{"st":0,"d":3000,"m":{"text":"City Dreams"}}]}]}"#;
    assert_eq!(
        diff_text(before, after),
        r#"Changed text "Urban Dreams" on text track 1: text "Urban Dreams" → "City Dreams"."#
    );
}

#[test]
fn diff_track_level_change_and_details() {
    let before = r#"{"t":[{"tt":1,"m":{"volume":0.35},"sg":[{"st":0,"d":10000}]}]}"#;
    let after = r#"{"t":[{"tt":1,"m":{"volume":0.8},"sg":[{"st":0,"d":10000}]}]}"#;
    assert_eq!(
        diff_text(before, after),
        "Changed audio track 1: volume 35% → 80%."
    );
    let effect = BASE.replace(
        r#""name":"city timelapse""#,
        r#""name":"city timelapse","fx":"blur""#,
    );
    let diff = with_draft(BASE, "[]").diff(&with_draft(&effect, "[]"));
    assert_eq!(diff.changes(), [Change::DraftDetailsChanged]);
    assert_eq!(
        diff.to_string(),
        "The draft changed in details the timeline summary does not show."
    );
}

#[test]
fn diff_new_and_removed_media() {
    let before = with_draft(BASE, "[]");
    let after = with_draft(BASE, r#"[{"url":"a"},{"url":"b"}]"#);
    assert_eq!(before.diff(&after).to_string(), "2 new generated media.");
    assert_eq!(
        after.diff(&before).to_string(),
        "2 generated media removed."
    );
    let uploaded =
        SessionState::from_json(r#"{"state":{"draft":null,"video_infos":[{}]}}"#).unwrap();
    assert_eq!(
        SessionState::default().diff(&uploaded).to_string(),
        "1 new uploaded media."
    );
}

#[test]
fn diff_from_no_draft_to_a_draft_and_back() {
    let empty = SessionState::from_json(r#"{"state":{"draft":null}}"#).unwrap();
    let full = with_draft(BASE, "[]");
    assert_eq!(
        empty.diff(&full).to_string(),
        r#"Added a video track "city timelapse" (0-10s); added an audio track "Lo-fi" (0-10s); duration now 10s."#
    );
    assert_eq!(
        full.diff(&empty).to_string(),
        r#"Removed the video track "city timelapse" (0-10s); removed the audio track "Lo-fi" (0-10s); duration no longer known."#
    );
}

#[test]
fn diff_between_drafts_directly() {
    let before = Draft::from_json(BASE).unwrap();
    let after = Draft::from_json(&BASE.replace("Lo-fi", "Jazz")).unwrap();
    let diff = StateDiff::between_drafts(Some(&before), Some(&after));
    assert_eq!(
        diff.to_string(),
        r#"Changed clip "Lo-fi" on audio track 2: renamed "Lo-fi" → "Jazz"."#
    );
}

#[test]
fn diff_of_long_tracks_stays_local() {
    let segments = |names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!(r#"{{"st":{},"d":1000,"m":{{"name":"{n}"}}}}"#, i * 1000))
            .collect::<Vec<_>>()
            .join(",")
    };
    let names: Vec<String> = (0..3000).map(|i| format!("c{i}")).collect();
    let mut edited = names.clone();
    edited[1500] = "replaced".to_owned();
    let before = format!(r#"{{"t":[{{"tt":0,"sg":[{}]}}]}}"#, segments(&names));
    let after = format!(r#"{{"t":[{{"tt":0,"sg":[{}]}}]}}"#, segments(&edited));
    assert_eq!(
        diff_text(&before, &after),
        r#"Changed clip "c1500" on video track 1: renamed "c1500" → "replaced"."#
    );
}

/// A one-track draft with a segment per name, each placed explicitly one second apart.
fn named_segments_draft(names: &[String]) -> String {
    let segments: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!(r#"{{"st":{},"d":1000,"m":{{"name":"{n}"}}}}"#, i * 1000))
        .collect();
    format!(r#"{{"t":[{{"tt":0,"sg":[{}]}}]}}"#, segments.join(","))
}

#[test]
fn diff_of_a_long_track_edited_at_both_ends_stays_local() {
    // Edits near both ends leave 5,000 × 5,000 segments between them: past the old limit of
    // the hand-written alignment, which then paired the segments in order, so everything
    // after the insertion read as renamed.
    let names: Vec<String> = (0..5_000).map(|i| format!("c{i}")).collect();
    let mut edited = names.clone();
    edited.insert(2, "inserted".to_owned());
    edited[4_990] = "replaced".to_owned();
    let before = named_segments_draft(&names);
    // The inserted clip sits in a gap of its own; the rest keep their places.
    let after = named_segments_draft(&edited).replacen(
        r#"{"st":2000,"d":1000,"m":{"name":"inserted"}}"#,
        r#"{"st":1500,"d":0,"m":{"name":"inserted"}}"#,
        1,
    );
    let after = shift_back(&after, 3, edited.len());
    let diff = with_draft(&before, "[]").diff(&with_draft(&after, "[]"));
    assert_eq!(
        diff.to_string(),
        r#"Added clip "inserted" (1.5-1.5s) to video track 1; changed clip "c4989" on video track 1: renamed "c4989" → "replaced"."#
    );
}

/// Puts the segments from index `from` back one second, undoing the shift an insertion at
/// `from - 1` made in [`named_segments_draft`].
fn shift_back(draft: &str, from: usize, len: usize) -> String {
    let mut out = draft.to_owned();
    for i in from..len {
        out = out.replacen(
            &format!(r#"{{"st":{},"#, i * 1000),
            &format!(r#"{{"st":{},"#, (i - 1) * 1000),
            1,
        );
    }
    out
}

#[test]
fn the_text_of_a_huge_diff_is_bounded_and_changes_keeps_every_change() {
    let names: Vec<String> = (0..2_000).map(|i| format!("c{i}")).collect();
    let renamed: Vec<String> = names.iter().map(|n| format!("{n} (new)")).collect();
    let mut longer = renamed.clone();
    longer.push("extra".to_owned());
    let before = with_draft(&named_segments_draft(&names), "[]");
    let after = with_draft(&named_segments_draft(&longer), r#"[{"url":"a"}]"#);
    let diff = before.diff(&after);
    // 2,000 renames and an added clip, then the duration and the media.
    assert_eq!(diff.changes().len(), 2_003);
    let text = diff.to_string();
    assert!(
        text.starts_with(r#"Changed clip "c0" on video track 1: renamed "c0" → "c0 (new)"; "#),
        "{text}"
    );
    assert!(
        text.ends_with(
            "; and 1981 more changes to tracks and clips; duration 2000s → 2001s; 1 new generated media."
        ),
        "{text}"
    );
    assert_eq!(text.matches("changed clip").count(), 19, "{text}");
    // The alternate form lists them all.
    let full = format!("{diff:#}");
    assert_eq!(full.matches("; ").count(), 2_002);
    assert!(full.contains(r#"added clip "extra" (2000-2001s) to video track 1"#));
    // A small diff reads the same either way.
    let small = with_draft(BASE, "[]").diff(&with_draft(&BASE.replace("0.35", "0.5"), "[]"));
    assert_eq!(small.to_string(), format!("{small:#}"));
}

// ---------------------------------------------------------------------------------------
// Property: the draft's bytes survive inside any state document
// ---------------------------------------------------------------------------------------

fn json_value_text() -> impl Strategy<Value = String> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}|t|tt|sg|d|m", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let literal = prop::sample::select(vec![
        "905.4000000000001",
        "1e5",
        "-0.0",
        r#""caf\u00e9""#,
        r#"{"t":[{"tt":0,"sg":[{"d":1E3,"m":{"name":"\u00e9"}}]}]}"#,
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        4 => value.prop_map(|v| serde_json::to_string(&v).unwrap_or_default()),
        1 => literal,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn state_keeps_the_draft_bytes(
        draft in json_value_text(),
        extra in json_value_text(),
        media in json_value_text(),
    ) {
        let document = format!(
            r#"{{"session_id":"1","zz":{extra},"state":{{"video_infos":{media},"draft":{draft},"yy":{extra}}}}}"#
        );
        let state = SessionState::from_json(&document).unwrap();
        let expected = Draft::from_json(&draft).unwrap();
        let encoded = serde_json::to_string(&state).unwrap();
        prop_assert_eq!(&encoded, &document);
        match state.draft() {
            Some(decoded) => {
                prop_assert_eq!(decoded.as_json_str(), draft.as_str());
                prop_assert_eq!(decoded.summary(), expected.summary());
            }
            None => prop_assert_eq!(draft.as_str(), "null"),
        }
        prop_assert!(state.diff(&state.clone()).is_empty());
    }
}
