//! Leases: time-limited, exclusive claims that a store hands out, so that of all the clients,
//! processes and machines sharing it, one at a time does a piece of work (asks the service
//! for an identity's token, runs a job).
//!
//! Policy: a lease is held by one holder (a random id chosen when it is granted) for a time
//! to live. The SDK renews a lease it holds well before it lapses (every third of its time to
//! live) for as long as the work runs, and releases it when the work ends. A holder that dies
//! stops renewing: its lease lapses after at most its time to live, and another may take it.
//! A lease alone never decides what is written: every save is also a compare-and-set on the
//! record's version, so a holder whose lease lapsed while it was stalled cannot overwrite
//! what a newer holder saved.
//!
//! Stores grant leases in their own way: [`RedisStore`](crate::auth::RedisStore) with
//! `SET NX PX` and compare-and-delete scripts, [`FileStore`](crate::auth::FileStore) with an
//! operating-system file lock (which ends the moment its process dies, whatever the time to
//! live), [`MemoryStore`](crate::auth::MemoryStore) with a map of holders and deadlines. Job
//! stores ([`crate::job::JobStore`]) lease jobs the same ways, and keep who holds each lease
//! ([`crate::job::LeaseHolder`]: process id and host).

use std::fmt;
use std::time::Duration;

/// A granted lease. Stores create it ([`Lease::new`]) when they grant one; the SDK hands it
/// back to the store to renew and to release it.
pub struct Lease {
    key: String,
    holder: String,
    ttl: Duration,
    guard: Option<Box<dyn Send + Sync>>,
}

impl Lease {
    /// A lease on `key` (the store's name for what is leased) for `ttl`, with a new random
    /// holder id.
    ///
    /// ```
    /// use std::time::Duration;
    /// let lease = nemo_video::lease::Lease::new("identity:user-42", Duration::from_secs(30));
    /// assert_eq!(lease.key(), "identity:user-42");
    /// assert_eq!(lease.holder().len(), 36);
    /// ```
    pub fn new(key: impl Into<String>, ttl: Duration) -> Lease {
        Lease {
            key: key.into(),
            holder: uuid::Uuid::new_v4().to_string(),
            ttl,
            guard: None,
        }
    }

    /// Sets the holder id (for a store that chose its own, e.g. a database row's token).
    pub fn with_holder(mut self, holder: impl Into<String>) -> Lease {
        self.holder = holder.into();
        self
    }

    /// Keeps `guard` alive for as long as the lease: a file lock, a mutex guard, anything
    /// released by being dropped. Dropped on release (or when the lease itself is dropped).
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Lease {
        self.guard = Some(Box::new(guard));
        self
    }

    /// What is leased, in the store's own terms.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder id: unique to this grant.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The time to live the lease was granted (and is renewed) with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the SDK renews a lease with time to live `ttl`: every third of it (at least
    /// every 10 ms), so that two renewals can fail before it lapses.
    pub fn renew_interval(ttl: Duration) -> Duration {
        (ttl / 3).max(Duration::from_millis(10))
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .field("guard", &self.guard.is_some())
            .finish()
    }
}
