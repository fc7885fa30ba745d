//! Listeners, routing and the endpoint handlers.
//!
//! Order of checks on every request: record it → unknown path (404 `{"detail"}`) → injected
//! fault → wrong method (405) → read the body → bearer token (401, code 1001) → the endpoint's
//! own validation. Handlers never panic on input: malformed requests get 400/422 JSON.

// Handlers return early with a ready response; a request builds at most one, so its size on
// the error path costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::agent::{self, StreamFaults};
use super::body::{SimBody, Step};
use super::log::{self, RecordedBody, RecordedPart};
use super::multipart;
use super::state::{
    iso8601_after, random_hex, random_session_id, Fnv64, Render, RenderPhase, Session, Shared,
    Token, TurnGuard, User,
};
use super::{Endpoint, Failure, RecordedRequest, StatusShape, SAMPLE_INPUT_MP4, SAMPLE_OUTPUT_MP4};

type Resp = Response<SimBody>;

/// Largest JSON request body read into memory.
const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

const VIDEO_EXTS: &[&str] = &["mp4", "mov", "avi", "webm", "mkv"];
const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "gif", "webp"];
const AUDIO_EXTS: &[&str] = &["mp3", "wav", "m4a", "aac"];
const SUPPORTED: &str = "mp4, mov, avi, webm, mkv, jpg, png, gif, webp, mp3, wav, m4a, aac";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Api,
    Cdn,
}

/// Accepts connections until the task is aborted; dropping this future closes the listener
/// and cancels every connection it spawned.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, origin: Origin) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone(), origin));
                }
                Err(err) => {
                    tracing::warn!(%err, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, origin: Origin) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, origin, req).await) }
    });
    if let Err(err) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "simulator connection ended with an error");
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    AnonymousToken,
    CreateSession,
    RunSse,
    Upload(String),
    Credits,
    State(String),
    RenderSubmit,
    RenderStatus(String),
    RenderCancel(String),
    RenderDownload(String),
    ClaimToken,
    CdnOutput(String),
    /// An uploaded file on the CDN, by content hash.
    CdnUpload(String),
}

impl Route {
    fn endpoint(&self) -> Option<Endpoint> {
        Some(match self {
            Route::AnonymousToken => Endpoint::AnonymousToken,
            Route::CreateSession => Endpoint::CreateSession,
            Route::RunSse => Endpoint::RunSse,
            Route::Upload(_) => Endpoint::Upload,
            Route::Credits => Endpoint::Credits,
            Route::State(_) => Endpoint::State,
            Route::RenderSubmit => Endpoint::RenderSubmit,
            Route::RenderStatus(_) => Endpoint::RenderStatus,
            Route::RenderCancel(_) => Endpoint::RenderCancel,
            Route::RenderDownload(_) => Endpoint::RenderDownload,
            Route::ClaimToken => Endpoint::ClaimToken,
            Route::CdnOutput(_) => Endpoint::CdnOutput,
            Route::CdnUpload(_) => return None,
        })
    }

    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Credits
            | Route::State(_)
            | Route::RenderStatus(_)
            | Route::RenderDownload(_) => method == Method::GET,
            Route::CdnOutput(_) | Route::CdnUpload(_) => {
                method == Method::GET || method == Method::HEAD
            }
            _ => method == Method::POST,
        }
    }

    fn is_render(&self) -> bool {
        matches!(
            self,
            Route::RenderSubmit
                | Route::RenderStatus(_)
                | Route::RenderCancel(_)
                | Route::RenderDownload(_)
        )
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_owned())
}

