//! The simulator against plain reqwest: wire shapes, behaviour over time, and every fault knob.

use std::time::Duration;

use nemo_video::simulator::{
    Endpoint, Failure, Simulator, StatusShape, SAMPLE_INPUT_MP4, SAMPLE_OUTPUT_MP4,
};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

const REMOVE: &str = "remove the background person and replace it with a solid color";

fn client() -> Client {
    Client::builder().build().unwrap()
}

fn attributed(rb: RequestBuilder) -> RequestBuilder {
    rb.header("X-Skill-Source", "video-object-ops")
        .header("X-Skill-Version", "0.1.0")
        .header("X-Skill-Platform", "unknown")
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap();
    (status, body)
}

async fn token(sim: &Simulator) -> String {
    token_for(sim, &uuid::Uuid::new_v4().to_string()).await
}

async fn token_for(sim: &Simulator, client_id: &str) -> String {
    let resp = attributed(client().post(format!("{}/api/auth/anonymous-token", sim.base_url())))
        .header("X-Client-Id", client_id)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"].as_str().unwrap().to_owned()
}

async fn session(sim: &Simulator, token: &str) -> (String, String) {
    let resp = attributed(client().post(format!(
        "{}/api/tasks/me/with-session/nemo_agent",
        sim.base_url()
    )))
    .bearer_auth(token)
    .json(&json!({"task_name": "project", "language": "en"}))
    .send()
    .await
    .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 0);
    (
        body["data"]["task_id"].as_str().unwrap().to_owned(),
        body["data"]["session_id"].as_str().unwrap().to_owned(),
    )
}

async fn upload(sim: &Simulator, token: &str, sid: &str, files: &[(&str, Vec<u8>)]) -> Value {
    // A `multipart/form-data` body as a browser or reqwest's `Form` sends it, one `files` part
    // per file (written out here: reqwest's multipart feature would add crates to every
    // `cargo run --example`).
    const BOUNDARY: &str = "nemo-simulator-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let resp = attributed(client().post(format!(
        "{}/api/upload-video/nemo_agent/me/{sid}",
        sim.base_url()
    )))
    .bearer_auth(token)
    .header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    )
    .body(body)
    .send()
    .await
    .unwrap();
    json_of(resp).await.1
}

/// A token and a session holding the sample clip.
async fn ready(sim: &Simulator) -> (String, String, String) {
    let token = token(sim).await;
    let (task, sid) = session(sim, &token).await;
    let body = upload(
        sim,
        &token,
        &sid,
        &[("sample_input.mp4", SAMPLE_INPUT_MP4.to_vec())],
    )
    .await;
    assert_eq!(body["code"], 0, "{body}");
    (token, task, sid)
}

async fn get(sim: &Simulator, token: &str, path: &str) -> (StatusCode, Value) {
    let resp = attributed(client().get(format!("{}{path}", sim.base_url())))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn state(sim: &Simulator, token: &str, sid: &str) -> Value {
    let (status, body) = get(
        sim,
        token,
        &format!("/api/state/nemo_agent/me/{sid}/latest"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0, "{body}");
    body["data"].clone()
}

async fn available_credits(sim: &Simulator, token: &str) -> u64 {
    let (_, body) = get(sim, token, "/api/credits/balance/simple").await;
    body["data"]["available"].as_u64().unwrap()
}

fn run_sse_request(sim: &Simulator, token: &str, sid: &str, text: &str) -> RequestBuilder {
    attributed(client().post(format!("{}/run_sse", sim.base_url())))
        .bearer_auth(token)
        .header("Accept", "text/event-stream")
        .json(&json!({
            "app_name": "nemo_agent", "user_id": "me", "session_id": sid,
            "new_message": {"parts": [{"text": text}]}
        }))
}

/// A stream read to its end: raw SSE blocks with arrival times, and whether it broke.
struct Stream {
    blocks: Vec<(Duration, String)>,
    broken: bool,
    total: Duration,
}

impl Stream {
    fn events(&self) -> Vec<Value> {
        self.blocks
            .iter()
            .filter_map(|(_, b)| b.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    fn texts(&self) -> Vec<(String, bool)> {
        self.events()
            .iter()
            .filter_map(|e| {
                let text = e["content"]["parts"][0]["text"].as_str()?;
                Some((text.to_owned(), e["partial"] == json!(true)))
            })
            .collect()
    }

    fn function_calls(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter_map(|e| e["content"]["parts"][0].get("functionCall").cloned())
            .collect()
    }

    fn function_responses(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter_map(|e| e["content"]["parts"][0].get("functionResponse").cloned())
            .collect()
    }
}

async fn read_stream(mut resp: reqwest::Response) -> Stream {
    let start = Instant::now();
    let mut buf = String::new();
    let mut blocks = Vec::new();
    let broken = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                buf.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    blocks.push((start.elapsed(), buf[..end].to_owned()));
                    buf.drain(..end + 2);
                }
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    Stream {
        blocks,
        broken,
        total: start.elapsed(),
    }
}

async fn run_sse(sim: &Simulator, token: &str, sid: &str, text: &str) -> Stream {
    let resp = run_sse_request(sim, token, sid, text).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    read_stream(resp).await
}

fn tracks(draft: &Value) -> &Vec<Value> {
    draft["t"].as_array().unwrap()
}

#[tokio::test]
async fn anonymous_token_is_issued_once_per_client_and_needs_a_client_id() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let url = format!("{}/api/auth/anonymous-token", sim.base_url());
    let resp = client()
        .post(&url)
        .header("X-Client-Id", "client-1")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0);
    let data = &body["data"];
    assert!(data["token"].as_str().unwrap().starts_with("nmv_usr_"));
    assert!(data["user_id"].as_str().unwrap().starts_with("anon_"));
    assert_eq!(data["credits"], 100);
    let expires = data["expires_at"].as_str().unwrap();
    assert_eq!(expires.len(), 20, "{expires}");
    assert!(expires.ends_with('Z') && expires.as_bytes()[10] == b'T');

    let again = client()
        .post(&url)
        .header("X-Client-Id", "client-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
    assert_eq!(again.headers()["retry-after"], "30");

    let missing = client().post(&url).send().await.unwrap();
    let (status, body) = json_of(missing).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"code": 400, "message": "missing X-Client-Id"}));

    let long = client()
        .post(&url)
        .header("X-Client-Id", "x".repeat(65))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 400);
    assert_eq!(sim.request_count(Endpoint::AnonymousToken), 4);
}

