//! The HTTP clients the transport sends through: a small pool of them per origin, so that no
//! request waits behind an HTTP/2 connection's stream limit.
//!
//! Policy (the cap is [`NemoClientBuilder::max_streams_per_connection`](crate::NemoClientBuilder::max_streams_per_connection),
//! default [`DEFAULT_MAX_STREAMS_PER_CONNECTION`](crate::DEFAULT_MAX_STREAMS_PER_CONNECTION)):
//! - Over HTTP/2 one `reqwest::Client` sends every request to an origin on one connection, and
//!   the server limits how many streams one connection may have open (nginx and cloud load
//!   balancers: 128). Requests past the limit wait inside hyper until an earlier stream ends,
//!   which for a turn is minutes, and short calls (session, upload, state, credits) wait with
//!   them. So the transport keeps several clients per origin (each with its own connection
//!   pool, so its own HTTP/2 connection), counts the requests in flight on each, sends a new
//!   request on the least loaded one, and builds another client when every one carries the
//!   cap. A request counts from the moment it is sent until its response body ends or is
//!   dropped, so a stream counts for its whole life.
//! - Over HTTP/2, streams (the message stream, downloads) and calls go on connections of their
//!   own (see [`Lane`]), so connection rotation counts a stream connection's requests in
//!   streams, not in the state reads in between.
//! - An origin that answers over HTTP/1 keeps one client, exactly as before: its pool opens a
//!   connection per concurrent request, and spreading would only split its idle connections.
//!   Until an origin has answered once its protocol is unknown and the pool spreads as for
//!   HTTP/2 (at worst a burst to an HTTP/1 origin leaves a few more idle clients).
//! - reqwest does not expose the limit a server announces (`SETTINGS_MAX_CONCURRENT_STREAMS`),
//!   so the cap is configured, not learned: the default (100) is under the usual limits (100
//!   to 256) or equal to the lowest. At most [`MAX_CLIENTS_PER_ORIGIN`] clients per origin;
//!   past that (6,400 requests in flight at the default cap) requests go to the least loaded.
//! - A `reqwest::Client` given to
//!   [`NemoClientBuilder::http_client`](crate::NemoClientBuilder::http_client) is used alone:
//!   its pool cannot be copied, so there is nothing to spread over.
//!
//! This module also reads reqwest's errors for the one thing the retry loop needs from the
//! protocol: whether a request certainly never reached the service (see [`refusal_of`]).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use url::Url;

use crate::error::{Error, Result};

/// Most clients (so HTTP/2 connections) the transport keeps per origin.
pub(crate) const MAX_CLIENTS_PER_ORIGIN: usize = 64;

/// Resends of one request refused by a connection going away (above a GOAWAY's last stream
/// id), on top of the retry budget: each goes at once to a connection that is not closing,
/// and none of them reached the service. Bounded for a server that turns every connection
/// away.
pub(crate) const MAX_RESENDS_AFTER_GOAWAY: u32 = 10;

/// Longest wait for an origin's first answer before a request goes without knowing what the
/// origin speaks (see [`Connections::checkout`]).
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Builds one more `reqwest::Client` with the SDK's settings and the caller's hook applied;
/// `true` asks for one that speaks HTTP/2 only (prior knowledge).
pub(crate) type ClientFactory = Arc<dyn Fn(bool) -> Result<reqwest::Client> + Send + Sync>;

/// Which of an HTTP/2 origin's connections a request goes on.
///
/// Streams (a turn's `/run_sse`, downloads) and calls (JSON requests, uploads) get connections
/// of their own. A gateway that rotates connections after so many requests (nginx's
/// `keepalive_requests`) counts every request, and a turn makes a state read for each stream:
/// on shared connections, 1,000 streams of 20 s with a GOAWAY every 100 requests were held on
/// 22–24 connections (each had carried about as many reads as streams before its GOAWAY); apart,
/// a stream connection carries streams only. Over HTTP/1 there is one lane: a connection left
/// idle by a call is reused by the next stream, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Requests answered at once: JSON calls, uploads.
    Calls = 0,
    /// Responses read for a long time: the message stream, downloads.
    Streams = 1,
}

/// Where the clients come from.
enum Source {
    /// Built by the SDK, as many as the load needs.
    Factory(ClientFactory),
    /// The caller's own client, used alone.
    Fixed(reqwest::Client),
}

