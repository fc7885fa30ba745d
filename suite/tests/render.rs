//! Render, wait, cancel, export and download against loopback mock servers.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::draft::Draft;
use nemo_video::render::{
    check_output_path, check_output_path_for, DownloadOptions, DownloadProgress, ExportOptions,
    RenderProgress,
};
use nemo_video::{
    render::RenderJob, render::RenderOptions, render::RenderStatus, render::WaitOptions, Error,
    Session,
};
use serde_json::json;
use support::mock::{
    assert_api_headers, finished_export, header, received, token_builder, token_client,
};
use support::raw_http::raw_http_server;
use support::{file_names, patterned_bytes, retries};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "7305123456789012345";
const SUBMIT_PATH: &str = "/api/render/proxy/lambda";
/// A draft with a float that must not be re-spelled, unknown keys, and a number beyond u64.
const DRAFT: &str = r#"{"t":[{"tt":0,"sg":[{"d":905.4000000000001,"m":{"name":"city"},"fx":{"k":1e5}}]},{"tt":7,"sg":[],"zz":null}],"d":905.4000000000001,"m":{"ratio":"9:16"},"unknown_top":[1,2.50,"x"],"big":123456789012345678901234567890}"#;

fn fast_wait() -> WaitOptions {
    WaitOptions::default()
        .poll_interval(Duration::from_millis(10))
        .max_wait(Duration::from_secs(10))
}

fn ok_submit() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": {"id": "x"}}))
}

async fn mount_submit(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(SUBMIT_PATH))
        .respond_with(ok_submit())
        .mount(server)
        .await;
}

fn status_path(id: &str) -> String {
    format!("/api/render/proxy/lambda/{id}")
}

/// Mounts one poll answer, used once, in mount order.
async fn poll_once(server: &MockServer, id: &str, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(status_path(id)))
        .respond_with(response)
        .up_to_n_times(1)
        .mount(server)
        .await;
}

fn json_body(value: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(value)
}

fn is_render_id(id: &str) -> bool {
    id.strip_prefix("render_")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

// ---------------------------------------------------------------- submit

#[tokio::test]
async fn submit_body_is_exact_and_keeps_the_draft_bytes() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    let draft = Draft::from_json(DRAFT).unwrap();

    let job = RenderJob::new(&Session::from_id(SID));
    token_client(&server)
        .submit_render(&job, &draft, &RenderOptions::default())
        .await
        .unwrap();

    assert!(is_render_id(&job.id), "{}", job.id);
    assert_eq!(job.session_id, SID);
    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), SUBMIT_PATH);
    assert_api_headers(request);
    assert_eq!(header(request, "content-type"), Some("application/json"));
    let expected = format!(
        r#"{{"id":"{}","sessionId":"{SID}","draft":{DRAFT},"output":{{"format":"mp4","quality":"high"}}}}"#,
        job.id
    );
    assert_eq!(std::str::from_utf8(&request.body).unwrap(), expected);
}

#[tokio::test]
async fn resolution_is_sent_only_when_set() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    let draft = Draft::from_json(r#"{"t":[]}"#).unwrap();
    let client = token_client(&server);
    let session = Session::from_id(SID);

    let job = RenderJob::new(&session);
    client
        .submit_render(
            &job,
            &draft,
            &RenderOptions::default()
                .resolution("1080p")
                .quality("medium"),
        )
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(
        std::str::from_utf8(&requests[0].body).unwrap(),
        format!(
            r#"{{"id":"{}","sessionId":"{SID}","draft":{{"t":[]}},"output":{{"format":"mp4","quality":"medium","resolution":"1080p"}}}}"#,
            job.id
        )
    );
}

#[tokio::test]
async fn concurrent_renders_get_distinct_ids() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    let client = token_client(&server);
    let draft = Arc::new(Draft::from_json(r#"{"t":[{"tt":0,"sg":[{}]}]}"#).unwrap());

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            let draft = Arc::clone(&draft);
            tokio::spawn(async move {
                let job = RenderJob::new(&Session::from_id(SID));
                client
                    .submit_render(&job, &draft, &RenderOptions::default())
                    .await
                    .unwrap();
                job.id
            })
        })
        .collect();
    let mut job_ids = HashSet::new();
    for task in tasks {
        job_ids.insert(task.await.unwrap());
    }

    assert_eq!(job_ids.len(), 200, "every job has its own id");
    assert!(job_ids.iter().all(|id| is_render_id(id)));
    let sent_ids: HashSet<String> = received(&server)
        .await
        .iter()
        .map(|r| {
            r.body_json::<serde_json::Value>().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sent_ids, job_ids, "the ids on the wire are the jobs' ids");
}

