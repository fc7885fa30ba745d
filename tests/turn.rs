//! `run_turn` / `run_turn_with`: one message to the end, against a loopback server that
//! streams over time and serves a scripted sequence of session states.
//!
//! On a paused Tokio clock, like `tests/stream.rs`: stream pacing, reconcile delays and
//! timeouts run on virtual time, so the timings asserted here are exact on a busy machine.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::draft::Draft;
use nemo_video::events::AgentEvent;
use nemo_video::stream::MessageOptions;
use nemo_video::turn::TurnOptions;
use nemo_video::{state::StateDiff, turn::TurnEnd, Error};
use serde_json::json;
use support::stream_server::*;
use tokio::time::Instant;

/// Short reconcile delays so a no-text turn does not sleep for seconds.
fn fast_options() -> TurnOptions {
    TurnOptions::default()
        .message(
            MessageOptions::default()
                .idle_timeout(Duration::from_secs(2))
                .total_timeout(Duration::from_secs(5)),
        )
        .reconcile(4, Duration::from_millis(20))
}

fn label(event: &AgentEvent) -> String {
    match event {
        AgentEvent::Text(chunk) => format!(
            "text{}{}:{}",
            if chunk.partial { "(partial)" } else { "" },
            if chunk.thought { "(thought)" } else { "" },
            chunk.text
        ),
        AgentEvent::ToolCall(call) => format!("call:{}", call.name),
        AgentEvent::ToolResult(result) => format!("result:{}", result.name),
        AgentEvent::StateDelta(_) => "delta".to_string(),
        AgentEvent::Heartbeat => "heartbeat".to_string(),
        AgentEvent::StillWorking { .. } => "still-working".to_string(),
        other => format!("other:{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_text_turn_shows_the_final_text_once_and_streams_events_live() {
    let steps = vec![
        event(&adk_thought("The user wants a title; use add_text.")),
        event(&adk_text("I added ", true)),
        // The rest arrives later: on_event must see the first chunks before the turn ends.
        sleep_ms(300),
        comment_heartbeat(),
        event(&adk_text("the title.", true)),
        event(&adk_call("c1", "add_text", json!({"text": "Urban Dreams"}))),
        event(&adk_response("c1", "add_text", json!({"ok": true}))),
        event(&adk_text("I added the title.", false)),
        Step::End,
    ];
    let server = StreamServer::streaming(steps)
        .await
        .with_drafts(vec![one_video_draft(), video_and_title_draft()]);
    let client = server.client();
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let sink = seen.clone();
    let options = fast_options().on_event(move |event| {
        sink.lock().unwrap().push((label(event), Instant::now()));
    });
    let turn = client
        .run_turn_with(&server.session(), "add a title", &options)
        .await
        .expect("turn runs");
    let ended = Instant::now();

    assert_eq!(
        turn.text, "I added the title.",
        "final text once, no thoughts"
    );
    assert_eq!(turn.answer(), "I added the title.");
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    assert!(!turn.is_waiting_for_user());
    assert!(turn.changes.is_none(), "the text speaks for itself");
    assert!(turn.state_after.is_none());
    assert_eq!(
        server.state_gets(),
        1,
        "the state is read before, not after"
    );
    assert_eq!(turn.tool_calls.len(), 1);
    assert_eq!(turn.tool_results.len(), 1);

    let seen = seen.lock().unwrap();
    let labels: Vec<&str> = seen.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "text(thought):The user wants a title; use add_text.",
            "text(partial):I added ",
            "heartbeat",
            "text(partial):the title.",
            "call:add_text",
            "result:add_text",
            "text:I added the title.",
        ]
    );
    let first_chunk_at = seen[1].1;
    assert!(
        ended - first_chunk_at >= Duration::from_millis(250),
        "on_event saw the first chunk live, {:?} before the turn ended",
        ended - first_chunk_at
    );
}

