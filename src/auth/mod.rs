//! Identity: who the client is to the service, and the token it sends.
//!
//! A client uses either a fixed token (`NEMO_TOKEN`), or an anonymous identity: a client id
//! (a UUID) and the anonymous token the service issued to it. The service issues **one
//! anonymous token per client id per 7 days**, so an identity's token is precious: it is
//! stored, shared by every client, process and machine that uses the identity, and never
//! thrown away before a new one replaces it.
//!
//! Policy and defaults:
//! - Identities are scoped to the service: an [`IdentityKey`] is the API origin and the
//!   client id, so production, a staging URL and a local simulator keep their own identities
//!   in one store, and a token issued by one host is never sent to another.
//! - Identities live in a [`CredentialStore`]: [`FileStore`] (the default:
//!   `<config dir>/credentials.json`, safe across processes), [`MemoryStore`], `RedisStore`
//!   (feature `redis`, for workers on many machines), or the app's own. The store's contract
//!   (versioned compare-and-set saves, leases with a time to live, time limits) is written on
//!   [`CredentialStore`].
//! - In a process, all clients of one identity share it: a token one of them learned is used
//!   by the others, and one token request runs at a time for it, in a task of its own that
//!   a cancelled caller does not stop (so an issued token is always saved).
//! - A token is used until the service rejects it or this machine's clock says it expired.
//!   No new token is asked for while the service must refuse one (less than 7 days after the
//!   current one was issued) or has just refused one (remembered for at least 10 minutes,
//!   here and in the store).
//! - A 1001/HTTP 401 makes the token suspect: a new one is asked for; if the service refuses
//!   (429), the suspect token is tried again (a gateway's stray 401 is not the service's
//!   word) and stays stored. Only when nothing the service accepts is left is the error
//!   [`Error::TokenQuotaExceeded`]. With no token at all, a 429 is waited out once (the
//!   server's wait, else 30 s) and the request made once more.
//! - A save that fails is retried, reported through
//!   [`NemoClientBuilder::on_identity_event`](crate::NemoClientBuilder::on_identity_event),
//!   and retried in the background until it works; meanwhile every client of the identity in
//!   the process uses the token.
//! - Every store call is limited (default 10 s); a lease is held at most [`MAX_LEASE_HOLD`].
//! - The token response is read tolerantly: only `data.token` is required; `expires_at` may be
//!   RFC 3339 or a number of seconds or milliseconds, or `expires_in` seconds may be given;
//!   `credits` may be a number or a string; unknown fields are ignored. No error quotes a token.
//! - A fixed token is never replaced: a 1001 for it is reported.
//! - Tokens live in [`SecretToken`], whose `Debug` and `Display` print `***`.

mod file;
mod identity;
#[cfg(feature = "redis")]
mod redis;
mod store;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{ApiInfo, Error, Result};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub(crate) use file::{try_lock_removable, LockAttempt, RemovableLock};
pub use file::{FileStore, CREDENTIALS_FILE};
pub(crate) use identity::{
    Chosen, Identity, IdentityEventFn, IdentityOptions, Invalidated, TokenEndpoint,
};
pub use store::{
    CredentialStore, IdentityKey, MemoryStore, SaveOutcome, StoreFuture, StoredCredentials,
};

/// Lifetime assumed for an anonymous token whose expiry the service did not send: 7 days.
pub const ASSUMED_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The service issues one anonymous token per client id per this long: 7 days. No new token
/// is asked for within it (the service would refuse).
pub const QUOTA_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// A refused token request (HTTP 429) is not repeated for at least this long (or the
/// server's wait, if longer), by any client of the identity: 10 minutes.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(600);
/// Default time to live of an identity lease; the SDK renews it every third of that while
/// its token request runs: 30 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The longest the SDK holds an identity lease with the default settings: one token request
/// (its connection attempts and up to twice the request timeout, 2 minutes, for the answer)
/// and the saves of its answer fit well inside. After this the SDK stops renewing it: 4
/// minutes. (With a request timeout above 60 s: twice the request timeout plus 2 minutes.)
pub const MAX_LEASE_HOLD: Duration = Duration::from_secs(240);
/// The longest the SDK waits for a lease another client or process holds: the longest hold,
/// plus a lapsed lease's time to live and a margin: 5 minutes with the default settings.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(300);
/// How much longer than an ordinary request the SDK waits for the answer to a token
/// request: twice the request timeout (2 minutes by default). A token request is not repeated
/// after such a silence (its answer might still be on the way, and a second request would
/// be refused for the week), only after failures that prove no token was issued.
pub const TOKEN_ANSWER_FACTOR: u32 = 2;

