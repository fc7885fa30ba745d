//! Tokens never leak: not into logs (captured at TRACE), errors, `Debug` output, or requests to
//! other hosts; and the credentials file is private, atomic, and survives being broken.
//!
//! Every test here starts with `capture_logs()`, before the SDK logs anything (see
//! `support::logs` for why).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nemo_video::render::{ExportOptions, RenderOptions, WaitOptions};
use nemo_video::simulator::{Endpoint, Failure, Simulator, SAMPLE_OUTPUT_MP4};
use nemo_video::turn::TurnOptions;
use nemo_video::{Error, NemoClient, Session};
use support::logs::{capture_logs, LogBuffer};
use support::mock::finished_export;
use support::{
    assert_error_hides, assert_hidden, ephemeral_builder as builder, eventually, file_names,
    sample_clip, stored_credentials, stored_file,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const EDIT: &str = "remove the background person and replace it with a solid color";
const FIXED_TOKEN: &str = "nmv_usr_fixed_secret_3c9e71d0a4b2f865";

fn wait() -> WaitOptions {
    WaitOptions::default()
        .poll_interval(Duration::from_millis(50))
        .max_wait(Duration::from_secs(20))
}

/// Exports with the default output settings, waiting as [`wait`] says.
fn export_options() -> ExportOptions {
    ExportOptions::default()
        .render(RenderOptions::default())
        .wait(wait())
}

fn turn_options() -> TurnOptions {
    TurnOptions::default().reconcile(2, Duration::from_millis(50))
}

/// Asserts the log is real (non-empty, with request spans) and free of every secret.
fn assert_log_clean(log: &LogBuffer, secrets: &[&str]) {
    let text = log.text();
    assert!(!text.is_empty(), "nothing was logged: is tracing wired up?");
    assert!(
        text.contains("nemo.request"),
        "the log has no nemo.request spans:\n{text}"
    );
    assert!(text.contains("TRACE") || text.contains("DEBUG") || text.contains("INFO"));
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a token appears in the log output:\n{text}"
        );
    }
    // A token fragment long enough to identify it is as bad as the whole token.
    for secret in secrets {
        if let Some(tail) = secret.get(8..24) {
            assert!(!text.contains(tail), "part of a token appears in the log");
        }
    }
}

