//! Work that survives interruption: caller-owned render jobs, reconcilable turns, a durable
//! edit job resumed by a new client after a crash at any point, bounded error bodies, and
//! errors that never invite a double charge.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nemo_video::auth::StoreFuture;
use nemo_video::job::{
    EditJob, JobFile, JobOptions, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder,
    MemoryJobStore, Stage, StoredJob,
};
use nemo_video::lease::Lease;
use nemo_video::render::{ExportOptions, RenderJob, RenderOptions};
use nemo_video::simulator::{Endpoint, Simulator};
use nemo_video::stream::MessageOptions;
use nemo_video::turn::{TurnEnd, TurnOptions};
use nemo_video::{state::SessionState, Error, NemoClient, RetryPolicy, Session};
use support::mock::finished_export;
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
    // A short request timeout: it is also an upload's stall limit, and so how long a resumed
    // job waits for an upload sent before a crash that could still land.
    ephemeral_builder(sim.base_url())
        .config_dir(config)
        .request_timeout(Duration::from_secs(2))
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
        .reconcile_interval(Duration::from_millis(50))
        .settle(Duration::from_millis(200))
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
    let export = again
        .wait_for_render(&restored, &fast_wait())
        .await
        .unwrap();
    assert!(export.output_url().is_some());
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
    // The job is made (and would be saved) first, then handed to the export.
    let job = RenderJob::new(&session);
    let submits_before = sim.request_count(Endpoint::RenderSubmit);
    let export = client
        .export_with(
            &session,
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait())
                .job(job.clone()),
        )
        .await
        .unwrap();
    assert_eq!(submits_before, 0, "handed out before the request left");
    assert_eq!(&job, export.job());
    assert!(export.output_url().is_some());
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
    let resume = |job: &RenderJob| {
        ExportOptions::default()
            .render(RenderOptions::default())
            .wait(fast_wait())
            .job(job.clone())
    };
    let resumed = client_of(&sim, config.path())
        .export_with(&Session::from_id(job.session_id.clone()), &resume(&job))
        .await
        .unwrap();
    assert_eq!(resumed.job().id, job.id);
    assert!(resumed.output_url().is_some());
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);

    // Submitted, then the process died: resumed without a second submission.
    let resumed = client_of(&sim, config.path())
        .export_with(&Session::from_id(job.session_id.clone()), &resume(&job))
        .await
        .unwrap();
    assert!(resumed.output_url().is_some());
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);
    assert_eq!(sim.render_ids(), vec![job.id]);
}

#[tokio::test]
async fn export_with_a_job_the_service_knows_waits_for_it_without_rendering_again() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    client
        .run_turn_with(&session, REMOVE, &quick_turn())
        .await
        .unwrap();
    // Submitted before (by a run that then died), so the service knows the job.
    let job = RenderJob::new(&session);
    let state = client.state(&session).await.unwrap();
    client
        .submit_render(&job, state.draft().unwrap(), &RenderOptions::default())
        .await
        .unwrap();
    assert_eq!(sim.request_count(Endpoint::RenderSubmit), 1);

    let export = client_of(&sim, config.path())
        .export_with(
            &session,
            &ExportOptions::default().wait(fast_wait()).job(job.clone()),
        )
        .await
        .unwrap();

    assert_eq!(export.job(), &job);
    assert!(export.output_url().is_some());
    assert_eq!(
        sim.request_count(Endpoint::RenderSubmit),
        1,
        "no second submission"
    );
    assert_eq!(sim.render_ids(), vec![job.id.clone()], "one render");
    let counters = sim.counters();
    assert_eq!(counters.sessions[session.id()].renders, 1, "{counters:?}");
    let renders: u64 = counters.clients.values().map(|client| client.renders).sum();
    assert_eq!(renders, 1, "{counters:?}");
}

