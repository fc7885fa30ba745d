//! The simulator's counters, request log and admin API, in process: the admin API says what
//! the handle says, counters stay exact however small the log, bodies are logged without a
//! secret, every fault the handle injects can be injected over HTTP, a reset forgets
//! everything, and fixed addresses put the three origins where the docs say.

mod support;

use std::time::Duration;

use nemo_video::auth::MemoryStore;
use nemo_video::render::{ExportOptions, RenderJob, RenderOptions, RenderStatus};
use nemo_video::simulator::{
    ClientCounters, Counters, Endpoint, RecordedBody, RecordedPart, Simulator,
};
use nemo_video::stream::MessageOptions;
use nemo_video::turn::TurnOptions;
use nemo_video::{turn::TurnEnd, NemoClient};
use serde_json::{json, Value};
use support::sim::{fast_wait, sample_input, session_with_clip, REMOVE};

/// An anonymous client of `sim` under `client_id`, persisting nothing.
fn client(sim: &Simulator, client_id: &str) -> NemoClient {
    support::client_builder(sim.base_url())
        .client_id(client_id)
        .no_persistence()
        .build()
        .unwrap()
}

async fn admin_get(sim: &Simulator, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{}{path}", sim.admin_url()))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn admin_post(sim: &Simulator, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", sim.admin_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `POST` that must succeed.
async fn admin(sim: &Simulator, path: &str, body: Value) {
    assert_eq!(
        admin_post(sim, path, body).await,
        (200, json!({"ok": true})),
        "POST {path}"
    );
}

/// A raw request to the API with `token`, for answers the SDK would retry or hide.
async fn raw_get(sim: &Simulator, token: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn raw_token(sim: &Simulator, client_id: &str) -> String {
    let issued: Value = reqwest::Client::new()
        .post(format!("{}/api/auth/anonymous-token", sim.base_url()))
        .header("x-client-id", client_id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    issued["data"]["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_admin_api_and_the_handle_tell_the_same_counters_and_log() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let client = client(&sim, "c-1");
    let session = session_with_clip(&client).await;
    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(matches!(turn.end, TurnEnd::Completed), "{turn:?}");
    let export = client
        .export_with(
            &session,
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait()),
        )
        .await
        .unwrap();
    client
        .download(&export, support::tempdir().path().join("out.mp4"))
        .await
        .unwrap();
    // A second client that only asks for a token, twice (the second is refused).
    let other = client_without_retries(&sim, "c-2");
    other.credits().await.unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{}/api/auth/anonymous-token", sim.base_url()))
        .header("x-client-id", "c-2")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);

    let counters: Counters = sim.counters();
    let c1 = counters.clients["c-1"];
    let mut expected = ClientCounters::default();
    expected.token_requests = 1;
    expected.tokens_issued = 1;
    expected.sessions = 1;
    expected.uploads = 1;
    expected.uploaded_files = 1;
    expected.messages = 1;
    expected.renders = 1;
    expected.requests = c1.requests;
    assert_eq!(c1, expected, "{counters:#?}");
    assert_eq!(
        c1.requests,
        sim.requests()
            .iter()
            .filter(|r| r.client_id.as_deref() == Some("c-1"))
            .count() as u64
    );
    assert_eq!(counters.clients["c-2"].token_requests, 2);
    assert_eq!(counters.clients["c-2"].tokens_issued, 1);
    assert_eq!(sim.token_requests_for("c-2"), 2);
    assert_eq!(counters.sessions[session.id()].messages, 1);
    assert_eq!(
        counters.sessions[session.id()].client_id.as_deref(),
        Some("c-1")
    );
    assert_eq!(counters.requests, sim.requests().len() as u64);
    assert_eq!(counters.by_endpoint[&Endpoint::RunSse], 1);
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
    assert_eq!(sim.request_count(Endpoint::CdnOutput), 1);

    // Over HTTP: the same facts, as JSON.
    let (status, over_http) = admin_get(&sim, "/counters").await;
    assert_eq!(status, 200);
    assert_eq!(over_http, serde_json::to_value(&counters).unwrap());
    assert_eq!(over_http["by_endpoint"]["run_sse"], 1);
    assert_eq!(over_http["clients"]["c-1"]["renders"], 1);
    let (_, log) = admin_get(&sim, "/requests").await;
    assert_eq!(
        log,
        json!({"requests": serde_json::to_value(sim.requests()).unwrap()})
    );
    // ... and read in parts: after a number, of an endpoint, of a client, the newest few.
    let requests = sim.requests();
    let third = requests[2].seq;
    let (_, after) = admin_get(&sim, &format!("/requests?since={third}")).await;
    assert_eq!(
        after["requests"].as_array().unwrap().len(),
        requests.len() - 3
    );
    let (_, sse) = admin_get(&sim, "/requests?endpoint=run_sse&client_id=c-1").await;
    assert_eq!(sse["requests"].as_array().unwrap().len(), 1);
    assert_eq!(
        sse["requests"][0]["body"]["json"]["new_message"]["parts"][0]["text"],
        REMOVE
    );
    let (_, newest) = admin_get(&sim, "/requests?limit=2").await;
    let newest = newest["requests"].as_array().unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[1]["seq"], requests.last().unwrap().seq);
    let (_, renders) = admin_get(&sim, "/renders").await;
    assert_eq!(renders, json!({"render_ids": sim.render_ids()}));
    let (_, one) = admin_get(&sim, &format!("/sessions/{}", session.id())).await;
    assert_eq!(one["messages"], 1);
    assert_eq!(one["client_id"], "c-1");
    assert_eq!(one["draft"], sim.draft(session.id()).unwrap());
    assert_eq!(one["media"], json!(sim.media(session.id())));

    // Admin requests are neither counted nor logged.
    assert_eq!(sim.counters(), counters);
    assert_eq!(sim.requests().len(), requests.len());
}

/// A client that never retries, so each call is one request.
fn client_without_retries(sim: &Simulator, client_id: &str) -> NemoClient {
    support::client_builder(sim.base_url())
        .client_id(client_id)
        .no_persistence()
        .retry(support::retries(0))
        .build()
        .unwrap()
}

#[tokio::test]
async fn counters_stay_exact_while_the_log_keeps_only_the_newest() {
    let sim = Simulator::builder()
        .fast()
        .request_log_size(5)
        .start()
        .await
        .unwrap();
    let token = raw_token(&sim, "ring").await;
    for _ in 0..20 {
        assert_eq!(
            raw_get(&sim, &token, "/api/credits/balance/simple").await.0,
            200
        );
    }
    assert_eq!(sim.request_count(Endpoint::Credits), 20);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 1);
    assert_eq!(sim.token_requests_for("ring"), 1);
    assert_eq!(sim.client_counters("ring").requests, 21);
    assert_eq!(sim.counters().requests, 21);
    let log = sim.requests();
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [17, 18, 19, 20, 21],
        "the newest five, oldest first"
    );
    assert!(log.iter().all(|r| r.endpoint == Some(Endpoint::Credits)));

    // A log of size 0 keeps nothing and still counts everything.
    let quiet = Simulator::builder()
        .request_log_size(0)
        .start()
        .await
        .unwrap();
    let token = raw_token(&quiet, "quiet").await;
    raw_get(&quiet, &token, "/api/credits/balance/simple").await;
    assert!(quiet.requests().is_empty());
    assert_eq!(quiet.request_count(Endpoint::Credits), 1);
    assert_eq!(quiet.client_counters("quiet").requests, 2);
}