#[tokio::test]
async fn bearer_token_is_required_and_unknown_paths_are_404() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let url = format!("{}/api/credits/balance/simple", sim.base_url());
    for rb in [
        client().get(&url),
        client().get(&url).bearer_auth("nmv_usr_forged"),
    ] {
        let (status, body) = json_of(rb.send().await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(body["code"], 1001);
    }
    let token = token(&sim).await;
    let (status, body) = get(&sim, &token, "/api/credits/balance/simple").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({"available": 100, "frozen": 0, "total": 100})
    );

    let resp = client()
        .get(format!("{}/api/nope", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"detail": "Not Found"}));

    let wrong_method = client()
        .delete(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
}

#[tokio::test]
async fn render_without_attribution_headers_is_402() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    let draft = state(&sim, &token, &sid).await["state"]["draft"].clone();
    let body = json!({"id": "render_1", "sessionId": sid, "draft": draft,
                      "output": {"format": "mp4", "quality": "high"}});
    let resp = client()
        .post(format!("{}/api/render/proxy/lambda", sim.base_url()))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 402);
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains("upgrade"));
}

#[tokio::test]
async fn session_ids_are_19_digit_strings() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let (task, sid) = session(&sim, &token).await;
    assert_eq!(sid.len(), 19);
    assert!(sid.bytes().all(|b| b.is_ascii_digit()));
    assert!(!task.is_empty());
    let data = state(&sim, &token, &sid).await;
    assert_eq!(data["session_id"], sid.as_str());
    assert_eq!(data["task_id"], task.as_str());
    assert_eq!(data["state"]["canvas_config"]["width"], 1920);
    assert_eq!(tracks(&data["state"]["draft"]).len(), 0);

    // A session of another user is not found.
    let other = self::token(&sim).await;
    let (status, body) = get(
        &sim,
        &other,
        &format!("/api/state/nemo_agent/me/{sid}/latest"),
    )
    .await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (200, Some(1002)));

    // Missing task_name is a FastAPI-style 422.
    let resp = client()
        .post(format!(
            "{}/api/tasks/me/with-session/nemo_agent",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .json(&json!({"language": "en"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 422);
    assert!(body["detail"].is_array());
}

#[tokio::test]
async fn multipart_upload_of_two_files_lands_in_state() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let (_, sid) = session(&sim, &token).await;
    let body = upload(
        &sim,
        &token,
        &sid,
        &[
            ("clip one.mp4", SAMPLE_INPUT_MP4.to_vec()),
            ("logo.png", vec![1, 2, 3, 4]),
        ],
    )
    .await;
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["data"]["session_state_applied"], true);
    let files = body["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["filename"], "clip one.mp4");
    assert_eq!(files[0]["file_type"], "video");
    assert_eq!(files[0]["size"], SAMPLE_INPUT_MP4.len());
    assert!(files[0]["cdn_url"]
        .as_str()
        .unwrap()
        .starts_with(sim.cdn_base_url()));
    assert_eq!(files[1]["file_type"], "image");
    assert_ne!(files[0]["hash"], files[1]["hash"]);

    let data = state(&sim, &token, &sid).await;
    let infos = data["state"]["video_infos"].as_array().unwrap();
    let names: Vec<&str> = infos
        .iter()
        .map(|i| i["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clip one.mp4", "logo.png"]);
    let draft = &data["state"]["draft"];
    let video = &tracks(draft)[0];
    assert_eq!(video["tt"], 0);
    assert_eq!(video["sg"][0]["m"]["name"], "clip one");
    assert_eq!(video["sg"][0]["m"]["url"], files[0]["cdn_url"]);
    assert_eq!(
        (&video["id"], &video["sg"][0]["id"]),
        (&json!("track_1"), &json!("seg_1"))
    );
    assert_eq!(video["sg"][0]["s"], 0);
    // The sample clip can be fetched back from the CDN (without a token).
    let fetched = client()
        .get(files[0]["cdn_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(&fetched.bytes().await.unwrap()[..], SAMPLE_INPUT_MP4);
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    assert_eq!(draft["d"], 5000);
    // The float clients must round-trip exactly.
    let raw = serde_json::to_string(draft).unwrap();
    assert!(raw.contains("905.4000000000001"), "{raw}");

    let upload_request = sim
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Some(Endpoint::Upload))
        .unwrap();
    assert!(upload_request.body_len > SAMPLE_INPUT_MP4.len() as u64);

    // Unsupported type, unknown session.
    let body = upload(&sim, &token, &sid, &[("notes.txt", b"hi".to_vec())]).await;
    assert_eq!(body["code"], 4001);
    let body = upload(&sim, &token, "123", &[("a.mp4", b"hi".to_vec())]).await;
    assert_eq!(body["code"], 1002);
}

#[tokio::test]
async fn oversized_upload_is_4002_and_streams_through() {
    let sim = Simulator::builder()
        .fast()
        .max_upload_bytes(1024 * 1024)
        .start()
        .await
        .unwrap();
    let token = token(&sim).await;
    let (_, sid) = session(&sim, &token).await;
    let big = vec![0x5a; 3 * 1024 * 1024 + 17];
    let body = upload(&sim, &token, &sid, &[("big.mp4", big)]).await;
    assert_eq!(body["code"], 4002, "{body}");
    let data = state(&sim, &token, &sid).await;
    assert_eq!(data["state"]["video_infos"], json!([]));
}

#[tokio::test]
async fn url_upload_lands_in_state() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let (_, sid) = session(&sim, &token).await;
    let resp = client()
        .post(format!(
            "{}/api/upload-video/nemo_agent/me/{sid}",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .json(&json!({"urls": ["https://example.com/media/walk.mov?sig=1"], "source_type": "url"}))
        .send()
        .await
        .unwrap();
    let (_, body) = json_of(resp).await;
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["data"]["files"][0]["filename"], "walk.mov");
    assert_eq!(body["data"]["files"][0]["file_type"], "video");
    let data = state(&sim, &token, &sid).await;
    assert_eq!(data["state"]["video_infos"][0]["filename"], "walk.mov");
    assert_eq!(tracks(&data["state"]["draft"]).len(), 1);
}

// On a paused clock (the simulator runs on this test's runtime): the timings below are the
// simulator's own, not whatever a busy machine makes of them.
#[tokio::test(start_paused = true)]
async fn run_sse_streams_over_time_and_removes_the_object() {
    let sim = Simulator::builder()
        .event_pacing(Duration::from_millis(40))
        .heartbeat_interval(Duration::from_millis(100))
        .work_duration(Duration::from_millis(350))
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    assert_eq!(available_credits(&sim, &token).await, 100);

    let stream = run_sse(&sim, &token, &sid, REMOVE).await;
    assert!(!stream.broken);
    let first = stream.blocks[0].0;
    assert!(
        stream.total >= Duration::from_millis(450)
            && first + Duration::from_millis(300) < stream.total,
        "first event at {first:?}, stream ended at {:?}",
        stream.total
    );

    let calls = stream.function_calls();
    assert_eq!(calls[0]["name"], "remove_object");
    assert_eq!(calls[0]["args"]["target"], "background person");
    assert_eq!(stream.function_responses()[0]["id"], calls[0]["id"]);
    // Heartbeats of both kinds while the tool works.
    assert!(stream.blocks.iter().any(|(_, b)| b == ": ping"));
    assert!(stream.blocks.iter().any(|(_, b)| b == "data:"));
    let events = stream.events();
    assert!(events.iter().all(|e| e["author"] == "nemo_agent"
        && e["invocationId"] == events[0]["invocationId"]
        && e["timestamp"].is_f64()));
    assert!(events
        .iter()
        .any(|e| e["actions"]["stateDelta"]["draft"].is_object()));
    let texts = stream.texts();
    let (final_text, final_partial) = texts.last().unwrap();
    assert!(!final_partial);
    assert!(texts.len() >= 3 && texts[..texts.len() - 1].iter().all(|(_, p)| *p));
    let joined: String = texts[..texts.len() - 1]
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(&joined, final_text);
    assert!(final_text.contains("Export button"), "{final_text}");

    let draft = state(&sim, &token, &sid).await["state"]["draft"].clone();
    let effect = &tracks(&draft)[0]["sg"][0]["m"]["effects"][0];
    assert_eq!(effect["type"], "object_removal");
    assert_eq!(effect["target"], "background person");
    assert_eq!(effect["fill"], "solid_color");
    assert_eq!(effect["color"], "#1E90FF");
    let mask = tracks(&draft)
        .iter()
        .find(|t| t["m"]["name"] == "solid fill mask")
        .expect("mask track");
    assert_eq!(mask["tt"], 0);
    assert_eq!(mask["sg"][0]["s"], 0);
    assert_eq!(mask["sg"][0]["d"], draft["d"]);
    assert_eq!(available_credits(&sim, &token).await, 95);
}

#[tokio::test]
async fn other_edits_questions_and_chat() {
    let sim = Simulator::builder()
        .fast()
        .text_less_every(0)
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;

    run_sse(
        &sim,
        &token,
        &sid,
        "add some lo-fi music and a title \"Walk\"",
    )
    .await;
    let draft = sim.draft(&sid).unwrap();
    let audio = tracks(&draft).iter().find(|t| t["tt"] == 1).unwrap();
    assert_eq!(audio["m"]["name"], "Lo-fi");
    assert_eq!(audio["m"]["volume"], 0.35);
    let title = tracks(&draft).iter().find(|t| t["tt"] == 7).unwrap();
    assert_eq!(title["m"]["text"], "Walk");

    run_sse(&sim, &token, &sid, "trim to 2 s").await;
    let draft = sim.draft(&sid).unwrap();
    assert_eq!(draft["d"], 2000);
    assert!(tracks(&draft)
        .iter()
        .all(|t| t["d"].as_u64().unwrap() <= 2000));

    run_sse(&sim, &token, &sid, "isolate the tree").await;
    let draft = sim.draft(&sid).unwrap();
    assert_eq!(
        tracks(&draft)[0]["sg"][0]["m"]["effects"][0]["type"],
        "object_isolation"
    );
    let credits = available_credits(&sim, &token).await;
    assert_eq!(credits, 85);

    // Chat: text only, nothing changes, nothing charged.
    let before = sim.draft(&sid).unwrap();
    let chat = run_sse(&sim, &token, &sid, "hello there").await;
    assert!(chat.function_calls().is_empty());
    assert!(!chat.texts().is_empty());
    assert_eq!(sim.draft(&sid).unwrap(), before);

    // A question: the agent asks back and waits.
    let ask = run_sse(&sim, &token, &sid, "?").await;
    let calls = ask.function_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], "ask_question");
    assert!(calls[0]["args"]["question"].is_string());
    assert!(ask.function_responses().is_empty());
    assert!(ask.texts().is_empty());
    assert_eq!(available_credits(&sim, &token).await, credits);
}

#[tokio::test]
async fn every_third_edit_turn_is_text_less_and_the_knob_forces_it() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    let mut text_turns = Vec::new();
    for _ in 0..3 {
        let s = run_sse(&sim, &token, &sid, "add a title").await;
        assert!(!s.function_calls().is_empty());
        text_turns.push(!s.texts().is_empty());
    }
    assert_eq!(text_turns, [true, true, false]);

    sim.set_text_less(true);
    let s = run_sse(&sim, &token, &sid, "add music").await;
    assert!(s.texts().is_empty());
    assert_eq!(s.function_responses()[0]["name"], "add_bgm");
    sim.set_text_less(false);
    for _ in 0..3 {
        assert!(!run_sse(&sim, &token, &sid, "add music")
            .await
            .texts()
            .is_empty());
    }
}

