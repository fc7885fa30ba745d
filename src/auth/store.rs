//! Where identities live: the [`CredentialStore`] trait and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::error::Result;

use super::{new_client_id, AnonymousCredentials, SecretToken};

/// The future a [`CredentialStore`] method returns: boxed, so the trait can be used as
/// `Arc<dyn CredentialStore>` and shared by many clients.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Where anonymous identities are kept, keyed by client id.
///
/// The SDK calls it to restore an identity ([`load`](Self::load)), to record a new token
/// after a fetch or a re-authentication ([`save`](Self::save)), and to forget a token the
/// service rejected ([`remove`](Self::remove)). One store can hold many identities: a server
/// builds one client per end user, each with its own client id, all over one store.
///
/// The service issues one anonymous token per client id per 7 days, so a store must never
/// drop or overwrite another identity's entry, and when several clients or processes may
/// fetch for the same identity at once it should implement [`lock`](Self::lock) so that
/// only one of them asks the service. [`FileStore`](super::FileStore) and
/// [`MemoryStore`] do both.
///
/// Methods return boxed futures; implement them with `Box::pin(async move { ... })`:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use nemo_video::auth::{AnonymousCredentials, CredentialStore, SecretToken, StoreFuture};
///
/// /// Stands in for the app's database table `nemo_identities (client_id, json)`.
/// #[derive(Default)]
/// struct AppTable(Mutex<HashMap<String, String>>);
///
/// impl CredentialStore for AppTable {
///     fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<AnonymousCredentials>> {
///         Box::pin(async move {
///             let row = self.0.lock().unwrap().get(client_id).cloned();
///             Ok(row.and_then(|json| serde_json::from_str(&json).ok()))
///         })
///     }
///     fn save<'a>(&'a self, credentials: &'a AnonymousCredentials) -> StoreFuture<'a, ()> {
///         Box::pin(async move {
///             let json = serde_json::to_string(credentials).expect("credentials serialize");
///             self.0.lock().unwrap().insert(credentials.client_id.clone(), json);
///             Ok(())
///         })
///     }
///     fn remove<'a>(&'a self, client_id: &'a str, token: &'a SecretToken) -> StoreFuture<'a, ()> {
///         Box::pin(async move {
///             let mut table = self.0.lock().unwrap();
///             let stored: Option<AnonymousCredentials> =
///                 table.get(client_id).and_then(|json| serde_json::from_str(json).ok());
///             if stored.is_some_and(|creds| &creds.token == token) {
///                 table.remove(client_id);
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait CredentialStore: Send + Sync {
    /// The saved credentials of `client_id`, if any (expired ones included: the SDK decides).
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<AnonymousCredentials>>;

    /// Saves `credentials` under `credentials.client_id`, replacing that identity's entry and
    /// nothing else. Called after every new token (first fetch, refresh, re-authentication).
    fn save<'a>(&'a self, credentials: &'a AnonymousCredentials) -> StoreFuture<'a, ()>;

    /// Forgets `client_id`'s token if it is still `token` (the service rejected it). A newer
    /// token saved meanwhile by another process must be kept.
    fn remove<'a>(&'a self, client_id: &'a str, token: &'a SecretToken) -> StoreFuture<'a, ()>;

    /// The identity a client uses when none is configured, created on first use and the same
    /// for every client and process that shares the store. Default: `None`, so clients over
    /// this store must be given a client id.
    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    /// The service refused the default client id `refused` (HTTP 400): replace it with a new
    /// one (unless another process already did) and return the default now in force.
    /// Default: `None` (the refusal is reported).
    fn replace_default_client_id<'a>(
        &'a self,
        refused: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let _ = refused;
        Box::pin(async { Ok(None) })
    }

    /// Exclusive access to `client_id` for "read, fetch if still missing or expired, write",
    /// held until the returned guard is dropped. Other holders (other clients, other
    /// processes) wait. Default: no lock.
    fn lock<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, IdentityLock> {
        let _ = client_id;
        Box::pin(async { Ok(IdentityLock::none()) })
    }
}

/// A held [`CredentialStore::lock`]; dropping it releases the lock.
pub struct IdentityLock {
    _guard: Option<Box<dyn Send + Sync>>,
}

