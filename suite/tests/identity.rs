//! Identities shared by many clients, processes and users, and never lost: one token request
//! per identity, tokens that survive cancellation, stray 401s, odd files and failed saves,
//! identities scoped to their service, store calls with time limits, and a tolerant token
//! decode. (The Redis store's own tests are in tests/redis_store.rs.)

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nemo_video::auth::{
    AnonymousCredentials, CredentialStore, FileStore, IdentityEvent, IdentityKey, MemoryStore,
    SaveOutcome, StoreFuture, StoredCredentials,
};
use nemo_video::lease::Lease;
use nemo_video::render::{RenderJob, WaitOptions};
use nemo_video::simulator::{Endpoint, Failure, Simulator};
use nemo_video::{Error, NemoClient, RetryPolicy};
use serde_json::{json, Value};
use support::faults::{ScriptedResolver, API_HOST};
use support::mock::*;
use support::{fast_retry, stored_credentials, stored_file, tempdir, WEB_URL};
use wiremock::matchers::{header as header_is, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const DAY: u64 = 86_400;

/// A 429 as the service sends it for a second token in the same week, with a short wait.
fn token_rate_limited(wait_ms: u64) -> ResponseTemplate {
    ResponseTemplate::new(429)
        .insert_header("retry-after-ms", wait_ms.to_string().as_str())
        .set_body_json(json!({
            "code": 429,
            "message": "rate limited: one anonymous token per client id per 7 days"
        }))
}

/// Writes a credentials file in `dir` holding `client_id`'s token for the service at
/// `base_url`, issued `age` seconds ago and expiring `expires_in` seconds from now (negative:
/// expired).
fn store_token(
    dir: &Path,
    base_url: &str,
    client_id: &str,
    token: &str,
    age: u64,
    expires_in: i64,
) {
    let origin = url::Url::parse(base_url)
        .unwrap()
        .origin()
        .ascii_serialization();
    let now = unix_now();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("credentials.json"),
        json!({
            "default_client_id": client_id,
            "services": {origin: {client_id: {"version": 1, "credentials": {
                "client_id": client_id,
                "token": token,
                "user_id": "anon_stored",
                "expires_at": now.saturating_add_signed(expires_in),
                "obtained_at": now - age,
            }}}}
        })
        .to_string(),
    )
    .unwrap();
}

