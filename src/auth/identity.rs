//! The token of one identity: cached, fetched once for all waiting callers, refreshed early
//! without ever losing a valid token, and shared with other processes through the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result, DEFAULT_RATE_LIMIT_WAIT};

use super::store::CredentialStore;
use super::{unix_now, AnonymousCredentials, SecretToken};

/// The one request the identity layer needs from below: `POST /api/auth/anonymous-token`
/// with `X-Client-Id`, answering the envelope's `data`. The transport implements it; this
/// trait is what keeps identities from depending on the transport.
///
/// A 429 must come back as [`Error::RateLimited`], not waited on: the identity layer owns the
/// one wait and the one replay.
pub(crate) trait TokenEndpoint: Sync {
    fn request_token<'a>(
        &'a self,
        client_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;
}

/// Settings of an [`Identity`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentityOptions {
    /// The longest server-requested wait honoured on a 429; longer means "not this week".
    pub(crate) max_server_wait: Duration,
}

/// Outcome of [`Identity::invalidate`].
pub(crate) enum Invalidated {
    /// A new token can be fetched: replay the request.
    Refreshable,
    /// The token was fixed by the user: surface the error.
    Fixed,
}

/// Token state of one client (shared by its clones).
pub(crate) struct Identity {
    static_token: Option<SecretToken>,
    /// The client id the user chose; `None` means the store's default identity.
    fixed_client_id: Option<String>,
    store: Arc<dyn CredentialStore>,
    options: IdentityOptions,
    state: Mutex<State>,
    /// Held while a fetch runs: one fetch at a time, and the outcome of the last one, which
    /// callers that waited for it share.
    flight: tokio::sync::Mutex<Option<Result<SecretToken>>>,
    /// How many fetches have finished; a caller that saw it change while waiting for
    /// `flight` takes the outcome instead of fetching again.
    flights_done: AtomicU64,
}

#[derive(Default)]
struct State {
    client_id: Option<String>,
    current: Option<AnonymousCredentials>,
    /// An early refresh of `current` failed: use it, without trying again, until it expires.
    refresh_failed: bool,
    /// The last token the service rejected: never adopted again from the store.
    rejected: Option<SecretToken>,
    /// The user id learned from the token or any response (for the registration link).
    user_id: Option<String>,
}

impl State {
    fn usable_token(&self, now: u64) -> Option<SecretToken> {
        let current = self.current.as_ref()?;
        let usable = current.is_fresh_at(now) || (self.refresh_failed && current.is_valid_at(now));
        usable.then(|| current.token.clone())
    }
}

