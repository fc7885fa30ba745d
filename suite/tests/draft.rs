//! The draft: byte-exact round trips, the typed view, and the timeline summary.

use nemo_video::draft::{Draft, TrackKind};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn draft(name: &str) -> Draft {
    let text = fixture(name);
    let draft = Draft::from_json(&text).unwrap();
    assert_eq!(
        draft.as_json_str(),
        text,
        "{name} must come back byte for byte"
    );
    draft
}

/// The value without the JSON whitespace around it.
fn trim_ws(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

// ---------------------------------------------------------------------------------------
// Summary goldens
// ---------------------------------------------------------------------------------------

#[test]
fn summary_of_the_spec_example() {
    let draft = draft("spec_three_tracks.json");
    assert_eq!(
        draft.summary(),
        r#"Timeline (3 tracks): 1. Video: city timelapse (0-10s) 2. BGM: Lo-fi (0-10s, 35%) 3. Title: "Urban Dreams" (0-3s)"#
    );
    assert_eq!(draft.tracks().len(), 3);
    assert_eq!(draft.tracks()[1].kind(), Some(TrackKind::Audio));
    assert_eq!(draft.tracks()[1].volume_percent(), Some(35));
    assert_eq!(draft.duration_ms(), Some(10_000.0));
    assert_eq!(draft.duration(), Some(std::time::Duration::from_secs(10)));
    assert!(draft.is_ready_for_export());
}

#[test]
fn summary_of_an_empty_draft() {
    assert_eq!(
        draft("empty_draft.json").summary(),
        "Timeline is empty: no tracks yet."
    );
    for text in [
        "{}",
        "null",
        "[]",
        "\"\"",
        "{\"t\":{}}",
        "{\"t\":[1,\"x\",null]}",
    ] {
        let draft = Draft::from_json(text).unwrap();
        assert_eq!(
            draft.summary(),
            "Timeline is empty: no tracks yet.",
            "{text}"
        );
        assert!(!draft.is_ready_for_export(), "{text}");
    }
}

#[test]
fn summary_with_missing_names() {
    assert_eq!(
        draft("missing_names.json").summary(),
        "Timeline (4 tracks): 1. Video: untitled (0-10s) 2. BGM: empty (0-8s) \
         3. Title: untitled (1-3s) 4. Video: B-roll (0-5s)"
    );
}

#[test]
fn summary_with_unknown_track_types() {
    let draft = draft("unknown_type.json");
    assert_eq!(
        draft.summary(),
        "Timeline (2 tracks): 1. Track (type 9): sticker (0-2s) 2. Track: no type (0-1s)"
    );
    assert_eq!(draft.tracks()[0].kind(), Some(TrackKind::Other(9)));
    assert_eq!(draft.tracks()[0].kind().map(TrackKind::code), Some(9));
    assert_eq!(draft.tracks()[1].kind(), None);
}

#[test]
fn summary_with_fractional_times() {
    assert_eq!(
        draft("fractional_times.json").summary(),
        r#"Timeline (3 tracks): 1. Video: beach walk.mp4 (1.5-3.8s) 2. BGM: Voice (0.3-8s, 80%) 3. Title: "Hello world" (0.9-1.9s)"#
    );
}

#[test]
fn summary_lists_up_to_three_names_then_counts_the_rest() {
    let json = r#"{"t":[{"tt":0,"sg":[{"d":1000,"m":{"name":"a"}},{"d":1000,"m":{"name":"b"}},{"d":1000,"m":{"name":"a"}},{"d":1000,"m":{"name":"c"}},{"d":1000,"m":{"name":"d"}},{"d":1000,"m":{"name":"e"}}]}]}"#;
    assert_eq!(
        Draft::from_json(json).unwrap().summary(),
        "Timeline (1 track): 1. Video: a, b, c +2 more (0-6s)"
    );
}

#[test]
fn summary_cuts_long_names_and_reads_names_outside_m() {
    let long = "x".repeat(60);
    let json = format!(
        r#"{{"t":[{{"tt":0,"sg":[{{"d":1000,"name":"{long}"}}]}},{{"tt":1,"volume":0.5,"m":{{"volume":"loud"}},"sg":[{{"d":1000,"label":"drums"}}]}}]}}"#
    );
    assert_eq!(
        Draft::from_json(&json).unwrap().summary(),
        format!(
            "Timeline (2 tracks): 1. Video: {}… (0-1s) 2. BGM: drums (0-1s, 50%)",
            "x".repeat(39)
        )
    );
}

#[test]
fn volume_rules() {
    let volume = |v: &str| {
        let json = format!(r#"{{"t":[{{"tt":1,"sg":[{{"d":1000,"m":{{"volume":{v}}}}}]}}]}}"#);
        Draft::from_json(&json).unwrap().tracks()[0].volume_percent()
    };
    assert_eq!(volume("0.35"), Some(35));
    assert_eq!(volume("1"), Some(100));
    assert_eq!(volume("0"), Some(0));
    assert_eq!(volume("35"), Some(35));
    assert_eq!(volume("100"), Some(100));
    assert_eq!(volume("150"), None);
    assert_eq!(volume("-0.5"), None);
    assert_eq!(volume("\"35%\""), None);
}

#[test]
fn double_encoded_draft_is_viewed_through_the_string() {
    let inner = r#"{"t":[{"tt":0,"sg":[{"d":2000,"m":{"name":"clip"}}]}]}"#;
    let outer = serde_json::to_string(inner).unwrap();
    let draft = Draft::from_json(&outer).unwrap();
    assert_eq!(draft.as_json_str(), outer);
    assert_eq!(draft.summary(), "Timeline (1 track): 1. Video: clip (0-2s)");
}

// ---------------------------------------------------------------------------------------
// Tolerance and readiness
// ---------------------------------------------------------------------------------------

#[test]
fn wrong_types_everywhere_decode_as_unknown() {
    let json = r#"{"t":[{"tt":"0","d":"10s","sg":"none","m":[1]},{"tt":{"a":1},"d":-1,"sg":[{"d":"1","st":[],"e":{},"m":7,"id":true},2,{"d":1e3,"m":{"name":5,"text":null,"volume":"x"}}]},{"tt":0.0,"sg":[{"st":-5,"d":1000}]},{"tt":1e100}],"d":"long"}"#;
    let draft = Draft::from_json(json).unwrap();
    assert_eq!(draft.as_json_str(), json);
    let tracks = draft.tracks();
    assert_eq!(tracks.len(), 4);
    assert_eq!(tracks[0].kind(), None);
    assert_eq!(tracks[0].duration_ms(), None);
    assert!(tracks[0].segments().is_empty());
    assert_eq!(tracks[1].kind(), None);
    assert_eq!(tracks[1].duration_ms(), None);
    assert_eq!(
        tracks[1].segments().len(),
        2,
        "the number 2 is not a segment"
    );
    let first = &tracks[1].segments()[0];
    assert_eq!(
        (first.duration_ms(), first.start_ms(), first.end_ms()),
        (None, None, None)
    );
    assert_eq!(first.id(), None);
    assert_eq!(first.time_range_ms(), None);
    let second = &tracks[1].segments()[1];
    assert_eq!(second.duration_ms(), Some(1000.0));
    assert_eq!(second.metadata().name(), None);
    assert_eq!(second.metadata().raw_volume(), None);
    // The first segment could not be placed, so the second has no start either.
    assert_eq!(second.time_range_ms(), None);
    assert_eq!(
        tracks[2].kind(),
        Some(TrackKind::Video),
        "0.0 is the integer 0"
    );
    assert_eq!(
        tracks[2].segments()[0].time_range_ms(),
        Some((0.0, 1000.0)),
        "a negative start is unknown, so the first segment starts at 0"
    );
    assert_eq!(tracks[3].kind(), None, "1e100 is not an i64");
    assert_eq!(draft.declared_duration_ms(), None);
    assert_eq!(draft.duration_ms(), Some(1000.0));
    assert!(draft.is_ready_for_export());
    assert_eq!(
        draft.summary(),
        "Timeline (4 tracks): 1. Track: empty (time unknown) 2. Track: untitled (time unknown) \
         3. Video: untitled (0-1s) 4. Track: empty (time unknown)"
    );
}

#[test]
fn start_keys_in_priority_order_and_sequential_placement() {
    let json = r#"{"t":[{"tt":0,"sg":[{"b":100,"s":200,"start":300,"st":"bad","d":1000},{"d":500},{"e":9000,"st":8000},{"end":1,"st":5}]}]}"#;
    let draft = Draft::from_json(json).unwrap();
    let segments = draft.tracks()[0].segments();
    assert_eq!(
        segments[0].start_ms(),
        Some(300.0),
        "start beats s and b; bad st ignored"
    );
    assert_eq!(segments[0].time_range_ms(), Some((300.0, 1300.0)));
    assert_eq!(segments[1].time_range_ms(), Some((1300.0, 1800.0)));
    assert_eq!(segments[2].time_range_ms(), Some((8000.0, 9000.0)));
    assert_eq!(
        segments[3].time_range_ms(),
        None,
        "end before start is unknown"
    );
    assert_eq!(draft.tracks()[0].time_range_ms(), Some((300.0, 9000.0)));
}

#[test]
fn last_duplicate_key_wins_like_json_parse() {
    let draft = Draft::from_json(r#"{"t":[{"tt":0,"tt":1,"sg":[{"d":1,"d":"x"}]}]}"#).unwrap();
    assert_eq!(draft.tracks()[0].kind(), Some(TrackKind::Audio));
    assert_eq!(draft.tracks()[0].segments()[0].duration_ms(), None);
}

#[test]
fn ready_for_export_needs_a_segment_on_some_track() {
    let cases = [
        (r#"{"t":[]}"#, false),
        (r#"{"t":[{"tt":0}]}"#, false),
        (r#"{"t":[{"tt":0,"sg":[]},{"tt":1,"sg":null}]}"#, false),
        (r#"{"t":[{"tt":0,"sg":[1,null,"x"]}]}"#, false),
        (r#"{"t":[{"tt":0,"sg":[]},{"tt":7,"sg":[{}]}]}"#, true),
        (r#"{"t":[{"sg":[{"m":{}}]}]}"#, true),
    ];
    for (json, ready) in cases {
        assert_eq!(
            Draft::from_json(json).unwrap().is_ready_for_export(),
            ready,
            "{json}"
        );
    }
}

#[test]
fn invalid_json_is_an_error_not_a_panic() {
    for text in ["", "{", "{\"t\":[}", "nul", "{} {}", "\"\\x\""] {
        assert!(Draft::from_json(text).is_err(), "{text:?}");
    }
}

#[test]
fn deep_nesting_in_unknown_keys_is_kept() {
    let depth = 5_000;
    let text = format!(
        "{{\"t\":[{{\"tt\":0,\"sg\":[{{\"d\":5,\"deep\":{}1{}}}]}}]}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let draft = Draft::from_json(&text).unwrap();
    assert_eq!(draft.as_json_str(), text);
    assert!(draft.is_ready_for_export());
    assert_eq!(serde_json::to_string(&draft).unwrap(), text);
}

#[test]
fn serde_round_trip_through_a_containing_struct() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct RenderRequest {
        id: String,
        draft: Draft,
    }
    let text = r#"{"id":"render_1","draft":{"t":[{"tt":0,"sg":[{"d":905.4000000000001,"z":1E5}]}],"k":"\u00e9"}}"#;
    let request: RenderRequest = serde_json::from_str(text).unwrap();
    assert_eq!(request.id, "render_1");
    assert_eq!(
        request.draft.as_json_str(),
        r#"{"t":[{"tt":0,"sg":[{"d":905.4000000000001,"z":1E5}]}],"k":"\u00e9"}"#
    );
    assert_eq!(serde_json::to_string(&request).unwrap(), text);
}

// ---------------------------------------------------------------------------------------
// Property: any JSON text survives decode → encode byte for byte
// ---------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "t",
    "tt",
    "sg",
    "d",
    "m",
    "id",
    "st",
    "s",
    "start",
    "b",
    "e",
    "end",
    "name",
    "title",
    "text",
    "label",
    "file_name",
    "filename",
    "volume",
    "x",
    "é",
    "emoji😀",
    "",
];

fn ws() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n", "  "]).prop_map(str::to_owned)
}

fn json_string() -> impl Strategy<Value = String> {
    let plain = any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default());
    let escaped = prop::sample::select(vec![
        r#""caf\u00e9""#,
        r#""\ud83d\ude00""#,
        r#""a\/b\\c\"d""#,
        r#""\b\f\n\r\t""#,
        r#""\u0000""#,
        r#""😀 ünïcödé""#,
        r#""""#,
    ])
    .prop_map(str::to_owned);
    prop_oneof![plain, escaped]
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap_or_else(|_| "0".into())),
        prop::sample::select(vec![
            "905.4000000000001",
            "1e5",
            "1E+2",
            "-0.0",
            "-0",
            "0.1e-3",
            "1.50",
            "123456789012345678901234567890",
            "2.5E-308",
            "0.30000000000000004",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json_number(),
        3 => json_string(),
        1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS.to_vec())
            .prop_map(|k| serde_json::to_string(k).unwrap_or_default()),
        1 => json_string(),
    ]
}

/// Arbitrary JSON text, with random whitespace between tokens.
fn json_text() -> impl Strategy<Value = String> {
    json_leaf().prop_recursive(6, 64, 6, |inner| {
        let array = (
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6),
            ws(),
        )
            .prop_map(|(items, pad)| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{pad}{}]", body.join(","))
            });
        let object = (
            prop::collection::vec((ws(), json_key(), ws(), ws(), inner, ws()), 0..6),
            ws(),
        )
            .prop_map(|(entries, pad)| {
                let body: Vec<String> = entries
                    .into_iter()
                    .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                    .collect();
                format!("{{{pad}{}}}", body.join(","))
            });
        prop_oneof![array, object]
    })
}

/// Draft-shaped text: `t` holds track-like objects whose known keys hold anything.
fn draft_text() -> impl Strategy<Value = String> {
    let segment = prop::collection::vec((json_key(), json_text()), 0..6).prop_map(|entries| {
        let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    });
    let segments = prop_oneof![
        3 => prop::collection::vec(segment, 0..5).prop_map(|s| format!("[{}]", s.join(", "))),
        1 => json_text(),
    ];
    let track = (json_text(), segments, json_text(), json_text(), json_text()).prop_map(
        |(tt, sg, d, m, extra)| format!(r#"{{"tt":{tt},"sg":{sg},"d":{d},"m":{m},"zz":{extra}}}"#),
    );
    let kind = prop::sample::select(vec!["0", "1", "7", "3", "\"0\""]).prop_map(str::to_owned);
    let typed_track = (kind, 0u32..4, json_text()).prop_map(|(tt, n, m)| {
        let segments: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"st":{},"d":1000.5,"m":{m}}}"#, i * 1000))
            .collect();
        format!(r#"{{"tt":{tt},"sg":[{}]}}"#, segments.join(","))
    });
    let any_track = prop_oneof![track, typed_track, json_text()];
    (
        prop::collection::vec(any_track, 0..5),
        json_text(),
        ws(),
        ws(),
    )
        .prop_map(|(tracks, extra, pre, post)| {
            format!(
                r#"{pre}{{ "v" : {extra}, "t":[{}],"d":905.4000000000001 }}{post}"#,
                tracks.join(",")
            )
        })
}

fn arbitrary_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Counts the object entries of `t`, the way the view should (last duplicate key wins).
fn reference_track_count(text: &str) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let value = match value {
        serde_json::Value::String(inner) => serde_json::from_str(&inner).ok()?,
        other => other,
    };
    Some(match value.get("t") {
        Some(serde_json::Value::Array(items)) => items.iter().filter(|t| t.is_object()).count(),
        _ => 0,
    })
}

fn check_round_trip(text: &str) -> Result<(), TestCaseError> {
    let draft = Draft::from_json(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(draft.as_json_str(), text);
    let encoded = serde_json::to_string(&draft).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(encoded.as_str(), trim_ws(text));
    if let Some(count) = reference_track_count(text) {
        prop_assert_eq!(draft.tracks().len(), count);
    }
    // The view answers without panicking on anything.
    let _ = (
        draft.summary(),
        draft.is_ready_for_export(),
        draft.duration(),
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_text_round_trips_byte_for_byte(text in json_text()) {
        check_round_trip(&text)?;
    }

    #[test]
    fn draft_shaped_text_round_trips_byte_for_byte(text in draft_text()) {
        check_round_trip(&text)?;
    }

    #[test]
    fn serde_json_output_of_any_value_round_trips(value in arbitrary_value()) {
        let compact = serde_json::to_string(&value).unwrap();
        check_round_trip(&compact)?;
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        check_round_trip(&pretty)?;
        let wrapped = format!("{{\"t\":[{{\"tt\":0,\"sg\":[{compact}],\"m\":{pretty}}}],\"extra\":{compact}}}");
        check_round_trip(&wrapped)?;
    }
}

#[test]
fn hand_written_non_canonical_cases_round_trip() {
    let cases = [
        r#"{"t":[{"tt":0,"d":1e5,"sg":[{"d":-0.0,"st":1E+2,"m":{"name":"caf\u00e9"}}]}]}"#,
        "{ \"t\" :\n[ { \"tt\" : 1 , \"sg\" : [ ] } ]\t}",
        r#"{"t":[],"t":[{"tt":7}],"d":905.4000000000001,"d":1.50}"#,
        r#"{"\u0074":[{"tt":0,"sg":[{}]}]}"#,
        r#"{"t":[{"tt":0,"sg":[{"m":{"text":"\ud83d\ude00 \/ \\ \""}}]}]}"#,
        "  {\"t\":[]}  \n",
        "123456789012345678901234567890",
        r#"[{"t":[]}]"#,
    ];
    for text in cases {
        let draft = Draft::from_json(text).unwrap();
        assert_eq!(draft.as_json_str(), text);
        assert_eq!(serde_json::to_string(&draft).unwrap(), trim_ws(text));
    }
    // An escaped key still names the field.
    let escaped = Draft::from_json(r#"{"\u0074":[{"tt":0,"sg":[{}]}]}"#).unwrap();
    assert!(escaped.is_ready_for_export());
}