#[tokio::test(start_paused = true)]
async fn a_no_text_turn_reports_what_changed_in_the_state() {
    let steps = vec![
        event(&adk_call(
            "c1",
            "add_text",
            json!({"text": "Urban Dreams", "start_ms": 0, "duration_ms": 3000}),
        )),
        sleep_ms(20),
        event(&adk_response("c1", "add_text", json!({"ok": true}))),
        Step::End,
    ];
    let server = StreamServer::streaming(steps)
        .await
        .with_drafts(vec![one_video_draft(), video_and_title_draft()]);
    let client = server.client();
    let turn = client
        .run_turn_with(
            &server.session(),
            "add a title Urban Dreams",
            &fast_options(),
        )
        .await
        .expect("turn runs");

    assert_eq!(turn.text, "");
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    let changes = turn.changes.as_ref().expect("the state was compared");
    assert!(!changes.is_empty(), "a track was added");
    let answer = turn.answer();
    assert!(answer.starts_with("Done."), "{answer}");
    assert!(answer.contains("Urban Dreams"), "{answer}");
    assert!(answer.to_lowercase().contains("text track"), "{answer}");
    let after = turn.state_after.as_ref().expect("the state after");
    assert_eq!(after.draft().map(|d| d.tracks().len()), Some(2));
    assert_eq!(server.state_gets(), 2, "read before and once after");
    assert_eq!(server.run_sse_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_no_text_turn_finds_a_change_that_shows_up_on_the_third_reread() {
    let steps = vec![
        event(&adk_call("c1", "add_text", json!({"text": "Urban Dreams"}))),
        event(&adk_response("c1", "add_text", json!({"ok": true}))),
        Step::End,
    ];
    // Read 1 is "before"; re-reads 1 and 2 still show the old timeline; re-read 3 the new.
    let server = StreamServer::streaming(steps).await.with_drafts(vec![
        one_video_draft(),
        one_video_draft(),
        one_video_draft(),
        video_and_title_draft(),
    ]);
    let client = server.client();
    let started = Instant::now();
    let turn = client
        .run_turn_with(&server.session(), "add a title", &fast_options())
        .await
        .expect("turn runs");
    let changes = turn.changes.as_ref().expect("the state was compared");
    assert!(!changes.is_empty(), "the late change was found: {changes}");
    assert!(turn.answer().contains("Urban Dreams"), "{}", turn.answer());
    assert_eq!(
        server.state_gets(),
        4,
        "before + 3 re-reads, then it stopped"
    );
    // 20 ms then 40 ms between re-reads.
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_no_text_turn_without_change_says_so_after_all_rereads() {
    let steps = vec![
        event(&adk_call("c1", "analyse", json!({}))),
        event(&adk_response("c1", "analyse", json!({"ok": true}))),
        Step::End,
    ];
    let server = StreamServer::streaming(steps)
        .await
        .with_drafts(vec![one_video_draft()]);
    let client = server.client();
    let turn = client
        .run_turn_with(&server.session(), "look at the video", &fast_options())
        .await
        .expect("turn runs");
    assert!(turn.changes.as_ref().is_some_and(|c| c.is_empty()));
    assert_eq!(
        turn.answer(),
        "The agent finished without changing the timeline."
    );
    assert_eq!(server.state_gets(), 5, "before + the 4 configured re-reads");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_ends_the_turn_disconnected_with_changes_and_one_post() {
    let steps = vec![
        event(&adk_call("c1", "add_text", json!({"text": "Urban Dreams"}))),
        sleep_ms(20),
        raw("data: {\"author\":"),
        Step::Abort,
    ];
    let server = StreamServer::streaming(steps)
        .await
        .with_drafts(vec![one_video_draft(), video_and_title_draft()]);
    let client = server.client();
    let turn = client
        .run_turn_with(&server.session(), "add a title", &fast_options())
        .await
        .expect("a cut-off stream is a turn, not an error");
    match &turn.end {
        TurnEnd::Disconnected(Error::StreamDisconnected { events_seen, .. }) => {
            assert_eq!(*events_seen, 1)
        }
        other => panic!("expected Disconnected(StreamDisconnected), got {other:?}"),
    }
    assert!(!turn.is_waiting_for_user());
    let changes = turn.changes.as_ref().expect("reconciled from the state");
    assert!(!changes.is_empty());
    let answer = turn.answer();
    assert!(answer.contains("Urban Dreams"), "{answer}");
    assert!(answer.contains("cut off"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.run_sse_posts(), 1, "the message is never re-sent");
    assert_eq!(server.state_gets(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_final_unanswered_question_waits_for_the_user() {
    let steps = vec![
        event(&adk_call("c1", "detect_people", json!({}))),
        event(&adk_response("c1", "detect_people", json!({"count": 2}))),
        event(&adk_call(
            "c2",
            "ask_question",
            json!({"question": "Which person should I remove, left or right?"}),
        )),
        Step::End,
    ];
    let server = StreamServer::streaming(steps)
        .await
        .with_drafts(vec![one_video_draft()]);
    let client = server.client();
    // Default reconcile settings: a question must not wait for state re-reads.
    let started = Instant::now();
    let turn = client
        .run_turn_with(&server.session(), "remove the person", &fast_options())
        .await
        .expect("turn runs");
    assert!(turn.is_waiting_for_user(), "{:?}", turn.end);
    match &turn.end {
        TurnEnd::WaitingForUser { call, question } => {
            assert_eq!(call.name, "ask_question");
            assert_eq!(call.id.as_deref(), Some("c2"));
            assert_eq!(
                question.as_deref(),
                Some("Which person should I remove, left or right?")
            );
        }
        other => panic!("expected WaitingForUser, got {other:?}"),
    }
    assert_eq!(
        turn.answer(),
        "Which person should I remove, left or right?"
    );
    assert_eq!(server.run_sse_posts(), 1);
    assert_eq!(server.state_gets(), 1, "only the read before the message");
    assert!(turn.changes.is_none());
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn no_credits_before_the_stream_is_an_error_and_the_message_is_not_resent() {
    let server = StreamServer::start(vec![Reply::json(
        200,
        json!({"code": 2001, "message": "no credits"}),
    )])
    .await
    .with_drafts(vec![one_video_draft()]);
    let client = server.client();
    let err = client
        .run_turn_with(&server.session(), "add music", &fast_options())
        .await
        .expect_err("2001 is an error");
    assert!(
        matches!(err, nemo_video::Error::NoCredits { .. }),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.run_sse_posts(), 1, "never re-sent");
    assert_eq!(
        server.state_gets(),
        1,
        "no reconcile after a refused message"
    );
}

/// A draft with one subtitle track of `cues` cues, each its own text; `edited` renames
/// every tenth cue.
fn subtitle_draft(cues: usize, edited: bool) -> serde_json::Value {
    let segments: Vec<serde_json::Value> = (0..cues)
        .map(|i| {
            let text = if edited && i % 10 == 0 {
                format!("cue {i} (fixed)")
            } else {
                format!("cue {i}")
            };
            json!({"st": i * 1000, "d": 1000, "m": {"text": text}})
        })
        .collect();
    json!({"t": [{"tt": 7, "sg": segments}]})
}

#[tokio::test(flavor = "current_thread")]
async fn a_big_timeline_is_compared_like_a_small_one_and_its_answer_stays_short() {
    // 2 × 3,000 segments: compared off the runtime (see `turn::compare`); the result must be
    // what `SessionState::diff` gives, every change kept, the answer a few lines.
    let steps = vec![
        event(&adk_call("c1", "fix_subtitles", json!({}))),
        event(&adk_response("c1", "fix_subtitles", json!({"ok": true}))),
        Step::End,
    ];
    let server = StreamServer::streaming(steps).await.with_drafts(vec![
        subtitle_draft(3_000, false),
        subtitle_draft(3_000, true),
    ]);
    let client = server.client();
    let turn = client
        .run_turn_with(&server.session(), "fix the subtitles", &fast_options())
        .await
        .expect("turn runs");

    let changes = turn.changes.as_ref().expect("the state was compared");
    let after = turn.state_after.as_ref().expect("the state after");
    let before = Draft::from_json(&subtitle_draft(3_000, false).to_string()).expect("a draft");
    let expected = StateDiff::between_drafts(Some(&before), after.draft());
    // (Not `assert_eq!`: the Debug form of 300 changes is long.)
    assert!(
        changes == &expected,
        "the turn's diff differs from between_drafts"
    );
    assert_eq!(changes.changes().len(), 300, "every tenth cue was renamed");
    let answer = turn.answer();
    assert!(
        answer.ends_with("; and 280 more changes to tracks and clips."),
        "{answer}"
    );
    assert!(answer.len() < 4_000, "{} bytes", answer.len());
}
