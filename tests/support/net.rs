//! Connection faults on loopback: a closed port, a server that accepts and never answers, a
//! port whose handshake never completes, a plain-HTTP port for `https` URLs; and a count of
//! the SDK's attempts for one call.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback port with nothing listening, for as long as it lives: connecting is refused.
/// A bound socket that never listens holds the port, so no parallel test can start listening
/// there (a listener bound and dropped would free the port for anyone to take).
pub struct ClosedPort {
    address: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// A loopback port that refuses connections while the returned [`ClosedPort`] lives.
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let address = socket.local_addr().expect("address");
    ClosedPort {
        address,
        _socket: socket,
    }
}

/// A loopback server that runs on its own thread until dropped. `answer` decides what each
/// accepted connection gets: `None` keeps it open and silent, `Some(bytes)` reads the request
/// head's first packet, writes `bytes` and closes.
pub struct LoopbackServer {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    fn start(answer: Option<&'static [u8]>) -> LoopbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut open: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            match answer {
                                None => open.push(stream),
                                Some(bytes) => {
                                    let _ = stream.set_nonblocking(false);
                                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                                    let mut buffer = [0u8; 4096];
                                    let _ = stream.read(&mut buffer);
                                    let _ = stream.write_all(bytes);
                                }
                            }
                        }
                        // Nothing waiting: look again shortly (the stop flag ends the loop).
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        LoopbackServer {
            address,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// A server that accepts every connection and never sends a byte.
    pub fn silent() -> LoopbackServer {
        LoopbackServer::start(None)
    }

    /// A plain-HTTP server answering `400 Bad Request` to anything (a TLS handshake
    /// included).
    pub fn plain_http() -> LoopbackServer {
        LoopbackServer::start(Some(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ))
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listening port whose TCP handshake never completes: its accept queue (backlog 0) is
/// full and nobody accepts, so Linux drops every new SYN and a client's connect hangs until
/// its connect timeout.
pub struct StuckPort {
    address: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

impl StuckPort {
    /// Fills the accept queue; panics if it cannot be filled with 8 connections.
    pub async fn start() -> StuckPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let mut queued = Vec::new();
        for _ in 0..8 {
            // A loopback handshake takes microseconds; one that takes a second was dropped.
            match tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(err)) => panic!("filling the accept queue failed: {err}"),
                Err(_) => {
                    return StuckPort {
                        address,
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!("the accept queue of a backlog-0 listener did not fill up");
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Counts the spans named `nemo.request` (the SDK opens one per attempt) on this thread.
struct AttemptCounter {
    attempts: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl tracing::Subscriber for AttemptCounter {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if span.metadata().name() == "nemo.request" {
            self.attempts.fetch_add(1, Ordering::SeqCst);
        }
        tracing::span::Id::from_u64(self.next_id.fetch_add(1, Ordering::SeqCst))
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `call` on this thread (use a current-thread runtime) and counts the SDK's attempts:
/// one `nemo.request` span each. Counting tests run one at a time, since `tracing` caches
/// callsite interest process-wide.
pub async fn count_attempts<F: Future>(call: F) -> (F::Output, usize) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = ONE_AT_A_TIME.lock().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let subscriber = AttemptCounter {
        attempts: Arc::clone(&attempts),
        next_id: AtomicU64::new(1),
    };
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let output = call.await;
    drop(guard);
    (output, attempts.load(Ordering::SeqCst))
}

/// A loopback port that notices any connection: point `NEMO_API_BASE` at it to prove that
/// nothing was sent. The kernel completes handshakes for it while nobody accepts, so every
/// connection attempt stays queued until [`Tripwire::connections`] counts it.
pub struct Tripwire {
    listener: TcpListener,
}

impl Tripwire {
    pub fn new() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Tripwire { listener }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().expect("address"))
    }

    /// Connections made to it so far.
    pub fn connections(&self) -> usize {
        let mut count = 0;
        while self.listener.accept().is_ok() {
            count += 1;
        }
        count
    }
}

/// A port `p` such that `p`, `p + 1` and `p + 2` lie below the kernel's ephemeral range, so no
/// test binding port 0 can take them; chosen at random, so parallel tests rarely meet. A
/// caller still retries with another when one of them is taken.
pub fn fixed_port_candidate() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.saturating_sub(3).max(11_000);
    fastrand::u16(high - 10_000..high)
}
