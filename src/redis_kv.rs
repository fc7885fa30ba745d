//! What the Redis stores share: one connection (the `redis` crate's connection manager,
//! which reconnects by itself), versioned records written by compare-and-set, and leases.
//!
//! - A record is a hash with two fields, `version` (a decimal counter, 1 for the first save)
//!   and `data` (the caller's JSON). [`RedisKv::put`] writes it only if its version is still
//!   the one the caller read (or, for `None`, only if there is none yet), in one Lua script,
//!   so two writers can never both win.
//! - A lease is a string key holding its holder's id, set with `SET NX PX` (granted only if
//!   nobody holds it) and lapsing by itself after its time to live; renewal and release are
//!   scripts that act only while the key still holds the caller's id (compare-and-expire,
//!   compare-and-delete), so a holder whose lease lapsed can neither extend nor delete a
//!   newer holder's.
//!
//! - An index is a set of record names (every job's id), so a worker can find records whose
//!   lease lapsed.
//!
//! Every key starts with the store's prefix (default `nemo`), so one Redis database can hold
//! several applications' keys.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{Error, Result};

/// Each Redis call fails after this long without an answer (the SDK's own store time limit
/// usually ends it first).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const PUT_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if (ARGV[1] == '' and current) or (ARGV[1] ~= '' and current ~= ARGV[1]) then
  return {'0', current or '', redis.call('HGET', KEYS[1], 'data') or ''}
end
local next = tostring((tonumber(current) or 0) + 1)
redis.call('HSET', KEYS[1], 'version', next, 'data', ARGV[2])
return {'1', next, ''}
";

const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const REPLACE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
";

/// A record as read: its version and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) version: u64,
    pub(crate) data: String,
}

/// The outcome of [`RedisKv::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Put {
    /// Written; the record's new version.
    Saved(u64),
    /// Not written: the record is no longer what the caller read. What it is now.
    Conflict(Option<Record>),
}

/// A Redis database seen through one key prefix.
pub(crate) struct RedisKv {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    /// The URL without any password, for messages.
    shown_url: String,
}

