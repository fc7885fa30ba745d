//! Uploads against a loopback mock server: the multipart wire form, progress, local checks
//! that send nothing, server refusals, retry policy, result decoding, URL imports, and a
//! large file.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nemo_video::upload::{check_upload_file, UploadOptions, UploadProgress};
use nemo_video::{Error, Session, SUPPORTED_FORMATS};
use serde_json::json;
use support::mock::{assert_api_headers, header, received, token_builder, token_client};
use support::multipart::parse_multipart;
use support::{patterned_bytes, retries};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "7305123456789012345";
const UPLOAD_PATH: &str = "/api/upload-video/nemo_agent/me/7305123456789012345";

fn ok_upload() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "code": 0,
        "data": {"files": [{"filename": "clip.mp4"}], "session_state_applied": true}
    }))
}

async fn mount_upload(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(ok_upload())
        .mount(server)
        .await;
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    file
}

/// Checks the framing of one received upload and returns its parts.
fn upload_parts(request: &wiremock::Request) -> Vec<support::multipart::Part> {
    let content_type = header(request, "content-type").expect("Content-Type");
    let length: usize = header(request, "content-length")
        .expect("Content-Length header")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(length, request.body.len(), "Content-Length equals the body");
    assert!(
        header(request, "transfer-encoding").is_none(),
        "a sized body, not chunked"
    );
    parse_multipart(content_type, &request.body)
}

#[tokio::test]
async fn one_file_is_sent_as_exact_multipart() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = patterned_bytes(70_000);
    let file = write(dir.path(), "clip.mp4", &bytes);

    let result = token_client(&server)
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap();
    assert_eq!(result.files[0].filename.as_deref(), Some("clip.mp4"));
    assert_eq!(result.session_state_applied, Some(true));

    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), UPLOAD_PATH);
    assert_api_headers(request);
    assert!(header(request, "content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    let parts = upload_parts(request);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].name, "files");
    assert_eq!(parts[0].filename.as_deref(), Some("clip.mp4"));
    assert_eq!(parts[0].content_type.as_deref(), Some("video/mp4"));
    assert!(parts[0].body == bytes, "part bytes equal the file");
}

#[tokio::test]
async fn several_files_are_one_request_with_one_part_each_in_order() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        ("intro.mov", "video/quicktime", patterned_bytes(1)),
        ("logo.PNG", "image/png", patterned_bytes(300_000)),
        // One byte: the smallest file an upload accepts (an empty one is refused).
        ("music.mp3", "audio/mpeg", vec![0x49]),
        (
            "we\"ird name.m4a",
            "audio/mp4",
            b"--not-a-boundary\r\n".to_vec(),
        ),
    ];
    let paths: Vec<PathBuf> = inputs
        .iter()
        .map(|(name, _, bytes)| write(dir.path(), name, bytes))
        .collect();

    token_client(&server)
        .upload(&Session::from_id(SID), &paths)
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 1, "one request for all files");
    assert_api_headers(&requests[0]);
    let parts = upload_parts(&requests[0]);
    assert_eq!(parts.len(), inputs.len());
    for (part, (name, content_type, bytes)) in parts.iter().zip(&inputs) {
        assert_eq!(part.name, "files");
        // Quotes in names are percent-encoded, as browsers do.
        let wire_name = name.replace('"', "%22");
        assert_eq!(part.filename.as_deref(), Some(wire_name.as_str()));
        assert_eq!(part.content_type.as_deref(), Some(*content_type));
        assert!(&part.body == bytes, "bytes of {name}");
    }
}

#[tokio::test]
async fn session_ids_are_percent_encoded_in_the_path() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/upload-video/nemo_agent/me/a%2Fb%20c"))
        .respond_with(ok_upload())
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "clip.mp4", b"x");

    token_client(&server)
        .upload(&Session::from_id("a/b c"), &[&file])
        .await
        .unwrap();
    token_client(&server)
        .upload_urls(&Session::from_id("a/b c"), &["https://example.com/a.mp4"])
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(
            request.url.path(),
            "/api/upload-video/nemo_agent/me/a%2Fb%20c"
        );
    }
}