/// The whole flow with every kind of trouble on the way. Returns the errors met.
async fn troubled_flow(
    sim: &Simulator,
    client: &NemoClient,
    dir: &Path,
) -> (Vec<Error>, Vec<String>) {
    let mut errors = Vec::new();
    let mut tokens = Vec::new();
    let clip = sample_clip(dir);

    let session = client
        .create_session_with(&nemo_video::SessionOptions::default().language("en"))
        .await
        .expect("session");
    if let Some(creds) = client.anonymous_credentials().await {
        tokens.push(creds.token.expose().to_string());
    }

    // Tokens expire mid-flow: the upload is refused with 1001 and replayed with a new token
    // (anonymous) or fails with a typed error (fixed token).
    sim.expire_tokens();
    match client.upload(&session, &[&clip]).await {
        Ok(uploaded) => assert_eq!(uploaded.files.len(), 1),
        Err(err) => {
            assert!(
                matches!(err, nemo_video::Error::Unauthorized { .. }),
                "{err}"
            );
            errors.push(err);
            return (errors, tokens);
        }
    }
    if let Some(creds) = client.anonymous_credentials().await {
        tokens.push(creds.token.expose().to_string());
    }
    tokens.dedup();

    // A 503 on state: retried (the turn reads state first).
    sim.fail_next(Endpoint::State, 1, Failure::Status(503));
    // The state keeps failing past the retry budget: a typed, transient error.
    sim.fail_next(Endpoint::State, 3, Failure::Status(503));
    let err = client.state(&session).await.expect_err("503 three times");
    assert_eq!(err.http_status(), Some(503), "{err}");
    errors.push(err);

    // 2001 on the message: never retried, a typed error with the registration link.
    let current = tokens.last().cloned().unwrap_or_default();
    assert!(sim.set_credits_for_token(&current, 0));
    let err = client
        .run_turn_with(&session, EDIT, &turn_options())
        .await
        .expect_err("no credits");
    assert!(matches!(err, nemo_video::Error::NoCredits { .. }), "{err}");
    errors.push(err);
    assert!(sim.set_credits_for_token(&current, 100));

    // A dropped connection on credits, three times: a typed network error.
    sim.fail_next(Endpoint::Credits, 3, Failure::CloseConnection);
    errors.push(client.credits().await.expect_err("connection closed"));

    // An unknown session: 1002.
    let err = client
        .state(&Session::from_id("1234567890123456789"))
        .await
        .expect_err("unknown session");
    assert!(
        matches!(err, nemo_video::Error::SessionNotFound { .. }),
        "{err}"
    );
    errors.push(err);

    let turn = client
        .run_turn_with(&session, EDIT, &turn_options())
        .await
        .expect("turn");
    assert!(!turn.answer().is_empty());

    // 402 on render: export blocked, never retried.
    sim.fail_next(Endpoint::RenderSubmit, 1, Failure::Status(402));
    let err = client
        .export_with(&session, &export_options())
        .await
        .expect_err("402");
    assert!(
        matches!(err, nemo_video::Error::ExportBlocked { .. }),
        "{err}"
    );
    errors.push(err);

    sim.fail_next(Endpoint::RenderStatus, 1, Failure::Status(503));
    let export = client
        .export_with(&session, &export_options())
        .await
        .expect("export");
    let target = dir.join("edited.mp4");
    let bytes = client.download(&export, &target).await.expect("download");
    assert_eq!(bytes, SAMPLE_OUTPUT_MP4.len() as u64);
    assert_eq!(std::fs::read(&target).unwrap(), SAMPLE_OUTPUT_MP4);

    // A failed download (the CDN drops the connection every time, then the fallback does).
    sim.fail_next(Endpoint::CdnOutput, 3, Failure::Status(500));
    sim.fail_next(Endpoint::RenderDownload, 3, Failure::Status(500));
    errors.push(
        client
            .download(&export, dir.join("again.mp4"))
            .await
            .expect_err("download failures"),
    );
    (errors, tokens)
}

/// A span and an event at a callsite of their own, so which thread hits them first is up to
/// the test.
fn probe(label: &str) {
    let span = tracing::info_span!("capture.probe", label);
    let _entered = span.enter();
    tracing::info!(label, "probe event");
}

/// The capture cannot miss a span whose callsite another thread (one without a capture, like
/// a parallel test's) hit first while the capture was live: `tracing` caches interest per
/// callsite for the whole process, from the thread that registers it.
#[test]
fn the_log_capture_sees_callsites_first_hit_by_another_thread() {
    let (log, _guard) = capture_logs();
    std::thread::spawn(|| probe("elsewhere")).join().unwrap();
    probe("here");
    let text = log.text();
    assert!(
        text.contains("capture.probe"),
        "the span is missing:\n{text}"
    );
    assert!(
        text.contains("probe event"),
        "the event is missing:\n{text}"
    );
    assert!(text.contains("here"), "{text}");
    // Another thread's records stay out of this test's log.
    assert!(!text.contains("elsewhere"), "{text}");
}

#[tokio::test]
async fn anonymous_tokens_never_reach_logs_errors_or_debug_output() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = builder(sim.base_url())
        .config_dir(dir.path().join("config"))
        .build()
        .unwrap();

    let (errors, tokens) = troubled_flow(&sim, &client, dir.path()).await;
    assert_eq!(
        tokens.len(),
        2,
        "expected the first token and the one fetched after expiry"
    );
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 2);
    assert!(errors.len() >= 6, "{errors:?}");
    let secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for token in &secrets {
        assert!(token.starts_with("nmv_usr_"));
    }
    for err in &errors {
        assert_error_hides(err, &secrets);
    }
    assert_hidden("the client", &client, &secrets);
    assert_hidden("the config", client.config(), &secrets);
    let creds = client.anonymous_credentials().await.unwrap();
    assert_hidden("the credentials", &creds, &secrets);
    assert_eq!(creds.token.to_string(), "***");
    // The bearer token never went to the CDN origin.
    assert!(sim.request_count(Endpoint::CdnOutput) >= 1);
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    // The re-authentication is visible in the log, the token is not.
    let text = log.text();
    assert!(text.contains("token rejected"), "{text}");
    assert!(text.contains("transient failure; retrying"), "{text}");
    assert_log_clean(&log, &secrets);
    // The persisted credentials do hold the token (that is their job) and nothing else does.
    let stored = std::fs::read_to_string(dir.path().join("config/credentials.json")).unwrap();
    assert!(stored.contains(&tokens[1]));
}

