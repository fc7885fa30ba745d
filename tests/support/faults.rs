//! Fault plumbing for `suite/tests/fault_matrix.rs`: a scripted DNS resolver that can make the next
//! connection to a host be refused, and a raw TCP front proxy (127.0.0.1 only) that forwards
//! requests to the simulator or answers a matching request with a scripted fault the
//! simulator cannot produce (reset, stall, truncated or endless bodies, malformed JSON).
//!
//! The proxy sees every request that reaches "the server", so its counts are the ones the
//! matrix asserts ("was this POST sent twice?").

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Host name the API base URL uses; resolved by [`ScriptedResolver`].
pub const API_HOST: &str = "api.nemo.test";
/// Host name the CDN URLs use.
pub const CDN_HOST: &str = "cdn.nemo.test";

/// Resolves both test hosts to 127.0.0.1, except that the next `n` look-ups of a host can be
/// pointed at 127.0.0.2, where nothing listens: the connection is refused before any byte of
/// the request is sent. The client must not pool connections (every request resolves).
#[derive(Default)]
pub struct ScriptedResolver {
    refuse: Mutex<HashMap<String, usize>>,
    refused: AtomicUsize,
}

impl ScriptedResolver {
    /// The next `times` connections to `host` are refused.
    pub fn refuse_next(&self, host: &str, times: usize) {
        *self
            .refuse
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default() += times;
    }

    /// How many connections were refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Resolve for ScriptedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let refuse = {
            let mut map = self.refuse.lock().unwrap();
            match map.get_mut(name.as_str()) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        let ip = if refuse {
            self.refused.fetch_add(1, Ordering::SeqCst);
            Ipv4Addr::new(127, 0, 0, 2)
        } else {
            Ipv4Addr::LOCALHOST
        };
        // The URL's port replaces this one.
        let addrs: Addrs = Box::new(std::iter::once(SocketAddr::from((ip, 0))));
        Box::pin(async move { Ok(addrs) })
    }
}

/// What the proxy does with a matching request (after reading it whole).
#[derive(Clone, Debug)]
pub enum Action {
    /// Send `head` and `partial` body bytes, then reset the connection (RST).
    Reset { head: String, partial: Vec<u8> },
    /// Send nothing and hold the connection open (until the proxy is dropped).
    Stall,
    /// Send `head` and `partial`, then go silent with the connection open.
    StallMidBody { head: String, partial: Vec<u8> },
    /// Send `head` (whose Content-Length is larger than what follows) and `partial`, then
    /// close the connection normally (FIN).
    Truncated { head: String, partial: Vec<u8> },
    /// Send this whole response, then close.
    Respond(Vec<u8>),
    /// Send `head`, then `unit` over and over until the client goes away.
    Endless { head: String, unit: Vec<u8> },
}

struct Rule {
    endpoint: &'static str,
    times: usize,
    action: Action,
}

#[derive(Default)]
struct ProxyState {
    rules: Vec<Rule>,
    /// Requests seen per endpoint label (forwarded and intercepted).
    seen: HashMap<&'static str, usize>,
    /// When each of them had arrived whole, per endpoint label.
    arrivals: HashMap<&'static str, Vec<Instant>>,
    /// Requests answered by a rule per endpoint label.
    intercepted: HashMap<&'static str, usize>,
}

