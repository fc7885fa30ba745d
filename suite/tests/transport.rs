//! Transport behaviour seen from outside: headers on the wire, envelope decoding, the error
//! each signal becomes, retries and waits, request ids, and secrets kept out of output.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::mem::discriminant;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemo_video::{
    ApiCode, ConnectFailure, Error, NemoClient, NemoClientBuilder, RetryPolicy, Session,
    TimeoutKind,
};
use serde_json::json;
use support::mock::*;
use support::{eventually, fast_retry, net, tempdir};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Mounts `template` for the credits endpoint and returns the error `credits()` gives.
async fn credits_error(template: ResponseTemplate) -> (Error, usize) {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_credits(&server, template).await;
    let err = fixed_client(&server, dir.path())
        .credits()
        .await
        .expect_err("the call must fail");
    assert_no_token(&err);
    let count = requests_to(&server, CREDITS_PATH).await.len();
    (err, count)
}

// ---------------------------------------------------------------------------------------
// Wire form
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn credits_request_has_exact_wire_form() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_credits(&server, ok(credits_body())).await;

    let credits = fixed_client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(credits.available, 87.5);
    assert_eq!(credits.frozen, 12.5);
    assert_eq!(credits.total, 100.0);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests.len(),
        1,
        "one request, no token call for a fixed token"
    );
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "GET");
    assert_eq!(request.url.path(), CREDITS_PATH);
    assert_eq!(request.url.query(), None);
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
    let agent = header(request, "user-agent").unwrap();
    assert!(agent.contains("nemo-video"), "User-Agent {agent:?}");
    assert!(
        agent.contains(env!("NEMO_VIDEO_VERSION")),
        "User-Agent {agent:?}"
    );
    assert_eq!(
        header(request, "x-client-id"),
        None,
        "X-Client-Id only on the token call"
    );
    assert!(request.body.is_empty(), "a GET has no body");
}

#[tokio::test]
async fn attribution_headers_follow_the_builder() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_credits(&server, ok(credits_body())).await;
    let client = builder(&server, dir.path())
        .token(FIXED_TOKEN)
        .skill_source("my-skill")
        .skill_version("9.8.7")
        .skill_platform("cursor")
        .user_agent("my-app/1.0")
        .build()
        .unwrap();
    client.credits().await.unwrap();
    let request = &requests_to(&server, CREDITS_PATH).await[0];
    assert_eq!(header(request, "x-skill-source"), Some("my-skill"));
    assert_eq!(header(request, "x-skill-version"), Some("9.8.7"));
    assert_eq!(header(request, "x-skill-platform"), Some("cursor"));
    assert_eq!(header(request, "user-agent"), Some("my-app/1.0"));
}

// ---------------------------------------------------------------------------------------
// Error codes → variant and retry policy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn code_1001_with_http_200_is_unauthorized_and_asks_for_a_new_token() {
    let (err, count) = credits_error(code(1001, "token expired")).await;
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(matches!(err, nemo_video::Error::Unauthorized { .. }));
    assert_eq!(err.retry_policy(), RetryPolicy::RefreshToken);
    assert_eq!(err.api_code(), Some(ApiCode::TokenExpired));
    assert_eq!(err.http_status(), Some(200));
    assert_eq!(count, 1, "a fixed token is not replayed");
}

#[tokio::test]
async fn code_1001_with_http_401_is_unauthorized() {
    let (err, count) = credits_error(code_with_status(401, 1001, "token expired")).await;
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::RefreshToken);
    assert_eq!(err.api_code(), Some(ApiCode::TokenExpired));
    assert_eq!(err.http_status(), Some(401));
    assert_eq!(count, 1);
}

#[tokio::test]
async fn bare_http_401_is_unauthorized() {
    let (err, _) = credits_error(ResponseTemplate::new(401)).await;
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::RefreshToken);
}

