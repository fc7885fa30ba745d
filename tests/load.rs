//! One shared client drives 200 whole flows at once against the simulator while faults are
//! injected at random (seeded): every flow ends with the right bytes or a typed error, one
//! anonymous token serves them all, and nothing (tasks, threads, connections, temporary
//! files) outlives the client.
//!
//! `cargo test --test load -- --nocapture` prints the wall time and peak RSS.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemo_video::render::{ExportOptions, RenderJob, RenderOptions, WaitOptions};
use nemo_video::simulator::{Endpoint, Failure, Simulator, SAMPLE_OUTPUT_MP4};
use nemo_video::turn::TurnOptions;
use nemo_video::{Error, NemoClient};
use support::probes::{
    alive_tasks, established_to, part_files, peak_rss_kib, port_of, threads_named,
};
use support::{ephemeral_builder as builder, eventually, sample_clip};

const FLOWS: usize = 200;
const SEED: u64 = 0x5EC0_10AD;
const EDIT: &str = "remove the background person and replace it with a solid color";
/// A flow that takes longer than this has hung.
const FLOW_LIMIT: Duration = Duration::from_secs(45);

/// How one flow ended.
enum Outcome {
    /// Downloaded, with the right bytes.
    Done,
    /// A typed error.
    Failed(Error),
}

async fn flow(client: NemoClient, clip: PathBuf, out_dir: PathBuf, index: usize) -> Outcome {
    let target = out_dir.join(format!("flow-{index}.mp4"));
    let result: Result<(), Error> = async {
        let session = client
            .create_session_with(&nemo_video::SessionOptions::default().language("en"))
            .await?;
        client.credits().await?;
        let uploaded = client.upload(&session, &[&clip]).await?;
        assert_eq!(uploaded.files.len(), 1);
        let turn = client
            .run_turn_with(
                &session,
                EDIT,
                &TurnOptions::default().reconcile(4, Duration::from_millis(50)),
            )
            .await?;
        assert!(!turn.answer().is_empty());
        let wait = WaitOptions::default()
            .poll_interval(Duration::from_millis(100))
            .max_wait(Duration::from_secs(30));
        let export = client
            .export_with(
                &session,
                &ExportOptions::default()
                    .render(RenderOptions::default())
                    .wait(wait),
            )
            .await?;
        let bytes = client.download(&export, &target).await?;
        assert_eq!(bytes, SAMPLE_OUTPUT_MP4.len() as u64);
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let saved = std::fs::read(&target).expect("the download is at its target");
            assert!(
                saved == SAMPLE_OUTPUT_MP4,
                "flow {index} saved the wrong bytes"
            );
            Outcome::Done
        }
        Err(err) => {
            assert!(!target.exists(), "flow {index} failed but left {target:?}");
            Outcome::Failed(err)
        }
    }
}

/// Requests an endpoint must have served since its last injected fault before it gets the
/// next one. Faults follow the traffic: a timer alone would pile queued faults onto the last
/// few flows (one straggler polling a render would meet nothing but failures).
const REQUESTS_PER_FAULT: usize = 6;

/// Injects random faults (seeded) in proportion to the traffic, until `stop`.
async fn inject_faults(
    sim: nemo_video::simulator::SimulatorHandle,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, usize> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_fault_at: HashMap<Endpoint, usize> = HashMap::new();
    let endpoints = [
        Endpoint::State,
        Endpoint::Credits,
        Endpoint::RenderStatus,
        Endpoint::CdnOutput,
        Endpoint::Upload,
        Endpoint::RenderSubmit,
        Endpoint::CreateSession,
        Endpoint::RunSse,
    ];
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(3)).await;
        for endpoint in endpoints {
            let served = sim.request_count(endpoint);
            let last = last_fault_at.entry(endpoint).or_insert(0);
            let due = served.saturating_sub(*last) / REQUESTS_PER_FAULT;
            *last += due * REQUESTS_PER_FAULT;
            for _ in 0..due {
                // Calls that are not replayed (uploads, submits, sessions) fail their flow: keep
                // them rare so most flows show recovery rather than a surfaced error.
                let odds = match endpoint {
                    Endpoint::Upload | Endpoint::RenderSubmit | Endpoint::CreateSession => 0.1,
                    _ => 0.8,
                };
                if rng.f64() >= odds {
                    continue;
                }
                if endpoint == Endpoint::RunSse {
                    // The next stream breaks after a few events; the edit is applied regardless.
                    sim.drop_next_stream_after(rng.usize(0..4));
                    *injected.entry("dropped stream".to_string()).or_default() += 1;
                    continue;
                }
                let failure = match rng.u32(0..10) {
                    0..=4 => Failure::Status(503),
                    5..=6 => Failure::CloseConnection,
                    7 => Failure::Status(500),
                    8 => Failure::PlainText {
                        status: 502,
                        body: "<html>bad gateway</html>".to_string(),
                    },
                    _ => Failure::Status(408),
                };
                let name = match &failure {
                    Failure::Status(status) => format!("HTTP {status}"),
                    Failure::PlainText { status, .. } => format!("HTTP {status} text"),
                    _ => "closed connection".to_string(),
                };
                *injected.entry(name).or_default() += 1;
                sim.fail_next(endpoint, 1, failure);
            }
        }
    }
    injected
}