#[tokio::test]
async fn export_with_a_job_of_another_session_is_refused_before_any_request() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    let other = Session::from_id("7309999999999999999");
    let job = RenderJob::new(&other);
    let before = sim.counters().requests;

    let err = client
        .export_with(
            &session,
            &ExportOptions::default().wait(fast_wait()).job(job.clone()),
        )
        .await
        .unwrap_err();

    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&job.id) && text.contains(other.id()) && text.contains(session.id()),
        "{text}"
    );
    assert_eq!(sim.counters().requests, before, "nothing was sent");
    assert!(sim.render_ids().is_empty());
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
        Ok(())
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
    assert!(!matches!(
        err.retry_policy(),
        nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
    ));
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
    assert!((err.retry_policy() == nemo_video::RetryPolicy::Reconcile));
    assert!(!err.never_reached_server());
}

#[tokio::test]
async fn no_limit_durations_do_not_panic() {
    let sim = quick_simulator().await;
    let client = ephemeral_builder(sim.base_url())
        .request_timeout(Duration::MAX)
        .build()
        .unwrap();
    let session = client.create_session().await.unwrap();
    client.upload(&session, &[sample_input()]).await.unwrap();
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
        // Its output on the same server, which also answers the API's download endpoint
        // (the fallback) with the same head and silence.
        let export = finished_export(
            "render_1",
            "7301234567890123456",
            Some(&format!("{base}/renders/x.mp4")),
        )
        .await;
        // The outer limit only ends a hung test; the idle limit is what ends the call.
        let result =
            tokio::time::timeout(Duration::from_secs(60), client.download(&export, &target))
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
        assert!(
            (err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// On-before-send
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_failed_save_before_sending_stops_the_message() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    let options = quick_turn().on_before_send(|_| Err(crash("disk full")));
    let err = client
        .run_turn_with(&session, REMOVE, &options)
        .await
        .expect_err("the save failed");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(sim.request_count(Endpoint::RunSse), 0, "nothing was sent");
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

/// A job store that dies like a killed process at its `crash_at`-th save (1-based):
/// `persist_then_die` keeps that save (died right after saving), otherwise it is lost (died
/// after the request, before its answer was saved).
struct CrashingStore {
    inner: MemoryJobStore,
    saves: AtomicUsize,
    crash_at: usize,
    persist_then_die: bool,
    stages: Mutex<Vec<Stage>>,
}

impl CrashingStore {
    fn new(crash_at: usize, persist_then_die: bool) -> CrashingStore {
        CrashingStore {
            inner: MemoryJobStore::new(),
            saves: AtomicUsize::new(0),
            crash_at,
            persist_then_die,
            stages: Mutex::new(Vec::new()),
        }
    }

    fn never() -> CrashingStore {
        CrashingStore::new(usize::MAX, false)
    }

    fn stages(&self) -> Vec<Stage> {
        self.stages.lock().unwrap().clone()
    }
}

impl JobStore for CrashingStore {
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>> {
        self.inner.load(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome> {
        Box::pin(async move {
            let save = self.saves.fetch_add(1, Ordering::SeqCst) + 1;
            if save == self.crash_at && !self.persist_then_die {
                return Err(crash("simulated crash before saving"));
            }
            let outcome = self.inner.save(id, job, expected_version).await?;
            self.stages.lock().unwrap().push(job.stage);
            if save == self.crash_at {
                return Err(crash("simulated crash after saving"));
            }
            Ok(outcome)
        })
    }
    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.inner.remove(id)
    }
    fn job_ids(&self) -> StoreFuture<'_, Vec<String>> {
        self.inner.job_ids()
    }
    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt> {
        self.inner.try_lease(id, ttl, holder)
    }
    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        self.inner.renew_lease(lease)
    }
    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.inner.release_lease(lease)
    }
    fn lease_holder<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>> {
        self.inner.lease_holder(id)
    }
}

/// What the simulator did over a test: sessions, upload requests, clips on the first
/// session, messages, render ids.
fn counts(sim: &Simulator) -> (usize, usize, usize, usize, usize) {
    let sessions = sim.session_ids();
    let clips = sessions
        .iter()
        .map(|s| sim.media(s).len())
        .max()
        .unwrap_or(0);
    (
        sim.session_count(),
        sim.request_count(Endpoint::Upload),
        clips,
        sim.request_count(Endpoint::RunSse),
        sim.render_ids().len(),
    )
}

#[tokio::test]
async fn a_job_resumed_after_a_crash_at_any_point_pays_once() {
    // A clean run saves this many times: the new record, then one per stage reached, and
    // once more when the agent's stream opens; the last one is "done".
    const SAVES: usize = 10;
    for crash_at in 1..=SAVES {
        for persist_then_die in [true, false] {
            let sim = quick_simulator().await;
            let dir = tempdir();
            let config = dir.path().join("config");
            let output = dir.path().join("out.mp4");
            let store = CrashingStore::new(crash_at, persist_then_die);
            let mut job = EditJob::new(sample_input(), REMOVE, &output).unwrap();
            let first = job
                .run(&client_of(&sim, &config), &store, &job_options())
                .await;
            let label = format!("crash at save {crash_at} (kept: {persist_then_die})");
            assert!(first.is_err(), "{label}: the run should have died");
            if crash_at < SAVES {
                assert!(!output.exists(), "{label}: no output before the download");
            }

            // A new process: a new client, the job as it was last saved (or a new one).
            let saved = store.inner.load(&job.id).await.unwrap();
            let mut job = match saved {
                Some(saved) => saved.job,
                None => EditJob::new(sample_input(), REMOVE, &output).unwrap(),
            };
            let outcome = job
                .run(&client_of(&sim, &config), &store.inner, &job_options())
                .await
                .unwrap_or_else(|err| panic!("{label}: {err}"));
            assert_eq!(job.stage, Stage::Done);
            assert_eq!(
                std::fs::read(&output).unwrap(),
                nemo_video::simulator::SAMPLE_OUTPUT_MP4,
                "{label}"
            );
            assert_eq!(
                support::file_names(dir.path()),
                ["config", "out.mp4"],
                "{label}: only the result"
            );
            let (sessions, _, clips, messages, renders) = counts(&sim);
            // A crash between the session request and its save may leave one empty session
            // behind (creating one is free); nothing else is ever done twice.
            let sessions_allowed = if crash_at <= 2 && !persist_then_die {
                2
            } else {
                1
            };
            assert!(sessions <= sessions_allowed, "{label}: sessions {sessions}");
            assert_eq!(clips, 1, "{label}: clips on the session");
            assert_eq!(messages, 1, "{label}: messages");
            assert_eq!(renders, 1, "{label}: renders");
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
    let events = Arc::new(AtomicUsize::new(0));
    let counter = events.clone();
    let options = job_options().on_event(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let store = CrashingStore::never();
    job.run(&client_of(&sim, &config), &store, &options)
        .await
        .unwrap();
    assert_eq!(
        store.stages(),
        [
            Stage::New,
            Stage::SessionCreated,
            Stage::UploadSent,
            Stage::Uploaded,
            Stage::MessageSent,
            Stage::MessageSent,
            Stage::Edited,
            Stage::RenderSubmitted,
            Stage::Rendered,
            Stage::Done,
        ]
    );
    assert!(events.load(Ordering::SeqCst) >= 6);

    // The same job through a file.
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out2.mp4")).unwrap();
    job.run(&client_of(&sim, &config), &file, &job_options())
        .await
        .unwrap();
    let reloaded = file.read().unwrap().expect("saved");
    assert_eq!(reloaded.job.stage, Stage::Done);
    assert_eq!(reloaded.version, 10);
    assert_eq!(reloaded.job.version(), Some(10));
    assert!(reloaded
        .job
        .timeline
        .as_deref()
        .unwrap()
        .contains(MASK_TRACK));
    assert!(reloaded.job.input_unchanged());
    // Private folder, no temporaries, no lock left behind.
    assert_eq!(support::file_names(&dir.path().join("jobs")), ["one.json"]);
    file.delete().unwrap();
    assert!(file.read().unwrap().is_none());
    file.delete().expect("removing twice is fine");
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
    let store = CrashingStore::new(5, true);
    let _ = job.run(&client, &store, &job_options()).await;
    let saved = store.inner.load(&job.id).await.unwrap().unwrap().job;
    assert_eq!(saved.stage, Stage::MessageSent);

    // Within the window a turn can take, a resumed job watches the timeline and sends
    // nothing (the agent may still be working).
    let mut job = saved.clone();
    // A short lease: the watching run is dropped (as a killed process would stop), and its
    // lease lapses by itself.
    let options = job_options_with_window(Duration::from_secs(3600))
        .lease_ttl(Duration::from_millis(300))
        .wait_if_running(Duration::from_secs(30));
    let watching = tokio::time::timeout(
        Duration::from_millis(500),
        job.run(&client, &store.inner, &options),
    )
    .await;
    assert!(watching.is_err(), "still watching: {watching:?}");
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        0,
        "never re-sent early"
    );

    // Once a turn could no longer be running and nothing changed, it is sent (once).
    let mut stored = store.inner.load(&saved.id).await.unwrap().unwrap();
    let message = stored.job.message.as_mut().unwrap();
    message.sent_at_ms -= 7_200_000;
    let mut job = stored.job;
    job.run(&client, &store.inner, &options).await.unwrap();
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
    assert_eq!(job.stage, Stage::Done);
}

#[tokio::test]
async fn an_error_head_on_the_message_fails_at_once_and_the_next_run_sends_it_once_more() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = MemoryJobStore::new();
    sim.fail_next(
        Endpoint::RunSse,
        1,
        nemo_video::simulator::Failure::PlainText {
            status: 502,
            body: "Bad Gateway".into(),
        },
    );
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    // A window of an hour: a job that watched for this refused message would hang here.
    let options = job_options_with_window(Duration::from_secs(3600));
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), job.run(&client, &store, &options))
        .await
        .expect("a refused message fails at once, it is not watched")
        .expect_err("502");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(err.http_status(), Some(502), "{err:?}");
    assert!(
        !(err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "{err}"
    );
    assert_eq!(job.stage, Stage::Uploaded, "back to before the message");
    assert!(job.message.is_none());
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);

    let mut job = store.load(&job.id).await.unwrap().unwrap().job;
    job.run(&client, &store, &options).await.unwrap();
    assert_eq!(sim.request_count(Endpoint::RunSse), 2, "sent once more");
    let (sessions, uploads, clips, _, renders) = counts(&sim);
    assert_eq!((sessions, uploads, clips, renders), (1, 1, 1, 1));
}