#[tokio::test]
async fn code_1002_is_session_not_found_naming_the_session() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(CLAIM_PATH))
        .respond_with(code(1002, "session not found"))
        .mount(&server)
        .await;
    let session: Session =
        serde_json::from_str(r#"{"session_id":"s-404","task_id":"t-1"}"#).unwrap();
    let err = fixed_client(&server, dir.path())
        .claim_link(&session)
        .await
        .unwrap_err();
    match &err {
        Error::SessionNotFound { session_id, .. } => {
            assert_eq!(session_id.as_deref(), Some("s-404"))
        }
        other => panic!("expected SessionNotFound, got {other:?}"),
    }
    assert!(matches!(err, nemo_video::Error::SessionNotFound { .. }));
    assert_eq!(err.retry_policy(), RetryPolicy::NewSession);
    assert_eq!(err.api_code(), Some(ApiCode::SessionNotFound));
    assert!(err.to_string().contains("s-404"), "{err}");
    assert_eq!(requests_to(&server, CLAIM_PATH).await.len(), 1);
}

#[tokio::test]
async fn code_2001_is_no_credits_and_is_requested_exactly_once() {
    let (err, count) = credits_error(code(2001, "insufficient credits")).await;
    assert!(matches!(err, Error::NoCredits { .. }), "{err:?}");
    assert!(matches!(err, nemo_video::Error::NoCredits { .. }));
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(err.api_code(), Some(ApiCode::NoCredits));
    assert_eq!(count, 1, "2001 is never retried");
    // A fixed token is not an anonymous account: no registration link is invented.
    match &err {
        Error::NoCredits { register_url, .. } => assert_eq!(register_url, &None),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn code_2001_for_an_anonymous_user_carries_the_registration_link() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(&server, code(2001, "insufficient credits")).await;
    let client = client(&server, dir.path());
    let err = client.credits().await.unwrap_err();
    let expected = format!("{WEB_URL}/register?bind={ANON_USER}");
    match &err {
        Error::NoCredits { register_url, .. } => {
            assert_eq!(register_url.as_deref(), Some(expected.as_str()))
        }
        other => panic!("expected NoCredits, got {other:?}"),
    }
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(
        client.registration_url().await.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 1);
    assert_no_token(&err);
}

#[tokio::test]
async fn code_4001_is_unsupported_file() {
    let (err, count) = credits_error(code(4001, "unsupported format")).await;
    assert!(
        matches!(err, Error::UnsupportedFile { info: Some(_), .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(err.api_code(), Some(ApiCode::UnsupportedFile));
    assert!(err.to_string().contains("mp4"), "lists the formats: {err}");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn code_4002_is_file_too_large() {
    let (err, count) = credits_error(code(4002, "file too large")).await;
    assert!(
        matches!(err, Error::FileTooLarge { info: Some(_), .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(err.api_code(), Some(ApiCode::FileTooLarge));
    assert_eq!(count, 1);
}

#[tokio::test]
async fn http_402_is_export_blocked_and_not_retried() {
    let (err, count) = credits_error(
        ResponseTemplate::new(402).set_body_json(json!({"detail": "Payment Required"})),
    )
    .await;
    assert!(matches!(err, Error::ExportBlocked { .. }), "{err:?}");
    assert!(matches!(err, nemo_video::Error::ExportBlocked { .. }));
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(err.http_status(), Some(402));
    assert!(
        err.to_string().contains("register or upgrade"),
        "says what to do: {err}"
    );
    assert_eq!(count, 1);
}

#[tokio::test]
async fn http_429_without_a_wait_is_rate_limited_with_the_30s_default() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_credits(&server, ResponseTemplate::new(429)).await;
    // Refuse waits over 1 s so the test does not sleep the default 30 s.
    let mut retry = fast_retry();
    retry.max_server_wait = Duration::from_secs(1);
    let client = builder(&server, dir.path())
        .token(FIXED_TOKEN)
        .retry(retry)
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_rate_limited());
    assert_eq!(
        err.retry_policy(),
        RetryPolicy::WaitThenRetryOnce(Duration::from_secs(30))
    );
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 1);
}

#[tokio::test]
async fn http_429_with_a_wait_over_the_cap_fails_at_once_with_that_wait() {
    let start = Instant::now();
    let (err, count) =
        credits_error(ResponseTemplate::new(429).insert_header("Retry-After", "120")).await;
    // Half the wait: a limit no busy machine reaches, that a 120 s sleep cannot pass.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "did not sleep 120 s"
    );
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(120)),
        "{err:?}"
    );
    assert_eq!(
        err.retry_policy(),
        RetryPolicy::WaitThenRetryOnce(Duration::from_secs(120))
    );
    assert_eq!(count, 1);
}

#[tokio::test]
async fn http_429_with_a_wait_too_large_for_a_duration_fails_at_once_instead_of_panicking() {
    // `Duration::from_secs_f64(1e300)` panics; the client must treat the wait as "longer than
    // any cap" instead of crashing on a header.
    for (header, value) in [("Retry-After", "1e300"), ("retry-after-ms", "1e300")] {
        let start = Instant::now();
        let (err, count) =
            credits_error(ResponseTemplate::new(429).insert_header(header, value)).await;
        // Sleeping "forever" (or panicking) is the bug; any finite time on a busy machine is
        // far below this.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{header}: waited"
        );
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(wait), .. } if wait == Duration::MAX),
            "{header}: {err:?}"
        );
        assert_eq!(count, 1, "{header}: retried");
        assert!(err.to_string().contains("rate limited"), "{err}");
    }
}