#[tokio::test]
async fn http_402_is_export_blocked_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SUBMIT_PATH))
        .respond_with(
            ResponseTemplate::new(402).set_body_json(json!({"detail": "Payment Required"})),
        )
        .mount(&server)
        .await;

    let session = Session::from_id(SID);
    let err = token_builder(&server)
        .retry(retries(3))
        .build()
        .unwrap()
        .submit_render(
            &RenderJob::new(&session),
            &Draft::from_json(DRAFT).unwrap(),
            &RenderOptions::default(),
        )
        .await
        .unwrap_err();

    assert!(
        matches!(err, nemo_video::Error::ExportBlocked { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("register or upgrade your plan"),
        "{err}"
    );
    assert_eq!(received(&server).await.len(), 1);
}

// ---------------------------------------------------------------- wait

#[tokio::test]
async fn wait_accepts_the_success_data_shape() {
    let server = MockServer::start().await;
    let job = RenderJob::from_id("render_1", SID);
    poll_once(
        &server,
        "render_1",
        json_body(json!({"success": true, "data": {"id": "render_1", "status": "pending", "progress": 0}})),
    )
    .await;
    poll_once(
        &server,
        "render_1",
        json_body(json!({"success": true, "data": {"id": "render_1", "status": "completed", "progress": 100, "outputUrl": "https://cdn.example.com/a.mp4"}})),
    )
    .await;

    let export = token_client(&server)
        .wait_for_render(&job, &fast_wait())
        .await
        .unwrap();

    assert_eq!(export.output_url(), Some("https://cdn.example.com/a.mp4"));
    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.method.as_str(), "GET");
        assert_eq!(request.url.path(), "/api/render/proxy/lambda/render_1");
        assert_api_headers(request);
    }
}

#[tokio::test]
async fn wait_accepts_the_bare_output_shape() {
    let server = MockServer::start().await;
    poll_once(
        &server,
        "render_2",
        json_body(json!({"status": "processing"})),
    )
    .await;
    poll_once(
        &server,
        "render_2",
        json_body(
            json!({"status": "completed", "output": {"url": "https://cdn.example.com/b.mp4"}}),
        ),
    )
    .await;

    let export = token_client(&server)
        .wait_for_render(&RenderJob::from_id("render_2", SID), &fast_wait())
        .await
        .unwrap();

    assert_eq!(export.output_url(), Some("https://cdn.example.com/b.mp4"));
}

async fn failed_with(body: serde_json::Value) -> Error {
    let server = MockServer::start().await;
    poll_once(
        &server,
        "render_3",
        json_body(json!({"status": "processing"})),
    )
    .await;
    poll_once(&server, "render_3", json_body(body)).await;
    let err = token_client(&server)
        .wait_for_render(&RenderJob::from_id("render_3", SID), &fast_wait())
        .await
        .unwrap_err();
    assert_eq!(
        received(&server).await.len(),
        2,
        "stops polling once failed"
    );
    err
}