#[tokio::test]
async fn a_gateway_timeout_on_the_message_is_reconciled_not_refused() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let session = session_with_clip(&client).await;
    sim.fail_next(
        Endpoint::RunSse,
        1,
        nemo_video::simulator::Failure::Status(504),
    );
    let err = client
        .send_message(&session, REMOVE)
        .await
        .expect_err("504");
    assert!(
        (err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "{err}"
    );
    sim.fail_next(
        Endpoint::RunSse,
        1,
        nemo_video::simulator::Failure::Status(503),
    );
    let err = client
        .send_message(&session, REMOVE)
        .await
        .expect_err("503");
    assert!(
        !(err.retry_policy() == nemo_video::RetryPolicy::Reconcile),
        "{err}"
    );
    assert_eq!(err.http_status(), Some(503));
}

#[tokio::test]
async fn an_agent_error_after_the_edit_landed_never_sends_the_message_again() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = MemoryJobStore::new();
    // The agent's tools ran (the edit is applied and charged), then it reports an error.
    sim.fail_next_stream_after(2, "model overloaded");
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    let outcome = job.run(&client, &store, &job_options()).await.unwrap();
    assert!(
        job.answer.as_deref().unwrap().contains(MASK_TRACK),
        "{:?}",
        job.answer
    );
    assert!(outcome.bytes > 0);
    // Any number of reruns of the saved job send nothing more.
    for _ in 0..3 {
        let mut again = store.load(&job.id).await.unwrap().unwrap().job;
        again.run(&client, &store, &job_options()).await.unwrap();
    }
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn an_agent_error_that_changed_nothing_is_kept_and_sent_again_only_when_asked() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = MemoryJobStore::new();
    // A turn that edits nothing (a chat reply), failing before its first event.
    sim.fail_next_stream_after(0, "model overloaded");
    let mut job = EditJob::new(sample_input(), "hello there", dir.path().join("out.mp4")).unwrap();
    let err = job.run(&client, &store, &job_options()).await.unwrap_err();
    let Error::EditNotApplied { agent_error } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(agent_error.as_deref(), Some("model overloaded"));
    assert_eq!(job.stage, Stage::MessageSent, "never rolled back");
    for _ in 0..2 {
        let mut again = store.load(&job.id).await.unwrap().unwrap().job;
        let err = again
            .run(&client, &store, &job_options())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::EditNotApplied { .. }), "{err:?}");
    }
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        1,
        "not sent again by itself"
    );

    let mut again = store.load(&job.id).await.unwrap().unwrap().job;
    again.send_again().unwrap();
    again.run(&client, &store, &job_options()).await.unwrap();
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        2,
        "sent once more, as asked"
    );
}

