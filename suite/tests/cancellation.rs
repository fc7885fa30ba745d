//! Dropping an operation midway (an upload, a message stream, a render wait, a download)
//! leaves nothing behind: no temporary or partial file, no task, no reader thread, and the
//! connection is closed so the server knows.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nemo_video::render::{DownloadOptions, RenderJob, RenderOptions, WaitOptions};
use nemo_video::simulator::{Endpoint, Simulator};
use nemo_video::{NemoClient, Session};
use support::mock::finished_export;
use support::probes::{alive_tasks, part_files, threads_named};
use support::raw_http::read_head;
use support::{ephemeral_builder as builder, eventually, file_names, sample_clip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The upload tests count reader threads process-wide: every test that uploads holds this
/// while it does, so no other test's reader thread is counted.
static UPLOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "nmv_usr_cancellation_token_0001";
const UPLOAD_SIZE: u64 = 32 * 1024 * 1024;
const DOWNLOAD_SIZE: usize = 8 * 1024 * 1024;
/// The render and session the download tests' exports belong to.
const RENDER_ID: &str = "render_1";
const SESSION_ID: &str = "7305123456789012345";

/// What a raw server saw of its one connection.
#[derive(Default)]
struct Seen {
    /// Bytes of body read (uploads) or written (downloads, streams).
    bytes: AtomicU64,
    /// The client closed the connection (EOF or a reset).
    closed: AtomicBool,
}

fn client_for(base: &str) -> NemoClient {
    builder(base).token(TOKEN).build().unwrap()
}

/// A server that reads one request's body slowly (64 KiB every 20 ms) until the client goes.
async fn slow_reader() -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (_, early) = read_head(&mut stream).await.unwrap();
        server_seen
            .bytes
            .fetch_add(early.len() as u64, Ordering::SeqCst);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    server_seen.bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server_seen.closed.store(true, Ordering::SeqCst);
    });
    (base, seen, task)
}

async fn assert_upload_stopped(seen: &Seen, server: tokio::task::JoinHandle<()>, baseline: usize) {
    assert!(
        eventually(Duration::from_secs(5), || seen
            .closed
            .load(Ordering::SeqCst))
        .await,
        "the server never saw the upload connection close"
    );
    let read = seen.bytes.load(Ordering::SeqCst);
    assert!(read < UPLOAD_SIZE, "the whole body was sent ({read} bytes)");
    assert!(
        eventually(Duration::from_secs(5), || threads_named("nemo-upload-rea")
            == 0)
        .await,
        "the upload reader thread is still running"
    );
    server.await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline).await,
        "tasks left running: {} (baseline {baseline})",
        alive_tasks()
    );
}

fn big_clip(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("big.mp4");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(UPLOAD_SIZE).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_an_upload_task_closes_the_connection_and_stops_the_reader_thread() {
    let _serial = UPLOADS.lock().await;
    let baseline = alive_tasks();
    let dir = tempfile::tempdir().unwrap();
    let clip = big_clip(dir.path());
    let (base, seen, server) = slow_reader().await;
    let client = client_for(&base);
    let upload = tokio::spawn(async move {
        client
            .upload(&Session::from_id("1234567890123456789"), &[clip])
            .await
    });
    assert!(
        eventually(Duration::from_secs(10), || seen
            .bytes
            .load(Ordering::SeqCst)
            > 2 * 1024 * 1024)
        .await,
        "the upload never got going"
    );
    assert_eq!(
        threads_named("nemo-upload-rea"),
        1,
        "the probe sees the reader"
    );
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());
    assert_upload_stopped(&seen, server, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_upload_future_in_place_closes_the_connection_and_stops_the_reader_thread() {
    let _serial = UPLOADS.lock().await;
    let baseline = alive_tasks();
    let dir = tempfile::tempdir().unwrap();
    let clip = big_clip(dir.path());
    let (base, seen, server) = slow_reader().await;
    {
        let client = client_for(&base);
        let session = Session::from_id("1234567890123456789");
        let paths = [&clip];
        let upload = client.upload(&session, &paths);
        let seen = seen.clone();
        tokio::select! {
            result = upload => panic!("the upload finished against a stalling server: {result:?}"),
            _ = async {
                while seen.bytes.load(Ordering::SeqCst) < 2 * 1024 * 1024 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => {}
        }
        // The upload future is dropped here, with the client still alive.
        assert!(
            eventually(Duration::from_secs(5), || seen
                .closed
                .load(Ordering::SeqCst))
            .await,
            "the upload connection stayed open after the future was dropped"
        );
        drop(client);
    }
    assert_upload_stopped(&seen, server, baseline).await;
}

/// A `text/event-stream` server that sends an event every 20 ms until the client goes.
async fn endless_stream() -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await.unwrap();
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut sequence = 0u64;
        loop {
            sequence += 1;
            let event = format!(
                "id: {sequence}\ndata: {{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"chunk {sequence} \"}}]}},\"partial\":true}}\n\n"
            );
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            server_seen.bytes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server_seen.closed.store(true, Ordering::SeqCst);
    });
    (base, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_message_stream_midway_closes_the_connection() {
    let baseline = alive_tasks();
    let (base, seen, server) = endless_stream().await;
    let client = client_for(&base);
    let session = Session::from_id("1234567890123456789");
    let mut stream = client
        .send_message(&session, "remove the person")
        .await
        .unwrap();
    for _ in 0..3 {
        let event = stream.next_event().await.expect("an event").expect("ok");
        assert!(event.visible_text().is_some(), "{event:?}");
    }
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || seen
            .closed
            .load(Ordering::SeqCst))
        .await,
        "the server kept streaming into a dropped stream"
    );
    server.await.unwrap();
    drop(client);
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline).await,
        "tasks left running: {} (baseline {baseline})",
        alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_task_reading_a_message_stream_closes_the_connection() {
    let baseline = alive_tasks();
    let (base, seen, server) = endless_stream().await;
    let client = client_for(&base);
    let consumer = tokio::spawn(async move {
        let mut stream = client
            .send_message(&Session::from_id("1"), "remove the person")
            .await
            .unwrap();
        while let Some(event) = stream.next_event().await {
            event.unwrap();
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || seen.bytes.load(Ordering::SeqCst)
            >= 3)
        .await
    );
    consumer.abort();
    assert!(consumer.await.unwrap_err().is_cancelled());
    assert!(
        eventually(Duration::from_secs(5), || seen
            .closed
            .load(Ordering::SeqCst))
        .await,
        "the server kept streaming into an aborted task"
    );
    server.await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline).await,
        "tasks left running: {} (baseline {baseline})",
        alive_tasks()
    );
}