/// The clients of every origin the transport has talked to.
pub(crate) struct Connections {
    source: Source,
    max_streams: usize,
    /// The client built with the settings (so a bad setting fails at `build`), handed to the
    /// first origin that needs one.
    first: Mutex<Option<reqwest::Client>>,
    /// Few entries (the API and the CDN serving render outputs): a list is enough.
    origins: Mutex<Vec<Arc<OriginPool>>>,
}

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

struct OriginPool {
    origin: url::Origin,
    /// What the origin last answered with: `UNKNOWN`, `HTTP1` or `HTTP2`.
    protocol: AtomicU8,
    /// A request is finding out what the origin speaks; others wait for it (see `checkout`).
    probing: AtomicBool,
    probed: Notify,
    /// The clients of each [`Lane`], by its index; over HTTP/1 (or before the protocol is
    /// known) only the first lane's.
    lanes: [Mutex<Vec<Arc<Pooled>>>; 2],
}

impl OriginPool {
    fn settle_probe(&self) {
        if self.probing.swap(false, Ordering::AcqRel) {
            self.probed.notify_waiters();
        }
    }
}

struct Pooled {
    client: reqwest::Client,
    in_flight: AtomicUsize,
    /// Built for HTTP/2 only. hyper-util lets one connection attempt at a time run for such a
    /// client (the others wait for it), where a client that negotiates the protocol dials
    /// once for every request that finds no connection ready: after every GOAWAY and at
    /// every new client, a burst of TLS handshakes, all but one thrown away. 300 users with
    /// connections rotated every 100 requests (`tests/http2.rs`) made 767 TLS handshakes;
    /// with clients for HTTP/2 only 80, with the first-answer wait of `checkout` too 17–18
    /// (14 of them for the 14 rotations).
    http2_only: bool,
}

/// One request's place on a client: counted from checkout until dropped.
pub(crate) struct Lease {
    pooled: Arc<Pooled>,
    origin: Arc<OriginPool>,
    /// This request is finding out what the origin speaks.
    probe: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pooled.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Cancelled before an answer: the next request finds out instead.
        self.settle();
    }
}

impl Lease {
    /// Records the protocol the origin answered with.
    pub(crate) fn observe(&mut self, version: reqwest::Version) {
        let protocol = if version == reqwest::Version::HTTP_2 {
            HTTP2
        } else {
            HTTP1
        };
        self.origin.protocol.store(protocol, Ordering::Relaxed);
        self.settle();
    }

    fn settle(&mut self) {
        if std::mem::take(&mut self.probe) {
            self.origin.settle_probe();
        }
    }

    /// Records that the request failed before any answer. On a client built for HTTP/2 only,
    /// that may be an origin that no longer speaks it (a gateway replaced by one without
    /// HTTP/2): the origin goes back to negotiating, at the cost of nothing but the next
    /// burst's handshakes, until it answers over HTTP/2 again.
    pub(crate) fn failed(&mut self) {
        if self.pooled.http2_only {
            self.origin.protocol.store(UNKNOWN, Ordering::Relaxed);
        }
        self.settle();
    }

