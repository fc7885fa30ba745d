//! The token of one identity: shared by every client of it in the process, fetched in a task
//! of its own that no caller can cancel, never dropped before a new one replaces it, and
//! coordinated with other processes and machines through the store's lease.
//!
//! The rules, in the order they apply when a client needs a token:
//! 1. A token this process holds for the identity, not rejected and not expired by the local
//!    clock, is used. No store call, no lock.
//! 2. Otherwise one *flight* runs for the identity (callers that arrive meanwhile wait for
//!    it and share its outcome). It runs in a task of its own: a caller dropped while it runs
//!    (a timeout around the call, a handler whose client went away) does not stop it, so a
//!    token the service issued is always saved.
//! 3. The flight reads the store. A usable token saved there (by another process) is used.
//! 4. It asks the service only when the service could issue a token: not while a refusal
//!    (429) is remembered for the identity, here or in the store, and not for a token that
//!    expired by this machine's clock less than 7 days after it was issued (the service
//!    issues one per client id per 7 days, so it must refuse, and its own clock decides
//!    whether the token still works: it is used).
//! 5. To ask, it takes the store's lease on the identity (polling, and re-reading the store
//!    meanwhile), renews it while it works, and under it makes one token request and saves
//!    the answer by compare-and-set.
//! 6. A refused request (429) is remembered, and the current token, even one the service
//!    rejected once (a stray 401 from a gateway), is used again: the service decides. Only
//!    when that one is rejected too is the call's error [`Error::TokenQuotaExceeded`]. With
//!    no token at all (this client id's first), it waits once for the server's wait, reads
//!    the store again, and asks once more.
//! 7. A save that fails is retried; the token is used meanwhile by every client of the
//!    identity in this process, the app is told through its identity-event callback, and
//!    the save goes on being retried in the background until it succeeds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::error::{ApiInfo, Error, Result, DEFAULT_RATE_LIMIT_WAIT};
use crate::lease::Lease;

use super::store::{CredentialStore, IdentityKey, SaveOutcome, StoredCredentials};
use super::{
    unix_now, AnonymousCredentials, IdentityEvent, SecretToken, MAX_LEASE_HOLD, MAX_LEASE_WAIT,
    QUOTA_WINDOW, REFUSAL_MEMORY,
};

/// The one request the identity layer needs from below: `POST /api/auth/anonymous-token`
/// with `X-Client-Id`, answering the envelope's `data`. The transport implements it; this
/// trait is what keeps identities from depending on the transport.
///
/// A 429 must come back as [`Error::RateLimited`], not waited on: the identity layer owns the
/// one wait and the one replay.
pub(crate) trait TokenEndpoint: Send + Sync {
    fn request_token<'a>(
        &'a self,
        client_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;
}