#[tokio::test]
async fn a_question_is_kept_and_a_resume_never_sends_the_prompt_again() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = MemoryJobStore::new();
    let vague = "can you make it better?";
    let mut job = EditJob::new(sample_input(), vague, dir.path().join("out.mp4")).unwrap();
    let err = job.run(&client, &store, &job_options()).await.unwrap_err();
    let Error::NeedsAnswer { question } = &err else {
        panic!("{err:?}");
    };
    assert!(question.contains("Which object"), "{question}");
    assert_eq!(job.stage, Stage::AwaitingAnswer);
    assert_eq!(job.question(), Some(question.as_str()));
    assert!(job.waits_for_a_person());
    assert!(
        nemo_video::job::resumable_jobs(&store, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty(),
        "a worker does not pick up a job that waits for a person"
    );

    // Resumed without an answer: the question again, nothing sent.
    for _ in 0..2 {
        let mut again = store.load(&job.id).await.unwrap().unwrap().job;
        let err = again
            .run(&client, &store, &job_options())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NeedsAnswer { .. }), "{err:?}");
    }
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        1,
        "the prompt was not sent again"
    );

    // Answered: the answer is the next message, and the job finishes.
    let mut again = store.load(&job.id).await.unwrap().unwrap().job;
    again.answer_question(REMOVE).unwrap();
    again.run(&client, &store, &job_options()).await.unwrap();
    assert_eq!(sim.request_count(Endpoint::RunSse), 2);
    let messages: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::RunSse))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(messages.len(), 2);
    assert!(again.timeline.as_deref().unwrap().contains(MASK_TRACK));
    assert!(
        again.answer_question("more").is_err(),
        "nothing left to answer"
    );
}

