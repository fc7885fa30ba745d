//! Large transfers: uploads bigger than the reader's recycled buffers arrive byte for byte;
//! downloads written by the writer thread are whole, report progress, and leave nothing behind
//! when the body is short or the download is cancelled.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::render::DownloadOptions;
use nemo_video::upload::UploadOptions;
use nemo_video::{NemoClient, Session};
use serde_json::json;
use support::mock::finished_export;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Bytes that differ from one 256 KiB read to the next, so a recycled buffer sent twice or
/// out of order shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 % 251) as u8 ^ (i >> 18) as u8)
        .collect()
}

#[tokio::test]
async fn upload_larger_than_the_buffer_pool_arrives_byte_for_byte() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/upload-video/nemo_agent/me/s1"))
        .respond_with(support::mock::ok(
            json!({"files": [{"filename": "big.mp4"}]}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let dir = support::tempdir();
    let client = support::mock::fixed_client(&server, dir.path());
    // Six 256 KiB buffers serve the whole upload, so 3 MiB and change reuses each one twice.
    let content = pattern(3 * 1024 * 1024 + 12_345);
    let file = dir.path().join("big.mp4");
    std::fs::write(&file, &content).unwrap();
    let last_progress = Arc::new(Mutex::new(None));
    let seen = last_progress.clone();
    let result = client
        .upload_with(
            &Session::from_id("s1"),
            &[&file],
            &UploadOptions::default().on_progress(move |p| {
                *seen.lock().unwrap() = Some((p.sent, p.total));
            }),
        )
        .await
        .expect("upload succeeds");
    assert_eq!(result.files[0].filename.as_deref(), Some("big.mp4"));

    let requests = server.received_requests().await.unwrap();
    let body = &requests[0].body;
    let length: usize = support::mock::header(&requests[0], "content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len());
    let start = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let content_type = support::mock::header(&requests[0], "content-type").unwrap();
    let boundary = content_type.split("boundary=").nth(1).unwrap();
    let tail = format!("\r\n--{boundary}--\r\n");
    assert!(body.ends_with(tail.as_bytes()));
    assert!(body[start..body.len() - tail.len()] == content[..]);
    assert_eq!(
        *last_progress.lock().unwrap(),
        Some((body.len() as u64, body.len() as u64))
    );
}

#[tokio::test]
async fn download_writes_every_byte_and_reports_progress() {
    let server = MockServer::start().await;
    let content = pattern(3 * 1024 * 1024 + 777);
    Mock::given(method("GET"))
        .and(path("/out.mp4"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(content.clone()))
        .mount(&server)
        .await;
    let dir = support::tempdir();
    let client = support::mock::fixed_client(&server, dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("edited.mp4");
    let export =
        finished_export("render_1", "s1", Some(&format!("{}/out.mp4", server.uri()))).await;
    let last_progress = Arc::new(Mutex::new(None));
    let seen = last_progress.clone();
    let written = client
        .download_with(
            &export,
            &target,
            &DownloadOptions::default().on_progress(move |p| {
                *seen.lock().unwrap() = Some((p.received, p.total));
            }),
        )
        .await
        .expect("download succeeds");
    assert_eq!(written, content.len() as u64);
    assert!(std::fs::read(&target).unwrap() == content);
    let len = content.len() as u64;
    assert_eq!(*last_progress.lock().unwrap(), Some((len, Some(len))));
    assert_eq!(support::file_names(&out_dir), ["edited.mp4"]);
}

/// A server that answers every request with a `Content-Length` of `declared` bytes, sends
/// `sent` of them, then closes the connection, or with `stall` keeps it open and silent.
async fn partial_server(declared: usize, sent: usize, stall: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {declared}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&pattern(sent)).await;
                if stall {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn raw_client(base: &str) -> NemoClient {
    support::ephemeral_builder(base).token("t").build().unwrap()
}

#[tokio::test]
async fn short_download_fails_and_leaves_nothing() {
    let base = partial_server(2 * 1024 * 1024, 300 * 1024, false).await;
    let dir = support::tempdir();
    let target = dir.path().join("edited.mp4");
    // The server is the API too, so the fallback to its download endpoint is short as well.
    let export = finished_export("render_1", "s1", Some(&format!("{base}/out.mp4"))).await;
    let err = raw_client(&base)
        .download(&export, &target)
        .await
        .expect_err("a short body is an error");
    assert!(
        err.to_string().contains("the download ended")
            || matches!(err, nemo_video::Error::Network { .. }),
        "{err}"
    );
    assert!(
        support::file_names(dir.path()).is_empty(),
        "{:?}",
        support::file_names(dir.path())
    );
}

#[tokio::test]
async fn cancelled_download_removes_its_temporary_file_at_once() {
    let base = partial_server(64 * 1024 * 1024, 512 * 1024, true).await;
    let dir = support::tempdir();
    let target = dir.path().join("edited.mp4");
    let client = raw_client(&base);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let export = finished_export("render_1", "s1", Some(&format!("{base}/out.mp4"))).await;
    let sink = received.clone();
    let options = DownloadOptions::default().on_progress(move |p| {
        sink.store(p.received, std::sync::atomic::Ordering::Relaxed);
    });
    let download = client.download_with(&export, &target, &options);
    // Dropped once the 512 KiB the server sends have arrived and the server has gone silent.
    tokio::select! {
        outcome = download => panic!("the download should still be waiting: {outcome:?}"),
        arrived = support::eventually(Duration::from_secs(30), || {
            received.load(std::sync::atomic::Ordering::Relaxed) >= 512 * 1024
        }) => assert!(arrived, "the first 512 KiB never arrived"),
    }
    // Checked right after the drop: the writer thread may still hold the file open, but its
    // name is gone and nothing was renamed into place.
    assert!(
        support::file_names(dir.path()).is_empty(),
        "{:?}",
        support::file_names(dir.path())
    );
}