/// The app's callback for identity events.
pub(crate) type IdentityEventFn = Arc<dyn Fn(&IdentityEvent<'_>) + Send + Sync>;

/// Settings of an [`Identity`].
#[derive(Clone)]
pub(crate) struct IdentityOptions {
    /// The API origin identities belong to.
    pub(crate) origin: String,
    /// The longest server-requested wait honoured on a 429; longer means "not this week".
    pub(crate) max_server_wait: Duration,
    /// Limit on every call to the store.
    pub(crate) store_timeout: Duration,
    /// Time to live of the leases this client takes.
    pub(crate) lease_ttl: Duration,
    /// The longest a lease is renewed for one token request and its saves.
    pub(crate) lease_hold: Duration,
    pub(crate) on_event: Option<IdentityEventFn>,
}

impl IdentityOptions {
    fn tell(&self, event: IdentityEvent<'_>) {
        if let Some(callback) = &self.on_event {
            callback(&event);
        }
    }
}

/// Outcome of [`Identity::invalidate`].
pub(crate) enum Invalidated {
    /// A new token can be looked for: replay the request.
    Refreshable,
    /// The token was fixed by the user: surface the error.
    Fixed,
}

/// The token to send, and why it was chosen.
#[derive(Clone)]
pub(crate) struct Chosen {
    pub(crate) token: SecretToken,
    /// Set when the service refused a new token and this one (perhaps rejected once) is
    /// used again: if the service rejects it now, nothing it accepts is left, and the call's
    /// error is [`Error::TokenQuotaExceeded`] with these details of the refusal.
    pub(crate) after_refusal: Option<Box<ApiInfo>>,
}

impl Chosen {
    fn plain(token: SecretToken) -> Chosen {
        Chosen {
            token,
            after_refusal: None,
        }
    }
}

/// A client's view of its identity: what was configured, and (once known) the identity's
/// shared state.
pub(crate) struct Identity {
    static_token: Option<SecretToken>,
    /// The client id the user chose; `None` means the store's default identity.
    fixed_client_id: Option<String>,
    store: Arc<dyn CredentialStore>,
    options: IdentityOptions,
    cell: Mutex<Option<Arc<Cell>>>,
}

/// What one identity (origin and client id) is in this process, shared by all its clients.
struct Cell {
    key: IdentityKey,
    state: Mutex<CellState>,
    /// The flight in progress, if any. The outcome is `None` until it lands.
    flight: Mutex<Option<FlightOutcome>>,
    /// A save of an unsaved token is being retried in the background.
    saver_running: AtomicBool,
    /// Woken when a flight lands or a save succeeds (see [`Identity::settle`]).
    settled: tokio::sync::Notify,
}

type FlightOutcome = tokio::sync::watch::Receiver<Option<Arc<Result<Chosen>>>>;

#[derive(Default)]
struct CellState {
    /// The best token known, with its record's version in the store when it is saved there.
    current: Option<AnonymousCredentials>,
    version: Option<u64>,
    /// `current` is not (yet) in the store.
    unsaved: bool,
    /// The service rejected this token once (1001/401). It is kept, and used again only when
    /// the service refuses a new one.
    suspect: Option<SecretToken>,
    /// No new token is asked for before this (Unix seconds): the service refused one.
    refused_until: u64,
    /// The details of that refusal.
    refusal: Option<Box<ApiInfo>>,
    /// The anonymous user id (for the registration link).
    user_id: Option<String>,
}

impl CellState {
    fn usable(&self, now: u64) -> Option<SecretToken> {
        let current = self.current.as_ref()?;
        (Some(&current.token) != self.suspect.as_ref() && current.is_valid_at(now))
            .then(|| current.token.clone())
    }

    /// Takes what the store holds when it is better than what this process knows: anything
    /// at all when it knows nothing, a different token that is valid (another process
    /// replaced the one known here), or the same token at a newer version.
    fn merge(&mut self, stored: Option<StoredCredentials>, now: u64) {
        let Some(stored) = stored else {
            return;
        };
        let refused_until = stored.credentials.refresh_not_before.unwrap_or(0);
        if refused_until > self.refused_until {
            self.refused_until = refused_until;
        }
        if let Some(user_id) = &stored.credentials.user_id {
            self.user_id = Some(user_id.clone());
        }
        let take = match &self.current {
            None => true,
            Some(current) if current.token == stored.credentials.token => {
                self.version = Some(stored.version);
                self.unsaved = false;
                false
            }
            Some(current) => {
                stored.credentials.is_valid_at(now)
                    && Some(&stored.credentials.token) != self.suspect.as_ref()
                    && (!self.unsaved
                        || stored.credentials.expires_at_unix() >= current.expires_at_unix())
            }
        };
        if take {
            self.version = Some(stored.version);
            self.unsaved = false;
            self.current = Some(stored.credentials);
        }
    }
}

/// Every identity of this process, by key; entries go when no client holds them.
fn cells() -> &'static Mutex<HashMap<IdentityKey, Weak<Cell>>> {
    static CELLS: OnceLock<Mutex<HashMap<IdentityKey, Weak<Cell>>>> = OnceLock::new();
    CELLS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cell_for(key: IdentityKey) -> Arc<Cell> {
    let mut cells = cells().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cell) = cells.get(&key).and_then(Weak::upgrade) {
        return cell;
    }
    // Forget identities no client holds any more, so the map stays as small as the set of
    // identities in use (amortised: only when it may have doubled).
    if cells.len() >= 64 && cells.len().is_power_of_two() {
        cells.retain(|_, cell| cell.strong_count() > 0);
    }
    let cell = Arc::new(Cell {
        key: key.clone(),
        state: Mutex::new(CellState::default()),
        flight: Mutex::new(None),
        saver_running: AtomicBool::new(false),
        settled: tokio::sync::Notify::new(),
    });
    cells.insert(key, Arc::downgrade(&cell));
    cell
}