impl RedisKv {
    /// Parses `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS if the
    /// `redis` crate was built with it). Connects on first use.
    pub(crate) fn open(url: &str, prefix: &str) -> Result<RedisKv> {
        let client = redis::Client::open(url).map_err(|err| {
            Error::config(format!(
                "the Redis URL is not usable ({}); use a form like redis://127.0.0.1:6379/0",
                err.kind_text()
            ))
        })?;
        let info = client.get_connection_info();
        let shown_url = match &info.addr {
            redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
            redis::ConnectionAddr::Unix(path) => format!("redis+unix://{}", path.display()),
        };
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            return Err(Error::config(
                "the Redis key prefix must be non-empty and contain no spaces",
            ));
        }
        Ok(RedisKv {
            client,
            connection: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
            shown_url,
        })
    }

    /// The server's address, without credentials.
    pub(crate) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// `<prefix>:<part>:<part>...`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    async fn connection(&self, operation: &'static str) -> Result<ConnectionManager> {
        let manager = self
            .connection
            .get_or_try_init(|| async {
                // The crate's reconnection "factor" is the exponent's base (its default of
                // 100 made a first connection to a Redis that is down retry for about two
                // minutes): two quick retries, at most half a second apart, then the error.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_exponent_base(2)
                    .set_factor(2)
                    .set_max_delay(500)
                    .set_number_of_retries(2);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(manager.clone())
    }

    fn error(&self, operation: &'static str, err: redis::RedisError) -> Error {
        Error::store(
            operation,
            format!("Redis at {} answered: {}", self.shown_url, describe(&err)),
        )
    }

    /// The record at `key`, if any.
    pub(crate) async fn get(&self, operation: &'static str, key: &str) -> Result<Option<Record>> {
        let mut connection = self.connection(operation).await?;
        let (version, data): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("version")
            .arg("data")
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        match (version, data) {
            (Some(version), Some(data)) => Ok(Some(Record {
                version: parse_version(operation, &version)?,
                data,
            })),
            _ => Ok(None),
        }
    }

    /// Writes `data` at `key` if the record's version is still `expected` (`None`: only if
    /// there is no record yet).
    pub(crate) async fn put(
        &self,
        operation: &'static str,
        key: &str,
        expected: Option<u64>,
        data: &str,
    ) -> Result<Put> {
        let mut connection = self.connection(operation).await?;
        let expected = expected.map(|v| v.to_string()).unwrap_or_default();
        let reply: Vec<String> = redis::Script::new(PUT_SCRIPT)
            .key(key)
            .arg(expected)
            .arg(data)
            .invoke_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        match reply.as_slice() {
            [ok, version, _] if ok == "1" => Ok(Put::Saved(parse_version(operation, version)?)),
            [_, version, _] if version.is_empty() => Ok(Put::Conflict(None)),
            [_, version, data] => Ok(Put::Conflict(Some(Record {
                version: parse_version(operation, version)?,
                data: data.clone(),
            }))),
            _ => Err(Error::store(operation, "Redis sent an unexpected reply")),
        }
    }

    /// Grants the lease `key` to `holder` for `ttl` if nobody holds it.
    pub(crate) async fn try_lease(
        &self,
        operation: &'static str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection(operation).await?;
        let granted: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(granted.is_some())
    }

    /// Extends `holder`'s lease `key` to `ttl` from now; `false` when it is no longer theirs.
    pub(crate) async fn renew_lease(
        &self,
        operation: &'static str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection(operation).await?;
        let renewed: i64 = redis::Script::new(RENEW_SCRIPT)
            .key(key)
            .arg(holder)
            .arg(millis(ttl))
            .invoke_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(renewed == 1)
    }

    /// Ends `holder`'s lease `key`, if it is still theirs.
    pub(crate) async fn release_lease(
        &self,
        operation: &'static str,
        key: &str,
        holder: &str,
    ) -> Result<bool> {
        let mut connection = self.connection(operation).await?;
        let released: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(key)
            .arg(holder)
            .invoke_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(released == 1)
    }

    /// The string at `key` (a lease's holder), if any.
    pub(crate) async fn get_string(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Option<String>> {
        let mut connection = self.connection(operation).await?;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))
    }

    /// Deletes `key`.
    pub(crate) async fn delete(&self, operation: &'static str, key: &str) -> Result<()> {
        let mut connection = self.connection(operation).await?;
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(())
    }

    /// Adds `member` to the set `key` (an index of records, such as every job's id).
    pub(crate) async fn set_add(
        &self,
        operation: &'static str,
        key: &str,
        member: &str,
    ) -> Result<()> {
        let mut connection = self.connection(operation).await?;
        let _: i64 = redis::cmd("SADD")
            .arg(key)
            .arg(member)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(())
    }

    /// Removes `member` from the set `key`.
    pub(crate) async fn set_remove(
        &self,
        operation: &'static str,
        key: &str,
        member: &str,
    ) -> Result<()> {
        let mut connection = self.connection(operation).await?;
        let _: i64 = redis::cmd("SREM")
            .arg(key)
            .arg(member)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        Ok(())
    }

    /// The members of the set `key`.
    pub(crate) async fn set_members(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Vec<String>> {
        let mut connection = self.connection(operation).await?;
        redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))
    }

    /// The string at `key`, set to `value` first if there is none (whoever comes first wins).
    pub(crate) async fn get_or_set(
        &self,
        operation: &'static str,
        key: &str,
        value: &str,
    ) -> Result<String> {
        let mut connection = self.connection(operation).await?;
        let (_, current): (Option<String>, Option<String>) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))?;
        current.ok_or_else(|| Error::store(operation, "Redis lost the value just set"))
    }

    /// Replaces the string at `key` with `new` if it is still `old`; the value now in force.
    pub(crate) async fn replace(
        &self,
        operation: &'static str,
        key: &str,
        old: &str,
        new: &str,
    ) -> Result<Option<String>> {
        let mut connection = self.connection(operation).await?;
        redis::Script::new(REPLACE_SCRIPT)
            .key(key)
            .arg(old)
            .arg(new)
            .invoke_async(&mut connection)
            .await
            .map_err(|err| self.error(operation, err))
    }
}

fn parse_version(operation: &'static str, text: &str) -> Result<u64> {
    text.parse().map_err(|_| {
        Error::store(
            operation,
            format!("a record's version {text:?} is not a number"),
        )
    })
}

/// Milliseconds for `PX`/`PEXPIRE`: at least 1 (0 is refused by Redis).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The error's text without anything of the URL (which may carry a password).
fn describe(err: &redis::RedisError) -> String {
    let mut text = err.to_string();
    if text.contains('@') {
        // A URL with credentials in the error: keep only the kind.
        text = err.kind_text();
    }
    text
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        match self.detail() {
            Some(detail) if !detail.contains('@') => format!("{:?}: {detail}", self.kind()),
            _ => format!("{:?}", self.kind()),
        }
    }
}
