//! The transport against a gateway as production runs it: HTTPS with HTTP/2 (the simulator's
//! HTTPS mode), a stream limit per connection, connections rotated by GOAWAY.
//!
//! - Many long turns: none waits for another turn to end, however many streams one
//!   connection allows; a short call is answered while a connection is full.
//! - Rotation: requests refused above a GOAWAY's last stream id are sent again, POSTs
//!   included, and reach the service once.
//! - Trust: a client that trusts only the simulator's CA connects; without it, the handshake
//!   fails as a TLS error.
//!
//! Turns that must stay open "work" for ten minutes, so no turn can end while a test waits
//! for its condition; the waits have generous limits that only end a hung test.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nemo_video::reqwest::Certificate;
use nemo_video::simulator::{Endpoint, Simulator, SimulatorBuilder};
use nemo_video::{ConnectFailure, NemoClient, NemoClientBuilder, Session};
use support::sim::{sample_input, REMOVE};
use support::{ephemeral_builder, eventually};

/// nginx's default `http2_max_concurrent_streams`.
const GATEWAY_STREAMS: u32 = 128;
/// A turn that stays open for the whole test.
const LONG_WORK: Duration = Duration::from_secs(600);
/// Ends a test that would otherwise hang; never a deadline for the behaviour under test.
const LIMIT: Duration = Duration::from_secs(180);

fn https_simulator() -> SimulatorBuilder {
    Simulator::builder()
        .fast()
        .https()
        .max_concurrent_streams(GATEWAY_STREAMS)
}

/// A simulator whose turns stay open (a heartbeat a second) until it is dropped.
async fn long_turn_simulator() -> Simulator {
    https_simulator()
        .work_duration(LONG_WORK)
        .heartbeat_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("simulator starts")
}

fn ca(sim: &Simulator) -> Certificate {
    Certificate::from_pem(sim.ca_certificate_pem().as_bytes()).expect("the test CA parses")
}

/// The server's client: trusts the simulator's CA, keeps identities in memory.
fn https_builder(sim: &Simulator) -> NemoClientBuilder {
    ephemeral_builder(sim.base_url()).add_root_certificate(ca(sim))
}

/// A new session with a clip imported by URL (an edit turn needs a video).
async fn session_with_clip(client: &NemoClient) -> Session {
    let session = client.create_session().await.expect("session");
    client
        .upload_urls(&session, &["https://example.com/clip.mp4"])
        .await
        .expect("import");
    session
}

/// Opens `users` turns that stay open, one user each, and counts first events and ended
/// streams until the tasks are aborted.
struct OpenTurns {
    first_events: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

fn open_turns(server: &NemoClient, users: usize) -> OpenTurns {
    let first_events = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..users {
        let client = server
            .for_identity(format!("user-{user:04}"))
            .expect("identity");
        let (first_events, ended, failed) = (first_events.clone(), ended.clone(), failed.clone());
        tasks.spawn(async move {
            let session = session_with_clip(&client).await;
            let mut stream = match client.send_message(&session, REMOVE).await {
                Ok(stream) => stream,
                Err(err) => {
                    failed.lock().unwrap().push(err.to_string());
                    return;
                }
            };
            let mut seen = false;
            // Read as a live client does, until the test aborts the task.
            while let Some(event) = stream.next_event().await {
                if let Err(err) = event {
                    failed.lock().unwrap().push(err.to_string());
                    return;
                }
                if !seen {
                    seen = true;
                    first_events.fetch_add(1, Ordering::SeqCst);
                }
            }
            ended.fetch_add(1, Ordering::SeqCst);
        });
    }
    OpenTurns {
        first_events,
        ended,
        failed,
        tasks,
    }
}

impl OpenTurns {
    fn first_events(&self) -> usize {
        self.first_events.load(Ordering::SeqCst)
    }