#[tokio::test]
async fn progress_rises_to_the_content_length() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "a.mp4", &patterned_bytes(1_000_000));
    let second = write(dir.path(), "b.wav", &patterned_bytes(600_000));
    let seen: Arc<Mutex<Vec<UploadProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);

    token_client(&server)
        .upload_with(
            &Session::from_id(SID),
            &[first, second],
            &UploadOptions::default().on_progress(move |p| sink.lock().unwrap().push(p)),
        )
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let requests = received(&server).await;
    let content_length: u64 = header(&requests[0], "content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        seen.len() >= 7,
        "several progress calls for 1.6 MB: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].sent < w[1].sent),
        "sent strictly increases"
    );
    assert!(seen.iter().all(|p| p.total == content_length));
    assert_eq!(seen.last().unwrap().sent, content_length);
    assert_eq!(content_length, requests[0].body.len() as u64);
}

/// Runs an upload that must fail locally and asserts nothing reached the server.
async fn local_failure<P: AsRef<Path>>(paths: &[P], max_upload_bytes: Option<u64>) -> Error {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let mut client = token_builder(&server);
    if let Some(limit) = max_upload_bytes {
        client = client.max_upload_bytes(limit);
    }
    let err = client
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), paths)
        .await
        .expect_err("the upload must be refused locally");
    assert!(
        received(&server).await.is_empty(),
        "no request may be sent for a local failure ({err})"
    );
    err
}

#[tokio::test]
async fn missing_file_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.mp4");
    let err = local_failure(&[&missing], None).await;
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("nope.mp4") && text.contains("does not exist"),
        "{text}"
    );
}

#[tokio::test]
async fn directory_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("clips.mp4");
    std::fs::create_dir(&folder).unwrap();
    let err = local_failure(&[folder], None).await;
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // A folder without an extension is refused too.
    let plain = dir.path().join("clips");
    std::fs::create_dir(&plain).unwrap();
    local_failure(&[plain], None).await;
}

#[tokio::test]
async fn unsupported_extension_sends_nothing_and_lists_formats() {
    let dir = tempfile::tempdir().unwrap();
    let notes = write(dir.path(), "notes.txt", b"hello");
    let err = local_failure(&[&notes], None).await;
    match &err {
        Error::UnsupportedFile {
            file, extension, ..
        } => {
            assert_eq!(file.as_deref(), Some(notes.as_path()));
            assert_eq!(extension.as_deref(), Some("txt"));
        }
        other => panic!("expected UnsupportedFile, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("notes.txt"), "{text}");
    for format in SUPPORTED_FORMATS {
        assert!(text.contains(format), "{format} missing from {text}");
    }

    // One bad file among good ones: nothing at all is sent.
    let good = write(dir.path(), "ok.mp4", b"x");
    let err = local_failure(&[good, notes], None).await;
    assert!(matches!(err, Error::UnsupportedFile { .. }), "{err:?}");
}

#[tokio::test]
async fn uppercase_extension_is_accepted() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "CLIP.MP4", b"abc");

    token_client(&server)
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let parts = upload_parts(&requests[0]);
    assert_eq!(parts[0].filename.as_deref(), Some("CLIP.MP4"));
    assert_eq!(parts[0].content_type.as_deref(), Some("video/mp4"));
    assert_eq!(parts[0].body, b"abc");
}

#[tokio::test]
async fn file_over_the_configured_limit_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let big = write(dir.path(), "big.mp4", &[0u8; 1001]);
    let err = local_failure(&[&big], Some(1000)).await;
    match &err {
        Error::FileTooLarge {
            file, size, limit, ..
        } => {
            assert_eq!(file.as_deref(), Some(big.as_path()));
            assert_eq!(*size, Some(1001));
            assert_eq!(*limit, Some(1000));
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("big.mp4") && text.contains("compress or trim"),
        "{text}"
    );

    // Exactly at the limit is fine.
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let at_limit = write(dir.path(), "fits.mp4", &[0u8; 1000]);
    token_builder(&server)
        .max_upload_bytes(1000)
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), &[at_limit])
        .await
        .unwrap();
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn empty_path_list_sends_nothing() {
    let err = local_failure::<PathBuf>(&[], None).await;
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(err.to_string().contains("at least one"), "{err}");
}