fn sim_client(sim: &Simulator, dir: &Path) -> NemoClient {
    support::client_builder(sim.base_url())
        .web_url(sim.web_url())
        .config_dir(dir)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Many OS processes on one config dir
// ---------------------------------------------------------------------------------------

/// Env var naming the file a child process waits for before it starts (so all start at once).
const GO_FILE: &str = "NEMO_TEST_GO_FILE";

/// Not a test of its own: the multi-process tests below run this test binary again, once
/// per child process, with only this (ignored) test selected. Each child waits for the
/// parent's go signal, makes one authenticated call, and prints its anonymous user id.
#[test]
#[ignore = "runs only as a child process of the multi-process tests"]
fn child_process_makes_one_call() {
    let Some(go) = std::env::var_os(GO_FILE) else {
        eprintln!("run by the multi-process tests with {GO_FILE} set; nothing to do");
        return;
    };
    let started = Instant::now();
    while !Path::new(&go).exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no go signal");
        std::thread::sleep(Duration::from_millis(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = NemoClient::from_env().expect("client from the environment");
        client.credits().await.expect("an authenticated call");
        let creds = client.anonymous_credentials().await.expect("an identity");
        println!(
            "IDENTITY {} {}",
            creds.client_id,
            creds.user_id.expect("a user id")
        );
    });
}

/// Starts `n` copies of this test binary running [`child_process_makes_one_call`] against
/// `base_url` on `config_dir`, lets them go at once, and returns each one's printed identity.
async fn run_processes(
    base_url: &str,
    config_dir: &Path,
    client_id: Option<&str>,
    n: usize,
) -> Vec<String> {
    let go = config_dir.with_extension(format!("go-{}", uuid::Uuid::new_v4()));
    let children: Vec<_> = (0..n)
        .map(|_| {
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .args([
                    "child_process_makes_one_call",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(GO_FILE, &go)
                .env("NEMO_API_BASE", base_url)
                .env("NEMO_CONFIG_DIR", config_dir)
                .env_remove("NEMO_TOKEN")
                .env_remove("NEMO_API_URL")
                .env_remove("NEMO_CLIENT_ID")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(id) = client_id {
                command.env("NEMO_CLIENT_ID", id);
            }
            command.spawn().expect("child starts")
        })
        .collect();
    std::fs::write(&go, b"go").unwrap();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    outputs
        .iter()
        .map(|output| {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "a child process failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            // The test harness prints its own words on the same line before the child's.
            stdout
                .lines()
                .find_map(|line| line.split_once("IDENTITY ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("no identity printed:\n{stdout}"))
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_at_once_on_a_fresh_config_dir_make_one_token_request() {
    // The simulator enforces the service's rule: a second token for a client id within
    // 7 days answers 429.
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let config_dir = dir.path().join("nemovideo");
    let identities = run_processes(sim.base_url(), &config_dir, None, 6).await;

    let distinct: BTreeSet<_> = identities.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "all six use one identity: {identities:?}"
    );
    let requests = sim.token_requests_by_client();
    assert_eq!(requests.values().sum::<usize>(), 1, "{requests:?}");
    let stored = stored_file(&config_dir);
    let default_id = stored["default_client_id"].as_str().unwrap();
    assert_eq!(requests.get(default_id), Some(&1));
    assert!(stored_credentials(&config_dir, sim.base_url(), default_id)["token"].is_string());
    assert_eq!(
        std::fs::read_dir(config_dir.join("locks")).unwrap().count(),
        0,
        "no lock file outlives its lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_at_once_with_one_fixed_client_id_make_one_token_request() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let config_dir = dir.path().join("nemovideo");
    let client_id = "5d1b3e8e-0c1a-4a44-8f0d-2b7c9e3a4f10";
    let identities = run_processes(sim.base_url(), &config_dir, Some(client_id), 6).await;

    let distinct: BTreeSet<_> = identities.iter().collect();
    assert_eq!(distinct.len(), 1, "{identities:?}");
    assert!(identities[0].starts_with(client_id));
    assert_eq!(sim.token_requests_for(client_id), 1);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
}

// ---------------------------------------------------------------------------------------
// A stray 401, and a token dropped only when replaced
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_401_with_a_valid_token_keeps_it_and_a_new_process_uses_it() {
    // A gateway answers 401 once while the token is good. The service (strict: one token
    // per client id per 7 days) refuses a new one; the same token is tried again, works,
    // and stays stored.
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let config_dir = dir.path().join("nemovideo");
    let client = sim_client(&sim, &config_dir);
    client.credits().await.unwrap();
    let first = client.anonymous_credentials().await.unwrap();
    sim.fail_next(
        Endpoint::Credits,
        1,
        Failure::Code {
            http: 401,
            code: 1001,
        },
    );
    client.credits().await.expect("the call succeeds");
    assert_eq!(
        sim.token_requests_for(&first.client_id),
        2,
        "one refused ask"
    );
    assert_eq!(
        stored_credentials(&config_dir, sim.base_url(), &first.client_id)["token"],
        first.token.expose(),
        "still stored"
    );
    // Later calls use it without asking again.
    client.credits().await.unwrap();
    assert_eq!(sim.token_requests_for(&first.client_id), 2);

    // A new process on the same dir: the stored token, and no token request.
    let identities = run_processes(sim.base_url(), &config_dir, None, 1).await;
    assert!(
        identities[0].starts_with(&first.client_id),
        "{identities:?}"
    );
    assert_eq!(sim.token_requests_for(&first.client_id), 2);
}

#[tokio::test]
async fn a_token_rejected_twice_with_no_new_one_left_is_a_quota_error_and_stays_stored() {
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_REJECTED",
        DAY,
        3 * DAY as i64,
    );
    mount_credits(&server, code(1001, "token expired")).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(10))
        .mount(&server)
        .await;
    let client = client(&server, dir.path());
    let err = client.credits().await.unwrap_err();
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(calls.len(), 2, "the token, then the same token once more");
    assert!(calls
        .iter()
        .all(|call| header(call, "authorization") == Some("Bearer nmv_usr_REJECTED")));
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        "nmv_usr_REJECTED",
        "a token is dropped only when a new one replaces it"
    );
    // The refusal is remembered, in the store too: no client asks again for a while.
    let not_before = stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["refresh_not_before"]
        .as_u64()
        .expect("the refusal is stored");
    assert!(not_before >= unix_now() + 9 * 60, "{not_before}");
    let err = client.credits().await.unwrap_err();
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        1,
        "not asked again"
    );
}

#[tokio::test]
async fn a_401_replaces_the_token_when_the_service_issues_a_new_one() {
    // The service's own word (its quota lifted, here by the simulator's expiry): the new
    // token replaces the rejected one, in memory and on disk.
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let client = sim_client(&sim, dir.path());
    client.credits().await.unwrap();
    let first = client.anonymous_credentials().await.unwrap();
    sim.expire_tokens();
    client.credits().await.unwrap();
    let second = client.anonymous_credentials().await.unwrap();
    assert_ne!(first.token, second.token);
    assert_eq!(
        stored_credentials(dir.path(), sim.base_url(), &second.client_id)["token"],
        second.token.expose()
    );
    assert_eq!(sim.token_requests_for(&first.client_id), 2);
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_call_dropped_while_its_token_request_is_in_flight_still_saves_the_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(ANON_TOKEN).set_delay(Duration::from_millis(300)))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    // The caller gives up long before the answer comes.
    let call = tokio::time::timeout(Duration::from_millis(20), client.credits()).await;
    assert!(call.is_err(), "the call was cut");
    assert!(
        client.identity_busy(),
        "the token request goes on without it"
    );
    assert!(client.settle_identity(Duration::from_secs(30)).await);
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        ANON_TOKEN,
        "the issued token was saved"
    );
    drop(client);
    // The next call, from a new client: no second token request.
    let again = support::mock::client(&server, dir.path());
    again.credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(
        header(
            &requests_to(&server, CREDITS_PATH).await[0],
            "authorization"
        ),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
}

#[tokio::test]
async fn a_token_request_that_gets_no_answer_is_not_sent_again() {
    // Its answer may still be on the way: a second request would be refused for the week.
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(ANON_TOKEN).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let client = builder(&server, dir.path())
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// The file store keeps what it cannot read
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_file_store_beside_an_odd_entry_keeps_it_byte_for_byte() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let origin = server.uri();
    // Another tool (or a newer version) wrote these: a float where a number is expected, an
    // entry of a shape this version does not know, and a top-level field of its own.
    let odd_entry = r#"{"version":3,"credentials":{"token":["not","a","string"]},"extra":1.50}"#;
    let odd_top = r#"{"kept":[1,2.0e3,"x"]}"#;
    let file = format!(
        r#"{{"default_client_id":"{CLIENT_ID}","services":{{"{origin}":{{"other-user":{odd_entry},"float-user":{{"version":1,"credentials":{{"client_id":"float-user","token":"nmv_usr_FLOAT","obtained_at":1700000000.5,"expires_at":4102444800}}}}}}}},"tool_settings":{odd_top}}}"#
    );
    std::fs::write(dir.path().join("credentials.json"), &file).unwrap();
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;

    client(&server, dir.path()).credits().await.unwrap();
    let written = std::fs::read_to_string(dir.path().join("credentials.json")).unwrap();
    assert!(
        written.contains(odd_entry),
        "the odd entry, byte for byte:\n{written}"
    );
    assert!(
        written.contains(odd_top),
        "the unknown field, byte for byte:\n{written}"
    );
    assert_eq!(
        stored_credentials(dir.path(), &origin, CLIENT_ID)["token"],
        ANON_TOKEN
    );
    // The float is read, not a reason to drop the identity.
    let float_user = NemoClient::builder()
        .base_url(server.uri())
        .config_dir(dir.path())
        .client_id("float-user")
        .retry(fast_retry())
        .build()
        .unwrap();
    let creds = float_user.anonymous_credentials().await.unwrap();
    assert_eq!(creds.token.expose(), "nmv_usr_FLOAT");
    assert_eq!(creds.obtained_at, 1_700_000_000);
    // The odd entry itself is reported, never replaced.
    let odd_user = NemoClient::builder()
        .base_url(server.uri())
        .config_dir(dir.path())
        .client_id("other-user")
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = odd_user.credits().await.unwrap_err();
    assert!(err.to_string().contains("other-user"), "{err}");
    assert!(err.to_string().contains("kept as it is"), "{err}");
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        1,
        "nobody asked for it"
    );
    let written = std::fs::read_to_string(dir.path().join("credentials.json")).unwrap();
    assert!(written.contains(odd_entry));
}

#[cfg(unix)]
#[tokio::test]
async fn a_credentials_file_that_cannot_be_read_fails_the_call_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    // Root reads any file whatever its mode; a directory in its place fails for everyone.
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_KEEP",
        DAY,
        3 * DAY as i64,
    );
    let file = dir.path().join("credentials.json");
    let before = std::fs::read(&file).unwrap();
    let unreadable = if nix_is_root() {
        // Swap in a directory for the read, then put the file back.
        std::fs::rename(&file, dir.path().join("real.json")).unwrap();
        std::fs::create_dir(&file).unwrap();
        false
    } else {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
        true
    };
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = builder(&server, dir.path())
        .client_id("another-user")
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("could not read"), "{err}");
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 0);
    if unreadable {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    } else {
        std::fs::remove_dir(&file).unwrap();
        std::fs::rename(dir.path().join("real.json"), &file).unwrap();
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "nothing was replaced"
    );
    // Readable again: both identities live side by side.
    client.credits().await.unwrap();
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        "nmv_usr_KEEP"
    );
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), "another-user")["token"],
        ANON_TOKEN
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_proxy_plain_400_on_the_token_call_keeps_the_client_id() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_string("Bad Request"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = NemoClient::builder()
        .base_url(server.uri())
        .config_dir(dir.path())
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert_eq!(err.http_status(), Some(400), "{err:?}");
    assert!(!matches!(err, Error::MissingClientId { .. }), "{err:?}");
    let id = stored_file(dir.path())["default_client_id"]
        .as_str()
        .unwrap()
        .to_string();
    client.credits().await.unwrap();
    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 2);
    assert!(tokens
        .iter()
        .all(|t| header(t, "x-client-id") == Some(id.as_str())));
    assert_eq!(
        stored_file(dir.path())["default_client_id"],
        id.as_str(),
        "the same account"
    );
}

