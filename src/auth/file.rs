//! The default credential store: `credentials.json` in the config directory, shared safely by
//! every process that uses the directory.
//!
//! Layout of the directory (0700):
//! - `credentials.json` (0600): `{"default_client_id": "<uuid>", "identities": {"<client id>":
//!   {credentials}}}`, always replaced atomically (a temporary file, synced, renamed), so a
//!   reader never sees half a file. The single-identity file of earlier versions
//!   (`{"client_id", "anonymous"}`) is read and rewritten in the new form.
//! - `credentials.lock`: held (advisory lock) for each read-modify-write of the file, so two
//!   writers never drop each other's entries.
//! - `locks/<client id>.lock`: held by whoever is fetching a token for that identity, from
//!   re-reading the file to saving the new token, so N processes make one token request.
//!
//! Locks are the operating system's advisory file locks (`flock` on Unix, `LockFileEx` on
//! Windows, through the `fs4` crate): they are released when the holder exits,
//! however it exits. Waiting for one is bounded (2 minutes by default) and polls, so no
//! thread is blocked. A corrupted file is reported with a `tracing` warning and replaced.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::store::{CredentialStore, IdentityLock, StoreFuture};
use super::{new_client_id, validate_client_id, AnonymousCredentials, SecretToken};

/// Name of the credentials file inside the config directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
const FILE_LOCK: &str = "credentials.lock";
const IDENTITY_LOCKS: &str = "locks";
/// Longest wait for a lock another process holds: a token fetch with its one 429 wait fits
/// well inside it.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Identities in `<dir>/credentials.json`, safe to share between processes. The default
/// store of a client (`~/.config/nemovideo/`, or `NEMO_CONFIG_DIR`).
///
/// ```no_run
/// use std::sync::Arc;
/// use nemo_video::auth::FileStore;
///
/// let store = Arc::new(FileStore::new("/var/lib/my-bot/nemovideo"));
/// let alice = nemo_video::NemoClient::builder()
///     .credential_store(store.clone())
///     .client_id("alice-0b7c6a52")
///     .build()?;
/// # let _ = alice;
/// # Ok::<(), nemo_video::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    lock_timeout: Duration,
    /// The default identity used when the directory cannot be written: kept in memory, so
    /// the client still works (and says so in a warning).
    unsaved_default: Arc<OnceLock<String>>,
}

/// The file's contents. Identities are kept in a sorted map so the file diffs cleanly.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_client_id: Option<String>,
    #[serde(default)]
    identities: BTreeMap<String, AnonymousCredentials>,
    /// Earlier versions' single identity: read, then written back in the new form.
    #[serde(default, rename = "client_id", skip_serializing)]
    legacy_client_id: Option<String>,
    #[serde(default, rename = "anonymous", skip_serializing)]
    legacy_anonymous: Option<AnonymousCredentials>,
}

impl FileStore {
    /// A store in `dir` (created with mode 0700 on first write).
    pub fn new(dir: impl Into<PathBuf>) -> FileStore {
        FileStore {
            dir: dir.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            unsaved_default: Arc::new(OnceLock::new()),
        }
    }

