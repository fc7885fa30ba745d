//! What the simulator remembers about the requests it served: a bounded log of the most recent
//! ones (a ring: the oldest entry goes when a new one comes), and counters kept apart from it,
//! so that counts stay exact over any number of requests while memory stays flat.
//!
//! Policy: a logged request keeps its headers (secrets redacted) and its body when the
//! simulator read one: JSON and text up to [`MAX_LOGGED_BODY`] bytes, secrets replaced by
//! `***`; multipart uploads as the list of their parts (name, file name, size), never their
//! content; anything else as its content type and size. Tokens (`nmv_usr_…`), claim tokens
//! (`clm_…`) and the values of fields named like secrets never reach the log.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::{Endpoint, RecordedRequest};

/// Longest request body kept in the log; longer ones are summarised (content type and size).
pub(crate) const MAX_LOGGED_BODY: usize = 16 * 1024;

/// Entries the log keeps unless [`SimulatorBuilder::request_log_size`] says otherwise.
///
/// [`SimulatorBuilder::request_log_size`]: super::SimulatorBuilder::request_log_size
pub(crate) const DEFAULT_LOG_SIZE: usize = 1000;

/// What replaces a secret.
const REDACTED: &str = "***";

/// A request body as the log keeps it (see [`RecordedRequest::body`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordedBody {
    /// A JSON body of at most 16 KiB, re-encoded compactly, every secret replaced by `"***"`.
    /// [`RecordedBody::json`] parses it.
    Json {
        /// The JSON text.
        #[serde(serialize_with = "as_json")]
        json: String,
    },
    /// A UTF-8 body of at most 16 KiB that is not JSON, secrets replaced by `***`.
    Text {
        /// The text.
        text: String,
    },
    /// A `multipart/form-data` body (an upload): its parts, never their content.
    Multipart {
        /// The parts in the order they came.
        parts: Vec<RecordedPart>,
    },
    /// A body the log does not keep (larger than 16 KiB, binary, or not read to its end).
    Summary {
        /// Its `Content-Type`, if it had one.
        content_type: Option<String>,
        /// How many bytes the simulator read.
        bytes: u64,
    },
}

impl RecordedBody {
    /// The JSON value of a [`RecordedBody::Json`] body.
    pub fn json(&self) -> Option<Value> {
        match self {
            RecordedBody::Json { json } => serde_json::from_str(json).ok(),
            _ => None,
        }
    }
}

/// One part of a logged multipart body.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedPart {
    /// The form field name (`files` for an upload).
    pub name: String,
    /// The file name the client sent, if any.
    pub filename: Option<String>,
    /// The part's size in bytes.
    pub bytes: u64,
}

/// Counts for one client id (the `X-Client-Id` of its anonymous-token requests, and every
/// request made with a token issued to it), from [`SimulatorHandle::counters`].
///
/// [`SimulatorHandle::counters`]: super::SimulatorHandle::counters
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientCounters {
    /// Requests attributed to the client id, answered or not.
    pub requests: u64,
    /// `POST /api/auth/anonymous-token` requests naming it (issued, refused with 429 and
    /// failed alike).
    pub token_requests: u64,
    /// Anonymous tokens issued to it.
    pub tokens_issued: u64,
    /// Sessions created.
    pub sessions: u64,
    /// Upload requests accepted.
    pub uploads: u64,
    /// Files in the accepted uploads (a URL import counts each URL).
    pub uploaded_files: u64,
    /// Messages accepted by `/run_sse` (each one started a turn and its stream).
    pub messages: u64,
    /// Renders accepted (a re-submitted id is not counted again).
    pub renders: u64,
}

/// Counts for one session, from [`SimulatorHandle::counters`].
///
/// [`SimulatorHandle::counters`]: super::SimulatorHandle::counters
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounters {
    /// The client id whose token created the session.
    pub client_id: Option<String>,
    /// Upload requests accepted.
    pub uploads: u64,
    /// Files in the accepted uploads.
    pub uploaded_files: u64,
    /// Messages accepted by `/run_sse`.
    pub messages: u64,
    /// Renders accepted.
    pub renders: u64,
}

