//! A loopback HTTP/1.1 server that streams `POST /run_sse` responses over time, by script,
//! and answers `GET /api/state/nemo_agent/me/<sid>/latest` with a sequence of states.
//!
//! wiremock answers with a whole body at once; these tests need bytes spread over time,
//! stalls, abrupt closes, and to see when the client goes away. Every response carries
//! `Connection: close` and the connection is closed after it, so each request is one
//! connection and nothing is reused behind a test's back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::{NemoClient, Session};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The session every test talks to (19 digits, above 2^53 like the service's ids).
pub const SESSION_ID: &str = "7345678901234567890";

/// One step of a streamed (chunked) response.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes as one HTTP chunk.
    Chunk(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Close the connection without the terminating `0\r\n\r\n` chunk.
    Abort,
    /// End the body properly (`0\r\n\r\n`) and close.
    End,
    /// Send nothing more; wait until the client goes away.
    Stall,
}

/// How the server answers one `POST /run_sse`.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200`, `text/event-stream`, chunked, then the steps.
    Stream(Vec<Step>),
    /// A whole body with `Content-Length`.
    Whole {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::Whole {
            status,
            content_type: "application/json".to_string(),
            body: body.to_string().into_bytes(),
        }
    }

    pub fn whole(status: u16, content_type: &str, body: &str) -> Reply {
        Reply::Whole {
            status,
            content_type: content_type.to_string(),
            body: body.as_bytes().to_vec(),
        }
    }
}

/// A request as the server received it. Header names are lower-case.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    run_sse_posts: AtomicUsize,
    state_gets: AtomicUsize,
    replies: Mutex<Vec<Reply>>,
    /// Drafts returned by successive state reads; the last one repeats.
    drafts: Mutex<Vec<Value>>,
    /// How many stream responses saw the client go away (EOF or a failed write).
    client_gone: AtomicUsize,
    client_gone_notify: Notify,
}

/// The running server. It stops with the test's runtime.
#[derive(Clone)]
pub struct StreamServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl StreamServer {
    /// Starts a server whose `n`-th `POST /run_sse` gets `replies[n]` (the last one repeats),
    /// and whose state reads return an empty timeline.
    pub async fn start(replies: Vec<Reply>) -> StreamServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        *shared.replies.lock().unwrap() = replies;
        *shared.drafts.lock().unwrap() = vec![json!({ "t": [] })];
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let _ = handle(socket, shared).await;
                });
            }
        });
        StreamServer { addr, shared }
    }

    /// Starts a server with one `/run_sse` script.
    pub async fn streaming(steps: Vec<Step>) -> StreamServer {
        StreamServer::start(vec![Reply::Stream(steps)]).await
    }

    /// Sets the drafts successive state reads return (the last one repeats).
    pub fn with_drafts(self, drafts: Vec<Value>) -> StreamServer {
        assert!(!drafts.is_empty());
        *self.shared.drafts.lock().unwrap() = drafts;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for this server, built the way an app would.
    pub fn client(&self) -> NemoClient {
        NemoClient::builder()
            .base_url(format!("http://{}", self.addr))
            .token("nmv_usr_test")
            .no_persistence()
            .build()
            .expect("client builds")
    }

    pub fn session(&self) -> Session {
        Session::from_id(SESSION_ID)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn run_sse_posts(&self) -> usize {
        self.shared.run_sse_posts.load(Ordering::SeqCst)
    }

    pub fn state_gets(&self) -> usize {
        self.shared.state_gets.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until a stream response saw its client go away.
    pub async fn wait_client_gone(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.client_gone_notify.notified();
                if self.shared.client_gone.load(Ordering::SeqCst) > 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

async fn handle(mut socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let Some(request) = read_request(&mut socket).await? else {
        return Ok(());
    };
    shared.requests.lock().unwrap().push(request.clone());
    let state_path = format!("/api/state/nemo_agent/me/{SESSION_ID}/latest");
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/run_sse") => {
            let index = shared.run_sse_posts.fetch_add(1, Ordering::SeqCst);
            let reply = {
                let replies = shared.replies.lock().unwrap();
                replies
                    .get(index)
                    .or(replies.last())
                    .cloned()
                    .unwrap_or(Reply::Stream(vec![Step::End]))
            };
            match reply {
                Reply::Whole {
                    status,
                    content_type,
                    body,
                } => write_whole(&mut socket, status, &content_type, &body).await,
                Reply::Stream(steps) => {
                    if stream_steps(&mut socket, &steps).await.is_err() {
                        shared.client_gone.fetch_add(1, Ordering::SeqCst);
                        shared.client_gone_notify.notify_waiters();
                    }
                    Ok(())
                }
            }
        }
        ("GET", path) if path == state_path => {
            let index = shared.state_gets.fetch_add(1, Ordering::SeqCst);
            let draft = {
                let drafts = shared.drafts.lock().unwrap();
                drafts
                    .get(index)
                    .or(drafts.last())
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let body = json!({ "code": 0, "data": { "state": { "draft": draft } } });
            write_whole(
                &mut socket,
                200,
                "application/json",
                body.to_string().as_bytes(),
            )
            .await
        }
        _ => write_whole(&mut socket, 404, "text/plain", b"not found").await,
    }
}

/// Reads one request: head up to the blank line, then `Content-Length` bytes of body.
async fn read_request(socket: &mut TcpStream) -> std::io::Result<Option<Recorded>> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = socket.read(&mut piece).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut piece).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&piece[..n]);
    }
    body.truncate(length);
    Ok(Some(Recorded {
        method,
        path,
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

async fn write_whole(
    socket: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await?;
    socket.flush().await?;
    socket.shutdown().await
}

/// Runs a stream script. `Err` means the client went away (a write failed, or EOF while
/// stalling).
async fn stream_steps(socket: &mut TcpStream, steps: &[Step]) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    socket.write_all(head.as_bytes()).await?;
    socket.flush().await?;
    for step in steps {
        match step {
            Step::Chunk(bytes) => {
                if bytes.is_empty() {
                    continue; // an empty chunk would end the body
                }
                let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
                framed.extend_from_slice(bytes);
                framed.extend_from_slice(b"\r\n");
                socket.write_all(&framed).await?;
                socket.flush().await?;
            }
            Step::Sleep(duration) => tokio::time::sleep(*duration).await,
            Step::Abort => return Ok(()),
            Step::End => {
                socket.write_all(b"0\r\n\r\n").await?;
                socket.flush().await?;
                return socket.shutdown().await;
            }
            Step::Stall => {
                // Nothing more is sent; the client's only way out is to close. Reading
                // tells us when it does (EOF or reset).
                let mut piece = [0u8; 1024];
                loop {
                    match socket.read(&mut piece).await {
                        Ok(0) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "client closed",
                            ))
                        }
                        Ok(_) => continue,
                        Err(err) => return Err(err),
                    }
                }
            }
        }
    }
    // A script that runs out of steps ends cleanly.
    socket.write_all(b"0\r\n\r\n").await?;
    socket.flush().await?;
    socket.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Script and payload helpers