#[tokio::test]
async fn server_4001_is_unsupported_file_naming_the_file() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"code": 4001, "message": "codec hevc not supported"})),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "phone.mov", b"moov");

    let err = token_builder(&server)
        .retry(retries(3))
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap_err();

    match &err {
        Error::UnsupportedFile { file: named, .. } => {
            assert_eq!(named.as_deref(), Some(file.as_path()))
        }
        other => panic!("expected UnsupportedFile, got {other:?}"),
    }
    assert_eq!(err.http_status(), Some(200));
    let text = err.to_string();
    assert!(text.contains("phone.mov"), "{text}");
    assert!(text.contains("codec hevc not supported"), "{text}");
    assert!(text.contains("supported formats: mp4"), "{text}");
    assert_eq!(received(&server).await.len(), 1, "never retried");
}

#[tokio::test]
async fn server_4002_is_file_too_large_naming_the_file() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"code": 4002, "msg": "too big"})),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "long.mp4", &[1u8; 2048]);

    let err = token_builder(&server)
        .retry(retries(3))
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap_err();

    match &err {
        Error::FileTooLarge {
            file: named, size, ..
        } => {
            assert_eq!(named.as_deref(), Some(file.as_path()));
            assert_eq!(*size, Some(2048));
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("long.mp4") && text.contains("compress or trim"),
        "{text}"
    );
    assert!(text.contains("too big"), "{text}");
    assert_eq!(received(&server).await.len(), 1, "never retried");
}

#[tokio::test]
async fn upload_is_not_retried_after_a_503() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream busy"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "clip.mp4", b"data");

    let err = token_builder(&server)
        .retry(retries(3))
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap_err();

    assert_eq!(err.http_status(), Some(503), "{err:?}");
    assert_eq!(
        received(&server).await.len(),
        1,
        "an upload that reached the server is not sent again"
    );
}

#[tokio::test]
async fn refused_connection_is_a_connect_error_that_never_reached_the_server() {
    let closed = support::net::closed_port();
    let address = closed.address();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "clip.mp4", b"data");

    let err = nemo_video::NemoClient::builder()
        .base_url(format!("http://{address}"))
        .token(support::mock::FIXED_TOKEN)
        .no_persistence()
        .retry(retries(2))
        .build()
        .unwrap()
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap_err();

    assert!(matches!(err, nemo_video::Error::Connect { .. }), "{err:?}");
    assert!(err.never_reached_server());
    assert!(!err.to_string().contains(support::mock::FIXED_TOKEN));
}

#[tokio::test]
async fn typed_result_decodes_tolerantly() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "code": 0,
            "message": "ok",
            "data": {
                "files": [
                    {
                        "filename": "clip.mp4",
                        "file_type": "video",
                        "cdn_url": "https://cdn.example.com/u/clip.mp4",
                        "duration": 12.345,
                        "width": 1920,
                        "height": 1080,
                        "fps": 29.97,
                        "hash": "sha256:abc",
                        "codec": "h264",
                    },
                    {
                        "filename": 42,
                        "duration": "3.5",
                        "width": "wide",
                        "height": null,
                        "fps": [30],
                    }
                ],
                "session_state_applied": true,
                "quota_left": 3,
            }
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "clip.mp4", b"x");

    let result = token_client(&server)
        .upload(&Session::from_id(SID), &[&file])
        .await
        .unwrap();

    assert_eq!(result.files.len(), 2);
    let first = &result.files[0];
    assert_eq!(first.filename.as_deref(), Some("clip.mp4"));
    assert_eq!(first.file_type.as_deref(), Some("video"));
    assert_eq!(
        first.cdn_url.as_deref(),
        Some("https://cdn.example.com/u/clip.mp4")
    );
    assert_eq!(first.duration, Some(12.345));
    assert_eq!(first.width, Some(1920));
    assert_eq!(first.height, Some(1080));
    assert_eq!(first.fps, Some(29.97));
    assert_eq!(first.hash.as_deref(), Some("sha256:abc"));
    assert_eq!(first.extra.get("codec"), Some(&json!("h264")));
    assert_eq!(first.extra.len(), 1);

    let second = &result.files[1];
    assert_eq!(second.filename.as_deref(), Some("42"));
    assert_eq!(second.duration, Some(3.5));
    assert_eq!(second.width, None);
    assert_eq!(second.extra.get("width"), Some(&json!("wide")));
    assert_eq!(second.fps, None);
    assert_eq!(second.extra.get("fps"), Some(&json!([30])));

    assert_eq!(result.session_state_applied, Some(true));
    assert_eq!(result.extra.get("quota_left"), Some(&json!(3)));
}