#[tokio::test]
async fn the_same_job_run_twice_at_once_runs_once() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let dir = tempdir();
    let file = JobFile::new(dir.path().join("jobs/job.json"));
    let job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    let (mut first, mut second) = (job.clone(), job);
    let (a, b) = (
        client_of(&sim, config.path()),
        client_of(&sim, config.path()),
    );
    let options = job_options();
    let (one, two) = tokio::join!(
        first.run(&a, &file, &options),
        second.run(&b, &file, &options)
    );
    let (done, refused) = match (one, two) {
        (Ok(done), Err(refused)) | (Err(refused), Ok(done)) => (done, refused),
        other => panic!("one run, one refusal: {other:?}"),
    };
    assert!(done.bytes > 0);
    let Error::JobRunningElsewhere { holder, .. } = &refused else {
        panic!("{refused:?}");
    };
    let holder = holder.as_deref().unwrap();
    assert!(
        holder.contains(&format!("pid {}", std::process::id())),
        "{holder}"
    );
    assert!(
        refused.to_string().contains("nothing was sent"),
        "{refused}"
    );
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
}

/// What a save killed between its write and its rename (kill -9, a power cut) leaves beside
/// the job file: its temporary file, `.<name>.tmp`, with a torn job in it.
fn leave_a_killed_save(file: &JobFile) -> std::path::PathBuf {
    let name = file.path().file_name().unwrap().to_string_lossy();
    let temp = file.path().with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, br#"{"version": 3, "job": {"id": "#).unwrap();
    temp
}

