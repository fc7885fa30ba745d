//! Tokens: a fixed one (`NEMO_TOKEN`), or an anonymous one that is fetched once, persisted,
//! and reused until shortly before it expires.
//!
//! Policy and defaults:
//! - The service issues one anonymous token per client id per 7 days, so the client id and
//!   the token are persisted in `<config dir>/credentials.json` (default
//!   `~/.config/nemovideo/`), mode 0600 in a 0700 directory, written atomically (a temporary
//!   file renamed into place), and reused until 10 minutes before `expires_at`.
//! - When many tasks need a token at once, exactly one request goes out (single flight).
//! - On 1001/HTTP 401 the rejected anonymous token is dropped, one new token is fetched with the
//!   same client id, and the request is replayed once. A fixed token is never replaced: the
//!   error tells the person to set a fresh one.
//! - A corrupted or unreadable credentials file is reported with a `tracing` warning and
//!   replaced; it never stops the client.
//! - Tokens live in [`SecretToken`], whose `Debug` and `Display` print `***`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::client::{Config, NemoClient};
use crate::error::{Error, Result};

/// Name of the credentials file inside the config directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Lifetime assumed for an anonymous token whose expiry could not be read: 7 days.
const ASSUMED_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A token is replaced this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(600);

/// An API token. Its `Debug` and `Display` print `***`; read it with [`SecretToken::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(Arc<str>);

impl SecretToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> SecretToken {
        SecretToken(Arc::from(token.into()))
    }

    /// The token itself. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(***)")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for SecretToken {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretToken {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretToken::new)
    }
}

/// An anonymous identity: what `POST /api/auth/anonymous-token` returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AnonymousCredentials {
    /// The client id the token was issued to.
    pub client_id: String,
    /// The token (prefix `nmv_usr_`).
    pub token: SecretToken,
    /// The anonymous user id (prefix `anon_`), used for the registration link.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Expiry as sent by the service (ISO 8601).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Credits granted with the token, when sent.
    #[serde(default)]
    pub credits: Option<f64>,
    /// When the token was obtained, seconds since the Unix epoch.
    #[serde(default)]
    pub obtained_at: u64,
}

impl AnonymousCredentials {
    /// Seconds since the epoch at which the token should no longer be used.
    fn expires_unix(&self) -> u64 {
        self.expires_at
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or(self.obtained_at + ASSUMED_TOKEN_LIFETIME.as_secs())
    }

    fn usable_at(&self, now: u64) -> bool {
        now + EXPIRY_MARGIN.as_secs() < self.expires_unix()
    }
}

/// What the persisted file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredFile {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    anonymous: Option<AnonymousCredentials>,
}

/// The wire form of the anonymous-token response's `data`.
#[derive(Deserialize)]
struct AnonymousTokenData {
    token: String,
    #[serde(default, deserialize_with = "crate::wire::opt_id")]
    user_id: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    credits: Option<f64>,
}

#[derive(Default)]
struct AuthState {
    loaded: bool,
    client_id: Option<String>,
    anonymous: Option<AnonymousCredentials>,
}

/// Token state shared by all clones of a client.
pub(crate) struct Auth {
    static_token: Option<SecretToken>,
    store: Option<PathBuf>,
    state: Mutex<AuthState>,
    /// The user id learned from the token or any response, for the registration link. A plain
    /// mutex: read from synchronous error mapping, never held across an await.
    user_id: std::sync::Mutex<Option<String>>,
}

/// Outcome of [`Auth::invalidate`].
pub(crate) enum Invalidated {
    /// A new token can be fetched: replay the request.
    Refreshable,
    /// The token was fixed by the user: surface the error.
    Fixed,
}

impl Auth {
    pub(crate) fn new(config: &Config) -> Auth {
        Auth {
            static_token: config.static_token.clone(),
            store: config
                .config_dir
                .as_ref()
                .map(|dir| dir.join(CREDENTIALS_FILE)),
            state: Mutex::new(AuthState {
                client_id: config.client_id.clone(),
                ..AuthState::default()
            }),
            user_id: std::sync::Mutex::new(None),
        }
    }