/// The error's variant name, for the summary.
fn kind_of(err: &Error) -> String {
    support::variant_of(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_flows_share_one_client_and_leak_nothing() {
    let started = Instant::now();
    let baseline_tasks = alive_tasks();
    let sim = Simulator::builder().fast().start().await.unwrap();
    // One anonymous user serves every flow: give it credits for all of them.
    sim.set_credits(1_000_000);
    let api_port = port_of(sim.base_url());
    let cdn_port = port_of(sim.cdn_base_url());
    let work = tempfile::tempdir().unwrap();
    let clip = sample_clip(work.path());
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let client = builder(sim.base_url()).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let injector = tokio::spawn(inject_faults(sim.handle(), stop.clone()));

    let handles: Vec<_> = (0..FLOWS)
        .map(|index| {
            let run = flow(client.clone(), clip.clone(), out_dir.clone(), index);
            tokio::spawn(async move { tokio::time::timeout(FLOW_LIMIT, run).await })
        })
        .collect();
    let mut done = 0;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.await {
            Ok(Ok(Outcome::Done)) => done += 1,
            Ok(Ok(Outcome::Failed(err))) => {
                // Only what the injected faults can cause: transient failures surfaced after
                // the retry budget, or not replayed because the request may have been
                // processed. Anything else (auth, credits, decoding, sessions) is a bug.
                let expected = matches!(
                    err.retry_policy(),
                    nemo_video::RetryPolicy::Backoff
                        | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
                ) || (err.retry_policy() == nemo_video::RetryPolicy::Reconcile)
                    || matches!(
                        err,
                        Error::Network { .. }
                            | Error::StreamDisconnected { .. }
                            | Error::Http { .. }
                    );
                assert!(
                    expected,
                    "flow {index} failed unexpectedly: {err} ({err:?})"
                );
                *failures.entry(kind_of(&err)).or_default() += 1;
            }
            Ok(Err(_)) => panic!("flow {index} hung for more than {FLOW_LIMIT:?}"),
            Err(join) => panic!("flow {index} panicked: {join}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let injected = injector.await.unwrap();
    let injected_total: usize = injected.values().sum();
    let flows_time = started.elapsed();

    let failed: usize = failures.values().sum();
    assert_eq!(done + failed, FLOWS);
    assert!(
        done >= FLOWS / 2,
        "only {done} of {FLOWS} flows completed; failures: {failures:?}"
    );
    assert!(
        injected_total > 100,
        "the faults were not exercised ({injected:?})"
    );
    assert_eq!(
        sim.request_count(Endpoint::AnonymousToken),
        1,
        "one anonymous token for the whole client"
    );
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    assert!(
        part_files(&out_dir).is_empty(),
        "{:?}",
        part_files(&out_dir)
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), done);

    // The pool holds connections while the client lives (so the probe can see them) ...
    let open_before = established_to(api_port) + established_to(cdn_port);
    assert!(open_before > 0, "the connection probe sees nothing");
    drop(client);
    // ... and closes every one of them once it is dropped, with the server still up.
    assert!(
        eventually(Duration::from_secs(5), || established_to(api_port)
            + established_to(cdn_port)
            == 0)
        .await,
        "connections left open after the client was dropped: {}",
        established_to(api_port) + established_to(cdn_port)
    );
    assert!(
        eventually(Duration::from_secs(5), || threads_named("nemo-upload-rea")
            == 0)
        .await,
        "upload reader threads still running"
    );
    sim.shutdown().await;
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline_tasks).await,
        "tasks left running: {} (baseline {baseline_tasks})",
        alive_tasks()
    );

    println!(
        "load: {FLOWS} flows, {done} completed, failures {failures:?}; injected {injected_total}: {injected:?}"
    );
    println!(
        "load: wall time {:.2} s (flows {:.2} s), peak RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        flows_time.as_secs_f64(),
        peak_rss_kib() as f64 / 1024.0
    );
}

/// The simulator answers an injected 503 as `{"code":503,...}` with HTTP 503. A body code that
/// only echoes the status must stay a retryable HTTP 503 (it was `Error::Api`, never retried,
/// which failed whole exports on one bad poll).
#[tokio::test]
async fn a_503_whose_body_code_echoes_the_status_is_retried() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let client = builder(sim.base_url()).build().unwrap();
    let session = client.create_session().await.unwrap();

    sim.fail_next(Endpoint::State, 2, Failure::Status(503));
    client
        .state(&session)
        .await
        .expect("retried twice, then ok");
    assert_eq!(sim.request_count(Endpoint::State), 3);

    sim.fail_next(Endpoint::State, 3, Failure::Status(503));
    let err = client
        .state(&session)
        .await
        .expect_err("past the retry budget");
    assert!(
        matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ),
        "{err:?}"
    );
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    assert_eq!(err.http_status(), Some(503));

    // A render poll that gets one 503 keeps waiting instead of failing the export.
    let dir = tempfile::tempdir().unwrap();
    let clip = sample_clip(dir.path());
    client.upload(&session, &[&clip]).await.unwrap();
    client.run_turn(&session, EDIT).await.unwrap();
    let state = client.state(&session).await.unwrap();
    let job = RenderJob::new(&session);
    client
        .submit_render(&job, state.draft().unwrap(), &RenderOptions::default())
        .await
        .unwrap();
    // Three 503s: the poll fails past its retry budget; the waiter polls again.
    sim.fail_next(Endpoint::RenderStatus, 3, Failure::Status(503));
    let export = client
        .wait_for_render(
            &job,
            &WaitOptions::default()
                .poll_interval(Duration::from_millis(50))
                .max_wait(Duration::from_secs(20)),
        )
        .await
        .expect("the waiter polls again after a 503");
    assert!(export.output_url().is_some());
    assert!(sim.request_count(Endpoint::RenderStatus) >= 4);
}