#[tokio::test]
async fn a_fixed_token_never_reaches_logs_errors_or_debug_output() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A fixed token the service does not know: every call is refused with 1001 and the
    // token is never swapped for an anonymous one.
    let builder_with_token = builder(sim.base_url()).token(FIXED_TOKEN);
    assert_hidden("the builder", &builder_with_token, &[FIXED_TOKEN]);
    let client = builder_with_token.build().unwrap();
    assert_hidden("the client", &client, &[FIXED_TOKEN]);
    assert_hidden("the config", client.config(), &[FIXED_TOKEN]);
    let mut errors = vec![client.create_session().await.expect_err("unknown token")];
    errors.push(client.credits().await.expect_err("unknown token"));
    assert!(
        errors
            .iter()
            .all(|err| matches!(err, Error::Unauthorized { .. })),
        "{errors:?}"
    );
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 0);

    // A fixed token the service knows (issued out of band): the whole flow with failures.
    let issued = reqwest::Client::new()
        .post(format!("{}/api/auth/anonymous-token", sim.base_url()))
        .header("X-Client-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Skill-Source", "video-object-ops")
        .header("X-Skill-Version", "0.1.0")
        .header("X-Skill-Platform", "unknown")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let known = builder(sim.base_url())
        .token(issued.clone())
        .build()
        .unwrap();
    let secrets = [FIXED_TOKEN, issued.as_str()];
    let flow_sim = &sim;
    let (flow_errors, _) = {
        // No expiry for this run: a fixed token cannot be refreshed, so expiring it would
        // end the flow at once (checked separately below).
        let session = known
            .create_session_with(&nemo_video::SessionOptions::default().language("en"))
            .await
            .unwrap();
        let clip = sample_clip(dir.path());
        known.upload(&session, &[&clip]).await.unwrap();
        let mut errs = Vec::new();
        flow_sim.fail_next(Endpoint::State, 3, Failure::Status(503));
        errs.push(known.state(&session).await.expect_err("503"));
        assert!(flow_sim.set_credits_for_token(&issued, 0));
        errs.push(
            known
                .run_turn_with(&session, EDIT, &turn_options())
                .await
                .expect_err("2001"),
        );
        assert!(flow_sim.set_credits_for_token(&issued, 100));
        flow_sim.fail_next(Endpoint::State, 1, Failure::Status(503));
        known
            .run_turn_with(&session, EDIT, &turn_options())
            .await
            .unwrap();
        flow_sim.fail_next(Endpoint::RenderSubmit, 1, Failure::Status(402));
        errs.push(
            known
                .export_with(&session, &export_options())
                .await
                .expect_err("402"),
        );
        let export = known
            .export_with(&session, &export_options())
            .await
            .unwrap();
        let target = dir.path().join("fixed.mp4");
        known.download(&export, &target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), SAMPLE_OUTPUT_MP4);
        // Now the token expires: a typed error that tells the person to set a fresh one.
        flow_sim.expire_tokens();
        let err = known.credits().await.expect_err("expired fixed token");
        assert!(matches!(err, nemo_video::Error::Unauthorized { .. }));
        assert!(err.to_string().contains("fixed token"), "{err}");
        errs.push(err);
        (errs, ())
    };
    errors.extend(flow_errors);
    assert!(errors[2].http_status() == Some(503));
    assert!(matches!(errors[3], nemo_video::Error::NoCredits { .. }));
    assert!(matches!(errors[4], nemo_video::Error::ExportBlocked { .. }));
    for err in &errors {
        assert_error_hides(err, &secrets);
    }
    assert_hidden("the client", &known, &secrets);
    assert!(known.anonymous_credentials().await.is_none());
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1, "only ours");
    assert_log_clean(&log, &secrets);
}