#[tokio::test]
async fn failed_render_is_render_failed_with_the_server_text() {
    let err = failed_with(
        json!({"success": true, "data": {"status": "failed", "error": "font NotoSans missing"}}),
    )
    .await;
    match &err {
        Error::RenderFailed { job_id, message } => {
            assert_eq!(job_id, "render_3");
            assert_eq!(message, "font NotoSans missing");
        }
        other => panic!("expected RenderFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("font NotoSans missing"), "{err}");
}

#[tokio::test]
async fn failed_render_in_the_bare_shape_is_render_failed_too() {
    let err = failed_with(json!({"status": "failed", "error": "font NotoSans missing"})).await;
    match &err {
        Error::RenderFailed { job_id, message } => {
            assert_eq!(job_id, "render_3");
            assert_eq!(message, "font NotoSans missing");
        }
        other => panic!("expected RenderFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_status_counts_as_running() {
    let server = MockServer::start().await;
    poll_once(
        &server,
        "render_4",
        json_body(json!({"success": true, "data": {"status": "warming_up"}})),
    )
    .await;
    poll_once(
        &server,
        "render_4",
        json_body(json!({"success": true, "data": {"status": ""}})),
    )
    .await;
    poll_once(
        &server,
        "render_4",
        json_body(json!({"success": true, "data": {"status": "completed", "outputUrl": "https://cdn.example.com/c.mp4"}})),
    )
    .await;
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&statuses);

    let export = token_client(&server)
        .wait_for_render(
            &RenderJob::from_id("render_4", SID),
            &fast_wait().on_progress(move |p| sink.lock().unwrap().push(p.status.clone())),
        )
        .await
        .unwrap();

    assert_eq!(export.output_url(), Some("https://cdn.example.com/c.mp4"));
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(statuses.len(), 3);
    assert_eq!(statuses[0], RenderStatus::Unknown("warming_up".into()));
    assert!(!statuses[0].is_finished() && !statuses[1].is_finished());
}

#[tokio::test]
async fn a_502_while_polling_does_not_lose_the_job() {
    let server = MockServer::start().await;
    poll_once(
        &server,
        "render_5",
        ResponseTemplate::new(502).set_body_string("<html>502 Bad Gateway</html>"),
    )
    .await;
    poll_once(
        &server,
        "render_5",
        json_body(json!({"success": true, "data": {"status": "completed", "outputUrl": "https://cdn.example.com/d.mp4"}})),
    )
    .await;

    // No transport retries: the waiter itself must carry on after the failed poll.
    let export = token_builder(&server)
        .retry(retries(0))
        .build()
        .unwrap()
        .wait_for_render(&RenderJob::from_id("render_5", SID), &fast_wait())
        .await
        .unwrap();

    assert_eq!(export.output_url(), Some("https://cdn.example.com/d.mp4"));
    assert_eq!(received(&server).await.len(), 2);
}

#[tokio::test]
async fn max_wait_ends_in_render_timed_out_with_the_last_status() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(status_path("render_6")))
        .respond_with(json_body(
            json!({"success": true, "data": {"status": "processing", "progress": 42}}),
        ))
        .mount(&server)
        .await;

    let started = std::time::Instant::now();
    let err = token_client(&server)
        .wait_for_render(
            &RenderJob::from_id("render_6", SID),
            &WaitOptions::default()
                .poll_interval(Duration::from_millis(20))
                .max_wait(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();

    // The wait ends at max_wait (150 ms) instead of polling forever; the bound only has to be
    // out of reach of a busy machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    match &err {
        Error::RenderTimedOut {
            job_id,
            last_status,
            waited,
        } => {
            assert_eq!(job_id, "render_6");
            assert_eq!(last_status, "processing 42%");
            assert!(*waited >= Duration::from_millis(150), "{waited:?}");
        }
        other => panic!("expected RenderTimedOut, got {other:?}"),
    }
    assert!(err.to_string().contains("processing 42%"), "{err}");
    assert!(received(&server).await.len() >= 2, "polled more than once");
}

#[tokio::test]
async fn progress_callback_sees_each_poll() {
    let server = MockServer::start().await;
    for body in [
        json!({"success": true, "data": {"status": "pending"}}),
        json!({"success": true, "data": {"status": "processing", "progress": 10}}),
        json!({"success": true, "data": {"status": "processing", "progress": "55.5%"}}),
        json!({"success": true, "data": {"status": "completed", "progress": 100, "outputUrl": "https://cdn.example.com/e.mp4"}}),
    ] {
        poll_once(&server, "render_7", json_body(body)).await;
    }
    let seen: Arc<Mutex<Vec<RenderProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);

    token_client(&server)
        .wait_for_render(
            &RenderJob::from_id("render_7", SID),
            &fast_wait().on_progress(move |p| sink.lock().unwrap().push(p.clone())),
        )
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let progress: Vec<Option<f64>> = seen.iter().map(|p| p.progress).collect();
    assert_eq!(progress, [None, Some(10.0), Some(55.5), Some(100.0)]);
    let words: Vec<&str> = seen.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(words, ["pending", "processing", "processing", "completed"]);
}

// ---------------------------------------------------------------- resume and cancel

#[tokio::test]
async fn a_stored_job_resumes_after_a_restart() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    let job = RenderJob::new(&Session::from_id(SID));
    token_client(&server)
        .submit_render(
            &job,
            &Draft::from_json(DRAFT).unwrap(),
            &RenderOptions::default(),
        )
        .await
        .unwrap();
    let stored = serde_json::to_string(&job).unwrap();

    // "Later": a new client, the job read back from storage.
    let restored: RenderJob = serde_json::from_str(&stored).unwrap();
    assert_eq!(restored, job);
    Mock::given(method("GET"))
        .and(path(status_path(&job.id)))
        .respond_with(json_body(
            json!({"status": "completed", "output": {"url": "https://cdn.example.com/f.mp4"}}),
        ))
        .mount(&server)
        .await;
    let export = token_client(&server)
        .wait_for_render(&restored, &fast_wait())
        .await
        .unwrap();
    assert_eq!(export.output_url(), Some("https://cdn.example.com/f.mp4"));
    let last = received(&server).await.pop().unwrap();
    assert_eq!(last.url.path(), status_path(&job.id));
}

