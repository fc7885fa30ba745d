//! End to end through the public API against the offline simulator: the remove-object job,
//! the example program a user runs, faults a user meets on the way, and resuming a render.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use nemo_video::render::{ExportOptions, RenderJob, RenderOptions};
use nemo_video::simulator::{Endpoint, Failure, Simulator, SAMPLE_OUTPUT_MP4};
use nemo_video::state::Change;
use nemo_video::upload::{UploadOptions, UploadProgress};
use nemo_video::{turn::TurnEnd, Error, NemoClient, Session};
use serde_json::Value;
use support::sim::{
    builder, fast_wait, new_client, sample_input, session_with_clip, simulator, MASK_TRACK, REMOVE,
};
use support::tempdir;

/// The `object_removal` effects on any segment of a draft.
fn object_removals(draft: &Value) -> Vec<Value> {
    let mut found = Vec::new();
    for track in draft["t"].as_array().into_iter().flatten() {
        for segment in track["sg"].as_array().into_iter().flatten() {
            for effect in segment["m"]["effects"].as_array().into_iter().flatten() {
                if effect["type"] == "object_removal" {
                    found.push(effect.clone());
                }
            }
        }
    }
    found
}

/// Exports the session and downloads the result to `path`, as a user's program would.
async fn export_to(client: &NemoClient, session: &Session, path: &Path) -> nemo_video::Result<u64> {
    let export = client
        .export_with(
            session,
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait()),
        )
        .await?;
    client.download(&export, path).await
}

// ---------------------------------------------------------------------------------------
// 1. The main job through the public API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn remove_object_flow_end_to_end() {
    let sim = Simulator::builder()
        .fast()
        .credits_per_edit(7)
        .start()
        .await
        .unwrap();
    let dir = tempdir();
    let client = new_client(&sim, dir.path());

    let session = client
        .create_session_with(&nemo_video::SessionOptions::default().language("en"))
        .await
        .unwrap();
    let credits_before = client.credits().await.unwrap().available;
    assert_eq!(
        credits_before, 100.0,
        "a new anonymous user starts with 100"
    );

    // Upload with progress: it reports growing byte counts and ends at the total.
    let seen: Arc<Mutex<Vec<UploadProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let uploaded = client
        .upload_with(
            &session,
            &[sample_input()],
            &UploadOptions::default().on_progress(move |p| sink.lock().unwrap().push(p)),
        )
        .await
        .unwrap();
    assert_eq!(uploaded.files.len(), 1);
    assert_eq!(
        uploaded.files[0].filename.as_deref(),
        Some("sample_input.mp4")
    );
    let seen = seen.lock().unwrap().clone();
    let last = *seen.last().expect("the progress callback was called");
    let file_len = std::fs::metadata(sample_input()).unwrap().len();
    assert_eq!(
        last.sent, last.total,
        "progress reached the total: {seen:?}"
    );
    assert!(
        last.total > file_len,
        "the total counts the multipart framing"
    );
    assert!(seen.windows(2).all(|w| w[0].sent <= w[1].sent), "{seen:?}");
    let upload = sim
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Some(Endpoint::Upload))
        .unwrap();
    assert_eq!(
        upload.body_len, last.total,
        "the server received every byte"
    );

    // The agent edits the draft.
    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    assert!(
        turn.text.contains("removed the background person"),
        "{}",
        turn.text
    );
    assert_eq!(turn.answer(), turn.text);
    assert!(
        turn.tool_calls.iter().any(|c| c.name == "remove_object"),
        "{:?}",
        turn.tool_calls
    );

    let state = client.state(&session).await.unwrap();
    let draft = state.draft().expect("a draft");
    let removals = object_removals(&draft.to_value().unwrap());
    assert_eq!(removals.len(), 1, "{}", draft.as_json_str());
    assert_eq!(removals[0]["fill"], "solid_color");
    assert!(
        draft
            .tracks()
            .iter()
            .any(|t| t.display_name() == MASK_TRACK),
        "{}",
        draft.summary()
    );
    let summary = state.summary();
    assert!(summary.contains(MASK_TRACK), "{summary}");
    assert!(summary.starts_with("Timeline (2 tracks)"), "{summary}");
    assert!(state.is_ready_for_export());

    // Export and download.
    let out = dir.path().join("edited.mp4");
    let export = client
        .export_with(
            &session,
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait()),
        )
        .await
        .unwrap();
    let url = export.output_url().expect("an output URL");
    assert!(url.starts_with(sim.cdn_base_url()), "{url}");
    let bytes = client.download(&export, &out).await.unwrap();
    assert_eq!(bytes, SAMPLE_OUTPUT_MP4.len() as u64);
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The token stayed home, was fetched once, and the edit was charged once.
    assert_eq!(sim.request_count(Endpoint::CdnOutput), 1);
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    assert_eq!(sim.request_count(Endpoint::RenderDownload), 0);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);
    let credits_after = client.credits().await.unwrap().available;
    assert_eq!(credits_after, credits_before - 7.0);
    for request in sim
        .requests()
        .iter()
        .filter(|r| r.endpoint != Some(Endpoint::CdnOutput))
    {
        assert_eq!(
            request.header("x-skill-source"),
            Some("video-object-ops"),
            "{} {}",
            request.method,
            request.path
        );
    }
}