// ---------------------------------------------------------------------------------------
// Identities scoped to their service
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn one_config_dir_against_two_services_keeps_each_identity_and_no_token_crosses() {
    let production = MockServer::start().await;
    let staging = MockServer::start().await;
    let dir = tempdir();
    for (server, token) in [(&production, "nmv_usr_PROD"), (&staging, "nmv_usr_STAGING")] {
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(token_response(token))
            .mount(server)
            .await;
        mount_credits(server, ok(credits_body())).await;
    }
    let on = |server: &MockServer| {
        NemoClient::builder()
            .base_url(server.uri())
            .config_dir(dir.path())
            .retry(fast_retry())
            .build()
            .unwrap()
    };
    on(&production).credits().await.unwrap();
    on(&staging).credits().await.unwrap();
    // Back and forth, from new clients: no more token requests anywhere.
    on(&production).credits().await.unwrap();
    on(&staging).credits().await.unwrap();
    assert_eq!(requests_to(&production, TOKEN_PATH).await.len(), 1);
    assert_eq!(requests_to(&staging, TOKEN_PATH).await.len(), 1);
    for (server, token) in [(&production, "nmv_usr_PROD"), (&staging, "nmv_usr_STAGING")] {
        for call in requests_to(server, CREDITS_PATH).await {
            assert_eq!(
                header(&call, "authorization"),
                Some(format!("Bearer {token}").as_str()),
                "only this service's own token"
            );
        }
    }
    let id = stored_file(dir.path())["default_client_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        stored_credentials(dir.path(), &production.uri(), &id)["token"],
        "nmv_usr_PROD"
    );
    assert_eq!(
        stored_credentials(dir.path(), &staging.uri(), &id)["token"],
        "nmv_usr_STAGING"
    );
}

// ---------------------------------------------------------------------------------------
// A save that fails
// ---------------------------------------------------------------------------------------

/// An app store whose database can be switched off, counting what the SDK asks of it.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    down: AtomicBool,
    saves: AtomicUsize,
    leases: AtomicUsize,
}

impl CredentialStore for FlakyStore {
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        self.inner.load(key)
    }

    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(Error::Io {
                    action: "could not write to",
                    path: "the app database".into(),
                    source: std::io::Error::other("connection refused"),
                })
            });
        }
        self.inner.save(key, credentials, expected_version)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a IdentityKey,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<Lease>> {
        self.leases.fetch_add(1, Ordering::SeqCst);
        self.inner.try_lease(key, ttl)
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
        self.inner.renew_lease(lease)
    }

    fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
        self.inner.release_lease(lease)
    }
}