#[tokio::test]
async fn what_a_killed_save_left_is_gone_after_the_next_save_or_the_delete() {
    let dir = tempdir();
    let jobs = dir.path().join("jobs");
    let file = JobFile::new(jobs.join("job.json"));
    let job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    assert!(matches!(
        file.save(&job.id, &job, None).await.unwrap(),
        JobSaveOutcome::Saved { version: 1 }
    ));

    // The next save, under the momentary lock, replaces it: the saved job is whole.
    leave_a_killed_save(&file);
    assert_eq!(support::file_names(&jobs), [".job.json.tmp", "job.json"]);
    assert!(matches!(
        file.save(&job.id, &job, Some(1)).await.unwrap(),
        JobSaveOutcome::Saved { version: 2 }
    ));
    assert_eq!(support::file_names(&jobs), ["job.json"]);
    assert_eq!(file.read().unwrap().unwrap().version, 2);

    // The same under a lease.
    let holder = LeaseHolder::this_process();
    let LeaseAttempt::Granted(lease) = file
        .try_lease(&job.id, Duration::from_secs(60), &holder)
        .await
        .unwrap()
    else {
        panic!("the lease is free");
    };
    leave_a_killed_save(&file);
    assert!(matches!(
        file.save(&job.id, &job, Some(2)).await.unwrap(),
        JobSaveOutcome::Saved { version: 3 }
    ));
    assert_eq!(support::file_names(&jobs), ["job.json", "job.json.lock"]);

    // While another instance holds the lease, deleting leaves the holder's temporary file
    // to the holder: it may be writing it.
    let other = JobFile::new(jobs.join("job.json"));
    let temp = leave_a_killed_save(&file);
    other.delete().unwrap();
    assert_eq!(
        support::file_names(&jobs),
        [".job.json.tmp", "job.json.lock"]
    );
    // The holder's delete removes it.
    file.delete().unwrap();
    assert_eq!(support::file_names(&jobs), ["job.json.lock"]);
    file.release_lease(lease).await.unwrap();

    // With nobody holding the lease, a delete removes it too, and leaves no lock file.
    std::fs::write(&temp, b"torn").unwrap();
    other.delete().unwrap();
    assert!(support::file_names(&jobs).is_empty());
}

#[tokio::test]
async fn a_second_run_can_wait_for_the_first_and_reports_it_done() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let dir = tempdir();
    let store = MemoryJobStore::new();
    let job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    let (mut first, mut second) = (job.clone(), job);
    let client = client_of(&sim, config.path());
    let waiting = job_options().wait_if_running(Duration::from_secs(60));
    let plain = job_options();
    let (one, two) = tokio::join!(first.run(&client, &store, &plain), async {
        // Starts once the first holds the lease.
        while store.lease_holder(&second.id).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        second.run(&client, &store, &waiting).await
    });
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(one.render_job.id, two.render_job.id);
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_quoted_file_name_is_found_again_on_resume() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let clip = dir.path().join("take \"2\".mp4");
    std::fs::copy(sample_input(), &clip).unwrap();
    // Died after the upload landed, before its answer was saved (the 4th save: "uploaded").
    let store = CrashingStore::new(4, false);
    let mut job = EditJob::new(&clip, REMOVE, dir.path().join("out.mp4")).unwrap();
    assert!(job.run(&client, &store, &job_options()).await.is_err());
    assert_eq!(sim.request_count(Endpoint::Upload), 1);
    let mut job = store.inner.load(&job.id).await.unwrap().unwrap().job;
    assert_eq!(job.stage, Stage::UploadSent);
    assert_eq!(job.upload.as_ref().unwrap().name, "take %222%22.mp4");
    job.run(&client, &store.inner, &job_options())
        .await
        .unwrap();
    assert_eq!(sim.request_count(Endpoint::Upload), 1, "not uploaded again");
    let (_, _, clips, messages, _) = counts(&sim);
    assert_eq!((clips, messages), (1, 1));
}