#[tokio::test]
async fn from_id_attaches_to_a_known_render() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/render/proxy/lambda/render_1700000000000"))
        .respond_with(json_body(
            json!({"success": true, "data": {"status": "completed", "outputUrl": "https://cdn.example.com/g.mp4"}}),
        ))
        .mount(&server)
        .await;
    let job = RenderJob::from_id("render_1700000000000", SID);
    assert_eq!(job.id, "render_1700000000000");
    assert_eq!(job.session_id, SID);
    // A job stored without its submission time still loads.
    let loaded: RenderJob =
        serde_json::from_str(r#"{"id":"render_1700000000000","session_id":"7305123456789012345"}"#)
            .unwrap();
    assert_eq!(loaded, job);

    let export = token_client(&server)
        .wait_for_render(&loaded, &fast_wait())
        .await
        .unwrap();
    assert_eq!(export.output_url(), Some("https://cdn.example.com/g.mp4"));
}

#[tokio::test]
async fn cancel_posts_to_the_exact_path_with_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("^/api/render/proxy/lambda/.+/cancel$"))
        .respond_with(json_body(
            json!({"success": true, "data": {"cancelled": true}}),
        ))
        .mount(&server)
        .await;
    let client = token_client(&server);

    client
        .cancel_render(&RenderJob::from_id("render_99", SID))
        .await
        .unwrap();
    client
        .cancel_render(&RenderJob::from_id("render 1/x", SID))
        .await
        .unwrap();

    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method.as_str(), "POST");
    assert_eq!(
        requests[0].url.path(),
        "/api/render/proxy/lambda/render_99/cancel"
    );
    assert_api_headers(&requests[0]);
    assert_eq!(
        requests[1].url.path(),
        "/api/render/proxy/lambda/render%201%2Fx/cancel",
        "ids are percent-encoded"
    );
}

// ---------------------------------------------------------------- export

async fn mount_state(server: &MockServer, draft: &str) {
    let body = format!(
        r#"{{"code":0,"data":{{"session_id":"{SID}","state":{{"draft":{draft},"video_infos":[]}}}}}}"#
    );
    Mock::given(method("GET"))
        .and(path(format!("/api/state/nemo_agent/me/{SID}/latest")))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(server)
        .await;
}

#[tokio::test]
async fn export_refuses_an_empty_timeline_without_rendering() {
    for draft in [
        r#"{"t":[{"tt":0,"sg":[]},{"tt":1,"sg":[]}]}"#,
        r#"{"t":[]}"#,
        "null",
    ] {
        let server = MockServer::start().await;
        mount_state(&server, draft).await;
        mount_submit(&server).await;

        let err = token_client(&server)
            .export_with(
                &Session::from_id(SID),
                &ExportOptions::default()
                    .render(RenderOptions::default())
                    .wait(fast_wait()),
            )
            .await
            .unwrap_err();

        match &err {
            Error::NothingToExport { session_id } => assert_eq!(session_id, SID),
            other => panic!("{draft}: expected NothingToExport, got {other:?}"),
        }
        assert!(err.to_string().contains("no clips"), "{err}");
        let requests = received(&server).await;
        assert!(
            requests.iter().all(|r| r.method.as_str() == "GET"),
            "{draft}: no render was submitted"
        );
    }
}

#[tokio::test]
async fn export_renders_the_state_draft_and_returns_the_url() {
    let server = MockServer::start().await;
    mount_state(&server, DRAFT).await;
    mount_submit(&server).await;
    Mock::given(method("GET"))
        .and(path_regex("^/api/render/proxy/lambda/render_[0-9]+$"))
        .respond_with(json_body(
            json!({"success": true, "data": {"status": "completed", "outputUrl": "https://cdn.example.com/h.mp4"}}),
        ))
        .mount(&server)
        .await;

    let export = token_client(&server)
        .export_with(
            &Session::from_id(SID),
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait()),
        )
        .await
        .unwrap();

    assert_eq!(export.output_url(), Some("https://cdn.example.com/h.mp4"));
    assert!(is_render_id(&export.job().id));
    let requests = received(&server).await;
    let submit = requests
        .iter()
        .find(|r| r.method.as_str() == "POST")
        .expect("a render was submitted");
    assert_eq!(
        std::str::from_utf8(&submit.body).unwrap(),
        format!(
            r#"{{"id":"{}","sessionId":"{SID}","draft":{DRAFT},"output":{{"format":"mp4","quality":"high"}}}}"#,
            export.job().id
        ),
        "the state's draft goes back byte for byte"
    );
}