#[tokio::test]
async fn a_failed_save_is_reported_retried_and_the_next_client_asks_for_nothing() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let store = Arc::new(FlakyStore::default());
    store.down.store(true, Ordering::SeqCst);
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = events.clone();
    let server_client = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(store.clone())
        .retry(fast_retry())
        .on_identity_event(move |event| {
            let name = match event {
                IdentityEvent::TokenIssued { .. } => "issued",
                IdentityEvent::SaveFailed { .. } => "save failed",
                IdentityEvent::Saved { .. } => "saved",
                IdentityEvent::RefreshRefused { .. } => "refused",
                _ => "other",
            };
            seen.lock().unwrap().push(name.to_string());
        })
        .build()
        .unwrap();
    let alice = server_client.for_identity("alice").unwrap();
    alice
        .credits()
        .await
        .expect("the token works while unsaved");
    assert_eq!(
        *events.lock().unwrap(),
        ["issued", "save failed"],
        "the app is told"
    );
    assert!(alice.identity_busy(), "the save is still being retried");

    // The next client of the same user (a new request handler, say) asks for nothing.
    let again = server_client.for_identity("alice").unwrap();
    again.credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);

    // The database comes back: the background retry saves the token.
    store.down.store(false, Ordering::SeqCst);
    assert!(alice.settle_identity(Duration::from_secs(600)).await);
    assert_eq!(
        events.lock().unwrap().last().map(String::as_str),
        Some("saved")
    );
    let saved = store
        .inner
        .get(&IdentityKey::new(server.uri(), "alice"))
        .unwrap();
    assert_eq!(saved.token.expose(), ANON_TOKEN);
}

// ---------------------------------------------------------------------------------------
// The week: no refresh that the service must refuse, and the service's clock decides
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn twenty_new_clients_in_a_tokens_last_ten_minutes_ask_for_nothing() {
    let server = MockServer::start().await;
    let dir = tempdir();
    // Issued 7 days minus 9 minutes ago, expiring in 9 minutes: within the week, so the
    // service would refuse a new one.
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_OLD_STILL_VALID",
        7 * DAY - 540,
        540,
    );
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(60_000))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let root = NemoClient::builder()
        .base_url(server.uri())
        .config_dir(dir.path())
        .retry(fast_retry())
        .build()
        .unwrap();
    for _ in 0..20 {
        root.for_identity(CLIENT_ID)
            .unwrap()
            .credits()
            .await
            .expect("the old token still works");
    }
    assert!(
        requests_to(&server, TOKEN_PATH).await.len() <= 1,
        "at most one refused refresh in all"
    );
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        0,
        "in fact none"
    );
    for call in requests_to(&server, CREDITS_PATH).await {
        assert_eq!(
            header(&call, "authorization"),
            Some("Bearer nmv_usr_OLD_STILL_VALID")
        );
    }
}

#[tokio::test]
async fn a_token_expired_by_the_local_clock_is_used_when_a_new_one_is_refused() {
    // Issued 8 days ago, expired 10 minutes ago by this machine's clock: a new token may be
    // asked for, and the service refuses it. Its clock runs behind: it still accepts the old.
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_SKEWED",
        8 * DAY,
        -600,
    );
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(10))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path())
        .credits()
        .await
        .expect("the service decides");
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(
        header(
            &requests_to(&server, CREDITS_PATH).await[0],
            "authorization"
        ),
        Some("Bearer nmv_usr_SKEWED")
    );
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        "nmv_usr_SKEWED"
    );
}

#[tokio::test]
async fn a_token_expired_by_the_local_clock_within_its_week_is_used_without_asking() {
    // Issued 6 days ago but "expired" by this machine's clock: the service cannot issue a
    // new one yet, so none is asked for; its clock decides whether this one still works.
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_SKEWED",
        6 * DAY,
        -600,
    );
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 0);
}

#[tokio::test]
async fn an_expired_token_past_its_week_is_replaced() {
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_OLD",
        8 * DAY,
        -(DAY as i64),
    );
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(
        header(
            &requests_to(&server, CREDITS_PATH).await[0],
            "authorization"
        ),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        ANON_TOKEN
    );
}

#[tokio::test]
async fn an_expired_token_is_not_used_when_the_token_call_fails_otherwise() {
    // A 500 is not the service refusing a token: the call fails (and says why) rather than
    // sending a token that expired a day ago.
    let server = MockServer::start().await;
    let dir = tempdir();
    store_token(
        dir.path(),
        &server.uri(),
        CLIENT_ID,
        "nmv_usr_OLD",
        8 * DAY,
        -(DAY as i64),
    );
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream down"))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let err = client(&server, dir.path()).credits().await.unwrap_err();
    assert_eq!(err.http_status(), Some(500), "{err:?}");
    assert!(requests_to(&server, CREDITS_PATH).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Many users on one store
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identities_share_one_file_store_and_survive_a_restart() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let ids: Vec<String> = (0..100).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let run_all = |store: Arc<dyn CredentialStore>| {
        let ids = ids.clone();
        let base = sim.base_url().to_string();
        async move {
            let tasks: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let client = NemoClient::builder()
                        .base_url(base.clone())
                        .credential_store(store.clone())
                        .client_id(id)
                        .retry(fast_retry())
                        .build()
                        .unwrap();
                    tokio::spawn(async move { client.credits().await })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().expect("every user's call succeeds");
            }
        }
    };
    run_all(Arc::new(FileStore::new(dir.path()))).await;
    let requests = sim.token_requests_by_client();
    assert_eq!(requests.len(), 100);
    assert!(requests.values().all(|n| *n == 1), "{requests:?}");
    let stored = stored_file(dir.path());
    let origin = url::Url::parse(sim.base_url())
        .unwrap()
        .origin()
        .ascii_serialization();
    let saved: BTreeSet<&str> = stored["services"][&origin]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(saved, wanted, "no entry lost");
    assert!(stored.get("default_client_id").is_none());

    // A restart: new clients over a new store object on the same directory (the clients of
    // the first round are gone, and with them the process's copies of the identities).
    run_all(Arc::new(FileStore::new(dir.path()))).await;
    assert_eq!(
        sim.request_count(Endpoint::AnonymousToken),
        100,
        "no token request after the restart"
    );
    assert_eq!(sim.request_count(Endpoint::Credits), 200);
}