/// Every counter of a simulator at one moment ([`SimulatorHandle::counters`], and
/// `GET /__admin/counters` as JSON). The counters do not depend on the request log: they
/// count every request since the start (or the last reset), however small the log.
///
/// [`SimulatorHandle::counters`]: super::SimulatorHandle::counters
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Requests received on the API and CDN origins (unknown paths included; the admin API
    /// and the web origin are not counted).
    pub requests: u64,
    /// Requests per endpoint, including failed and rejected ones.
    pub by_endpoint: BTreeMap<Endpoint, u64>,
    /// Per client id.
    pub clients: BTreeMap<String, ClientCounters>,
    /// Per session id.
    pub sessions: BTreeMap<String, SessionCounters>,
    /// CDN requests that carried an `Authorization` header (a client must never send its
    /// token to another host).
    pub cdn_requests_with_authorization: u64,
}

/// The most recent requests, oldest first.
pub(crate) struct RequestLog {
    entries: VecDeque<RecordedRequest>,
    capacity: usize,
    /// The sequence number of the next request (from 1; never reused, not even by a reset).
    next_seq: u64,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog::new(DEFAULT_LOG_SIZE)
    }
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        RequestLog {
            // Grows as requests come: a large capacity costs nothing until it is used.
            entries: VecDeque::new(),
            capacity,
            next_seq: 1,
        }
    }

    /// Numbers the next request and keeps `request` (dropping the oldest entry when full);
    /// returns its number. `None`: a log that keeps nothing only numbers.
    pub(crate) fn push(&mut self, request: Option<RecordedRequest>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(mut request) = request.filter(|_| self.capacity > 0) {
            if self.entries.len() >= self.capacity {
                self.entries.pop_front();
            }
            request.seq = seq;
            self.entries.push_back(request);
        }
        seq
    }

    /// The entry numbered `seq`, while the log still holds it.
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut RecordedRequest> {
        let first = self.entries.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get_mut(index)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &RecordedRequest> {
        self.entries.iter()
    }

    /// Forgets every entry; numbering goes on.
    pub(crate) fn clear(&mut self) {
        self.entries = VecDeque::new();
    }
}

/// The counters, updated as requests come and as the handlers accept work.
#[derive(Default)]
pub(crate) struct Tally {
    counters: Counters,
    /// user id → the client id it was created for (the reverse of `Inner::client_users`).
    user_clients: HashMap<String, String>,
}

impl Tally {
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn client(&self, client_id: &str) -> ClientCounters {
        self.counters
            .clients
            .get(client_id)
            .copied()
            .unwrap_or_default()
    }

    /// The client id a user was created for.
    pub(crate) fn client_of(&self, user_id: &str) -> Option<&str> {
        self.user_clients.get(user_id).map(String::as_str)
    }

    pub(crate) fn user_created(&mut self, user_id: &str, client_id: &str) {
        self.user_clients
            .insert(user_id.to_owned(), client_id.to_owned());
    }

    /// A request arrived (`client_id`: whom it is attributed to).
    pub(crate) fn request(
        &mut self,
        endpoint: Option<Endpoint>,
        client_id: Option<&str>,
        cdn_with_authorization: bool,
    ) {
        let counters = &mut self.counters;
        counters.requests += 1;
        if let Some(endpoint) = endpoint {
            *counters.by_endpoint.entry(endpoint).or_insert(0) += 1;
        }
        if cdn_with_authorization {
            counters.cdn_requests_with_authorization += 1;
        }
        if let Some(client_id) = client_id {
            let client = self.client_mut(client_id);
            client.requests += 1;
            if endpoint == Some(Endpoint::AnonymousToken) {
                client.token_requests += 1;
            }
        }
    }

    pub(crate) fn token_issued(&mut self, client_id: &str) {
        self.client_mut(client_id).tokens_issued += 1;
    }