#[tokio::test]
async fn unknown_body_code_is_kept() {
    let (err, count) = credits_error(code(7777, "quota shard offline")).await;
    match &err {
        Error::Api { code, info } => {
            assert_eq!(*code, 7777);
            assert_eq!(info.code, Some(7777));
            assert_eq!(info.message.as_deref(), Some("quota shard offline"));
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert_eq!(err.api_code(), Some(ApiCode::Other(7777)));
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert!(err.to_string().contains("7777"), "{err}");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn http_500_and_503_are_transient_and_retried_for_a_get() {
    for status in [500u16, 503] {
        let (err, count) = credits_error(ResponseTemplate::new(status)).await;
        assert!(
            matches!(err, Error::Http { status: s, .. } if s == status),
            "{status}: {err:?}"
        );
        assert_eq!(err.retry_policy(), RetryPolicy::Backoff, "{status}");
        assert!(matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ));
        assert_eq!(count, 3, "{status}: first attempt plus 2 retries");
    }
}

#[tokio::test]
async fn body_code_decodes_the_same_with_http_200_and_4xx() {
    for (n, status) in [
        (1002, 404u16),
        (2001, 402),
        (2001, 403),
        (4001, 400),
        (4002, 413),
        (7777, 400),
    ] {
        let (with_200, _) = credits_error(code(n, "same text")).await;
        let (with_4xx, _) = credits_error(code_with_status(status, n, "same text")).await;
        assert_eq!(
            discriminant(&with_200),
            discriminant(&with_4xx),
            "code {n}: {with_200:?} vs {with_4xx:?}"
        );
        assert_eq!(with_200.api_code(), with_4xx.api_code(), "code {n}");
        assert_eq!(
            with_200.retry_policy(),
            with_4xx.retry_policy(),
            "code {n} with HTTP {status}"
        );
        assert_eq!(with_4xx.http_status(), Some(status));
    }
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_503_then_200_succeeds_after_exactly_two_requests() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let credits = fixed_client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(credits.available, 87.5);
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 2);
}

#[tokio::test]
async fn post_that_got_503_is_not_replayed() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(SESSION_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(SESSION_PATH))
        .respond_with(ok(json!({"task_id": "t1", "session_id": "s1"})))
        .mount(&server)
        .await;
    let err = fixed_client(&server, dir.path())
        .create_session()
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(503), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::Reconcile, "{err:?}");
    assert!(
        !matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ),
        "a caller must not be told to retry it"
    );
    assert_eq!(
        requests_to(&server, SESSION_PATH).await.len(),
        1,
        "creating a session twice would make two projects"
    );
}

