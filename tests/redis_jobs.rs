//! Jobs in Redis for a fleet of workers, against a real `redis-server` on loopback: the
//! store's contract (compare-and-set saves, leases that name their holder and lapse by
//! themselves, the list of jobs), and workers in processes of their own: one killed with
//! SIGKILL mid-job, whose job the survivor finishes once its lease lapses, paying for nothing
//! twice; and two workers resuming one job at once, of which one runs it.
#![cfg(all(unix, feature = "redis"))]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemo_video::auth::RedisStore;
use nemo_video::job::{
    resumable_jobs, EditJob, JobOptions, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder,
    RedisJobStore, Stage,
};
use nemo_video::simulator::{Endpoint, Simulator, SAMPLE_OUTPUT_MP4};
use nemo_video::turn::TurnOptions;
use nemo_video::{Error, NemoClient};
use support::redis::RedisServer;
use support::sim::{fast_wait, sample_input, REMOVE};
use support::{eventually, file_names, tempdir};

/// Time to live of the workers' leases: how long a dead worker's job waits.
const LEASE_TTL: Duration = Duration::from_secs(2);

fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn the_redis_job_store_keeps_its_contract() {
    let Some(redis) = RedisServer::for_test("the_redis_job_store_keeps_its_contract") else {
        return;
    };
    let store = RedisJobStore::with_prefix(&redis.url(), &prefix()).unwrap();
    let dir = tempdir();
    let job = EditJob::new(sample_input(), REMOVE, dir.path().join("out.mp4")).unwrap();

    // Compare-and-set saves.
    let JobSaveOutcome::Saved { version } = store.save(&job.id, &job, None).await.unwrap() else {
        panic!("the first save");
    };
    assert_eq!(version, 1);
    let JobSaveOutcome::Conflict { current } = store.save(&job.id, &job, None).await.unwrap()
    else {
        panic!("a second first save conflicts");
    };
    assert_eq!(current.unwrap().version, 1);
    let mut moved = job.clone();
    moved.stage = Stage::SessionCreated;
    assert!(matches!(
        store.save(&job.id, &moved, Some(1)).await.unwrap(),
        JobSaveOutcome::Saved { version: 2 }
    ));
    assert!(matches!(
        store.save(&job.id, &job, Some(1)).await.unwrap(),
        JobSaveOutcome::Conflict { .. }
    ));
    let loaded = store.load(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (loaded.version, loaded.job.stage),
        (2, Stage::SessionCreated)
    );
    assert_eq!(loaded.job.version(), Some(2));
    assert_eq!(store.job_ids().await.unwrap(), vec![job.id.clone()]);

    // Leases: one holder, named; renewed and released only by it; lapsing by themselves.
    let me = LeaseHolder::this_process();
    let LeaseAttempt::Granted(lease) = store.try_lease(&job.id, LEASE_TTL, &me).await.unwrap()
    else {
        panic!("a free lease");
    };
    let other = LeaseHolder::this_process();
    let LeaseAttempt::Held(Some(holder)) =
        store.try_lease(&job.id, LEASE_TTL, &other).await.unwrap()
    else {
        panic!("held, by someone named");
    };
    assert_eq!(holder, me);
    assert_eq!(store.lease_holder(&job.id).await.unwrap(), Some(me.clone()));
    assert!(resumable_jobs(&store, Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());
    assert!(store.renew_lease(&lease).await.unwrap());
    store.release_lease(lease).await.unwrap();
    assert_eq!(store.lease_holder(&job.id).await.unwrap(), None);
    assert_eq!(
        resumable_jobs(&store, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        1
    );

    let LeaseAttempt::Granted(short) = store
        .try_lease(&job.id, Duration::from_millis(100), &me)
        .await
        .unwrap()
    else {
        panic!("free again");
    };
    let redis_url = redis.url();
    let _ = redis_url;
    assert!(
        eventually(Duration::from_secs(30), || redis
            .command(&format!("EXISTS {}", short.key()))
            == ":0")
        .await,
        "a lease lapses by itself"
    );
    assert!(!store.renew_lease(&short).await.unwrap(), "lapsed");
    let LeaseAttempt::Granted(newer) = store.try_lease(&job.id, LEASE_TTL, &other).await.unwrap()
    else {
        panic!("taken over");
    };
    // The lapsed holder cannot release the newer holder's lease.
    store.release_lease(short).await.unwrap();
    assert_eq!(store.lease_holder(&job.id).await.unwrap(), Some(other));
    store.release_lease(newer).await.unwrap();

    store.remove(&job.id).await.unwrap();
    assert!(store.load(&job.id).await.unwrap().is_none());
    assert!(store.job_ids().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Workers in processes of their own
// ---------------------------------------------------------------------------------------

const WORKER_ENV: &str = "NEMO_TEST_JOB_WORKER";

/// Not a test of its own: the fleet tests below run this test binary again, once per
/// worker, with only this (ignored) test selected. A worker waits for its go file, then runs
/// whatever job of the store nobody runs, until its stop file appears. It prints `DONE <id>`
/// for each job it finished.
#[test]
#[ignore = "runs only as a worker process of the fleet tests"]
fn worker_process() {
    let Some(dir) = std::env::var_os(WORKER_ENV) else {
        eprintln!("run by the fleet tests with {WORKER_ENV} set; nothing to do");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let var = |name: &str| std::env::var(name).expect(name);
    let (redis, prefix, api) = (var("REDIS_URL"), var("PREFIX"), var("NEMO_API_BASE"));
    let started = Instant::now();
    while !dir.join("go").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no go signal");
        std::thread::sleep(Duration::from_millis(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let identities = Arc::new(RedisStore::with_prefix(&redis, &prefix).unwrap());
        let client = NemoClient::builder()
            .base_url(api)
            .credential_store(identities)
            .client_id("fleet-worker")
            .request_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let store = RedisJobStore::with_prefix(&redis, &prefix).unwrap();
        let options = JobOptions::default()
            .lease_ttl(LEASE_TTL)
            .reconcile_interval(Duration::from_millis(100))
            .settle(Duration::from_millis(300))
            .wait(fast_wait())
            .turn(TurnOptions::default().reconcile(2, Duration::from_millis(50)));
        while !dir.join("stop").exists() {
            for stored in resumable_jobs(&store, Duration::from_secs(5))
                .await
                .unwrap()
            {
                let mut job = stored.job;
                match job.run(&client, &store, &options).await {
                    Ok(_) => println!("DONE {}", job.id),
                    Err(Error::JobRunningElsewhere { .. }) => println!("BUSY {}", job.id),
                    Err(err) => println!("FAILED {}: {err}", job.id),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

fn start_workers(
    n: usize,
    dir: &Path,
    redis: &RedisServer,
    prefix: &str,
    sim: &Simulator,
) -> Vec<Child> {
    (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "worker_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WORKER_ENV, dir)
                .env("REDIS_URL", redis.url())
                .env("PREFIX", prefix)
                .env("NEMO_API_BASE", sim.base_url())
                .env_remove("NEMO_TOKEN")
                .env_remove("NEMO_CLIENT_ID")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a worker starts")
        })
        .collect()
}

/// Stops the workers (their stop file) and returns what each printed; each must exit well.
async fn stop_workers(dir: &Path, workers: Vec<Child>) -> Vec<String> {
    std::fs::write(dir.join("stop"), b"stop").unwrap();
    tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().unwrap();
                let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
                assert!(
                    output.status.success(),
                    "a worker failed:\n{stdout}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                stdout
            })
            .collect()
    })
    .await
    .unwrap()
}

/// A simulator whose agent turn lasts long enough to kill a worker in it.
async fn slow_simulator() -> Simulator {
    Simulator::builder()
        .fast()
        .work_duration(Duration::from_millis(1500))
        .render_time(Duration::from_millis(500))
        .start()
        .await
        .expect("simulator starts")
}

/// A job for the fleet, saved in the store before any worker runs.
async fn queued_job(store: &RedisJobStore, out: &Path) -> EditJob {
    let job = EditJob::new(sample_input(), REMOVE, out.join("edited.mp4")).unwrap();
    assert!(matches!(
        store.save(&job.id, &job, None).await.unwrap(),
        JobSaveOutcome::Saved { .. }
    ));
    job
}

fn assert_paid_once(sim: &Simulator, out: &Path) {
    let sessions = sim.session_ids();
    assert_eq!(sessions.len(), 1, "sessions");
    assert_eq!(sim.media(&sessions[0]).len(), 1, "clips on the session");
    assert_eq!(sim.request_count(Endpoint::Upload), 1, "uploads");
    assert_eq!(sim.request_count(Endpoint::RunSse), 1, "messages");
    assert_eq!(sim.render_ids().len(), 1, "render ids");
    assert_eq!(file_names(out), ["edited.mp4"], "only the result");
    assert_eq!(
        std::fs::read(out.join("edited.mp4")).unwrap(),
        SAMPLE_OUTPUT_MP4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_finished_by_the_other_paying_once() {
    let Some(redis) =
        RedisServer::for_test("a_worker_killed_mid_job_is_finished_by_the_other_paying_once")
    else {
        return;
    };
    let sim = slow_simulator().await;
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let prefix = prefix();
    let store = RedisJobStore::with_prefix(&redis.url(), &prefix).unwrap();
    let job = queued_job(&store, &out).await;
    let workers = start_workers(2, dir.path(), &redis, &prefix, &sim);
    std::fs::write(dir.path().join("go"), b"go").unwrap();

    // Mid-job: the agent's turn is running.
    let handle = sim.handle();
    assert!(
        eventually(Duration::from_secs(120), || handle
            .request_count(Endpoint::RunSse)
            >= 1)
        .await,
        "no worker got to the turn"
    );
    let holder = store
        .lease_holder(&job.id)
        .await
        .unwrap()
        .expect("a worker holds the job");
    let (mut victim, survivor): (Vec<Child>, Vec<Child>) =
        workers.into_iter().partition(|w| w.id() == holder.pid);
    assert_eq!(
        victim.len(),
        1,
        "the holder is one of the workers: {holder}"
    );
    let mut victim = victim.remove(0);
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();

    let mut done = false;
    while killed.elapsed() < Duration::from_secs(120) {
        let stage = store.load(&job.id).await.unwrap().unwrap().job.stage;
        if stage == Stage::Done {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    assert!(done, "the survivor never finished the job");
    // The lease's time to live, then a turn to settle, a render and a download.
    assert!(
        took < LEASE_TTL + Duration::from_secs(20),
        "finished {took:?} after the kill"
    );
    let printed = stop_workers(dir.path(), survivor).await;
    assert!(
        printed[0].contains(&format!("DONE {}", job.id)),
        "{}",
        printed[0]
    );
    assert_paid_once(&sim, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_resuming_one_job_at_once_run_it_once() {
    let Some(redis) = RedisServer::for_test("two_workers_resuming_one_job_at_once_run_it_once")
    else {
        return;
    };
    let sim = slow_simulator().await;
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let prefix = prefix();
    let store = RedisJobStore::with_prefix(&redis.url(), &prefix).unwrap();
    let job = queued_job(&store, &out).await;
    let workers = start_workers(2, dir.path(), &redis, &prefix, &sim);
    std::fs::write(dir.path().join("go"), b"go").unwrap();
    let mut done = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if store.load(&job.id).await.unwrap().unwrap().job.stage == Stage::Done {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "the job never finished");
    let printed = stop_workers(dir.path(), workers).await;
    let finished: usize = printed
        .iter()
        .map(|p| p.matches(&format!("DONE {}", job.id)).count())
        .sum();
    assert_eq!(finished, 1, "one worker ran it: {printed:?}");
    assert!(printed.iter().all(|p| !p.contains("FAILED")), "{printed:?}");
    assert_paid_once(&sim, &out);
}