    pub(crate) fn session_created(&mut self, user_id: &str, session_id: &str) {
        let client_id = self.client_of(user_id).map(str::to_owned);
        if let Some(client_id) = &client_id {
            self.client_mut(client_id).sessions += 1;
        }
        self.counters.sessions.insert(
            session_id.to_owned(),
            SessionCounters {
                client_id,
                ..SessionCounters::default()
            },
        );
    }

    pub(crate) fn uploaded(&mut self, user_id: &str, session_id: &str, files: usize) {
        let files = files as u64;
        if let Some(client) = self.client_of_user_mut(user_id) {
            client.uploads += 1;
            client.uploaded_files += files;
        }
        if let Some(session) = self.counters.sessions.get_mut(session_id) {
            session.uploads += 1;
            session.uploaded_files += files;
        }
    }

    pub(crate) fn message_accepted(&mut self, user_id: &str, session_id: &str) {
        if let Some(client) = self.client_of_user_mut(user_id) {
            client.messages += 1;
        }
        if let Some(session) = self.counters.sessions.get_mut(session_id) {
            session.messages += 1;
        }
    }

    pub(crate) fn render_accepted(&mut self, user_id: &str, session_id: &str) {
        if let Some(client) = self.client_of_user_mut(user_id) {
            client.renders += 1;
        }
        if let Some(session) = self.counters.sessions.get_mut(session_id) {
            session.renders += 1;
        }
    }

    fn client_mut(&mut self, client_id: &str) -> &mut ClientCounters {
        // `entry` would allocate the key on every request; most requests find their client.
        if !self.counters.clients.contains_key(client_id) {
            self.counters
                .clients
                .insert(client_id.to_owned(), ClientCounters::default());
        }
        self.counters
            .clients
            .get_mut(client_id)
            .unwrap_or_else(|| unreachable!("the client was just inserted"))
    }

    fn client_of_user_mut(&mut self, user_id: &str) -> Option<&mut ClientCounters> {
        let client_id = self.user_clients.get(user_id)?;
        self.counters.clients.get_mut(client_id)
    }
}

/// What the log keeps of a body of `bytes` bytes, `content` of which were read (all of them
/// unless the body was too large to hold).
pub(crate) fn logged_body(
    content_type: Option<&str>,
    content: &[u8],
    bytes: u64,
) -> Option<RecordedBody> {
    if bytes == 0 {
        return None;
    }
    let summary = || RecordedBody::Summary {
        content_type: content_type.map(str::to_owned),
        bytes,
    };
    if bytes > MAX_LOGGED_BODY as u64 || content.len() as u64 != bytes {
        return Some(summary());
    }
    let Ok(text) = std::str::from_utf8(content) else {
        return Some(summary());
    };
    let looks_json = content_type.is_some_and(|t| t.to_ascii_lowercase().contains("json"))
        || text.trim_start().starts_with(['{', '[']);
    if looks_json {
        if let Ok(mut value) = serde_json::from_str::<Value>(text) {
            redact_json(&mut value);
            return Some(RecordedBody::Json {
                json: value.to_string(),
            });
        }
    }
    Some(RecordedBody::Text { text: scrub(text) })
}

/// Whether a JSON field or header of this name holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "authorization"
        || name == "proxy-authorization"
        || name == "cookie"
        || name == "set-cookie"
        || name.ends_with("token")
        || name.contains("secret")
        || name.contains("password")
        || name.contains("api_key")
        || name.contains("api-key")
        || name.contains("apikey")
}