/// Origin A redirects to origin B (same host, another port): B never sees the token, for a
/// download and for an API call alike. A does see it, so the test can tell.
#[tokio::test]
async fn the_token_is_not_forwarded_across_a_redirect_to_another_origin() {
    let (log, _guard) = capture_logs();
    let origin_a = MockServer::start().await;
    let origin_b = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/files/out.mp4"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/cdn/out.mp4", origin_b.uri())),
        )
        .mount(&origin_a)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/credits/balance/simple"))
        .respond_with(ResponseTemplate::new(307).insert_header(
            "location",
            format!("{}/api/credits/balance/simple", origin_b.uri()),
        ))
        .mount(&origin_a)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/render/proxy/render_1/download"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/cdn/out.mp4", origin_b.uri())),
        )
        .mount(&origin_a)
        .await;
    Mock::given(method("GET"))
        .and(path("/cdn/out.mp4"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(SAMPLE_OUTPUT_MP4))
        .mount(&origin_b)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/credits/balance/simple"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "code": 0, "data": {"available": 5, "frozen": 0, "total": 5}
        })))
        .mount(&origin_b)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let client = builder(&origin_a.uri()).token(FIXED_TOKEN).build().unwrap();
    let target = dir.path().join("out.mp4");
    let export = finished_export(
        "render_2",
        "1",
        Some(&format!("{}/files/out.mp4", origin_a.uri())),
    )
    .await;
    client.download(&export, &target).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), SAMPLE_OUTPUT_MP4);
    let export = finished_export("render_1", "1", None).await;
    client
        .download(&export, dir.path().join("fallback.mp4"))
        .await
        .unwrap();
    let credits = client.credits().await.unwrap();
    assert_eq!(credits.available, 5.0);

    let seen_a = origin_a.received_requests().await.unwrap();
    assert_eq!(seen_a.len(), 3);
    for request in &seen_a {
        assert_eq!(
            request
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap()),
            Some(format!("Bearer {FIXED_TOKEN}").as_str()),
            "{}",
            request.url
        );
    }
    let seen_b = origin_b.received_requests().await.unwrap();
    assert_eq!(seen_b.len(), 3);
    for request in &seen_b {
        assert!(
            request.headers.get("authorization").is_none(),
            "{} got the token",
            request.url
        );
        let all = format!("{:?} {}", request.headers, request.url);
        assert!(!all.contains(FIXED_TOKEN));
    }
    assert_log_clean(&log, &[FIXED_TOKEN]);
}

/// A download URL on another origin gets no token at all, redirect or not.
#[tokio::test]
async fn a_download_from_another_origin_carries_no_token() {
    let (log, _guard) = capture_logs();
    let api = MockServer::start().await;
    let cdn = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/x.mp4"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(SAMPLE_OUTPUT_MP4))
        .mount(&cdn)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let client = builder(&api.uri()).token(FIXED_TOKEN).build().unwrap();
    let export = finished_export("render_1", "1", Some(&format!("{}/x.mp4", cdn.uri()))).await;
    client
        .download(&export, dir.path().join("x.mp4"))
        .await
        .unwrap();
    let seen = cdn.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("authorization").is_none());
    assert!(api.received_requests().await.unwrap().is_empty());
    assert_log_clean(&log, &[FIXED_TOKEN]);
}

