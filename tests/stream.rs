//! `POST /run_sse` as a stream of events, against a loopback server that streams over time.
//!
//! Every test runs on a paused Tokio clock, with the server on the test's own runtime: the
//! server's pacing and the SDK's idle, total and still-working timers all run on virtual
//! time, which moves only when every task waits on a timer. Timings here are exact however
//! busy the machine; a slow moment cannot fire a timeout or squeeze a gap.

mod support;

use std::time::Duration;

use nemo_video::events::AgentEvent;
use nemo_video::stream::MessageOptions;
use nemo_video::{stream::MessageStream, Error, TimeoutKind};
use serde_json::json;
use support::stream_server::*;
use tokio::time::Instant;

/// A short label per event, so a whole sequence can be compared at once.
fn label(event: &AgentEvent) -> String {
    match event {
        AgentEvent::Text(chunk) => format!(
            "text{}{}:{}",
            if chunk.partial { "(partial)" } else { "" },
            if chunk.thought { "(thought)" } else { "" },
            chunk.text
        ),
        AgentEvent::ToolCall(call) => format!(
            "call:{}:{}:{}",
            call.id.as_deref().unwrap_or("-"),
            call.name,
            call.args
        ),
        AgentEvent::ToolResult(result) => format!(
            "result:{}:{}:{}",
            result.id.as_deref().unwrap_or("-"),
            result.name,
            result.response
        ),
        AgentEvent::StateDelta(delta) => format!("delta:{}", delta.delta),
        AgentEvent::Heartbeat => "heartbeat".to_string(),
        AgentEvent::StillWorking { .. } => "still-working".to_string(),
        AgentEvent::TurnComplete => "turn-complete".to_string(),
        AgentEvent::Error(error) => format!("error:{}", error.message),
        AgentEvent::Unknown(unknown) => format!("unknown:{}", unknown.raw),
        other => format!("other:{other:?}"),
    }
}

/// Reads the stream to its end: the events before the first error, and that error.
async fn drain(stream: &mut MessageStream) -> (Vec<AgentEvent>, Option<Error>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next_event().await {
        match item {
            Ok(event) => events.push(event),
            Err(err) => return (events, Some(err)),
        }
    }
    (events, None)
}

fn labels(events: &[AgentEvent]) -> Vec<String> {
    events.iter().map(label).collect()
}

fn quick_options() -> MessageOptions {
    MessageOptions::default()
        .idle_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(5))
}

#[tokio::test(start_paused = true)]
async fn run_sse_request_has_the_exact_wire_form() {
    let server = StreamServer::streaming(vec![event(&adk_text("ok", false)), Step::End]).await;
    let client = server.client();
    let message = "remove the person on the left \"now\"";
    let mut stream = client
        .send_message(&server.session(), message)
        .await
        .expect("stream opens");
    let (_, err) = drain(&mut stream).await;
    assert!(err.is_none(), "{err:?}");

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one request, nothing else: {requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/run_sse");
    let header = |name: &str| request.headers.get(name).map(String::as_str);
    assert_eq!(header("accept"), Some("text/event-stream"));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("authorization"), Some("Bearer nmv_usr_test"));
    assert_eq!(
        header("x-skill-source"),
        Some(nemo_video::DEFAULT_SKILL_SOURCE)
    );
    assert_eq!(
        header("x-skill-version"),
        Some(nemo_video::DEFAULT_SKILL_VERSION)
    );
    assert_eq!(
        header("x-skill-platform"),
        Some(client.config().skill_platform.as_str())
    );
    assert!(header("user-agent").is_some_and(|ua| ua.contains("nemo-video")));
    let expected = format!(
        r#"{{"app_name":"nemo_agent","user_id":"me","session_id":"{SESSION_ID}","new_message":{{"parts":[{{"text":"remove the person on the left \"now\""}}]}}}}"#
    );
    assert_eq!(String::from_utf8_lossy(&request.body), expected);
}