/// Something that happened to an identity, for the app's
/// [`NemoClientBuilder::on_identity_event`](crate::NemoClientBuilder::on_identity_event)
/// callback (to alert on, or to count).
#[derive(Debug)]
#[non_exhaustive]
pub enum IdentityEvent<'a> {
    /// The service issued a new anonymous token to this identity.
    TokenIssued {
        /// The identity.
        key: &'a IdentityKey,
    },
    /// Saving a new token to the credential store failed. The token is used meanwhile by
    /// every client of this identity in this process, and the save is retried in the
    /// background until it works; a process that ends first loses the token (and the
    /// service issues no other for 7 days): fix the store.
    SaveFailed {
        /// The identity.
        key: &'a IdentityKey,
        /// Why the save failed.
        error: &'a Error,
        /// How many saves were tried so far.
        attempt: u32,
    },
    /// A token whose save failed earlier is now saved.
    Saved {
        /// The identity.
        key: &'a IdentityKey,
    },
    /// The service refused a new token (429): the current one is used until the service
    /// rejects it, and no client asks again before `not_before`.
    RefreshRefused {
        /// The identity.
        key: &'a IdentityKey,
        /// Unix seconds before which nobody asks again.
        not_before: u64,
    },
}

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
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretToken::new)
    }
}

/// An anonymous identity: a client id and the token the service issued to it.
///
/// `Serialize + Deserialize`, so a [`CredentialStore`] can keep it as it likes. Build one to
/// restore an identity saved elsewhere with [`AnonymousCredentials::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AnonymousCredentials {
    /// The client id the token was issued to (the identity's key).
    pub client_id: String,
    /// The token (prefix `nmv_usr_`).
    pub token: SecretToken,
    /// The anonymous user id (prefix `anon_`), used for the registration link.
    #[serde(default, deserialize_with = "crate::wire::opt_id")]
    pub user_id: Option<String>,
    /// When the token expires, in seconds since the Unix epoch. `None` when the service did
    /// not say: the token is then taken to last 7 days from `obtained_at`.
    #[serde(default, deserialize_with = "lenient_expiry")]
    pub expires_at: Option<u64>,
    /// Credits granted with the token, when sent.
    #[serde(default, deserialize_with = "lenient_number")]
    pub credits: Option<f64>,
    /// When the token was obtained, seconds since the Unix epoch.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub obtained_at: u64,
    /// No new token is asked for before this (seconds since the Unix epoch): the service
    /// refused one recently. Shared through the store, so no other process asks either.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_expiry"
    )]
    pub refresh_not_before: Option<u64>,
}

impl AnonymousCredentials {
    /// Credentials for `client_id` with `token`, obtained now, expiry unknown (taken as 7
    /// days). Set what else you know with the `with_*` methods.
    ///
    /// ```
    /// use nemo_video::auth::AnonymousCredentials;
    /// let creds = AnonymousCredentials::new("0b7c6a52-3f0e-4d8e-9a51-6c2f1d9e8a01", "nmv_usr_...")
    ///     .with_user_id("anon_7f3e1a")
    ///     .with_expires_at(1_795_497_007);
    /// assert_eq!(creds.expires_at_unix(), 1_795_497_007);
    /// ```
    pub fn new(client_id: impl Into<String>, token: impl Into<String>) -> AnonymousCredentials {
        AnonymousCredentials {
            client_id: client_id.into(),
            token: SecretToken::new(token),
            user_id: None,
            expires_at: None,
            credits: None,
            obtained_at: unix_now(),
            refresh_not_before: None,
        }
    }

    /// Sets the anonymous user id.
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Sets the expiry, in seconds since the Unix epoch.
    pub fn with_expires_at(mut self, unix_seconds: u64) -> Self {
        self.expires_at = Some(unix_seconds);
        self
    }

    /// Sets when the token was obtained, in seconds since the Unix epoch.
    pub fn with_obtained_at(mut self, unix_seconds: u64) -> Self {
        self.obtained_at = unix_seconds;
        self
    }

    /// Seconds since the Unix epoch at which the token stops working: `expires_at`, or 7 days
    /// after `obtained_at` when the service did not say.
    pub fn expires_at_unix(&self) -> u64 {
        self.expires_at.unwrap_or_else(|| {
            self.obtained_at
                .saturating_add(ASSUMED_TOKEN_LIFETIME.as_secs())
        })
    }