#[tokio::test]
async fn text_less_turn_is_explained_from_state() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    sim.set_text_less(true);

    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    assert_eq!(turn.text, "");
    assert!(turn.tool_calls.iter().any(|c| c.name == "remove_object"));
    let changes = turn.changes.as_ref().expect("changes read from state");
    assert!(!changes.is_empty());
    assert!(
        changes.changes().iter().any(
            |c| matches!(c, Change::TrackAdded { track, .. } if track.display_name() == MASK_TRACK)
        ),
        "{changes:?}"
    );
    let answer = turn.answer();
    assert!(answer.starts_with("Done. "), "{answer}");
    assert!(answer.contains(MASK_TRACK), "{answer}");
    assert!(
        turn.state_after
            .as_ref()
            .is_some_and(|s| s.summary().contains(MASK_TRACK)),
        "{:?}",
        turn.state_after
    );
}

// ---------------------------------------------------------------------------------------
// 2. The example a user runs
// ---------------------------------------------------------------------------------------

/// `remove_object -- <args>` from `cwd`, with its own config dir.
fn run_example(cwd: &Path, config_dir: &Path, args: &[&str]) -> Output {
    support::examples::run_example("remove_object", cwd, config_dir, args)
}

fn assert_no_leaks(text: &str) {
    assert!(!text.contains("nmv_usr_"), "a token was printed:\n{text}");
    assert!(!text.contains("{\""), "raw JSON was printed:\n{text}");
}

#[test]
fn example_runs_the_demo_offline() {
    let cwd = tempdir();
    let config = tempdir();
    let out = cwd.path().join("out.mp4");
    let output = run_example(
        cwd.path(),
        config.path(),
        &["--poll-interval", "0.1", "--output", out.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!(
            "Saved {} ({} bytes)",
            out.display(),
            SAMPLE_OUTPUT_MP4.len()
        )
    );
    assert!(stdout.contains(MASK_TRACK), "{stdout}");
    assert_no_leaks(&stdout);
    assert_no_leaks(&stderr);
}

#[test]
fn example_with_a_missing_input_fails_cleanly() {
    let cwd = tempdir();
    let config = tempdir();
    let out = cwd.path().join("out.mp4");
    let missing = cwd.path().join("no_such_clip.mp4");
    let output = run_example(
        cwd.path(),
        config.path(),
        &[
            missing.to_str().unwrap(),
            "--simulate",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("no_such_clip.mp4"), "{stderr}");
    assert!(!out.exists(), "no output file");
    let entries: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        entries.is_empty(),
        "nothing written to the folder: {entries:?}"
    );
    assert_no_leaks(&stdout);
    assert_no_leaks(&stderr);
}

// ---------------------------------------------------------------------------------------
// 3. Faults on the way
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_mid_flow_reauthenticates_once() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    let first_token = client
        .anonymous_credentials()
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);

    sim.expire_tokens();
    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 2);
    let second_token = client
        .anonymous_credentials()
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    assert_ne!(first_token, second_token);

    let out = dir.path().join("edited.mp4");
    export_to(&client, &session, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 2);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);

    // The new token was persisted: a client started later reuses it.
    let later = new_client(&sim, dir.path());
    later.credits().await.unwrap();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 2);
}

#[tokio::test]
async fn no_credits_gives_the_registration_link_and_sends_once() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    let user_id = client
        .anonymous_credentials()
        .await
        .unwrap()
        .user_id
        .expect("an anonymous user id");
    assert!(user_id.starts_with("anon_"), "{user_id}");
    sim.set_credits(0);

    let err = client.run_turn(&session, REMOVE).await.unwrap_err();
    let expected = format!("https://nemovideo.com/register?bind={user_id}");
    match &err {
        Error::NoCredits { register_url, .. } => {
            assert_eq!(register_url.as_deref(), Some(expected.as_str()))
        }
        other => panic!("expected NoCredits, got {other:?}"),
    }
    assert!(matches!(err, nemo_video::Error::NoCredits { .. }));
    let message = err.to_string();
    assert!(message.contains(&expected), "{message}");
    assert!(!message.contains("nmv_usr_"), "{message}");
    assert_eq!(sim.request_count(Endpoint::RunSse), 1, "never retried");
    assert!(object_removals(&sim.draft(session.id()).unwrap()).is_empty());
}