#[tokio::test(start_paused = true)]
async fn adk_events_streamed_over_time_decode_in_order() {
    let steps = vec![
        comment_heartbeat(),
        event(&adk_text("Adding ", true)),
        sleep_ms(30),
        // One event split across two chunks, with CRLF line endings.
        raw("data: {\"author\":\"nemo_agent\",\"partial\":true,"),
        sleep_ms(30),
        raw("\"content\":{\"parts\":[{\"text\":\"a title\"}]}}\r\n\r\n"),
        empty_data_heartbeat(),
        event(&adk_text("Adding a title", false)),
        sleep_ms(30),
        event(&adk_call(
            "call-1",
            "add_text",
            json!({"text": "Urban Dreams", "start_ms": 0}),
        )),
        sleep_ms(30),
        event(&adk_response("call-1", "add_text", json!({"ok": true}))),
        event(&adk_state_delta(json!({"draft_version": 3}))),
        comment_heartbeat(),
        Step::End,
    ];
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let mut stream = client
        .send_message_with(&server.session(), "add a title", &quick_options())
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert!(err.is_none(), "clean close is a normal end, got {err:?}");
    assert_eq!(
        labels(&events),
        [
            "heartbeat",
            "text(partial):Adding ",
            "text(partial):a title",
            "heartbeat",
            "text:Adding a title",
            r#"call:call-1:add_text:{"start_ms":0,"text":"Urban Dreams"}"#,
            r#"result:call-1:add_text:{"ok":true}"#,
            r#"delta:{"draft_version":3}"#,
            "heartbeat",
        ]
    );
    assert!(
        stream.next_event().await.is_none(),
        "the stream stays ended"
    );
    assert_eq!(server.run_sse_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_stream_are_returned_by_send_message_without_retry() {
    // 2001 in a JSON envelope with HTTP 200.
    let server = StreamServer::start(vec![Reply::json(
        200,
        json!({"code": 2001, "message": "no credits"}),
    )])
    .await;
    let err = server
        .client()
        .send_message(&server.session(), "add music")
        .await
        .expect_err("2001 is an error");
    assert!(matches!(err, Error::NoCredits { .. }), "{err:?}");
    assert_eq!(err.http_status(), Some(200));
    assert_eq!(server.run_sse_posts(), 1, "never re-sent");

    // HTTP 500: transient, but the message may have reached the server, so not re-sent.
    let server = StreamServer::start(vec![Reply::whole(500, "text/plain", "upstream broke")]).await;
    let err = server
        .client()
        .send_message(&server.session(), "add music")
        .await
        .expect_err("500 is an error");
    assert_eq!(err.http_status(), Some(500), "{err:?}");
    assert_eq!(
        server.run_sse_posts(),
        1,
        "a message is never replayed after a 500"
    );

    // A success status with an HTML page where a stream was expected.
    let server = StreamServer::start(vec![Reply::whole(
        200,
        "text/html",
        "<html><body>maintenance</body></html>",
    )])
    .await;
    let err = server
        .client()
        .send_message(&server.session(), "add music")
        .await
        .expect_err("HTML is not a stream");
    // A success status: the message may have been taken, so the error says "reconcile".
    assert!(
        matches!(&err, Error::Unconfirmed { cause, .. } if matches!(**cause, Error::Decode { .. })),
        "{err:?}"
    );
    assert_eq!(server.run_sse_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_frame_ends_the_stream_with_agent_error() {
    let steps = vec![
        event(&adk_text("Working on it", false)),
        event(r#"{"error":"model overloaded","error_details":{"retry":false}}"#),
        // Nothing after the error frame may reach the caller.
        event(&adk_text("after the error", false)),
        sleep_ms(50),
        event(&adk_text("still after", false)),
        Step::End,
    ];
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let mut stream = client
        .send_message_with(&server.session(), "add music", &quick_options())
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert_eq!(labels(&events), ["text:Working on it"]);
    match err {
        Some(Error::Agent { message, .. }) => assert_eq!(message, "model overloaded"),
        other => panic!("expected Error::Agent, got {other:?}"),
    }
    assert!(
        stream.next_event().await.is_none(),
        "nothing after the error"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_slow_stream_alive_past_the_idle_timeout() {
    let mut steps = heartbeats(100, 1000);
    steps.push(event(&adk_text("Done: music added.", false)));
    steps.push(Step::End);
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let options = MessageOptions::default()
        .idle_timeout(Duration::from_millis(300))
        .total_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let mut stream = client
        .send_message_with(&server.session(), "add music", &options)
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert!(
        err.is_none(),
        "heartbeats must reset the idle timer: {err:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the stream really was slower than the idle limit"
    );
    let heartbeat_count = events.iter().filter(|e| e.is_heartbeat()).count();
    assert_eq!(heartbeat_count, 10, "{:?}", labels(&events));
    assert_eq!(
        events.last().map(label).as_deref(),
        Some("text:Done: music added.")
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_hits_the_idle_timeout() {
    let steps = vec![event(&adk_text("Thinking", false)), Step::Stall];
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let options = MessageOptions::default()
        .idle_timeout(Duration::from_millis(300))
        .total_timeout(Duration::from_secs(5));
    let mut stream = client
        .send_message_with(&server.session(), "add music", &options)
        .await
        .expect("stream opens");
    let first = stream.next_event().await.expect("an event").expect("ok");
    assert_eq!(label(&first), "text:Thinking");
    let silent_since = Instant::now();
    let (events, err) = drain(&mut stream).await;
    let waited = silent_since.elapsed();
    assert!(events.is_empty(), "{:?}", labels(&events));
    match err.as_ref().map(timeout_behind) {
        Some(Some((TimeoutKind::StreamIdle, after))) => {
            assert_eq!(after, Duration::from_millis(300))
        }
        _ => panic!("expected an idle timeout, got {err:?}"),
    }
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000),
        "idle timeout after {waited:?}, configured 300 ms"
    );
    assert!(
        server.wait_client_gone(Duration::from_secs(1)).await,
        "the connection is closed once the timeout is reported"
    );
    assert!(stream.next_event().await.is_none());
    assert_eq!(
        server.run_sse_posts(),
        1,
        "a timed-out message is not re-sent"
    );
}

/// The time limit behind a stream's error: the message was accepted, so a timeout comes as
/// `Unconfirmed` (policy "reconcile"), never as a bare, retryable `Timeout`.
fn timeout_behind(err: &Error) -> Option<(TimeoutKind, Duration)> {
    assert_eq!(
        err.retry_policy(),
        nemo_video::RetryPolicy::Reconcile,
        "{err}"
    );
    match err {
        Error::Unconfirmed { cause, .. } => match **cause {
            Error::Timeout { kind, after } => Some((kind, after)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_ends_a_stream_that_heartbeats_forever() {
    let server = StreamServer::streaming(heartbeats(50, 20_000)).await;
    let client = server.client();
    let options = MessageOptions::default()
        .idle_timeout(Duration::from_millis(300))
        .total_timeout(Duration::from_millis(600));
    let started = Instant::now();
    let mut stream = client
        .send_message_with(&server.session(), "add music", &options)
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    let waited = started.elapsed();
    assert!(events.iter().all(AgentEvent::is_heartbeat));
    assert!(events.len() >= 5, "heartbeats flowed: {}", events.len());
    match err.as_ref().map(timeout_behind) {
        Some(Some((TimeoutKind::StreamTotal, after))) => {
            assert_eq!(after, Duration::from_millis(600))
        }
        _ => panic!("expected the total timeout, got {err:?}"),
    }
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_millis(1500),
        "total timeout after {waited:?}, configured 600 ms"
    );
    // The caller stopped at the error but still holds the stream: the connection must be
    // closed anyway, or the server keeps streaming into it.
    assert!(
        server.wait_client_gone(Duration::from_secs(1)).await,
        "the connection is closed once the timeout is reported"
    );
    drop(stream);
}

#[tokio::test(start_paused = true)]
async fn still_working_is_emitted_while_no_text_arrives_and_text_resets_it() {
    // 0-700 ms heartbeats only: StillWorking near 200, 400, 600 ms. Text at ~700 ms resets
    // the clock, so none is due before ~900 ms; the stream closes at ~850 ms. Without the
    // reset one would be due at ~800 ms.
    let mut steps = heartbeats(50, 700);
    steps.push(event(&adk_text("Music added.", false)));
    steps.extend(heartbeats(50, 150));
    steps.push(Step::End);
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let options = MessageOptions::default()
        .idle_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(5))
        .still_working_interval(Duration::from_millis(200));
    let mut stream = client
        .send_message_with(&server.session(), "add music", &options)
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert!(err.is_none(), "{err:?}");
    let text_at = events
        .iter()
        .position(|e| e.text().is_some())
        .expect("the text arrived");
    let before_text = events[..text_at]
        .iter()
        .filter(|e| matches!(e, AgentEvent::StillWorking { .. }))
        .count();
    let after_text = events[text_at..]
        .iter()
        .filter(|e| matches!(e, AgentEvent::StillWorking { .. }))
        .count();
    assert!(
        before_text >= 2,
        "at least 2 StillWorking in 700 ms of heartbeats at 200 ms: {:?}",
        labels(&events)
    );
    assert_eq!(
        after_text,
        0,
        "text resets the still-working clock: {:?}",
        labels(&events)
    );
    for event in &events {
        if let AgentEvent::StillWorking { elapsed } = event {
            assert!(
                *elapsed >= Duration::from_millis(190),
                "elapsed {elapsed:?} is the time without text"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_reports_events_seen_and_last_event_id_and_is_not_resent() {
    let steps = vec![
        event_with_id("evt-1", &adk_text("Removing", true)),
        sleep_ms(20),
        event_with_id(
            "evt-2",
            &adk_call("call-9", "remove_object", json!({"target": "person"})),
        ),
        // An event without its own id: the last id seen stays evt-2.
        event(&adk_response(
            "call-9",
            "remove_object",
            json!({"ok": true}),
        )),
        sleep_ms(20),
        // Half an event, then the connection drops mid-body.
        raw("data: {\"author\":\"nemo_agent\",\"content\""),
        Step::Abort,
    ];
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let mut stream = client
        .send_message_with(&server.session(), "remove the person", &quick_options())
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert_eq!(
        labels(&events),
        [
            "text(partial):Removing",
            r#"call:call-9:remove_object:{"target":"person"}"#,
            r#"result:call-9:remove_object:{"ok":true}"#,
        ]
    );
    match err {
        Some(Error::StreamDisconnected {
            events_seen,
            last_event_id,
            ..
        }) => {
            assert_eq!(events_seen, 3);
            assert_eq!(last_event_id.as_deref(), Some("evt-2"));
        }
        other => panic!("expected StreamDisconnected, got {other:?}"),
    }
    assert!(stream.next_event().await.is_none());
    // Give a hypothetical retry time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.run_sse_posts(), 1, "the message is never re-sent");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_closes_the_connection() {
    let steps = vec![event(&adk_text("Working", true)), Step::Stall];
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let mut stream = client
        .send_message_with(&server.session(), "add music", &quick_options())
        .await
        .expect("stream opens");
    let first = stream.next_event().await.expect("an event").expect("ok");
    assert_eq!(label(&first), "text(partial):Working");
    assert!(
        !server.wait_client_gone(Duration::from_millis(100)).await,
        "the connection is open while the stream is alive"
    );
    drop(stream);
    // The client (and its connection pool) stays alive: only the stream is dropped.
    assert!(
        server.wait_client_gone(Duration::from_secs(2)).await,
        "the server saw the connection close after the stream was dropped"
    );
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn an_event_over_max_event_bytes_is_an_error_not_unbounded_memory() {
    // 4 MiB of one `data:` line that never ends, then silence. A parser that buffered it
    // all would wait for the blank line and hit the idle timeout instead.
    let piece = vec![b'x'; 64 * 1024];
    let mut steps = vec![
        event(&adk_text("Here comes a big one", false)),
        raw("data: "),
    ];
    for _ in 0..64 {
        steps.push(Step::Chunk(piece.clone()));
    }
    steps.push(Step::Stall);
    let server = StreamServer::streaming(steps).await;
    let client = server.client();
    let options = MessageOptions::default()
        .idle_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(5))
        .max_event_bytes(16 * 1024);
    let started = Instant::now();
    let mut stream = client
        .send_message_with(&server.session(), "add music", &options)
        .await
        .expect("stream opens");
    let (events, err) = drain(&mut stream).await;
    assert_eq!(labels(&events), ["text:Here comes a big one"]);
    let err = err.expect("an oversized event is an error");
    assert!(!err.is_timeout(), "size limit, not a timeout: {err:?}");
    assert!(
        err.to_string().contains("16384"),
        "the message names the limit: {err}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(
        server.wait_client_gone(Duration::from_secs(1)).await,
        "the connection is closed once the error is reported"
    );
    assert!(stream.next_event().await.is_none());
}