#[tokio::test]
async fn no_credits_is_2001_json_before_any_stream() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    sim.set_credits(0);
    let resp = run_sse_request(&sim, &token, &sid, REMOVE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 2001);
    assert_eq!(sim.draft(&sid).unwrap()["t"].as_array().unwrap().len(), 1);

    assert!(sim.set_credits_for_token(&token, 7));
    assert_eq!(available_credits(&sim, &token).await, 7);
    run_sse(&sim, &token, &sid, REMOVE).await;
    assert_eq!(sim.credits_of_token(&token), Some(2));
    // 2 < cost of an edit.
    let body: Value = run_sse_request(&sim, &token, &sid, REMOVE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], 2001);
}

#[tokio::test]
async fn run_sse_validates_before_streaming() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    let url = format!("{}/run_sse", sim.base_url());
    for bad in [
        json!({"app_name": "nemo_agent", "user_id": "me", "session_id": sid}),
        json!({"app_name": "nemo_agent", "user_id": "me", "session_id": sid, "new_message": {"parts": "x"}}),
        json!([1, 2]),
    ] {
        let resp = client()
            .post(&url)
            .bearer_auth(&token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 422, "{bad}");
        assert!(body.get("detail").is_some());
    }
    let resp = client()
        .post(&url)
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = run_sse_request(&sim, &token, "999", "hi")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], 1002);
}

