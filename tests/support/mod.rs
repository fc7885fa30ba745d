//! Shared helpers for the integration tests: a client pointed at a wiremock server with a
//! private config directory and fast retries, envelope builders, and request inspection.
#![allow(dead_code)]

pub mod examples;
pub mod net;

use std::path::Path;
use std::time::Duration;

use nemo_video::{NemoClient, NemoClientBuilder, RetryConfig};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The fixed client id every test client sends (a UUID, as the service expects).
pub const CLIENT_ID: &str = "0b7c6a52-3f0e-4d8e-9a51-6c2f1d9e8a01";
/// The anonymous token the default token mock hands out.
pub const ANON_TOKEN: &str = "nmv_usr_ANON_SECRET_4f9d2c";
/// The anonymous user id that comes with it.
pub const ANON_USER: &str = "anon_7f3e1a";
/// A fixed token for clients built with `.token(...)`.
pub const FIXED_TOKEN: &str = "nmv_usr_FIXED_SECRET_a81b";
/// The web URL test clients use for browser links.
pub const WEB_URL: &str = "https://web.nemo.test";
/// The platform attribution test clients send.
pub const PLATFORM: &str = "test-platform";

pub const TOKEN_PATH: &str = "/api/auth/anonymous-token";
pub const CREDITS_PATH: &str = "/api/credits/balance/simple";
pub const SESSION_PATH: &str = "/api/tasks/me/with-session/nemo_agent";
pub const CLAIM_PATH: &str = "/api/auth/claim-token";

/// Retries as in production (2), but 10 ms doubling instead of 0.5 s, no jitter.
pub fn fast_retry() -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.base_delay = Duration::from_millis(10);
    retry.max_delay = Duration::from_millis(40);
    retry.jitter = false;
    retry
}

/// A builder for a client that talks to `server`, persists into `dir`, and retries fast.
pub fn builder(server: &MockServer, dir: &Path) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(server.uri())
        .web_url(WEB_URL)
        .config_dir(dir)
        .client_id(CLIENT_ID)
        .skill_platform(PLATFORM)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .retry(fast_retry())
}

/// An anonymous-token client (no fixed token).
pub fn client(server: &MockServer, dir: &Path) -> NemoClient {
    builder(server, dir).build().expect("test client builds")
}

/// A client with the fixed token [`FIXED_TOKEN`]: no anonymous-token call involved.
pub fn fixed_client(server: &MockServer, dir: &Path) -> NemoClient {
    builder(server, dir)
        .token(FIXED_TOKEN)
        .build()
        .expect("test client builds")
}

/// A private temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// `{"code":0,"message":"success","data":<data>}` with HTTP 200.
pub fn ok(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"code": 0, "message": "success", "data": data}))
}

/// `{"code":<n>,"message":<msg>,"data":null}` with HTTP 200.
pub fn code(n: i64, msg: &str) -> ResponseTemplate {
    code_with_status(200, n, msg)
}

/// A body code with the given HTTP status.
pub fn code_with_status(status: u16, n: i64, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"code": n, "message": msg, "data": null}))
}

/// A raw JSON body (for numbers `serde_json::Value` cannot hold exactly).
pub fn raw_json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

/// The anonymous-token response for `token`.
pub fn token_response(token: &str) -> ResponseTemplate {
    ok(json!({
        "token": token,
        "user_id": ANON_USER,
        "expires_at": "2099-01-01T00:00:00Z",
        "credits": 100
    }))
}

pub fn credits_body() -> Value {
    json!({"available": 87.5, "frozen": 12.5, "total": 100})
}

/// Mounts the anonymous-token endpoint handing out [`ANON_TOKEN`] forever.
pub async fn mount_token(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(ANON_TOKEN))
        .mount(server)
        .await;
}

/// Mounts `GET /api/credits/balance/simple` answering `template` forever.
pub async fn mount_credits(server: &MockServer, template: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .respond_with(template)
        .mount(server)
        .await;
}

/// Every request the server received for `path_`, in order.
pub async fn requests_to(server: &MockServer, path_: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .into_iter()
        .filter(|request| request.url.path() == path_)
        .collect()
}

/// A header's value as text, if present.
pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
}

/// Asserts that no form of `err` a person or a log could see contains a token.
pub fn assert_no_token(err: &nemo_video::Error) {
    for shown in [format!("{err}"), format!("{err:?}"), format!("{err:#?}")] {
        for token in [ANON_TOKEN, FIXED_TOKEN, "nmv_usr_ANON_SECOND_77"] {
            assert!(!shown.contains(token), "token leaked into {shown:?}");
        }
    }
}
