//! Jobs in Redis, for workers on many machines (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::StoreFuture;
use crate::error::Result;
use crate::lease::Lease;
use crate::redis_kv::{Put, RedisKv};

use super::store::{
    decode_job, encode_job, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder, StoredJob,
};
use super::EditJob;

/// Jobs in a Redis database, shared by every worker of a fleet, on any number of machines
/// (feature `redis`). The same server (and the same Redis layer) as
/// [`RedisStore`](crate::auth::RedisStore) for identities.
///
/// It implements the whole [`JobStore`] contract:
/// - a job is a hash `<prefix>:job:<id>` with `version` and `data` (the job as JSON); saves
///   are compare-and-set on `version`, in a Lua script;
/// - its lease is `<prefix>:job-lease:<id>`, taken with `SET NX PX` and holding the
///   holder's description (a [`LeaseHolder`] as JSON: its id, process id and host), renewed
///   and released by scripts that act only while it still holds this holder's; it lapses by
///   itself when its holder dies, and another worker takes the job over;
/// - `<prefix>:jobs` is the set of every job's id, for [`resumable_jobs`](super::resumable_jobs).
///
/// ```no_run
/// # async fn worker() -> nemo_video::Result<()> {
/// use nemo_video::job::{resumable_jobs, JobOptions, RedisJobStore};
/// use std::time::Duration;
///
/// let client = nemo_video::NemoClient::from_env()?;
/// let store = RedisJobStore::new("redis://10.0.0.5:6379/0")?;
/// for stored in resumable_jobs(&store, Duration::from_secs(10)).await? {
///     let mut job = stored.job;
///     let _ = job.run(&client, &store, &JobOptions::default()).await;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisJobStore {
    kv: Arc<RedisKv>,
}

impl fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("server", &self.kv.shown_url())
            .finish_non_exhaustive()
    }
}

const LOAD: &str = "load the job from Redis";
const SAVE: &str = "save the job to Redis";
const REMOVE: &str = "remove the job from Redis";
const LIST: &str = "list the jobs in Redis";
const LEASE: &str = "take the job's lease in Redis";
const RENEW: &str = "renew the job's lease in Redis";
const RELEASE: &str = "release the job's lease in Redis";
const HOLDER: &str = "read who holds the job's lease in Redis";

impl RedisJobStore {
    /// A store on the Redis server at `url` (`redis://[:password@]host[:port][/db]`), with key
    /// prefix `nemo`. Fails with [`Error::Config`](crate::Error::Config) for a URL the `redis`
    /// crate cannot use; does not connect yet.
    pub fn new(url: &str) -> Result<RedisJobStore> {
        RedisJobStore::with_prefix(url, "nemo")
    }

    /// A store whose keys start with `prefix` instead of `nemo`.
    ///
    /// ```no_run
    /// let store = nemo_video::job::RedisJobStore::with_prefix("redis://127.0.0.1/0", "bot-eu")?;
    /// # let _ = store;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn with_prefix(url: &str, prefix: &str) -> Result<RedisJobStore> {
        Ok(RedisJobStore {
            kv: Arc::new(RedisKv::open(url, prefix)?),
        })
    }

    fn record_key(&self, id: &str) -> String {
        self.kv.key(&["job", id])
    }

    fn lease_key(&self, id: &str) -> String {
        self.kv.key(&["job-lease", id])
    }

    fn index_key(&self) -> String {
        self.kv.key(&["jobs"])
    }
}

impl JobStore for RedisJobStore {
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>> {
        Box::pin(async move {
            match self.kv.get(LOAD, &self.record_key(id)).await? {
                Some(record) => decode_job(LOAD, id, record.version, &record.data).map(Some),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome> {
        Box::pin(async move {
            let data = encode_job(SAVE, job)?;
            match self
                .kv
                .put(SAVE, &self.record_key(id), expected_version, &data)
                .await?
            {
                Put::Saved(version) => {
                    if expected_version.is_none() {
                        // Listed once it exists (an id whose record is gone is skipped).
                        self.kv.set_add(SAVE, &self.index_key(), id).await?;
                    }
                    Ok(JobSaveOutcome::Saved { version })
                }
                Put::Conflict(None) => Ok(JobSaveOutcome::Conflict { current: None }),
                Put::Conflict(Some(record)) => Ok(JobSaveOutcome::Conflict {
                    current: Some(Box::new(decode_job(
                        SAVE,
                        id,
                        record.version,
                        &record.data,
                    )?)),
                }),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.kv.delete(REMOVE, &self.record_key(id)).await?;
            self.kv.set_remove(REMOVE, &self.index_key(), id).await
        })
    }

    fn job_ids(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move { self.kv.set_members(LIST, &self.index_key()).await })
    }

    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt> {
        Box::pin(async move {
            let lease = Lease::new(self.lease_key(id), ttl).with_holder(holder.encode());
            if self
                .kv
                .try_lease(LEASE, lease.key(), lease.holder(), ttl)
                .await?
            {
                return Ok(LeaseAttempt::Granted(lease));
            }
            let current = self.kv.get_string(HOLDER, lease.key()).await?;
            Ok(LeaseAttempt::Held(
                current.and_then(|text| LeaseHolder::decode(&text)),
            ))
        })
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.kv
                .renew_lease(RENEW, lease.key(), lease.holder(), lease.ttl())
                .await
        })
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.kv
                .release_lease(RELEASE, lease.key(), lease.holder())
                .await
                .map(drop)
        })
    }

    fn lease_holder<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>> {
        Box::pin(async move {
            let current = self.kv.get_string(HOLDER, &self.lease_key(id)).await?;
            Ok(current.map(|text| {
                LeaseHolder::decode(&text).unwrap_or(LeaseHolder {
                    id: text,
                    pid: 0,
                    host: "an unknown host".to_string(),
                    since: 0,
                })
            }))
        })
    }
}