async fn submit_render(sim: &Simulator, token: &str, sid: &str, id: &str) -> (StatusCode, Value) {
    let draft = state(sim, token, sid).await["state"]["draft"].clone();
    let resp = attributed(client().post(format!("{}/api/render/proxy/lambda", sim.base_url())))
        .bearer_auth(token)
        .json(&json!({"id": id, "sessionId": sid, "draft": draft,
                      "output": {"format": "mp4", "quality": "high"}}))
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn poll_until_done(sim: &Simulator, token: &str, id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for _ in 0..200 {
        let (status, body) = get(sim, token, &format!("/api/render/proxy/lambda/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let done = matches!(
            body.pointer("/data/status")
                .or(body.get("status"))
                .and_then(Value::as_str),
            Some("completed" | "failed" | "cancelled")
        );
        seen.push(body);
        if done {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("render never finished: {seen:?}");
}

/// `(status, progress)` of a render, as `GET .../lambda/<id>` answers it now.
async fn render_status(sim: &Simulator, token: &str, id: &str) -> (String, u64) {
    let (status, body) = get(sim, token, &format!("/api/render/proxy/lambda/{id}")).await;
    assert_eq!(status, 200, "{body}");
    (
        body["data"]["status"].as_str().unwrap().to_owned(),
        body["data"]["progress"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn render_lifecycle_completes_on_the_cdn_origin() {
    // Manual renders: each status below is seen because the test moved the render there, not
    // because the poll happened to land in the right window.
    let sim = Simulator::builder()
        .fast()
        .render_time(Duration::from_secs(2))
        .manual_renders()
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    run_sse(&sim, &token, &sid, REMOVE).await;
    let (status, body) = submit_render(&sim, &token, &sid, "render_1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"success": true, "data": {"id": "render_1", "status": "pending", "progress": 0}})
    );
    let cdn_url = format!("{}/renders/render_1.mp4", sim.cdn_base_url());
    let mut seen = vec![render_status(&sim, &token, "render_1").await];
    // Not on the CDN before it is completed.
    assert_eq!(client().get(&cdn_url).send().await.unwrap().status(), 404);
    for step_ms in [200, 200, 600, 500, 499, 1] {
        sim.advance_renders(Duration::from_millis(step_ms));
        seen.push(render_status(&sim, &token, "render_1").await);
    }
    let seen: Vec<(&str, u64)> = seen.iter().map(|(s, p)| (s.as_str(), *p)).collect();
    assert_eq!(
        seen,
        [
            ("pending", 0),
            ("pending", 0),
            ("processing", 20),
            ("processing", 50),
            ("processing", 75),
            ("processing", 99),
            ("completed", 100),
        ]
    );
    let (_, last) = get(&sim, &token, "/api/render/proxy/lambda/render_1").await;
    let url = last["data"]["outputUrl"].as_str().unwrap();
    assert_eq!(url, cdn_url);
    assert!(url.starts_with(sim.cdn_base_url()));
    assert_ne!(sim.cdn_base_url(), sim.base_url());

    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(
        resp.headers()["content-length"],
        SAMPLE_OUTPUT_MP4.len().to_string().as_str()
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], SAMPLE_OUTPUT_MP4);
    assert_eq!(sim.cdn_requests_with_authorization(), 0);
    client().get(url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(sim.cdn_requests_with_authorization(), 1);
    // The early 404 and these two.
    assert_eq!(sim.request_count(Endpoint::CdnOutput), 3);

    // Duplicate id, empty draft, missing fields.
    let (status, body) = submit_render(&sim, &token, &sid, "render_1").await;
    assert_eq!((status.as_u16(), &body["success"]), (409, &json!(false)));
    let (_, empty_sid) = session(&sim, &token).await;
    let (status, body) = submit_render(&sim, &token, &empty_sid, "render_2").await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("nothing to render"));
    let resp = attributed(client().post(format!("{}/api/render/proxy/lambda", sim.base_url())))
        .bearer_auth(&token)
        .json(&json!({"id": "render_3"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["success"], false);
}

/// Renders work on Tokio's clock (a paused test clock pauses them), and manual renders do not
/// move with any clock.
#[tokio::test(start_paused = true)]
async fn renders_follow_tokios_clock_and_manual_renders_no_clock() {
    for manual in [false, true] {
        let mut builder = Simulator::builder()
            .fast()
            .render_time(Duration::from_secs(10));
        if manual {
            builder = builder.manual_renders();
        }
        let sim = builder.start().await.unwrap();
        let (token, _, sid) = ready(&sim).await;
        submit_render(&sim, &token, &sid, "render_clock").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let halfway = render_status(&sim, &token, "render_clock").await;
        tokio::time::advance(Duration::from_secs(3600)).await;
        let much_later = render_status(&sim, &token, "render_clock").await;
        if manual {
            assert_eq!(halfway, ("pending".to_owned(), 0));
            assert_eq!(much_later, ("pending".to_owned(), 0));
            sim.advance_renders(Duration::from_secs(10));
            let advanced = render_status(&sim, &token, "render_clock").await;
            assert_eq!(advanced, ("completed".to_owned(), 100));
        } else {
            assert_eq!(halfway.0, "processing");
            assert!((50..=51).contains(&halfway.1), "{halfway:?}");
            assert_eq!(much_later, ("completed".to_owned(), 100));
        }
    }
}

#[tokio::test]
async fn top_level_status_shape() {
    let sim = Simulator::builder()
        .fast()
        .status_shape(StatusShape::TopLevel)
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    submit_render(&sim, &token, &sid, "render_top").await;
    let last = poll_until_done(&sim, &token, "render_top")
        .await
        .pop()
        .unwrap();
    assert_eq!(last["status"], "completed");
    assert!(last.get("success").is_none());
    let url = last["output"]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("{}/renders/render_top.mp4", sim.cdn_base_url())
    );
}

#[tokio::test]
async fn fallback_download_needs_auth_and_a_finished_render() {
    let sim = Simulator::builder()
        .fast()
        .manual_renders()
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    submit_render(&sim, &token, &sid, "render_dl").await;
    let url = format!("{}/api/render/proxy/render_dl/download", sim.base_url());
    let early = client().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(early.status(), 409);
    sim.advance_renders(Duration::from_secs(1));
    assert_eq!(
        render_status(&sim, &token, "render_dl").await.0,
        "completed"
    );
    let unauth = client().get(&url).send().await.unwrap();
    assert_eq!(unauth.status(), 401);
    let resp = client().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(
        resp.headers()["content-length"],
        SAMPLE_OUTPUT_MP4.len().to_string().as_str()
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], SAMPLE_OUTPUT_MP4);
}

#[tokio::test]
async fn cancel_stops_a_render() {
    let sim = Simulator::builder()
        .fast()
        .manual_renders()
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    submit_render(&sim, &token, &sid, "render_c").await;
    let resp = client()
        .post(format!(
            "{}/api/render/proxy/lambda/render_c/cancel",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["status"], "cancelled");
    // However far renders move on, it stays cancelled.
    sim.advance_renders(Duration::from_secs(60));
    let (_, body) = get(&sim, &token, "/api/render/proxy/lambda/render_c").await;
    assert_eq!(body["data"]["status"], "cancelled");
    let cdn = client()
        .get(format!("{}/renders/render_c.mp4", sim.cdn_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cdn.status(), 404);
}

#[tokio::test]
async fn claim_token() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let (task, sid) = session(&sim, &token).await;
    let resp = client()
        .post(format!("{}/api/auth/claim-token", sim.base_url()))
        .bearer_auth(&token)
        .json(&json!({"task_id": task, "session_id": sid}))
        .send()
        .await
        .unwrap();
    let (_, body) = json_of(resp).await;
    assert!(body["data"]["claim_token"]
        .as_str()
        .unwrap()
        .starts_with("clm_"));
    assert_eq!(body["data"]["expires_in"], 3600);
}

#[tokio::test]
async fn fail_next_variants() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let url = format!("{}/api/credits/balance/simple", sim.base_url());
    let send = || client().get(&url).bearer_auth(&token).send();

    sim.fail_next(Endpoint::Credits, 2, Failure::Status(503));
    sim.fail_next(
        Endpoint::Credits,
        1,
        Failure::Code {
            http: 200,
            code: 2001,
        },
    );
    sim.fail_next(
        Endpoint::Credits,
        1,
        Failure::PlainText {
            status: 502,
            body: "<html>Bad Gateway</html>".into(),
        },
    );
    sim.fail_next(
        Endpoint::Credits,
        1,
        Failure::RetryAfter {
            status: 429,
            secs: 2,
        },
    );
    sim.fail_next(Endpoint::Credits, 1, Failure::CloseConnection);

    for _ in 0..2 {
        let (status, body) = json_of(send().await.unwrap()).await;
        assert_eq!((status.as_u16(), body["code"].as_i64()), (503, Some(503)));
    }
    let (status, body) = json_of(send().await.unwrap()).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (200, Some(2001)));
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.text().await.unwrap(), "<html>Bad Gateway</html>");
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let broken = match send().await {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(broken, "the connection should drop mid-response");
    // Then things recover.
    let (status, body) = json_of(send().await.unwrap()).await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (200, Some(0)));
    assert_eq!(sim.request_count(Endpoint::Credits), 7);

    // Render endpoints use their own envelope.
    sim.fail_next(Endpoint::RenderStatus, 1, Failure::Status(500));
    let (status, body) = get(&sim, &token, "/api/render/proxy/lambda/x").await;
    assert_eq!(status, 500);
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn expired_tokens_answer_1001_and_the_client_can_reissue() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let old = token_for(&sim, "client-x").await;
    let (_, sid) = session(&sim, &old).await;
    sim.expire_tokens();
    let (status, body) = get(&sim, &old, "/api/credits/balance/simple").await;
    assert_eq!((status.as_u16(), body["code"].as_i64()), (401, Some(1001)));
    let new = token_for(&sim, "client-x").await;
    assert_ne!(old, new);
    // Same client id, same user: the session survives re-auth.
    state(&sim, &new, &sid).await;

    // Natural expiry too. Token lifetimes run on Tokio's clock: on a paused clock the token
    // is valid until the test moves the clock past its lifetime, however slow the machine.
    tokio::time::pause();
    let sim = Simulator::builder()
        .fast()
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let t = token(&sim).await;
    let (status, _) = get(&sim, &t, "/api/credits/balance/simple").await;
    assert_eq!(status, 200);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let (status, _) = get(&sim, &t, "/api/credits/balance/simple").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn dropped_stream_breaks_before_the_text_but_the_edit_lands() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    sim.drop_next_stream_after(2);
    let resp = run_sse_request(&sim, &token, &sid, REMOVE)
        .send()
        .await
        .unwrap();
    let stream = read_stream(resp).await;
    assert!(stream.broken);
    assert_eq!(stream.events().len(), 2);
    assert!(stream.texts().iter().all(|(_, partial)| *partial));
    let draft = sim.draft(&sid).unwrap();
    assert!(tracks(&draft)[0]["sg"][0]["m"]["effects"].is_array());
    // Only the next stream.
    assert!(!run_sse(&sim, &token, &sid, "add music").await.broken);
}

// On a paused clock, like `run_sse_streams_over_time_and_removes_the_object`.
#[tokio::test(start_paused = true)]
async fn stalled_stream_is_silent_then_carries_on() {
    let sim = Simulator::builder()
        .fast()
        .heartbeat_interval(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let (token, _, sid) = ready(&sim).await;
    sim.stall_next_stream(1, Duration::from_millis(600));
    let stream = run_sse(&sim, &token, &sid, REMOVE).await;
    assert!(!stream.broken);
    let gaps: Vec<Duration> = stream
        .blocks
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .collect();
    let longest = gaps.iter().max().unwrap();
    assert!(*longest >= Duration::from_millis(600), "{gaps:?}");
    // The gap is right after the first event, and the turn still finishes with text.
    let first_gap = gaps.iter().position(|g| g == longest).unwrap();
    assert!(stream.blocks[first_gap].1.starts_with("data: {"));
    assert!(!stream.texts().last().unwrap().1);
}

#[tokio::test]
async fn failed_render_reports_its_error() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    sim.fail_next_render("GPU node lost");
    submit_render(&sim, &token, &sid, "render_f").await;
    let last = poll_until_done(&sim, &token, "render_f")
        .await
        .pop()
        .unwrap();
    assert_eq!(last["data"]["status"], "failed");
    assert_eq!(last["data"]["error"], "GPU node lost");
    assert!(last["data"].get("outputUrl").is_none());
    // Only the next one.
    submit_render(&sim, &token, &sid, "render_ok").await;
    let last = poll_until_done(&sim, &token, "render_ok")
        .await
        .pop()
        .unwrap();
    assert_eq!(last["data"]["status"], "completed");
}

#[tokio::test]
async fn recorded_requests_redact_the_token() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    get(&sim, &token, "/api/credits/balance/simple").await;
    let requests = sim.requests();
    let last = requests.last().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, "/api/credits/balance/simple");
    assert_eq!(last.endpoint, Some(Endpoint::Credits));
    assert!(last.has_authorization);
    assert_eq!(last.header("Authorization"), Some("Bearer ***"));
    assert_eq!(last.header("x-skill-source"), Some("video-object-ops"));
    assert!(!format!("{requests:?}").contains(&token));
    assert!(!requests[0].has_authorization);
}

#[tokio::test]
async fn garbage_never_takes_it_down() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let token = token(&sim).await;
    let paths = [
        "/api/tasks/me/with-session/nemo_agent",
        "/run_sse",
        "/api/upload-video/nemo_agent/me/%ZZ%",
        "/api/render/proxy/lambda",
        "/api/render/proxy/lambda/%E2%28%A1/cancel",
        "/api/auth/claim-token",
        "/api/auth/anonymous-token",
    ];
    let bodies: [&[u8]; 5] = [
        b"",
        b"null",
        b"\xff\xfe",
        b"{\"draft\":{\"t\":7}}",
        b"[[[[[[[[",
    ];
    for path in paths {
        for body in bodies {
            for ct in [
                "application/json",
                "multipart/form-data; boundary=zz",
                "text/plain",
            ] {
                let resp = attributed(client().post(format!("{}{path}", sim.base_url())))
                    .bearer_auth(&token)
                    .header("content-type", ct)
                    .header("X-Client-Id", "garbage")
                    .body(body.to_vec())
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                assert!(status < 500, "{path} {ct} {body:?} → {status}");
            }
        }
    }
    // Still serving.
    assert_eq!(available_credits(&sim, &token).await, 100);
}

#[tokio::test]
async fn dropping_the_simulator_frees_its_ports() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    let (token, _, sid) = ready(&sim).await;
    // Leave a stream in flight.
    let resp = run_sse_request(&sim, &token, &sid, REMOVE)
        .send()
        .await
        .unwrap();
    let api = sim.base_url().trim_start_matches("http://").to_owned();
    let cdn = sim.cdn_base_url().trim_start_matches("http://").to_owned();
    let web = sim.web_url().trim_start_matches("http://").to_owned();
    drop(sim);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for addr in [&api, &cdn, &web] {
        assert!(
            tokio::net::TcpStream::connect(addr.as_str()).await.is_err(),
            "{addr} still accepts"
        );
    }
    // The in-flight stream was cut, not left running.
    assert!(read_stream(resp).await.broken);

    let sim = Simulator::start().await.unwrap();
    let addr = sim.base_url().trim_start_matches("http://").to_owned();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr.as_str()).await.is_err());
}

