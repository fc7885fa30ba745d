//! Identities shared by many clients, processes and users: credential stores, one token
//! request per identity, the 429 on the token call handled once, early refresh that never
//! loses a valid token, and a tolerant token decode.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nemo_video::auth::{
    AnonymousCredentials, CredentialStore, FileStore, IdentityLock, MemoryStore, SecretToken,
    StoreFuture,
};
use nemo_video::render::{RenderJob, WaitOptions};
use nemo_video::simulator::{Endpoint, Simulator};
use nemo_video::{Error, NemoClient, RetryPolicy};
use serde_json::{json, Value};
use support::faults::{ScriptedResolver, API_HOST};
use support::mock::*;
use support::{fast_retry, tempdir, WEB_URL};
use wiremock::matchers::{header as header_is, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("file written")).expect("JSON")
}

/// A 429 as the service sends it for a second token in the same week, with a short wait.
fn token_rate_limited(wait_ms: u64) -> ResponseTemplate {
    ResponseTemplate::new(429)
        .insert_header("retry-after-ms", wait_ms.to_string().as_str())
        .set_body_json(json!({
            "code": 429,
            "message": "rate limited: one anonymous token per client id per 7 days"
        }))
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
        eprintln!("run by processes_started_at_once_* with {GO_FILE} set; nothing to do");
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
/// `sim` on `config_dir`, lets them go at once, and returns each one's printed identity.
async fn run_processes(
    sim: &Simulator,
    config_dir: &Path,
    client_id: Option<&str>,
    n: usize,
) -> Vec<String> {
    let go = config_dir.with_extension("go");
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
                .env("NEMO_API_BASE", sim.base_url())
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
    let identities = run_processes(&sim, &config_dir, None, 6).await;

    let distinct: BTreeSet<_> = identities.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "all six use one identity: {identities:?}"
    );
    let requests = sim.token_requests_by_client();
    assert_eq!(requests.values().sum::<usize>(), 1, "{requests:?}");
    let stored = read_json(&config_dir.join("credentials.json"));
    let default_id = stored["default_client_id"].as_str().unwrap();
    assert_eq!(requests.get(default_id), Some(&1));
    assert_eq!(stored["identities"].as_object().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_at_once_with_one_fixed_client_id_make_one_token_request() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let config_dir = dir.path().join("nemovideo");
    let client_id = "5d1b3e8e-0c1a-4a44-8f0d-2b7c9e3a4f10";
    let identities = run_processes(&sim, &config_dir, Some(client_id), 6).await;

    let distinct: BTreeSet<_> = identities.iter().collect();
    assert_eq!(distinct.len(), 1, "{identities:?}");
    assert!(identities[0].starts_with(client_id));
    assert_eq!(sim.token_requests_for(client_id), 1);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
}

// ---------------------------------------------------------------------------------------
// Many users on one store
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identities_share_one_file_store_and_survive_a_restart() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let dir = tempdir();
    let store: Arc<dyn CredentialStore> = Arc::new(FileStore::new(dir.path()));
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
    run_all(store.clone()).await;
    let requests = sim.token_requests_by_client();
    assert_eq!(requests.len(), 100);
    assert!(requests.values().all(|n| *n == 1), "{requests:?}");
    let stored = read_json(&dir.path().join("credentials.json"));
    let saved: BTreeSet<&str> = stored["identities"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(saved, wanted, "no entry lost");
    assert!(stored.get("default_client_id").is_none());

    // A restart: new clients over a new store object on the same directory.
    run_all(Arc::new(FileStore::new(dir.path()))).await;
    assert_eq!(
        sim.request_count(Endpoint::AnonymousToken),
        100,
        "no token request after the restart"
    );
    assert_eq!(sim.request_count(Endpoint::Credits), 200);
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
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 20);
    for i in 0..20 {
        assert_eq!(sim.token_requests_for(&format!("user-{i}")), 1);
    }
    // Each identity is its own anonymous user.
    let user_ids: BTreeSet<_> = store
        .identities()
        .into_iter()
        .map(|creds| creds.user_id.unwrap())
        .collect();
    assert_eq!(user_ids.len(), 20);
    // A client for an identity the store already holds needs no token request.
    let again = server.for_identity("user-7").unwrap();
    again.credits().await.unwrap();
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 20);
    assert!(
        format!("{:?}", store.get("user-7").unwrap()).contains("***"),
        "tokens print as ***"
    );
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
    // Separate clients (not clones): only the store's lock can keep them to one request.
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
// An app's own store
// ---------------------------------------------------------------------------------------