/// Replaces the values of secret-named fields, and tokens inside any string.
fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.keys().any(|key| contains_token(key)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, field)| (scrub(&key), field))
                    .collect();
            }
            for (key, field) in map.iter_mut() {
                if is_secret_name(key) && !field.is_null() {
                    *field = Value::String(REDACTED.to_owned());
                } else {
                    redact_json(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::String(text) if contains_token(text) => *text = scrub(text),
        _ => {}
    }
}

/// The prefixes of the service's secrets: API tokens and claim tokens.
const TOKEN_PREFIXES: &[&str] = &["nmv_usr_", "clm_"];

fn contains_token(text: &str) -> bool {
    TOKEN_PREFIXES.iter().any(|prefix| text.contains(prefix))
}

/// `text` with every token (`nmv_usr_…`, `clm_…`) cut to its prefix and `***`.
pub(crate) fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let found = TOKEN_PREFIXES
            .iter()
            .filter_map(|prefix| rest.find(prefix).map(|at| (at, *prefix)))
            .min_by_key(|(at, _)| *at);
        let Some((at, prefix)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + prefix.len()]);
        let secret = &rest[at + prefix.len()..];
        let end = secret
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(secret.len());
        if end > 0 {
            out.push_str(REDACTED);
        }
        rest = &secret[end..];
    }
}

fn as_json<S: serde::Serializer>(json: &str, serializer: S) -> Result<S::Ok, S::Error> {
    // A logged JSON body shows as JSON in the admin API, not as a string of JSON.
    match serde_json::from_str::<Value>(json) {
        Ok(value) => value.serialize(serializer),
        Err(_) => serializer.serialize_str(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_cuts_every_token_to_its_prefix() {
        assert_eq!(scrub("no secrets"), "no secrets");
        assert_eq!(
            scrub("Bearer nmv_usr_abc123 and clm_XYZ-9, done"),
            "Bearer nmv_usr_*** and clm_***, done"
        );
        assert_eq!(scrub("nmv_usr_"), "nmv_usr_");
        assert_eq!(scrub("x clm_a clm_b"), "x clm_*** clm_***");
    }

    #[test]
    fn json_secrets_are_redacted_wherever_they_are() {
        let body = br#"{"nmv_usr_key":1,"claim_token":"clm_1","nested":{"api_key":"k","list":["see nmv_usr_abc"]},"text":"hi","access_token":null}"#;
        let logged = logged_body(Some("application/json"), body, body.len() as u64).unwrap();
        assert_eq!(
            logged.json().unwrap(),
            serde_json::json!({"nmv_usr_***":1,"claim_token":"***","nested":{"api_key":"***","list":["see nmv_usr_***"]},"text":"hi","access_token":null})
        );
    }

    #[test]
    fn large_binary_and_partly_read_bodies_are_summarised() {
        let big = vec![b'a'; MAX_LOGGED_BODY + 1];
        let summary = |bytes| RecordedBody::Summary {
            content_type: Some("text/plain".into()),
            bytes,
        };
        assert_eq!(
            logged_body(Some("text/plain"), &big, big.len() as u64),
            Some(summary(big.len() as u64))
        );
        assert_eq!(
            logged_body(Some("text/plain"), &[0xff, 0xfe], 2),
            Some(summary(2))
        );
        assert_eq!(logged_body(Some("text/plain"), b"ab", 3), Some(summary(3)));
        assert_eq!(logged_body(None, b"", 0), None);
        assert_eq!(
            logged_body(None, b"plain nmv_usr_x", 15),
            Some(RecordedBody::Text {
                text: "plain nmv_usr_***".into()
            })
        );
    }

    fn request() -> RecordedRequest {
        RecordedRequest {
            seq: 0,
            method: "GET".into(),
            path: "/".into(),
            endpoint: None,
            client_id: None,
            headers: Vec::new(),
            has_authorization: false,
            body_len: 0,
            body: None,
        }
    }

    #[test]
    fn the_log_keeps_the_newest_entries_and_finds_them_by_number() {
        let mut log = RequestLog::new(3);
        let seqs: Vec<u64> = (0..5).map(|_| log.push(Some(request()))).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(log.get_mut(2).is_none());
        assert_eq!(log.get_mut(4).map(|r| r.seq), Some(4));
        assert!(log.get_mut(6).is_none());
        log.clear();
        assert_eq!(
            log.push(Some(request())),
            6,
            "numbering goes on after a reset"
        );

        let mut off = RequestLog::new(0);
        assert_eq!(off.push(Some(request())), 1);
        assert_eq!(off.iter().count(), 0);
    }
}