/// What a file store's directory holds: the file and its locks, never a temporary.
const STORE_FILES: [&str; 3] = ["credentials.json", "credentials.lock", "locks"];

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_credentials_file_is_private_and_written_atomically() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("home/.config/nemovideo");
    let client = builder(sim.base_url()).config_dir(&config).build().unwrap();
    client.credits().await.unwrap();
    let file = config.join("credentials.json");
    assert_eq!(mode_of(&config), 0o700, "the config directory");
    assert_eq!(mode_of(&file), 0o600, "the credentials file");
    assert_eq!(
        file_names(&config),
        STORE_FILES,
        "no temporary left, only the file and its locks"
    );
    assert_eq!(mode_of(&config.join("credentials.lock")), 0o600);
    assert_eq!(mode_of(&config.join("locks")), 0o700);
    let first = client.anonymous_credentials().await.unwrap();
    assert_eq!(
        stored_credentials(&config, sim.base_url(), &first.client_id)["token"],
        first.token.expose()
    );

    // Rewritten (invalidate, then a new token): still private, still no temporaries.
    sim.expire_tokens();
    client.credits().await.unwrap();
    let second = client.anonymous_credentials().await.unwrap();
    assert_ne!(first.token, second.token);
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(file_names(&config), STORE_FILES);
    assert_eq!(
        stored_credentials(&config, sim.base_url(), &second.client_id)["token"],
        second.token.expose()
    );
    assert_eq!(stored_file(&config)["default_client_id"], second.client_id);

    // A file someone loosened to 0644 is private again after the next write.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    sim.expire_tokens();
    client.credits().await.unwrap();
    assert_eq!(mode_of(&file), 0o600);

    // A new client reuses the persisted token (no new token request).
    let before = sim.request_count(Endpoint::AnonymousToken);
    let again = builder(sim.base_url()).config_dir(&config).build().unwrap();
    again.credits().await.unwrap();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), before);
    let tokens = [first.token.expose(), second.token.expose()];
    assert_log_clean(&log, &tokens);
}

/// Many writers at once (clients sharing a directory, each fetching and invalidating tokens)
/// while a reader watches: every read sees either no file or a whole JSON document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_expose_a_partial_credentials_file() {
    // Every test of this file starts capturing (see `support::logs`); the clients here run on
    // worker threads, whose records the capture leaves out, so there is nothing to check.
    let _capture = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("nemovideo");
    let file = config.join("credentials.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let whole_reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (file, stop, whole_reads) = (file.clone(), stop.clone(), whole_reads.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|err| {
                            panic!("a partial credentials file was visible: {err}")
                        });
                        whole_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::NotFound),
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = builder(sim.base_url())
            .config_dir(&config)
            .client_id(uuid::Uuid::new_v4().to_string())
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                // A second expiry between the refresh and the replay is reported, not
                // refreshed again (one refresh per request): fine here.
                if let Err(err) = client.credits().await {
                    assert!(
                        matches!(err, nemo_video::Error::Unauthorized { .. }),
                        "{err}"
                    );
                }
            }
        }));
    }
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        sim.expire_tokens();
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The reader saw the file at least once (it exists from the first token on), however
    // little time a busy machine gave its thread.
    let seen = eventually(Duration::from_secs(30), || {
        reader.is_finished() || whole_reads.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    assert!(seen && whole_reads.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(file_names(&config), STORE_FILES);
}

#[tokio::test]
async fn a_corrupted_credentials_file_is_moved_aside_reported_and_replaced() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("nemovideo");
    std::fs::create_dir(&config).unwrap();
    let file = config.join("credentials.json");
    let mut garbage: Vec<u8> = (0..=255u8).rev().collect();
    garbage.extend_from_slice(b"{\"anonymous\": {\"token\": ");
    std::fs::write(&file, &garbage).unwrap();

    let client = builder(sim.base_url()).config_dir(&config).build().unwrap();
    let err = client.create_session().await.unwrap_err();
    // Reported in the error of the call that found it (the store's own warning is logged on
    // the blocking thread that did the file work).
    assert!(err.to_string().contains("moved aside"), "{err}");
    let aside: Vec<_> = file_names(&config)
        .into_iter()
        .filter(|name| name.starts_with("credentials.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(config.join(&aside[0])).unwrap(), garbage);
    std::fs::remove_file(config.join(&aside[0])).unwrap();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 0);

    // The next call starts a whole, private file holding the new token.
    client.create_session().await.expect("a new file");
    let creds = client.anonymous_credentials().await.unwrap();
    assert_eq!(
        stored_credentials(&config, sim.base_url(), &creds.client_id)["token"],
        creds.token.expose()
    );
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(file_names(&config), STORE_FILES);
    assert_log_clean(&log, &[creds.token.expose()]);

    // Valid JSON this version does not understand (an invalid saved client id, a field of
    // the wrong type): kept byte for byte, beside a new default identity.
    for odd in [
        r#"{"client_id": 42, "anonymous": "nope"}"#,
        r#"{"client_id": "not a uuid; rm -rf /"}"#,
    ] {
        std::fs::write(&file, odd).unwrap();
        let fresh = builder(sim.base_url()).config_dir(&config).build().unwrap();
        fresh.credits().await.expect("works beside odd fields");
        let stored = stored_file(&config);
        let id = stored["default_client_id"]
            .as_str()
            .expect("a default identity");
        assert!(
            stored_credentials(&config, sim.base_url(), id)["token"].is_string(),
            "{stored}"
        );
        let original: serde_json::Value = serde_json::from_str(odd).unwrap();
        for (field, value) in original.as_object().unwrap() {
            assert_eq!(&stored[field], value, "{field} kept: {stored}");
        }
    }
}

#[tokio::test]
async fn an_unreadable_credentials_path_fails_the_call_and_is_left_alone() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("nemovideo");
    // A directory where the file should be: reading fails (EISDIR) even as root. Whatever
    // is there might hold identities: nothing may replace it, and nothing is asked of the
    // service that it might refuse for the week.
    std::fs::create_dir_all(config.join("credentials.json/inner")).unwrap();

    let client = builder(sim.base_url()).config_dir(&config).build().unwrap();
    let err = client.create_session().await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("could not read the NemoVideo credentials")
            && message.contains("credentials.json"),
        "{message}"
    );
    assert!(config.join("credentials.json/inner").is_dir(), "left alone");
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 0);
    assert_eq!(sim.request_count(Endpoint::CreateSession), 0);
    assert!(file_names(&config)
        .iter()
        .all(|name| !name.ends_with(".tmp")));
    assert_log_clean(&log, &[]);
}