    /// Makes the lease last as long as the response body: it ends when the body ends, fails
    /// or is dropped, wherever the response goes (a stream, a download).
    pub(crate) fn hold_until_body_ends(mut self, response: reqwest::Response) -> reqwest::Response {
        self.settle();
        let response: http::Response<reqwest::Body> = response.into();
        // The URL is not carried over (reqwest keeps it in a private extension); nothing
        // reads it from a response.
        response
            .map(|body| {
                reqwest::Body::wrap(LeasedBody {
                    inner: body,
                    lease: Some(self),
                })
            })
            .into()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every later request down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connections {
    /// Clients built by `factory` as the load needs them, at most `max_streams` requests in
    /// flight on each HTTP/2 client. One is built now, so a bad setting fails here.
    pub(crate) fn new(factory: ClientFactory, max_streams: usize) -> Result<Connections> {
        let first = factory(false)?;
        Ok(Connections {
            source: Source::Factory(factory),
            max_streams: max_streams.max(1),
            first: Mutex::new(Some(first)),
            origins: Mutex::new(Vec::new()),
        })
    }

    /// The caller's own client, alone.
    pub(crate) fn fixed(client: reqwest::Client) -> Connections {
        Connections {
            source: Source::Fixed(client),
            max_streams: usize::MAX,
            first: Mutex::new(None),
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Whether requests can be spread over several clients (false for a caller's client).
    fn spreads(&self) -> bool {
        matches!(self.source, Source::Factory(_))
    }

    fn build(&self, http2_only: bool) -> Result<Pooled> {
        let client = match &self.source {
            Source::Fixed(client) => client.clone(),
            Source::Factory(factory) => match lock(&self.first).take() {
                Some(client) if !http2_only => client,
                _ => factory(http2_only)?,
            },
        };
        Ok(Pooled {
            client,
            in_flight: AtomicUsize::new(0),
            http2_only,
        })
    }

    fn origin_pool(&self, url: &Url) -> Arc<OriginPool> {
        let origin = url.origin();
        let mut origins = lock(&self.origins);
        if let Some(pool) = origins.iter().find(|pool| pool.origin == origin) {
            return Arc::clone(pool);
        }
        let pool = Arc::new(OriginPool {
            origin,
            protocol: AtomicU8::new(UNKNOWN),
            probing: AtomicBool::new(false),
            probed: Notify::new(),
            lanes: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        });
        origins.push(Arc::clone(&pool));
        pool
    }

    /// The client to send a request to `url` on, and the request's place on it.
    ///
    /// While an origin's protocol is unknown (before its first answer, and after a failure
    /// on a client for HTTP/2 only), one request goes ahead and the others wait for its
    /// answer, at most [`PROBE_WAIT`]: a client that negotiates the protocol dials once for
    /// every request that finds no connection, so a first burst of 300 requests to an
    /// HTTP/2 gateway made about 60 TLS handshakes where one connection was kept. Once the
    /// answer is in they go: over HTTP/2 to a client that connects once; over HTTP/1 each
    /// on a connection of its own, as before.
    pub(crate) async fn checkout(&self, url: &Url, lane: Lane) -> Result<(reqwest::Client, Lease)> {
        let origin = self.origin_pool(url);
        let mut probe = false;
        if self.spreads() && origin.protocol.load(Ordering::Relaxed) == UNKNOWN {
            let probed = origin.probed.notified();
            tokio::pin!(probed);
            // Registered before the check, so an answer between the two is not missed.
            probed.as_mut().enable();
            if !origin.probing.swap(true, Ordering::AcqRel) {
                probe = true;
            } else {
                // Past the wait, go anyway: a slow first answer must not stall the rest.
                let _ = tokio::time::timeout(PROBE_WAIT, probed).await;
            }
        }
        let pooled = {
            let protocol = origin.protocol.load(Ordering::Relaxed);
            let lane = if protocol == HTTP2 { lane } else { Lane::Calls };
            let mut clients = lock(&origin.lanes[lane as usize]);
            if self.spreads() {
                self.adapt(&mut clients, protocol);
            }
            let pooled = match self.pick(protocol, &clients) {
                Some(pooled) => pooled,
                None => {
                    let pooled = Arc::new(self.build(protocol == HTTP2)?);
                    clients.push(Arc::clone(&pooled));
                    if clients.len() > 1 {
                        tracing::debug!(
                            origin = %url.origin().ascii_serialization(),
                            clients = clients.len(),
                            "every HTTP/2 connection carries the stream cap; opening another"
                        );
                    }
                    pooled
                }
            };
            // Counted under the lock, so a burst cannot pile onto one client past the cap.
            pooled.in_flight.fetch_add(1, Ordering::Relaxed);
            pooled
        };
        Ok((
            pooled.client.clone(),
            Lease {
                pooled,
                origin: Arc::clone(&origin),
                probe,
            },
        ))
    }

    /// Fits the clients to what the origin speaks. HTTP/2: each client that negotiates is
    /// replaced by one for HTTP/2 only (its requests in flight finish on the old one, whose
    /// connection then closes; the new one starts empty, on a connection of its own). HTTP/1:
    /// idle extra clients (left from a burst before the protocol was known) go. Unknown
    /// again after a failure: clients for HTTP/2 only go, negotiating ones replace them.
    fn adapt(&self, clients: &mut Vec<Arc<Pooled>>, protocol: u8) {
        match protocol {
            HTTP2 => {
                for pooled in clients.iter_mut().filter(|pooled| !pooled.http2_only) {
                    match self.build(true) {
                        Ok(replacement) => *pooled = Arc::new(replacement),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not build an HTTP client");
                            return;
                        }
                    }
                }
            }
            HTTP1 => {
                let mut index = 0;
                clients.retain(|pooled| {
                    index += 1;
                    index == 1 || pooled.in_flight.load(Ordering::Relaxed) > 0
                });
            }
            _ => clients.retain(|pooled| !pooled.http2_only),
        }
    }

    /// An existing client to use, or `None` for "build another".
    fn pick(&self, protocol: u8, clients: &[Arc<Pooled>]) -> Option<Arc<Pooled>> {
        let first = clients.first()?;
        if !self.spreads() || protocol == HTTP1 {
            return Some(Arc::clone(first));
        }
        let least = clients
            .iter()
            .min_by_key(|pooled| pooled.in_flight.load(Ordering::Relaxed))
            .unwrap_or(first);
        if least.in_flight.load(Ordering::Relaxed) < self.max_streams
            || clients.len() >= MAX_CLIENTS_PER_ORIGIN
        {
            Some(Arc::clone(least))
        } else {
            None
        }
    }

    /// Requests in flight per client of `url`'s origin in `lane`.
    #[cfg(test)]
    fn lane_loads(&self, url: &Url, lane: Lane) -> Vec<usize> {
        lock(&self.origin_pool(url).lanes[lane as usize])
            .iter()
            .map(|pooled| pooled.in_flight.load(Ordering::Relaxed))
            .collect()
    }

    #[cfg(test)]
    fn loads(&self, url: &Url) -> Vec<usize> {
        self.lane_loads(url, Lane::Calls)
    }

    #[cfg(test)]
    fn http2_only(&self, url: &Url) -> Vec<bool> {
        lock(&self.origin_pool(url).lanes[Lane::Calls as usize])
            .iter()
            .map(|pooled| pooled.http2_only)
            .collect()
    }
}

/// A response body that holds its request's lease until it ends.
struct LeasedBody {
    inner: reqwest::Body,
    lease: Option<Lease>,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, reqwest::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // The stream is over: its place is free even if the response lives on.
            self.lease = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // reqwest's `content_length()` reads this.
        self.inner.size_hint()
    }
}

/// How HTTP/2 (or hyper) proved that a request never reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server reset the stream with `REFUSED_STREAM`: "not processed" (RFC 9113, 8.7).
    RefusedStream,
    /// The server sent GOAWAY with a last stream id below this stream's: it was not and will
    /// not be processed (RFC 9113, 6.8).
    GoAway,
    /// hyper handed the request back unsent: the connection closed before it was written.
    NotSent,
}

/// The source of an [`Error::Network`] for a request the protocol refused: what happened,
/// with reqwest's error underneath.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) refusal: Refusal,
    source: reqwest::Error,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.refusal {
            Refusal::RefusedStream => {
                "the server refused the request before processing it (HTTP/2 REFUSED_STREAM)"
            }
            Refusal::GoAway => {
                "the server closed the connection before processing the request (HTTP/2 GOAWAY with a lower last stream id)"
            }
            Refusal::NotSent => "the connection closed before the request was sent",
        })
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Refused {
    pub(crate) fn new(refusal: Refusal, source: reqwest::Error) -> Refused {
        Refused { refusal, source }
    }
}

/// Whether `err` (a failure before any response head) proves the request never reached the
/// service, read from the error chain reqwest → hyper-util → hyper → h2. What each cause
/// means, from those crates' sources (h2 0.4, hyper 1, hyper-util 0.1):
///
/// - `h2::Error` that `is_remote()` and `is_go_away()`: h2 gives a stream the peer's GOAWAY
///   error only when its id is above the GOAWAY's last stream id (`Streams::recv_go_away`);
///   streams at or below it that break later get a broken-pipe I/O error instead.
/// - `h2::Error` that `is_remote()`, `is_reset()` with reason `REFUSED_STREAM`: the server's
///   own word that it did not process the stream.
/// - `hyper::Error::is_canceled()`: hyper creates it only where it hands the request back
///   untouched (`TrySendError` with the message: queued when the connection closed, or the
///   connection was not ready); hyper-util resends those itself on a reused connection and
///   reports them (`client error (Canceled)`) only on a fresh one.
///
/// Not in the list, because it does not prove the request was never written: hyper's
/// "dispatch task is gone" (`DispatchGone`). hyper reports it when the task holding a
/// request ends first: a runtime shutting down mid-request (HTTP/1 and 2), or an HTTP/2
/// connection that fails while a request waits for a free stream, where the request may have
/// been opened just before (h2 checks the connection error before the stream's state). It
/// stays "may have reached the service"; keeping each connection under the server's stream
/// limit is what keeps requests from waiting for a stream in the first place.
///
/// One window remains, inside hyper: a GOAWAY processed in the instant between hyper opening
/// a stream and its next readiness check is reported as that stream's error, whatever its id.
/// For the stream to have been processed, it would have to be written, read by the server and
/// answered with a GOAWAY naming it within that instant; reqwest's own retries accept the same.
pub(crate) fn refusal_of(err: &reqwest::Error) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = cause {
        if let Some(hyper) = current.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return Some(Refusal::NotSent);
            }
        }
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            if !h2.is_remote() {
                return None;
            }
            if h2.is_go_away() {
                return Some(Refusal::GoAway);
            }
            if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(Refusal::RefusedStream);
            }
            return None;
        }
        cause = current.source();
    }
    None
}

