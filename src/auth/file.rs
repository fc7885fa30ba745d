//! The default credential store: `credentials.json` in the config directory, shared safely by
//! every process that uses the directory.
//!
//! Layout of the directory (0700):
//! - `credentials.json` (0600): `{"default_client_id": "<uuid>", "services": {"<API origin>":
//!   {"<client id>": {"version": N, credentials...}}}}`, always replaced atomically (a
//!   temporary file, synced, renamed, then the directory synced), so a reader never sees half
//!   a file and a crash never loses a saved one. Earlier files (identities keyed by client
//!   id only, or the single identity of the first versions) are read as identities of the
//!   production service and rewritten in this form on the next save.
//! - `credentials.lock`: held (advisory lock) for each read-modify-write of the file, so two
//!   writers never drop each other's entries.
//! - `locks/<origin hash>-<client id>.lock`: exists only while some process holds that
//!   identity's lease (while it asks the service for a token and saves it).
//!
//! What it never does: drop what it cannot read. Each identity is decoded on its own; an
//! entry this version does not understand (another tool's, a newer version's) is kept byte
//! for byte, and so is every top-level field it does not know. A file that cannot be read
//! (permissions, an I/O error) fails the call instead of being replaced. A file that is not
//! JSON at all is moved aside (`credentials.json.corrupt-<time>`), reported in the error of
//! the call that found it, and a new file starts.
//!
//! Locks are the operating system's advisory file locks (`flock` on Unix, `LockFileEx` on
//! Windows, through the `fs4` crate): released when the holder exits, however it exits, so a
//! lease of this store never outlives its process, whatever its time to live. All file work
//! runs on Tokio's blocking threads, never on the async runtime.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::files::{self, create_private_dir, Writer};
use crate::lease::Lease;

use super::store::{CredentialStore, IdentityKey, SaveOutcome, StoreFuture, StoredCredentials};
use super::{new_client_id, validate_client_id, AnonymousCredentials};

/// Name of the credentials file inside the config directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
const FILE_LOCK: &str = "credentials.lock";
const IDENTITY_LOCKS: &str = "locks";
/// Longest wait for the file lock, which another process holds only for one read-modify-write
/// of the file (milliseconds), so a long wait means a stuck process.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The file as read: every top-level field verbatim, plus the parts this version reads.
#[derive(Default)]
struct Contents {
    /// Every top-level field as it was read; written back verbatim unless changed.
    top: BTreeMap<String, Box<RawValue>>,
    default_client_id: Option<String>,
    /// Origin → client id → the entry, verbatim.
    services: BTreeMap<String, BTreeMap<String, Box<RawValue>>>,
    /// Top-level fields of an earlier layout whose contents were merged into this one (and
    /// so are not written back). Earlier fields that could not be read are kept.
    migrated: Vec<&'static str>,
}

/// An entry as written: the record's version and the credentials. (Earlier files held the
/// credentials alone, read as version 0.)
#[derive(Serialize, Deserialize)]
struct Entry {
    version: u64,
    credentials: AnonymousCredentials,
}

impl Contents {
    fn parse(bytes: &[u8]) -> std::result::Result<Contents, String> {
        let top: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        let mut contents = Contents {
            top,
            ..Contents::default()
        };
        let string_field = |name: &str| {
            contents
                .top
                .get(name)
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                .filter(|id| validate_client_id(id).is_ok())
        };
        contents.default_client_id = string_field("default_client_id");
        // The first versions kept their one identity's id as `client_id`.
        if let Some(id) = string_field("client_id") {
            contents.default_client_id.get_or_insert(id);
            contents.migrated.push("client_id");
        }
        if let Some(raw) = contents.top.get("services") {
            contents.services = serde_json::from_str(raw.get())
                .map_err(|err| format!("its \"services\" field is not a map of maps ({err})"))?;
        }
        let mut legacy: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
        if let Some(raw) = contents.top.get("identities") {
            legacy = serde_json::from_str(raw.get())
                .map_err(|err| format!("its \"identities\" field is not a map ({err})"))?;
            contents.migrated.push("identities");
        }
        if let Some(raw) = contents.top.get("anonymous") {
            if let Some(id) = serde_json::from_str::<serde_json::Value>(raw.get())
                .ok()
                .and_then(|v| v.get("client_id")?.as_str().map(str::to_string))
                .filter(|id| validate_client_id(id).is_ok())
            {
                legacy.entry(id).or_insert_with(|| raw.clone());
                contents.migrated.push("anonymous");
            }
        }
        let service = contents
            .services
            .entry(super::default_origin())
            .or_default();
        for (id, raw) in legacy {
            // In this version's form when it can be read; kept as it is when it cannot.
            let raw = serde_json::from_str::<AnonymousCredentials>(raw.get())
                .ok()
                .and_then(|credentials| {
                    to_raw(&Entry {
                        version: 0,
                        credentials,
                    })
                    .ok()
                })
                .unwrap_or(raw);
            service.entry(id).or_insert(raw);
        }
        contents
            .services
            .retain(|_, identities| !identities.is_empty());
        Ok(contents)
    }

