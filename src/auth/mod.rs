//! Identity: who the client is to the service, and the token it sends.
//!
//! A client uses either a fixed token (`NEMO_TOKEN`), or an anonymous identity: a client id
//! (a UUID) and the anonymous token the service issued to it. The service issues **one
//! anonymous token per client id per 7 days**, so an identity's token is precious: it is
//! stored, shared by every client and process that uses the identity, and never thrown away
//! while it is still valid.
//!
//! Policy and defaults:
//! - Identities live in a [`CredentialStore`], keyed by client id, so one store holds many
//!   end users. [`FileStore`] (the default: `<config dir>/credentials.json`, mode 0600 in a
//!   0700 directory, replaced atomically) is safe across processes: "read, fetch if still
//!   missing or expired, write" runs under an advisory lock per identity, and every write
//!   changes only its own identity's entry. [`MemoryStore`] keeps identities in memory; apps
//!   implement [`CredentialStore`] over their own database.
//! - Within a client (and its clones) one fetch runs at a time per identity, and callers that
//!   waited for it share its outcome, success or failure.
//! - A token is refreshed 10 minutes before it expires. If that early refresh fails for any
//!   reason, the current token is used until it really expires; only a 1001/HTTP 401 answer
//!   invalidates a token.
//! - HTTP 429 on the token call: one wait (`retry-after-ms`, `Retry-After`, else 30 s) and one
//!   replay for the whole call, after re-reading the store (another process may have saved a
//!   token meanwhile). A second 429 is [`Error::TokenQuotaExceeded`], which is never retried.
//! - The token response is read tolerantly: only `data.token` is required; `expires_at` may be
//!   RFC 3339 or a number of seconds or milliseconds, or `expires_in` seconds may be given;
//!   `credits` may be a number or a string; unknown fields are ignored. No error quotes a token.
//! - A fixed token is never replaced: a 1001 for it is reported.
//! - Tokens live in [`SecretToken`], whose `Debug` and `Display` print `***`.

mod file;
mod identity;
mod store;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{ApiInfo, Error, Result};

pub use file::{FileStore, CREDENTIALS_FILE};
pub(crate) use identity::{Identity, IdentityOptions, Invalidated, TokenEndpoint};
pub use store::{CredentialStore, IdentityLock, MemoryStore, StoreFuture};

/// Lifetime assumed for an anonymous token whose expiry the service did not send: 7 days.
pub const ASSUMED_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A token is refreshed this long before it expires (and used until it expires if the
/// refresh fails): 10 minutes.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(600);

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
    #[serde(default)]
    pub obtained_at: u64,
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

    /// True while the token is outside its refresh margin (10 minutes before expiry).
    pub(crate) fn is_fresh_at(&self, now: u64) -> bool {
        now.saturating_add(REFRESH_MARGIN.as_secs()) < self.expires_at_unix()
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
    fn client_id_rules() {
        assert!(validate_client_id(&uuid::Uuid::new_v4().to_string()).is_ok());
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id(&"a".repeat(65)).is_err());
        assert!(validate_client_id("has space").is_err());
    }
}
