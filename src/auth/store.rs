//! Where identities live: the [`CredentialStore`] contract and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lease::Lease;

use super::{new_client_id, AnonymousCredentials};

/// The future a [`CredentialStore`] method returns: boxed, so the trait can be used as
/// `Arc<dyn CredentialStore>` and shared by many clients.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Which identity: the service it belongs to (the API origin, such as
/// `https://mega-api-prod.nemovideo.ai`) and its client id. A token issued by one service is
/// never sent to another, so one store can serve production, a staging service and a local
/// simulator side by side.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    origin: String,
    client_id: String,
}

impl IdentityKey {
    /// The identity `client_id` at the service `origin` (scheme, host and port, as
    /// [`url::Origin::ascii_serialization`] writes it: `https://host` or `http://host:port`).
    ///
    /// ```
    /// use nemo_video::auth::IdentityKey;
    /// let key = IdentityKey::new("https://mega-api-prod.nemovideo.ai", "user-42");
    /// assert_eq!(key.client_id(), "user-42");
    /// ```
    pub fn new(origin: impl Into<String>, client_id: impl Into<String>) -> IdentityKey {
        IdentityKey {
            origin: origin.into(),
            client_id: client_id.into(),
        }
    }

    /// The identity `client_id` at the production service (`DEFAULT_BASE_URL`'s origin).
    ///
    /// ```
    /// let key = nemo_video::auth::IdentityKey::production("user-42");
    /// assert_eq!(key.origin(), "https://mega-api-prod.nemovideo.ai");
    /// ```
    pub fn production(client_id: impl Into<String>) -> IdentityKey {
        IdentityKey::new(super::default_origin(), client_id)
    }

    /// The service's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client id {} at {}", self.client_id, self.origin)
    }
}

/// An identity as a store holds it: the credentials and the version of the record. The
/// version is the store's own counter (1 for the first save, one more for each save), used
/// for compare-and-set.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StoredCredentials {
    /// The credentials.
    pub credentials: AnonymousCredentials,
    /// The record's version.
    pub version: u64,
}

impl StoredCredentials {
    /// Credentials read at `version`.
    pub fn new(credentials: AnonymousCredentials, version: u64) -> StoredCredentials {
        StoredCredentials {
            credentials,
            version,
        }
    }
}

/// What [`CredentialStore::save`] did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SaveOutcome {
    /// Saved; the record's new version.
    Saved {
        /// The new version.
        version: u64,
    },
    /// Not saved: the record is no longer at the expected version (someone saved since it
    /// was read). What it holds now, so the SDK can decide.
    Conflict {
        /// The record now, `None` when there is none.
        current: Option<StoredCredentials>,
    },
}