/// How the protocol refused the request behind `err`, if it did (see [`refusal_of`]).
pub(crate) fn refusal_in(err: &Error) -> Option<Refusal> {
    match err {
        Error::Network {
            may_have_reached_server: false,
            source,
        } => source
            .downcast_ref::<Refused>()
            .map(|refused| refused.refusal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks out synchronously: in these tests the origin's protocol is set by hand, and a
    /// probe in progress never makes a checkout wait (the first checkout is the probe, and
    /// later ones find the protocol set or wait at most `PROBE_WAIT`).
    fn checkout(connections: &Connections, url: &Url) -> (reqwest::Client, Lease) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(connections.checkout(url, Lane::Calls))
            .expect("lease")
    }

    fn counting_factory() -> (ClientFactory, Arc<AtomicUsize>) {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let factory: ClientFactory = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(reqwest::Client::new())
        });
        (factory, built)
    }

    #[test]
    fn spreads_past_the_cap_least_loaded_first_and_stays_alone_for_http1() {
        let (factory, built) = counting_factory();
        let connections = Connections::new(factory, 2).expect("pool");
        let url = Url::parse("https://api.example.test/x").expect("url");
        let a = checkout(&connections, &url);
        let b = checkout(&connections, &url);
        assert_eq!(connections.loads(&url), vec![2]);
        let c = checkout(&connections, &url);
        assert_eq!(connections.loads(&url), vec![2, 1]);
        assert_eq!(built.load(Ordering::Relaxed), 2);
        drop(a);
        // The least loaded: the first client, now at 1 (the second is also at 1: the first wins).
        let d = checkout(&connections, &url);
        assert_eq!(connections.loads(&url), vec![2, 1]);
        let e = checkout(&connections, &url);
        assert_eq!(connections.loads(&url), vec![2, 2]);
        drop((b, c, d, e));
        assert_eq!(connections.loads(&url), vec![0, 0]);

        // Once the origin answers over HTTP/1, everything goes to the first client again,
        // and the others go once idle.
        let mut leases: Vec<Lease> = (0..5)
            .map(|_| checkout(&connections, &url))
            .map(|(_, lease)| lease)
            .collect();
        assert_eq!(connections.loads(&url), vec![2, 2, 1]);
        leases[0].observe(reqwest::Version::HTTP_11);
        let more: Vec<_> = (0..10).map(|_| checkout(&connections, &url)).collect();
        assert_eq!(connections.loads(&url), vec![12, 2, 1]);
        assert_eq!(built.load(Ordering::Relaxed), 3);
        drop((leases, more));
        let _one = checkout(&connections, &url);
        assert_eq!(connections.loads(&url), vec![1]);
    }

    #[test]
    fn an_http2_origin_gets_clients_for_http2_only_and_a_failure_undoes_it() {
        let (factory, built) = counting_factory();
        let connections = Connections::new(factory, 2).expect("pool");
        let url = Url::parse("https://api.example.test/x").expect("url");
        let (_, mut first) = checkout(&connections, &url);
        let (_, second) = checkout(&connections, &url);
        let (_, third) = checkout(&connections, &url);
        assert_eq!(connections.http2_only(&url), vec![false, false]);
        assert_eq!(connections.loads(&url), vec![2, 1]);
        first.observe(reqwest::Version::HTTP_2);
        // Replaced: the new clients start empty (the old ones finish their requests).
        let (_, mut fourth) = checkout(&connections, &url);
        assert_eq!(connections.http2_only(&url), vec![true, true]);
        assert_eq!(connections.loads(&url), vec![1, 0]);
        assert_eq!(built.load(Ordering::Relaxed), 4);
        drop((first, second, third));
        fourth.failed();
        let (_, fifth) = checkout(&connections, &url);
        assert_eq!(connections.http2_only(&url), vec![false]);
        assert_eq!(connections.loads(&url), vec![1]);
        drop((fourth, fifth));
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_protocol_is_unknown_one_request_goes_first_and_the_rest_wait_for_it() {
        let (factory, built) = counting_factory();
        let connections = Arc::new(Connections::new(factory, 100).expect("pool"));
        let url = Url::parse("https://api.example.test/x").expect("url");
        let (_, mut probe) = connections
            .checkout(&url, Lane::Calls)
            .await
            .expect("lease");
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let (connections, url) = (connections.clone(), url.clone());
            async move {
                connections
                    .checkout(&url, Lane::Calls)
                    .await
                    .expect("lease")
                    .1
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "waits for the first answer");
        probe.observe(reqwest::Version::HTTP_2);
        let second = waiting.await.expect("task");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "released by the answer, not the clock"
        );
        assert!(second.pooled.http2_only);
        assert_eq!(built.load(Ordering::Relaxed), 2);

        // A first request that never answers holds the others for PROBE_WAIT at most.
        let other = Url::parse("https://cdn.example.test/y").expect("url");
        let (_, _silent) = connections
            .checkout(&other, Lane::Calls)
            .await
            .expect("lease");
        let started = tokio::time::Instant::now();
        let _late = connections
            .checkout(&other, Lane::Calls)
            .await
            .expect("lease");
        assert_eq!(started.elapsed(), PROBE_WAIT);
        drop((probe, second));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_get_connections_apart_from_calls_over_http2_only() {
        let (factory, _) = counting_factory();
        let connections = Connections::new(factory, 100).expect("pool");
        let url = Url::parse("https://api.example.test/x").expect("url");
        let (_, mut call) = connections
            .checkout(&url, Lane::Calls)
            .await
            .expect("lease");
        call.observe(reqwest::Version::HTTP_11);
        let (_, stream) = connections
            .checkout(&url, Lane::Streams)
            .await
            .expect("lease");
        assert_eq!(
            connections.lane_loads(&url, Lane::Calls),
            vec![2],
            "HTTP/1: one pool"
        );
        assert!(connections.lane_loads(&url, Lane::Streams).is_empty());
        drop(stream);
        call.observe(reqwest::Version::HTTP_2);
        let (_, stream) = connections
            .checkout(&url, Lane::Streams)
            .await
            .expect("lease");
        let (_, other) = connections
            .checkout(&url, Lane::Calls)
            .await
            .expect("lease");
        assert_eq!(connections.lane_loads(&url, Lane::Streams), vec![1]);
        assert_eq!(connections.lane_loads(&url, Lane::Calls), vec![1]);
        drop((call, stream, other));
    }

    #[test]
    fn origins_are_counted_apart_and_a_callers_client_is_used_alone() {
        let (factory, _) = counting_factory();
        let connections = Connections::new(factory, 1).expect("pool");
        let api = Url::parse("https://api.example.test/x").expect("url");
        let cdn = Url::parse("https://cdn.example.test/y").expect("url");
        let _api = checkout(&connections, &api);
        let _cdn = checkout(&connections, &cdn);
        assert_eq!(connections.loads(&api), vec![1]);
        assert_eq!(connections.loads(&cdn), vec![1]);

        let fixed = Connections::fixed(reqwest::Client::new());
        let leases: Vec<_> = (0..300).map(|_| checkout(&fixed, &api)).collect();
        assert_eq!(fixed.loads(&api), vec![300]);
        drop(leases);
    }

    #[test]
    fn a_lease_lasts_until_the_body_ends() {
        let (factory, _) = counting_factory();
        let connections = Connections::new(factory, 10).expect("pool");
        let url = Url::parse("https://api.example.test/x").expect("url");
        let (_, lease) = checkout(&connections, &url);
        let response = reqwest::Response::from(http::Response::new("two chunks"));
        let mut response = lease.hold_until_body_ends(response);
        assert_eq!(connections.loads(&url), vec![1], "held while unread");
        assert_eq!(response.content_length(), Some(10));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert_eq!(
                response.chunk().await.expect("chunk").as_deref(),
                Some(&b"two chunks"[..])
            );
            assert_eq!(response.chunk().await.expect("end"), None);
        });
        assert_eq!(connections.loads(&url), vec![0], "released at the end");

        let (_, lease) = checkout(&connections, &url);
        let response =
            lease.hold_until_body_ends(reqwest::Response::from(http::Response::new("never read")));
        assert_eq!(connections.loads(&url), vec![1]);
        drop(response);
        assert_eq!(connections.loads(&url), vec![0], "released when dropped");
    }
}