    /// True while the token has not expired, at `now` (seconds since the Unix epoch).
    pub fn is_valid_at(&self, now: u64) -> bool {
        now < self.expires_at_unix()
    }

    /// Reads the `data` of an anonymous-token response, tolerantly: only `token` is required.
    /// No error quotes the token.
    pub(crate) fn from_token_response(
        client_id: &str,
        data: &Value,
        now: u64,
    ) -> Result<AnonymousCredentials> {
        let decode_error = |detail: &str| Error::Decode {
            expected: "an anonymous token",
            detail: detail.to_string(),
            info: Box::new(ApiInfo::default()),
        };
        let Some(data) = data.as_object() else {
            return Err(decode_error("the response's data is not an object"));
        };
        let token = match data.get("token") {
            Some(Value::String(token)) if !token.trim().is_empty() => token.trim(),
            Some(_) => return Err(decode_error("data.token is not a non-empty string")),
            None => return Err(decode_error("the response has no data.token")),
        };
        let user_id = data
            .get("user_id")
            .or_else(|| data.get("userId"))
            .and_then(|value| crate::wire::id_from_raw(&value.to_string()));
        let expires_at = data
            .get("expires_at")
            .or_else(|| data.get("expiresAt"))
            .and_then(expiry_of)
            .or_else(|| {
                data.get("expires_in")
                    .or_else(|| data.get("expiresIn"))
                    .and_then(number_of)
                    .filter(|secs| secs.is_finite() && *secs >= 0.0)
                    .map(|secs| now.saturating_add(secs.min(u64::MAX as f64) as u64))
            });
        Ok(AnonymousCredentials {
            client_id: client_id.to_string(),
            token: SecretToken::new(token),
            user_id,
            expires_at,
            credits: data.get("credits").and_then(number_of),
            obtained_at: now,
            refresh_not_before: None,
        })
    }
}

/// A number, or a string holding one.
fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|number| number.is_finite())
}

/// An expiry: an RFC 3339 timestamp, or a Unix time in seconds or (when too large to be
/// seconds in this era) milliseconds, as a number or a string.
fn expiry_of(value: &Value) -> Option<u64> {
    if let Value::String(text) = value {
        if let Some(secs) = parse_rfc3339(text) {
            return Some(secs);
        }
    }
    let number = number_of(value).filter(|n| *n >= 0.0)?;
    // 10^11 seconds is the year 5138; a larger "seconds" value is milliseconds.
    let secs = if number >= 1e11 {
        number / 1000.0
    } else {
        number
    };
    Some(secs.min(u64::MAX as f64) as u64)
}

fn lenient_expiry<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?
        .as_ref()
        .and_then(expiry_of))
}

fn lenient_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<u64, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?
        .as_ref()
        .and_then(expiry_of)
        .unwrap_or(0))
}

fn lenient_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<f64>, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?
        .as_ref()
        .and_then(number_of))
}

/// Checks a client id: 1 to 64 letters, digits, `-` or `_` (it becomes a header value and a
/// file name).
pub(crate) fn validate_client_id(client_id: &str) -> Result<()> {
    if client_id.is_empty()
        || client_id.len() > 64
        || !client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::config(
            "the client id must be 1 to 64 characters of letters, digits, '-' or '_' (a UUID is best); fix NEMO_CLIENT_ID or the id you passed, or leave it unset",
        ));
    }
    Ok(())
}

/// The production service's origin (`DEFAULT_BASE_URL`'s; a test keeps them equal), which
/// identities of earlier files belong to. Spelled out here so identities need nothing of the
/// client's configuration.
pub(crate) const PRODUCTION_ORIGIN: &str = "https://mega-api-prod.nemovideo.ai";

pub(crate) fn default_origin() -> String {
    PRODUCTION_ORIGIN.to_string()
}

pub(crate) fn new_client_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    fn production_origin_is_the_default_base_urls() {
        let base = url::Url::parse(crate::config::DEFAULT_BASE_URL).unwrap();
        assert_eq!(base.origin().ascii_serialization(), PRODUCTION_ORIGIN);
    }

    #[test]
    fn client_id_rules() {
        assert!(validate_client_id(&uuid::Uuid::new_v4().to_string()).is_ok());
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id(&"a".repeat(65)).is_err());
        assert!(validate_client_id("has space").is_err());
    }
}