#[tokio::test]
async fn url_import_sends_exact_json() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let urls = [
        "https://cdn.example.com/a.mp4",
        "http://example.org/b.mov?sig=x%2Fy&e=1",
    ];

    token_client(&server)
        .upload_urls(&Session::from_id(SID), &urls)
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), UPLOAD_PATH);
    assert_api_headers(request);
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(
        std::str::from_utf8(&request.body).unwrap(),
        r#"{"urls":["https://cdn.example.com/a.mp4","http://example.org/b.mov?sig=x%2Fy&e=1"],"source_type":"url"}"#
    );
}

#[tokio::test]
async fn non_http_urls_are_refused_locally() {
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let client = token_client(&server);
    let session = Session::from_id(SID);
    for bad in [
        "ftp://example.com/a.mp4",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "not a url",
        "",
    ] {
        let err = client
            .upload_urls(&session, &["https://ok.example.com/a.mp4", bad])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("http"), "{err}");
    }
    let err = client.upload_urls::<&str>(&session, &[]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(received(&server).await.is_empty(), "nothing sent");
}

#[tokio::test]
async fn large_file_streams_with_exact_length() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let server = MockServer::start().await;
    mount_upload(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.mkv");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut handle = std::fs::File::create(&file).unwrap();
        handle.set_len(SIZE).unwrap();
        handle.write_all(b"HEAD").unwrap();
        handle.seek(SeekFrom::Start(SIZE / 2 + 3)).unwrap();
        handle.write_all(b"MIDDLE").unwrap();
        handle.seek(SeekFrom::Start(SIZE - 4)).unwrap();
        handle.write_all(b"TAIL").unwrap();
    }
    let last = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&last);

    token_client(&server)
        .upload_with(
            &Session::from_id(SID),
            &[&file],
            &UploadOptions::default().on_progress(move |p| *sink.lock().unwrap() = Some(p)),
        )
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let parts = upload_parts(&requests[0]);
    assert_eq!(parts.len(), 1);
    let body = &parts[0].body;
    assert_eq!(body.len() as u64, SIZE);
    assert_eq!(&body[..4], b"HEAD");
    let middle = (SIZE / 2 + 3) as usize;
    assert_eq!(&body[middle..middle + 6], b"MIDDLE");
    assert_eq!(&body[body.len() - 4..], b"TAIL");
    assert_eq!(parts[0].content_type.as_deref(), Some("video/x-matroska"));
    let last = last.lock().unwrap().expect("progress was reported");
    assert_eq!(last.sent, requests[0].body.len() as u64);
    assert_eq!(last.total, last.sent);
}

#[tokio::test]
async fn empty_file_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.mp4", b"");
    let err = local_failure(&[&empty], None).await;
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is empty (0 bytes); pass a media file with content",
            empty.display()
        )
    );
}