#[tokio::test]
async fn http_429_retry_after_seconds_is_waited_then_one_retry() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let start = Instant::now();
    let credits = fixed_client(&server, dir.path()).credits().await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(credits.total, 100.0);
    assert!(
        elapsed >= Duration::from_millis(900),
        "waited only {elapsed:?}"
    );
    // Not the 30 s default: a bound no busy machine reaches.
    assert!(elapsed < Duration::from_secs(20), "waited {elapsed:?}");
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 2);
}

#[tokio::test]
async fn http_429_retry_after_ms_is_honoured_before_retry_after() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after-ms", "300")
                // Ignored in favour of retry-after-ms; would make the test take 30 s.
                .insert_header("Retry-After", "30"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let start = Instant::now();
    fixed_client(&server, dir.path()).credits().await.unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(270),
        "waited only {elapsed:?}"
    );
    // Not the `Retry-After: 30`: a bound no busy machine reaches.
    assert!(elapsed < Duration::from_secs(20), "waited {elapsed:?}");
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 2);
}

#[tokio::test]
async fn post_that_got_429_is_replayed_once_since_nothing_was_done() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(SESSION_PATH))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after-ms", "50"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(SESSION_PATH))
        .respond_with(ok(json!({"task_id": "t1", "session_id": "s1"})))
        .mount(&server)
        .await;
    let session = fixed_client(&server, dir.path())
        .create_session()
        .await
        .unwrap();
    assert_eq!(session.id(), "s1");
    assert_eq!(requests_to(&server, SESSION_PATH).await.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Envelopes and odd bodies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_text_502_is_an_http_error_retried_for_a_get() {
    let (err, count) = credits_error(
        ResponseTemplate::new(502)
            .set_body_raw(b"<html>502 Bad Gateway</html>".to_vec(), "text/html"),
    )
    .await;
    match &err {
        Error::Http { status, info } => {
            assert_eq!(*status, 502);
            assert!(
                info.message
                    .as_deref()
                    .unwrap_or("")
                    .contains("Bad Gateway"),
                "{info:?}"
            );
        }
        other => panic!("expected Http 502, got {other:?}"),
    }
    assert_eq!(err.retry_policy(), RetryPolicy::Backoff);
    assert_eq!(count, 3, "retried twice, then the error");
}

#[tokio::test]
async fn success_false_envelope_is_rejected_with_the_reason() {
    let (err, count) = credits_error(
        ResponseTemplate::new(200).set_body_json(json!({"success": false, "error": "x"})),
    )
    .await;
    match &err {
        Error::Rejected { info } => assert_eq!(info.message.as_deref(), Some("x")),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn fastapi_detail_with_422_is_http_422_with_the_message() {
    let (err, count) = credits_error(
        ResponseTemplate::new(422).set_body_json(json!({"detail": "field required: task_name"})),
    )
    .await;
    match &err {
        Error::Http { status, info } => {
            assert_eq!(*status, 422);
            assert_eq!(info.message.as_deref(), Some("field required: task_name"));
        }
        other => panic!("expected Http 422, got {other:?}"),
    }
    assert!(
        err.to_string().contains("field required: task_name"),
        "{err}"
    );
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn data_without_an_envelope_code_is_decoded() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_credits(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": credits_body()})),
    )
    .await;
    let credits = fixed_client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(credits.available, 87.5);
    assert_eq!(credits.frozen, 12.5);
    assert_eq!(credits.total, 100.0);
}

#[tokio::test]
async fn success_true_envelope_and_bare_object_are_decoded() {
    for body in [
        json!({"success": true, "data": credits_body()}),
        credits_body(),
        json!({"code": "0", "msg": "ok", "data": credits_body()}),
    ] {
        let server = MockServer::start().await;
        let dir = tempdir();
        mount_credits(&server, ResponseTemplate::new(200).set_body_json(&body)).await;
        let credits = fixed_client(&server, dir.path()).credits().await.unwrap();
        assert_eq!(credits.available, 87.5, "{body}");
    }
}

#[tokio::test]
async fn request_id_is_captured_from_the_response() {
    let (err, _) = credits_error(
        code_with_status(402, 2001, "insufficient credits")
            .insert_header("x-request-id", "req-abc-123"),
    )
    .await;
    assert!(
        matches!(err, nemo_video::Error::NoCredits { .. }),
        "{err:?}"
    );
    assert_eq!(err.request_id(), Some("req-abc-123"));
    assert!(
        err.to_string().contains("req-abc-123"),
        "quoted for support: {err}"
    );
}

// ---------------------------------------------------------------------------------------
// Secrets and connection failures
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_never_appears_in_client_debug() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let fixed = fixed_client(&server, dir.path());
    for shown in [format!("{fixed:?}"), format!("{fixed:#?}")] {
        assert!(!shown.contains(FIXED_TOKEN), "{shown}");
        assert!(shown.contains("***"), "the token is shown masked: {shown}");
    }
    // The configuration no longer holds the token (the identity does).
    let shown = format!("{:?}", fixed.config());
    assert!(!shown.contains(FIXED_TOKEN), "{shown}");
    let shown = format!("{:?}", builder(&server, dir.path()).token(FIXED_TOKEN));
    assert!(!shown.contains(FIXED_TOKEN), "{shown}");

    // An anonymous client, after it fetched and holds its token.
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let anonymous = client(&server, dir.path());
    anonymous.credits().await.unwrap();
    let creds = anonymous.anonymous_credentials().await.unwrap();
    assert_eq!(creds.token.expose(), ANON_TOKEN);
    for shown in [
        format!("{anonymous:?}"),
        format!("{creds:?}"),
        format!("{}", creds.token),
    ] {
        assert!(!shown.contains(ANON_TOKEN), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------
// Connect failures: the cause in the message, and the documented number of attempts
// ---------------------------------------------------------------------------------------

/// A fixed-token builder (no token call) for `base_url` with production retries (2) made
/// fast. The request timeout (which covers connecting too) is far above `connect_timeout`
/// and anything a busy machine needs, so only the limit a test is about can fire: with 300
/// and 400 ms, a slow start of the connect let the request timeout win.
fn connect_builder(base_url: &str, connect_timeout: Duration) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(base_url)
        .no_persistence()
        .token(FIXED_TOKEN)
        .retry(fast_retry())
        .connect_timeout(connect_timeout)
        .request_timeout(Duration::from_secs(30))
}

/// [`connect_builder`], built.
fn connect_client(base_url: &str, connect_timeout: Duration) -> NemoClient {
    connect_builder(base_url, connect_timeout).build().unwrap()
}

#[tokio::test]
async fn refused_connection_names_host_and_port_after_three_attempts() {
    let closed = net::closed_port();
    let port = closed.port();
    let client = connect_client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));

    let (result, attempts) = net::count_attempts(client.credits()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 3, "1 + RetryConfig::max_retries (2): {err}");
    assert_eq!(
        err.connect_failure(),
        Some(ConnectFailure::Refused),
        "{err:?}"
    );
    assert!(matches!(err, nemo_video::Error::Connect { .. }) && !err.is_timeout());
    assert!(err.never_reached_server());
    assert_eq!(err.retry_policy(), RetryPolicy::Backoff);
    assert!(
        matches!(&err, Error::Connect { host, port: Some(p), .. } if host == "127.0.0.1" && *p == port),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "could not connect to 127.0.0.1:{port}: the connection was refused"
        )),
        "{text}"
    );
    assert!(!text.contains("error sending request"), "{text}");
    assert_no_token(&err);

    // Creating a session is not idempotent, but a request that never connected is safe to
    // send again: the same three attempts and the same error.
    let (result, attempts) = net::count_attempts(client.create_session()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 3);
    assert_eq!(
        err.connect_failure(),
        Some(ConnectFailure::Refused),
        "{err:?}"
    );
}

