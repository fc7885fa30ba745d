//! The admin API: the simulator's counters, request log and fault injection over HTTP, under
//! `/__admin` on the API origin, for tests and tools in other processes. Every route calls the
//! matching [`SimulatorHandle`] method, so the two can never tell different stories.
//!
//! Admin requests are not counted and not logged. Paths and JSON shapes are documented in the
//! [module docs](super).

// As in the server: a route builds at most one ready response, on the error path too.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::SimBody;
use super::state::Shared;
use super::{Endpoint, Failure, RecordedRequest, SimulatorHandle};

/// Where the admin API lives on the API origin.
pub(crate) const ADMIN_PREFIX: &str = "/__admin";

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// Every route, for `GET /__admin` and for the error that answers an unknown one.
const ROUTES: &[(&str, &str)] = &[
    (
        "GET /__admin",
        "this list, the origins' URLs and the settings",
    ),
    (
        "GET /__admin/counters",
        "requests in all, per endpoint, per client id and per session",
    ),
    (
        "GET /__admin/requests?since=SEQ&limit=N&endpoint=NAME&client_id=ID",
        "the request log, oldest first, bodies included, secrets redacted",
    ),
    (
        "GET /__admin/sessions/ID",
        "one session's counters, draft and media",
    ),
    ("GET /__admin/renders", "the ids of the accepted renders"),
    (
        "POST /__admin/reset",
        "forget everything (the log's numbering goes on)",
    ),
    (
        "POST /__admin/fail_next",
        r#"{"endpoint":"credits","times":1,"failure":{"status":503}}"#,
    ),
    (
        "POST /__admin/expire_tokens",
        "every token issued now answers 1001",
    ),
    ("POST /__admin/drop_next_stream", r#"{"after_events":2}"#),
    (
        "POST /__admin/stall_next_stream",
        r#"{"after_events":1,"for_ms":3000}"#,
    ),
    (
        "POST /__admin/text_less",
        r#"{"text_less":true} (false: always text; null: the builder's pattern)"#,
    ),
    (
        "POST /__admin/fail_next_render",
        r#"{"message":"GPU unavailable"}"#,
    ),
    (
        "POST /__admin/credits",
        r#"{"available":0} for every user, or {"available":0,"client_id":"ID"}"#,
    ),
    ("POST /__admin/advance_renders", r#"{"ms":2000}"#),
];

pub(crate) fn is_admin_path(path: &str) -> bool {
    path == ADMIN_PREFIX
        || path
            .strip_prefix(ADMIN_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

type Resp = Response<SimBody>;

fn json_response(status: StatusCode, value: &Value) -> Resp {
    let mut resp = Response::new(SimBody::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, &json!({"error": message.into()}))
}

fn done() -> Resp {
    json_response(StatusCode::OK, &json!({"ok": true}))
}

pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let sim = SimulatorHandle {
        shared: Arc::clone(shared),
    };
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let rest = path.strip_prefix(ADMIN_PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let method = parts.method;
    match (method.clone(), segments.as_slice()) {
        (Method::GET, []) => info(&sim),
        (Method::GET, ["counters"]) => ok_json(&sim.counters()),
        (Method::GET, ["requests"]) => requests(&sim, &query),
        (Method::GET, ["sessions", id]) => session(&sim, &percent_decoded(id)),
        (Method::GET, ["renders"]) => {
            let mut ids = sim.render_ids();
            ids.sort();
            json_response(StatusCode::OK, &json!({"render_ids": ids}))
        }
        (Method::POST, ["reset"]) => with_body(&body, |_: Empty| {
            sim.reset();
            Ok(())
        }),
        (Method::POST, ["fail_next"]) => with_body(&body, |r: FailNext| {
            sim.fail_next(r.endpoint, r.times, r.failure);
            Ok(())
        }),
        (Method::POST, ["expire_tokens"]) => with_body(&body, |_: Empty| {
            sim.expire_tokens();
            Ok(())
        }),
        (Method::POST, ["drop_next_stream"]) => with_body(&body, |r: DropNextStream| {
            sim.drop_next_stream_after(r.after_events);
            Ok(())
        }),
        (Method::POST, ["stall_next_stream"]) => with_body(&body, |r: StallNextStream| {
            sim.stall_next_stream(r.after_events, Duration::from_millis(r.for_ms));
            Ok(())
        }),
        (Method::POST, ["text_less"]) => with_body(&body, |r: TextLess| {
            match r.text_less {
                Some(text_less) => sim.set_text_less(text_less),
                None => sim.clear_text_less(),
            }
            Ok(())
        }),
        (Method::POST, ["fail_next_render"]) => with_body(&body, |r: FailNextRender| {
            sim.fail_next_render(r.message);
            Ok(())
        }),
        (Method::POST, ["credits"]) => with_body(&body, |r: Credits| match r.client_id {
            None => {
                sim.set_credits(r.available);
                Ok(())
            }
            Some(client_id) if sim.set_credits_for_client(&client_id, r.available) => Ok(()),
            Some(client_id) => Err(error(
                StatusCode::NOT_FOUND,
                format!("no user has the client id {client_id:?}: it was never issued a token"),
            )),
        }),
        (Method::POST, ["advance_renders"]) => with_body(&body, |r: AdvanceRenders| {
            sim.advance_renders(Duration::from_millis(r.ms));
            Ok(())
        }),
        (_, segments) => {
            let known = ROUTES.iter().any(|(route, _)| {
                let route_path = route.split_once(' ').map_or("", |(_, p)| p);
                let route_path = route_path.split('?').next().unwrap_or("");
                let route_segments: Vec<&str> = route_path
                    .strip_prefix(ADMIN_PREFIX)
                    .unwrap_or("")
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect();
                route_segments.len() == segments.len()
                    && route_segments
                        .iter()
                        .zip(segments)
                        .all(|(r, s)| r == s || *r == "ID")
            });
            if known {
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "{method} is not allowed on {path}; GET {ADMIN_PREFIX} lists the routes"
                    ),
                )
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    format!("no admin route {method} {path}; GET {ADMIN_PREFIX} lists the routes"),
                )
            }
        }
    }
}

async fn read_body(mut body: Incoming) -> Result<Vec<u8>, Resp> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_ADMIN_BODY {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "an admin request body is at most 1 MiB",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// `value` as JSON, its fields in the order the type declares them.
fn ok_json(value: &impl serde::Serialize) -> Resp {
    match serde_json::to_string(value) {
        Ok(text) => {
            let mut resp = Response::new(SimBody::full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the answer: {err}"),
        ),
    }
}

/// Decodes the body (an empty body reads as `{}`) and runs `action` with it.
fn with_body<T: DeserializeOwned>(body: &[u8], action: impl FnOnce(T) -> Result<(), Resp>) -> Resp {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    match serde_json::from_slice::<T>(body) {
        Ok(request) => match action(request) {
            Ok(()) => done(),
            Err(resp) => resp,
        },
        Err(err) => error(
            StatusCode::BAD_REQUEST,
            format!("the JSON body is not what this route takes: {err}; GET {ADMIN_PREFIX} shows an example"),
        ),
    }
}

fn info(sim: &SimulatorHandle) -> Resp {
    let shared = &sim.shared;
    let config = &shared.config;
    let routes: serde_json::Map<String, Value> = ROUTES
        .iter()
        .map(|(route, what)| ((*route).to_owned(), json!(what)))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "base_url": shared.base_url,
            "cdn_base_url": shared.cdn_base_url,
            "web_url": shared.web_url,
            "admin_url": sim.admin_url(),
            "request_log_size": config.request_log_size,
            "render_time_ms": duration_ms(config.render_time),
            "routes": routes,
        }),
    )
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn requests(sim: &SimulatorHandle, query: &str) -> Resp {
    let mut since = 0u64;
    let mut limit = usize::MAX;
    let mut endpoint = None;
    let mut client_id = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "since" => match value.parse() {
                Ok(n) => since = n,
                Err(_) => return bad_query("since", &value, "a request number, like 12"),
            },
            "limit" => match value.parse() {
                Ok(n) => limit = n,
                Err(_) => return bad_query("limit", &value, "a whole number, like 50"),
            },
            "endpoint" => match serde_json::from_value::<Endpoint>(json!(value)) {
                Ok(e) => endpoint = Some(e),
                Err(_) => {
                    return bad_query(
                        "endpoint",
                        &value,
                        "an endpoint name, like run_sse or anonymous_token",
                    )
                }
            },
            "client_id" => client_id = Some(value.into_owned()),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "unknown query parameter {other:?}; use since, limit, endpoint or client_id"
                ),
                )
            }
        }
    }
    let mut matching: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.seq > since)
        .filter(|r| endpoint.is_none() || r.endpoint == endpoint)
        .filter(|r| client_id.is_none() || r.client_id == client_id)
        .collect();
    let skip = matching.len().saturating_sub(limit);
    matching.drain(..skip);
    #[derive(serde::Serialize)]
    struct Requests {
        requests: Vec<RecordedRequest>,
    }
    ok_json(&Requests { requests: matching })
}