/// Where anonymous identities are kept, keyed by [`IdentityKey`] (service origin and client
/// id), for every client, process and machine that shares them.
///
/// The service issues **one anonymous token per client id per 7 days**, so the contract is
/// written around never losing one:
///
/// - **Records are versioned, and saves are compare-and-set.** [`save`](Self::save) writes
///   only if the record is still at `expected_version` (`None`: only if there is none yet),
///   and otherwise answers [`SaveOutcome::Conflict`] with what it holds now. A store must
///   never drop or overwrite another identity's record, nor a record it cannot read.
/// - **Nothing is deleted.** A token the service rejected is kept until a new one replaces
///   it: a rejection may be a gateway's stray 401, and the service may refuse a new token.
/// - **Leases coordinate the token request.** Before asking the service for a token, the SDK
///   reads the record (no lease needed when it holds a usable token), then asks for a lease
///   with [`try_lease`](Self::try_lease) and a time to live (default 30 s). While it holds
///   one, it renews it every third of that time ([`renew_lease`](Self::renew_lease)), and it
///   releases it ([`release_lease`](Self::release_lease)) when done. Under a lease the SDK
///   makes one token request and saves its answer, and calls only [`load`](Self::load) and
///   [`save`](Self::save): at most a few minutes (`auth::MAX_LEASE_HOLD`), and it never asks
///   for a second lease while holding one. A holder that dies stops renewing, so its lease
///   lapses after its time to live and another holder takes over. Grant leases as
///   expiring records (Redis `SET NX PX`, a row with a deadline), not as a transaction or a
///   row lock held open: `load` and `save` run while the lease is held, possibly on another
///   connection of a pool, and must not wait for it.
/// - **Time limits.** The SDK limits every call (default 10 s,
///   [`NemoClientBuilder::store_timeout`](crate::NemoClientBuilder::store_timeout)); a call
///   that runs out fails the SDK call with [`Error::StoreTimeout`](crate::Error::StoreTimeout).
///
/// [`FileStore`](super::FileStore) (the default), [`MemoryStore`] and
/// [`RedisStore`](super::RedisStore) (feature `redis`) implement all of it. An app store
/// over its own database implements `load` and `save`, and the lease methods when several
/// processes share it (without them, each process asks the service on its own). Methods
/// return boxed futures; implement them with `Box::pin(async move { ... })`:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use nemo_video::auth::{
///     AnonymousCredentials, CredentialStore, IdentityKey, SaveOutcome, StoreFuture,
///     StoredCredentials,
/// };
///
/// /// Stands in for the app's table `nemo_identities (origin, client_id, version, json)`.
/// #[derive(Default)]
/// struct AppTable(Mutex<HashMap<IdentityKey, (u64, String)>>);
///
/// impl CredentialStore for AppTable {
///     fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
///         Box::pin(async move {
///             let row = self.0.lock().unwrap().get(key).cloned();
///             Ok(row.and_then(|(version, json)| {
///                 let credentials = serde_json::from_str(&json).ok()?;
///                 Some(StoredCredentials::new(credentials, version))
///             }))
///         })
///     }
///     fn save<'a>(
///         &'a self,
///         key: &'a IdentityKey,
///         credentials: &'a AnonymousCredentials,
///         expected_version: Option<u64>,
///     ) -> StoreFuture<'a, SaveOutcome> {
///         Box::pin(async move {
///             // UPDATE ... SET version = version + 1, json = ? WHERE version = ?
///             let mut table = self.0.lock().unwrap();
///             let current = table.get(key).map(|(version, _)| *version);
///             if current != expected_version {
///                 let current = table.get(key).and_then(|(version, json)| {
///                     Some(StoredCredentials::new(serde_json::from_str(json).ok()?, *version))
///                 });
///                 return Ok(SaveOutcome::Conflict { current });
///             }
///             let version = current.unwrap_or(0) + 1;
///             let json = serde_json::to_string(credentials).expect("credentials serialize");
///             table.insert(key.clone(), (version, json));
///             Ok(SaveOutcome::Saved { version })
///         })
///     }
/// }
/// ```
pub trait CredentialStore: Send + Sync {
    /// The record of `key`, if any (expired tokens included: the service decides). A record
    /// that exists but cannot be read is an error, never `None`: `None` would let the SDK
    /// ask for a new token, and the service refuses one within the week.
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>>;

    /// Saves `credentials` as `key`'s record if the record is still at `expected_version`
    /// (`None`: if there is no record), replacing that record and nothing else.
    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome>;

    /// The client id a client uses when none is configured, created on first use and the
    /// same for every client and process that shares the store (one per store, whatever the
    /// service). Default: `None`, so clients over this store must be given a client id.
    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    /// The service said the default client id `refused` is missing or invalid (HTTP 400
    /// naming the client id): replace it with a new one (unless another process already did)
    /// and return the default now in force. Default: `None` (the refusal is reported).
    fn replace_default_client_id<'a>(
        &'a self,
        refused: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let _ = refused;
        Box::pin(async { Ok(None) })
    }

    /// A lease on `key` for `ttl`, if nobody else holds one; `None` when someone does (the
    /// SDK reads the record again and retries shortly). Default: always granted, with no
    /// coordination between processes.
    fn try_lease<'a>(
        &'a self,
        key: &'a IdentityKey,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move { Ok(Some(Lease::new(key.to_string(), ttl))) })
    }

    /// Extends `lease` by its time to live from now; `false` when it is no longer held (it
    /// lapsed and someone else took it). Default: `true`.
    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let _ = lease;
        Box::pin(async { Ok(true) })
    }

    /// Ends `lease` (only if it is still this holder's). Default: drops it.
    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        drop(lease);
        Box::pin(async { Ok(()) })
    }
}

