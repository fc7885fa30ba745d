//! Work that survives interruption: caller-owned render jobs, reconcilable turns, a durable
//! edit job resumed by a new client after a crash at any point, bounded error bodies, and
//! errors that never invite a double charge.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::job::{EditJob, JobFile, JobOptions, Stage};
use nemo_video::render::{RenderJob, RenderOptions};
use nemo_video::simulator::{Endpoint, Simulator};
use nemo_video::stream::MessageOptions;
use nemo_video::turn::{TurnEnd, TurnOptions};
use nemo_video::{Error, NemoClient, RetryPolicy, SessionState};
use support::raw_http::silent_after_head_server;
use support::sim::{fast_wait, sample_input, session_with_clip, MASK_TRACK, REMOVE};
use support::{ephemeral_builder, tempdir};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A simulator fast enough to run the whole job many times in one test.
async fn quick_simulator() -> Simulator {
    Simulator::builder()
        .fast()
        .work_duration(Duration::from_millis(20))
        .render_time(Duration::from_millis(150))
        .start()
        .await
        .expect("simulator starts")
}

/// A client of `sim` whose identity lives in `config`: a new client over the same folder is
/// "the same user in a new process".
fn client_of(sim: &Simulator, config: &Path) -> NemoClient {
    ephemeral_builder(sim.base_url())
        .config_dir(config)
        .build()
        .expect("client builds")
}

fn quick_turn() -> TurnOptions {
    TurnOptions::default().reconcile(3, Duration::from_millis(50))
}

/// Options for jobs against the quick simulator. The stream's total limit is also how long
/// a resumed job watches for an edit sent before a crash before sending it again: short
/// here, so a crash right after saving "message sent" resolves in a test's time.
fn job_options() -> JobOptions {
    job_options_with_window(Duration::from_secs(3))
}

fn job_options_with_window(window: Duration) -> JobOptions {
    JobOptions::default()
        .turn(quick_turn().message(MessageOptions::default().total_timeout(window)))
        .wait(fast_wait())
}

// ---------------------------------------------------------------------------------------
// Caller-owned render jobs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn submitting_the_same_render_job_twice_makes_one_render() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    client
        .run_turn_with(&session, REMOVE, &quick_turn())
        .await
        .unwrap();
    let state = client.state(&session).await.unwrap();
    let draft = state.draft().unwrap();

    let job = RenderJob::new(&session);
    let saved = serde_json::to_string(&job).unwrap();
    client
        .submit_render(&job, draft, &RenderOptions::default())
        .await
        .unwrap();
    // After a restart: the same saved job, submitted again by a new client.
    let again = client_of(&sim, config.path());
    let restored: RenderJob = serde_json::from_str(&saved).unwrap();
    again
        .submit_render(&restored, draft, &RenderOptions::default())
        .await
        .expect("a duplicate answer means already submitted");
    let url = again
        .wait_for_render(&restored, &fast_wait())
        .await
        .unwrap();
    assert!(url.is_some());
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 2);
    assert_eq!(sim.render_ids(), vec![job.id.clone()], "one render");
}

#[tokio::test]
async fn export_with_hands_out_the_job_before_it_is_submitted() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    client
        .run_turn_with(&session, REMOVE, &quick_turn())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let handle = sim.handle();
    let record = seen.clone();
    let export = client
        .export_with(
            &session,
            &RenderOptions::default(),
            &fast_wait(),
            move |job| {
                *record.lock().unwrap() =
                    Some((job.clone(), handle.request_count(Endpoint::RenderSubmit)));
            },
        )
        .await
        .unwrap();
    let (job, submits_before) = seen.lock().unwrap().clone().expect("on_job was called");
    assert_eq!(submits_before, 0, "handed out before the request left");
    assert_eq!(job, export.job);
    assert!(export.output_url.is_some());
}

#[tokio::test]
async fn resume_export_submits_a_saved_job_only_if_the_service_never_got_it() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    client
        .run_turn_with(&session, REMOVE, &quick_turn())
        .await
        .unwrap();

    // Saved, then the process died before submitting: resumed by a new client, submitted
    // with the saved id.
    let job = RenderJob::new(&session);
    let resumed = client_of(&sim, config.path())
        .resume_export(&job, &RenderOptions::default(), &fast_wait())
        .await
        .unwrap();
    assert_eq!(resumed.job.id, job.id);
    assert!(resumed.output_url.is_some());
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);

    // Submitted, then the process died: resumed without a second submission.
    let resumed = client_of(&sim, config.path())
        .resume_export(&job, &RenderOptions::default(), &fast_wait())
        .await
        .unwrap();
    assert!(resumed.output_url.is_some());
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);
    assert_eq!(sim.render_ids(), vec![job.id]);
}