#[tokio::test]
async fn a_done_job_whose_output_is_gone_downloads_it_again() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = MemoryJobStore::new();
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    job.run(&client, &store, &job_options()).await.unwrap();
    // Resumed on another machine: its output is not there.
    let mut elsewhere = store.load(&job.id).await.unwrap().unwrap().job;
    elsewhere.output = dir.path().join("elsewhere").join("out.mp4");
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    let outcome = elsewhere
        .run(&client, &store, &job_options())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&outcome.output).unwrap(),
        nemo_video::simulator::SAMPLE_OUTPUT_MP4
    );
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(
        sim.request_count(Endpoint::CdnOutput),
        2,
        "downloaded again"
    );
}

#[tokio::test]
async fn a_job_moves_to_another_machine_by_its_content_and_keeps_its_identity() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = CrashingStore::new(2, true);
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    assert!(job.run(&client, &store, &job_options()).await.is_err());
    let saved = store.inner.load(&job.id).await.unwrap().unwrap().job;
    assert_eq!(saved.stage, Stage::SessionCreated);
    let identity = saved.identity.clone().unwrap();
    assert_eq!(identity.origin, sim.base_url());
    assert_eq!(identity.client_id, client.client_id().await.unwrap());

    // The other machine has the clip elsewhere, under another name.
    let copy = dir.path().join("copy-of-the-clip.mp4");
    std::fs::copy(sample_input(), &copy).unwrap();
    let other = dir.path().join("other.mp4");
    std::fs::write(&other, b"not the clip").unwrap();
    assert!(saved.clone().with_input_at(&other).is_err(), "another file");
    let moved = saved.clone().with_input_at(&copy).unwrap();
    assert_eq!(moved.input, copy);

    // Another identity may not run it: the session is not theirs.
    // (Its config directory lives as long as the client: a `tempdir()` dropped at the end of
    // the statement would leave the client's credentials in a directory nobody removes.)
    let stranger_config = tempdir();
    let stranger = ephemeral_builder(sim.base_url())
        .config_dir(stranger_config.path())
        .build()
        .unwrap();
    let mut wrong = moved.clone();
    let err = wrong
        .run(&stranger, &store.inner, &job_options())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to"), "{err}");

    let mut moved = moved;
    moved
        .run(&client, &store.inner, &job_options())
        .await
        .unwrap();
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn resumable_jobs_lists_what_nobody_runs() {
    let sim = quick_simulator().await;
    let config = tempdir();
    let client = client_of(&sim, config.path());
    let dir = tempdir();
    let store = Arc::new(CrashingStore::new(6, true));
    let mut job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();
    assert!(job
        .run(&client, store.as_ref(), &job_options())
        .await
        .is_err());
    let resumable = nemo_video::job::resumable_jobs(&store.inner, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resumable.len(), 1);
    assert_eq!(resumable[0].job.id, job.id);

    // Two workers race for it: one runs it, the other is told it runs elsewhere.
    let (mut a, mut b) = (resumable[0].job.clone(), resumable[0].job.clone());
    let options = job_options();
    let (one, two) = tokio::join!(
        a.run(&client, &store.inner, &options),
        b.run(&client, &store.inner, &options)
    );
    assert!(
        matches!(
            (&one, &two),
            (Ok(_), Err(Error::JobRunningElsewhere { .. }))
                | (Err(Error::JobRunningElsewhere { .. }), Ok(_))
        ),
        "{one:?} {two:?}"
    );
    let (sessions, uploads, clips, messages, renders) = counts(&sim);
    assert_eq!(
        (sessions, uploads, clips, messages, renders),
        (1, 1, 1, 1, 1)
    );
    assert!(
        nemo_video::job::resumable_jobs(&store.inner, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty(),
        "done jobs are not listed"
    );
}

/// Answers the session state in steps: `steps[i]` for the i-th read, the last one after.
struct StateSteps {
    reads: AtomicUsize,
    steps: Vec<serde_json::Value>,
}

impl wiremock::Respond for StateSteps {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let read = self.reads.fetch_add(1, Ordering::SeqCst);
        let draft = &self.steps[read.min(self.steps.len() - 1)];
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "code": 0, "data": {"state": {"draft": draft}}
        }))
    }
}