impl Cell {
    fn with<R>(&self, f: impl FnOnce(&mut CellState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    fn busy(&self) -> bool {
        let flying = self
            .flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|outcome| outcome.borrow().is_none());
        flying || self.with(|state| state.unsaved)
    }
}

/// Runs one store call under the SDK's time limit.
async fn store_call<T>(
    options: &IdentityOptions,
    operation: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(options.store_timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::StoreTimeout {
            operation,
            after: options.store_timeout,
        }),
    }
}

impl Identity {
    pub(crate) fn new(
        static_token: Option<SecretToken>,
        fixed_client_id: Option<String>,
        store: Arc<dyn CredentialStore>,
        options: IdentityOptions,
    ) -> Identity {
        Identity {
            static_token,
            fixed_client_id,
            store,
            options,
            cell: Mutex::new(None),
        }
    }

    /// An identity that is never asked for a token: the one of the transport that makes the
    /// (unauthenticated) token requests themselves.
    pub(crate) fn detached() -> Identity {
        Identity::new(
            None,
            None,
            Arc::new(super::MemoryStore::new()),
            IdentityOptions {
                origin: String::new(),
                max_server_wait: Duration::ZERO,
                store_timeout: Duration::ZERO,
                lease_ttl: Duration::ZERO,
                lease_hold: Duration::ZERO,
                on_event: None,
            },
        )
    }