#[tokio::test]
async fn links_for_simulator_accounts_open_the_simulators_own_pages() {
    let sim = Simulator::builder().fast().start().await.unwrap();
    assert!(
        sim.web_url().starts_with("http://127.0.0.1:"),
        "{}",
        sim.web_url()
    );
    assert_ne!(sim.web_url(), sim.base_url());
    assert_ne!(sim.web_url(), sim.cdn_base_url());
    let sdk = nemo_video::NemoClient::builder()
        .base_url(sim.base_url())
        .web_url(sim.web_url())
        .no_persistence()
        .build()
        .unwrap();
    let session = sdk.create_session().await.unwrap();

    let register = sdk
        .registration_url()
        .await
        .expect("an anonymous user has a link");
    let claim = sdk.claim_link(&session).await.unwrap().url;
    for (link, says) in [
        (
            register.as_str(),
            "is an anonymous account of the offline NemoVideo simulator",
        ),
        (
            claim.as_str(),
            "This project lives in the offline NemoVideo simulator",
        ),
    ] {
        assert!(link.starts_with(sim.web_url()), "{link}");
        assert!(!link.contains("nemovideo.com"), "{link}");
        let resp = client().get(link).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{link}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/html; charset=utf-8"
        );
        let page = resp.text().await.unwrap();
        assert!(page.contains(says), "{page}");
        assert!(page.contains(sim.base_url()), "names the simulator: {page}");
    }
    let user = register.split("bind=").nth(1).unwrap();
    let page = client()
        .get(&register)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("<code>{user}</code>")), "{page}");

    // Markup in a query is shown, not run; unknown pages are 404.
    let resp = client()
        .get(format!("{}/register?bind=%3Cscript%3E", sim.web_url()))
        .send()
        .await
        .unwrap();
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;") && !page.contains("<script>"),
        "{page}"
    );
    let resp = client()
        .get(format!("{}/pricing", sim.web_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        sim.render_time(),
        Duration::from_millis(400),
        "fast() timing"
    );
}