#[tokio::test]
async fn users_coming_back_with_fresh_tokens_take_no_lease() {
    // 300 users whose tokens are stored and fresh: no lease, no save, no token request.
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let store = Arc::new(FlakyStore::default());
    for i in 0..300 {
        let id = format!("user-{i}");
        store.inner.insert(
            IdentityKey::new(server.uri(), id.clone()),
            AnonymousCredentials::new(id, format!("nmv_usr_{i}")).with_expires_at(unix_now() + DAY),
        );
    }
    let root = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(store.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let user = root.for_identity(format!("user-{i}")).unwrap();
            tokio::spawn(async move { user.credits().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(store.leases.load(Ordering::SeqCst), 0);
    assert_eq!(store.saves.load(Ordering::SeqCst), 0);
    assert!(requests_to(&server, TOKEN_PATH).await.is_empty());
}

#[tokio::test]
async fn clients_for_many_identities_share_one_client_and_one_memory_store() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let server = NemoClient::builder()
        .base_url(sim.base_url())
        .credential_store(store.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let users: Vec<NemoClient> = (0..20)
        .map(|i| server.for_identity(format!("user-{i}")).unwrap())
        .collect();
    for user in &users {
        user.credits().await.unwrap();
        user.credits().await.unwrap();
    }
    assert_eq!(store.len(), 20);
    assert_eq!(store.leases_held(), 0, "every lease was released");
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 20);
    for i in 0..20 {
        assert_eq!(sim.token_requests_for(&format!("user-{i}")), 1);
    }
    // Each identity is its own anonymous user.
    let user_ids: BTreeSet<_> = store
        .identities()
        .into_iter()
        .map(|(_, creds)| creds.user_id.unwrap())
        .collect();
    assert_eq!(user_ids.len(), 20);
    // A client for an identity the store already holds needs no token request.
    let again = server.for_identity("user-7").unwrap();
    again.credits().await.unwrap();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 20);
    let key = IdentityKey::new(sim.base_url(), "user-7");
    assert!(
        format!("{:?}", store.get(&key).unwrap()).contains("***"),
        "tokens print as ***"
    );
}

/// The shard the `MemoryStore` of earlier versions locked for `client_id` (one of 64, by
/// std's default hasher): two ids on one shard waited for each other's whole fetch.
fn old_shard(client_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut hasher);
    hasher.finish() % 64
}

#[tokio::test]
async fn one_users_stalled_token_request_does_not_delay_another_users_first_call() {
    // Two users that shared a lock shard in earlier versions.
    let slow = "user-0".to_string();
    let fast = (1..)
        .map(|i| format!("user-{i}"))
        .find(|id| old_shard(id) == old_shard(&slow))
        .unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header_is("x-client-id", slow.as_str()))
        .respond_with(token_response("nmv_usr_SLOW").set_delay(Duration::from_secs(60)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header_is("x-client-id", fast.as_str()))
        .respond_with(token_response("nmv_usr_FAST"))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let root = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(Arc::new(MemoryStore::new()))
        .request_timeout(Duration::from_secs(60))
        .retry(fast_retry())
        .build()
        .unwrap();
    let slow_call = {
        let user = root.for_identity(slow.clone()).unwrap();
        tokio::spawn(async move { user.credits().await })
    };
    // The slow user's token request has reached the server before the other user starts.
    assert!(
        support::eventually_async(Duration::from_secs(30), || async {
            requests_to(&server, TOKEN_PATH).await.len() == 1
        })
        .await
    );
    root.for_identity(fast.clone())
        .unwrap()
        .credits()
        .await
        .unwrap();
    assert!(
        !slow_call.is_finished(),
        "the other user did not wait for it"
    );
    slow_call.abort();
}

// ---------------------------------------------------------------------------------------
// Store calls with time limits
// ---------------------------------------------------------------------------------------

/// A store whose every call hangs forever (a database stuck on a lock).
struct HangingStore;

fn forever<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::pending())
}

impl CredentialStore for HangingStore {
    fn load<'a>(&'a self, _: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        forever()
    }
    fn save<'a>(
        &'a self,
        _: &'a IdentityKey,
        _: &'a AnonymousCredentials,
        _: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        forever()
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_call_that_hangs_fails_the_call_with_a_typed_error_in_time() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(Arc::new(HangingStore))
        .client_id(CLIENT_ID)
        .store_timeout(Duration::from_secs(3))
        .retry(fast_retry())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client.credits().await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, Error::StoreTimeout { after, .. } if after == Duration::from_secs(3)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(err.to_string().contains("store"), "{err}");
    assert!(requests_to(&server, TOKEN_PATH).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_elsewhere_past_the_longest_hold_is_a_typed_error_without_a_request() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let store = Arc::new(MemoryStore::new());
    // "Another worker" holds the identity's lease and keeps renewing it.
    let key = IdentityKey::new(server.uri(), CLIENT_ID);
    let held = store
        .try_lease(&key, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    let client = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(store.clone())
        .client_id(CLIENT_ID)
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(
        matches!(err, Error::StoreTimeout { after, .. } if after == nemo_video::auth::MAX_LEASE_WAIT),
        "{err:?}"
    );
    assert!(requests_to(&server, TOKEN_PATH).await.is_empty());
    // Real time again for real requests (a paused clock jumps past their time limits
    // while the server answers).
    tokio::time::resume();
    store.release_lease(held).await.unwrap();
    client.credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
}

#[test]
fn a_file_store_does_not_stall_the_runtime_with_ten_thousand_identities() {
    // A current-thread runtime: anything blocking it stops the ticker below.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempdir();
    let origin = "https://mega-api-prod.nemovideo.ai";
    let mut identities = serde_json::Map::new();
    for i in 0..10_000 {
        let id = format!("user-{i:05}");
        identities.insert(
            id.clone(),
            json!({"version": 1, "credentials": {
                "client_id": id, "token": format!("nmv_usr_{i:040}"), "user_id": format!("anon_{i}"),
                "expires_at": 4_102_444_800u64, "obtained_at": 1_700_000_000u64
            }}),
        );
    }
    std::fs::write(
        dir.path().join("credentials.json"),
        json!({"services": {origin: identities}}).to_string(),
    )
    .unwrap();
    runtime.block_on(async {
        let store = FileStore::new(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                let mut last = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
                longest
            })
        };
        let started = Instant::now();
        for i in 0..5 {
            let key = IdentityKey::new(origin, format!("new-{i}"));
            let creds = AnonymousCredentials::new(format!("new-{i}"), "nmv_usr_NEW");
            assert!(matches!(
                store.save(&key, &creds, None).await.unwrap(),
                SaveOutcome::Saved { version: 1 }
            ));
            assert!(store.load(&key).await.unwrap().is_some());
        }
        let work = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let longest = ticker.await.unwrap();
        println!("5 saves and loads of a 10,000-identity file: {work:?}; longest runtime stall: {longest:?}");
        assert!(
            longest * 5 < work,
            "the runtime stalled for {longest:?} during {work:?} of file work"
        );
    });
}