    /// The token to send, fetching (once, for all waiting tasks) when needed.
    pub(crate) async fn token(
        &self,
        transport: &crate::transport::Transport,
    ) -> Result<SecretToken> {
        if let Some(token) = &self.static_token {
            return Ok(token.clone());
        }
        let mut state = self.state.lock().await;
        let now = unix_now();
        if let Some(creds) = state.anonymous.as_ref().filter(|c| c.usable_at(now)) {
            return Ok(creds.token.clone());
        }
        if !state.loaded {
            state.loaded = true;
            if let Some(path) = &self.store {
                let stored = load_store(path);
                let wanted_client = state.client_id.clone();
                if state.client_id.is_none() {
                    state.client_id = stored.client_id.clone();
                }
                if let Some(creds) = stored.anonymous.filter(|c| {
                    c.usable_at(now) && wanted_client.as_deref().is_none_or(|id| id == c.client_id)
                }) {
                    state.client_id = Some(creds.client_id.clone());
                    if let Some(user_id) = &creds.user_id {
                        self.note_user_id(user_id);
                    }
                    let token = creds.token.clone();
                    state.anonymous = Some(creds);
                    return Ok(token);
                }
            }
        }
        let mut client_id = match &state.client_id {
            Some(id) => id.clone(),
            None => new_client_id(),
        };
        state.client_id = Some(client_id.clone());
        self.persist(&state);
        // Boxed: the token call goes through the same transport that asks for tokens.
        let first =
            Box::pin(transport.fetch_anonymous_token::<AnonymousTokenData>(&client_id)).await;
        let data = match first {
            Err(Error::MissingClientId { .. }) => {
                // The service did not accept the id: make a fresh one and try once more.
                client_id = new_client_id();
                state.client_id = Some(client_id.clone());
                Box::pin(transport.fetch_anonymous_token::<AnonymousTokenData>(&client_id)).await?
            }
            other => other?,
        };
        let creds = AnonymousCredentials {
            client_id,
            token: SecretToken::new(data.token),
            user_id: data.user_id,
            expires_at: data.expires_at,
            credits: data.credits,
            obtained_at: now,
        };
        tracing::info!(
            user_id = creds.user_id.as_deref().unwrap_or(""),
            "obtained an anonymous NemoVideo token"
        );
        if let Some(user_id) = &creds.user_id {
            self.note_user_id(user_id);
        }
        let token = creds.token.clone();
        state.anonymous = Some(creds);
        self.persist(&state);
        Ok(token)
    }

    /// Drops `rejected` if it is still the current token. Concurrent callers rejected with
    /// the same token share one refresh: only the first clears it.
    pub(crate) async fn invalidate(&self, rejected: &SecretToken) -> Invalidated {
        if self.static_token.is_some() {
            return Invalidated::Fixed;
        }
        let mut state = self.state.lock().await;
        if state
            .anonymous
            .as_ref()
            .is_some_and(|creds| &creds.token == rejected)
        {
            state.anonymous = None;
            self.persist(&state);
        }
        Invalidated::Refreshable
    }

    /// Remembers a user id seen in a response (for the registration link).
    pub(crate) fn note_user_id(&self, user_id: &str) {
        if let Ok(mut known) = self.user_id.lock() {
            if known.as_deref() != Some(user_id) {
                *known = Some(user_id.to_string());
            }
        }
    }

    /// The anonymous user id (prefix `anon_`), when known.
    pub(crate) fn known_anonymous_user_id(&self) -> Option<String> {
        self.user_id
            .lock()
            .ok()
            .and_then(|known| known.clone())
            .filter(|id| id.starts_with("anon_"))
    }

    pub(crate) async fn snapshot(&self) -> Option<AnonymousCredentials> {
        self.state.lock().await.anonymous.clone()
    }