#[tokio::test]
async fn the_log_keeps_bodies_and_never_a_secret() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let store = std::sync::Arc::new(MemoryStore::new());
    let client = support::client_builder(sim.base_url())
        .client_id("secretive")
        .credential_store(store.clone())
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    let client_token = store
        .get(&nemo_video::auth::IdentityKey::new(
            sim.base_url(),
            "secretive",
        ))
        .expect("the client's token is in its store")
        .token
        .expose()
        .to_string();
    let token = raw_token(&sim, "raw").await;
    let raw = reqwest::Client::new();
    // A claim-link request carrying extra fields a careless app might add, and secret headers.
    let task_id = session.task_id().expect("a task id").to_string();
    let claim = raw
        .post(format!("{}/api/auth/claim-token", sim.base_url()))
        .bearer_auth(&client_token)
        .header("cookie", "session=abc")
        .header("x-api-key", "key-123")
        .header("x-note", format!("sent with {token}"))
        .json(&json!({
            "task_id": task_id, "session_id": session.id(),
            "note": format!("my token is {token}"),
            "claim_token": "clm_previous",
            "nested": {"password": "hunter2", "list": [client_token.clone()]},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 200);
    let claimed = claim.text().await.unwrap();
    let claim_token = claimed
        .split('"')
        .find(|part| part.starts_with("clm_"))
        .expect("a claim token in the answer")
        .to_string();
    // A big JSON body is summarised, not kept.
    let big = json!({"task_id": "x".repeat(20_000), "session_id": "s"});
    let answered = raw
        .post(format!("{}/api/auth/claim-token", sim.base_url()))
        .bearer_auth(&token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);

    let log = sim.requests();
    let claims: Vec<_> = log
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::ClaimToken))
        .collect();
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0].client_id.as_deref(), Some("secretive"));
    assert_eq!(
        claims[0].body_json().unwrap(),
        json!({
            "task_id": task_id, "session_id": session.id(),
            "note": "my token is nmv_usr_***",
            "claim_token": "***",
            "nested": {"password": "***", "list": ["nmv_usr_***"]},
        })
    );
    assert_eq!(claims[0].header("cookie"), Some("***"));
    assert_eq!(claims[0].header("x-api-key"), Some("***"));
    assert_eq!(claims[0].header("x-note"), Some("sent with nmv_usr_***"));
    assert_eq!(claims[0].header("authorization"), Some("Bearer ***"));
    assert_eq!(
        claims[1].body,
        Some(RecordedBody::Summary {
            content_type: Some("application/json".into()),
            bytes: big.to_string().len() as u64,
        })
    );
    // The upload: its parts, not its bytes.
    let upload = log
        .iter()
        .find(|r| r.endpoint == Some(Endpoint::Upload))
        .unwrap();
    let size = std::fs::metadata(sample_input()).unwrap().len();
    match &upload.body {
        Some(RecordedBody::Multipart { parts }) => {
            assert_eq!(parts.len(), 1);
            let part: &RecordedPart = &parts[0];
            assert_eq!(
                (part.name.as_str(), part.filename.as_deref(), part.bytes),
                ("files", Some("sample_input.mp4"), size)
            );
        }
        other => panic!("{other:?}"),
    }
    // A request without a body has none; a GET was read to its (empty) end.
    let credits = log
        .iter()
        .find(|r| r.endpoint == Some(Endpoint::CreateSession))
        .unwrap();
    assert_eq!(
        credits.body_json().unwrap(),
        json!({"task_name": "project", "language": "en"})
    );

    // No token anywhere: not in the log, not in the admin API.
    let shown = format!("{log:?}");
    let (_, over_http) = admin_get(&sim, "/requests").await;
    for secret in [
        token.as_str(),
        client_token.as_str(),
        claim_token.as_str(),
        "hunter2",
        "key-123",
        "clm_previous",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
        assert!(
            !over_http.to_string().contains(secret),
            "{secret} over HTTP"
        );
    }
    drop(session);
}

