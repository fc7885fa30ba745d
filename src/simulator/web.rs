//! The simulator's stand-in for the web site (`https://nemovideo.com`): the pages that the
//! links the SDK builds point at (registration, claim links), saying plainly that the account
//! or project exists only in this simulator. A person who opens a link printed by an offline
//! demo lands here, not on the real site with an id it has never seen.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::body::SimBody;
use super::state::Shared;

/// Accepts connections until the task is aborted; dropping this future closes the listener
/// and cancels every connection it spawned.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let page = page(&shared, &req);
                            async move { Ok::<_, Infallible>(page) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "simulator web accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn page(shared: &Shared, req: &Request<Incoming>) -> Response<SimBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return html(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", "");
    }
    let query = |name: &str| {
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let api = escape(&shared.base_url);
    match req.uri().path() {
        "/register" => html(
            StatusCode::OK,
            "Simulator account",
            &format!(
                "<p>The account <code>{}</code> is an anonymous account of the offline \
                 NemoVideo simulator at <code>{api}</code>. It exists only while that \
                 simulator runs, so there is nothing to register.</p>\
                 <p>Against the real service this link opens the registration page of \
                 nemovideo.com, which keeps the account's work and adds credits.</p>",
                escape(&query("bind"))
            ),
        ),
        "/workspace/claim" => html(
            StatusCode::OK,
            "Simulator project",
            &format!(
                "<p>This project lives in the offline NemoVideo simulator at \
                 <code>{api}</code>, which has no web editor.</p>\
                 <p>Against the real service this link opens the project in the web editor \
                 of nemovideo.com (claim token <code>{}</code>).</p>",
                escape(&query("ct"))
            ),
        ),
        _ => html(StatusCode::NOT_FOUND, "Not found", ""),
    }
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::full(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>NemoVideo simulator: \
         {title}</title></head><body><h1>NemoVideo simulator: {title}</h1>{body}</body></html>"
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}
