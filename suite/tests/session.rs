//! Sessions, claim links and credits: wire form, decoding of ids, and the stored form of a
//! session.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use nemo_video::{Error, Session};
use serde_json::{json, Value};
use support::mock::*;
use support::tempdir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

async fn mount_session(server: &MockServer, template: wiremock::ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(SESSION_PATH))
        .respond_with(template)
        .mount(server)
        .await;
}

#[tokio::test]
async fn create_session_without_language_has_exact_wire_form() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_session(
        &server,
        ok(json!({"task_id": "task-1", "session_id": "7301234567890123456", "user_id": "u-1"})),
    )
    .await;
    let session = fixed_client(&server, dir.path())
        .create_session()
        .await
        .unwrap();
    assert_eq!(session.id(), "7301234567890123456");
    assert_eq!(session.task_id(), Some("task-1"));
    assert_eq!(session.user_id(), Some("u-1"));

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), SESSION_PATH);
    assert_eq!(
        header(request, "authorization"),
        Some(format!("Bearer {FIXED_TOKEN}").as_str())
    );
    assert_eq!(header(request, "x-skill-source"), Some("video-object-ops"));
    assert_eq!(
        header(request, "x-skill-version"),
        Some(env!("NEMO_VIDEO_VERSION"))
    );
    assert_eq!(header(request, "x-skill-platform"), Some(PLATFORM));
    assert!(header(request, "user-agent")
        .unwrap()
        .contains("nemo-video"));
    assert!(header(request, "content-type")
        .unwrap()
        .starts_with("application/json"));
    let body: Value = request.body_json().unwrap();
    assert_eq!(
        body,
        json!({"task_name": "project"}),
        "no language key at all"
    );
}

#[tokio::test]
async fn create_session_with_language_sends_it() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_session(&server, ok(json!({"task_id": "t", "session_id": "s"}))).await;
    fixed_client(&server, dir.path())
        .create_session_with(&nemo_video::SessionOptions::default().language("zh-CN"))
        .await
        .unwrap();
    let request = &requests_to(&server, SESSION_PATH).await[0];
    let body: Value = request.body_json().unwrap();
    assert_eq!(body, json!({"task_name": "project", "language": "zh-CN"}));
}

#[tokio::test]
async fn create_session_refuses_a_bad_language_code_without_sending() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_session(&server, ok(json!({"task_id": "t", "session_id": "s"}))).await;
    let err = fixed_client(&server, dir.path())
        .create_session_with(&nemo_video::SessionOptions::default().language("en\"}, {\"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn session_ids_sent_as_big_json_numbers_keep_their_digits() {
    // 7301234567890123457 > 2^53: through f64 it would become 7301234567890123776.
    // The task id is beyond u64 as well.
    for (raw_session, raw_task) in [
        ("7301234567890123457", "98765432109876543210"),
        ("9007199254740993", "9007199254740993"),
    ] {
        let server = MockServer::start().await;
        let dir = tempdir();
        mount_session(
            &server,
            raw_json(
                200,
                &format!(
                    r#"{{"code":0,"message":"ok","data":{{"task_id":{raw_task},"session_id":{raw_session},"user_id":42}}}}"#
                ),
            ),
        )
        .await;
        let session = fixed_client(&server, dir.path())
            .create_session()
            .await
            .unwrap();
        assert_eq!(session.id(), raw_session);
        assert_eq!(session.task_id(), Some(raw_task));
        assert_eq!(session.user_id(), Some("42"));
    }
}

#[tokio::test]
async fn session_round_trips_through_serde() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_session(
        &server,
        raw_json(
            200,
            r#"{"code":0,"data":{"task_id":"task-9","session_id":7301234567890123457,"user_id":"anon_1"}}"#,
        ),
    )
    .await;
    let session = fixed_client(&server, dir.path())
        .create_session()
        .await
        .unwrap();

    // As a string, a value, and a file: the ways a person stores a session to resume later.
    let text = serde_json::to_string(&session).unwrap();
    let back: Session = serde_json::from_str(&text).unwrap();
    assert_eq!(back, session);
    assert_eq!(back.id(), "7301234567890123457");

    let value = serde_json::to_value(&session).unwrap();
    assert_eq!(
        value["session_id"], "7301234567890123457",
        "stored as a string"
    );
    let back: Session = serde_json::from_value(value).unwrap();
    assert_eq!(back, session);

    let file = dir.path().join("session.json");
    std::fs::write(&file, serde_json::to_vec(&session).unwrap()).unwrap();
    let back: Session = serde_json::from_reader(std::fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(back, session);

    let minimal = Session::from_id("s-1");
    let back: Session = serde_json::from_str(&serde_json::to_string(&minimal).unwrap()).unwrap();
    assert_eq!(back, minimal);
}

#[tokio::test]
async fn claim_link_with_an_expiry_too_large_for_a_duration_does_not_panic() {
    // `Duration::from_secs_f64(1e300)` panics; a server's number must not crash the client.
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(CLAIM_PATH))
        .respond_with(ok(json!({"claim_token": "clm_abc", "expires_in": 1e300})))
        .mount(&server)
        .await;
    let session: Session =
        serde_json::from_str(r#"{"session_id":"7301234567890123457","task_id":"task-1"}"#).unwrap();
    let link = fixed_client(&server, dir.path())
        .claim_link(&session)
        .await
        .unwrap();
    assert_eq!(link.expires_in, Some(Duration::MAX));
}

#[tokio::test]
async fn claim_link_has_exact_wire_form_and_builds_the_browser_link() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(CLAIM_PATH))
        .respond_with(ok(json!({"claim_token": "clm_abc+/=", "expires_in": 3600})))
        .mount(&server)
        .await;
    let session: Session =
        serde_json::from_str(r#"{"session_id":"7301234567890123457","task_id":"task-1"}"#).unwrap();
    let link = fixed_client(&server, dir.path())
        .claim_link(&session)
        .await
        .unwrap();
    assert_eq!(
        link.url,
        format!("{WEB_URL}/workspace/claim?ct=clm_abc%2B%2F%3D"),
        "the claim token is query-encoded"
    );
    assert_eq!(link.expires_in, Some(Duration::from_secs(3600)));

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), CLAIM_PATH);
    assert_eq!(
        header(request, "authorization"),
        Some(format!("Bearer {FIXED_TOKEN}").as_str())
    );
    assert_eq!(header(request, "x-skill-source"), Some("video-object-ops"));
    assert_eq!(header(request, "x-skill-platform"), Some(PLATFORM));
    let body: Value = request.body_json().unwrap();
    assert_eq!(
        body,
        json!({"task_id": "task-1", "session_id": "7301234567890123457"})
    );
    assert!(
        !link.url.contains(FIXED_TOKEN),
        "the link never carries the API token"
    );
}

#[tokio::test]
async fn claim_link_without_task_id_is_refused_locally() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let err = fixed_client(&server, dir.path())
        .claim_link(&Session::from_id("s-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn credits_decode_and_use_the_anonymous_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(
        &server,
        ok(json!({"available": 100, "frozen": 0, "total": 100, "extra": "kept out"})),
    )
    .await;
    let credits = client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(credits.available, 100.0);
    assert_eq!(credits.frozen, 0.0);
    assert_eq!(credits.total, 100.0);
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method.as_str(), "GET");
    assert_eq!(
        header(&calls[0], "authorization"),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
}
