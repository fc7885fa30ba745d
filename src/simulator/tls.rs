//! The simulator's HTTPS mode: the API origin behind TLS, speaking HTTP/2 or HTTP/1.1 as the
//! client's ALPN chooses, with a gateway's stream limit and connection rotation, as production
//! gateways (nginx, cloud load balancers) run in front of the service.
//!
//! Policy and defaults (set on [`SimulatorBuilder`]): off until [`SimulatorBuilder::https`];
//! ALPN offers `h2` then `http/1.1` ([`SimulatorBuilder::http2`] turns `h2` off); each
//! HTTP/2 connection announces at most 128 concurrent streams, nginx's default
//! ([`SimulatorBuilder::max_concurrent_streams`]); connections are never rotated unless
//! [`SimulatorBuilder::goaway_after`] says after how many requests, as nginx's
//! `keepalive_requests` does. The CDN and web origins stay plain HTTP.
//!
//! **The certificate is for tests only.** The server presents `assets/test-tls/localhost.pem`
//! (for `localhost`, `127.0.0.1` and `::1`), issued by the test CA in `assets/test-tls/ca.pem`
//! ([`TEST_CA_PEM`]); both were made once by `scripts/make-test-certs` and are valid from 2025
//! to 2125. The leaf's private key is committed, so anyone can impersonate localhost to a
//! client that trusts this CA: give the CA to a test's own client
//! ([`NemoClientBuilder::add_root_certificate`](crate::NemoClientBuilder::add_root_certificate)),
//! never to a system trust store. A committed certificate costs no dependency; a generator
//! (`rcgen`) would add several crates to every build with the `simulator` feature.
//!
//! How the rotation works, over HTTP/2: when the request after the `n`th arrives on a
//! connection, the simulator sends a GOAWAY whose last stream id is the `n`th request's (the
//! frame is written into the connection between two of hyper's frames) and resets every later
//! stream with `REFUSED_STREAM` without processing it: the client sees what nginx's
//! `keepalive_requests` produces, a stream above the GOAWAY's last stream id, and such a
//! request never reaches the simulated service (it is not in [`SimulatorHandle::requests`]).
//! Streams at or below the last stream id run to their end. Over HTTP/1.1 the `n`th response
//! carries `Connection: close`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::server::{self, Origin};
use super::state::Shared;
use super::{SimulatorBuilder, SimulatorHandle};

/// The test CA (PEM) that issued the certificate the simulator serves in HTTPS mode
/// ([`SimulatorBuilder::https`]), for `localhost`, `127.0.0.1` and `::1`, valid 2025 to 2125.
///
/// **Test use only.** The server's private key is committed with the crate
/// (`assets/test-tls/`, made by `scripts/make-test-certs`), so anyone can impersonate localhost
/// to a client that trusts this CA: give it to a test's own client
/// ([`NemoClientBuilder::add_root_certificate`](crate::NemoClientBuilder::add_root_certificate)),
/// never to a system trust store.
pub const TEST_CA_PEM: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/test-tls/ca.pem"
));

const LEAF_PEM: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/test-tls/localhost.pem"
));

const LEAF_KEY_PEM: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/test-tls/localhost.key"
));

/// HTTPS settings (see [`SimulatorBuilder::https`]).
#[derive(Debug, Clone)]
pub(crate) struct TlsConfig {
    enabled: bool,
    http2: bool,
    max_concurrent_streams: u32,
    goaway_after: Option<u64>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            http2: true,
            max_concurrent_streams: 128,
            goaway_after: None,
        }
    }
}

impl TlsConfig {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }
}

impl SimulatorBuilder {
    /// Serve the API origin over HTTPS, with ALPN offering HTTP/2 (`h2`) and HTTP/1.1, as a
    /// production gateway does; [`Simulator::base_url`](super::SimulatorHandle::base_url) is
    /// then `https://127.0.0.1:<port>`. The certificate is for `localhost`, `127.0.0.1` and
    /// `::1`, issued by a test CA: trust it with
    /// [`SimulatorHandle::ca_certificate_pem`]. The CDN and web origins stay plain HTTP.
    /// Default: plain HTTP/1.1.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use nemo_video::reqwest::Certificate;
    /// use nemo_video::simulator::Simulator;
    ///
    /// let sim = Simulator::builder().https().max_concurrent_streams(128).start().await?;
    /// let client = nemo_video::NemoClient::builder()
    ///     .base_url(sim.base_url())
    ///     .add_root_certificate(Certificate::from_pem(sim.ca_certificate_pem().as_bytes())?)
    ///     .no_persistence()
    ///     .build()?;
    /// println!("{} credits", client.credits().await?.available);
    /// # Ok(()) }
    /// ```
    pub fn https(mut self) -> Self {
        self.config.tls.enabled = true;
        self
    }