// ---------------------------------------------------------------------------------------
// The store contract, as the SDK uses it
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn saves_are_compare_and_set_in_every_store() {
    let dir = tempdir();
    let stores: Vec<(&str, Arc<dyn CredentialStore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("file", Arc::new(FileStore::new(dir.path()))),
    ];
    for (name, store) in stores {
        let key = IdentityKey::new("http://127.0.0.1:1", "cas-user");
        let first = AnonymousCredentials::new("cas-user", "nmv_usr_FIRST");
        let second = AnonymousCredentials::new("cas-user", "nmv_usr_SECOND");
        let v1 = match store.save(&key, &first, None).await.unwrap() {
            SaveOutcome::Saved { version } => version,
            other => panic!("{name}: {other:?}"),
        };
        // A second writer that read "nothing" loses, and learns what is there.
        match store.save(&key, &second, None).await.unwrap() {
            SaveOutcome::Conflict {
                current: Some(current),
            } => {
                assert_eq!(
                    current.credentials.token.expose(),
                    "nmv_usr_FIRST",
                    "{name}"
                );
                assert_eq!(current.version, v1, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        let v2 = match store.save(&key, &second, Some(v1)).await.unwrap() {
            SaveOutcome::Saved { version } => version,
            other => panic!("{name}: {other:?}"),
        };
        assert!(v2 > v1, "{name}");
        // A holder whose lease lapsed, writing against the old version, cannot overwrite.
        assert!(
            matches!(
                store.save(&key, &first, Some(v1)).await.unwrap(),
                SaveOutcome::Conflict { .. }
            ),
            "{name}"
        );
        let now = store.load(&key).await.unwrap().unwrap();
        assert_eq!(now.credentials.token.expose(), "nmv_usr_SECOND", "{name}");
        assert_eq!(now.version, v2, "{name}");
        // Other services' identities are others.
        assert!(store
            .load(&IdentityKey::new("http://127.0.0.1:2", "cas-user"))
            .await
            .unwrap()
            .is_none());
        // One holder at a time; a released lease can be taken again.
        let lease = store
            .try_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .try_lease(&key, Duration::from_secs(30))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        assert!(store.renew_lease(&lease).await.unwrap(), "{name}");
        store.release_lease(lease).await.unwrap();
        let again = store
            .try_lease(&key, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(again.is_some(), "{name}");
        store.release_lease(again.unwrap()).await.unwrap();
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("locks")).unwrap().count(),
        0,
        "released leases leave no lock files"
    );
}

#[tokio::test]
async fn a_lapsed_memory_lease_is_taken_over_and_its_holder_cannot_renew_it() {
    let store = MemoryStore::new();
    let key = IdentityKey::new("http://127.0.0.1:1", "lapsing");
    let first = store
        .try_lease(&key, Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .try_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    // The holder stalls past its time to live.
    assert!(
        support::eventually_async(Duration::from_secs(30), || async {
            store
                .try_lease(&key, Duration::from_secs(30))
                .await
                .unwrap()
                .map(|lease| {
                    std::mem::forget(lease);
                })
                .is_some()
        })
        .await
    );
    assert!(
        !store.renew_lease(&first).await.unwrap(),
        "lost to the new holder"
    );
}

// ---------------------------------------------------------------------------------------
// An app's own store
// ---------------------------------------------------------------------------------------

/// A store over "the app's database" (a map of JSON rows with versions), counting saves.
#[derive(Default)]
struct AppStore {
    rows: Mutex<HashMap<IdentityKey, (u64, String)>>,
    saves: AtomicUsize,
}

impl CredentialStore for AppStore {
    fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
        Box::pin(async move {
            let row = self.rows.lock().unwrap().get(key).cloned();
            Ok(row.map(|(version, json)| {
                StoredCredentials::new(
                    serde_json::from_str(&json).expect("rows are valid"),
                    version,
                )
            }))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a IdentityKey,
        credentials: &'a AnonymousCredentials,
        expected_version: Option<u64>,
    ) -> StoreFuture<'a, SaveOutcome> {
        Box::pin(async move {
            self.saves.fetch_add(1, Ordering::SeqCst);
            let mut rows = self.rows.lock().unwrap();
            let current = rows.get(key).map(|(version, _)| *version);
            if current != expected_version {
                return Ok(SaveOutcome::Conflict {
                    current: rows.get(key).map(|(version, json)| {
                        StoredCredentials::new(serde_json::from_str(json).unwrap(), *version)
                    }),
                });
            }
            let version = current.unwrap_or(0) + 1;
            rows.insert(
                key.clone(),
                (version, serde_json::to_string(credentials).unwrap()),
            );
            Ok(SaveOutcome::Saved { version })
        })
    }
}

#[tokio::test]
async fn an_app_store_restores_identities_and_learns_new_tokens() {
    let server = MockServer::start().await;
    const SECOND: &str = "nmv_usr_SECOND_FROM_REAUTH";
    // The restored token is rejected once; the re-authentication's token is accepted.
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is("authorization", "Bearer nmv_usr_RESTORED"))
        .respond_with(code(1001, "token expired"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is(
            "authorization",
            format!("Bearer {SECOND}").as_str(),
        ))
        .respond_with(ok(credits_body()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(SECOND))
        .mount(&server)
        .await;
    let store = Arc::new(AppStore::default());
    let key = IdentityKey::new(server.uri(), "user-42");
    store.rows.lock().unwrap().insert(
        key.clone(),
        (
            7,
            serde_json::to_string(
                &AnonymousCredentials::new("user-42", "nmv_usr_RESTORED")
                    .with_user_id("anon_restored")
                    .with_expires_at(unix_now() + 3 * DAY),
            )
            .unwrap(),
        ),
    );
    let client = NemoClient::builder()
        .base_url(server.uri())
        .web_url(WEB_URL)
        .credential_store(store.clone())
        .client_id("user-42")
        .retry(fast_retry())
        .build()
        .unwrap();
    // Before any request: the restored identity is visible.
    let restored = client.anonymous_credentials().await.unwrap();
    assert_eq!(restored.token.expose(), "nmv_usr_RESTORED");
    assert_eq!(
        client.registration_url().await.as_deref(),
        Some(format!("{WEB_URL}/register?bind=anon_restored").as_str())
    );

    client.credits().await.unwrap();
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        1,
        "new token saved, once"
    );
    let (version, row) = store.rows.lock().unwrap()[&key].clone();
    assert_eq!(version, 8, "against the version it read");
    let row: AnonymousCredentials = serde_json::from_str(&row).unwrap();
    assert_eq!(row.token.expose(), SECOND);
    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(header(&tokens[0], "x-client-id"), Some("user-42"));
}

#[tokio::test]
async fn a_store_without_a_default_identity_asks_for_a_client_id() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(Arc::new(AppStore::default()))
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("client_id"), "{err}");
    assert!(requests_to(&server, TOKEN_PATH).await.is_empty());
}

#[tokio::test]
async fn two_clients_of_one_identity_in_one_process_make_one_token_request() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(ANON_TOKEN).set_delay(Duration::from_millis(100)))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    // Separate clients (not clones) over separate store objects: the identity is the
    // process's, shared by both.
    let a = client(&server, dir.path());
    let b = client(&server, dir.path());
    let (ra, rb) = tokio::join!(a.credits(), b.credits());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
}

