//! Where jobs live: the [`JobStore`] contract, the in-memory store, and who holds a job.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::StoreFuture;
use crate::error::{Error, Result};
use crate::lease::Lease;

use super::{EditJob, Stage};

/// A job as a store holds it: the job and the version of its record (the store's own
/// counter, 1 for the first save, one more for each save), used for compare-and-set.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredJob {
    /// The job, with [`EditJob::version`] set to `version`.
    pub job: EditJob,
    /// The record's version.
    pub version: u64,
}

impl StoredJob {
    /// A job read at `version`.
    pub fn new(mut job: EditJob, version: u64) -> StoredJob {
        job.version = Some(version);
        StoredJob { job, version }
    }
}

/// What [`JobStore::save`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JobSaveOutcome {
    /// Saved; the record's new version.
    Saved {
        /// The new version.
        version: u64,
    },
    /// Not saved: the record is no longer at the expected version (another worker saved it
    /// since it was read). What it holds now.
    Conflict {
        /// The record now, `None` when there is none.
        current: Option<Box<StoredJob>>,
    },
}

/// Who holds a job's lease: a process on a machine. Stores keep it with the lease, so a
/// second run of the job can say where the job is running ("pid 4242 on host worker-3").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// Unique to one grant (a random id).
    pub id: String,
    /// The holder's process id.
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// When the holder took the lease, seconds since the Unix epoch.
    pub since: u64,
}

impl LeaseHolder {
    /// This process, on this machine, with a new random id.
    ///
    /// ```
    /// let me = nemo_video::job::LeaseHolder::this_process();
    /// assert_eq!(me.pid, std::process::id());
    /// ```
    pub fn this_process() -> LeaseHolder {
        LeaseHolder {
            id: uuid::Uuid::new_v4().to_string(),
            pid: std::process::id(),
            host: host_name(),
            since: crate::auth::unix_now(),
        }
    }

    /// The form stores keep (JSON); it is also the lease's holder id
    /// ([`Lease::holder`](crate::lease::Lease::holder)), unique to the grant.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.id.clone())
    }

    /// Reads what [`encode`](Self::encode) wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<LeaseHolder> {
        serde_json::from_str(text.trim()).ok()
    }
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.host)
    }
}

/// This machine's name, for people: the kernel's, else `/etc/hostname`, else the
/// environment's, else "an unnamed host".
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            ["HOSTNAME", "COMPUTERNAME"]
                .iter()
                .find_map(|var| std::env::var(var).ok())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "an unnamed host".to_string())
}

/// What [`JobStore::try_lease`] got.
#[derive(Debug)]
#[non_exhaustive]
pub enum LeaseAttempt {
    /// The lease: this holder runs the job until it releases it (or stops renewing it).
    Granted(Lease),
    /// Someone else holds it; who, when the store knows.
    Held(Option<LeaseHolder>),
}

/// Where jobs are kept while they run, for every process and machine that may run them.
///
/// A job does work that costs credits, so the contract is written around never doing it
/// twice, for workers on many machines:
///
/// - **Records are versioned, and saves are compare-and-set.** [`save`](Self::save) writes
///   only if the record is still at `expected_version` (`None`: only if there is none yet),
///   and otherwise answers [`JobSaveOutcome::Conflict`] with what it holds now. A job is saved
///   after every step, before the next request leaves, so the record always says what may
///   have reached the service.
/// - **One runner per job: leases.** Before it runs a job, the SDK takes its lease with
///   [`try_lease`](Self::try_lease) and a time to live (default 30 s), renews it every third
///   of that while the job runs ([`renew_lease`](Self::renew_lease)), and releases it when it
///   stops ([`release_lease`](Self::release_lease)). A second runner finds it held and says so
///   ([`Error::JobRunningElsewhere`](crate::Error::JobRunningElsewhere), naming the
///   [`LeaseHolder`]), or waits. A runner whose renewal fails stops the job (it may no longer
///   be the only one), and a holder that dies stops renewing: its lease lapses after its time
///   to live (at once, for a file lock) and another worker takes the job over. Grant leases as
///   expiring records (Redis `SET NX PX`, a row with a deadline) or as locks the operating
///   system ends with their process; `load` and `save` run while the lease is held, possibly
///   on another connection, and must not wait for it.
/// - **Listing finds abandoned work.** [`job_ids`](Self::job_ids) lists the jobs in the store,
///   and [`lease_holder`](Self::lease_holder) says whether one is held;
///   [`resumable_jobs`] combines them, so a surviving worker finishes a dead worker's job.
/// - **Time limits.** The SDK limits every call (default 10 s,
///   [`JobOptions::store_timeout`](super::JobOptions::store_timeout)); a call that runs out
///   fails the job's run with [`Error::StoreTimeout`](crate::Error::StoreTimeout), and the job
///   is resumed from its last saved step.
///
/// [`JobFile`](super::JobFile) (one job in one file, leased with an operating-system file
/// lock), [`MemoryJobStore`] and [`RedisJobStore`](super::RedisJobStore) (feature `redis`, for
/// fleets) implement all of it. Methods return boxed futures; implement them with
/// `Box::pin(async move { ... })`.
pub trait JobStore: Send + Sync {
    /// The record of job `id`, if any. A record that exists but cannot be read is an error,
    /// never `None`: `None` would start the job over, paying again.
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>>;

