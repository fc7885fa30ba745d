//! Helpers shared by `tests/upload.rs` and `tests/render.rs`: clients against a loopback mock
//! server with fast retries, a strict multipart parser, and a raw TCP server for responses
//! wiremock cannot produce (a body shorter than its `Content-Length`).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use nemo_video::{NemoClient, NemoClientBuilder, RetryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::{MockServer, Request};

/// The fixed token every test client sends.
pub const TOKEN: &str = "nmv_usr_test";

/// Retries with 10 ms base delay so retry tests finish quickly.
pub fn fast_retry() -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.base_delay = Duration::from_millis(10);
    retry.max_delay = Duration::from_millis(40);
    retry.max_server_wait = Duration::from_millis(200);
    retry
}

/// Fast retries with a given retry count.
pub fn retries(max_retries: u32) -> RetryConfig {
    let mut retry = fast_retry();
    retry.max_retries = max_retries;
    retry
}

/// A builder pointed at `server` with the test token, no persistence, fast retries.
pub fn builder(server: &MockServer) -> NemoClientBuilder {
    NemoClient::builder()
        .base_url(server.uri())
        .token(TOKEN)
        .no_persistence()
        .retry(fast_retry())
}

/// A client pointed at `server` (see [`builder`]).
pub fn client(server: &MockServer) -> NemoClient {
    builder(server).build().expect("test client")
}

/// Every request the server received.
pub async fn received(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

/// A header's value as text, when present.
pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
}

/// Asserts the bearer token and the attribution headers are on `request`.
pub fn assert_api_headers(request: &Request) {
    assert_eq!(
        header(request, "authorization"),
        Some("Bearer nmv_usr_test"),
        "Authorization header"
    );
    assert_eq!(
        header(request, "x-skill-source"),
        Some("video-object-ops"),
        "X-Skill-Source"
    );
    assert_eq!(
        header(request, "x-skill-version"),
        Some(env!("CARGO_PKG_VERSION")),
        "X-Skill-Version"
    );
    assert!(
        header(request, "x-skill-platform").is_some_and(|v| !v.is_empty()),
        "X-Skill-Platform"
    );
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `name` from `Content-Disposition`.
    pub name: String,
    /// `filename` from `Content-Disposition`, as written on the wire (still quoted-escaped).
    pub filename: Option<String>,
    /// The part's `Content-Type`.
    pub content_type: Option<String>,
    /// The part's bytes.
    pub body: Vec<u8>,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary_of(content_type: &str) -> String {
    let rest = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not a multipart content type: {content_type:?}"));
    assert!(!rest.is_empty(), "empty boundary");
    rest.trim_matches('"').to_string()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(&haystack[from..], needle).map(|at| at + from)
}

/// A strict RFC 7578 parser: no preamble, CRLF everywhere, a closing delimiter followed by
/// CRLF and nothing else. Panics on anything malformed.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = boundary_of(content_type);
    let opening = format!("--{boundary}\r\n");
    let delimiter = format!("\r\n--{boundary}");
    assert!(
        body.starts_with(opening.as_bytes()),
        "body must start with the first boundary"
    );
    let mut parts = Vec::new();
    let mut at = opening.len();
    loop {
        let headers_end = find(body, b"\r\n\r\n", at).expect("end of part headers");
        let head = std::str::from_utf8(&body[at..headers_end]).expect("UTF-8 part headers");
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (key, value) = line.split_once(": ").expect("header line");
            match key.to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    let mut params = value.split("; ");
                    assert_eq!(params.next(), Some("form-data"));
                    for param in params {
                        let (k, v) = param.split_once('=').expect("parameter");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted parameter");
                        match k {
                            "name" => name = Some(v.to_string()),
                            "filename" => filename = Some(v.to_string()),
                            other => panic!("unexpected parameter {other}"),
                        }
                    }
                }
                "content-type" => content_type = Some(value.to_string()),
                other => panic!("unexpected part header {other}"),
            }
        }
        let content_start = headers_end + 4;
        let content_end =
            find(body, delimiter.as_bytes(), content_start).expect("delimiter after part");
        parts.push(Part {
            name: name.expect("part name"),
            filename,
            content_type,
            body: body[content_start..content_end].to_vec(),
        });
        let after = content_end + delimiter.len();
        match &body[after..] {
            b"--\r\n" => return parts,
            rest if rest.starts_with(b"\r\n") => at = after + 2,
            rest => panic!(
                "bad bytes after a delimiter: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(20)])
            ),
        }
    }
}

/// Names of the entries in `dir`, sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Bytes that differ from position to position, so misplaced bytes are noticed.
pub fn patterned_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// A one-shot raw HTTP server on loopback that answers the first request with `head` (status
/// line and headers, without the blank line) and then `body`, then closes the connection.
/// Returns the server's base URL (`http://127.0.0.1:<port>`).
pub async fn raw_http_server(head: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while find(&request, b"\r\n\r\n", 0).is_none() {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(b"\r\n\r\n").await;
            let _ = socket.write_all(&body).await;
            let _ = socket.flush().await;
            let _ = socket.shutdown().await;
        }
    });
    format!("http://{address}")
}