#[test]
fn render_ids_differ_across_processes_in_one_millisecond() {
    // Two processes cannot share the in-process counter; the random digits keep them apart.
    let session = nemo_video::Session::from_id("1");
    let ids: std::collections::HashSet<String> = (0..200)
        .map(|_| {
            std::thread::spawn(move || RenderJob::new(&nemo_video::Session::from_id("1")).id)
                .join()
                .unwrap()
        })
        .chain(std::iter::once(RenderJob::new(&session).id))
        .collect();
    assert_eq!(ids.len(), 201);
    for id in &ids {
        let digits = id.strip_prefix("render_").unwrap();
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert_eq!(digits.len(), 19, "milliseconds then six digits: {id}");
    }
}

// ---------------------------------------------------------------------------------------
// Reconcilable turns
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_state_before_a_message_is_handed_out_before_the_message_leaves() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    let handle = sim.handle();
    let saved: Arc<Mutex<Option<(String, usize)>>> = Arc::new(Mutex::new(None));
    let record = saved.clone();
    let options = quick_turn().on_before_send(move |state| {
        *record.lock().unwrap() = Some((
            serde_json::to_string(state).unwrap(),
            handle.request_count(Endpoint::RunSse),
        ));
    });
    let turn = client
        .run_turn_with(&session, REMOVE, &options)
        .await
        .unwrap();
    let (json, sends_before) = saved.lock().unwrap().clone().expect("called");
    assert_eq!(sends_before, 0, "saved before the message left");
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
    assert_eq!(serde_json::to_string(&turn.state_before).unwrap(), json);
    assert!(!turn.state_before.summary().contains(MASK_TRACK));

    // After a "crash": a new client, the saved state, nothing sent.
    let before: SessionState = serde_json::from_str(&json).unwrap();
    let check = client_of(&sim, config.path())
        .reconcile_turn_with(&session, &before, &quick_turn())
        .await
        .unwrap();
    assert!(check.landed(), "the edit landed");
    assert!(
        check.changes.to_string().contains(MASK_TRACK),
        "{}",
        check.changes
    );
    assert_eq!(sim.request_count(Endpoint::RunSse), 1, "nothing re-sent");

    // A state saved after the edit: nothing landed since.
    let check = client
        .reconcile_turn_with(&session, &check.state_after, &quick_turn())
        .await
        .unwrap();
    assert!(!check.landed());
}