    pub(crate) fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }

    pub(crate) fn options(&self) -> &IdentityOptions {
        &self.options
    }

    pub(crate) fn fixed_client_id(&self) -> Option<&str> {
        self.fixed_client_id.as_deref()
    }

    pub(crate) fn static_token(&self) -> Option<&SecretToken> {
        self.static_token.as_ref()
    }

    fn known_cell(&self) -> Option<Arc<Cell>> {
        self.cell.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The identity's shared state, resolving the client id on first use.
    async fn cell(&self) -> Result<Arc<Cell>> {
        if let Some(cell) = self.known_cell() {
            return Ok(cell);
        }
        let client_id = match &self.fixed_client_id {
            Some(id) => id.clone(),
            None => {
                let id = store_call(
                    &self.options,
                    "read the default client id from the credential store",
                    self.store.default_client_id(),
                )
                .await?
                .ok_or_else(|| {
                    Error::config(
                        "this credential store has no default identity: give each client its client id with NemoClientBuilder::client_id",
                    )
                })?;
                super::validate_client_id(&id)?;
                id
            }
        };
        let cell = cell_for(IdentityKey::new(self.options.origin.clone(), client_id));
        let mut slot = self.cell.lock().unwrap_or_else(|e| e.into_inner());
        Ok(slot.get_or_insert(cell).clone())
    }

    /// The token to send, fetching it (once for all waiting callers) when needed.
    pub(crate) async fn token(&self, endpoint: &Arc<dyn TokenEndpoint>) -> Result<Chosen> {
        if let Some(token) = &self.static_token {
            return Ok(Chosen::plain(token.clone()));
        }
        let mut regenerated = false;
        loop {
            let cell = self.cell().await?;
            if let Some(token) = cell.with(|state| state.usable(unix_now())) {
                return Ok(Chosen::plain(token));
            }
            match self.join_flight(&cell, endpoint).await {
                Err(Error::MissingClientId { info })
                    if !regenerated && self.fixed_client_id.is_none() =>
                {
                    // The service says the generated default id is missing or invalid: make
                    // a new default (once). A client id the app chose is an end user's
                    // identity, so its refusal is reported instead.
                    let refused = cell.key.client_id().to_string();
                    let fresh = store_call(
                        &self.options,
                        "replace the default client id in the credential store",
                        self.store.replace_default_client_id(&refused),
                    )
                    .await?;
                    match fresh {
                        Some(fresh) if fresh != refused => {
                            super::validate_client_id(&fresh)?;
                            tracing::warn!("the service refused the client id; using a new one");
                            regenerated = true;
                            let cell =
                                cell_for(IdentityKey::new(self.options.origin.clone(), fresh));
                            *self.cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(cell);
                        }
                        _ => return Err(Error::MissingClientId { info }),
                    }
                }
                other => return other,
            }
        }
    }

    /// Waits for the identity's flight, starting one if none is in the air.
    async fn join_flight(
        &self,
        cell: &Arc<Cell>,
        endpoint: &Arc<dyn TokenEndpoint>,
    ) -> Result<Chosen> {
        let mut outcome = {
            let mut flight = cell.flight.lock().unwrap_or_else(|e| e.into_inner());
            match flight.as_ref() {
                // In the air: wait for it with the others.
                Some(outcome) if outcome.borrow().is_none() => outcome.clone(),
                // None yet, or one that landed before this caller came: a new one.
                _ => {
                    let (sender, receiver) = tokio::sync::watch::channel(None);
                    *flight = Some(receiver.clone());
                    let flight = Flight {
                        cell: Arc::clone(cell),
                        store: Arc::clone(&self.store),
                        options: self.options.clone(),
                        endpoint: Arc::clone(endpoint),
                    };
                    let cell = Arc::clone(cell);
                    tokio::spawn(async move {
                        let result = flight.run().await;
                        let _ = sender.send(Some(Arc::new(result)));
                        cell.settled.notify_waiters();
                    });
                    receiver
                }
            }
        };
        let landed = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                Error::store(
                    "get a token",
                    "the token request's task ended unexpectedly (its runtime is shutting down)",
                )
            })?
            .clone();
        match landed.as_deref() {
            Some(Ok(chosen)) => Ok(chosen.clone()),
            Some(Err(err)) => Err(err.duplicate()),
            None => Err(Error::store(
                "get a token",
                "the token request ended without an outcome",
            )),
        }
    }

    /// `rejected` was answered 1001/401: it becomes suspect (kept, and used again only if the
    /// service refuses a new token), so the next request looks for a new one.
    pub(crate) fn invalidate(&self, rejected: &SecretToken) -> Invalidated {
        if self.static_token.is_some() {
            return Invalidated::Fixed;
        }
        if let Some(cell) = self.known_cell() {
            cell.with(|state| {
                if state.current.as_ref().is_some_and(|c| &c.token == rejected) {
                    state.suspect = Some(rejected.clone());
                }
            });
        }
        Invalidated::Refreshable
    }

    /// The service accepted `token` (used again after a refused refresh): it is no longer
    /// suspect.
    pub(crate) fn accepted(&self, token: &SecretToken) {
        if let Some(cell) = self.known_cell() {
            cell.with(|state| {
                if state.suspect.as_ref() == Some(token) {
                    state.suspect = None;
                }
            });
        }
    }

    /// The client id in use: the configured one, else the store's default identity.
    pub(crate) async fn client_id(&self) -> Result<String> {
        if let Some(id) = &self.fixed_client_id {
            return Ok(id.clone());
        }
        Ok(self.cell().await?.key.client_id().to_string())
    }

    /// The client id, when already known without asking the store.
    pub(crate) fn known_client_id(&self) -> Option<String> {
        self.fixed_client_id.clone().or_else(|| {
            self.known_cell()
                .map(|cell| cell.key.client_id().to_string())
        })
    }

    /// The credentials in use, or else those the store holds for this identity.
    pub(crate) async fn credentials(&self) -> Option<AnonymousCredentials> {
        if self.static_token.is_some() {
            return None;
        }
        let cell = self.cell().await.ok()?;
        if let Some(current) = cell.with(|state| state.current.clone()) {
            return Some(current);
        }
        let stored = store_call(
            &self.options,
            "load the identity from the credential store",
            self.store.load(&cell.key),
        )
        .await
        .ok()
        .flatten()?;
        cell.with(|state| state.merge(Some(stored), unix_now()));
        cell.with(|state| state.current.clone())
    }

    /// Remembers a user id seen in a response (for the registration link).
    pub(crate) fn note_user_id(&self, user_id: &str) {
        if let Some(cell) = self.known_cell() {
            cell.with(|state| {
                if state.user_id.as_deref() != Some(user_id) {
                    state.user_id = Some(user_id.to_string());
                }
            });
        }
    }

    /// The anonymous user id (prefix `anon_`), when known.
    pub(crate) fn known_anonymous_user_id(&self) -> Option<String> {
        self.known_cell()?
            .with(|state| state.user_id.clone())
            .filter(|id| id.starts_with("anon_"))
    }

    /// True while a token request or a save of this identity is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.known_cell().is_some_and(|cell| cell.busy())
    }

    /// Waits until no token request or save of this identity is in flight, for at most
    /// `limit`; true when none is.
    pub(crate) async fn settle(&self, limit: Duration) -> bool {
        let Some(cell) = self.known_cell() else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = cell.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !cell.busy() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !cell.busy();
            }
        }
    }
}

