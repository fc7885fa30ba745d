//! The Redis credential store against a real `redis-server` (started on a free loopback port
//! by each test, stopped by pid): the store contract, workers in several OS processes, and a
//! lease holder killed with SIGKILL.
//!
//! Needs the `redis` feature: the README's test command is `cargo test --workspace --features redis`.
//! Without it, the one test below fails and says so, rather than the suite passing without
//! ever touching Redis.

#[cfg(not(feature = "redis"))]
#[test]
fn the_redis_store_tests_need_the_redis_feature() {
    panic!(
        "the Redis store tests did not run: run the suite as the README says, `cargo test --workspace --features redis` (and install redis-server: `apt-get install redis-server`)"
    );
}

#[cfg(feature = "redis")]
mod support;

#[cfg(feature = "redis")]
mod redis_tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use nemo_video::auth::{
        AnonymousCredentials, CredentialStore, IdentityKey, RedisStore, SaveOutcome, StoreFuture,
        StoredCredentials,
    };
    use nemo_video::lease::Lease;
    use nemo_video::simulator::{Endpoint, Simulator};
    use nemo_video::NemoClient;

    use super::support::redis::RedisServer;
    use super::support::{fast_retry, tempdir};

    const ROLE: &str = "NEMO_TEST_REDIS_ROLE";

    fn unique_prefix() -> String {
        format!("test-{}", uuid::Uuid::new_v4().simple())
    }

    #[tokio::test]
    async fn the_redis_store_keeps_the_contract() {
        let Some(redis) = RedisServer::for_test("the_redis_store_keeps_the_contract") else {
            return;
        };
        let store = RedisStore::with_prefix(&redis.url(), &unique_prefix()).unwrap();
        let key = IdentityKey::new("http://127.0.0.1:1", "cas-user");
        let first = AnonymousCredentials::new("cas-user", "nmv_usr_FIRST").with_user_id("anon_1");
        let second = AnonymousCredentials::new("cas-user", "nmv_usr_SECOND");
        assert!(store.load(&key).await.unwrap().is_none());
        let v1 = match store.save(&key, &first, None).await.unwrap() {
            SaveOutcome::Saved { version } => version,
            other => panic!("{other:?}"),
        };
        assert_eq!(v1, 1);
        match store.save(&key, &second, None).await.unwrap() {
            SaveOutcome::Conflict {
                current: Some(current),
            } => {
                assert_eq!(current.credentials, first);
                assert_eq!(current.version, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.save(&key, &second, Some(1)).await.unwrap(),
            SaveOutcome::Saved { version: 2 }
        ));
        // A writer against the old version cannot overwrite the newer token.
        assert!(matches!(
            store.save(&key, &first, Some(1)).await.unwrap(),
            SaveOutcome::Conflict { .. }
        ));
        let now = store.load(&key).await.unwrap().unwrap();
        assert_eq!(now.credentials.token.expose(), "nmv_usr_SECOND");
        assert_eq!(now.version, 2);
        // Each service has its own identities.
        assert!(store
            .load(&IdentityKey::new("http://127.0.0.1:2", "cas-user"))
            .await
            .unwrap()
            .is_none());

        // Leases: one holder; renewal and release only by the holder; lapse by itself.
        let lease = store
            .try_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert!(store
            .try_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none());
        assert!(store.renew_lease(&lease).await.unwrap());
        store.release_lease(lease).await.unwrap();
        let short = store
            .try_lease(&key, Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        // Redis expires it: wait until someone else can take it.
        let taken = loop {
            if let Some(lease) = store
                .try_lease(&key, Duration::from_secs(30))
                .await
                .unwrap()
            {
                break lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            !store.renew_lease(&short).await.unwrap(),
            "a lapsed holder cannot renew the new holder's lease"
        );
        store.release_lease(short).await.unwrap();
        assert!(
            store
                .try_lease(&key, Duration::from_secs(30))
                .await
                .unwrap()
                .is_none(),
            "a lapsed holder's release does not end the new holder's lease"
        );
        store.release_lease(taken).await.unwrap();

        // The default client id: created once, replaced only if still the refused one.
        let id = store.default_client_id().await.unwrap().unwrap();
        assert_eq!(store.default_client_id().await.unwrap().unwrap(), id);
        let fresh = store.replace_default_client_id(&id).await.unwrap().unwrap();
        assert_ne!(fresh, id);
        assert_eq!(
            store.replace_default_client_id(&id).await.unwrap().unwrap(),
            fresh,
            "a second replacement of the same refused id keeps the first's"
        );
        // Nothing of the token is in the store's Debug.
        assert!(!format!("{store:?}").contains("nmv_usr"));
    }

    #[tokio::test]
    async fn a_redis_store_that_is_down_fails_with_a_store_error_that_names_no_password() {
        let Some(redis) = RedisServer::for_test(
            "a_redis_store_that_is_down_fails_with_a_store_error_that_names_no_password",
        ) else {
            return;
        };
        let url = format!("redis://:hunter2-secret@127.0.0.1:{}/0", redis.port());
        drop(redis);
        let store = RedisStore::new(&url).unwrap();
        let err = store
            .load(&IdentityKey::new("http://127.0.0.1:1", "user"))
            .await
            .unwrap_err();
        assert!(matches!(err, nemo_video::Error::Store { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Redis"), "{shown}");
    }

    // -----------------------------------------------------------------------------------
    // Workers in OS processes
    // -----------------------------------------------------------------------------------

    /// Not a test of its own: the tests below run this test binary again as worker
    /// processes, with only this (ignored) test selected, and `ROLE` saying what to do.
    #[test]
    #[ignore = "runs only as a child process of the Redis tests"]
    fn redis_worker_process() {
        let Ok(role) = std::env::var(ROLE) else {
            eprintln!("run by the Redis tests with {ROLE} set; nothing to do");
            return;
        };
        let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = RedisStore::with_prefix(&env("REDIS_URL"), &env("REDIS_PREFIX")).unwrap();
            let ttl = Duration::from_millis(env("LEASE_TTL_MS").parse().unwrap());
            let builder = NemoClient::builder()
                .base_url(env("NEMO_API_BASE"))
                .identity_lease_ttl(ttl)
                .retry(fast_retry());
            match role.as_str() {
                // Waits for the go file, then asks for every identity at once.
                "many" => {
                    let go = PathBuf::from(env("GO_FILE"));
                    let started = Instant::now();
                    while !go.exists() {
                        assert!(started.elapsed() < Duration::from_secs(120), "no go signal");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let server = builder.credential_store(Arc::new(store)).build().unwrap();
                    let calls: Vec<_> = env("CLIENT_IDS")
                        .split(',')
                        .map(|id| {
                            let user = server.for_identity(id).unwrap();
                            tokio::spawn(async move { user.credits().await })
                        })
                        .collect();
                    for call in calls {
                        call.await.unwrap().expect("every identity's call succeeds");
                    }
                    println!("WORKER DONE");
                }
                // Takes the identity's lease, says so, and hangs before its token request,
                // until it is killed.
                "hold" => {
                    let store = HangAfterLease {
                        inner: store,
                        marker: PathBuf::from(env("MARKER")),
                    };
                    let client = builder
                        .credential_store(Arc::new(store))
                        .client_id(env("CLIENT_ID"))
                        .build()
                        .unwrap();
                    let _ = client.credits().await;
                    unreachable!("the holder hangs until it is killed");
                }
                // Gets the identity, and says how long after its start it got the lease.
                "take" => {
                    let started = Instant::now();
                    let store = TimedLease {
                        inner: store,
                        started,
                        granted_after: std::sync::Mutex::new(None),
                    };
                    let store = Arc::new(store);
                    let client = builder
                        .credential_store(store.clone())
                        .client_id(env("CLIENT_ID"))
                        .build()
                        .unwrap();
                    client
                        .credits()
                        .await
                        .expect("the identity, after the lapse");
                    let granted = store.granted_after.lock().unwrap().expect("a lease");
                    println!("LEASE_AFTER_MS {}", granted.as_millis());
                    println!("WORKER DONE");
                }
                other => panic!("unknown role {other}"),
            }
        });
    }

    /// A Redis store whose `try_lease` hangs forever once it got the lease (after writing
    /// `marker`): a worker stopped between taking the lease and its token request.
    struct HangAfterLease {
        inner: RedisStore,
        marker: PathBuf,
    }

    impl CredentialStore for HangAfterLease {
        fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
            self.inner.load(key)
        }
        fn save<'a>(
            &'a self,
            key: &'a IdentityKey,
            credentials: &'a AnonymousCredentials,
            expected_version: Option<u64>,
        ) -> StoreFuture<'a, SaveOutcome> {
            self.inner.save(key, credentials, expected_version)
        }
        fn try_lease<'a>(
            &'a self,
            key: &'a IdentityKey,
            ttl: Duration,
        ) -> StoreFuture<'a, Option<Lease>> {
            Box::pin(async move {
                let lease = self.inner.try_lease(key, ttl).await?;
                if lease.is_some() {
                    std::fs::write(&self.marker, b"leased").unwrap();
                    std::future::pending::<()>().await;
                }
                Ok(lease)
            })
        }
    }

    /// A Redis store that records when its lease was granted.
    struct TimedLease {
        inner: RedisStore,
        started: Instant,
        granted_after: std::sync::Mutex<Option<Duration>>,
    }

    impl CredentialStore for TimedLease {
        fn load<'a>(&'a self, key: &'a IdentityKey) -> StoreFuture<'a, Option<StoredCredentials>> {
            self.inner.load(key)
        }
        fn save<'a>(
            &'a self,
            key: &'a IdentityKey,
            credentials: &'a AnonymousCredentials,
            expected_version: Option<u64>,
        ) -> StoreFuture<'a, SaveOutcome> {
            self.inner.save(key, credentials, expected_version)
        }
        fn try_lease<'a>(
            &'a self,
            key: &'a IdentityKey,
            ttl: Duration,
        ) -> StoreFuture<'a, Option<Lease>> {
            Box::pin(async move {
                let lease = self.inner.try_lease(key, ttl).await?;
                if lease.is_some() {
                    *self.granted_after.lock().unwrap() = Some(self.started.elapsed());
                }
                Ok(lease)
            })
        }
        fn renew_lease<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, bool> {
            self.inner.renew_lease(lease)
        }
        fn release_lease(&self, lease: Lease) -> StoreFuture<'_, ()> {
            self.inner.release_lease(lease)
        }
    }

    fn worker(role: &str, vars: &[(&str, &str)]) -> Child {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "redis_tests::redis_worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env_remove("NEMO_TOKEN")
            .env_remove("NEMO_CLIENT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        command.spawn().expect("a worker process starts")
    }

    fn finished(child: Child) -> String {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success() && stdout.contains("WORKER DONE"),
            "a worker failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_processes_asking_for_the_same_fifty_new_identities_make_fifty_token_requests() {
        let Some(redis) = RedisServer::for_test(
            "three_processes_asking_for_the_same_fifty_new_identities_make_fifty_token_requests",
        ) else {
            return;
        };
        // The simulator refuses a second token for a client id within the week, as the
        // service does: a duplicate request would show as a 429 in its counts.
        let sim = Simulator::builder().fast().start().await.unwrap();
        let prefix = unique_prefix();
        let ids: Vec<String> = (0..50).map(|i| format!("fleet-user-{i:02}")).collect();
        let dir = tempdir();
        let go = dir.path().join("go");
        let (url, base, id_list, go_path) = (
            redis.url(),
            sim.base_url().to_string(),
            ids.join(","),
            go.display().to_string(),
        );
        let workers: Vec<Child> = (0..3)
            .map(|_| {
                worker(
                    "many",
                    &[
                        ("REDIS_URL", &url),
                        ("REDIS_PREFIX", &prefix),
                        ("LEASE_TTL_MS", "30000"),
                        ("NEMO_API_BASE", &base),
                        ("CLIENT_IDS", &id_list),
                        ("GO_FILE", &go_path),
                    ],
                )
            })
            .collect();
        std::fs::write(&go, b"go").unwrap();
        tokio::task::spawn_blocking(move || workers.into_iter().map(finished).count())
            .await
            .unwrap();
        let requests: BTreeMap<String, usize> = sim.token_requests_by_client();
        assert_eq!(requests.len(), 50, "{requests:?}");
        assert!(requests.values().all(|n| *n == 1), "{requests:?}");
        assert_eq!(sim.request_count(Endpoint::AnonymousToken), 50);
        assert_eq!(sim.request_count(Endpoint::Credits), 150);
        // Every identity is saved once, and no lease is left behind.
        let store = RedisStore::with_prefix(&redis.url(), &prefix).unwrap();
        for id in &ids {
            let stored = store
                .load(&IdentityKey::new(sim.base_url(), id.clone()))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{id} is stored"));
            assert_eq!(stored.version, 1, "{id} saved once");
        }
        assert_eq!(
            redis.command(&format!("KEYS {prefix}:identity-lease:*")),
            "*0",
            "no lease outlives its worker's request"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_holder_killed_before_its_request_lets_another_process_in_after_the_lease() {
        let Some(redis) = RedisServer::for_test(
            "a_lease_holder_killed_before_its_request_lets_another_process_in_after_the_lease",
        ) else {
            return;
        };
        let sim = Simulator::builder().fast().start().await.unwrap();
        let prefix = unique_prefix();
        let dir = tempdir();
        let marker = dir.path().join("leased");
        let ttl = Duration::from_secs(2);
        let ttl_ms = ttl.as_millis().to_string();
        let (url, base, marker_path) = (
            redis.url(),
            sim.base_url().to_string(),
            marker.display().to_string(),
        );
        let vars = |extra: &[(&'static str, &str)]| {
            let mut all = vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_PREFIX", prefix.clone()),
                ("LEASE_TTL_MS", ttl_ms.clone()),
                ("NEMO_API_BASE", base.clone()),
                ("CLIENT_ID", "fleet-victim".to_string()),
            ];
            all.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            all
        };
        let holder_vars = vars(&[("MARKER", &marker_path)]);
        let holder_vars: Vec<(&str, &str)> =
            holder_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut holder = worker("hold", &holder_vars);
        assert!(
            wait_for_file(&marker, Duration::from_secs(60)),
            "the holder took the lease"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        let killed = Instant::now();

        let taker_vars = vars(&[]);
        let taker_vars: Vec<(&str, &str)> =
            taker_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let taker = worker("take", &taker_vars);
        let stdout = tokio::task::spawn_blocking(move || finished(taker))
            .await
            .unwrap();
        let granted_after: u64 = stdout
            .lines()
            .find_map(|line| line.split_once("LEASE_AFTER_MS ").map(|(_, ms)| ms.trim()))
            .expect("the taker reports its lease")
            .parse()
            .unwrap();
        println!(
            "lease taken {granted_after} ms after the taker started, {:?} after the kill (lease {ttl:?})",
            killed.elapsed()
        );
        assert!(
            Duration::from_millis(granted_after) <= ttl + Duration::from_secs(1),
            "the identity came within the lease plus a second: {granted_after} ms"
        );
        assert_eq!(
            sim.token_requests_for("fleet-victim"),
            1,
            "one token request in all"
        );
        let store = RedisStore::with_prefix(&redis.url(), &prefix).unwrap();
        assert!(store
            .load(&IdentityKey::new(sim.base_url(), "fleet-victim"))
            .await
            .unwrap()
            .is_some());
    }

    fn wait_for_file(path: &Path, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if path.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}
