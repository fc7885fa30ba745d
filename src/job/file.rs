//! One job in one file, leased with an operating-system file lock.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::StoreFuture;
use crate::auth::{try_lock_removable, LockAttempt, RemovableLock};
use crate::error::{Error, Result};
use crate::files::{self, Writer};
use crate::lease::Lease;

use super::store::{
    decode_job, encode_job, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder, StoredJob,
};
use super::EditJob;

/// A job saved as JSON in one file, replaced atomically (a temporary file in the same
/// folder, synced, renamed, the folder synced): after a crash it holds the last saved job,
/// whole. It is a [`JobStore`] for the one job it holds.
///
/// Its lease is an operating-system file lock on `<file>.lock` beside it (`flock` on Unix,
/// through the `fs4` crate), which ends the moment its holder exits, however it exits (a
/// kill -9 included): a job is never stuck behind a dead process. The lock file holds the
/// holder's description (process id, host), so a second run of the same job can say where it
/// runs; it is removed when the lease ends. This coordinates the processes of one machine
/// (and of machines sharing a file system with working locks); a fleet shares a
/// [`RedisJobStore`](super::RedisJobStore).
///
/// The file is `{"version": N, "job": {...}}`; saves are compare-and-set on `version`.
///
/// ```no_run
/// # async fn run() -> nemo_video::Result<()> {
/// use nemo_video::job::{EditJob, JobFile, JobOptions};
/// let client = nemo_video::NemoClient::from_env()?;
/// let file = JobFile::new("jobs/clip-remove-logo.json");
/// let mut job = match file.read()? {
///     Some(saved) => saved.job,
///     None => EditJob::new("clip.mp4", "remove the logo in the corner", "clip_edited.mp4")?,
/// };
/// let outcome = job.run(&client, &file, &JobOptions::default()).await?;
/// file.delete()?;
/// println!("saved {}", outcome.output.display());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct JobFile {
    path: PathBuf,
    /// The holder id of the lease this `JobFile` (and its clones) holds, if any: its saves
    /// need no other lock.
    held: Arc<Mutex<Option<String>>>,
    /// Held by each save made under that lease, so that the clones' saves take turns as
    /// saves of different processes do (each reads, compares and writes alone).
    saving: Arc<Mutex<()>>,
}

#[derive(Serialize)]
struct Written<'a> {
    version: u64,
    job: &'a RawValue,
}

#[derive(Deserialize)]
struct Read<'a> {
    version: u64,
    #[serde(borrow)]
    job: &'a RawValue,
}

/// Ends a file lease: forgets it, then unlocks and removes the lock file.
struct FileLease {
    held: Arc<Mutex<Option<String>>>,
    _lock: Option<RemovableLock>,
}