/// Everything a flight needs, owned, so it can run in a task of its own.
struct Flight {
    cell: Arc<Cell>,
    store: Arc<dyn CredentialStore>,
    options: IdentityOptions,
    endpoint: Arc<dyn TokenEndpoint>,
}

/// What to do after reading the store.
enum Decision {
    /// Use this token.
    Use(Chosen),
    /// Ask the service for a new one.
    Ask,
    /// Asking would be refused, and there is no token to fall back on.
    Refused(Box<ApiInfo>),
}

/// What one token request under the lease ended with.
enum Asked {
    Got(Chosen),
    RateLimited {
        retry_after: Option<Duration>,
        info: Box<ApiInfo>,
    },
}

impl Flight {
    fn key(&self) -> &IdentityKey {
        &self.cell.key
    }

    async fn load(&self) -> Result<Option<StoredCredentials>> {
        store_call(
            &self.options,
            "load the identity from the credential store",
            self.store.load(self.key()),
        )
        .await
    }

    /// Reads the store into the cell, then decides.
    async fn look(&self) -> Result<(Decision, Option<u64>)> {
        let stored = self.load().await?;
        let stored_version = stored.as_ref().map(|s| s.version);
        let now = unix_now();
        let decision = self.cell.with(|state| {
            state.merge(stored, now);
            if let Some(token) = state.usable(now) {
                return Decision::Use(Chosen::plain(token));
            }
            let refused_recently = state.refused_until > now;
            let current = state.current.as_ref();
            // Expired by this machine's clock, but issued less than 7 days ago: the service
            // cannot issue another yet, and its clock decides whether this one still works.
            let quota_closed = current.is_some_and(|c| {
                Some(&c.token) != state.suspect.as_ref()
                    && now < c.obtained_at.saturating_add(QUOTA_WINDOW.as_secs())
            });
            if !(refused_recently || quota_closed) {
                return Decision::Ask;
            }
            let refusal = state.refusal.clone().unwrap_or_else(|| {
                Box::new(ApiInfo {
                    http_status: Some(429),
                    message: Some(
                        "one anonymous token per client id per 7 days; this one's was already issued"
                            .to_string(),
                    ),
                    ..ApiInfo::default()
                })
            });
            match current {
                Some(current) => Decision::Use(Chosen {
                    token: current.token.clone(),
                    after_refusal: refused_recently.then_some(refusal),
                }),
                None => Decision::Refused(refusal),
            }
        });
        Ok((decision, stored_version))
    }

