//! Identities in Redis, for workers on many machines (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::redis_kv::{Put, Record, RedisKv};

use super::store::{CredentialStore, IdentityKey, SaveOutcome, StoreFuture, StoredCredentials};
use super::{new_client_id, AnonymousCredentials};

/// Identities in a Redis database, shared by every worker of a fleet, on any number of
/// machines (feature `redis`).
///
/// It implements the whole [`CredentialStore`] contract over one Redis server:
/// - an identity is a hash `<prefix>:identity:<origin>:<client id>` with `version` and `data`
///   (the credentials as JSON); saves are compare-and-set on `version`, in a Lua script;
/// - a lease is `<prefix>:identity-lease:<origin>:<client id>`, taken with `SET NX PX`,
///   renewed and released by scripts that act only while it still holds this holder's id,
///   and lapsing by itself when its holder dies;
/// - the default client id is `<prefix>:default-client-id`, set once with `SET NX`.
///
/// Nothing is ever deleted. Connections come from the `redis` crate's connection manager,
/// which reconnects by itself; the first call connects.
///
/// ```no_run
/// use std::sync::Arc;
/// use nemo_video::auth::RedisStore;
///
/// let store = Arc::new(RedisStore::new("redis://10.0.0.5:6379/0")?);
/// let server = nemo_video::NemoClient::builder().credential_store(store).build()?;
/// let alice = server.for_identity("alice-0b7c6a52")?;
/// # let _ = alice;
/// # Ok::<(), nemo_video::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisStore {
    kv: Arc<RedisKv>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.kv.shown_url())
            .finish_non_exhaustive()
    }
}

const LOAD: &str = "load the identity from Redis";
const SAVE: &str = "save the identity to Redis";
const LEASE: &str = "take the identity's lease in Redis";
const RENEW: &str = "renew the identity's lease in Redis";
const RELEASE: &str = "release the identity's lease in Redis";
const DEFAULT_ID: &str = "read the default client id from Redis";

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[:password@]host[:port][/db]`), with key
    /// prefix `nemo`. Fails with [`Error::Config`] for a URL the `redis` crate cannot use;
    /// does not connect yet.
    pub fn new(url: &str) -> Result<RedisStore> {
        RedisStore::with_prefix(url, "nemo")
    }

    /// A store whose keys start with `prefix` instead of `nemo` (several apps in one
    /// database, or one test per prefix).
    ///
    /// ```no_run
    /// let store = nemo_video::auth::RedisStore::with_prefix("redis://127.0.0.1/0", "bot-eu")?;
    /// # let _ = store;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn with_prefix(url: &str, prefix: &str) -> Result<RedisStore> {
        Ok(RedisStore {
            kv: Arc::new(RedisKv::open(url, prefix)?),
        })
    }

    fn record_key(&self, key: &IdentityKey) -> String {
        self.kv.key(&["identity", key.origin(), key.client_id()])
    }

    fn lease_key(&self, key: &IdentityKey) -> String {
        self.kv
            .key(&["identity-lease", key.origin(), key.client_id()])
    }

    fn decode(
        &self,
        operation: &'static str,
        key: &IdentityKey,
        record: Record,
    ) -> Result<StoredCredentials> {
        let credentials: AnonymousCredentials = serde_json::from_str(&record.data).map_err(|err| {
            Error::store(
                operation,
                format!("the record of {key} is not in a form this version understands ({err}); it is kept as it is"),
            )
        })?;
        Ok(StoredCredentials::new(credentials, record.version))
    }
}

impl CredentialStore for RedisStore {
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        Box::pin(async move {
            match self.kv.get(LOAD, &self.record_key(key)).await? {
                Some(record) => self.decode(LOAD, key, record).map(Some),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        Box::pin(async move {
            let data = serde_json::to_string(credentials)
                .map_err(|err| Error::store(SAVE, err.to_string()))?;
            match self
                .kv
                .put(SAVE, &self.record_key(key), expected_version, &data)
                .await?
            {
                Put::Saved(version) => Ok(SaveOutcome::Saved { version }),
                Put::Conflict(None) => Ok(SaveOutcome::Conflict { current: None }),
                Put::Conflict(Some(record)) => Ok(SaveOutcome::Conflict {
                    current: Some(self.decode(SAVE, key, record)?),
                }),
            }
        })
    }

    fn default_client_id(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let id = self
                .kv
                .get_or_set(
                    DEFAULT_ID,
                    &self.kv.key(&["default-client-id"]),
                    &new_client_id(),
                )
                .await?;
            Ok(Some(id))
        })
    }

    fn replace_default_client_id<'a>(
        &'a self,
        refused: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.kv
                .replace(
                    DEFAULT_ID,
                    &self.kv.key(&["default-client-id"]),
                    refused,
                    &new_client_id(),
                )
                .await
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a IdentityKey,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let lease = Lease::new(self.lease_key(key), ttl);
            let granted = self
                .kv
                .try_lease(LEASE, lease.key(), lease.holder(), ttl)
                .await?;
            Ok(granted.then_some(lease))
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
}