// ---------------------------------------------------------------------------------------------

/// One SSE event carrying `data` (a single `data:` line), as a chunk.
pub fn event(data: &str) -> Step {
    Step::Chunk(format!("data: {data}\n\n").into_bytes())
}

/// One SSE event with an `id:` line.
pub fn event_with_id(id: &str, data: &str) -> Step {
    Step::Chunk(format!("id: {id}\ndata: {data}\n\n").into_bytes())
}

/// Raw bytes as one chunk.
pub fn raw(bytes: &str) -> Step {
    Step::Chunk(bytes.as_bytes().to_vec())
}

/// A comment-line heartbeat.
pub fn comment_heartbeat() -> Step {
    raw(": ping\n\n")
}

/// An empty-`data:` heartbeat.
pub fn empty_data_heartbeat() -> Step {
    raw("data:\n\n")
}

pub fn sleep_ms(ms: u64) -> Step {
    Step::Sleep(Duration::from_millis(ms))
}

/// Heartbeats (alternating comment and empty data) every `every_ms` for `for_ms`.
pub fn heartbeats(every_ms: u64, for_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut elapsed = 0;
    let mut comment = true;
    while elapsed < for_ms {
        steps.push(sleep_ms(every_ms));
        steps.push(if comment {
            comment_heartbeat()
        } else {
            empty_data_heartbeat()
        });
        comment = !comment;
        elapsed += every_ms;
    }
    steps
}

/// An ADK event with one text part.
pub fn adk_text(text: &str, partial: bool) -> String {
    json!({
        "invocationId": "e-inv-1",
        "author": "nemo_agent",
        "partial": partial,
        "content": { "role": "model", "parts": [ { "text": text } ] }
    })
    .to_string()
}

/// An ADK event with one thought part.
pub fn adk_thought(text: &str) -> String {
    json!({
        "author": "nemo_agent",
        "content": { "role": "model", "parts": [ { "text": text, "thought": true } ] }
    })
    .to_string()
}

/// An ADK event with one `functionCall` part.
pub fn adk_call(id: &str, name: &str, args: Value) -> String {
    json!({
        "author": "nemo_agent",
        "content": { "role": "model", "parts": [
            { "functionCall": { "id": id, "name": name, "args": args } }
        ] }
    })
    .to_string()
}

/// An ADK event with one `functionResponse` part.
pub fn adk_response(id: &str, name: &str, response: Value) -> String {
    json!({
        "author": "nemo_agent",
        "content": { "role": "user", "parts": [
            { "functionResponse": { "id": id, "name": name, "response": response } }
        ] }
    })
    .to_string()
}

/// An ADK event carrying only a state delta.
pub fn adk_state_delta(delta: Value) -> String {
    json!({ "author": "nemo_agent", "actions": { "stateDelta": delta } }).to_string()
}

/// A draft track (short keys): `tt` type, one segment `name` at `start_ms` for `duration_ms`.
pub fn track(track_type: u8, name: &str, start_ms: u64, duration_ms: u64) -> Value {
    json!({
        "tt": track_type,
        "sg": [ { "s": start_ms, "d": duration_ms, "m": { "name": name } } ]
    })
}

/// A draft holding these tracks.
pub fn draft(tracks: Vec<Value>) -> Value {
    json!({ "t": tracks })
}

/// The draft most turn tests start from: one video track.
pub fn one_video_draft() -> Value {
    draft(vec![track(0, "city timelapse", 0, 10_000)])
}

/// The same draft with a title track added.
pub fn video_and_title_draft() -> Value {
    draft(vec![
        track(0, "city timelapse", 0, 10_000),
        track(7, "Urban Dreams", 0, 3_000),
    ])
}