/// A raw HTTP/1.1 front proxy on 127.0.0.1. Stops (and drops every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    endless_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:4567`).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is host:port");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let endless_bytes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            state.clone(),
            endless_bytes.clone(),
        ));
        Proxy {
            addr,
            state,
            endless_bytes,
            task,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next `times` requests to `endpoint` (see [`endpoint_of`]) get `action`.
    pub fn on(&self, endpoint: &'static str, times: usize, action: Action) {
        self.state.lock().unwrap().rules.push(Rule {
            endpoint,
            times,
            action,
        });
    }

    /// Requests that reached the proxy for `endpoint`.
    pub fn seen(&self, endpoint: &'static str) -> usize {
        *self.state.lock().unwrap().seen.get(endpoint).unwrap_or(&0)
    }

    /// When each request for `endpoint` had arrived whole, in order.
    pub fn arrivals(&self, endpoint: &'static str) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .arrivals
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests for `endpoint` answered by a rule instead of the simulator.
    pub fn intercepted(&self, endpoint: &'static str) -> usize {
        *self
            .state
            .lock()
            .unwrap()
            .intercepted
            .get(endpoint)
            .unwrap_or(&0)
    }

    /// Bytes written by [`Action::Endless`] bodies so far.
    pub fn endless_bytes(&self) -> u64 {
        self.endless_bytes.load(Ordering::SeqCst)
    }
}

/// The endpoint a request path belongs to (labels match the simulator's `Endpoint`s).
pub fn endpoint_of(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "auth", "anonymous-token"] => "anonymous-token",
        ["api", "tasks", "me", "with-session", "nemo_agent"] => "create-session",
        ["run_sse"] => "run_sse",
        ["api", "upload-video", ..] => "upload",
        ["api", "credits", ..] => "credits",
        ["api", "state", ..] => "state",
        ["api", "render", "proxy", "lambda"] => "render-submit",
        ["api", "render", "proxy", "lambda", _] => "render-status",
        ["api", "render", "proxy", "lambda", _, "cancel"] => "render-cancel",
        ["api", "render", "proxy", _, "download"] => "render-download",
        ["renders", _] => "cdn-output",
        _ => "other",
    }
}

/// A response head with `Connection: close`; `content_length: None` means a body delimited
/// by closing the connection.
pub fn head(status: u16, content_type: &str, content_length: Option<usize>) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\nconnection: close\r\n",
        if status == 200 { "OK" } else { "Fault" }
    );
    if let Some(len) = content_length {
        head.push_str(&format!("content-length: {len}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A whole response with an exact Content-Length.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head(status, content_type, Some(body.len())).into_bytes();
    out.extend_from_slice(body);
    out
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    endless_bytes: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, upstream, state.clone(), endless_bytes.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    endless_bytes: Arc<AtomicU64>,
) {
    let _ = client.set_nodelay(true);
    // Read the head.
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head_text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut content_length = 0usize;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let lower = name.trim().to_ascii_lowercase();
        if lower == "content-length" {
            content_length = value.trim().parse().unwrap_or(0);
        }
        if lower != "connection" && lower != "keep-alive" {
            headers.push(line.to_string());
        }
    }
    // Read the body whole, so a fault is always "after the request arrived".
    while buf.len() < head_end + content_length {
        let mut chunk = vec![0u8; 64 * 1024];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let endpoint = endpoint_of(&path);
    let action = {
        let mut state = state.lock().unwrap();
        *state.seen.entry(endpoint).or_default() += 1;
        state
            .arrivals
            .entry(endpoint)
            .or_default()
            .push(Instant::now());
        let action = state
            .rules
            .iter_mut()
            .find(|rule| rule.endpoint == endpoint && rule.times > 0)
            .map(|rule| {
                rule.times -= 1;
                rule.action.clone()
            });
        if action.is_some() {
            *state.intercepted.entry(endpoint).or_default() += 1;
        }
        action
    };
    match action {
        None => {
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let mut out = format!("{request_line}\r\n");
            for line in &headers {
                out.push_str(line);
                out.push_str("\r\n");
            }
            out.push_str("connection: close\r\n\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&buf[head_end..]);
            if up.write_all(&bytes).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
        Some(Action::Respond(bytes)) => {
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
        }
        Some(Action::Stall) => {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Some(Action::StallMidBody { head, partial }) => {
            let _ = client.write_all(head.as_bytes()).await;
            let _ = client.write_all(&partial).await;
            let _ = client.flush().await;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Some(Action::Truncated { head, partial }) => {
            let _ = client.write_all(head.as_bytes()).await;
            let _ = client.write_all(&partial).await;
            let _ = client.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = client.shutdown().await;
        }
        Some(Action::Reset { head, partial }) => {
            let _ = client.write_all(head.as_bytes()).await;
            let _ = client.write_all(&partial).await;
            let _ = client.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            // SO_LINGER 0: closing sends RST instead of FIN (and does not block).
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            drop(client);
        }
        Some(Action::Endless { head, unit }) => {
            if client.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                if client.write_all(&unit).await.is_err() {
                    return;
                }
                endless_bytes.fetch_add(unit.len() as u64, Ordering::SeqCst);
            }
        }
    }
}