    async fn run(self) -> Result<Chosen> {
        let mut waited_once = false;
        loop {
            match self.look().await?.0 {
                Decision::Use(chosen) => return Ok(chosen),
                Decision::Refused(info) => return Err(self.quota_exceeded(info)),
                Decision::Ask => {}
            }
            let Some(lease) = self.acquire().await? else {
                // Another holder saved a usable token meanwhile.
                continue;
            };
            let asked = self.with_renewal(&lease, self.ask_under_lease()).await;
            if let Err(err) = store_call(
                &self.options,
                "release the identity's lease in the credential store",
                self.store.release_lease(lease),
            )
            .await
            {
                tracing::warn!(error = %err, "could not release the identity's lease; it lapses by itself");
            }
            match asked? {
                None => continue,
                Some(Asked::Got(chosen)) => return Ok(chosen),
                Some(Asked::RateLimited { retry_after, info }) => {
                    let wait = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
                    if let Some(chosen) = self.remember_refusal(wait, &info).await {
                        return Ok(chosen);
                    }
                    // No token at all (this client id's first): another process may have it
                    // and be about to save it. Wait once, read the store again, ask once more.
                    if waited_once || wait > self.options.max_server_wait {
                        // Refused for good: no client of this identity in this process asks
                        // again for a while.
                        self.cell.with(|state| {
                            state.refused_until = state.refused_until.max(refusal_deadline(wait));
                            state.refusal = Some(info.clone());
                        });
                        return Err(self.quota_exceeded(info));
                    }
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "the anonymous-token call was rate limited; waiting once, then trying again"
                    );
                    tokio::time::sleep(wait).await;
                    waited_once = true;
                }
            }
        }
    }

    fn quota_exceeded(&self, info: Box<ApiInfo>) -> Error {
        Error::TokenQuotaExceeded {
            client_id: self.key().client_id().to_string(),
            info,
        }
    }

    /// Takes the identity's lease, polling; `None` when a usable token appeared in the store
    /// while waiting for it.
    async fn acquire(&self) -> Result<Option<Lease>> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(lease) = store_call(
                &self.options,
                "take the identity's lease in the credential store",
                self.store.try_lease(self.key(), self.options.lease_ttl),
            )
            .await?
            {
                return Ok(Some(lease));
            }
            let longest =
                self.options.lease_hold.max(MAX_LEASE_HOLD) + (MAX_LEASE_WAIT - MAX_LEASE_HOLD);
            if started.elapsed() >= longest {
                return Err(Error::StoreTimeout {
                    operation: "get the identity's lease, which another client or process holds",
                    after: longest,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            if let (Decision::Use(_) | Decision::Refused(_), _) = self.look().await? {
                return Ok(None);
            }
        }
    }

    /// Runs `work`, renewing `lease` every third of its time to live, up to the longest hold.
    async fn with_renewal<T>(&self, lease: &Lease, work: impl Future<Output = T>) -> T {
        let interval = Lease::renew_interval(lease.ttl());
        let started = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(interval), if started.elapsed() < self.options.lease_hold => {
                    match store_call(&self.options, "renew the identity's lease in the credential store", self.store.renew_lease(lease)).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!("the identity's lease lapsed while its token was requested; the save is compare-and-set, so nothing newer is overwritten"),
                        Err(err) => tracing::warn!(error = %err, "could not renew the identity's lease"),
                    }
                }
            }
        }
    }

    /// Under the lease: read again (another holder may have just saved), then one token
    /// request and the save of its answer. `None`: a usable token was found after all.
    async fn ask_under_lease(&self) -> Result<Option<Asked>> {
        let (decision, stored_version) = self.look().await?;
        match decision {
            Decision::Use(_) | Decision::Refused(_) => return Ok(None),
            Decision::Ask => {}
        }
        let client_id = self.key().client_id();
        let data = match self.endpoint.request_token(client_id).await {
            Ok(data) => data,
            Err(Error::RateLimited { retry_after, info }) => {
                return Ok(Some(Asked::RateLimited { retry_after, info }))
            }
            Err(err) => return Err(err),
        };
        let credentials = AnonymousCredentials::from_token_response(client_id, &data, unix_now())?;
        tracing::info!(
            user_id = credentials.user_id.as_deref().unwrap_or(""),
            "obtained an anonymous NemoVideo token"
        );
        self.options
            .tell(IdentityEvent::TokenIssued { key: self.key() });
        let token = credentials.token.clone();
        // The service's answer is used from now on by every client of the identity in this
        // process, whatever happens to the save.
        self.cell.with(|state| {
            if let Some(user_id) = &credentials.user_id {
                state.user_id = Some(user_id.clone());
            }
            state.current = Some(credentials.clone());
            state.version = None;
            state.unsaved = true;
            state.suspect = None;
            state.refused_until = 0;
            state.refusal = None;
        });
        save_new(
            &self.cell,
            &self.store,
            &self.options,
            credentials,
            stored_version,
        )
        .await;
        Ok(Some(Asked::Got(Chosen::plain(token))))
    }

    /// Remembers a refusal here and in the store, when there is a token to fall back on, and
    /// returns it. (Without one, the caller waits once and asks again first.)
    async fn remember_refusal(&self, wait: Duration, info: &ApiInfo) -> Option<Chosen> {
        let until = refusal_deadline(wait);
        let (current, version, unsaved) = self.cell.with(|state| {
            let current = state.current.clone()?;
            state.refused_until = state.refused_until.max(until);
            state.refusal = Some(Box::new(info.clone()));
            Some((current, state.version, state.unsaved))
        })?;
        self.options.tell(IdentityEvent::RefreshRefused {
            key: self.key(),
            not_before: until,
        });
        if !unsaved {
            // Other processes need not ask again either.
            let mut remembered = current.clone();
            remembered.refresh_not_before = Some(until);
            match store_call(
                &self.options,
                "save the identity to the credential store",
                self.store.save(self.key(), &remembered, version),
            )
            .await
            {
                Ok(SaveOutcome::Saved { version }) => self.cell.with(|state| {
                    if state
                        .current
                        .as_ref()
                        .is_some_and(|c| c.token == remembered.token)
                    {
                        state.current = Some(remembered);
                        state.version = Some(version);
                    }
                }),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "could not record the refused token request in the credential store")
                }
            }
        }
        Some(Chosen {
            token: current.token,
            after_refusal: Some(Box::new(info.clone())),
        })
    }
}