/// On a current-thread runtime, with the simulator on it, and a paused clock once the set-up
/// is done: "no poll after the drop" is then checked over 300 ms of virtual time in which a
/// live waiter would poll 15 times, and a poll already on the wire when the waiter was
/// dropped is told apart from a new one.
#[tokio::test]
async fn dropping_a_render_wait_midway_stops_polling() {
    let sim = Simulator::builder()
        .fast()
        .manual_renders()
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clip = sample_clip(dir.path());
    let client = builder(sim.base_url()).build().unwrap();
    let session = client.create_session().await.unwrap();
    {
        let _serial = UPLOADS.lock().await;
        client.upload(&session, &[&clip]).await.unwrap();
    }
    client
        .run_turn(&session, "remove the person")
        .await
        .unwrap();
    let state = client.state(&session).await.unwrap();
    let job = RenderJob::new(&session);
    client
        .submit_render(&job, state.draft().unwrap(), &RenderOptions::default())
        .await
        .unwrap();
    let wait = WaitOptions::default()
        .poll_interval(Duration::from_millis(20))
        .max_wait(Duration::from_secs(600));

    tokio::time::pause();

    // In place: the future is dropped once it has polled three times.
    let baseline = alive_tasks();
    let before = sim.request_count(Endpoint::RenderStatus);
    tokio::select! {
        outcome = client.wait_for_render(&job, &wait) => {
            panic!("a manual render cannot finish: {outcome:?}")
        }
        polling = eventually(Duration::from_secs(30), || {
            sim.request_count(Endpoint::RenderStatus) >= before + 3
        }) => assert!(polling, "the waiter never polled three times"),
    }
    let polled = sim.request_count(Endpoint::RenderStatus);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A poll already sent when the future was dropped may still be counted; a live waiter
    // would have polled 15 more times.
    assert!(
        sim.request_count(Endpoint::RenderStatus) <= polled + 1,
        "polling went on after the wait was dropped: {} polls after {polled}",
        sim.request_count(Endpoint::RenderStatus)
    );
    let polled = sim.request_count(Endpoint::RenderStatus);

    // A spawned waiter, aborted.
    let waiter = {
        let (client, job, wait) = (client.clone(), job.clone(), wait.clone());
        tokio::spawn(async move { client.wait_for_render(&job, &wait).await })
    };
    assert!(
        eventually(Duration::from_secs(5), || sim
            .request_count(Endpoint::RenderStatus)
            >= polled + 3)
        .await
    );
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    let polled = sim.request_count(Endpoint::RenderStatus);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sim.request_count(Endpoint::RenderStatus) <= polled + 1,
        "polling went on after the waiter was aborted"
    );
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline).await,
        "tasks left running: {} (baseline {baseline})",
        alive_tasks()
    );
    // The job itself is untouched: it can be resumed later.
    let progress = client.render_status(&job).await.unwrap();
    assert!(!progress.status.is_finished());
}