/// A service whose `/run_sse` never sends its response head, and whose state is fixed.
async fn service_with_a_silent_run_sse() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/run_sse"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/api/state/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "code": 0, "data": {"state": {"draft": {"t": []}}}
        })))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_run_sse_head_that_never_comes_is_reconciled_not_retried() {
    let server = service_with_a_silent_run_sse().await;
    let client = ephemeral_builder(&server.uri())
        .token("nmv_usr_FIXED")
        .build()
        .unwrap();
    let session = nemo_video::Session::from_id("7301234567890123456");
    let options =
        quick_turn().message(MessageOptions::default().idle_timeout(Duration::from_millis(300)));
    let turn = client
        .run_turn_with(&session, REMOVE, &options)
        .await
        .expect("a turn that may have reached the service is reconciled, not an error");
    let TurnEnd::Disconnected(err) = &turn.end else {
        panic!("{:?}", turn.end);
    };
    assert_eq!(err.retry_policy(), RetryPolicy::Reconcile, "{err}");
    assert!(!err.is_transient());
    assert!(err.is_timeout());
    assert!(matches!(err, Error::Unconfirmed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("not sent again"), "{message}");
    assert!(!message.contains("try again"), "{message}");
    assert!(turn.changes.as_ref().is_some_and(|c| c.is_empty()));
    let sent = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/run_sse")
        .count();
    assert_eq!(sent, 1, "the message was sent once");
}

#[tokio::test]
async fn send_message_errors_after_sending_say_reconcile() {
    let server = service_with_a_silent_run_sse().await;
    let client = ephemeral_builder(&server.uri())
        .token("nmv_usr_FIXED")
        .build()
        .unwrap();
    let session = nemo_video::Session::from_id("7301234567890123456");
    let err = client
        .send_message_with(
            &session,
            REMOVE,
            &MessageOptions::default().idle_timeout(Duration::from_millis(200)),
        )
        .await
        .expect_err("no head");
    assert_eq!(err.retry_policy(), RetryPolicy::Reconcile, "{err}");
    assert!(err.needs_reconcile());
    assert!(!err.never_reached_server());
}

#[tokio::test]
async fn no_limit_durations_do_not_panic() {
    let sim = quick_simulator().await;
    let client = ephemeral_builder(sim.base_url())
        .request_timeout(Duration::MAX)
        .build()
        .unwrap();
    let session = client.create_session(None).await.unwrap();
    client
        .upload_files(&session, &[sample_input()])
        .await
        .unwrap();
    let options = quick_turn().message(
        MessageOptions::default()
            .idle_timeout(Duration::MAX)
            .total_timeout(Duration::MAX)
            .still_working_interval(Duration::MAX),
    );
    let turn = client
        .run_turn_with(&session, REMOVE, &options)
        .await
        .unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{:?}", turn.end);
}

// ---------------------------------------------------------------------------------------
// Bounded error bodies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_error_head_followed_by_silence_ends_within_the_idle_limit() {
    for head in [
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 64",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 64",
    ] {
        let (base, seen) = silent_after_head_server(head).await;
        let dir = tempdir();
        let client = ephemeral_builder(&base)
            .token("nmv_usr_FIXED")
            .request_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let target = dir.path().join("out.mp4");
        // The outer limit only ends a hung test; the idle limit is what ends the call.
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            client.download(&format!("{base}/renders/x.mp4"), &target, |_| {}),
        )
        .await
        .expect("the download must not hang");
        let err = result.unwrap_err();
        assert!(err.is_timeout(), "{head}: {err:?}");
        assert!(!target.exists());
        assert!(seen.load(Ordering::SeqCst) >= 1);

        // The agent's stream too: an error head, then silence.
        let session = nemo_video::Session::from_id("7301234567890123456");
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            client.send_message_with(
                &session,
                REMOVE,
                &MessageOptions::default().idle_timeout(Duration::from_millis(200)),
            ),
        )
        .await
        .expect("the message call must not hang")
        .expect_err("an error");
        assert!(err.is_timeout(), "{head}: {err:?}");
        assert!(err.needs_reconcile(), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// The durable job
// ---------------------------------------------------------------------------------------

fn crash(what: &str) -> Error {
    Error::Io {
        action: "could not save the job to",
        path: "job.json".into(),
        source: std::io::Error::other(what.to_string()),
    }
}

/// Saves the job into `slot` as a file would; the `crash_at`-th save (1-based) ends the run
/// like a killed process: `persist_then_die` keeps that save (died right after saving),
/// otherwise it is lost (died after the request, before its answer was saved).
fn crashing_saver(
    slot: Arc<Mutex<Option<String>>>,
    crash_at: usize,
    persist_then_die: bool,
) -> impl FnMut(&EditJob) -> nemo_video::Result<()> + Send {
    let mut saves = 0;
    move |job| {
        saves += 1;
        if saves == crash_at && !persist_then_die {
            return Err(crash("simulated crash before saving"));
        }
        *slot.lock().unwrap() = Some(serde_json::to_string(job).unwrap());
        if saves == crash_at {
            return Err(crash("simulated crash after saving"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_job_resumed_after_a_crash_at_any_point_pays_once() {
    // A clean run saves this many times (one per stage reached; the last one is "done").
    const SAVES: usize = 8;
    for crash_at in 1..=SAVES {
        for persist_then_die in [true, false] {
            let sim = quick_simulator().await;
            let dir = tempdir();
            let config = dir.path().join("config");
            let output = dir.path().join("out.mp4");
            let slot = Arc::new(Mutex::new(None));
            let mut job = EditJob::new(sample_input(), REMOVE, &output).unwrap();
            let first = job
                .run(
                    &client_of(&sim, &config),
                    &job_options(),
                    crashing_saver(slot.clone(), crash_at, persist_then_die),
                )
                .await;
            let label = format!("crash at save {crash_at} (kept: {persist_then_die})");
            assert!(first.is_err(), "{label}: the run should have died");
            if crash_at < SAVES {
                assert!(!output.exists(), "{label}: no output before the download");
            }

            // A new process: a new client, the job as it was last saved (or a new one).
            let saved = slot.lock().unwrap().clone();
            let mut job = match saved {
                Some(json) => serde_json::from_str::<EditJob>(&json).unwrap(),
                None => EditJob::new(sample_input(), REMOVE, &output).unwrap(),
            };
            let file = JobFile::new(dir.path().join("job.json"));
            let outcome = job
                .run(&client_of(&sim, &config), &job_options(), |job| {
                    file.save(job)
                })
                .await
                .unwrap_or_else(|err| panic!("{label}: {err}"));
            assert_eq!(job.stage, Stage::Done);
            assert_eq!(
                std::fs::read(&output).unwrap(),
                nemo_video::simulator::SAMPLE_OUTPUT_MP4,
                "{label}"
            );
            assert_eq!(
                outcome.bytes,
                nemo_video::simulator::SAMPLE_OUTPUT_MP4.len() as u64
            );
            let counts = (
                sim.session_count(),
                sim.request_count(Endpoint::Upload),
                sim.request_count(Endpoint::RunSse),
                sim.render_ids().len(),
            );
            // A crash between the session request and its save may leave one empty session
            // behind (creating one is free); nothing else is ever done twice.
            let sessions_allowed = if crash_at == 1 && !persist_then_die {
                2
            } else {
                1
            };
            assert!(counts.0 <= sessions_allowed, "{label}: sessions {counts:?}");
            assert_eq!(counts.1, 1, "{label}: uploads {counts:?}");
            assert_eq!(counts.2, 1, "{label}: messages {counts:?}");
            assert_eq!(counts.3, 1, "{label}: renders {counts:?}");
            assert_eq!(outcome.render_job.id, sim.render_ids()[0], "{label}");
        }
    }
}

#[tokio::test]
async fn a_clean_job_saves_at_every_stage_and_its_file_round_trips() {
    let sim = quick_simulator().await;
    let dir = tempdir();
    let config = dir.path().join("config");
    let file = JobFile::new(dir.path().join("jobs/one.json"));
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4"))
        .unwrap()
        .language("en");
    let stages = Arc::new(Mutex::new(Vec::new()));
    let seen = stages.clone();
    let events = Arc::new(AtomicUsize::new(0));
    let counter = events.clone();
    let options = job_options().on_event(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    job.run(&client_of(&sim, &config), &options, |job| {
        seen.lock().unwrap().push(job.stage);
        file.save(job)
    })
    .await
    .unwrap();
    assert_eq!(
        *stages.lock().unwrap(),
        [
            Stage::SessionCreated,
            Stage::UploadSent,
            Stage::Uploaded,
            Stage::MessageSent,
            Stage::Edited,
            Stage::RenderSubmitted,
            Stage::Rendered,
            Stage::Done,
        ]
    );
    assert!(events.load(Ordering::SeqCst) >= 6);
    let reloaded = file.load().unwrap().expect("saved");
    assert_eq!(reloaded.stage, Stage::Done);
    assert!(reloaded.timeline.as_deref().unwrap().contains(MASK_TRACK));
    assert!(reloaded.input_unchanged());
    // Private folder, no temporaries.
    assert_eq!(support::file_names(&dir.path().join("jobs")), ["one.json"]);
    file.remove().unwrap();
    assert!(file.load().unwrap().is_none());
    file.remove().expect("removing twice is fine");
}

#[tokio::test]
async fn a_message_sent_without_a_visible_change_is_not_sent_again_until_a_turn_could_have_ended() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    // Died right after saving "message sent", before the message left: the timeline shows
    // no change.
    let slot = Arc::new(Mutex::new(None));
    let _ = job
        .run(
            &client,
            &job_options(),
            crashing_saver(slot.clone(), 4, true),
        )
        .await;
    let saved: EditJob = serde_json::from_str(&slot.lock().unwrap().clone().unwrap()).unwrap();
    assert_eq!(saved.stage, Stage::MessageSent);

    // Within the window a turn can take, a resumed job watches the timeline and sends
    // nothing (the agent may still be working).
    let mut job = saved.clone();
    let watching = tokio::time::timeout(
        Duration::from_millis(500),
        job.run(
            &client,
            &job_options_with_window(Duration::from_secs(3600)),
            |_| Ok(()),
        ),
    )
    .await;
    assert!(watching.is_err(), "still watching: {watching:?}");
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        0,
        "never re-sent early"
    );

    // Once a turn could no longer be running and nothing changed, it is sent (once).
    let mut job = saved;
    job.message_sent_at = job.message_sent_at.map(|at| at - 7200);
    job.run(
        &client,
        &job_options_with_window(Duration::from_secs(3600)),
        |_| Ok(()),
    )
    .await
    .unwrap();
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
    assert_eq!(job.stage, Stage::Done);
}
