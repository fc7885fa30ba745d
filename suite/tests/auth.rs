//! Tokens: the anonymous-token call on the wire, single flight, refresh on 1001/401, fixed
//! tokens, the missing-client-id retry, and the persisted credentials file.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;

use nemo_video::auth::CREDENTIALS_FILE;
use nemo_video::{Error, RetryPolicy};
use serde_json::{json, Value};
use support::mock::*;
use support::{fast_retry, stored_credentials, tempdir};
use wiremock::matchers::{header as header_is, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECOND_TOKEN: &str = "nmv_usr_ANON_SECOND_77";

fn read_store(dir: &Path) -> Value {
    let bytes = std::fs::read(dir.join(CREDENTIALS_FILE)).expect("credentials file written");
    serde_json::from_slice(&bytes).expect("credentials file is JSON")
}

fn write_store(dir: &Path, contents: &str) {
    std::fs::write(dir.join(CREDENTIALS_FILE), contents).unwrap();
}

/// Mounts the token endpoint giving `first` once, then `second` forever.
async fn mount_two_tokens(server: &MockServer, first: &str, second: &str) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(first))
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(second))
        .mount(server)
        .await;
}

#[tokio::test]
async fn anonymous_token_request_has_exact_wire_form() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    client.credits().await.unwrap();

    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 1);
    let request = &tokens[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(header(request, "x-client-id"), Some(CLIENT_ID));
    assert_eq!(
        header(request, "authorization"),
        None,
        "no Authorization on the anonymous-token call"
    );
    assert_eq!(header(request, "x-skill-source"), Some("video-object-ops"));
    assert_eq!(
        header(request, "x-skill-version"),
        Some(env!("NEMO_VIDEO_VERSION"))
    );
    assert_eq!(header(request, "x-skill-platform"), Some(PLATFORM));
    assert!(header(request, "user-agent")
        .unwrap()
        .contains("nemo-video"));
    assert!(request.body.is_empty(), "no body");

    // The token obtained is the one sent afterwards.
    let credits = &requests_to(&server, CREDITS_PATH).await[0];
    assert_eq!(
        header(credits, "authorization"),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
    assert_eq!(header(credits, "x-client-id"), None);

    let creds = client.anonymous_credentials().await.unwrap();
    assert_eq!(creds.client_id, CLIENT_ID);
    assert_eq!(creds.user_id.as_deref(), Some(ANON_USER));
    assert_eq!(creds.credits, Some(100.0));
}

#[tokio::test]
async fn code_1001_fetches_one_new_token_and_replays_once() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_two_tokens(&server, ANON_TOKEN, SECOND_TOKEN).await;
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is(
            "authorization",
            format!("Bearer {ANON_TOKEN}").as_str(),
        ))
        .respond_with(code(1001, "token expired"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is(
            "authorization",
            format!("Bearer {SECOND_TOKEN}").as_str(),
        ))
        .respond_with(ok(credits_body()))
        .mount(&server)
        .await;

    let client = client(&server, dir.path());
    let credits = client.credits().await.unwrap();
    assert_eq!(credits.available, 87.5);

    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 2, "the first token, then exactly one new one");
    for request in &tokens {
        assert_eq!(
            header(request, "x-client-id"),
            Some(CLIENT_ID),
            "the same client id"
        );
    }
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(calls.len(), 2, "the request replayed once");
    assert_eq!(
        header(&calls[1], "authorization"),
        Some(format!("Bearer {SECOND_TOKEN}").as_str())
    );
    // The new token replaced the rejected one on disk too.
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        SECOND_TOKEN
    );
}

#[tokio::test]
async fn http_401_also_refreshes_the_anonymous_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_two_tokens(&server, ANON_TOKEN, SECOND_TOKEN).await;
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is(
            "authorization",
            format!("Bearer {ANON_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"detail": "Unauthorized"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(CREDITS_PATH))
        .and(header_is(
            "authorization",
            format!("Bearer {SECOND_TOKEN}").as_str(),
        ))
        .respond_with(ok(credits_body()))
        .mount(&server)
        .await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 2);
}

#[tokio::test]
async fn code_1001_twice_is_replayed_only_once_then_reported() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_two_tokens(&server, ANON_TOKEN, SECOND_TOKEN).await;
    mount_credits(&server, code(1001, "token expired")).await;
    let err = client(&server, dir.path()).credits().await.unwrap_err();
    assert!(
        matches!(err, nemo_video::Error::Unauthorized { .. }),
        "{err:?}"
    );
    assert_no_token(&err);
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 2);
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 2);
}

#[tokio::test]
async fn fixed_token_rejected_with_1001_is_reported_not_replaced() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(&server, code(1001, "token expired")).await;
    let err = fixed_client(&server, dir.path())
        .credits()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(
        err.to_string().contains("NEMO_TOKEN"),
        "tells the person to set a fresh token: {err}"
    );
    assert_no_token(&err);
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        0,
        "never swapped for an anonymous token"
    );
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 1);
    assert!(
        !dir.path().join(CREDENTIALS_FILE).exists(),
        "nothing persisted for a fixed token"
    );
}