/// A store over "the app's database" (a map of JSON rows), counting what the SDK asks of it.
#[derive(Default)]
struct AppStore {
    rows: Mutex<std::collections::HashMap<String, String>>,
    saves: AtomicUsize,
    removes: AtomicUsize,
}

impl CredentialStore for AppStore {
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<AnonymousCredentials>> {
        Box::pin(async move {
            let row = self.rows.lock().unwrap().get(client_id).cloned();
            Ok(row.map(|json| serde_json::from_str(&json).expect("rows are valid")))
        })
    }

    fn save<'a>(&'a self, credentials: &'a AnonymousCredentials) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.saves.fetch_add(1, Ordering::SeqCst);
            self.rows.lock().unwrap().insert(
                credentials.client_id.clone(),
                serde_json::to_string(credentials).unwrap(),
            );
            Ok(())
        })
    }

    fn remove<'a>(&'a self, client_id: &'a str, token: &'a SecretToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.removes.fetch_add(1, Ordering::SeqCst);
            let mut rows = self.rows.lock().unwrap();
            let current: Option<AnonymousCredentials> = rows
                .get(client_id)
                .map(|json| serde_json::from_str(json).unwrap());
            if current.is_some_and(|creds| &creds.token == token) {
                rows.remove(client_id);
            }
            Ok(())
        })
    }

    fn lock<'a>(&'a self, _client_id: &'a str) -> StoreFuture<'a, IdentityLock> {
        Box::pin(async { Ok(IdentityLock::none()) })
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
    store.rows.lock().unwrap().insert(
        "user-42".into(),
        serde_json::to_string(
            &AnonymousCredentials::new("user-42", "nmv_usr_RESTORED")
                .with_user_id("anon_restored")
                .with_expires_at(unix_now() + 3 * 86_400),
        )
        .unwrap(),
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
        client.registration_url().as_deref(),
        Some(format!("{WEB_URL}/register?bind=anon_restored").as_str())
    );

    client.credits().await.unwrap();
    assert_eq!(
        store.removes.load(Ordering::SeqCst),
        1,
        "rejected token removed"
    );
    assert_eq!(store.saves.load(Ordering::SeqCst), 1, "new token saved");
    let row: AnonymousCredentials =
        serde_json::from_str(&store.rows.lock().unwrap()["user-42"]).unwrap();
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

// ---------------------------------------------------------------------------------------
// 429 on the token call
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_429_on_the_token_call_waits_once_and_replays_once_for_the_whole_call() {
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
    assert!(!err.is_transient());
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

#[tokio::test]
async fn a_token_saved_by_another_process_during_the_wait_is_used_instead_of_a_replay() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(400))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.credits().await }
    });
    // "Another process" saves the identity's token while the client waits out the 429.
    while requests_to(&server, TOKEN_PATH).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    FileStore::new(dir.path())
        .save(
            &AnonymousCredentials::new(CLIENT_ID, "nmv_usr_FROM_OTHER_PROCESS")
                .with_expires_at(unix_now() + 86_400),
        )
        .await
        .unwrap();
    call.await.unwrap().unwrap();
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
// Early refresh
// ---------------------------------------------------------------------------------------

fn store_with_token_expiring_in(dir: &Path, seconds: u64) -> PathBuf {
    let path = dir.join("credentials.json");
    std::fs::write(
        &path,
        json!({
            "default_client_id": CLIENT_ID,
            "identities": {
                CLIENT_ID: {
                    "client_id": CLIENT_ID,
                    "token": "nmv_usr_OLD_STILL_VALID",
                    "user_id": "anon_old",
                    "expires_at": unix_now() + seconds,
                    "obtained_at": unix_now() - 7 * 86_400 + seconds
                }
            }
        })
        .to_string(),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_failed_early_refresh_keeps_using_the_valid_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    store_with_token_expiring_in(dir.path(), 9 * 60);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(60_000))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let started = Instant::now();
    for _ in 0..3 {
        client.credits().await.expect("the old token still works");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "no 60 s wait for an early refresh"
    );
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        1,
        "one refresh attempt, not one per call"
    );
    for call in requests_to(&server, CREDITS_PATH).await {
        assert_eq!(
            header(&call, "authorization"),
            Some("Bearer nmv_usr_OLD_STILL_VALID")
        );
    }
}