/// Until when a refusal with the server's `wait` is remembered (Unix seconds).
fn refusal_deadline(wait: Duration) -> u64 {
    unix_now().saturating_add(wait.max(REFUSAL_MEMORY).as_secs())
}

/// How often a save is tried before the flight lands (the token is used meanwhile).
const SAVE_ATTEMPTS: u32 = 3;

/// Saves a token the service just issued: compare-and-set, a few tries, then in the
/// background until it works.
async fn save_new(
    cell: &Arc<Cell>,
    store: &Arc<dyn CredentialStore>,
    options: &IdentityOptions,
    credentials: AnonymousCredentials,
    mut expected: Option<u64>,
) {
    for attempt in 1..=SAVE_ATTEMPTS {
        match save_once(cell, store, options, &credentials, expected).await {
            Ok(()) => return,
            Err(SaveRetry::Version(version)) => expected = version,
            Err(SaveRetry::Failed(err)) => {
                tracing::warn!(error = %err, attempt, "could not save the new NemoVideo token; retrying");
                if attempt == SAVE_ATTEMPTS {
                    options.tell(IdentityEvent::SaveFailed {
                        key: &cell.key,
                        error: &err,
                        attempt,
                    });
                } else {
                    tokio::time::sleep(Duration::from_millis(100) * 4u32.pow(attempt - 1)).await;
                }
            }
        }
    }
    tracing::warn!("the new NemoVideo token is not saved yet: every client of this identity in this process uses it, and the save is retried in the background");
    if !cell.saver_running.swap(true, Ordering::AcqRel) {
        let weak = Arc::downgrade(cell);
        let store = Arc::clone(store);
        let options = options.clone();
        tokio::spawn(keep_saving(weak, store, options, credentials));
    }
}