// ---------------------------------------------------------------- download

async fn serve_file(server: &MockServer, at: &str, bytes: &[u8]) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(ResponseTemplate::new(200).set_body_raw(bytes.to_vec(), "video/mp4"))
        .mount(server)
        .await;
}

#[tokio::test]
async fn download_writes_the_exact_bytes_and_reports_progress() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    let bytes = patterned_bytes(3 * 1024 * 1024 + 17);
    serve_file(&cdn, "/out/final.mp4", &bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let seen: Arc<Mutex<Vec<DownloadProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);

    let export = finished_export(
        "render_20",
        SID,
        Some(&format!("{}/out/final.mp4", cdn.uri())),
    )
    .await;

    let written = token_client(&api)
        .download_with(
            &export,
            &target,
            &DownloadOptions::default().on_progress(move |p| sink.lock().unwrap().push(p)),
        )
        .await
        .unwrap();

    assert_eq!(written, bytes.len() as u64);
    assert!(
        std::fs::read(&target).unwrap() == bytes,
        "file equals the served bytes"
    );
    assert_eq!(
        file_names(dir.path()),
        ["edited.mp4"],
        "no temporary files left"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0].received < w[1].received));
    let last = seen.last().expect("progress reported");
    assert_eq!(last.received, bytes.len() as u64);
    assert_eq!(last.total, Some(bytes.len() as u64));
    // The CDN is another origin (another port): it never sees the token.
    let cdn_requests = received(&cdn).await;
    assert_eq!(cdn_requests.len(), 1);
    assert!(header(&cdn_requests[0], "authorization").is_none());
    // Nor the attribution headers, which are for the API only.
    assert!(header(&cdn_requests[0], "x-skill-source").is_none());
    assert!(header(&cdn_requests[0], "user-agent").is_some_and(|ua| ua.contains("nemo-video")));
    assert!(received(&api).await.is_empty());
}

#[tokio::test]
async fn dot_ids_are_refused_before_any_request() {
    let api = MockServer::start().await;
    let client = token_client(&api);
    for id in [".", "..", ""] {
        let job = RenderJob::from_id(id, "sid");
        let err = client.cancel_render(&job).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{id:?}: {err}");
    }
    assert!(received(&api).await.is_empty());
}

#[tokio::test]
async fn download_replaces_an_existing_file_only_when_complete() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(&cdn, "/new.mp4", b"new contents").await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    std::fs::write(&target, b"old contents, longer than the new").unwrap();

    let export = finished_export("render_21", SID, Some(&format!("{}/new.mp4", cdn.uri()))).await;

    token_client(&api).download(&export, &target).await.unwrap();

    assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
}

/// A raw server that answers every request with 500 of the 1000 bytes its `Content-Length`
/// promises, then closes the connection.
async fn truncating_server() -> String {
    raw_http_server(
        "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 1000\r\nConnection: close",
        vec![7u8; 500],
    )
    .await
}

/// A client with the fixed token whose API is the raw server at `base`.
fn raw_api_builder(base: &str) -> nemo_video::NemoClientBuilder {
    support::client_builder(base)
        .token(support::mock::FIXED_TOKEN)
        .no_persistence()
}

#[tokio::test]
async fn a_truncated_download_leaves_nothing_behind() {
    // When the output URL fails, the download tries the API's download endpoint: the API
    // cuts its body short the same way, so the error is a truncation's either way.
    let api = truncating_server().await;
    let base = truncating_server().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let export = finished_export("render_22", SID, Some(&format!("{base}/out.mp4"))).await;

    let err = raw_api_builder(&api)
        .retry(retries(0))
        .build()
        .unwrap()
        .download(&export, &target)
        .await
        .unwrap_err();

    assert!(!target.exists(), "no file at the target");
    assert!(
        file_names(dir.path()).is_empty(),
        "no temporary files: {:?}",
        file_names(dir.path())
    );
    assert!(
        matches!(
            err.retry_policy(),
            nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
        ),
        "worth retrying: {err:?}"
    );
}