#[test]
fn for_identity_refuses_a_fixed_token_client_and_bad_ids() {
    let fixed = NemoClient::builder()
        .token(FIXED_TOKEN)
        .no_persistence()
        .build()
        .unwrap();
    let err = fixed.for_identity("user-1").unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let anonymous = NemoClient::builder().no_persistence().build().unwrap();
    assert!(anonymous.for_identity("has space").is_err());
    assert!(anonymous.for_identity("").is_err());
}

// ---------------------------------------------------------------------------------------
// 429 on the token call, with no token at all
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_429_on_the_first_token_call_waits_once_and_replays_once_for_the_whole_call() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(300))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let started = Instant::now();
    let err = client.credits().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300), "one wait");
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        2,
        "one request and one replay, not nested"
    );
    assert!(requests_to(&server, CREDITS_PATH).await.is_empty());
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::Never);
    assert!(!matches!(
        err.retry_policy(),
        nemo_video::RetryPolicy::Backoff | nemo_video::RetryPolicy::WaitThenRetryOnce(_)
    ));
    assert!(err.is_rate_limited());
    assert_eq!(err.http_status(), Some(429));
    let message = err.to_string();
    for words in [
        CLIENT_ID,
        "one per client id per 7 days",
        "reuse the credentials",
        "register",
        "NEMO_TOKEN",
    ] {
        assert!(message.contains(words), "{words:?} missing from: {message}");
    }
    assert!(
        !message.contains("wait"),
        "waiting does not help: {message}"
    );
    assert_no_token(&err);
    // Remembered: the next call in this process does not ask again.
    client.credits().await.unwrap_err();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
}

#[tokio::test]
async fn a_429_then_a_token_is_one_wait_and_a_success() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(50))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 1);
}

#[tokio::test]
async fn five_callers_on_one_identity_share_the_fetch_and_its_failure() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(200))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.credits().await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    }
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2, "in all");
}

/// Answers the token call with a 429 (`retry-after-ms: 400`) after "another process" saved
/// the identity's token in `dir`: the save happens before the client even sees the 429, so
/// it is there when the client looks again after its wait, however slow the machine.
struct SaveThen429 {
    dir: std::path::PathBuf,
    origin: String,
}

impl wiremock::Respond for SaveThen429 {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let dir = self.dir.clone();
        let key = IdentityKey::new(self.origin.clone(), CLIENT_ID);
        // On a runtime of its own: this runs inside the mock server's.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(
                    FileStore::new(&dir).save(
                        &key,
                        &AnonymousCredentials::new(CLIENT_ID, "nmv_usr_FROM_OTHER_PROCESS")
                            .with_expires_at(unix_now() + DAY),
                        None,
                    ),
                )
                .unwrap();
        })
        .join()
        .unwrap();
        token_rate_limited(400)
    }
}

#[tokio::test]
async fn a_token_saved_by_another_process_during_the_wait_is_used_instead_of_a_replay() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(SaveThen429 {
            dir: dir.path().to_path_buf(),
            origin: server.uri(),
        })
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    client.credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1, "no replay");
    let credits = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(
        header(&credits[0], "authorization"),
        Some("Bearer nmv_usr_FROM_OTHER_PROCESS")
    );
}