#[tokio::test]
async fn failed_name_lookup_is_named_after_three_attempts() {
    // `.invalid` never resolves (RFC 2606), with or without a network.
    let client = connect_client("http://nemo-sdk-test.invalid:8080", Duration::from_secs(5));

    let (result, attempts) = net::count_attempts(client.credits()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 3, "{err}");
    assert_eq!(
        err.connect_failure(),
        Some(ConnectFailure::NameLookup),
        "{err:?}"
    );
    assert!(err.never_reached_server());
    let text = err.to_string();
    assert!(
        text.starts_with(
            "could not connect to nemo-sdk-test.invalid:8080: the name lookup (DNS) for nemo-sdk-test.invalid failed"
        ),
        "{text}"
    );
    assert!(text.contains("check the host name"), "{text}");
}

#[tokio::test]
async fn failed_name_lookup_through_a_custom_resolver_is_named_too() {
    // The same classification when the lookup fails in the app's own resolver.
    struct NoSuchHost(Arc<AtomicUsize>);
    impl reqwest::dns::Resolve for NoSuchHost {
        fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            self.0.fetch_add(1, Ordering::SeqCst);
            let message = format!("no such host: {}", name.as_str());
            Box::pin(async move { Err(message.into()) })
        }
    }
    let lookups = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .dns_resolver(Arc::new(NoSuchHost(Arc::clone(&lookups))))
        .build()
        .unwrap();
    let client = NemoClient::builder()
        .base_url("http://api.nemo.test")
        .no_persistence()
        .token(FIXED_TOKEN)
        .retry(fast_retry())
        .http_client(http)
        .build()
        .unwrap();

    let err = client.credits().await.unwrap_err();
    assert_eq!(lookups.load(Ordering::SeqCst), 3, "one lookup per attempt");
    assert_eq!(
        err.connect_failure(),
        Some(ConnectFailure::NameLookup),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            "the name lookup (DNS) for api.nemo.test failed (no such host: api.nemo.test)"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn handshake_that_never_completes_reports_the_connect_timeout() {
    let stuck = net::StuckPort::start().await;
    let client = connect_client(
        &format!("http://{}", stuck.address()),
        Duration::from_millis(300),
    );

    let (result, attempts) = net::count_attempts(client.credits()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 3, "{err}");
    assert_eq!(
        err.connect_failure(),
        Some(ConnectFailure::TimedOut {
            after: Some(Duration::from_millis(300))
        }),
        "{err:?}"
    );
    assert!(
        err.is_timeout()
            && matches!(err, nemo_video::Error::Connect { .. })
            && err.never_reached_server()
    );
    assert_eq!(
        err.to_string(),
        format!(
            "could not connect to {}: no connection within the connect timeout of 0.3 s; check the network connection, the base URL (NEMO_API_BASE), and any firewall or proxy in between",
            stuck.address()
        )
    );

    // Not idempotent, but it never connected: retried the same way.
    let (result, attempts) = net::count_attempts(client.create_session()).await;
    assert_eq!(attempts, 3);
    assert!(result.unwrap_err().is_timeout());
}

#[tokio::test]
async fn server_that_never_answers_reports_the_request_timeout() {
    let silent = net::LoopbackServer::silent();
    // The request timeout is what this test is about; the server accepts at once.
    let client = connect_builder(
        &format!("http://{}", silent.address()),
        Duration::from_secs(2),
    )
    .request_timeout(Duration::from_millis(400))
    .build()
    .unwrap();

    // A read is safe to replay: three attempts, each on its own connection.
    let (result, attempts) = net::count_attempts(client.credits()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 3, "{err}");
    // The server's thread counts a connection when it accepts it, maybe after the client
    // gave up on it.
    assert!(eventually(Duration::from_secs(30), || silent.accepted() >= 3).await);
    assert_eq!(silent.accepted(), 3);
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: TimeoutKind::Request,
                after,
            } if after == Duration::from_millis(400)
        ),
        "{err:?}"
    );
    assert_eq!(err.connect_failure(), None);
    assert!(!err.never_reached_server());
    assert_eq!(
        err.to_string(),
        "the service did not answer within 0.4 s (the request timeout); it may be busy: try again later, or raise the request timeout"
    );

    // Creating a session may have reached the service: sent once, never repeated.
    let (result, attempts) = net::count_attempts(client.create_session()).await;
    assert_eq!(attempts, 1);
    assert!(result.unwrap_err().is_timeout());
    assert!(eventually(Duration::from_secs(30), || silent.accepted() >= 4).await);
    assert_eq!(silent.accepted(), 4);
}