/// A server that sends the head and half of an 8 MiB body, then waits for the client to go
/// (or, with `close_early`, closes at once); it does so for `connections` connections, one
/// after the other (a download whose output URL fails tries the API's download endpoint on
/// a second one), and then ends.
async fn half_body(
    close_early: bool,
    connections: usize,
) -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    let task = tokio::spawn(async move {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: {DOWNLOAD_SIZE}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let half = vec![0x42u8; DOWNLOAD_SIZE / 2];
            stream.write_all(&half).await.unwrap();
            stream.flush().await.unwrap();
            server_seen.bytes.store(half.len() as u64, Ordering::SeqCst);
            if close_early {
                continue;
            }
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            server_seen.closed.store(true, Ordering::SeqCst);
        }
    });
    (base, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_download_midway_leaves_no_file_and_closes_the_connection() {
    let baseline = alive_tasks();
    let (base, seen, server) = half_body(false, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let received = Arc::new(AtomicU64::new(0));
    let export = finished_export(
        RENDER_ID,
        SESSION_ID,
        Some(&format!("{base}/renders/r.mp4")),
    )
    .await;
    let download = {
        let client = client_for(&base);
        let (target, received) = (target.clone(), received.clone());
        tokio::spawn(async move {
            client
                .download_with(
                    &export,
                    &target,
                    &DownloadOptions::default()
                        .on_progress(move |p| received.store(p.received, Ordering::SeqCst)),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || received.load(Ordering::SeqCst)
            >= (DOWNLOAD_SIZE / 2) as u64)
        .await,
        "the first half never arrived"
    );
    assert_eq!(
        part_files(dir.path()).len(),
        1,
        "the probe sees the temporary"
    );
    download.abort();
    assert!(download.await.unwrap_err().is_cancelled());
    assert!(
        part_files(dir.path()).is_empty(),
        "{:?}",
        file_names(dir.path())
    );
    assert!(!target.exists());
    assert!(file_names(dir.path()).is_empty());
    assert!(
        eventually(Duration::from_secs(5), || seen
            .closed
            .load(Ordering::SeqCst))
        .await,
        "the download connection stayed open"
    );
    server.await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() <= baseline).await,
        "tasks left running: {} (baseline {baseline})",
        alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_download_future_in_place_leaves_no_file() {
    let (base, seen, server) = half_body(false, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let client = client_for(&base);
    let export = finished_export(
        RENDER_ID,
        SESSION_ID,
        Some(&format!("{base}/renders/r.mp4")),
    )
    .await;
    let received = Arc::new(AtomicU64::new(0));
    let sink = received.clone();
    let options =
        DownloadOptions::default().on_progress(move |p| sink.store(p.received, Ordering::SeqCst));
    // Dropped once half the body is in, with the temporary file written.
    tokio::select! {
        outcome = client.download_with(&export, &target, &options) => {
            panic!("a half body cannot complete: {outcome:?}")
        }
        arrived = eventually(Duration::from_secs(30), || {
            received.load(Ordering::SeqCst) >= (DOWNLOAD_SIZE / 2) as u64
        }) => assert!(arrived, "the first half never arrived"),
    }
    assert!(
        file_names(dir.path()).is_empty(),
        "{:?}",
        file_names(dir.path())
    );
    assert!(
        eventually(Duration::from_secs(5), || seen
            .closed
            .load(Ordering::SeqCst))
        .await,
        "the download connection stayed open"
    );
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_by_the_server_leaves_no_file() {
    // Two connections: the output URL, then the API's download endpoint (the fallback), both
    // cut off.
    let (base, _seen, server) = half_body(true, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let client = client_for(&base);
    let export = finished_export(
        RENDER_ID,
        SESSION_ID,
        Some(&format!("{base}/renders/r.mp4")),
    )
    .await;
    let err = client
        .download(&export, &target)
        .await
        .expect_err("half a body");
    assert!(
        matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ),
        "{err:?}"
    );
    assert!(
        file_names(dir.path()).is_empty(),
        "{:?}",
        file_names(dir.path())
    );
    server.await.unwrap();
}

/// A server that sends the head, and then (with `body_half`) half the body, then stalls
/// without closing until the client goes; it does so for `connections` connections, one
/// after the other, and then ends.
async fn stalling(body_half: bool, connections: usize) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await.unwrap();
            if body_half {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: {DOWNLOAD_SIZE}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                stream
                    .write_all(&vec![0x42u8; DOWNLOAD_SIZE / 2])
                    .await
                    .unwrap();
            }
            let mut buffer = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
            }
        }
    });
    (base, task)
}

/// A server that stops sending (before the head, or mid-body) without closing: the download
/// ends with a timeout after the request timeout instead of hanging forever, and leaves no
/// file. (Downloads used to have no limit at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_times_out_and_leaves_no_file() {
    for body_half in [true, false] {
        // Two connections: the output URL, then the API's download endpoint (the fallback),
        // both stalled.
        let (base, server) = stalling(body_half, 2).await;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("edited.mp4");
        let mut retry = support::fast_retry();
        retry.max_retries = 0;
        let client = builder(&base)
            .token(TOKEN)
            .request_timeout(Duration::from_millis(500))
            .retry(retry)
            .build()
            .unwrap();
        let export = finished_export(
            RENDER_ID,
            SESSION_ID,
            Some(&format!("{base}/renders/r.mp4")),
        )
        .await;
        let err = tokio::time::timeout(Duration::from_secs(10), client.download(&export, &target))
            .await
            .expect("the download hung on a stalled server")
            .expect_err("a stalled download cannot succeed");
        assert!(err.is_timeout(), "{err:?}");
        assert!(matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ));
        assert!(
            file_names(dir.path()).is_empty(),
            "{:?}",
            file_names(dir.path())
        );
        drop(client);
        server.await.unwrap();
    }
}