fn draft_with_tracks(names: &[&str]) -> serde_json::Value {
    let tracks: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            serde_json::json!({"id": format!("t{i}"), "tt": 0, "m": {"name": name},
                "sg": [{"id": format!("s{i}"), "st": 0, "d": 5000, "m": {"name": name}}]})
        })
        .collect();
    serde_json::json!({"t": tracks})
}

/// A job that sent its message before a crash, whose stream never confirmed anything, on a
/// service at `base`.
fn job_at_message_sent(base: &str, dir: &Path) -> EditJob {
    let job = EditJob::new(sample_input(), REMOVE, dir.join("out.mp4")).unwrap();
    let mut value = serde_json::to_value(&job).unwrap();
    let before = serde_json::json!({"state": {"draft": draft_with_tracks(&["clip"])}});
    value["stage"] = "message_sent".into();
    value["identity"] = serde_json::json!({"origin": base, "client_id": null});
    value["session"] =
        serde_json::to_value(nemo_video::Session::from_id("7301234567890123456")).unwrap();
    value["message"] = serde_json::json!({
        "text": REMOVE,
        "sent_at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        "state_before": before,
        "answered": true,
    });
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_resumed_edit_counts_as_landed_only_once_the_timeline_settles() {
    let server = MockServer::start().await;
    // The turn applies its edit in two steps: a first change (the mask), then a second
    // (the fill) a few reads later, then nothing more.
    Mock::given(method("GET"))
        .and(path_regex("^/api/state/"))
        .respond_with(StateSteps {
            reads: AtomicUsize::new(0),
            steps: vec![
                draft_with_tracks(&["clip", "mask"]),
                draft_with_tracks(&["clip", "mask"]),
                draft_with_tracks(&["clip", "mask"]),
                draft_with_tracks(&["clip", "mask", "fill"]),
            ],
        })
        .mount(&server)
        .await;
    let client = ephemeral_builder(&server.uri())
        .token("nmv_usr_FIXED")
        .build()
        .unwrap();
    let dir = tempdir();
    let store = MemoryJobStore::new();
    let mut job = job_at_message_sent(&server.uri(), dir.path());
    // Renders are not served here: the run stops at the render, after the edit is settled.
    let options = job_options()
        .reconcile_interval(Duration::from_millis(20))
        .settle(Duration::from_secs(2));
    let err = job.run(&client, &store, &options).await.unwrap_err();
    assert!(
        err.http_status().is_some(),
        "stopped at the render: {err:?}"
    );
    let saved = store.load(&job.id).await.unwrap().unwrap().job;
    assert_eq!(saved.stage, Stage::RenderSubmitted);
    let answer = saved.answer.unwrap();
    assert!(
        answer.contains("fill"),
        "the whole edit, not its first step: {answer}"
    );
    assert!(saved.timeline.unwrap().contains("fill"));
    let sent = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/run_sse")
        .count();
    assert_eq!(sent, 0, "nothing sent again");
}