    /// Saves `job` as `id`'s record if the record is still at `expected_version` (`None`: if
    /// there is no record).
    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome>;

    /// Deletes job `id`'s record (an app does, once it has what the job produced). A missing
    /// record is fine.
    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// The ids of every job in the store, in no particular order.
    fn job_ids(&self) -> StoreFuture<'_, Vec<String>>;

    /// The lease on job `id` for `ttl`, held by `holder`, if nobody else holds it.
    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt>;

    /// Extends `lease` by its time to live from now; `false` when it is no longer held (it
    /// lapsed and someone else may have taken it).
    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool>;

    /// Ends `lease` (only if it is still this holder's).
    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()>;

    /// Who holds job `id`'s lease right now; `None` when nobody does.
    fn lease_holder<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>>;
}

/// Runs one store call under the SDK's time limit.
pub(crate) async fn store_call<T>(
    limit: Duration,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::StoreTimeout {
            operation,
            after: limit,
        }),
    }
}

/// The jobs of `store` that nobody runs and that are not done: a dead worker's, or ones
/// never started. Jobs that wait for a person's decision are left out: a question not
/// answered yet ([`EditJob::answer_question`]), or a turn that ran and changed nothing
/// ([`EditJob::send_again`]). Run each with [`EditJob::run`], which takes its lease first: when another
/// worker was quicker, that run fails with
/// [`Error::JobRunningElsewhere`](crate::Error::JobRunningElsewhere) and sends nothing, so
/// workers can race for the same list safely. Every store call is limited by `store_timeout`.
///
/// ```no_run
/// # async fn worker(client: nemo_video::NemoClient, store: std::sync::Arc<dyn nemo_video::job::JobStore>) -> nemo_video::Result<()> {
/// use std::time::Duration;
/// use nemo_video::job::{resumable_jobs, JobOptions};
/// for stored in resumable_jobs(store.as_ref(), Duration::from_secs(10)).await? {
///     let mut job = stored.job;
///     match job.run(&client, store.as_ref(), &JobOptions::default()).await {
///         Ok(outcome) => println!("{} done", outcome.output.display()),
///         Err(nemo_video::Error::JobRunningElsewhere { .. }) => {} // another worker took it
///         Err(err) => eprintln!("job {}: {err}", job.id),
///     }
/// }
/// # Ok(()) }
/// ```
pub async fn resumable_jobs(
    store: &dyn JobStore,
    store_timeout: Duration,
) -> Result<Vec<StoredJob>> {
    let ids = store_call(
        store_timeout,
        "list the jobs in the job store",
        store.job_ids(),
    )
    .await?;
    let mut jobs = Vec::new();
    for id in ids {
        let holder = store_call(
            store_timeout,
            "read who holds a job's lease in the job store",
            store.lease_holder(&id),
        )
        .await?;
        if holder.is_some() {
            continue;
        }
        let stored = store_call(
            store_timeout,
            "load a job from the job store",
            store.load(&id),
        )
        .await?;
        if let Some(stored) =
            stored.filter(|s| !s.job.waits_for_a_person() && s.job.stage != Stage::Done)
        {
            jobs.push(stored);
        }
    }
    Ok(jobs)
}

