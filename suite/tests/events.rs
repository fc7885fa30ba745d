//! Decoding `/run_sse` frames into `AgentEvent`s.

use std::time::Duration;

use nemo_video::events::{decode_frame, AgentEvent, RawJson, StreamError, TextChunk};
use proptest::prelude::*;
use serde::Deserialize;

fn events(data: &str) -> Vec<AgentEvent> {
    decode_frame(data).into_vec()
}

fn only(data: &str) -> AgentEvent {
    let mut decoded = events(data);
    assert_eq!(
        decoded.len(),
        1,
        "expected one event from {data:?}, got {decoded:?}"
    );
    decoded.remove(0)
}

fn text_chunk(event: &AgentEvent) -> &TextChunk {
    match event {
        AgentEvent::Text(chunk) => chunk,
        other => panic!("expected Text, got {other:?}"),
    }
}

fn stream_error(event: &AgentEvent) -> &StreamError {
    event
        .as_error()
        .unwrap_or_else(|| panic!("expected Error, got {event:?}"))
}

// ----- ADK events ------------------------------------------------------------------------------

const ADK_TEXT: &str = r#"{
  "content": {"parts": [{"text": "I removed the background person."}], "role": "model"},
  "partial": false,
  "usageMetadata": {"candidatesTokenCount": 12, "promptTokenCount": 9000},
  "invocationId": "e-1b2c",
  "author": "nemo_agent",
  "actions": {"stateDelta": {}, "artifactDelta": {}, "requestedAuthConfigs": {}},
  "id": "9f8e7d6c",
  "timestamp": 1760000000.123456
}"#;

#[test]
fn adk_text_event_keeps_text_and_metadata() {
    let event = only(ADK_TEXT);
    let chunk = text_chunk(&event);
    assert_eq!(chunk.text, "I removed the background person.");
    assert_eq!(chunk.author.as_deref(), Some("nemo_agent"));
    assert_eq!(chunk.event_id.as_deref(), Some("9f8e7d6c"));
    assert_eq!(chunk.invocation_id.as_deref(), Some("e-1b2c"));
    assert!(!chunk.partial);
    assert!(!chunk.thought);
    assert_eq!(event.text(), Some("I removed the background person."));
    assert_eq!(
        event.visible_text(),
        Some("I removed the background person.")
    );
    assert!(!event.is_error());
}