#[tokio::test]
async fn wait_for_render_stops_at_a_token_quota_error() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(20))
        .mount(&server)
        .await;
    let client = client(&server, dir.path());
    let job = RenderJob::from_id("render_1", "7301234567890123456");
    let err = client
        .wait_for_render(
            &job,
            &WaitOptions::default()
                .poll_interval(Duration::from_millis(10))
                .max_wait(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
}

// ---------------------------------------------------------------------------------------
// The token response, read tolerantly
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_token_response_shapes() {
    let now = unix_now();
    // (data, expected expiry: None = "about 7 days from now", expected credits)
    let far = 1_795_497_007u64;
    let cases: Vec<(Value, Option<u64>, Option<f64>)> = vec![
        (
            json!({"token": "nmv_usr_A", "user_id": "anon_1", "expires_at": "2026-11-24T05:10:07Z", "credits": 100}),
            Some(far),
            Some(100.0),
        ),
        (
            json!({"token": "nmv_usr_A", "expires_at": "2026-11-24T13:10:07.123+08:00"}),
            Some(far),
            None,
        ),
        (
            json!({"token": "nmv_usr_A", "expires_at": far}),
            Some(far),
            None,
        ),
        (
            json!({"token": "nmv_usr_A", "expires_at": far * 1000 + 123}),
            Some(far),
            None,
        ),
        (
            json!({"token": "nmv_usr_A", "expires_at": far.to_string()}),
            Some(far),
            None,
        ),
        (
            json!({"token": "nmv_usr_A", "expires_in": 3600, "credits": "100"}),
            Some(now + 3600),
            Some(100.0),
        ),
        (
            json!({"token": "nmv_usr_A", "credits": "12.5", "unknown": {"x": [1, 2]}, "plan": "free"}),
            None,
            Some(12.5),
        ),
        (
            json!({"token": "nmv_usr_A", "user_id": 7301234567890123456u64, "expires_at": null, "credits": null}),
            None,
            None,
        ),
        (
            json!({"token": "nmv_usr_A", "expires_at": "not a date", "credits": "lots"}),
            None,
            None,
        ),
    ];
    for (data, expires, credits) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(ok(data.clone()))
            .mount(&server)
            .await;
        mount_credits(&server, ok(credits_body())).await;
        let store = Arc::new(MemoryStore::new());
        let client = NemoClient::builder()
            .base_url(server.uri())
            .credential_store(store.clone())
            .client_id(CLIENT_ID)
            .retry(fast_retry())
            .build()
            .unwrap();
        client
            .credits()
            .await
            .unwrap_or_else(|err| panic!("{data}: {err}"));
        let creds = store
            .get(&IdentityKey::new(server.uri(), CLIENT_ID))
            .expect("saved");
        assert_eq!(creds.token.expose(), "nmv_usr_A", "{data}");
        match expires {
            Some(at) => assert!(
                creds.expires_at_unix().abs_diff(at) <= 5,
                "{data}: {}",
                creds.expires_at_unix()
            ),
            None => assert!(
                creds.expires_at_unix().abs_diff(now + 7 * DAY) <= 5,
                "{data}: assumed 7 days, got {}",
                creds.expires_at_unix()
            ),
        }
        assert_eq!(creds.credits, credits, "{data}");
        assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1, "{data}");
    }
}

#[tokio::test]
async fn a_token_response_without_a_token_is_a_decode_error_that_quotes_nothing() {
    for data in [
        json!({"tok": "nmv_usr_SECRET_A"}),
        json!({"token": 12345, "note": "nmv_usr_SECRET_A"}),
        json!({"token": ""}),
        json!("nmv_usr_SECRET_A"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(ok(data.clone()))
            .mount(&server)
            .await;
        let err = NemoClient::builder()
            .base_url(server.uri())
            .no_persistence()
            .retry(fast_retry())
            .build()
            .unwrap()
            .credits()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{data}: {err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("nmv_usr_SECRET_A"), "{shown}");
        }
    }
}

#[test]
fn stored_credentials_read_old_and_new_expiry_forms() {
    let old: AnonymousCredentials = serde_json::from_value(json!({
        "client_id": "c", "token": "nmv_usr_x", "expires_at": "2026-11-24T05:10:07Z",
        "credits": 100.0, "obtained_at": 1
    }))
    .unwrap();
    assert_eq!(old.expires_at, Some(1_795_497_007));
    let new: AnonymousCredentials =
        serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
    assert_eq!(new, old);
    assert!(!format!("{old:?}").contains("nmv_usr_x"));
}

#[tokio::test]
async fn a_failing_token_call_is_retried_by_its_own_policy_only() {
    // A server that accepts each connection and closes it at once: every attempt fails.
    // The token call retries as a read does (2 retries); the call that needed the token does
    // not retry around it, so attempts do not multiply (3, not 3 × 3).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let client = NemoClient::builder()
        .base_url(format!("http://{addr}"))
        .no_persistence()
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    server.abort();
    assert!(
        !matches!(err, nemo_video::Error::Unauthorized { .. }),
        "{err:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "{err}");
}

#[tokio::test]
async fn a_refused_token_call_makes_three_connection_attempts_not_nine() {
    // Every connection is refused (the request never leaves): the token call retries as
    // documented (2 retries), and the call that needed the token does not retry around it.
    let resolver = Arc::new(ScriptedResolver::default());
    resolver.refuse_next(API_HOST, 100);
    let http = nemo_video::reqwest::Client::builder()
        .dns_resolver(resolver.clone())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let client = NemoClient::builder()
        .base_url(format!("http://{}:9", API_HOST))
        .http_client(http)
        .no_persistence()
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(err.never_reached_server(), "{err:?}");
    assert_eq!(resolver.refused(), 3, "{err}");
}