/// Identities kept in memory, shared by every client built over the same `Arc<MemoryStore>`.
///
/// Restore identities saved elsewhere with [`insert`](Self::insert); read what the clients
/// learned (new tokens) with [`get`](Self::get). Leases are per identity (a map of holders
/// and deadlines, emptied as leases end), so one identity's slow token request never delays
/// another's. Nothing survives the process: the service issues one anonymous token per
/// client id per 7 days, so save what [`get`](Self::get) returns if the identity must outlive
/// it.
///
/// ```
/// use std::sync::Arc;
/// use nemo_video::auth::{AnonymousCredentials, IdentityKey, MemoryStore};
///
/// let store = Arc::new(MemoryStore::new());
/// store.insert(
///     IdentityKey::production("user-42"),
///     AnonymousCredentials::new("user-42", "nmv_usr_..."),
/// );
/// let client = nemo_video::NemoClient::builder()
///     .credential_store(store.clone())
///     .client_id("user-42")
///     .build()?;
/// # let _ = client;
/// # Ok::<(), nemo_video::Error>(())
/// ```
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    default_client_id: Option<String>,
    identities: HashMap<IdentityKey, StoredCredentials>,
    /// Held leases: holder and deadline. An entry leaves when its lease is released, or
    /// when a lapsed one is taken over.
    leases: HashMap<String, (String, Instant)>,
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
        }
    }

    /// Adds or replaces an identity (restoring one saved elsewhere).
    pub fn insert(&self, key: IdentityKey, credentials: AnonymousCredentials) {
        self.with(|inner| {
            let version = inner.identities.get(&key).map_or(0, |s| s.version) + 1;
            inner
                .identities
                .insert(key, StoredCredentials::new(credentials, version));
        });
    }

    /// The identity saved under `key`, if any.
    pub fn get(&self, key: &IdentityKey) -> Option<AnonymousCredentials> {
        self.with(|inner| inner.identities.get(key).map(|s| s.credentials.clone()))
    }

    /// Every identity in the store, with its key.
    pub fn identities(&self) -> Vec<(IdentityKey, AnonymousCredentials)> {
        self.with(|inner| {
            inner
                .identities
                .iter()
                .map(|(key, stored)| (key.clone(), stored.credentials.clone()))
                .collect()
        })
    }

    /// How many identities the store holds.
    pub fn len(&self) -> usize {
        self.with(|inner| inner.identities.len())
    }

    /// True when the store holds no identity.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many leases are held right now (for checks that none is left behind).
    pub fn leases_held(&self) -> usize {
        let now = Instant::now();
        self.with(|inner| {
            inner
                .leases
                .values()
                .filter(|(_, until)| *until > now)
                .count()
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemoryInner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }
}

impl CredentialStore for MemoryStore {
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        let found = self.with(|inner| inner.identities.get(key).cloned());
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        let outcome = self.with(|inner| {
            let current = inner.identities.get(key);
            if current.map(|s| s.version) != expected_version {
                return SaveOutcome::Conflict {
                    current: current.cloned(),
                };
            }
            let version = expected_version.unwrap_or(0) + 1;
            inner.identities.insert(
                key.clone(),
                StoredCredentials::new(credentials.clone(), version),
            );
            SaveOutcome::Saved { version }
        });
        Box::pin(async move { Ok(outcome) })
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

    fn try_lease<'a>(
        &'a self,
        key: &'a IdentityKey,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        let now = Instant::now();
        let name = key.to_string();
        let granted = self.with(|inner| {
            if inner
                .leases
                .get(&name)
                .is_some_and(|(_, until)| *until > now)
            {
                return None;
            }
            let lease = Lease::new(name.clone(), ttl);
            inner
                .leases
                .insert(name, (lease.holder().to_string(), now + ttl));
            Some(lease)
        });
        Box::pin(async move { Ok(granted) })
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let renewed = self.with(|inner| match inner.leases.get_mut(lease.key()) {
            Some((holder, until)) if holder == lease.holder() && *until > now => {
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
                .is_some_and(|(holder, _)| holder == lease.holder())
            {
                inner.leases.remove(lease.key());
            }
        });
        Box::pin(async { Ok(()) })
    }
}