    fn entry(&self, key: &IdentityKey) -> Option<&RawValue> {
        self.services
            .get(key.origin())?
            .get(key.client_id())
            .map(|raw| &**raw)
    }

    /// The bytes to write: unknown top-level fields verbatim, the rest as this version
    /// writes it (earlier layouts folded into `services`).
    fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut top = self.top.clone();
        for old in &self.migrated {
            top.remove(*old);
        }
        match &self.default_client_id {
            Some(id) => {
                top.insert("default_client_id".to_string(), to_raw(id)?);
            }
            None => {
                top.remove("default_client_id");
            }
        }
        if self.services.is_empty() {
            top.remove("services");
        } else {
            top.insert("services".to_string(), to_raw(&self.services)?);
        }
        let mut bytes = serde_json::to_vec_pretty(&top).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

fn to_raw<T: Serialize + ?Sized>(value: &T) -> std::io::Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(std::io::Error::other)
}

fn decode_entry(key: &IdentityKey, raw: &RawValue, path: &Path) -> Result<StoredCredentials> {
    let entry = serde_json::from_str::<Entry>(raw.get()).or_else(|err| {
        // The credentials alone: an earlier version's entry. A versioned entry that does not
        // decode keeps its own error.
        if raw.get().contains("\"credentials\"") {
            return Err(err);
        }
        serde_json::from_str::<AnonymousCredentials>(raw.get()).map(|credentials| Entry {
            version: 0,
            credentials,
        })
    });
    let entry = entry.map_err(|err| {
        Error::io(
            "could not read an identity in",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the entry for {key} is not in a form this version understands ({err}); it is kept as it is: fix it, or give this client another client id"
                ),
            ),
        )
    })?;
    Ok(StoredCredentials::new(entry.credentials, entry.version))
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

    /// How long to wait for the file lock another process holds while it rewrites the file
    /// (a few milliseconds normally) before failing. Default 30 s.
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

    /// Runs blocking file work on Tokio's blocking threads.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&FileStore) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| Error::store("run a credentials file operation", err.to_string()))?
    }

    /// Reads the file. Missing: empty. Unreadable: an error (the file is kept). Not JSON: moved
    /// aside, and an error that says where to.
    fn read(&self) -> Result<Contents> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // No file, or no directory to hold one: nothing to read, nothing to lose.
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Contents::default())
            }
            Err(err) => {
                return Err(Error::io(
                    "could not read the NemoVideo credentials (the file is kept as it is; fix its permissions or the disk and try again)",
                    path,
                    err,
                ))
            }
        };
        match Contents::parse(&bytes) {
            Ok(contents) => Ok(contents),
            Err(problem) => Err(self.move_aside(&path, &problem)),
        }
    }

    /// Moves a corrupt file aside, so nothing in it is lost and the next call starts a new
    /// one; the error says where it went.
    fn move_aside(&self, path: &Path, problem: &str) -> Error {
        let aside = self.dir.join(format!(
            "{CREDENTIALS_FILE}.corrupt-{}-{}",
            super::unix_now(),
            fastrand::u32(..)
        ));
        match std::fs::rename(path, &aside) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), "the NemoVideo credentials file was not valid JSON; it was moved aside");
                Error::io(
                    "the NemoVideo credentials file was not valid JSON and was moved aside to",
                    aside,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{problem}; a new file starts with the next call: if the identities in the old one matter, repair it and move it back"),
                    ),
                )
            }
            Err(err) => Error::io(
                "the NemoVideo credentials file is not valid JSON and could not be moved aside",
                path,
                std::io::Error::new(
                    err.kind(),
                    format!("{problem}; {err}: repair or remove the file"),
                ),
            ),
        }
    }

    /// Runs `change` on the file's contents under the file lock and writes the result back
    /// atomically, if `change` says so. Everything `change` does not touch is written back
    /// as it was read.
    fn update<R>(&self, change: impl FnOnce(&mut Contents) -> (R, bool)) -> Result<R> {
        let lock = lock_file_blocking(&self.dir.join(FILE_LOCK), self.lock_timeout)?;
        let writer = if lock.is_some() {
            Writer::Locked
        } else {
            Writer::Unlocked
        };
        let mut contents = self.read()?;
        let (result, changed) = change(&mut contents);
        if changed || !contents.migrated.is_empty() {
            let bytes = contents.to_bytes().map_err(|err| {
                Error::io(
                    "could not encode the NemoVideo credentials for",
                    self.path(),
                    err,
                )
            })?;
            files::replace(&self.path(), &bytes, writer).map_err(|err| {
                Error::io(
                    "could not save the NemoVideo credentials to",
                    self.path(),
                    err,
                )
            })?;
        }
        Ok(result)
    }

    fn lease_path(&self, key: &IdentityKey) -> PathBuf {
        self.dir.join(IDENTITY_LOCKS).join(format!(
            "{:016x}-{}.lock",
            fnv1a64(key.origin().as_bytes()),
            key.client_id()
        ))
    }
}

