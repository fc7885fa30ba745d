//! Clients pointed at a wiremock `MockServer` (with a private config directory, or a fixed
//! token and no persistence), envelope builders, mounts for the usual endpoints, and request
//! inspection.

use std::path::Path;

use nemo_video::{NemoClient, NemoClientBuilder};
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
pub use super::{PLATFORM, WEB_URL};

pub const TOKEN_PATH: &str = "/api/auth/anonymous-token";
pub const CREDITS_PATH: &str = "/api/credits/balance/simple";
pub const SESSION_PATH: &str = "/api/tasks/me/with-session/nemo_agent";
pub const CLAIM_PATH: &str = "/api/auth/claim-token";

/// A builder for a client that talks to `server`, persists into `dir`, and retries fast.
pub fn builder(server: &MockServer, dir: &Path) -> NemoClientBuilder {
    super::client_builder(&server.uri())
        .web_url(WEB_URL)
        .config_dir(dir)
        .client_id(CLIENT_ID)
        .skill_platform(PLATFORM)
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

/// A builder for a client of `server` with the fixed token [`FIXED_TOKEN`] that persists
/// nothing.
pub fn token_builder(server: &MockServer) -> NemoClientBuilder {
    super::client_builder(&server.uri())
        .token(FIXED_TOKEN)
        .no_persistence()
}

/// A client of `server` (see [`token_builder`]).
pub fn token_client(server: &MockServer) -> NemoClient {
    token_builder(server).build().expect("test client builds")
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

/// Every request the server received, in order.
pub async fn received(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

/// A header's value as text, if present.
pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
}

/// Asserts the fixed bearer token and the attribution headers are on `request`.
pub fn assert_api_headers(request: &Request) {
    let bearer = format!("Bearer {FIXED_TOKEN}");
    assert_eq!(
        header(request, "authorization"),
        Some(bearer.as_str()),
        "Authorization header"
    );
    assert_eq!(
        header(request, "x-skill-source"),
        Some("video-object-ops"),
        "X-Skill-Source"
    );
    assert_eq!(
        header(request, "x-skill-version"),
        Some(env!("NEMO_VIDEO_VERSION")),
        "X-Skill-Version"
    );
    assert!(
        header(request, "x-skill-platform").is_some_and(|v| !v.is_empty()),
        "X-Skill-Platform"
    );
}

/// Asserts that no form of `err` a person or a log could see contains a token.
pub fn assert_no_token(err: &nemo_video::Error) {
    for shown in [format!("{err}"), format!("{err:?}"), format!("{err:#?}")] {
        for token in [ANON_TOKEN, FIXED_TOKEN, "nmv_usr_ANON_SECOND_77"] {
            assert!(!shown.contains(token), "token leaked into {shown:?}");
        }
    }
}

/// The [`Export`](nemo_video::render::Export) of a finished render, as
/// `wait_for_render` returns it: render `id` of session `session_id`, its output at
/// `output_url` (`None`: the service gave no URL, so a download uses the API's download
/// endpoint). It is asked of a mock server of its own, started and dropped here, whose
/// status endpoint answers "completed" with that URL, so the servers a test watches see only
/// what the test does with the export (a download).
pub async fn finished_export(
    id: &str,
    session_id: &str,
    output_url: Option<&str>,
) -> nemo_video::render::Export {
    let status = MockServer::start().await;
    let mut data = json!({"id": id, "status": "completed", "progress": 100});
    if let Some(url) = output_url {
        data["outputUrl"] = json!(url);
    }
    Mock::given(method("GET"))
        .and(path(format!("/api/render/proxy/lambda/{id}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": data})),
        )
        .mount(&status)
        .await;
    let export = token_client(&status)
        .wait_for_render(
            &nemo_video::render::RenderJob::from_id(id, session_id),
            &nemo_video::render::WaitOptions::default(),
        )
        .await
        .expect("the status server says the render is complete");
    assert_eq!(export.output_url(), output_url);
    export
}