#[tokio::test]
async fn fifty_concurrent_calls_share_one_token_request() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        // Slow enough that every task is waiting for it at once.
        .respond_with(token_response(ANON_TOKEN).set_delay(std::time::Duration::from_millis(200)))
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.credits().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().available, 87.5);
    }
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 50);
}

/// A client on the config dir's default identity (no client id configured).
fn default_identity_client(server: &MockServer, dir: &Path) -> nemo_video::NemoClient {
    nemo_video::NemoClient::builder()
        .base_url(server.uri())
        .web_url(WEB_URL)
        .config_dir(dir)
        .retry(fast_retry())
        .build()
        .unwrap()
}

#[tokio::test]
async fn missing_client_id_400_regenerates_the_default_id_and_retries_once() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"detail": "missing X-Client-Id"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = default_identity_client(&server, dir.path());
    client.credits().await.unwrap();

    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 2);
    let refused = header(&tokens[0], "x-client-id").unwrap().to_string();
    let fresh = header(&tokens[1], "x-client-id").unwrap();
    assert_ne!(fresh, refused, "a new client id");
    assert_eq!(fresh.len(), 36, "a UUID: {fresh}");
    let creds = client.anonymous_credentials().await.unwrap();
    assert_eq!(
        creds.client_id, fresh,
        "the token belongs to the id that got it"
    );
    let stored = read_store(dir.path());
    assert_eq!(stored["default_client_id"], fresh);
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), fresh)["token"],
        ANON_TOKEN
    );
}

#[tokio::test]
async fn missing_client_id_400_twice_is_reported() {
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"detail": "missing X-Client-Id"})),
        )
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let err = default_identity_client(&server, dir.path())
        .credits()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingClientId { .. }), "{err:?}");
    assert_eq!(err.retry_policy(), RetryPolicy::RegenerateClientId);
    assert_eq!(err.http_status(), Some(400));
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        2,
        "retried once"
    );
    assert_eq!(requests_to(&server, CREDITS_PATH).await.len(), 0);
}

#[tokio::test]
async fn missing_client_id_400_for_a_chosen_client_id_is_reported_not_swapped() {
    // A client id the app chose is an end user's identity: silently replacing it would give
    // that user a different account.
    let server = MockServer::start().await;
    let dir = tempdir();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"detail": "missing X-Client-Id"})),
        )
        .mount(&server)
        .await;
    mount_credits(&server, ok(credits_body())).await;
    let err = client(&server, dir.path()).credits().await.unwrap_err();
    assert!(matches!(err, Error::MissingClientId { .. }), "{err:?}");
    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(header(&tokens[0], "x-client-id"), Some(CLIENT_ID));
}

// ---------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn second_client_with_same_config_dir_reuses_the_persisted_token() {
    let server = MockServer::start().await;
    let dir = tempdir();
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);

    // A new process, in effect: a new client over the same directory.
    let second = client(&server, dir.path());
    second.credits().await.unwrap();
    assert_eq!(
        requests_to(&server, TOKEN_PATH).await.len(),
        1,
        "no second token request"
    );
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(
        header(&calls[1], "authorization"),
        Some(format!("Bearer {ANON_TOKEN}").as_str())
    );
    // The user id came back from disk too, so the registration link works at once.
    assert_eq!(
        second.registration_url().await.as_deref(),
        Some(format!("{WEB_URL}/register?bind={ANON_USER}").as_str())
    );
}

#[tokio::test]
async fn expired_persisted_token_is_replaced_using_the_persisted_client_id() {
    let server = MockServer::start().await;
    let dir = tempdir();
    let persisted_id = "5d1b3e8e-0c1a-4a44-8f0d-2b7c9e3a4f10";
    write_store(
        dir.path(),
        &json!({
            "client_id": persisted_id,
            "anonymous": {
                "client_id": persisted_id,
                "token": "nmv_usr_OLD_EXPIRED",
                "user_id": "anon_old",
                "expires_at": "2020-01-01T00:00:00Z",
                "credits": 100.0,
                "obtained_at": 1_577_000_000u64
            }
        })
        .to_string(),
    );
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    // No client id on the builder: the persisted one must be reused (one token per client
    // id per 7 days, so a fresh id would be a new anonymous account).
    let client = nemo_video::NemoClient::builder()
        .base_url(server.uri())
        .config_dir(dir.path())
        .retry(fast_retry())
        .build()
        .unwrap();
    client.credits().await.unwrap();

    let tokens = requests_to(&server, TOKEN_PATH).await;
    assert_eq!(tokens.len(), 1, "the expired token was replaced");
    assert_eq!(header(&tokens[0], "x-client-id"), Some(persisted_id));
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(
        header(&calls[0], "authorization"),
        Some(format!("Bearer {ANON_TOKEN}").as_str()),
        "the expired token was never sent"
    );
    // The file was rewritten in the current form, keeping the old identity (it belongs to
    // the production service, the only one earlier versions knew) beside the new one.
    let stored = read_store(dir.path());
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), persisted_id)["token"],
        ANON_TOKEN
    );
    assert_eq!(
        stored_credentials(dir.path(), nemo_video::DEFAULT_BASE_URL, persisted_id)["token"],
        "nmv_usr_OLD_EXPIRED"
    );
    assert_eq!(stored["default_client_id"], persisted_id);
    assert!(stored.get("anonymous").is_none(), "{stored}");
}