    /// Whether HTTPS offers HTTP/2 (ALPN `h2`); `false` offers only `http/1.1`, like a
    /// gateway without HTTP/2. Takes effect with [`https`](Self::https). Default: true.
    pub fn http2(mut self, offer: bool) -> Self {
        self.config.tls.http2 = offer;
        self
    }

    /// The most concurrent streams each HTTP/2 connection allows (announced in its SETTINGS;
    /// a client keeps further requests waiting). Takes effect with [`https`](Self::https).
    /// Default: 128, nginx's `http2_max_concurrent_streams`.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.config.tls.max_concurrent_streams = streams.max(1);
        self
    }

    /// Rotate each connection after `requests` requests, as nginx's `keepalive_requests`
    /// does: over HTTP/2 a GOAWAY with the `requests`th request's stream id as the last one,
    /// sent when the next request arrives, which is refused unprocessed together with any
    /// after it; over HTTP/1.1 the `requests`th response says `Connection: close`. Takes
    /// effect with [`https`](Self::https). Default: never.
    pub fn goaway_after(mut self, requests: u64) -> Self {
        self.config.tls.goaway_after = Some(requests.max(1));
        self
    }
}

/// What the HTTPS origin saw (see [`SimulatorHandle::https_stats`]).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpsStats {
    /// TLS connections that completed the handshake.
    pub connections: u64,
    /// Those of them that chose HTTP/2.
    pub http2_connections: u64,
    /// GOAWAY frames sent to rotate a connection.
    pub goaways: u64,
    /// Requests refused unprocessed (above a GOAWAY's last stream id, or by
    /// [`SimulatorHandle::refuse_next_streams`]), as `"METHOD /path"`, in arrival order.
    pub refused: Vec<String>,
}

/// Counters the HTTPS listener shares with the handle.
#[derive(Default)]
pub(crate) struct TlsState {
    connections: AtomicU64,
    http2_connections: AtomicU64,
    goaways: AtomicU64,
    refused: Mutex<Vec<String>>,
    /// Streams still to refuse with `REFUSED_STREAM` (see `refuse_next_streams`).
    refuse_next: AtomicU64,
}

impl TlsState {
    /// Takes one of the streams [`SimulatorHandle::refuse_next_streams`] asked to refuse.
    fn take_refusal(&self) -> bool {
        self.refuse_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

impl SimulatorHandle {
    /// The PEM of the test CA that issued the certificate of [`SimulatorBuilder::https`]
    /// ([`TEST_CA_PEM`]). Give it to a test's client with
    /// [`NemoClientBuilder::add_root_certificate`](crate::NemoClientBuilder::add_root_certificate);
    /// never install it anywhere else (the server's key is public).
    pub fn ca_certificate_pem(&self) -> &'static str {
        TEST_CA_PEM
    }

    /// The next `streams` HTTP/2 requests to the API origin are reset with `REFUSED_STREAM`
    /// before they are processed, as a server shedding load does; they never reach the
    /// simulated service and are listed in [`HttpsStats::refused`]. HTTP/1.1 requests are
    /// not affected (HTTP/1 has no such answer).
    pub fn refuse_next_streams(&self, streams: u64) {
        self.shared
            .tls
            .refuse_next
            .fetch_add(streams, Ordering::Relaxed);
    }

    /// Connections, GOAWAYs and refused requests of the HTTPS origin so far (all zero
    /// without [`SimulatorBuilder::https`]).
    pub fn https_stats(&self) -> HttpsStats {
        let tls = &self.shared.tls;
        HttpsStats {
            connections: tls.connections.load(Ordering::Relaxed),
            http2_connections: tls.http2_connections.load(Ordering::Relaxed),
            goaways: tls.goaways.load(Ordering::Relaxed),
            refused: tls
                .refused
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}

fn acceptor(config: &TlsConfig) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, err: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the simulator's test {what} is unusable: {err}"),
        )
    };
    let chain = CertificateDer::pem_slice_iter(LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid("certificate", &err))?;
    let key = PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes())
        .map_err(|err| invalid("key", &err))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| invalid("TLS setup", &err))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|err| invalid("certificate", &err))?;
    server.alpn_protocols = if config.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Checks the TLS setup before the listener starts, so `start` fails instead of every