#[tokio::test]
async fn every_fault_the_handle_injects_can_be_injected_over_http() {
    let sim = Simulator::builder()
        .fast()
        .manual_renders()
        .text_less_every(0)
        .start()
        .await
        .unwrap();
    let token = raw_token(&sim, "raw").await;
    let credits = "/api/credits/balance/simple";

    // fail_next, in each documented failure shape, queued in order.
    admin(
        &sim,
        "/fail_next",
        json!({"endpoint": "credits", "times": 2, "failure": {"status": 503}}),
    )
    .await;
    admin(
        &sim,
        "/fail_next",
        json!({"endpoint": "credits", "failure": {"code": {"http": 200, "code": 2001}}}),
    )
    .await;
    admin(
        &sim,
        "/fail_next",
        json!({"endpoint": "credits", "failure": {"retry_after": {"status": 429, "secs": 7}}}),
    )
    .await;
    admin(
        &sim,
        "/fail_next",
        json!({"endpoint": "credits", "failure": {"plain_text": {"status": 502, "body": "Bad Gateway"}}}),
    )
    .await;
    assert_eq!(raw_get(&sim, &token, credits).await.0, 503);
    assert_eq!(raw_get(&sim, &token, credits).await.0, 503);
    let (status, body) = raw_get(&sim, &token, credits).await;
    assert_eq!((status, body["code"].clone()), (200, json!(2001)));
    let retry = reqwest::Client::new()
        .get(format!("{}{credits}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 429);
    assert_eq!(retry.headers()["retry-after"], "7");
    let plain = reqwest::Client::new()
        .get(format!("{}{credits}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 502);
    assert_eq!(plain.text().await.unwrap(), "Bad Gateway");
    admin(
        &sim,
        "/fail_next",
        json!({"endpoint": "credits", "failure": "close_connection"}),
    )
    .await;
    let cut = reqwest::Client::new()
        .get(format!("{}{credits}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await;
    let cut = match cut {
        Ok(response) => response.bytes().await.map(|_| ()),
        Err(err) => Err(err),
    };
    assert!(cut.is_err(), "the connection was cut mid-answer");
    let (status, body) = raw_get(&sim, &token, credits).await;
    assert_eq!(
        (status, body["data"]["available"].clone()),
        (200, json!(100))
    );

    // Credits: for every user, then for one client id.
    admin(&sim, "/credits", json!({"available": 3})).await;
    assert_eq!(
        raw_get(&sim, &token, credits).await.1["data"]["available"],
        3
    );
    admin(
        &sim,
        "/credits",
        json!({"available": 42, "client_id": "raw"}),
    )
    .await;
    assert_eq!(
        raw_get(&sim, &token, credits).await.1["data"]["available"],
        42
    );
    assert_eq!(sim.credits_of_token(&token), Some(42));
    admin(&sim, "/credits", json!({"available": 100})).await;

    // Streams and turns, through the SDK as an app would see them.
    let client = client(&sim, "turns");
    let session = session_with_clip(&client).await;
    admin(&sim, "/text_less", json!({"text_less": true})).await;
    let turn = client.run_turn(&session, REMOVE).await.unwrap();
    assert!(turn.text.is_empty(), "a text-less turn: {:?}", turn.text);
    admin(&sim, "/text_less", json!({"text_less": null})).await;
    let turn = client
        .run_turn(&session, "add a title \"Hi\"")
        .await
        .unwrap();
    assert!(
        !turn.text.is_empty(),
        "the builder's pattern again (never text-less)"
    );
    admin(&sim, "/drop_next_stream", json!({"after_events": 1})).await;
    let turn = client.run_turn(&session, "trim to 3 s").await.unwrap();
    assert!(
        matches!(turn.end, TurnEnd::Disconnected(_)),
        "{:?}",
        turn.end
    );
    admin(
        &sim,
        "/stall_next_stream",
        json!({"after_events": 0, "for_ms": 60_000}),
    )
    .await;
    let options = TurnOptions::default()
        .message(MessageOptions::default().idle_timeout(Duration::from_millis(300)));
    let turn = client
        .run_turn_with(&session, "add lo-fi music", &options)
        .await
        .unwrap();
    match &turn.end {
        TurnEnd::Disconnected(err) => {
            assert!(format!("{err:?}").contains("StreamIdle"), "{err:?}")
        }
        other => panic!("the stalled stream timed out, not {other:?}"),
    }

    // Renders: moved by hand, and one that fails.
    admin(
        &sim,
        "/fail_next_render",
        json!({"message": "GPU unavailable"}),
    )
    .await;
    let state = client.state(&session).await.unwrap();
    let draft = state.draft().unwrap();
    let failing = RenderJob::new(&session);
    client
        .submit_render(&failing, draft, &RenderOptions::default())
        .await
        .unwrap();
    let working = RenderJob::new(&session);
    client
        .submit_render(&working, draft, &RenderOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client
            .render_status(&failing)
            .await
            .unwrap()
            .status
            .as_str(),
        "pending"
    );
    admin(&sim, "/advance_renders", json!({"ms": 60_000})).await;
    let failed = client.render_status(&failing).await.unwrap();
    assert!(
        matches!(&failed.status, RenderStatus::Failed { error } if error == "GPU unavailable"),
        "{failed:?}"
    );
    assert_eq!(
        client
            .render_status(&working)
            .await
            .unwrap()
            .status
            .as_str(),
        "completed"
    );

    // Expired tokens: every token now answers 1001.
    admin(&sim, "/expire_tokens", json!({})).await;
    let (status, body) = raw_get(&sim, &token, credits).await;
    assert_eq!((status, body["code"].clone()), (401, json!(1001)));
}

#[tokio::test]
async fn a_reset_forgets_everything_but_the_numbering() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let before = client(&sim, "before");
    let session = session_with_clip(&before).await;
    before.run_turn(&session, REMOVE).await.unwrap();
    let token = raw_token(&sim, "raw").await;
    sim.set_credits(7);
    sim.fail_next_render("armed before the reset");
    let last = sim.requests().last().unwrap().seq;

    admin(&sim, "/reset", json!({})).await;
    assert_eq!(sim.counters(), Counters::default());
    assert!(sim.requests().is_empty());
    assert_eq!(sim.session_count(), 0);
    assert!(sim.render_ids().is_empty());
    assert_eq!(sim.credits_of_token(&token), None, "tokens are forgotten");
    let (status, _) = raw_get(&sim, &token, "/api/credits/balance/simple").await;
    assert_eq!(status, 401);
    // The same client id gets a token at once, with the builder's credits, and its session
    // is gone.
    let fresh = raw_token(&sim, "raw").await;
    assert_eq!(
        raw_get(&sim, &fresh, "/api/credits/balance/simple").await.1["data"]["available"],
        100
    );
    let (_, state) = raw_get(
        &sim,
        &fresh,
        &format!("/api/state/nemo_agent/me/{}/latest", session.id()),
    )
    .await;
    assert_eq!(state["code"], 1002);
    let seqs: Vec<u64> = sim.requests().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [last + 1, last + 2, last + 3, last + 4]);
    // No render fails: the armed fault went with the reset.
    let again = client(&sim, "after");
    let session = session_with_clip(&again).await;
    again.run_turn(&session, REMOVE).await.unwrap();
    let export = again
        .export_with(
            &session,
            &ExportOptions::default()
                .render(RenderOptions::default())
                .wait(fast_wait()),
        )
        .await
        .unwrap();
    assert!(export.output_url().is_some());
    // The in-process reset is the same call.
    sim.reset();
    assert_eq!(sim.counters(), Counters::default());
}

#[tokio::test]
async fn admin_mistakes_are_answered_with_what_to_do() {
    let sim = Simulator::start().await.unwrap();
    let (status, index) = admin_get(&sim, "").await;
    assert_eq!(status, 200);
    assert_eq!(index["base_url"], sim.base_url());
    assert_eq!(index["cdn_base_url"], sim.cdn_base_url());
    assert_eq!(index["web_url"], sim.web_url());
    assert_eq!(index["request_log_size"], 1000);
    assert_eq!(index["render_time_ms"], 3000);
    assert!(
        index["routes"]["POST /__admin/fail_next"].is_string(),
        "{index}"
    );

    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "GET",
            "/nope",
            json!(null),
            404,
            "no admin route GET /__admin/nope; GET /__admin lists the routes",
        ),
        (
            "POST",
            "/counters",
            json!({}),
            405,
            "POST is not allowed on /__admin/counters; GET /__admin lists the routes",
        ),
        (
            "GET",
            "/reset",
            json!(null),
            405,
            "GET is not allowed on /__admin/reset",
        ),
        (
            "POST",
            "/fail_next",
            json!({"endpoint": "credit", "failure": {"status": 503}}),
            400,
            "unknown variant `credit`",
        ),
        (
            "POST",
            "/fail_next",
            json!({"endpoint": "credits"}),
            400,
            "missing field `failure`",
        ),
        (
            "POST",
            "/drop_next_stream",
            json!({"after": 2}),
            400,
            "unknown field `after`",
        ),
        (
            "POST",
            "/credits",
            json!({"available": 1, "client_id": "ghost"}),
            404,
            "no user has the client id \"ghost\"",
        ),
        (
            "GET",
            "/requests?since=soon",
            json!(null),
            400,
            "since=\"soon\" is not valid: expected a request number",
        ),
        (
            "GET",
            "/requests?endpoint=sse",
            json!(null),
            400,
            "endpoint=\"sse\" is not valid",
        ),
        (
            "GET",
            "/requests?page=2",
            json!(null),
            400,
            "unknown query parameter \"page\"",
        ),
        (
            "GET",
            "/sessions/123",
            json!(null),
            404,
            "no session \"123\"",
        ),
    ];
    let http = reqwest::Client::new();
    for (method, path, body, status, message) in cases {
        let url = format!("{}{path}", sim.admin_url());
        let request = match method {
            "GET" => http.get(url),
            _ => http.post(url).json(&body),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let answer: Value = response.json().await.unwrap();
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{method} {path}: {error}");
    }
    assert_eq!(sim.counters().requests, 0, "admin requests are not counted");
}

/// Starts a simulator from `builder(port)` on a port below the ephemeral range, trying
/// another when a parallel test holds one of its three ports.
async fn on_fixed_port(
    builder: impl Fn(u16) -> nemo_video::simulator::SimulatorBuilder,
) -> (Simulator, u16) {
    for _ in 0..20 {
        let port = support::net::fixed_port_candidate();
        match builder(port).start().await {
            Ok(sim) => return (sim, port),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(err) => panic!("{err}"),
        }
    }
    panic!("no free fixed port after 20 tries");
}

#[tokio::test]
async fn a_fixed_address_puts_the_cdn_and_the_web_site_on_the_next_ports() {
    let (sim, port) =
        on_fixed_port(|port| Simulator::builder().fast().bind(([127, 0, 0, 1], port))).await;
    assert_eq!(sim.base_url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(sim.cdn_base_url(), format!("http://127.0.0.1:{}", port + 1));
    assert_eq!(sim.web_url(), format!("http://127.0.0.1:{}", port + 2));
    assert_eq!(sim.admin_url(), format!("http://127.0.0.1:{port}/__admin"));
    let page = reqwest::get(format!("{}/register?bind=anon_1", sim.web_url()))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Taken: the error names the origin and the address, and keeps the kind.
    let err = Simulator::builder()
        .bind(([127, 0, 0, 1], port))
        .cdn_port(0)
        .web_port(0)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        err.to_string().starts_with(&format!(
            "the simulator's API origin could not listen on 127.0.0.1:{port}: "
        )),
        "{err}"
    );
    let err = Simulator::builder()
        .bind(([127, 0, 0, 1], 0))
        .cdn_port(port + 1)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CDN origin"), "{err}");
    let err = Simulator::builder()
        .bind(([127, 0, 0, 1], 65535))
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("set cdn_port and web_port"),
        "{err}"
    );
    drop(sim);

    // The name other machines reach it by goes into every URL it hands out.
    let (sim, port) = on_fixed_port(|port| {
        Simulator::builder()
            .fast()
            .bind(([127, 0, 0, 1], port))
            .public_host("simulator")
    })
    .await;
    assert_eq!(sim.base_url(), format!("http://simulator:{port}"));
    assert_eq!(sim.cdn_base_url(), format!("http://simulator:{}", port + 1));
    assert_eq!(sim.web_url(), format!("http://simulator:{}", port + 2));
    let client = support::client_builder(&format!("http://127.0.0.1:{port}"))
        .no_persistence()
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    let media = sim.media(session.id());
    assert!(
        media[0]["cdn_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://simulator:{}/uploads/", port + 1)),
        "{media:?}"
    );
}