#[tokio::test]
async fn overwrite_false_refuses_an_existing_file_before_any_request() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(&cdn, "/new.mp4", b"new contents").await;
    serve_file(
        &api,
        "/api/render/proxy/render_25/download",
        b"new contents",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    std::fs::write(&target, b"earlier export").unwrap();
    let export = finished_export("render_25", SID, Some(&format!("{}/new.mp4", cdn.uri()))).await;
    let client = token_client(&api);
    let keep = DownloadOptions::default().overwrite(false);

    let err = client
        .download_with(&export, &target, &keep)
        .await
        .unwrap_err();

    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&target.display().to_string()) && text.contains("overwrite"),
        "{text}"
    );
    assert!(received(&cdn).await.is_empty(), "nothing asked of the CDN");
    assert!(received(&api).await.is_empty(), "nothing asked of the API");
    assert_eq!(std::fs::read(&target).unwrap(), b"earlier export");
    assert_eq!(file_names(dir.path()), ["edited.mp4"]);

    // A path with no file there is downloaded as usual.
    let fresh = dir.path().join("fresh.mp4");
    client.download_with(&export, &fresh, &keep).await.unwrap();
    assert_eq!(std::fs::read(&fresh).unwrap(), b"new contents");
    assert_eq!(std::fs::read(&target).unwrap(), b"earlier export");
}

#[tokio::test]
async fn overwrite_false_keeps_a_file_that_appears_during_the_download() {
    // The path is free when the download starts; another writer (a second run, the user)
    // puts a file there while the body is on its way. That file is kept, nothing of the
    // download is left behind, and the API's endpoint is not tried as a fallback.
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(
        &api,
        "/api/render/proxy/render_28/download",
        b"new contents",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    let other_writer = target.clone();
    Mock::given(method("GET"))
        .and(path("/new.mp4"))
        .respond_with(move |_: &wiremock::Request| {
            std::fs::write(&other_writer, b"the other writer's file").unwrap();
            ResponseTemplate::new(200).set_body_raw(patterned_bytes(256 * 1024), "video/mp4")
        })
        .mount(&cdn)
        .await;
    let export = finished_export("render_28", SID, Some(&format!("{}/new.mp4", cdn.uri()))).await;

    let err = token_client(&api)
        .download_with(
            &export,
            &target,
            &DownloadOptions::default().overwrite(false),
        )
        .await
        .unwrap_err();

    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("appeared") && text.contains("nothing was saved"),
        "{text}"
    );
    assert_eq!(received(&cdn).await.len(), 1, "the download ran");
    assert!(received(&api).await.is_empty(), "no second download");
    assert_eq!(std::fs::read(&target).unwrap(), b"the other writer's file");
    assert_eq!(file_names(dir.path()), ["edited.mp4"], "no part file left");
}

#[tokio::test]
async fn downloads_replace_an_existing_file_by_default() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(&cdn, "/new.mp4", b"new contents").await;
    let dir = tempfile::tempdir().unwrap();
    let export = finished_export("render_26", SID, Some(&format!("{}/new.mp4", cdn.uri()))).await;
    let client = token_client(&api);

    for (name, options) in [
        ("plain.mp4", None),
        ("default.mp4", Some(DownloadOptions::default())),
        (
            "allowed.mp4",
            Some(DownloadOptions::default().overwrite(true)),
        ),
    ] {
        let target = dir.path().join(name);
        std::fs::write(&target, b"old contents, longer than the new").unwrap();
        let written = match &options {
            None => client.download(&export, &target).await,
            Some(options) => client.download_with(&export, &target, options).await,
        }
        .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(written, b"new contents".len() as u64, "{name}");
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents", "{name}");
    }
    assert_eq!(
        file_names(dir.path()),
        ["allowed.mp4", "default.mp4", "plain.mp4"]
    );
    assert_eq!(received(&cdn).await.len(), 3);
}

#[tokio::test]
async fn download_progress_rises_to_the_file_size() {
    let api = MockServer::start().await;
    let bytes = patterned_bytes(2 * 1024 * 1024 + 3);
    serve_file(&api, "/api/render/proxy/render_27/download", &bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    // No output URL: the API's download endpoint reports progress the same way.
    let export = finished_export("render_27", SID, None).await;
    let seen: Arc<Mutex<Vec<DownloadProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);

    let written = token_client(&api)
        .download_with(
            &export,
            &target,
            &DownloadOptions::default().on_progress(move |p| sink.lock().unwrap().push(p)),
        )
        .await
        .unwrap();

    assert_eq!(written, bytes.len() as u64);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the progress callback was called");
    assert!(
        seen.windows(2).all(|w| w[0].received < w[1].received),
        "received rises: {:?}",
        seen.iter().map(|p| p.received).collect::<Vec<_>>()
    );
    assert!(seen[0].received > 0);
    assert!(seen.iter().all(|p| p.total == Some(bytes.len() as u64)));
    assert_eq!(seen.last().unwrap().received, bytes.len() as u64);
    assert!(std::fs::read(&target).unwrap() == bytes);
}