    /// How long to wait for a lock held by another process before failing. Default 2 minutes.
    pub fn lock_timeout(mut self, timeout: Duration) -> FileStore {
        self.lock_timeout = timeout;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The credentials file, `<dir>/credentials.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CREDENTIALS_FILE)
    }

    /// Reads the file; a missing file is empty, a corrupted one is reported and treated as
    /// empty (the next write replaces it).
    fn read(&self) -> StoredFile {
        let path = self.path();
        let mut stored = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StoredFile>(&bytes) {
                Ok(stored) => stored,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "the NemoVideo credentials file is corrupted; it will be replaced");
                    return StoredFile::default();
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return StoredFile::default(),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "could not read the NemoVideo credentials file; it will be replaced");
                return StoredFile::default();
            }
        };
        if let Some(legacy) = stored.legacy_anonymous.take() {
            stored
                .identities
                .entry(legacy.client_id.clone())
                .or_insert(legacy);
        }
        if let Some(legacy) = stored.legacy_client_id.take() {
            stored.default_client_id.get_or_insert(legacy);
        }
        if stored
            .default_client_id
            .as_deref()
            .is_some_and(|id| validate_client_id(id).is_err())
        {
            tracing::warn!(path = %path.display(), "the saved default NemoVideo client id is invalid; it will be replaced");
            stored.default_client_id = None;
        }
        stored.identities.retain(|id, creds| {
            let keep = validate_client_id(id).is_ok() && creds.client_id == *id;
            if !keep {
                tracing::warn!(path = %path.display(), "an invalid entry in the NemoVideo credentials file was dropped");
            }
            keep
        });
        stored
    }

    /// Runs `change` on the file's contents under the file lock and writes the result back
    /// atomically. Entries `change` does not touch are written back as they were read.
    async fn update<R>(&self, change: impl FnOnce(&mut StoredFile) -> R) -> Result<R> {
        // Without a lock file (an unwritable directory) the write below fails and says why.
        let _lock = lock_file(&self.dir.join(FILE_LOCK), self.lock_timeout).await?;
        let mut stored = self.read();
        let result = change(&mut stored);
        write_atomically(&self.path(), &stored).map_err(|err| {
            Error::io(
                "could not save the NemoVideo credentials to",
                self.path(),
                err,
            )
        })?;
        Ok(result)
    }
}

impl CredentialStore for FileStore {
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<AnonymousCredentials>> {
        // No lock needed: the file is only ever replaced whole.
        Box::pin(async move { Ok(self.read().identities.remove(client_id)) })
    }

    fn save<'a>(&'a self, credentials: &'a AnonymousCredentials) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            validate_client_id(&credentials.client_id)?;
            self.update(|stored| {
                stored
                    .identities
                    .insert(credentials.client_id.clone(), credentials.clone());
            })
            .await
        })
    }

    fn remove<'a>(&'a self, client_id: &'a str, token: &'a SecretToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !self
                .read()
                .identities
                .get(client_id)
                .is_some_and(|creds| &creds.token == token)
            {
                return Ok(());
            }
            self.update(|stored| {
                if stored
                    .identities
                    .get(client_id)
                    .is_some_and(|creds| &creds.token == token)
                {
                    stored.identities.remove(client_id);
                }
            })
            .await
        })
    }

    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            if let Some(id) = self.read().default_client_id {
                return Ok(Some(id));
            }
            // First use: whoever takes the file lock first creates it; the others read theirs.
            let created = self
                .update(|stored| {
                    stored
                        .default_client_id
                        .get_or_insert_with(new_client_id)
                        .clone()
                })
                .await;
            match created {
                Ok(id) => Ok(Some(id)),
                Err(err @ Error::Io { .. }) if !is_lock_timeout(&err) => {
                    tracing::warn!(error = %err, "could not save the NemoVideo client id; this process uses one of its own, which will not be reused after a restart");
                    Ok(Some(
                        self.unsaved_default.get_or_init(new_client_id).clone(),
                    ))
                }
                Err(err) => Err(err),
            }
        })
    }

    fn replace_default_client_id<'a>(
        &'a self,
        refused: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.update(|stored| {
                if stored.default_client_id.as_deref() == Some(refused) {
                    stored.default_client_id = Some(new_client_id());
                }
                stored.default_client_id.clone()
            })
            .await
        })
    }

    fn lock<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, IdentityLock> {
        Box::pin(async move {
            // The id becomes a file name: it must be the safe kind.
            validate_client_id(client_id)?;
            let path = self
                .dir
                .join(IDENTITY_LOCKS)
                .join(format!("{client_id}.lock"));
            match lock_file(&path, self.lock_timeout).await {
                Ok(Some(file)) => Ok(IdentityLock::new(file)),
                Ok(None) => Ok(IdentityLock::none()),
                Err(err) => Err(err),
            }
        })
    }
}

/// Opens (creating it and its folders, privately) and exclusively locks `path`, polling
/// with short sleeps until `timeout`. The lock lasts as long as the returned file.
///
/// A lock file that cannot be created at all (a read-only or blocked directory) is reported
/// with a warning and gives `None`: nothing can be shared through such a directory anyway,
/// and the client keeps working in memory. Only a lock someone else holds too long fails.
async fn lock_file(path: &Path, timeout: Duration) -> Result<Option<File>> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = match create_private_dir(dir).and_then(|()| options.open(path)) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "could not create the NemoVideo credentials lock file; processes sharing this directory are not coordinated");
            return Ok(None);
        }
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        // Called through the trait: on newer Rust, `File` has an inherent method of the same
        // name, which would raise the minimum supported version.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(Some(file)),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(err)) => {
                tracing::warn!(path = %path.display(), error = %err, "could not lock the NemoVideo credentials; processes sharing this directory are not coordinated");
                return Ok(None);
            }
        }
        if started.elapsed() >= timeout {
            return Err(Error::io(
                LOCK_TIMEOUT_ACTION,
                path,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another process held it for more than {} s; if no other NemoVideo client is running, try again",
                        timeout.as_secs_f64().round()
                    ),
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

const LOCK_TIMEOUT_ACTION: &str = "timed out waiting for the lock on";

fn is_lock_timeout(err: &Error) -> bool {
    matches!(err, Error::Io { action, .. } if *action == LOCK_TIMEOUT_ACTION)
}

/// Writes atomically: a temporary file in the same directory, mode 0600, synced, renamed.
fn write_atomically(path: &Path, stored: &StoredFile) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_private_dir(dir)?;
    let json = serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?;
    let mut file = tempfile::Builder::new()
        .prefix(".credentials")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&json)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}