#[test]
fn partial_chunks_then_final_text_are_flagged() {
    let partial = only(
        r#"{"content":{"parts":[{"text":"Removing "}]},"partial":true,"author":"nemo_agent"}"#,
    );
    let final_text = only(
        r#"{"content":{"parts":[{"text":"Removing the person."}]},"partial":false,"author":"nemo_agent"}"#,
    );
    let missing_flag = only(r#"{"content":{"parts":[{"text":"Removing the person."}]}}"#);
    assert!(text_chunk(&partial).partial);
    assert_eq!(text_chunk(&partial).text, "Removing ");
    assert!(!text_chunk(&final_text).partial);
    assert_eq!(text_chunk(&final_text).text, "Removing the person.");
    assert!(!text_chunk(&missing_flag).partial);
}

#[test]
fn thought_parts_are_text_marked_as_thought() {
    let event =
        only(r#"{"content":{"parts":[{"text":"The user wants a solid color.","thought":true}]}}"#);
    assert!(text_chunk(&event).thought);
    assert_eq!(event.text(), Some("The user wants a solid color."));
    assert_eq!(event.visible_text(), None);
}

#[test]
fn function_call_keeps_id_name_and_exact_args() {
    let event = only(
        r##"{"author":"nemo_agent","content":{"role":"model","parts":[{"functionCall":{"id":"adk-42","name":"add_text","args":{"text":"Urban Dreams","style":{"size":48,"colors":["#fff","#000"]},"start_ms":0}}}]}}"##,
    );
    let call = event.as_tool_call().expect("a tool call");
    assert_eq!(call.id.as_deref(), Some("adk-42"));
    assert_eq!(call.name, "add_text");
    assert_eq!(call.author.as_deref(), Some("nemo_agent"));
    assert_eq!(
        call.args.as_str(),
        r##"{"text":"Urban Dreams","style":{"size":48,"colors":["#fff","#000"]},"start_ms":0}"##
    );

    #[derive(Deserialize, Debug, PartialEq)]
    struct Style {
        size: u32,
        colors: Vec<String>,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct AddText {
        text: String,
        style: Style,
        start_ms: u64,
    }
    let args: AddText = call.args_as().expect("typed args");
    assert_eq!(
        args,
        AddText {
            text: "Urban Dreams".into(),
            style: Style {
                size: 48,
                colors: vec!["#fff".into(), "#000".into()]
            },
            start_ms: 0
        }
    );
    assert!(
        call.args_as::<Vec<u8>>().is_err(),
        "wrong type must be an error"
    );
    assert!(!call.is_question());
}

#[test]
fn function_call_without_args_has_null_args() {
    let event = only(r#"{"content":{"parts":[{"functionCall":{"name":"get_state"}}]}}"#);
    let call = event.as_tool_call().expect("a tool call");
    assert!(call.args.is_null());
    assert_eq!(call.id, None);
}

#[test]
fn function_response_keeps_nested_result() {
    let event = only(
        r#"{"content":{"role":"user","parts":[{"functionResponse":{"id":"adk-42","name":"add_text","response":{"result":{"status":"ok","tracks":[{"tt":7,"sg":[{"d":3000}]}]}}}}]}}"#,
    );
    let AgentEvent::ToolResult(result) = &event else {
        panic!("expected ToolResult, got {event:?}")
    };
    assert_eq!(result.id.as_deref(), Some("adk-42"));
    assert_eq!(result.name, "add_text");
    assert_eq!(
        result.response.as_str(),
        r#"{"result":{"status":"ok","tracks":[{"tt":7,"sg":[{"d":3000}]}]}}"#
    );
    let value: serde_json::Value = result.response_as().expect("valid JSON");
    assert_eq!(value["result"]["tracks"][0]["sg"][0]["d"], 3000);
}

#[test]
fn multi_part_event_gives_parts_in_order_then_state_delta() {
    let decoded = events(
        r#"{"author":"nemo_agent","invocationId":"e-1","id":"ev-1",
            "actions":{"stateDelta":{"draft_version":4},"artifactDelta":{}},
            "content":{"parts":[
              {"text":"thinking","thought":true},
              {"text":"Adding a title."},
              {"functionCall":{"id":"c1","name":"add_text","args":{"text":"Hi"}}},
              {"functionResponse":{"id":"c1","name":"add_text","response":{"ok":true}}},
              {"inlineData":{"mimeType":"image/png","data":"iVBOR"}}
            ]}}"#,
    );
    let kinds: Vec<&str> = decoded
        .iter()
        .map(|event| match event {
            AgentEvent::Text(chunk) if chunk.thought => "thought",
            AgentEvent::Text(_) => "text",
            AgentEvent::ToolCall(_) => "call",
            AgentEvent::ToolResult(_) => "result",
            AgentEvent::StateDelta(_) => "delta",
            AgentEvent::Unknown(_) => "unknown",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["thought", "text", "call", "result", "unknown", "delta"]
    );
    // Every text part carries the event's metadata.
    assert_eq!(text_chunk(&decoded[1]).event_id.as_deref(), Some("ev-1"));
    assert_eq!(
        text_chunk(&decoded[0]).invocation_id.as_deref(),
        Some("e-1")
    );
    // The unknown part keeps its own JSON.
    let AgentEvent::Unknown(part) = &decoded[4] else {
        unreachable!()
    };
    assert_eq!(
        part.raw,
        r#"{"inlineData":{"mimeType":"image/png","data":"iVBOR"}}"#
    );
    assert_eq!(
        part.json
            .as_ref()
            .map(|json| json["inlineData"]["data"].clone()),
        Some("iVBOR".into())
    );
}

#[test]
fn state_delta_is_kept_and_readable() {
    let event = only(
        r#"{"author":"nemo_agent","actions":{"stateDelta":{"draft":{"t":[{"tt":0,"sg":[]}],"zz":1},"credits":90}}}"#,
    );
    let AgentEvent::StateDelta(delta) = &event else {
        panic!("expected StateDelta, got {event:?}")
    };
    assert_eq!(
        delta.delta.as_str(),
        r#"{"draft":{"t":[{"tt":0,"sg":[]}],"zz":1},"credits":90}"#
    );
    assert_eq!(delta.keys(), ["draft", "credits"]);
    assert_eq!(
        delta.get("draft").map(|draft| draft.to_string()).as_deref(),
        Some(r#"{"t":[{"tt":0,"sg":[]}],"zz":1}"#)
    );
    assert_eq!(delta.get("missing"), None);
    assert_eq!(delta.author.as_deref(), Some("nemo_agent"));
}

#[test]
fn empty_or_non_object_state_delta_is_not_an_event() {
    for frame in [
        r#"{"content":{"parts":[{"text":"ok"}]},"actions":{"stateDelta":{ }}}"#,
        r#"{"content":{"parts":[{"text":"ok"}]},"actions":{"stateDelta":null}}"#,
        r#"{"content":{"parts":[{"text":"ok"}]},"actions":{"stateDelta":[1,2]}}"#,
        r#"{"content":{"parts":[{"text":"ok"}]},"actions":"none"}"#,
    ] {
        assert_eq!(events(frame).len(), 1, "{frame}");
        assert_eq!(events(frame)[0].text(), Some("ok"), "{frame}");
    }
}

#[test]
fn turn_complete_alone_and_with_content() {
    assert_eq!(
        only(r#"{"turnComplete":true,"author":"nemo_agent","actions":{"stateDelta":{}}}"#),
        AgentEvent::TurnComplete
    );
    // With anything else in the frame, the content wins and no TurnComplete is added.
    let decoded = events(r#"{"turnComplete":true,"content":{"parts":[{"text":"Done."}]}}"#);
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].text(), Some("Done."));
}

#[test]
fn adk_error_event() {
    let event = only(
        r#"{"errorCode":"MALFORMED_FUNCTION_CALL","errorMessage":"Tool call could not be parsed","author":"nemo_agent","invocationId":"e-9"}"#,
    );
    assert!(event.is_error());
    let error = stream_error(&event);
    assert_eq!(error.code.as_deref(), Some("MALFORMED_FUNCTION_CALL"));
    assert_eq!(error.message, "Tool call could not be parsed");
    assert_eq!(error.details, None);
    assert_eq!(
        error.to_string(),
        "the agent stopped with an error (MALFORMED_FUNCTION_CALL): Tool call could not be parsed"
    );
}

#[test]
fn adk_error_code_without_message_gets_a_readable_message() {
    let error = only(r#"{"errorCode":429}"#);
    let error = stream_error(&error);
    assert_eq!(error.code.as_deref(), Some("429"));
    assert_eq!(
        error.message,
        "the agent reported error code 429 without a message"
    );
}

#[test]
fn error_frame_with_details() {
    let event =
        only(r#"{"error":"Session not found","error_details":{"code":1002,"session_id":"123"}}"#);
    let error = stream_error(&event);
    assert_eq!(error.message, "Session not found");
    assert_eq!(error.code, None);
    assert_eq!(
        error.details.as_ref().map(RawJson::as_str),
        Some(r#"{"code":1002,"session_id":"123"}"#)
    );
}

#[test]
fn error_object_gives_message_code_and_details() {
    let event =
        only(r#"{"error":{"code":503,"message":"model overloaded","status":"UNAVAILABLE"}}"#);
    let error = stream_error(&event);
    assert_eq!(error.message, "model overloaded");
    assert_eq!(error.code.as_deref(), Some("503"));
    assert_eq!(
        error.details.as_ref().map(RawJson::as_str),
        Some(r#"{"code":503,"message":"model overloaded","status":"UNAVAILABLE"}"#)
    );
}

#[test]
fn error_after_content_in_the_same_frame() {
    let decoded = events(
        r#"{"content":{"parts":[{"text":"Partial answer"}]},"errorCode":"MAX_TOKENS","errorMessage":"too long"}"#,
    );
    assert_eq!(decoded.len(), 2);
    assert_eq!(decoded[0].text(), Some("Partial answer"));
    assert_eq!(
        stream_error(&decoded[1]).code.as_deref(),
        Some("MAX_TOKENS")
    );
}

#[test]
fn null_error_fields_are_not_errors() {
    let decoded = events(
        r#"{"content":{"parts":[{"text":"fine"}]},"errorCode":null,"errorMessage":null,"error":null}"#,
    );
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].text(), Some("fine"));
}

// ----- Simplified shapes -----------------------------------------------------------------------

#[test]
fn simplified_text() {
    let event = only(r#"{"type":"text","content":"Your video is ready."}"#);
    assert_eq!(event.text(), Some("Your video is ready."));
    assert!(!text_chunk(&event).partial);
    assert_eq!(text_chunk(&event).author, None);
}

#[test]
fn simplified_tool_call_and_result() {
    let call = only(r#"{"type":"tool_call","name":"remove_object","args":{"target":"person"}}"#);
    let call = call.as_tool_call().expect("a tool call");
    assert_eq!(call.name, "remove_object");
    assert_eq!(call.args.as_str(), r#"{"target":"person"}"#);

    let result = only(r#"{"type":"tool_result","name":"remove_object","result":{"ok":true}}"#);
    let AgentEvent::ToolResult(result) = &result else {
        panic!("expected ToolResult, got {result:?}")
    };
    assert_eq!(result.name, "remove_object");
    assert_eq!(result.response.as_str(), r#"{"ok":true}"#);
}

#[test]
fn simplified_tool_call_without_name_is_unknown() {
    let data = r#"{"type":"tool_call","args":{}}"#;
    let AgentEvent::Unknown(unknown) = only(data) else {
        panic!("expected Unknown")
    };
    assert_eq!(unknown.raw, data);
}

#[test]
fn heartbeats() {
    for data in [
        "",
        "   ",
        "\n",
        "heartbeat",
        " Heartbeat \n",
        r#"{"type":"heartbeat"}"#,
    ] {
        assert_eq!(events(data), [AgentEvent::Heartbeat], "{data:?}");
        assert!(decode_frame(data)[0].is_heartbeat());
    }
}

// ----- Unknown and malformed input -------------------------------------------------------------

#[test]
fn non_json_text_is_unknown_with_raw_kept() {
    let data = "<html><body>502 Bad Gateway</body></html>";
    let AgentEvent::Unknown(unknown) = only(data) else {
        panic!("expected Unknown")
    };
    assert_eq!(unknown.raw, data);
    assert_eq!(unknown.json, None);
}

#[test]
fn json_of_other_shapes_is_unknown_with_json() {
    for (data, json) in [
        ("[1,2,3]", serde_json::json!([1, 2, 3])),
        ("42", serde_json::json!(42)),
        (r#""just a string""#, serde_json::json!("just a string")),
        ("null", serde_json::Value::Null),
        (
            r#"{"code":0,"data":{}}"#,
            serde_json::json!({"code":0,"data":{}}),
        ),
        (
            r#"{"type":"progress","percent":40}"#,
            serde_json::json!({"type":"progress","percent":40}),
        ),
    ] {
        let AgentEvent::Unknown(unknown) = only(data) else {
            panic!("expected Unknown for {data}")
        };
        assert_eq!(unknown.raw, data);
        assert_eq!(unknown.json, Some(json), "{data}");
    }
}

#[test]
fn adk_event_with_only_unsurfaced_fields_is_unknown() {
    let data = r#"{"author":"nemo_agent","actions":{"artifactDelta":{"clip.mp4":1},"transferToAgent":"renderer"}}"#;
    let AgentEvent::Unknown(unknown) = only(data) else {
        panic!("expected Unknown")
    };
    assert_eq!(unknown.raw, data);
}

#[test]
fn truncated_json_is_unknown() {
    let data = r#"{"content":{"parts":[{"text":"cut off"#;
    let AgentEvent::Unknown(unknown) = only(data) else {
        panic!("expected Unknown")
    };
    assert_eq!(unknown.raw, data);
    assert_eq!(unknown.json, None);
}

#[test]
fn wrong_typed_fields_are_ignored_not_fatal() {
    let decoded = events(
        r#"{"author":7,"partial":"yes","id":{"x":1},"invocationId":[1],
            "content":{"role":5,"parts":[
              {"text":"kept","thought":"no"},
              {"text":12},
              "a string part",
              {"functionCall":"not an object"},
              {"functionCall":{"name":["x"],"args":1}}
            ]}}"#,
    );
    assert_eq!(decoded.len(), 5, "{decoded:?}");
    let chunk = text_chunk(&decoded[0]);
    assert_eq!(chunk.text, "kept");
    assert_eq!(chunk.author, None);
    assert!(!chunk.partial);
    assert!(!chunk.thought);
    assert_eq!(chunk.event_id, None);
    assert_eq!(chunk.invocation_id, None);
    for (event, raw) in decoded[1..].iter().zip([
        r#"{"text":12}"#,
        r#""a string part""#,
        r#"{"functionCall":"not an object"}"#,
        r#"{"functionCall":{"name":["x"],"args":1}}"#,
    ]) {
        let AgentEvent::Unknown(unknown) = event else {
            panic!("expected Unknown, got {event:?}")
        };
        assert_eq!(unknown.raw, raw);
    }
}

#[test]
fn content_of_the_wrong_type_makes_the_frame_unknown() {
    let data = r#"{"content":[1,2],"author":"nemo_agent"}"#;
    assert!(matches!(only(data), AgentEvent::Unknown(u) if u.raw == data));
    let data = r#"{"content":{"parts":{"text":"not a list"}}}"#;
    assert!(matches!(only(data), AgentEvent::Unknown(u) if u.raw == data));
}

#[test]
fn numeric_ids_keep_their_digits() {
    let decoded = events(
        r#"{"id":73918237491823749121,"invocationId":-12345678901234567890123,
            "content":{"parts":[{"text":"x"},{"functionCall":{"id":9007199254740993,"name":"f"}}]}}"#,
    );
    let chunk = text_chunk(&decoded[0]);
    assert_eq!(chunk.event_id.as_deref(), Some("73918237491823749121"));
    assert_eq!(
        chunk.invocation_id.as_deref(),
        Some("-12345678901234567890123")
    );
    let call = decoded[1].as_tool_call().expect("a tool call");
    assert_eq!(call.id.as_deref(), Some("9007199254740993"));

    let error = only(r#"{"errorCode":18446744073709551616123,"errorMessage":"x"}"#);
    assert_eq!(
        stream_error(&error).code.as_deref(),
        Some("18446744073709551616123")
    );
}

#[test]
fn escaped_strings_are_unescaped() {
    let decoded = events(
        r#"{"id":"a\"b","author":"nemo\u005fagent","content":{"parts":[{"text":"line1\nline2 \u4f60\u597d \"q\""}]}}"#,
    );
    let chunk = text_chunk(&decoded[0]);
    assert_eq!(chunk.text, "line1\nline2 你好 \"q\"");
    assert_eq!(chunk.author.as_deref(), Some("nemo_agent"));
    assert_eq!(chunk.event_id.as_deref(), Some("a\"b"));
}

#[test]
fn snake_case_spellings_are_accepted() {
    let decoded = events(
        r#"{"invocation_id":"e-2","turn_complete":false,"content":{"parts":[{"function_call":{"name":"trim","args":{}}}]},"actions":{"state_delta":{"k":1}}}"#,
    );
    assert_eq!(decoded.len(), 2);
    assert_eq!(
        decoded[0].as_tool_call().map(|c| c.name.as_str()),
        Some("trim")
    );
    assert!(matches!(decoded[1], AgentEvent::StateDelta(_)));
}

#[test]
fn duplicate_keys_make_the_frame_unknown_not_a_panic() {
    let data = r#"{"author":"a","author":"b","content":{"parts":[{"text":"x"}]}}"#;
    assert!(matches!(only(data), AgentEvent::Unknown(u) if u.raw == data));
}

// ----- Questions -------------------------------------------------------------------------------

#[test]
fn question_tools_are_recognised() {
    for name in [
        "ask_question",
        "ask_user",
        "askUser",
        "AskUserQuestion",
        "ask-human",
        "request_user_input",
        "ASK_QUESTION",
    ] {
        let data = format!(r#"{{"type":"tool_call","name":"{name}","args":{{}}}}"#);
        let event = only(&data);
        assert!(
            event.as_tool_call().expect("a tool call").is_question(),
            "{name}"
        );
    }
    for name in ["ask_llm", "add_text", "question", "asking_user"] {
        let data = format!(r#"{{"type":"tool_call","name":"{name}","args":{{}}}}"#);
        let event = only(&data);
        assert!(
            !event.as_tool_call().expect("a tool call").is_question(),
            "{name}"
        );
    }
}

#[test]
fn question_text_and_options_come_from_args() {
    let cases = [
        (
            r#"{"question":"Which person?","text":"ignored"}"#,
            Some("Which person?"),
        ),
        (r#"{"text":"Keep the music?"}"#, Some("Keep the music?")),
        (r#"{"prompt":"Pick a color"}"#, Some("Pick a color")),
        (r#"{"question":5,"prompt":"Fallback"}"#, Some("Fallback")),
        (r#"{"other":"x"}"#, None),
        (r#"["not","an","object"]"#, None),
    ];
    for (args, expected) in cases {
        let data = format!(
            r#"{{"content":{{"parts":[{{"functionCall":{{"name":"ask_question","args":{args}}}}}]}}}}"#
        );
        let event = only(&data);
        let call = event.as_tool_call().expect("a tool call");
        assert_eq!(call.question_text().as_deref(), expected, "{args}");
    }

    let event = only(
        r#"{"type":"tool_call","name":"ask_user","args":{"question":"Which?","options":["Left",{"label":"Right"},{"value":"Both"},7]}}"#,
    );
    let call = event.as_tool_call().expect("a tool call");
    assert_eq!(call.question_options(), ["Left", "Right", "Both"]);
    let event = only(r#"{"type":"tool_call","name":"ask_user","args":{"choices":["A","B"]}}"#);
    assert_eq!(
        event
            .as_tool_call()
            .expect("a tool call")
            .question_options(),
        ["A", "B"]
    );
}

// ----- Other API -------------------------------------------------------------------------------

#[test]
fn still_working_is_a_plain_variant() {
    let event = AgentEvent::StillWorking {
        elapsed: Duration::from_secs(120),
    };
    assert!(!event.is_error());
    assert_eq!(event.text(), None);
}

#[test]
fn decoded_events_iterate_in_order() {
    let decoded = decode_frame(
        r#"{"content":{"parts":[{"text":"a"},{"text":"b"}]},"actions":{"stateDelta":{"k":1}}}"#,
    );
    assert_eq!(decoded.len(), 3);
    let texts: Vec<Option<&str>> = (&decoded).into_iter().map(AgentEvent::text).collect();
    assert_eq!(texts, [Some("a"), Some("b"), None]);
    let owned: Vec<AgentEvent> = decoded.into_iter().collect();
    assert_eq!(owned.len(), 3);
}

#[test]
fn raw_json_round_trips_through_serde() {
    let json = RawJson::from_json(r#"{"t":[{"tt":0}],"unknown_key":[1,2]}"#).expect("valid");
    assert_eq!(
        serde_json::to_string(&json).expect("serialise"),
        r#"{"t":[{"tt":0}],"unknown_key":[1,2]}"#
    );
    assert!(RawJson::from_json("{nope").is_err());
    assert!(RawJson::null().is_null());
    assert!(json.is_object());
}

// ----- Properties ------------------------------------------------------------------------------

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        // Keys and values that the decoder looks at, so the property reaches deep paths.
        prop::sample::select(vec![
            "text",
            "heartbeat",
            "tool_call",
            "tool_result",
            "error",
            "ask_user",
            "",
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "type",
                        "content",
                        "parts",
                        "text",
                        "thought",
                        "functionCall",
                        "functionResponse",
                        "name",
                        "args",
                        "response",
                        "result",
                        "id",
                        "invocationId",
                        "author",
                        "partial",
                        "turnComplete",
                        "errorCode",
                        "errorMessage",
                        "error",
                        "error_details",
                        "actions",
                        "stateDelta",
                        "question",
                        "options",
                        "other",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|entries| {
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(key, value)| (key.to_owned(), value))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic_and_always_give_events(data in ".*") {
        let decoded = decode_frame(&data);
        prop_assert!(!decoded.is_empty());
    }

    #[test]
    fn arbitrary_json_never_panics_and_keeps_unknowns_raw(json in arbitrary_json()) {
        let data = json.to_string();
        let decoded = decode_frame(&data);
        prop_assert!(!decoded.is_empty());
        for event in &decoded {
            match event {
                AgentEvent::ToolCall(call) => {
                    let _ = call.is_question();
                    let _ = call.question_text();
                    let _ = call.question_options();
                    prop_assert!(call.args.parse::<serde_json::Value>().is_ok());
                }
                AgentEvent::StateDelta(delta) => {
                    prop_assert!(delta.delta.is_object());
                    prop_assert!(!delta.keys().is_empty());
                }
                AgentEvent::Unknown(unknown) => {
                    prop_assert!(unknown.json.is_some(), "valid JSON keeps its tree: {}", unknown.raw);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn deeply_nested_json_is_unknown_not_a_stack_overflow() {
    let data = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let AgentEvent::Unknown(unknown) = only(&data) else {
        panic!("expected Unknown")
    };
    assert_eq!(unknown.raw.len(), 200_000);
    let data = format!(
        r#"{{"type":"tool_call","name":"f","args":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    // Skipping over a raw subtree has no depth limit, so the call is kept; parsing its
    // arguments hits serde_json's recursion limit and reports an error instead of crashing.
    let event = only(&data);
    let call = event.as_tool_call().expect("a tool call");
    assert_eq!(call.args.as_str().len(), 10_001);
    assert!(call.args_as::<serde_json::Value>().is_err());
}