#[tokio::test]
async fn a_truncated_download_keeps_the_previous_file() {
    // The API's download endpoint (the fallback) cuts its body short too.
    let api = truncating_server().await;
    let base = truncating_server().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    std::fs::write(&target, b"earlier export").unwrap();
    let export = finished_export("render_23", SID, Some(&format!("{base}/out.mp4"))).await;

    raw_api_builder(&api)
        .build()
        .unwrap()
        .download(&export, &target)
        .await
        .unwrap_err();

    assert_eq!(std::fs::read(&target).unwrap(), b"earlier export");
    assert_eq!(file_names(dir.path()), ["edited.mp4"]);
}

#[tokio::test]
async fn download_render_without_url_uses_the_api_endpoint_with_auth() {
    let api = MockServer::start().await;
    let bytes = patterned_bytes(100_000);
    serve_file(&api, "/api/render/proxy/render_8/download", &bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.mp4");

    let export = finished_export("render_8", SID, None).await;

    let written = token_client(&api).download(&export, &target).await.unwrap();

    assert_eq!(written, bytes.len() as u64);
    assert!(std::fs::read(&target).unwrap() == bytes);
    let requests = received(&api).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].url.path(),
        "/api/render/proxy/render_8/download"
    );
    assert_api_headers(&requests[0]);
}

async fn falls_back_when_cdn_answers(status: u16) {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/out.mp4"))
        .respond_with(ResponseTemplate::new(status).set_body_string("nope"))
        .mount(&cdn)
        .await;
    let bytes = patterned_bytes(4096);
    serve_file(&api, "/api/render/proxy/render_9/download", &bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.mp4");

    let export = finished_export("render_9", SID, Some(&format!("{}/out.mp4", cdn.uri()))).await;

    token_client(&api).download(&export, &target).await.unwrap();

    assert!(std::fs::read(&target).unwrap() == bytes, "the API's bytes");
    assert_eq!(file_names(dir.path()), ["out.mp4"]);
    let cdn_requests = received(&cdn).await;
    assert!(!cdn_requests.is_empty(), "the CDN was tried first");
    assert!(cdn_requests
        .iter()
        .all(|r| header(r, "authorization").is_none()));
    let api_requests = received(&api).await;
    assert_eq!(api_requests.len(), 1);
    assert_api_headers(&api_requests[0]);
}

#[tokio::test]
async fn download_render_falls_back_when_the_cdn_says_404() {
    falls_back_when_cdn_answers(404).await;
}

#[tokio::test]
async fn download_render_falls_back_when_the_cdn_says_500() {
    falls_back_when_cdn_answers(500).await;
}

#[tokio::test]
async fn a_cross_origin_redirect_drops_the_token() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    let bytes = patterned_bytes(10_000);
    serve_file(&cdn, "/signed/out.mp4", &bytes).await;
    Mock::given(method("GET"))
        .and(path("/api/render/proxy/render_10/download"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/signed/out.mp4", cdn.uri()).as_str()),
        )
        .mount(&api)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.mp4");

    let export = finished_export("render_10", SID, None).await;

    token_client(&api).download(&export, &target).await.unwrap();

    assert!(std::fs::read(&target).unwrap() == bytes);
    let api_requests = received(&api).await;
    assert_eq!(api_requests.len(), 1);
    assert_api_headers(&api_requests[0]);
    let cdn_requests = received(&cdn).await;
    assert_eq!(cdn_requests.len(), 1);
    assert!(
        header(&cdn_requests[0], "authorization").is_none(),
        "the token must not follow a redirect to another origin"
    );
}

#[tokio::test]
async fn a_missing_output_folder_fails_before_any_request() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(&cdn, "/out.mp4", b"bytes").await;
    serve_file(&api, "/api/render/proxy/render_11/download", b"bytes").await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("no").join("such").join("edited.mp4");
    let client = token_client(&api);
    let export = finished_export("render_11", SID, Some(&format!("{}/out.mp4", cdn.uri()))).await;

    let err = client.download(&export, &target).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains("such"),
        "{text}"
    );

    let err = client
        .download_with(&export, &target, &DownloadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");

    assert!(
        received(&cdn).await.is_empty(),
        "nothing was requested from the CDN"
    );
    assert!(
        received(&api).await.is_empty(),
        "nothing was requested from the API"
    );
    assert!(!dir.path().join("no").exists());
}