impl Drop for FileLease {
    fn drop(&mut self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

const LOAD: &str = "load the job from its file";
const SAVE: &str = "save the job to its file";

impl JobFile {
    /// A job file at `path` (its folder is created, mode 0700, on first save).
    pub fn new(path: impl Into<PathBuf>) -> JobFile {
        JobFile {
            path: path.into(),
            held: Arc::new(Mutex::new(None)),
            saving: Arc::new(Mutex::new(())),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file beside it: `<file>.lock`.
    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// The saved job, or `None` when there is none. A file that cannot be read as a job is an
    /// error (it is kept: delete it to start over).
    ///
    /// ```no_run
    /// let saved = nemo_video::job::JobFile::new("job.json").read()?;
    /// # let _ = saved;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn read(&self) -> Result<Option<StoredJob>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let read: Read<'_> = serde_json::from_slice(&bytes).map_err(|err| {
                    Error::invalid_input(format!(
                        "the saved job {} cannot be read ({err}); delete it to start over",
                        self.path.display()
                    ))
                })?;
                decode_job(
                    LOAD,
                    &self.path.display().to_string(),
                    read.version,
                    read.job.get(),
                )
                .map(Some)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io("could not read", &self.path, err)),
        }
    }

    /// Deletes the file (after the job succeeded); a missing file is fine. It also removes the
    /// temporary file that a save killed half-way (kill -9, a power cut) left beside it, unless
    /// someone else holds the job's lease: that holder's next save replaces it.
    ///
    /// ```no_run
    /// nemo_video::job::JobFile::new("job.json").delete()?;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn delete(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("could not remove", &self.path, err)),
        }
        self.remove_killed_save();
        Ok(())
    }

    /// Removes the temporary file a save killed half-way left, under the lease or the lock
    /// (nobody else is writing it then). Best effort: the next save replaces it anyway.
    fn remove_killed_save(&self) {
        if !files::temp_path(&self.path).exists() {
            // Nothing to do, and no lock file to create for it.
            return;
        }
        let removed = if self.holds_lease() {
            let _turn = self.saving.lock().unwrap_or_else(|e| e.into_inner());
            files::remove_temp(&self.path)
        } else {
            match try_lock_removable(&self.lock_path()) {
                Ok(LockAttempt::Held(lock)) => {
                    let removed = files::remove_temp(&self.path);
                    drop(lock);
                    removed
                }
                // Its holder is saving, or nothing can be coordinated here.
                _ => Ok(()),
            }
        };
        if let Err(err) = removed {
            tracing::warn!(path = %files::temp_path(&self.path).display(), error = %err, "could not remove the temporary file of an interrupted job save");
        }
    }

    fn holds_lease(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The holder described in the lock file of a lease someone holds. A holder writes its
    /// description just after it takes the lock: an empty file is read again a few times.
    fn described_holder(&self) -> Option<LeaseHolder> {
        for _ in 0..20 {
            let described = std::fs::read_to_string(self.lock_path())
                .ok()
                .and_then(|text| LeaseHolder::decode(&text));
            if described.is_some() {
                return described;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Runs `work` with the file to itself: under this `JobFile`'s lease, or else under the
    /// lock for the moment of the work. Someone else's lease: [`Error::JobRunningElsewhere`].
    fn exclusive<R>(&self, job_id: &str, work: impl FnOnce(Writer) -> Result<R>) -> Result<R> {
        if self.holds_lease() {
            let _turn = self.saving.lock().unwrap_or_else(|e| e.into_inner());
            return work(Writer::Locked);
        }
        match try_lock_removable(&self.lock_path())? {
            LockAttempt::Held(lock) => {
                let result = work(Writer::Locked);
                drop(lock);
                result
            }
            LockAttempt::Unsupported => work(Writer::Unlocked),
            LockAttempt::Busy => Err(Error::JobRunningElsewhere {
                job_id: job_id.to_string(),
                holder: self.described_holder().map(|h| h.to_string()),
            }),
        }
    }

    fn write(&self, version: u64, job: &RawValue, writer: Writer) -> std::io::Result<()> {
        let json = serde_json::to_vec(&Written { version, job }).map_err(std::io::Error::other)?;
        files::replace(&self.path, &json, writer)
    }

    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&JobFile) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let file = self.clone();
        tokio::task::spawn_blocking(move || work(&file))
            .await
            .map_err(|err| Error::store("run a job file operation", err.to_string()))?
    }
}

impl JobStore for JobFile {
    fn load<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<StoredJob>> {
        let id = id.to_string();
        Box::pin(self.blocking(move |file| {
            // The file holds one job: another job's record is not this one's.
            Ok(file.read()?.filter(|stored| stored.job.id == id))
        }))
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        job: &'a EditJob,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, JobSaveOutcome> {
        let id = id.to_string();
        let encoded = encode_job(SAVE, job);
        Box::pin(self.blocking(move |file| {
            let job = RawValue::from_string(encoded?)
                .map_err(|err| Error::store(SAVE, err.to_string()))?;
            file.exclusive(&id, |writer| {
                let current = file.read()?;
                if current.as_ref().map(|c| c.version) != expected_version {
                    return Ok(JobSaveOutcome::Conflict {
                        current: current.map(Box::new),
                    });
                }
                let version = expected_version.unwrap_or(0) + 1;
                file.write(version, &job, writer)
                    .map_err(|err| Error::io("could not save the job to", &file.path, err))?;
                Ok(JobSaveOutcome::Saved { version })
            })
        }))
    }

    fn remove<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let id = id.to_string();
        Box::pin(self.blocking(move |file| {
            if file.read()?.is_some_and(|stored| stored.job.id == id) {
                file.delete()?;
            }
            Ok(())
        }))
    }

    fn job_ids(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.blocking(|file| Ok(file.read()?.map(|s| s.job.id).into_iter().collect())))
    }

    fn try_lease<'a>(
        &'a self,
        id: &'a str,
        ttl: Duration,
        holder: &'a LeaseHolder,
    ) -> StoreFuture<'a, LeaseAttempt> {
        let id = id.to_string();
        let holder = holder.clone();
        Box::pin(self.blocking(move |file| {
            if file.holds_lease() {
                // One lease per file, even within this process.
                return Ok(LeaseAttempt::Held(file.described_holder()));
            }
            let lock = match try_lock_removable(&file.lock_path())? {
                LockAttempt::Held(lock) => Some(lock),
                // A folder that cannot hold lock files: no coordination is possible, and the
                // save that follows says why the file cannot be written.
                LockAttempt::Unsupported => None,
                LockAttempt::Busy => return Ok(LeaseAttempt::Held(file.described_holder())),
            };
            if let Some(mut locked) = lock.as_ref().and_then(RemovableLock::file) {
                // Who holds it, for a second run to say; the lock, not this text, decides.
                let described = locked
                    .set_len(0)
                    .and_then(|()| locked.rewind())
                    .and_then(|()| locked.write_all(holder.encode().as_bytes()))
                    .and_then(|()| locked.flush());
                if let Err(err) = described {
                    tracing::warn!(error = %err, "could not describe the job's holder in its lock file");
                }
            }
            let lease = Lease::new(id, ttl).with_holder(holder.encode());
            *file.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.holder().to_string());
            Ok(LeaseAttempt::Granted(lease.with_guard(FileLease {
                held: Arc::clone(&file.held),
                _lock: lock,
            })))
        }))
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        // The lock lasts as long as the lease's guard: held unless released.
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(lease.holder());
        Box::pin(async move { Ok(held) })
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        // Dropping the guard unlocks and removes the lock file: quick, but file work.
        Box::pin(self.blocking(move |_| {
            drop(lease);
            Ok(())
        }))
    }

    fn lease_holder<'a>(&'a self, _id: &'a str) -> StoreFuture<'a, Option<LeaseHolder>> {
        Box::pin(self.blocking(|file| {
            if file.holds_lease() {
                return Ok(file
                    .described_holder()
                    .or_else(|| Some(LeaseHolder::this_process())));
            }
            Ok(match try_lock_removable(&file.lock_path())? {
                LockAttempt::Held(lock) => {
                    drop(lock);
                    None
                }
                LockAttempt::Unsupported => None,
                LockAttempt::Busy => Some(file.described_holder().unwrap_or_else(|| LeaseHolder {
                    id: String::new(),
                    pid: 0,
                    host: "an unknown host".to_string(),
                    since: 0,
                })),
            })
        }))
    }
}