impl CredentialStore for FileStore {
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        let key = key.clone();
        Box::pin(self.blocking(move |store| {
            // No lock needed: the file is only ever replaced whole.
            let contents = store.read()?;
            contents
                .entry(&key)
                .map(|raw| decode_entry(&key, raw, &store.path()))
                .transpose()
        }))
    }

    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        let key = key.clone();
        let credentials = credentials.clone();
        Box::pin(self.blocking(move |store| {
            validate_client_id(key.client_id())?;
            let path = store.path();
            store.update(|contents| {
                let current = match contents.entry(&key) {
                    Some(raw) => match decode_entry(&key, raw, &path) {
                        Ok(current) => Some(current),
                        // Never overwrite what cannot be read.
                        Err(err) => return (Err(err), false),
                    },
                    None => None,
                };
                if current.as_ref().map(|c| c.version) != expected_version {
                    return (Ok(SaveOutcome::Conflict { current }), false);
                }
                let version = expected_version.unwrap_or(0) + 1;
                let raw = match to_raw(&Entry {
                    version,
                    credentials,
                }) {
                    Ok(raw) => raw,
                    Err(err) => {
                        return (
                            Err(Error::io(
                                "could not encode the NemoVideo credentials for",
                                &path,
                                err,
                            )),
                            false,
                        )
                    }
                };
                contents
                    .services
                    .entry(key.origin().to_string())
                    .or_default()
                    .insert(key.client_id().to_string(), raw);
                (Ok(SaveOutcome::Saved { version }), true)
            })?
        }))
    }

    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let created = self
                .blocking(|store| {
                    if let Some(id) = store.read()?.default_client_id {
                        return Ok(id);
                    }
                    // First use: whoever takes the file lock first creates it; the others
                    // read theirs.
                    store.update(|contents| match &contents.default_client_id {
                        Some(id) => (id.clone(), false),
                        None => {
                            let id = new_client_id();
                            contents.default_client_id = Some(id.clone());
                            (id, true)
                        }
                    })
                })
                .await;
            match created {
                Ok(id) => Ok(Some(id)),
                Err(Error::Io { action, .. }) if action.starts_with("could not save") => {
                    tracing::warn!("could not save the NemoVideo client id (the config directory is not writable); this process uses one of its own, which a restart will not find: set NEMO_CONFIG_DIR to a writable directory");
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
        let refused = refused.to_string();
        Box::pin(self.blocking(move |store| {
            store.update(|contents| {
                if contents.default_client_id.as_deref() == Some(refused.as_str()) {
                    contents.default_client_id = Some(new_client_id());
                    (contents.default_client_id.clone(), true)
                } else {
                    (contents.default_client_id.clone(), false)
                }
            })
        }))
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a IdentityKey,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        let key = key.clone();
        Box::pin(self.blocking(move |store| {
            // The id becomes a file name: it must be the safe kind.
            validate_client_id(key.client_id())?;
            let path = store.lease_path(&key);
            Ok(match try_lock_removable(&path)? {
                LockAttempt::Held(lock) => Some(Lease::new(key.to_string(), ttl).with_guard(lock)),
                LockAttempt::Busy => None,
                LockAttempt::Unsupported => Some(Lease::new(key.to_string(), ttl)),
            })
        }))
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        // Dropping the guard removes the lock file, then unlocks it (see `RemovableLock`); it
        // is a quick unlink, but still file work: off the runtime.
        Box::pin(self.blocking(move |_| {
            drop(lease);
            Ok(())
        }))
    }
}