    fn assert_healthy(&self) {
        assert!(
            self.failed.lock().unwrap().is_empty(),
            "turns failed: {:?}",
            self.failed.lock().unwrap()
        );
        assert_eq!(
            self.ended.load(Ordering::SeqCst),
            0,
            "a turn ended: the ten-minute work cannot have"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_long_turns_all_get_their_first_event_with_128_streams_a_connection() {
    let sim = long_turn_simulator().await;
    let server = https_builder(&sim).build().expect("client");
    let mut turns = open_turns(&server, 300);
    // Over one connection only 128 streams run and the other 172 turns would wait for one
    // of them to end, which none does: this holds only if they spread over connections.
    let all = eventually(LIMIT, || turns.first_events() == 300).await;
    turns.assert_healthy();
    assert!(
        all,
        "only {} of 300 turns got their first event",
        turns.first_events()
    );
    let stats = sim.https_stats();
    assert!(
        stats.http2_connections >= 3,
        "300 streams at 100 a connection need at least 3 HTTP/2 connections: {stats:?}"
    );
    assert_eq!(sim.request_count(Endpoint::RunSse), 300);
    turns.tasks.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_is_answered_while_128_streams_are_open() {
    let sim = long_turn_simulator().await;
    let server = https_builder(&sim).build().expect("client");
    let mut turns = open_turns(&server, GATEWAY_STREAMS as usize);
    let open = eventually(LIMIT, || turns.first_events() == GATEWAY_STREAMS as usize).await;
    turns.assert_healthy();
    assert!(open, "only {} streams opened", turns.first_events());

    // A user who is not streaming asks for the balance: on a connection carrying 128 streams
    // this would wait for one of them to end.
    let asker = server.for_identity("asker").expect("identity");
    let credits = tokio::time::timeout(LIMIT, asker.credits())
        .await
        .expect("credits was answered without waiting for a stream to end")
        .expect("credits");
    assert_eq!(credits.available, 100.0);
    turns.assert_healthy();
    turns.tasks.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_survive_a_goaway_every_100_requests_and_refused_requests_reach_the_service_once() {
    const USERS: usize = 300;
    let sim = https_simulator()
        .goaway_after(100)
        // The whole run in the request log (the default keeps the last 1,000).
        .request_log_size(10_000)
        .start()
        .await
        .expect("simulator starts");
    let server = https_builder(&sim).build().expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..USERS {
        let client = server
            .for_identity(format!("user-{user:04}"))
            .expect("identity");
        tasks.spawn(async move {
            let result = async {
                let session = client.create_session().await?;
                // A streamed multipart body: resent from its factory when refused.
                client.upload(&session, &[sample_input()]).await?;
                let turn = client.run_turn(&session, REMOVE).await?;
                Ok::<_, nemo_video::Error>((session, turn))
            }
            .await;
            result.map_err(|err| format!("{err} ({err:?})"))
        });
    }
    let mut failures = Vec::new();
    let mut sessions = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("a user's task") {
            Ok((session, turn)) => {
                assert!(
                    turn.tool_calls
                        .iter()
                        .any(|call| call.name == "remove_object"),
                    "{turn:?}"
                );
                sessions.push(session);
            }
            Err(err) => failures.push(err),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {USERS} users failed; the first: {}",
        failures.len(),
        failures[0]
    );

    let stats = sim.https_stats();
    eprintln!(
        "{} connections, {} GOAWAYs, {} refused",
        stats.connections,
        stats.goaways,
        stats.refused.len()
    );
    // About 1,500 requests over connections rotated every 100.
    assert!(stats.goaways >= 10, "{stats:?}");
    assert!(!stats.refused.is_empty(), "{stats:?}");
    assert!(
        stats
            .refused
            .iter()
            .any(|request| request.starts_with("POST ")),
        "no POST was refused this run, so none was shown to be resent: {stats:?}"
    );
    // Every request the service did: each once, refused ones included (they were sent once
    // more and that copy was processed).
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), USERS);
    assert_eq!(sim.request_count(Endpoint::CreateSession), USERS);
    assert_eq!(sim.request_count(Endpoint::Upload), USERS);
    assert_eq!(sim.request_count(Endpoint::RunSse), USERS);
    let mut uploads_per_path: HashMap<String, usize> = HashMap::new();
    for request in sim.requests() {
        if request.endpoint == Some(Endpoint::Upload) {
            *uploads_per_path.entry(request.path).or_default() += 1;
        }
    }
    assert_eq!(uploads_per_path.len(), USERS);
    assert!(uploads_per_path.values().all(|count| *count == 1));
    for session in &sessions {
        assert_eq!(sim.media(session.id()).len(), 1, "one clip per session");
    }
}

#[tokio::test]
async fn a_client_trusting_only_the_simulators_ca_connects_over_https() {
    let sim = https_simulator().start().await.expect("simulator starts");
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));

    let only_the_ca = ephemeral_builder(sim.base_url())
        .add_root_certificate(ca(&sim))
        .configure_http_client(|http| http.tls_built_in_root_certs(false))
        .build()
        .expect("client");
    let credits = only_the_ca.credits().await.expect("credits over HTTPS");
    assert_eq!(credits.available, 100.0);
    let stats = sim.https_stats();
    assert!(stats.http2_connections >= 1, "{stats:?}");

    for (what, builder) in [
        ("the built-in roots", ephemeral_builder(sim.base_url())),
        (
            "no roots at all",
            ephemeral_builder(sim.base_url())
                .configure_http_client(|http| http.tls_built_in_root_certs(false)),
        ),
    ] {
        let err = builder
            .build()
            .expect("client")
            .credits()
            .await
            .expect_err("the test CA is not trusted");
        assert_eq!(
            err.connect_failure(),
            Some(ConnectFailure::Tls),
            "with {what}: {err}"
        );
    }
}

#[tokio::test]
async fn http1_over_tls_keeps_one_pool_and_rotation_closes_the_connection() {
    let sim = https_simulator()
        .http2(false)
        .goaway_after(3)
        .start()
        .await
        .expect("simulator starts");
    let client = https_builder(&sim).build().expect("client");
    for _ in 0..10 {
        client.credits().await.expect("credits over HTTP/1.1");
    }
    let stats = sim.https_stats();
    assert_eq!(stats.http2_connections, 0, "{stats:?}");
    // A token and ten credits calls, three a connection, one after the other.
    assert_eq!(stats.connections, 4, "{stats:?}");
}

#[tokio::test]
async fn an_upload_refused_with_refused_stream_is_sent_again_and_processed_once() {
    let sim = https_simulator().start().await.expect("simulator starts");
    let client = https_builder(&sim).build().expect("client");
    let session = client.create_session().await.expect("session");
    // A streamed multipart body, which reqwest could not have replayed by itself.
    sim.refuse_next_streams(2);
    client
        .upload(&session, &[sample_input()])
        .await
        .expect("third time lucky");
    let path = format!("/api/upload-video/nemo_agent/me/{}", session.id());
    assert_eq!(sim.https_stats().refused, vec![format!("POST {path}"); 2]);
    assert_eq!(sim.request_count(Endpoint::Upload), 1);
    assert_eq!(sim.media(session.id()).len(), 1);
}

#[tokio::test]
async fn without_retries_a_refused_request_fails_as_never_processed_with_its_cause() {
    let sim = https_simulator().start().await.expect("simulator starts");
    let client = https_builder(&sim)
        .retry(nemo_video::RetryConfig::disabled())
        .build()
        .expect("client");
    client
        .credits()
        .await
        .expect("a token and a connection first");
    sim.refuse_next_streams(1);
    let err = client
        .create_session()
        .await
        .expect_err("refused, and no retries");
    assert!(err.never_reached_server(), "{err:?}");
    assert!(
        !(err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "nothing to reconcile: {err:?}"
    );
    assert!(err.to_string().contains("REFUSED_STREAM"), "{err}");
    // The chain goes down to reqwest's error.
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    assert!(chain.len() >= 2, "{chain:?}");
    assert!(chain[0].contains("REFUSED_STREAM"), "{chain:?}");
    assert_eq!(sim.request_count(Endpoint::CreateSession), 0);
}

#[tokio::test]
async fn an_unconfirmed_request_exposes_what_went_wrong_as_its_source() {
    let sim = https_simulator().start().await.expect("simulator starts");
    let client = https_builder(&sim).build().expect("client");
    client.credits().await.expect("a token first");
    sim.fail_next(
        Endpoint::CreateSession,
        1,
        nemo_video::simulator::Failure::Status(503),
    );
    let err = client.create_session().await.expect_err("a 503");
    assert!(
        (err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("a source");
    let cause = source
        .downcast_ref::<Box<nemo_video::Error>>()
        .expect("the cause is the source");
    assert_eq!(cause.http_status(), Some(503));
    assert_eq!(source.to_string(), cause.to_string());
}