#[tokio::test]
async fn no_credits_link_uses_the_configured_web_url() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = builder(&sim, dir.path())
        .web_url("https://web.nemo.test/")
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    let user_id = client.anonymous_credentials().await.unwrap().user_id;
    sim.set_credits(0);
    let err = client.run_turn(&session, REMOVE).await.unwrap_err();
    let expected = format!("https://web.nemo.test/register?bind={}", user_id.unwrap());
    assert!(
        matches!(&err, Error::NoCredits { register_url: Some(url), .. } if *url == expected),
        "{err:?}"
    );
}

#[tokio::test]
async fn export_blocked_by_plan_is_not_retried() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    client.run_turn(&session, REMOVE).await.unwrap();
    sim.fail_next(Endpoint::RenderSubmit, 1, Failure::Status(402));

    let out = dir.path().join("edited.mp4");
    let err = export_to(&client, &session, &out).await.unwrap_err();
    assert!(matches!(err, Error::ExportBlocked { .. }), "{err:?}");
    assert!(matches!(err, nemo_video::Error::ExportBlocked { .. }));
    assert!(
        err.to_string()
            .contains("register or upgrade your plan to unlock export"),
        "{err}"
    );
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);
    assert_eq!(sim.request_count(Endpoint::RenderStatus), 0);
    assert!(!out.exists());
}

#[tokio::test]
async fn empty_attribution_is_refused_before_anything_is_sent() {
    let sim = simulator().await;
    let dir = tempdir();
    // The service refuses exports without attribution (402): an empty value is a mistake
    // caught at build time, not after the user's edits.
    let err = builder(&sim, dir.path())
        .skill_source("")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("X-Skill-Source"), "{err}");
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn failed_render_reports_the_server_text() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    client.run_turn(&session, REMOVE).await.unwrap();
    sim.fail_next_render("GPU on fire");

    let out = dir.path().join("edited.mp4");
    let err = export_to(&client, &session, &out).await.unwrap_err();
    match &err {
        Error::RenderFailed { message, job_id } => {
            assert!(message.contains("GPU on fire"), "{message}");
            assert!(job_id.starts_with("render_"), "{job_id}");
        }
        other => panic!("expected RenderFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("GPU on fire"), "{err}");
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);
    assert!(!out.exists());
}

#[tokio::test]
async fn dropped_stream_is_not_resent_and_changes_come_from_state() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    sim.drop_next_stream_after(2);

    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    match &turn.end {
        TurnEnd::Disconnected(err) => {
            assert!(matches!(err, Error::StreamDisconnected { .. }), "{err:?}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(sim.request_count(Endpoint::RunSse), 1, "never re-sent");
    let changes = turn.changes.as_ref().expect("changes read from state");
    assert!(
        changes.changes().iter().any(
            |c| matches!(c, Change::TrackAdded { track, .. } if track.display_name() == MASK_TRACK)
        ),
        "{changes:?}"
    );
    let answer = turn.answer();
    assert!(answer.contains(MASK_TRACK), "{answer}");
    assert!(answer.contains("cut off"), "{answer}");

    // The edit landed: the export works.
    let out = dir.path().join("edited.mp4");
    export_to(&client, &session, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
}

#[tokio::test]
async fn state_read_503_is_retried_and_the_flow_completes() {
    let sim = simulator().await;
    let dir = tempdir();
    let client = new_client(&sim, dir.path());
    let session = session_with_clip(&client).await;
    let state_reads = sim.request_count(Endpoint::State);
    sim.fail_next(Endpoint::State, 1, Failure::Status(503));

    // The turn reads the state first: that read fails once, then succeeds.
    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
    assert_eq!(sim.request_count(Endpoint::State), state_reads + 2);

    let out = dir.path().join("edited.mp4");
    export_to(&client, &session, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Resuming a render after a restart
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn render_job_resumes_in_a_new_client() {
    let sim = simulator().await;
    let dir = tempdir();
    let saved = {
        let client = new_client(&sim, dir.path());
        let session = session_with_clip(&client).await;
        client.run_turn(&session, REMOVE).await.unwrap();
        let state = client.state(&session).await.unwrap();
        let job = RenderJob::new(&session);
        client
            .submit_render(&job, state.draft().unwrap(), &RenderOptions::default())
            .await
            .unwrap();
        assert_eq!(job.session_id, session.id());
        serde_json::to_string(&job).unwrap()
        // The first client is dropped here, as at a restart.
    };
    assert!(!saved.contains("nmv_usr_"), "{saved}");

    let client = new_client(&sim, dir.path());
    let job: RenderJob = serde_json::from_str(&saved).unwrap();
    let export = client.wait_for_render(&job, &fast_wait()).await.unwrap();
    assert!(export.output_url().is_some(), "an output URL");
    let out = dir.path().join("resumed.mp4");
    client.download(&export, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == SAMPLE_OUTPUT_MP4);
    assert_eq!(
        sim.request_count(Endpoint::RenderSubmit),
        1,
        "not resubmitted"
    );
    assert_eq!(
        sim.request_count(Endpoint::AnonymousToken),
        1,
        "the new client reused the persisted token"
    );
}