/// connection.
pub(crate) fn check(config: &TlsConfig) -> io::Result<()> {
    acceptor(config).map(drop)
}

/// Accepts TLS connections on the API origin until the task is aborted; dropping this future
/// closes the listener and cancels every connection it spawned.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let acceptor = match acceptor(&shared.config.tls) {
        Ok(acceptor) => acceptor,
        Err(err) => {
            // `check` ran before the listener was handed over, so this cannot happen.
            tracing::error!(%err, "simulator HTTPS setup failed");
            return;
        }
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, acceptor.clone(), shared.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "simulator accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let stream = match acceptor.accept(stream).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%err, "simulator TLS handshake failed");
            return;
        }
    };
    shared.tls.connections.fetch_add(1, Ordering::Relaxed);
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let config = shared.config.tls.clone();
    // Requests this connection has carried, in the order hyper accepted them (for HTTP/2:
    // the order their HEADERS arrived, which is also the order of their stream ids).
    let served = Arc::new(AtomicU64::new(0));
    let result = if http2 {
        shared.tls.http2_connections.fetch_add(1, Ordering::Relaxed);
        let watch = FrameWatch::new(stream, config.goaway_after, shared.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            // Decided here, when hyper accepts the stream, not in the future: hyper calls
            // the service in stream order, the order the frame watch counts.
            let number = served.fetch_add(1, Ordering::Relaxed) + 1;
            let refused = config.goaway_after.is_some_and(|limit| number > limit)
                || shared.tls.take_refusal();
            let shared = shared.clone();
            async move {
                if refused {
                    let request = format!("{} {}", req.method(), req.uri().path());
                    shared
                        .tls
                        .refused
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(request);
                    // hyper resets the stream with the reason found in the error.
                    return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
                }
                Ok(server::handle(&shared, Origin::Api, req).await)
            }
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .serve_connection(TokioIo::new(watch), service)
            .await
    } else {
        let service = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let number = served.fetch_add(1, Ordering::Relaxed) + 1;
            let last = config.goaway_after == Some(number);
            async move {
                let mut resp = server::handle(&shared, Origin::Api, req).await;
                if last {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
    };
    if let Err(err) = result {
        tracing::debug!(%err, "simulator HTTPS connection ended with an error");
    }
}

// ---------------------------------------------------------------------------------------------
// The frame watch: reads the frames passing between TLS and hyper's HTTP/2 server, to count
// the streams the client opens and to write a GOAWAY between two of hyper's frames.

const FRAME_HEADER: usize = 9;
const CLIENT_PREFACE: usize = 24;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
#[derive(Default)]
struct FrameCursor {
    /// Bytes still to skip before the first frame (the client's connection preface).
    preface: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    payload_left: usize,
    /// Inside a header block (HEADERS or PUSH_PROMISE without END_HEADERS, then
    /// CONTINUATIONs): no other frame may come between its frames.
    in_header_block: bool,
}

impl FrameCursor {
    /// Consumes `bytes`, calling `on_header(type, flags, stream id)` for each frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let skip = self.preface.min(bytes.len());
                self.preface -= skip;
                bytes = &bytes[skip..];
            } else if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
            } else {
                let take = (FRAME_HEADER - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == FRAME_HEADER {
                    self.header_len = 0;
                    let h = self.header;
                    let length =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    self.payload_left = length;
                    if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
                        self.in_header_block = flags & END_HEADERS == 0;
                    }
                    on_header(kind, flags, stream);
                }
            }
        }
    }

    /// Whether a frame of our own may be written now.
    fn at_safe_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_header_block
    }

    /// Bytes left in the frame being written, when inside one.
    fn left_in_frame(&self) -> Option<usize> {
        if self.header_len > 0 {
            Some(FRAME_HEADER - self.header_len)
        } else if self.payload_left > 0 {
            Some(self.payload_left)
        } else {
            None
        }
    }
}

/// The TLS stream of one HTTP/2 connection, watched.
struct FrameWatch<T> {
    io: T,
    /// Rotate after this many streams.
    goaway_after: Option<u64>,
    shared: Arc<Shared>,
    incoming: FrameCursor,
    outgoing: FrameCursor,
    streams_opened: u64,
    highest_stream: u32,
    /// The id of the stream that was the `goaway_after`th.
    last_served: u32,
    /// A GOAWAY waiting for a frame boundary, and how much of it is written.
    goaway: Option<([u8; FRAME_HEADER + 8], usize)>,
    goaway_sent: bool,
}