enum SaveRetry {
    /// The record moved on: try again against this version.
    Version(Option<u64>),
    Failed(Error),
}

/// One compare-and-set save. A conflict with the same token counts as saved; with another
/// token, the one that lasts longer is kept.
async fn save_once(
    cell: &Arc<Cell>,
    store: &Arc<dyn CredentialStore>,
    options: &IdentityOptions,
    credentials: &AnonymousCredentials,
    expected: Option<u64>,
) -> std::result::Result<(), SaveRetry> {
    let outcome = store_call(
        options,
        "save the identity to the credential store",
        store.save(&cell.key, credentials, expected),
    )
    .await
    .map_err(SaveRetry::Failed)?;
    let saved_version = match outcome {
        SaveOutcome::Saved { version } => version,
        SaveOutcome::Conflict {
            current: Some(current),
        } if current.credentials.token == credentials.token => current.version,
        SaveOutcome::Conflict {
            current: Some(current),
        } if current.credentials.is_valid_at(unix_now())
            && current.credentials.expires_at_unix() > credentials.expires_at_unix() =>
        {
            // Another holder saved a token that lasts longer (its lease and this one
            // overlapped): both work, and that one is what everyone else uses.
            let version = current.version;
            cell.with(|state| {
                state.current = Some(current.credentials);
                state.version = Some(version);
                state.unsaved = false;
            });
            cell.settled.notify_waiters();
            return Ok(());
        }
        SaveOutcome::Conflict { current } => {
            return Err(SaveRetry::Version(current.map(|c| c.version)))
        }
    };
    cell.with(|state| {
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.token == credentials.token)
        {
            state.version = Some(saved_version);
            state.unsaved = false;
        }
    });
    cell.settled.notify_waiters();
    Ok(())
}

/// Retries a failed save until it works, the token is replaced, or no client holds the
/// identity any more.
async fn keep_saving(
    cell: Weak<Cell>,
    store: Arc<dyn CredentialStore>,
    options: IdentityOptions,
    credentials: AnonymousCredentials,
) {
    let mut delay = Duration::from_secs(1);
    let mut attempt = SAVE_ATTEMPTS;
    let mut expected: Option<Option<u64>> = None;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
        let Some(cell) = cell.upgrade() else {
            return;
        };
        let still_needed = cell.with(|state| {
            state.unsaved
                && state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.token == credentials.token)
        });
        if !still_needed {
            cell.saver_running.store(false, Ordering::Release);
            return;
        }
        attempt += 1;
        let version = match expected {
            Some(version) => version,
            None => match store_call(
                &options,
                "load the identity from the credential store",
                store.load(&cell.key),
            )
            .await
            {
                Ok(stored) => stored.map(|s| s.version),
                Err(err) => {
                    options.tell(IdentityEvent::SaveFailed {
                        key: &cell.key,
                        error: &err,
                        attempt,
                    });
                    continue;
                }
            },
        };
        match save_once(&cell, &store, &options, &credentials, version).await {
            Ok(()) => {
                cell.saver_running.store(false, Ordering::Release);
                options.tell(IdentityEvent::Saved { key: &cell.key });
                return;
            }
            Err(SaveRetry::Version(version)) => {
                expected = Some(version);
                delay = Duration::from_millis(10);
            }
            Err(SaveRetry::Failed(err)) => {
                expected = None;
                options.tell(IdentityEvent::SaveFailed {
                    key: &cell.key,
                    error: &err,
                    attempt,
                });
            }
        }
    }
}