/// What a fetch ended with.
enum Fetched {
    /// The service issued these.
    New(AnonymousCredentials),
    /// Another process saved these while this one waited out a 429.
    FromStore(AnonymousCredentials),
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
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(None),
            flights_done: AtomicU64::new(0),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }

    pub(crate) fn fixed_client_id(&self) -> Option<&str> {
        self.fixed_client_id.as_deref()
    }

    pub(crate) fn static_token(&self) -> Option<&SecretToken> {
        self.static_token.as_ref()
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// The token to send, fetching it (once for all waiting callers) when needed.
    pub(crate) async fn token(&self, endpoint: &dyn TokenEndpoint) -> Result<SecretToken> {
        if let Some(token) = &self.static_token {
            return Ok(token.clone());
        }
        if let Some(token) = self.with_state(|state| state.usable_token(unix_now())) {
            return Ok(token);
        }
        let seen = self.flights_done.load(Ordering::Acquire);
        let mut flight = self.flight.lock().await;
        if self.flights_done.load(Ordering::Acquire) != seen {
            // A fetch finished while this caller waited for it: share its outcome.
            if let Some(outcome) = flight.as_ref() {
                return share(outcome);
            }
        }
        if let Some(token) = self.with_state(|state| state.usable_token(unix_now())) {
            return Ok(token);
        }
        let outcome = self.obtain(endpoint).await;
        *flight = Some(share(&outcome));
        self.flights_done.fetch_add(1, Ordering::Release);
        outcome
    }

    /// Re-reads the store under the identity's lock and fetches only if it still has no
    /// fresh token. An early refresh that fails keeps the current token.
    async fn obtain(&self, endpoint: &dyn TokenEndpoint) -> Result<SecretToken> {
        let mut client_id = self.client_id().await?;
        let mut regenerated = false;
        loop {
            let _lock = self.store.lock(&client_id).await?;
            let now = unix_now();
            let rejected = self.with_state(|state| state.rejected.clone());
            let not_rejected =
                |creds: &AnonymousCredentials| Some(&creds.token) != rejected.as_ref();
            let stored = self
                .store
                .load(&client_id)
                .await?
                .filter(|creds| creds.client_id == client_id && not_rejected(creds));
            if let Some(creds) = stored.as_ref().filter(|creds| creds.is_fresh_at(now)) {
                return Ok(self.adopt(creds.clone(), false));
            }
            // Early refresh: the best token still valid, used if the refresh fails.
            let fallback = self
                .with_state(|state| state.current.clone())
                .filter(|creds| creds.client_id == client_id)
                .into_iter()
                .chain(stored)
                .filter(|creds| creds.is_valid_at(now) && not_rejected(creds))
                .max_by_key(AnonymousCredentials::expires_at_unix);
            match self.fetch(endpoint, &client_id, fallback.is_some()).await {
                Ok(Fetched::New(creds)) => {
                    tracing::info!(
                        user_id = creds.user_id.as_deref().unwrap_or(""),
                        "obtained an anonymous NemoVideo token"
                    );
                    if let Err(err) = self.store.save(&creds).await {
                        tracing::warn!(error = %err, "could not save the new NemoVideo token; it is used by this client but will not be reused after a restart");
                    }
                    return Ok(self.adopt(creds, false));
                }
                Ok(Fetched::FromStore(creds)) => return Ok(self.adopt(creds, false)),
                Err(Error::MissingClientId { info })
                    if !regenerated && self.fixed_client_id.is_none() =>
                {
                    // The service refused the generated default id: make a new default (once).
                    match self.store.replace_default_client_id(&client_id).await? {
                        Some(fresh) if fresh != client_id => {
                            tracing::warn!("the service refused the client id; using a new one");
                            regenerated = true;
                            client_id = fresh;
                            self.with_state(|state| {
                                state.client_id = Some(client_id.clone());
                                state.current = None;
                            });
                        }
                        _ => return Err(Error::MissingClientId { info }),
                    }
                }
                Err(err) => match fallback {
                    Some(creds) => {
                        tracing::warn!(error = %err, "could not refresh the NemoVideo token early; the current one is used until it expires");
                        return Ok(self.adopt(creds, true));
                    }
                    None => return Err(err),
                },
            }
        }
    }

    /// One token request, plus for a 429 one wait, a look in the store, and one replay.
    /// An early refresh (`early`) does not wait: the current token serves meanwhile.
    async fn fetch(
        &self,
        endpoint: &dyn TokenEndpoint,
        client_id: &str,
        early: bool,
    ) -> Result<Fetched> {
        let mut waited = false;
        loop {
            let err = match endpoint.request_token(client_id).await {
                Ok(data) => {
                    return AnonymousCredentials::from_token_response(client_id, &data, unix_now())
                        .map(Fetched::New)
                }
                Err(err) => err,
            };
            let Error::RateLimited { retry_after, info } = err else {
                return Err(err);
            };
            let wait = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
            if waited || early || wait > self.options.max_server_wait {
                return Err(Error::TokenQuotaExceeded {
                    client_id: client_id.to_string(),
                    info,
                });
            }
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "the anonymous-token call was rate limited; waiting once, then trying again"
            );
            tokio::time::sleep(wait).await;
            waited = true;
            // Another process may have got (and saved) this identity's token meanwhile.
            let rejected = self.with_state(|state| state.rejected.clone());
            if let Some(creds) = self.store.load(client_id).await?.filter(|creds| {
                creds.client_id == client_id
                    && Some(&creds.token) != rejected.as_ref()
                    && creds.is_fresh_at(unix_now())
            }) {
                return Ok(Fetched::FromStore(creds));
            }
        }
    }

    fn adopt(&self, creds: AnonymousCredentials, refresh_failed: bool) -> SecretToken {
        let token = creds.token.clone();
        self.with_state(|state| {
            state.client_id = Some(creds.client_id.clone());
            if let Some(user_id) = &creds.user_id {
                state.user_id = Some(user_id.clone());
            }
            state.current = Some(creds);
            state.refresh_failed = refresh_failed;
        });
        token
    }

    /// The client id in use: the configured one, else the store's default identity.
    pub(crate) async fn client_id(&self) -> Result<String> {
        if let Some(id) = &self.fixed_client_id {
            return Ok(id.clone());
        }
        if let Some(id) = self.with_state(|state| state.client_id.clone()) {
            return Ok(id);
        }
        let id = self.store.default_client_id().await?.ok_or_else(|| {
            Error::config(
                "this credential store has no default identity: give each client its client id with NemoClientBuilder::client_id",
            )
        })?;
        super::validate_client_id(&id)?;
        Ok(self.with_state(|state| state.client_id.get_or_insert(id).clone()))
    }

    /// Drops `rejected` (answered 1001/401) if it is still the current token, here and in the
    /// store. Concurrent callers rejected with the same token share one refresh: only the
    /// first clears it, and a newer token saved by another process is kept.
    pub(crate) async fn invalidate(&self, rejected: &SecretToken) -> Invalidated {
        if self.static_token.is_some() {
            return Invalidated::Fixed;
        }
        let client_id = self.with_state(|state| {
            if state
                .current
                .as_ref()
                .is_some_and(|creds| &creds.token == rejected)
            {
                state.current = None;
                state.refresh_failed = false;
            }
            state.rejected = Some(rejected.clone());
            state.client_id.clone()
        });
        if let Some(client_id) = client_id {
            if let Err(err) = self.store.remove(&client_id, rejected).await {
                tracing::warn!(error = %err, "could not remove the rejected NemoVideo token from the credential store");
            }
        }
        Invalidated::Refreshable
    }

    /// The credentials in use, or else those the store holds for this identity.
    pub(crate) async fn credentials(&self) -> Option<AnonymousCredentials> {
        if self.static_token.is_some() {
            return None;
        }
        if let Some(current) = self.with_state(|state| state.current.clone()) {
            return Some(current);
        }
        let client_id = self.client_id().await.ok()?;
        let rejected = self.with_state(|state| state.rejected.clone());
        let stored = self
            .store
            .load(&client_id)
            .await
            .ok()
            .flatten()
            .filter(|creds| Some(&creds.token) != rejected.as_ref())?;
        if let Some(user_id) = &stored.user_id {
            self.note_user_id(user_id);
        }
        Some(stored)
    }

    /// Remembers a user id seen in a response (for the registration link).
    pub(crate) fn note_user_id(&self, user_id: &str) {
        self.with_state(|state| {
            if state.user_id.as_deref() != Some(user_id) {
                state.user_id = Some(user_id.to_string());
            }
        });
    }

    /// The anonymous user id (prefix `anon_`), when known.
    pub(crate) fn known_anonymous_user_id(&self) -> Option<String> {
        self.with_state(|state| state.user_id.clone())
            .filter(|id| id.starts_with("anon_"))
    }
}

/// A copy of an outcome for a caller that waited on the same fetch.
fn share(outcome: &Result<SecretToken>) -> Result<SecretToken> {
    match outcome {
        Ok(token) => Ok(token.clone()),
        Err(err) => Err(err.duplicate()),
    }
}