    fn persist(&self, state: &AuthState) {
        let Some(path) = &self.store else { return };
        let stored = StoredFile {
            client_id: state.client_id.clone(),
            anonymous: state.anonymous.clone(),
        };
        if let Err(err) = write_store(path, &stored) {
            tracing::warn!(path = %path.display(), error = %err, "could not save NemoVideo credentials; the token will not be reused after a restart");
        }
    }
}

impl NemoClient {
    /// The anonymous identity in use, if this client uses an anonymous token and has one.
    /// The token inside prints as `***`.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) {
    /// if let Some(creds) = client.anonymous_credentials().await {
    ///     println!("anonymous user {:?}", creds.user_id);
    /// }
    /// # }
    /// ```
    pub async fn anonymous_credentials(&self) -> Option<AnonymousCredentials> {
        self.transport().auth().snapshot().await
    }

    /// The registration link for an anonymous user
    /// (`<web>/register?bind=<anonymous user id>`), which keeps the work and adds credits.
    /// `None` for a fixed token or before the user id is known.
    ///
    /// ```no_run
    /// # fn run(client: nemo_video::NemoClient) {
    /// if let Some(url) = client.registration_url() {
    ///     println!("register here: {url}");
    /// }
    /// # }
    /// ```
    pub fn registration_url(&self) -> Option<String> {
        self.transport().registration_url()
    }
}

pub(crate) fn validate_client_id(client_id: &str) -> Result<()> {
    if client_id.is_empty()
        || client_id.len() > 64
        || !client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::config(
            "the client id must be 1 to 64 characters of letters, digits, '-' or '_' (a UUID is best); fix NEMO_CLIENT_ID or leave it unset",
        ));
    }
    Ok(())
}

fn new_client_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load_store(path: &Path) -> StoredFile {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StoredFile>(&bytes) {
            Ok(stored) => {
                if stored
                    .client_id
                    .as_deref()
                    .is_some_and(|id| validate_client_id(id).is_err())
                {
                    tracing::warn!(path = %path.display(), "the saved NemoVideo client id is invalid; it will be replaced");
                    return StoredFile::default();
                }
                stored
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "the NemoVideo credentials file is corrupted; it will be replaced");
                StoredFile::default()
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => StoredFile::default(),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "could not read the NemoVideo credentials file; it will be replaced");
            StoredFile::default()
        }
    }
}

/// Writes atomically: a temporary file in the same directory, mode 0600, synced, renamed.
fn write_store(path: &Path, stored: &StoredFile) -> std::io::Result<()> {
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

/// Parses an RFC 3339 / ISO 8601 timestamp (`2026-12-01T05:10:07.123+08:00`, `...Z`, or a
/// naive one taken as UTC) to seconds since the epoch.
pub(crate) fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.trim();
    let bytes = text.as_bytes();
    if bytes.len() < 19 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(stripped) = rest.strip_prefix('.') {
        let digits = stripped.bytes().take_while(u8::is_ascii_digit).count();
        rest = &stripped[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hh: i64 = rest.get(1..3)?.parse().ok()?;
            let mm: i64 = rest.get(rest.len() - 2..)?.parse().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-24T05:10:07Z"), Some(1_795_497_007));
        assert_eq!(
            parse_rfc3339("2026-11-24T13:10:07.5+08:00"),
            Some(1_795_497_007)
        );
        assert_eq!(parse_rfc3339("2026-11-24T05:10:07"), Some(1_795_497_007));
        assert_eq!(parse_rfc3339("tomorrow"), None);
        assert_eq!(parse_rfc3339("2026-13-24T05:10:07Z"), None);
    }

    #[test]
    fn secret_token_hides_itself() {
        let token = SecretToken::new("nmv_usr_secret");
        assert_eq!(format!("{token}"), "***");
        assert!(!format!("{token:?}").contains("secret"));
        assert_eq!(token.expose(), "nmv_usr_secret");
    }

    #[test]
    fn client_id_rules() {
        assert!(validate_client_id(&uuid::Uuid::new_v4().to_string()).is_ok());
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id(&"a".repeat(65)).is_err());
        assert!(validate_client_id("has space").is_err());
    }
}