/// A held lock on a file that is removed when the lock ends, so lock files do not pile up.
/// Removing a lock file is safe only because every acquirer checks, after locking, that the
/// path still names the file it locked (see [`try_lock_removable`]).
pub(crate) struct RemovableLock {
    path: PathBuf,
    file: Option<File>,
}

impl RemovableLock {
    /// The locked file (job leases write their holder's description into it).
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }
}

impl Drop for RemovableLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock: anyone who opened the old file and waits for
        // it finds, once it gets the lock, that the path no longer names it, and retries.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

pub(crate) enum LockAttempt {
    Held(RemovableLock),
    Busy,
    /// The directory cannot hold lock files (read-only): no coordination is possible, and
    /// the client works on its own.
    Unsupported,
}

fn lock_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// One non-blocking attempt at the lock file `path`.
pub(crate) fn try_lock_removable(path: &Path) -> Result<LockAttempt> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    for _ in 0..16 {
        let file = match create_private_dir(dir).and_then(|()| lock_options().open(path)) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "could not create a NemoVideo identity lock file; processes sharing this directory are not coordinated");
                return Ok(LockAttempt::Unsupported);
            }
        };
        // Called through the trait: on newer Rust, `File` has an inherent method of the same
        // name, which would raise the minimum supported version.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Ok(LockAttempt::Busy),
            Err(fs4::TryLockError::Error(err)) => {
                tracing::warn!(path = %path.display(), error = %err, "could not lock a NemoVideo identity lock file; processes sharing this directory are not coordinated");
                return Ok(LockAttempt::Unsupported);
            }
        }
        if same_file(&file, path) {
            return Ok(LockAttempt::Held(RemovableLock {
                path: path.to_path_buf(),
                file: Some(file),
            }));
        }
        // The holder removed the file after this process opened it: lock the new one.
    }
    Ok(LockAttempt::Busy)
}

/// True while `path` still names the open `file`.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Windows cannot remove a file another process has open, so the path always names it.
#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Opens (creating it and its folders, privately) and exclusively locks `path`, polling
/// with short sleeps until `timeout`; on a blocking thread. The lock lasts as long as the
/// returned file. A lock file that cannot be created at all (a read-only directory) gives
/// `None`: the write that follows fails and says why.
fn lock_file_blocking(path: &Path, timeout: Duration) -> Result<Option<File>> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file = match create_private_dir(dir).and_then(|()| lock_options().open(path)) {
        Ok(file) => file,
        Err(_) => return Ok(None),
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(Some(file)),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(_)) => return Ok(None),
        }
        if started.elapsed() >= timeout {
            return Err(Error::io(
                "timed out waiting for the lock on",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another process held it for more than {} s while rewriting the credentials; if no other NemoVideo client is stuck, try again",
                        timeout.as_secs_f64().round()
                    ),
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// FNV-1a, 64 bits: a stable short name for an origin in a file name.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