impl IdentityLock {
    /// A lock held for as long as `guard` lives (a file lock, a database advisory lock, a
    /// mutex guard, ...).
    pub fn new(guard: impl Send + Sync + 'static) -> IdentityLock {
        IdentityLock {
            _guard: Some(Box::new(guard)),
        }
    }

    /// No lock at all.
    pub fn none() -> IdentityLock {
        IdentityLock { _guard: None }
    }
}

impl fmt::Debug for IdentityLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityLock")
            .field("held", &self._guard.is_some())
            .finish()
    }
}

/// Lock shards of a [`MemoryStore`]: identities hash onto a fixed set of locks, so memory
/// stays bounded however many identities pass through; two identities on one shard only
/// take turns fetching.
const LOCK_SHARDS: usize = 64;

/// Identities kept in memory, shared by every client built over the same `Arc<MemoryStore>`.
///
/// Restore identities saved elsewhere with [`insert`](Self::insert); read what the clients
/// learned (new tokens after a refresh or re-authentication) with [`get`](Self::get).
/// Nothing survives the process: the service issues one anonymous token per client id per
/// 7 days, so save what [`get`](Self::get) returns if the identity must outlive it.
///
/// ```
/// use std::sync::Arc;
/// use nemo_video::auth::{AnonymousCredentials, MemoryStore};
///
/// let store = Arc::new(MemoryStore::new());
/// store.insert(AnonymousCredentials::new("user-42", "nmv_usr_..."));
/// let client = nemo_video::NemoClient::builder()
///     .credential_store(store.clone())
///     .client_id("user-42")
///     .build()?;
/// # let _ = client;
/// # Ok::<(), nemo_video::Error>(())
/// ```
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    shards: Vec<Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Default)]
struct MemoryInner {
    default_client_id: Option<String>,
    identities: HashMap<String, AnonymousCredentials>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("identities", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(MemoryInner::default()),
            shards: (0..LOCK_SHARDS)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }
    }

    /// Adds or replaces an identity (restoring one saved elsewhere).
    pub fn insert(&self, credentials: AnonymousCredentials) {
        self.with(|inner| {
            inner
                .identities
                .insert(credentials.client_id.clone(), credentials);
        });
    }

    /// The identity saved under `client_id`, if any.
    pub fn get(&self, client_id: &str) -> Option<AnonymousCredentials> {
        self.with(|inner| inner.identities.get(client_id).cloned())
    }

    /// Every identity in the store.
    pub fn identities(&self) -> Vec<AnonymousCredentials> {
        self.with(|inner| inner.identities.values().cloned().collect())
    }

    /// How many identities the store holds.
    pub fn len(&self) -> usize {
        self.with(|inner| inner.identities.len())
    }

    /// True when the store holds no identity.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryInner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }
}

impl CredentialStore for MemoryStore {
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<AnonymousCredentials>> {
        let found = self.get(client_id);
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(&'a self, credentials: &'a AnonymousCredentials) -> StoreFuture<'a, ()> {
        self.insert(credentials.clone());
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, client_id: &'a str, token: &'a SecretToken) -> StoreFuture<'a, ()> {
        self.with(|inner| {
            if inner
                .identities
                .get(client_id)
                .is_some_and(|creds| &creds.token == token)
            {
                inner.identities.remove(client_id);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        let id = self.with(|inner| {
            inner
                .default_client_id
                .get_or_insert_with(new_client_id)
                .clone()
        });
        Box::pin(async move { Ok(Some(id)) })
    }

    fn replace_default_client_id<'a>(
        &'a self,
        refused: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let id = self.with(|inner| {
            if inner.default_client_id.as_deref() == Some(refused) {
                inner.default_client_id = Some(new_client_id());
            }
            inner.default_client_id.clone()
        });
        Box::pin(async move { Ok(id) })
    }

    fn lock<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, IdentityLock> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client_id.hash(&mut hasher);
        let shard = Arc::clone(&self.shards[hasher.finish() as usize % LOCK_SHARDS]);
        Box::pin(async move { Ok(IdentityLock::new(shard.lock_owned().await)) })
    }
}