fn bad_query(name: &str, value: &str, expected: &str) -> Resp {
    error(
        StatusCode::BAD_REQUEST,
        format!("{name}={value:?} is not valid: expected {expected}"),
    )
}

fn session(sim: &SimulatorHandle, id: &str) -> Resp {
    let Some(draft) = sim.draft(id) else {
        return error(StatusCode::NOT_FOUND, format!("no session {id:?}"));
    };
    let counters = sim.counters().sessions.remove(id).unwrap_or_default();
    let mut out = match serde_json::to_value(&counters) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    out.insert("session_id".into(), json!(id));
    out.insert("draft".into(), draft);
    out.insert("media".into(), json!(sim.media(id)));
    json_response(StatusCode::OK, &Value::Object(out))
}

fn percent_decoded(segment: &str) -> String {
    // `+` is a plus in a path, not the space it means in a form.
    let segment = segment.replace('+', "%2B");
    url::form_urlencoded::parse(format!("x={segment}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or(segment)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNext {
    endpoint: Endpoint,
    #[serde(default = "one")]
    times: usize,
    failure: Failure,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropNextStream {
    after_events: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StallNextStream {
    after_events: usize,
    for_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextLess {
    text_less: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNextRender {
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credits {
    available: u64,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceRenders {
    ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_paths() {
        assert!(is_admin_path("/__admin"));
        assert!(is_admin_path("/__admin/counters"));
        assert!(!is_admin_path("/__administrator"));
        assert!(!is_admin_path("/api/__admin"));
    }

    #[test]
    fn failures_read_as_documented() {
        let read = |text: &str| serde_json::from_str::<Failure>(text).unwrap();
        assert_eq!(read(r#"{"status":503}"#), Failure::Status(503));
        assert_eq!(
            read(r#"{"code":{"http":200,"code":2001}}"#),
            Failure::Code {
                http: 200,
                code: 2001
            }
        );
        assert_eq!(
            read(r#"{"plain_text":{"status":502,"body":"Bad Gateway"}}"#),
            Failure::PlainText {
                status: 502,
                body: "Bad Gateway".into()
            }
        );
        assert_eq!(
            read(r#"{"retry_after":{"status":429,"secs":2}}"#),
            Failure::RetryAfter {
                status: 429,
                secs: 2
            }
        );
        assert_eq!(read(r#""close_connection""#), Failure::CloseConnection);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decoded("12%33"), "123");
        assert_eq!(percent_decoded("a%2Fb"), "a/b");
    }
}