#[cfg(unix)]
#[tokio::test]
async fn a_downloaded_file_gets_an_ordinary_mode_not_the_temp_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let cdn = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/out.mp4"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![1u8; 1000]))
        .mount(&cdn)
        .await;
    let api = MockServer::start().await;
    let client = token_client(&api);
    let export = finished_export("render_24", SID, Some(&format!("{}/out.mp4", cdn.uri()))).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    client.download(&export, &target).await.unwrap();
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // Replacing a file keeps the replaced file's mode.
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    client.download(&export, &target).await.unwrap();
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

/// The files in `dir`, by name.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn check_output_path_accepts_a_new_or_existing_file_in_a_writable_folder() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("edited.mp4");
    assert_eq!(check_output_path(&target).unwrap(), target);
    std::fs::write(&target, b"old").unwrap();
    assert_eq!(
        check_output_path(&target).unwrap(),
        target,
        "replacing is fine"
    );
    assert_eq!(
        names_in(dir.path()),
        ["edited.mp4"],
        "the writability probe leaves nothing behind"
    );
    let relative = check_output_path("edited_here.mp4").unwrap();
    assert!(relative.is_absolute(), "{}", relative.display());
}

#[test]
fn check_output_path_refuses_each_bad_output_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("renders");
    std::fs::create_dir(&folder).unwrap();
    let missing = dir.path().join("no_such_dir").join("x.mp4");

    let cases: Vec<(std::path::PathBuf, String)> = vec![
        (
            missing.clone(),
            format!(
                "the folder {} does not exist; create it or choose another output path",
                dir.path().join("no_such_dir").display()
            ),
        ),
        (
            folder.clone(),
            format!(
                "{0} is a folder; name a file inside it, such as {0}/edited.mp4",
                folder.display()
            ),
        ),
        (
            std::path::PathBuf::new(),
            "the output path is empty; name a file such as edited.mp4".to_string(),
        ),
    ];
    for (path, expected) in cases {
        let err = check_output_path(&path).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }
    assert_eq!(names_in(dir.path()), ["renders"], "nothing was written");
}

#[cfg(target_os = "linux")]
#[test]
fn a_folder_that_accepts_no_files_is_called_not_writable() {
    // `/proc` exists, but no file can be created in it ("No such file or directory").
    let err = check_output_path("/proc/x.mp4").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the folder /proc is not writable (it does not accept new files); choose another output folder"
    );
    assert!(!err.to_string().contains(".nemo-"), "no internal file name");
}

#[test]
fn check_output_path_for_refuses_the_input_by_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.mp4");
    std::fs::write(&input, b"video").unwrap();
    let expected = |path: &std::path::Path| {
        format!(
            "the output {} is the input file; choose another output path (saving there would overwrite the input)",
            path.display()
        )
    };

    let mut same: Vec<std::path::PathBuf> = vec![
        input.clone(),
        dir.path().join(".").join("clip.mp4"),
        dir.path().join("renders").join("..").join("clip.mp4"),
    ];
    std::fs::create_dir(dir.path().join("renders")).unwrap();
    std::fs::hard_link(&input, dir.path().join("hard.mp4")).unwrap();
    same.push(dir.path().join("hard.mp4"));
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&input, dir.path().join("soft.mp4")).unwrap();
        same.push(dir.path().join("soft.mp4"));
    }
    for output in &same {
        let err = check_output_path_for(output, &input).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected(output));
    }

    // Another file, existing or not, is fine.
    let other = dir.path().join("clip_edited.mp4");
    assert_eq!(check_output_path_for(&other, &input).unwrap(), other);
    std::fs::write(&other, b"old").unwrap();
    assert_eq!(check_output_path_for(&other, &input).unwrap(), other);
    assert_eq!(std::fs::read(&input).unwrap(), b"video");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn downloads_run_the_same_output_check_before_any_request() {
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    serve_file(&cdn, "/out.mp4", b"bytes").await;
    let client = token_client(&api);
    let expected = check_output_path("/proc/x.mp4").unwrap_err().to_string();
    let export = finished_export("render_11", SID, Some(&format!("{}/out.mp4", cdn.uri()))).await;

    let err = client.download(&export, "/proc/x.mp4").await.unwrap_err();
    assert_eq!(err.to_string(), expected);
    let err = client
        .download_with(&export, "/proc/x.mp4", &DownloadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), expected);
    assert!(received(&cdn).await.is_empty());
    assert!(received(&api).await.is_empty());
}