#[tokio::test]
async fn a_failed_early_refresh_of_any_kind_keeps_the_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    store_with_token_expiring_in(dir.path(), 5 * 60);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream down"))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(
        header(
            &requests_to(&server, CREDITS_PATH).await[0],
            "authorization"
        ),
        Some("Bearer nmv_usr_OLD_STILL_VALID")
    );
}

#[tokio::test]
async fn a_successful_early_refresh_replaces_and_saves_the_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let file = store_with_token_expiring_in(dir.path(), 9 * 60);
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(
        header(
            &requests_to(&server, CREDITS_PATH).await[0],
            "authorization"
        ),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
    assert_eq!(
        read_json(&file)["identities"][CLIENT_ID]["token"],
        ANON_TOKEN
    );
}

#[tokio::test]
async fn an_expired_token_is_not_used_when_the_fetch_fails() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let file = dir.path().join("credentials.json");
    std::fs::write(
        &file,
        json!({"identities": {CLIENT_ID: {
            "client_id": CLIENT_ID, "token": "nmv_usr_EXPIRED", "expires_at": unix_now() - 5
        }}})
        .to_string(),
    )
    .unwrap();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(10))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let err = client(&server, dir.path()).credits().await.unwrap_err();
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert!(requests_to(&server, CREDITS_PATH).await.is_empty());
}

#[tokio::test]
async fn a_rejected_token_is_removed_from_the_file_but_a_newer_one_is_kept() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let file = store_with_token_expiring_in(dir.path(), 3 * 86_400);
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is("authorization", "Bearer nmv_usr_OLD_STILL_VALID"))
        .respond_with(code(1001, "token expired"))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_rate_limited(10))
        .mount(&server)
        .await;
    let err = client(&server, dir.path()).credits().await.unwrap_err();
    assert!(matches!(err, Error::TokenQuotaExceeded { .. }), "{err:?}");
    assert!(
        read_json(&file)["identities"].get(CLIENT_ID).is_none(),
        "the rejected token is not kept"
    );

    // Removal never touches a token another process saved since.
    let store = FileStore::new(dir.path());
    store
        .save(&AnonymousCredentials::new(CLIENT_ID, "nmv_usr_NEWER"))
        .await
        .unwrap();
    store
        .remove(CLIENT_ID, &SecretToken::new("nmv_usr_OLD_STILL_VALID"))
        .await
        .unwrap();
    assert_eq!(
        read_json(&file)["identities"][CLIENT_ID]["token"],
        "nmv_usr_NEWER"
    );
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
        let creds = store.get(CLIENT_ID).expect("saved");
        assert_eq!(creds.token.expose(), "nmv_usr_A", "{data}");
        match expires {
            Some(at) => assert!(
                creds.expires_at_unix().abs_diff(at) <= 5,
                "{data}: {}",
                creds.expires_at_unix()
            ),
            None => assert!(
                creds.expires_at_unix().abs_diff(now + 7 * 86_400) <= 5,
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
async fn a_lock_held_too_long_is_reported_without_a_token_request() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    // "Another process" is fetching for this identity and does not let go.
    let held = FileStore::new(dir.path()).lock(CLIENT_ID).await.unwrap();
    let client = NemoClient::builder()
        .base_url(server.uri())
        .credential_store(Arc::new(
            FileStore::new(dir.path()).lock_timeout(Duration::from_millis(200)),
        ))
        .client_id(CLIENT_ID)
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = client.credits().await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("timed out waiting for the lock"),
        "{err}"
    );
    assert!(requests_to(&server, TOKEN_PATH).await.is_empty());
    // Once it is released, the same client gets its token.
    drop(held);
    client.credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
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
    assert!(!err.is_unauthorized(), "{err:?}");
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