#[tokio::test]
async fn valid_persisted_token_is_used_without_a_token_request() {
    let server = MockServer::start().await;
    let dir = tempdir();
    write_store(
        dir.path(),
        &json!({
            "services": {
                server.uri(): {
                    CLIENT_ID: {
                        "version": 1,
                        "credentials": {
                            "client_id": CLIENT_ID,
                            "token": "nmv_usr_FROM_DISK",
                            "user_id": "anon_disk",
                            "expires_at": "2099-01-01T00:00:00Z",
                            "obtained_at": 1_700_000_000u64
                        }
                    }
                }
            }
        })
        .to_string(),
    );
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 0);
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(
        header(&calls[0], "authorization"),
        Some("Bearer nmv_usr_FROM_DISK")
    );
}

#[tokio::test]
async fn a_file_of_an_earlier_version_belongs_to_production_and_its_token_goes_nowhere_else() {
    // Earlier versions knew one service; their identities are production's. A client of
    // another service (here a local one) must neither send that token nor lose it.
    let server = MockServer::start().await;
    let dir = tempdir();
    write_store(
        dir.path(),
        &json!({
            "default_client_id": CLIENT_ID,
            "identities": {
                CLIENT_ID: {
                    "client_id": CLIENT_ID,
                    "token": "nmv_usr_PRODUCTION",
                    "user_id": "anon_prod",
                    "expires_at": "2099-01-01T00:00:00Z",
                    "obtained_at": 1_700_000_000u64
                }
            }
        })
        .to_string(),
    );
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, dir.path()).credits().await.unwrap();
    let calls = requests_to(&server, CREDITS_PATH).await;
    assert_eq!(
        header(&calls[0], "authorization"),
        Some(format!("Bearer {ANON_TOKEN}").as_str()),
        "this service's own token, never production's"
    );
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(
        stored_credentials(dir.path(), nemo_video::DEFAULT_BASE_URL, CLIENT_ID)["token"],
        "nmv_usr_PRODUCTION",
        "the production identity is kept, migrated"
    );
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        ANON_TOKEN
    );
    assert!(read_store(dir.path()).get("identities").is_none());
}

#[cfg(unix)]
#[tokio::test]
async fn credentials_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = MockServer::start().await;
    let dir = tempdir();
    let config_dir = dir.path().join("nested").join("nemovideo");
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    client(&server, &config_dir).credits().await.unwrap();
    let file_mode = std::fs::metadata(config_dir.join(CREDENTIALS_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(file_mode & 0o777, 0o600, "file mode {file_mode:o}");
    let dir_mode = std::fs::metadata(&config_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "directory mode {dir_mode:o}");
    // Atomic writes leave no temporary files behind, and the identity's lock file goes
    // with its lease: only the file, its lock, and the (empty, private) folder of leases.
    let mut names: Vec<_> = std::fs::read_dir(&config_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [CREDENTIALS_FILE, "credentials.lock", "locks"]);
    let lock_dir = config_dir.join("locks");
    assert_eq!(std::fs::read_dir(&lock_dir).unwrap().count(), 0);
    let lock_mode = std::fs::metadata(&lock_dir).unwrap().permissions().mode();
    assert_eq!(lock_mode & 0o077, 0, "lock folder mode {lock_mode:o}");
}

#[tokio::test]
async fn a_corrupted_credentials_file_is_moved_aside_reported_once_then_replaced() {
    let server = MockServer::start().await;
    let dir = tempdir();
    write_store(dir.path(), "{ this is not json");
    mount_token(&server).await;
    mount_credits(&server, ok(credits_body())).await;
    let client = client(&server, dir.path());
    let err = client.credits().await.unwrap_err();
    assert!(
        err.to_string().contains("moved aside") && err.to_string().contains(".corrupt-"),
        "says what happened and where the old file is: {err}"
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("credentials.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        "{ this is not json",
        "nothing of it is lost"
    );
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 0);
    // The next call starts a new file.
    let credits = client.credits().await.unwrap();
    assert_eq!(credits.available, 87.5);
    assert_eq!(requests_to(&server, TOKEN_PATH).await.len(), 1);
    assert_eq!(
        stored_credentials(dir.path(), &server.uri(), CLIENT_ID)["token"],
        ANON_TOKEN
    );
}