/// Jobs kept in memory, shared by every task of the process holding the same
/// `Arc<MemoryJobStore>`; nothing survives the process. Leases are a map of holders and
/// deadlines.
///
/// ```
/// let store = nemo_video::job::MemoryJobStore::new();
/// assert!(store.is_empty());
/// ```
#[derive(Default)]
pub struct MemoryJobStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    /// id → (version, the job as JSON): kept encoded, as a real store would, so that what
    /// a caller holds never aliases what the store holds.
    jobs: HashMap<String, (u64, String)>,
    leases: HashMap<String, (LeaseHolder, String, Instant)>,
}

impl fmt::Debug for MemoryJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryJobStore")
            .field("jobs", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> MemoryJobStore {
        MemoryJobStore::default()
    }

    /// How many jobs the store holds.
    pub fn len(&self) -> usize {
        self.with(|inner| inner.jobs.len())
    }

    /// True when the store holds no job.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryInner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }
}

pub(crate) fn decode_job(
    operation: &'static str,
    id: &str,
    version: u64,
    json: &str,
) -> Result<StoredJob> {
    let job: EditJob = serde_json::from_str(json).map_err(|err| {
        Error::store(
            operation,
            format!("the record of job {id} is not in a form this version understands ({err}); it is kept as it is"),
        )
    })?;
    Ok(StoredJob::new(job, version))
}

pub(crate) fn encode_job(operation: &'static str, job: &EditJob) -> Result<String> {
    serde_json::to_string(job).map_err(|err| Error::store(operation, err.to_string()))
}

impl JobStore for MemoryJobStore {
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>> {
        let found = self.with(|inner| inner.jobs.get(id).cloned());
        Box::pin(async move {
            found
                .map(|(version, json)| decode_job("load the job", id, version, &json))
                .transpose()
        })
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome> {
        Box::pin(async move {
            let json = encode_job("save the job", job)?;
            let conflict = self.with(|inner| {
                let current = inner.jobs.get(id).cloned();
                if current.as_ref().map(|(v, _)| *v) != expected_version {
                    return Some(current);
                }
                let version = expected_version.unwrap_or(0) + 1;
                inner.jobs.insert(id.to_string(), (version, json));
                None
            });
            match conflict {
                None => Ok(JobSaveOutcome::Saved {
                    version: expected_version.unwrap_or(0) + 1,
                }),
                Some(current) => Ok(JobSaveOutcome::Conflict {
                    current: current
                        .map(|(v, json)| decode_job("save the job", id, v, &json).map(Box::new))
                        .transpose()?,
                }),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.with(|inner| inner.jobs.remove(id));
        Box::pin(async { Ok(()) })
    }

    fn job_ids(&self) -> StoreFuture<'_, Vec<String>> {
        let ids = self.with(|inner| inner.jobs.keys().cloned().collect());
        Box::pin(async move { Ok(ids) })
    }

    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt> {
        let now = Instant::now();
        let attempt = self.with(|inner| {
            if let Some((current, _, until)) = inner.leases.get(id) {
                if *until > now {
                    return LeaseAttempt::Held(Some(current.clone()));
                }
            }
            let lease = Lease::new(id.to_string(), ttl).with_holder(holder.encode());
            inner.leases.insert(
                id.to_string(),
                (holder.clone(), lease.holder().to_string(), now + ttl),
            );
            LeaseAttempt::Granted(lease)
        });
        Box::pin(async move { Ok(attempt) })
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let renewed = self.with(|inner| match inner.leases.get_mut(lease.key()) {
            Some((_, holder, until)) if holder == lease.holder() && *until > now => {
                *until = now + lease.ttl();
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(renewed) })
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.with(|inner| {
            if inner
                .leases
                .get(lease.key())
                .is_some_and(|(_, holder, _)| holder == lease.holder())
            {
                inner.leases.remove(lease.key());
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn lease_holder<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>> {
        let now = Instant::now();
        let holder = self.with(|inner| {
            inner
                .leases
                .get(id)
                .filter(|(_, _, until)| *until > now)
                .map(|(holder, _, _)| holder.clone())
        });
        Box::pin(async move { Ok(holder) })
    }
}