fn route(origin: Origin, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let d = percent_decode;
    Some(match (origin, segments.as_slice()) {
        (Origin::Cdn, ["renders", file]) => Route::CdnOutput(d(file.strip_suffix(".mp4")?)),
        (Origin::Cdn, ["uploads", _session, hash, _name]) => Route::CdnUpload(d(hash)),
        (Origin::Cdn, _) => return None,
        (_, ["api", "auth", "anonymous-token"]) => Route::AnonymousToken,
        (_, ["api", "auth", "claim-token"]) => Route::ClaimToken,
        (_, ["api", "tasks", "me", "with-session", "nemo_agent"]) => Route::CreateSession,
        (_, ["run_sse"]) => Route::RunSse,
        (_, ["api", "upload-video", "nemo_agent", "me", sid]) => Route::Upload(d(sid)),
        (_, ["api", "credits", "balance", "simple"]) => Route::Credits,
        (_, ["api", "state", "nemo_agent", "me", sid, "latest"]) => Route::State(d(sid)),
        (_, ["api", "render", "proxy", "lambda"]) => Route::RenderSubmit,
        (_, ["api", "render", "proxy", "lambda", id]) => Route::RenderStatus(d(id)),
        (_, ["api", "render", "proxy", "lambda", id, "cancel"]) => Route::RenderCancel(d(id)),
        (_, ["api", "render", "proxy", id, "download"]) => Route::RenderDownload(d(id)),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Responses

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(code: StatusCode, value: &Value) -> Resp {
    let mut resp = Response::new(SimBody::full(value.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn ok(data: Value) -> Resp {
    json_response(
        StatusCode::OK,
        &json!({"code": 0, "message": "ok", "data": data}),
    )
}

fn code_error(http: u16, code: i64, message: &str) -> Resp {
    json_response(status(http), &json!({"code": code, "message": message}))
}

fn render_ok(data: Value) -> Resp {
    json_response(StatusCode::OK, &json!({"success": true, "data": data}))
}

fn render_error(http: u16, error: &str) -> Resp {
    json_response(status(http), &json!({"success": false, "error": error}))
}

fn detail(http: u16, detail: Value) -> Resp {
    json_response(status(http), &json!({"detail": detail}))
}

/// A FastAPI-style validation error.
fn unprocessable(message: &str) -> Resp {
    detail(
        422,
        json!([{"type": "value_error", "loc": ["body"], "msg": message, "input": null}]),
    )
}

fn message_for(code: i64) -> &'static str {
    match code {
        1001 => "token invalid or expired",
        1002 => "session not found",
        2001 => "insufficient credits",
        4001 => "unsupported file type",
        4002 => "file too large",
        _ => "simulated failure",
    }
}

fn failure_response(failure: Failure, render: bool) -> Resp {
    match failure {
        Failure::Status(code) if render => render_error(code, "simulated failure"),
        Failure::Status(code) => code_error(code, i64::from(code), "simulated failure"),
        Failure::Code { http, code } => code_error(http, code, message_for(code)),
        Failure::PlainText { status: code, body } => {
            let mut resp = Response::new(SimBody::full(body));
            *resp.status_mut() = status(code);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        Failure::RetryAfter { status: code, secs } => {
            let message = if code == 429 {
                "rate limited, retry later"
            } else {
                "service unavailable, retry later"
            };
            let mut resp = if render {
                render_error(code, message)
            } else {
                code_error(code, i64::from(code), message)
            };
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            resp
        }
        Failure::CloseConnection => {
            let mut resp = Response::new(SimBody::scheduled([
                Step::Send(Bytes::from_static(b"{\"code\":0,\"message\":\"ok\",\"da")),
                agent::abort()[0].clone(),
                Step::Abort,
            ]));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("256"));
            resp
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request plumbing

struct Ctx<'a> {
    shared: &'a Shared,
    /// The request's number in the log.
    seq: u64,
    headers: HeaderMap,
}

impl Ctx<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn set_body_len(&self, len: u64) {
        let body = (len > 0).then(|| RecordedBody::Summary {
            content_type: self.header("content-type").map(str::to_owned),
            bytes: len,
        });
        self.set_body(len, body);
    }

    /// Records what was read of the body, while the log still holds the request.
    fn set_body(&self, len: u64, body: Option<RecordedBody>) {
        self.shared.with(|inner| {
            if let Some(r) = inner.log.get_mut(self.seq) {
                r.body_len = len;
                r.body = body;
            }
        });
    }

    /// The user id behind a valid bearer token.
    fn authenticate(&self) -> Result<String, Resp> {
        let token = self
            .header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let user = token.and_then(|token| {
            self.shared.with(|inner| {
                inner
                    .tokens
                    .get(token)
                    .filter(|t| t.is_valid())
                    .map(|t| t.user_id.clone())
            })
        });
        user.ok_or_else(|| code_error(401, 1001, "token invalid or expired"))
    }

    /// Reads a whole (bounded) body.
    async fn read_body(&self, mut body: Incoming) -> Result<Bytes, Resp> {
        let mut buf = Vec::new();
        let mut too_large = false;
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| detail(400, json!("request body could not be read")))?;
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if buf.len() + data.len() > MAX_JSON_BODY {
                    too_large = true;
                } else if !too_large {
                    buf.extend_from_slice(&data);
                }
            }
        }
        let logged = if self.shared.config.request_log_size > 0 {
            log::logged_body(self.header("content-type"), &buf, seen)
        } else {
            None
        };
        self.set_body(seen, logged);
        if too_large {
            return Err(detail(413, json!("request body too large")));
        }
        Ok(Bytes::from(buf))
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Resp> {
    if body.is_empty() {
        return Err(unprocessable("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| unprocessable(&format!("JSON decode error: {e}")))
}

/// A header value as the log keeps it: secrets replaced, tokens inside other values cut.
fn logged_header(name: &str, value: &HeaderValue) -> String {
    if name == header::AUTHORIZATION {
        let raw = value.to_str().unwrap_or("");
        return if raw.len() >= 7 && raw[..7].eq_ignore_ascii_case("bearer ") {
            "Bearer ***".to_owned()
        } else {
            "***".to_owned()
        };
    }
    if log::is_secret_name(name) {
        return "***".to_owned();
    }
    log::scrub(&String::from_utf8_lossy(value.as_bytes()))
}

/// Counts the request, and logs it; returns its number in the log.
fn record(
    shared: &Shared,
    origin: Origin,
    req: &Request<Incoming>,
    endpoint: Option<Endpoint>,
) -> u64 {
    let headers = req.headers();
    let has_authorization = headers.contains_key(header::AUTHORIZATION);
    let named_client = (endpoint == Some(Endpoint::AnonymousToken)).then(|| {
        headers
            .get("x-client-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    });
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .map(str::trim);
    // Built before the lock is taken: requests on other connections wait only for the
    // counting and the push.
    let entry = (shared.config.request_log_size > 0).then(|| RecordedRequest {
        seq: 0,
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        endpoint,
        client_id: None,
        headers: headers
            .iter()
            .map(|(name, value)| {
                let logged = logged_header(name.as_str(), value);
                (name.as_str().to_owned(), logged)
            })
            .collect(),
        has_authorization,
        body_len: 0,
        body: None,
    });
    shared.with(|inner| {
        let client_id = named_client.or_else(|| {
            let user = &inner.tokens.get(bearer?)?.user_id;
            inner.tally.client_of(user).map(str::to_owned)
        });
        inner.tally.request(
            endpoint,
            client_id.as_deref(),
            origin == Origin::Cdn && has_authorization,
        );
        inner
            .log
            .push(entry.map(|entry| RecordedRequest { client_id, ..entry }))
    })
}

pub(super) async fn handle(shared: &Arc<Shared>, origin: Origin, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    if origin == Origin::Api && super::admin::is_admin_path(&path) {
        return super::admin::handle(shared, req).await;
    }
    let route = route(origin, &path);
    let seq = record(
        shared,
        origin,
        &req,
        route.as_ref().and_then(Route::endpoint),
    );
    let mut resp = match route {
        None if origin == Origin::Cdn => cdn_not_found(),
        None => detail(404, json!("Not Found")),
        Some(route) => dispatch(shared, seq, route, req).await,
    };
    let request_id = format!("req_{}", random_hex(24));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}

async fn dispatch(shared: &Shared, seq: u64, route: Route, req: Request<Incoming>) -> Resp {
    let failure = route
        .endpoint()
        .and_then(|endpoint| shared.with(|inner| inner.take_failure(endpoint)));
    let (parts, body) = req.into_parts();
    if let Some(failure) = failure {
        tracing::debug!(endpoint = ?route.endpoint(), ?failure, "injected failure");
        return failure_response(failure, route.is_render());
    }
    if !route.allows(&parts.method) {
        return detail(405, json!("Method Not Allowed"));
    }
    let ctx = Ctx {
        shared,
        seq,
        headers: parts.headers,
    };
    if let Route::Upload(sid) = &route {
        return upload(&ctx, sid, body).await;
    }
    let body = match ctx.read_body(body).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    match route {
        Route::AnonymousToken => {
            // Issued at once, answered late: a client that gives up meanwhile has lost a
            // token the service counts as this week's.
            let answer = anonymous_token(&ctx);
            let delay = shared.config.token_answer_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        }
        Route::CdnOutput(id) => cdn_output(&ctx, &id, parts.method == Method::HEAD),
        Route::CdnUpload(hash) => cdn_upload(&ctx, &hash, parts.method == Method::HEAD),
        route => {
            let user = match ctx.authenticate() {
                Ok(user) => user,
                Err(resp) => return resp,
            };
            match route {
                Route::CreateSession => create_session(&ctx, &user, &body),
                Route::RunSse => run_sse(&ctx, &user, &body),
                Route::Credits => credits(&ctx, &user),
                Route::State(sid) => session_state(&ctx, &user, &sid),
                Route::RenderSubmit => render_submit(&ctx, &user, &body),
                Route::RenderStatus(id) => render_status(&ctx, &user, &id),
                Route::RenderCancel(id) => render_cancel(&ctx, &user, &id),
                Route::RenderDownload(id) => render_download(&ctx, &user, &id),
                Route::ClaimToken => claim_token(&ctx, &user, &body),
                Route::AnonymousToken
                | Route::CdnOutput(_)
                | Route::CdnUpload(_)
                | Route::Upload(_) => detail(404, json!("Not Found")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn anonymous_token(ctx: &Ctx<'_>) -> Resp {
    let client_id = ctx.header("x-client-id").map(str::trim).unwrap_or("");
    if client_id.is_empty() {
        return code_error(400, 400, "missing X-Client-Id");
    }
    if client_id.chars().count() > 64 {
        return code_error(400, 400, "X-Client-Id must be at most 64 characters");
    }
    let config = &ctx.shared.config;
    let issued = ctx.shared.with(|inner| {
        // The service's rule: one anonymous token per client id per 7 days, whether or not
        // the last one is still valid.
        let now = tokio::time::Instant::now();
        if inner
            .client_issued
            .get(client_id)
            .is_some_and(|at| now.saturating_duration_since(*at) < config.token_quota_window)
        {
            return None;
        }
        inner.client_issued.insert(client_id.to_owned(), now);
        let user_id = inner
            .client_users
            .entry(client_id.to_owned())
            .or_insert_with(|| format!("anon_{}", random_hex(16)))
            .clone();
        inner.tally.user_created(&user_id, client_id);
        inner.tally.token_issued(client_id);
        let initial = inner.credit_override.unwrap_or(config.initial_credits);
        let credits = inner
            .users
            .entry(user_id.clone())
            .or_insert(User {
                available: initial,
                frozen: 0,
            })
            .available;
        let token = format!("nmv_usr_{}", random_hex(32));
        inner.tokens.insert(
            token.clone(),
            Token {
                user_id: user_id.clone(),
                expires: {
                    let now = tokio::time::Instant::now();
                    // A huge lifetime means "never": cap it instead of overflowing.
                    now.checked_add(config.token_lifetime)
                        .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400))
                },
                revoked: false,
            },
        );
        inner
            .client_tokens
            .insert(client_id.to_owned(), token.clone());
        Some((token, user_id, credits))
    });
    match issued {
        Some((token, user_id, credits)) => ok(json!({
            "token": token,
            "user_id": user_id,
            "expires_at": iso8601_after(config.token_lifetime),
            "credits": credits,
        })),
        None => {
            let mut resp = code_error(
                429,
                429,
                "rate limited: one anonymous token per client id per 7 days",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            resp
        }
    }
}

#[derive(Deserialize)]
struct CreateSessionBody {
    task_name: String,
    #[serde(default)]
    language: Option<String>,
}

fn create_session(ctx: &Ctx<'_>, user: &str, body: &[u8]) -> Resp {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let req: CreateSessionBody = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return unprocessable(&e.to_string()),
    };
    let session_id = random_session_id();
    let task_id = uuid::Uuid::new_v4().to_string();
    ctx.shared.with(|inner| {
        inner.sessions.insert(
            session_id.clone(),
            Session {
                user_id: user.to_owned(),
                task_id: task_id.clone(),
                task_name: req.task_name,
                language: req.language,
                draft: agent::new_draft(),
                video_infos: Vec::new(),
                generated_media: Vec::new(),
                video_analyses: serde_json::Map::new(),
                edit_turns: 0,
                last_track: 0,
                last_segment: 0,
                turn_running: Default::default(),
            },
        );
        inner.tally.session_created(user, &session_id);
    });
    ok(json!({"task_id": task_id, "session_id": session_id, "user_id": user}))
}

fn owns_session(ctx: &Ctx<'_>, user: &str, sid: &str) -> bool {
    ctx.shared
        .with(|inner| inner.sessions.get(sid).is_some_and(|s| s.user_id == user))
}

fn credits(ctx: &Ctx<'_>, user: &str) -> Resp {
    let (available, frozen) = ctx.shared.with(|inner| {
        inner
            .users
            .get(user)
            .map_or((0, 0), |u| (u.available, u.frozen))
    });
    ok(json!({"available": available, "frozen": frozen, "total": available + frozen}))
}

fn session_state(ctx: &Ctx<'_>, user: &str, sid: &str) -> Resp {
    let data = ctx.shared.with(|inner| {
        let s = inner.sessions.get(sid).filter(|s| s.user_id == user)?;
        Some(json!({
            "session_id": sid,
            "task_id": s.task_id,
            "task_name": s.task_name,
            "language": s.language,
            "state": {
                "draft": s.draft,
                "video_infos": s.video_infos,
                "generated_media": s.generated_media,
                "canvas_config": {"width": 1920, "height": 1080, "fps": 30, "ratio": "16:9",
                                   "background": "#000000"},
                "video_analyses": s.video_analyses,
            }
        }))
    });
    match data {
        Some(data) => ok(data),
        None => code_error(200, 1002, "session not found"),
    }
}

// --- upload

struct Upload {
    filename: String,
    len: Option<u64>,
    hash: String,
}

fn file_type(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    let ext = ext.as_str();
    if VIDEO_EXTS.contains(&ext) {
        Some("video")
    } else if IMAGE_EXTS.contains(&ext) {
        Some("image")
    } else if AUDIO_EXTS.contains(&ext) {
        Some("audio")
    } else {
        None
    }
}

/// Reads and discards the rest of a body, so the client can finish sending and read our answer.
async fn drain(mut body: Incoming) -> u64 {
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
        }
    }
    seen
}

async fn upload(ctx: &Ctx<'_>, sid: &str, body: Incoming) -> Resp {
    let early = match ctx.authenticate() {
        Err(resp) => Some(resp),
        Ok(user) if !owns_session(ctx, &user, sid) => {
            Some(code_error(200, 1002, "session not found"))
        }
        Ok(_) => None,
    };
    if let Some(resp) = early {
        let seen = drain(body).await;
        ctx.set_body_len(seen);
        return resp;
    }
    let content_type = ctx.header("content-type").unwrap_or("").to_owned();
    let files = if let Some(boundary) = multipart::boundary(&content_type) {
        match read_multipart(ctx, &boundary, body).await {
            Ok(files) => files,
            Err(resp) => return resp,
        }
    } else if content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        let body = match ctx.read_body(body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match url_uploads(&body) {
            Ok(files) => files,
            Err(resp) => return resp,
        }
    } else {
        let seen = drain(body).await;
        ctx.set_body_len(seen);
        return code_error(
            400,
            400,
            "expected multipart/form-data (parts named `files`) or JSON {\"urls\":[..],\"source_type\":\"url\"}",
        );
    };

    for file in &files {
        if file_type(&file.filename).is_none() {
            return code_error(
                200,
                4001,
                &format!(
                    "unsupported file type: {}; supported formats: {SUPPORTED}",
                    file.filename
                ),
            );
        }
        if file
            .len
            .is_some_and(|len| len > ctx.shared.config.max_upload_bytes)
        {
            return code_error(
                200,
                4002,
                &format!(
                    "file too large: {} (limit {} bytes)",
                    file.filename, ctx.shared.config.max_upload_bytes
                ),
            );
        }
    }
    apply_uploads(ctx, sid, files)
}

async fn read_multipart(
    ctx: &Ctx<'_>,
    boundary: &str,
    mut body: Incoming,
) -> Result<Vec<Upload>, Resp> {
    let mut scanner = multipart::Scanner::new(boundary);
    let mut seen = 0u64;
    let mut error = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            ctx.set_body_len(seen);
            return Err(detail(400, json!("request body could not be read")));
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if error.is_none() {
                if let Err(e) = scanner.feed(&data) {
                    error = Some(e);
                }
            }
        }
        if let Some(pause) = ctx.shared.config.transfer_pace {
            tokio::time::sleep(pause).await;
        }
    }
    if let Some(e) = error {
        ctx.set_body_len(seen);
        return Err(code_error(
            400,
            400,
            &format!("malformed multipart body: {e}"),
        ));
    }
    let parts = match scanner.finish() {
        Ok(parts) => parts,
        Err(e) => {
            ctx.set_body_len(seen);
            return Err(code_error(
                400,
                400,
                &format!("malformed multipart body: {e}"),
            ));
        }
    };
    let logged = parts
        .iter()
        .map(|p| RecordedPart {
            name: p.name.clone(),
            filename: p.filename.as_deref().map(log::scrub),
            bytes: p.len,
        })
        .collect();
    ctx.set_body(seen, Some(RecordedBody::Multipart { parts: logged }));
    let files: Vec<Upload> = parts
        .into_iter()
        .filter(|p| p.name == "files")
        .map(|p| Upload {
            filename: p.filename.unwrap_or_else(|| "upload".into()),
            len: Some(p.len),
            hash: p.hash,
        })
        .collect();
    if files.is_empty() {
        return Err(code_error(400, 400, "no multipart part named `files`"));
    }
    Ok(files)
}

#[derive(Deserialize)]
struct UrlUploadBody {
    urls: Vec<String>,
    source_type: String,
}

fn url_uploads(body: &[u8]) -> Result<Vec<Upload>, Resp> {
    let value = parse_json(body)?;
    let req: UrlUploadBody =
        serde_json::from_value(value).map_err(|e| unprocessable(&e.to_string()))?;
    if req.source_type != "url" {
        return Err(unprocessable("source_type must be \"url\""));
    }
    if req.urls.is_empty() {
        return Err(unprocessable("urls must not be empty"));
    }
    req.urls
        .iter()
        .map(|url| {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| code_error(200, 4001, &format!("unsupported url: {url}")))?;
            let path = rest.split(['?', '#']).next().unwrap_or("");
            let filename = path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && path.contains('/'))
                .map(percent_decode)
                .unwrap_or_else(|| "remote".into());
            let mut hash = Fnv64::default();
            hash.update(url.as_bytes());
            Ok(Upload {
                filename,
                len: None,
                hash: hash.hex(),
            })
        })
        .collect()
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn apply_uploads(ctx: &Ctx<'_>, sid: &str, files: Vec<Upload>) -> Resp {
    let cdn = &ctx.shared.cdn_base_url;
    let mut out = Vec::new();
    let applied = ctx.shared.with(|inner| {
        let Some(session) = inner.sessions.get_mut(sid) else {
            return false;
        };
        let (user_id, count) = (session.user_id.clone(), files.len());
        for file in files {
            let kind = file_type(&file.filename).unwrap_or("video");
            let cdn_url = format!(
                "{cdn}/uploads/{}/{}/{}",
                url_escape(sid),
                file.hash,
                url_escape(&file.filename)
            );
            let (duration, width, height, fps) = match kind {
                "video" => (json!(5.0), json!(320), json!(180), json!(24.0)),
                "image" => (Value::Null, json!(320), json!(180), Value::Null),
                _ => (json!(5.0), Value::Null, Value::Null, Value::Null),
            };
            let mut info = json!({
                "filename": file.filename, "file_type": kind, "cdn_url": cdn_url,
                "duration": duration, "width": width, "height": height, "fps": fps,
                "hash": file.hash,
            });
            if let Some(len) = file.len {
                info["size"] = json!(len);
            }
            session.video_infos.push(info.clone());
            if kind == "video" {
                session.video_analyses.insert(
                    file.filename.clone(),
                    json!({
                        "summary": "a person walking in frame past a tree",
                        "objects": [
                            {"label": "person", "role": "background person", "confidence": 0.93,
                             "first_seen_s": 0.0, "last_seen_s": 5.0},
                            {"label": "tree", "confidence": 0.88}
                        ],
                        "camera_motion": "static"
                    }),
                );
                let stem = file
                    .filename
                    .rsplit_once('.')
                    .map_or(file.filename.as_str(), |(stem, _)| stem)
                    .to_owned();
                session.add_video_if_missing(&stem, &cdn_url, &file.hash);
            }
            out.push(info);
        }
        inner.tally.uploaded(&user_id, sid, count);
        true
    });
    if !applied {
        return code_error(200, 1002, "session not found");
    }
    ok(json!({"files": out, "session_state_applied": true}))
}

// --- run_sse

#[derive(Deserialize)]
struct RunSseBody {
    app_name: String,
    #[allow(dead_code)]
    user_id: String,
    session_id: String,
    new_message: NewMessage,
}

#[derive(Deserialize)]
struct NewMessage {
    parts: Vec<MessagePart>,
}

#[derive(Deserialize)]
struct MessagePart {
    #[serde(default)]
    text: Option<String>,
}

fn run_sse(ctx: &Ctx<'_>, user: &str, body: &[u8]) -> Resp {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let req: RunSseBody = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return unprocessable(&e.to_string()),
    };
    if req.app_name != "nemo_agent" {
        return detail(404, json!(format!("App not found: {}", req.app_name)));
    }
    if req.new_message.parts.is_empty() {
        return unprocessable("new_message.parts must not be empty");
    }
    let message: String = req
        .new_message
        .parts
        .iter()
        .filter_map(|p| p.text.as_deref())
        .collect::<Vec<_>>()
        .join("\n");
    let config = &ctx.shared.config;
    let planned = ctx.shared.with(|inner| {
        let available = inner.users.get(user).map_or(0, |u| u.available);
        let text_less = inner.faults.text_less;
        let Some(session) = inner
            .sessions
            .get_mut(&req.session_id)
            .filter(|s| s.user_id == user)
        else {
            return Err(code_error(200, 1002, "session not found"));
        };
        // One turn per session, refused (not queued) as the service does: nothing of this
        // request is accepted or charged.
        if session.turn_running.swap(true, Ordering::SeqCst) {
            return Err(detail(
                409,
                json!("the session already has a turn running; wait for it to end"),
            ));
        }
        let guard = TurnGuard(Arc::clone(&session.turn_running));
        if available == 0 || available < config.credits_per_edit {
            return Err(code_error(
                200,
                2001,
                "insufficient credits: register or top up to keep editing",
            ));
        }
        let turn = agent::plan_turn(session, &message, config, text_less);
        let draft = session.draft.clone();
        if turn.edited {
            if let Some(u) = inner.users.get_mut(user) {
                u.available = u.available.saturating_sub(config.credits_per_edit);
            }
        }
        let faults = StreamFaults {
            drop_after: inner.faults.drop_stream_after.take(),
            stall: inner.faults.stall_stream.take(),
            error_after: inner.faults.error_stream_after.take(),
        };
        inner.tally.message_accepted(user, &req.session_id);
        Ok((turn, draft, faults, guard))
    });
    let (turn, draft, faults, guard) = match planned {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let steps = agent::stream_steps(&turn, &draft, config, faults);
    let mut resp = Response::new(SimBody::scheduled(steps).guarded(guard));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

// --- render

fn has_attribution(ctx: &Ctx<'_>) -> bool {
    ["x-skill-source", "x-skill-version", "x-skill-platform"]
        .iter()
        .all(|h| ctx.header(h).is_some_and(|v| !v.trim().is_empty()))
}

fn render_submit(ctx: &Ctx<'_>, user: &str, body: &[u8]) -> Resp {
    if !has_attribution(ctx) {
        return render_error(
            402,
            "export blocked for this plan: register or upgrade your plan to unlock export \
             (missing X-Skill-Source / X-Skill-Version / X-Skill-Platform)",
        );
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return render_error(400, "request body must be JSON");
    };
    let id = value.get("id").and_then(Value::as_str).unwrap_or("");
    let sid = value.get("sessionId").and_then(Value::as_str).unwrap_or("");
    let draft = value.get("draft").filter(|d| d.is_object());
    let mut missing = Vec::new();
    if id.is_empty() {
        missing.push("id");
    }
    if sid.is_empty() {
        missing.push("sessionId");
    }
    if draft.is_none() {
        missing.push("draft");
    }
    let Some(draft) = draft.filter(|_| missing.is_empty()) else {
        return render_error(
            400,
            &format!("missing or invalid fields: {}", missing.join(", ")),
        );
    };
    if let Some(format) = value.pointer("/output/format").and_then(Value::as_str) {
        if !format.eq_ignore_ascii_case("mp4") {
            return render_error(400, &format!("unsupported output format: {format}"));
        }
    }
    if !owns_session(ctx, user, sid) {
        return render_error(404, "session not found");
    }
    if !agent::has_segments(draft) {
        return render_error(400, "nothing to render: the draft has no segments");
    }
    let accepted = ctx.shared.with(|inner| {
        if inner.renders.contains_key(id) {
            return false;
        }
        let fail_with = inner.faults.fail_next_render.take();
        let submitted = inner.render_clock.now();
        inner.renders.insert(
            id.to_owned(),
            Render {
                user_id: user.to_owned(),
                submitted,
                fail_with,
                cancelled: false,
            },
        );
        inner.tally.render_accepted(user, sid);
        true
    });
    if !accepted {
        return render_error(409, &format!("render id already exists: {id}"));
    }
    render_ok(json!({"id": id, "status": "pending", "progress": 0}))
}

fn render_phase(ctx: &Ctx<'_>, user: &str, id: &str) -> Option<RenderPhase> {
    let render_time = ctx.shared.config.render_time;
    ctx.shared
        .with(|inner| inner.render_phase(id, user, render_time))
}

fn output_url(ctx: &Ctx<'_>, id: &str) -> String {
    format!("{}/renders/{}.mp4", ctx.shared.cdn_base_url, url_escape(id))
}

fn render_status(ctx: &Ctx<'_>, user: &str, id: &str) -> Resp {
    let Some(phase) = render_phase(ctx, user, id) else {
        return render_error(404, "render not found");
    };
    let url = (phase == RenderPhase::Completed).then(|| output_url(ctx, id));
    let error = match &phase {
        RenderPhase::Failed(message) => Some(message.clone()),
        _ => None,
    };
    let mut out = json!({"id": id, "status": phase.name(), "progress": phase.progress()});
    match ctx.shared.config.status_shape {
        StatusShape::TopLevel => {
            if let Some(url) = url {
                out["output"] = json!({"url": url});
            }
            if let Some(error) = error {
                out["error"] = json!(error);
            }
            json_response(StatusCode::OK, &out)
        }
        StatusShape::SuccessData => {
            if let Some(url) = url {
                out["outputUrl"] = json!(url);
            }
            if let Some(error) = error {
                out["error"] = json!(error);
            }
            render_ok(out)
        }
    }
}

fn render_cancel(ctx: &Ctx<'_>, user: &str, id: &str) -> Resp {
    let render_time = ctx.shared.config.render_time;
    let result = ctx.shared.with(|inner| {
        let now = inner.render_clock.now();
        let render = inner.renders.get_mut(id).filter(|r| r.user_id == user)?;
        let phase = render.phase(now, render_time);
        if matches!(phase, RenderPhase::Pending | RenderPhase::Processing(_)) {
            render.cancelled = true;
            Some(Ok(()))
        } else if phase == RenderPhase::Cancelled {
            Some(Ok(()))
        } else {
            Some(Err(phase))
        }
    });
    match result {
        None => render_error(404, "render not found"),
        Some(Ok(())) => render_ok(json!({"id": id, "status": "cancelled"})),
        Some(Err(phase)) => render_error(
            409,
            &format!(
                "render can no longer be cancelled (status: {})",
                phase.name()
            ),
        ),
    }
}

fn mp4_response(ctx: &Ctx<'_>, id: &str, bytes: &'static [u8], head: bool) -> Resp {
    let body = match (head, ctx.shared.config.transfer_pace) {
        (true, _) => SimBody::full(Bytes::new()),
        (false, None) => SimBody::full(Bytes::from_static(bytes)),
        (false, Some(pause)) => SimBody::scheduled(
            bytes
                .chunks(1024)
                .flat_map(|piece| [Step::Send(Bytes::from_static(piece)), Step::Wait(pause)]),
        ),
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}.mp4\"", url_escape(id)))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

fn render_download(ctx: &Ctx<'_>, user: &str, id: &str) -> Resp {
    match render_phase(ctx, user, id) {
        None => render_error(404, "render not found"),
        Some(RenderPhase::Completed) => mp4_response(ctx, id, SAMPLE_OUTPUT_MP4, false),
        Some(phase) => render_error(
            409,
            &format!("render is not completed (status: {})", phase.name()),
        ),
    }
}

fn cdn_output(ctx: &Ctx<'_>, id: &str, head: bool) -> Resp {
    let render_time = ctx.shared.config.render_time;
    let done = ctx.shared.with(|inner| {
        let now = inner.render_clock.now();
        inner
            .renders
            .get(id)
            .is_some_and(|r| r.phase(now, render_time) == RenderPhase::Completed)
    });
    if done {
        mp4_response(ctx, id, SAMPLE_OUTPUT_MP4, head)
    } else {
        cdn_not_found()
    }
}

fn cdn_not_found() -> Resp {
    let mut resp = Response::new(SimBody::full("Not Found"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// Uploads are never stored; only the bundled sample clip can be served back, recognised by
/// its hash, so the draft of the demo flow points at a URL that works.
fn cdn_upload(ctx: &Ctx<'_>, hash: &str, head: bool) -> Resp {
    let mut sample = Fnv64::default();
    sample.update(SAMPLE_INPUT_MP4);
    if hash == sample.hex() {
        mp4_response(ctx, "sample_input", SAMPLE_INPUT_MP4, head)
    } else {
        cdn_not_found()
    }
}

// --- claim token

#[derive(Deserialize)]
struct ClaimBody {
    task_id: String,
    session_id: String,
}

fn claim_token(ctx: &Ctx<'_>, user: &str, body: &[u8]) -> Resp {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let req: ClaimBody = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return unprocessable(&e.to_string()),
    };
    let matches = ctx.shared.with(|inner| {
        inner
            .sessions
            .get(&req.session_id)
            .is_some_and(|s| s.user_id == user && s.task_id == req.task_id)
    });
    if !matches {
        return code_error(200, 1002, "session not found");
    }
    ok(json!({"claim_token": format!("clm_{}", random_hex(32)), "expires_in": 3600}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(Origin::Api, "/api/state/nemo_agent/me/12%33/latest"),
            Some(Route::State("123".into()))
        );
        assert_eq!(
            route(Origin::Api, "/api/render/proxy/render_1/download"),
            Some(Route::RenderDownload("render_1".into()))
        );
        assert_eq!(
            route(Origin::Cdn, "/renders/render_1.mp4"),
            Some(Route::CdnOutput("render_1".into()))
        );
        assert_eq!(route(Origin::Api, "/renders/render_1.mp4"), None);
        assert_eq!(route(Origin::Api, "nope"), None);
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