#[test]
fn check_upload_file_runs_the_upload_checks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clip = write(dir.path(), "clip.MOV", b"moov");
    assert_eq!(check_upload_file(&clip, 100).unwrap(), 4);

    let folder = dir.path().join("folder.mp4");
    std::fs::create_dir(&folder).unwrap();
    let cases: Vec<(PathBuf, u64, String)> = vec![
        (
            dir.path().join("missing.txt"),
            100,
            format!(
                "{} does not exist; check the path",
                dir.path().join("missing.txt").display()
            ),
        ),
        (
            folder.clone(),
            100,
            format!("{} is not a regular file; pass a media file", folder.display()),
        ),
        (
            write(dir.path(), "notes.txt", b"text"),
            100,
            format!(
                "{} is not a supported file type; supported formats: {}",
                dir.path().join("notes.txt").display(),
                SUPPORTED_FORMATS.join(", ")
            ),
        ),
        (
            write(dir.path(), "empty.mp4", b""),
            100,
            format!(
                "{} is empty (0 bytes); pass a media file with content",
                dir.path().join("empty.mp4").display()
            ),
        ),
        (
            clip.clone(),
            3,
            format!(
                "{} is too large (4 bytes, limit 3 bytes); compress or trim it below the limit and try again",
                clip.display()
            ),
        ),
    ];
    for (path, limit, expected) in cases {
        let err = check_upload_file(&path, limit).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

/// A service on loopback whose uplink is slow: it reads each upload body `piece` bytes at a
/// time with `pause` after each (from a socket with a small receive buffer, so the client's
/// progress follows), then answers a one-file upload result. `pause: None` never reads the
/// body at all (a stalled link). Returns the base URL and the body bytes read so far.
async fn slow_uplink(
    piece: usize,
    pause: Option<std::time::Duration>,
) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let address = listener.local_addr().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let counter = read.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok((head, rest)) = support::raw_http::read_head(&mut socket).await else {
                    return;
                };
                let length: u64 = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let Some(pause) = pause else {
                    // Never reads: the client's buffers fill, and nothing moves any more.
                    std::future::pending::<()>().await;
                    return;
                };
                let mut got = rest.len() as u64;
                counter.store(got, Ordering::SeqCst);
                let mut buffer = vec![0u8; piece];
                while got < length {
                    tokio::time::sleep(pause).await;
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n as u64,
                    }
                    counter.store(got, Ordering::SeqCst);
                }
                let body = r#"{"code":0,"data":{"files":[{"filename":"big.mp4"}]}}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{address}"), read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_uplink_finishes_a_big_upload() {
    use std::time::{Duration, Instant};
    // 704 KiB at about 80 KiB/s takes some 9 s; the limit that assumed 4 s per MiB on top of
    // the request timeout (3 s here) would have cut it at 7 s. The connection takes bytes in
    // bursts (as the kernel's send buffer drains), about a second apart here: well within the
    // 3 s the upload may go without progress.
    let (base, read) = slow_uplink(16 * 1024, Some(Duration::from_millis(70))).await;
    let dir = support::tempdir();
    let clip = dir.path().join("big.mp4");
    std::fs::write(&clip, patterned_bytes(704 * 1024)).unwrap();
    let client = support::client_builder(&base)
        .token("nmv_usr_FIXED")
        .no_persistence()
        .request_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let gaps = Arc::new(Mutex::new((Instant::now(), Duration::ZERO)));
    let seen = gaps.clone();
    let started = Instant::now();
    let result = client
        .upload_with(
            &Session::from_id("7301234567890123456"),
            &[&clip],
            &UploadOptions::default().on_progress(move |_| {
                let mut gaps = seen.lock().unwrap();
                let gap = gaps.0.elapsed();
                gaps.1 = gaps.1.max(gap);
                gaps.0 = Instant::now();
            }),
        )
        .await;
    let longest = gaps.lock().unwrap().1;
    let result = result.unwrap_or_else(|err| {
        panic!("a slow upload that keeps moving finishes (longest silence {longest:?}): {err}")
    });
    assert_eq!(result.files.len(), 1);
    assert!(read.load(std::sync::atomic::Ordering::SeqCst) > 704 * 1024);
    assert!(
        started.elapsed() > Duration::from_secs(7),
        "the link was slower than the old limit allowed: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stops_moving_fails_after_the_stall_limit() {
    use std::time::{Duration, Instant};
    let (base, _) = slow_uplink(16 * 1024, None).await;
    let dir = support::tempdir();
    let clip = dir.path().join("big.mp4");
    // More than loopback buffers hold, so the body stops moving.
    std::fs::write(&clip, patterned_bytes(32 * 1024 * 1024)).unwrap();
    let client = support::client_builder(&base)
        .token("nmv_usr_FIXED")
        .no_persistence()
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .upload(&Session::from_id("7301234567890123456"), &[&clip])
        .await
        .expect_err("stalled");
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        (err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "it may have reached the service: {err}"
    );
    // The old limit gave this file 132 s on top of the request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}: {err}",
        started.elapsed()
    );
}