#[tokio::test]
async fn tls_failure_is_named_and_not_retried() {
    // An `https` URL pointing at a plain-HTTP port: the handshake gets an HTTP answer.
    let plain = net::LoopbackServer::plain_http();
    let client = connect_client(
        &format!("https://{}", plain.address()),
        Duration::from_secs(2),
    );

    let (result, attempts) = net::count_attempts(client.credits()).await;
    let err = result.unwrap_err();
    assert_eq!(attempts, 1, "a TLS failure does not fix itself: {err}");
    assert_eq!(err.connect_failure(), Some(ConnectFailure::Tls), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert!(err.never_reached_server());
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "could not set up a secure (TLS) connection to {}: ",
            plain.address()
        )),
        "{text}"
    );
    assert!(
        text.contains("uses the right scheme (https or http)"),
        "{text}"
    );
    assert_no_token(&err);
}

// ---------------------------------------------------------------------------------------
// Memory per call in flight
// ---------------------------------------------------------------------------------------

/// A server holds one of these futures for each user with a call in flight, and `run_turn`'s
/// for the whole stream, so they stay small: the retry loop is boxed. Inline, a state read's
/// future was 2.2 KiB and a turn's 3.8 KiB (`examples/server_scale.rs` measures the effect).
#[test]
fn futures_of_calls_stay_small() {
    let client = NemoClient::builder()
        .base_url("http://127.0.0.1:9")
        .no_persistence()
        .build()
        .unwrap();
    let session = Session::from_id("1");
    let sizes = [
        (
            "state",
            std::mem::size_of_val(&client.state(&session)),
            1024,
        ),
        ("credits", std::mem::size_of_val(&client.credits()), 1024),
        (
            "create_session",
            std::mem::size_of_val(&client.create_session()),
            1024,
        ),
        (
            "send_message",
            std::mem::size_of_val(&client.send_message(&session, "hi")),
            1536,
        ),
        (
            "run_turn",
            std::mem::size_of_val(&client.run_turn(&session, "hi")),
            3072,
        ),
    ];
    for (call, size, limit) in sizes {
        assert!(
            size <= limit,
            "{call}'s future is {size} bytes (limit {limit})"
        );
    }
}

/// A call reads its response to the end, so its connection goes back to the pool and the
/// next call uses it instead of opening another.
#[tokio::test]
async fn calls_one_after_another_reuse_one_connection() {
    let server = MockServer::start().await;
    mount_credits(&server, ok(credits_body())).await;
    let front = ConnectionCounter::start(&server.uri()).await;
    let client = support::client_builder(&front.url)
        .token(FIXED_TOKEN)
        .no_persistence()
        .build()
        .unwrap();
    for _ in 0..5 {
        client.credits().await.unwrap();
    }
    assert_eq!(received(&server).await.len(), 5);
    assert_eq!(
        front.connections(),
        1,
        "five calls in a row opened more than one connection"
    );
}

/// A TCP front on loopback that forwards every connection to `upstream` and counts them.
struct ConnectionCounter {
    url: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionCounter {
    async fn start(upstream: &str) -> ConnectionCounter {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        ConnectionCounter {
            url,
            accepted,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