/// Regression: the listeners had tokio's default backlog of 128, so a burst of connections
/// (a load test of a server with thousands of users) overflowed it and the kernel dropped
/// SYNs: those clients connected a second or more late, or timed out.
#[cfg(target_os = "linux")]
#[test]
fn a_burst_of_connections_waits_in_the_backlog_instead_of_being_dropped() {
    const BURST: usize = 1200;
    if !open_file_limit_at_least(BURST as u64 + 100) {
        eprintln!("skipped: the hard open-file limit is below {}", BURST + 100);
        return;
    }
    // A runtime that is not running while the burst arrives, so nothing is accepted and
    // every connection has to wait in the backlog.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = runtime.block_on(Simulator::builder().start()).unwrap();
    let addr: std::net::SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut connections = Vec::with_capacity(BURST);
    for i in 0..BURST {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => connections.push(stream),
            Err(err) => panic!("connection {i} of a burst of {BURST} failed: {err}"),
        }
    }
    assert_eq!(connections.len(), BURST);
}

/// Raises the soft open-file limit to `needed` if the hard limit allows it.
#[cfg(target_os = "linux")]
fn open_file_limit_at_least(needed: u64) -> bool {
    // SAFETY: `getrlimit`/`setrlimit` read or write only the struct they are given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return false;
        }
        if limit.rlim_cur as u64 >= needed {
            return true;
        }
        if (limit.rlim_max as u64) < needed {
            return false;
        }
        limit.rlim_cur = needed as libc::rlim_t;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    }
}