impl<T> FrameWatch<T> {
    fn new(io: T, goaway_after: Option<u64>, shared: Arc<Shared>) -> Self {
        FrameWatch {
            io,
            goaway_after,
            shared,
            incoming: FrameCursor {
                preface: CLIENT_PREFACE,
                ..FrameCursor::default()
            },
            outgoing: FrameCursor::default(),
            streams_opened: 0,
            highest_stream: 0,
            last_served: 0,
            goaway: None,
            goaway_sent: false,
        }
    }

    fn saw_incoming(&mut self, bytes: &[u8]) {
        let Some(limit) = self.goaway_after else {
            return;
        };
        let mut opened = Vec::new();
        let highest = &mut self.highest_stream;
        self.incoming.feed(bytes, |kind, _, stream| {
            // A HEADERS frame on a new (higher) stream id opens a stream; trailers reuse one.
            if kind == HEADERS && stream > *highest {
                *highest = stream;
                opened.push(stream);
            }
        });
        for stream in opened {
            self.streams_opened += 1;
            if self.streams_opened == limit {
                self.last_served = stream;
            } else if self.streams_opened == limit + 1 && !self.goaway_sent {
                let mut frame = [0u8; FRAME_HEADER + 8];
                frame[2] = 8; // length
                frame[3] = GOAWAY;
                frame[FRAME_HEADER..FRAME_HEADER + 4]
                    .copy_from_slice(&self.last_served.to_be_bytes());
                // Error code 0: NO_ERROR, a graceful rotation.
                self.goaway = Some((frame, 0));
                self.goaway_sent = true;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> FrameWatch<T> {
    /// Writes a pending GOAWAY if the outgoing stream is between two frames.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.outgoing.at_safe_boundary() {
            return Poll::Ready(Ok(()));
        }
        while let Some((frame, written)) = self.goaway.as_mut() {
            match Pin::new(&mut self.io).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == frame.len() {
                        self.goaway = None;
                        self.shared.tls.goaways.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            // Seen before hyper parses it, so the GOAWAY is queued before hyper can answer
            // the stream it refuses.
            self.saw_incoming(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_goaway(cx))?;
        // With a GOAWAY waiting, write only to the end of the current frame, so it can go next.
        let len = match (&this.goaway, this.outgoing.left_in_frame()) {
            (Some(_), Some(left)) => left.min(buf.len()),
            _ => buf.len(),
        };
        let written = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..len]))?;
        this.outgoing.feed(&buf[..written], |_, _, _| {});
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_goaway(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut bytes = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
        ];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.resize(FRAME_HEADER + payload, 0xAB);
        bytes
    }

    #[test]
    fn the_cursor_finds_frames_across_any_split_and_header_blocks() {
        let mut stream = vec![0u8; CLIENT_PREFACE];
        stream.extend(frame(0x4, 0, 0, 18)); // SETTINGS
        stream.extend(frame(HEADERS, END_HEADERS, 1, 30));
        stream.extend(frame(0x0, 0x1, 1, 5)); // DATA, END_STREAM
        stream.extend(frame(HEADERS, 0, 3, 10)); // no END_HEADERS: a block begins
        stream.extend(frame(CONTINUATION, END_HEADERS, 3, 4));
        for piece in [1, 2, 7, 9, 10, 64, stream.len()] {
            let mut cursor = FrameCursor {
                preface: CLIENT_PREFACE,
                ..FrameCursor::default()
            };
            let mut seen = Vec::new();
            for chunk in stream.chunks(piece) {
                cursor.feed(chunk, |kind, _, id| seen.push((kind, id)));
            }
            assert_eq!(
                seen,
                vec![
                    (0x4, 0),
                    (HEADERS, 1),
                    (0x0, 1),
                    (HEADERS, 3),
                    (CONTINUATION, 3)
                ],
                "pieces of {piece}"
            );
            assert!(cursor.at_safe_boundary(), "pieces of {piece}");
        }
        let mut cursor = FrameCursor::default();
        cursor.feed(&frame(HEADERS, 0, 5, 3), |_, _, _| {});
        assert!(!cursor.at_safe_boundary(), "inside a header block");
        assert_eq!(cursor.left_in_frame(), None);
        cursor.feed(&frame(CONTINUATION, END_HEADERS, 5, 3)[..4], |_, _, _| {});
        assert_eq!(cursor.left_in_frame(), Some(5));
    }
}