/// A config directory that cannot be created (a file is in the way): warned, never fatal.
#[tokio::test]
async fn an_uncreatable_config_directory_is_reported_and_ignored() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("blocker"), b"a file, not a directory").unwrap();
    let client = builder(sim.base_url())
        .config_dir(root.path().join("blocker/nemovideo"))
        .build()
        .unwrap();
    client.credits().await.expect("works regardless");
    let text = log.text();
    assert!(
        text.lines()
            .any(|line| line.contains("WARN") && line.contains("could not save")),
        "{text}"
    );
    assert_eq!(file_names(root.path()), ["blocker"]);
}

/// A save of the credentials killed half-way (kill -9 between its write and its rename) leaves
/// its temporary file beside the credentials, maybe with a token in it. The next save, under
/// the file lock, removes it: no stray copy of a token stays on disk.
#[tokio::test]
async fn a_credentials_save_killed_half_way_leaves_no_copy_behind() {
    let (log, _guard) = capture_logs();
    let sim = Simulator::builder().fast().start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("nemovideo");
    std::fs::create_dir(&config).unwrap();
    let torn = format!(
        r#"{{"identities": {{"{}": {{"token": "{FIXED_TOKEN}"#,
        sim.base_url()
    );
    std::fs::write(config.join(".credentials.json.tmp"), torn).unwrap();

    let client = builder(sim.base_url()).config_dir(&config).build().unwrap();
    client.create_session().await.unwrap();
    assert_eq!(
        file_names(&config),
        ["credentials.json", "credentials.lock", "locks"]
    );
    let stored = stored_file(&config).to_string();
    assert!(
        !stored.contains(FIXED_TOKEN),
        "the torn copy was not read: {stored}"
    );
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
    assert_log_clean(&log, &[FIXED_TOKEN]);
}
