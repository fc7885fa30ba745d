//! The service runs one turn per session at a time and refuses a second one: the simulator
//! does the same, and the client keeps a second turn waiting for the first.

mod support;

use std::time::Duration;

use nemo_video::simulator::{Endpoint, Simulator};
use nemo_video::turn::TurnEnd;
use nemo_video::turn::TurnOptions;
use support::sim::{session_with_clip, MASK_TRACK, REMOVE};
use support::{ephemeral_builder, tempdir};

async fn slow_simulator() -> Simulator {
    // Turns long enough that two of them overlap.
    Simulator::builder()
        .fast()
        .work_duration(Duration::from_millis(400))
        .start()
        .await
        .expect("simulator starts")
}

#[tokio::test]
async fn the_simulator_refuses_a_second_turn_on_a_session_and_charges_nothing_for_it() {
    let sim = slow_simulator().await;
    let config = tempdir();
    let client = ephemeral_builder(sim.base_url())
        .config_dir(config.path())
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    let token = client
        .anonymous_credentials()
        .await
        .expect("an identity")
        .token
        .expose()
        .to_string();
    let credits = sim.credits_of_token(&token).unwrap();
    let http = reqwest::Client::new();
    let body = serde_json::json!({"app_name": "nemo_agent", "user_id": "me",
        "session_id": session.id(), "new_message": {"parts": [{"text": REMOVE}]}});
    let send = || {
        http.post(format!("{}/run_sse", sim.base_url()))
            .bearer_auth(&token)
            .header("x-skill-source", "test")
            .header("x-skill-version", "1")
            .header("x-skill-platform", "test")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = send().await.unwrap();
    assert_eq!(second.status(), 409, "a second turn while the first runs");
    let text = second.text().await.unwrap();
    assert!(text.contains("already has a turn running"), "{text}");
    // Only the first was charged.
    assert_eq!(sim.credits_of_token(&token).unwrap(), credits - 5);
    // Once the first stream ends, the session takes a turn again.
    let _ = first.bytes().await.unwrap();
    let third = send().await.unwrap();
    assert_eq!(third.status(), 200);
    let _ = third.bytes().await;
}

#[tokio::test]
async fn a_second_turn_on_a_session_waits_for_the_first() {
    let sim = slow_simulator().await;
    let config = tempdir();
    let client = ephemeral_builder(sim.base_url())
        .config_dir(config.path())
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    // Another client of the same identity, in the same process (a second request handler).
    let other = ephemeral_builder(sim.base_url())
        .config_dir(config.path())
        .build()
        .unwrap();
    let options = TurnOptions::default().reconcile(2, Duration::from_millis(50));
    let (one, two) = tokio::join!(
        client.run_turn_with(&session, REMOVE, &options),
        other.run_turn_with(&session, "add lo-fi music at 35%", &options)
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(matches!(one.end, TurnEnd::Completed), "{:?}", one.end);
    assert!(matches!(two.end, TurnEnd::Completed), "{:?}", two.end);
    assert_eq!(
        sim.request_count(Endpoint::RunSse),
        2,
        "neither refused nor retried"
    );
    let summary = client.state(&session).await.unwrap().summary();
    assert!(summary.contains(MASK_TRACK), "{summary}");
}

#[tokio::test]
async fn an_agent_error_after_tools_ran_ends_the_turn_with_what_changed() {
    let sim = slow_simulator().await;
    let config = tempdir();
    let client = ephemeral_builder(sim.base_url())
        .config_dir(config.path())
        .build()
        .unwrap();
    let session = session_with_clip(&client).await;
    sim.fail_next_stream_after(2, "model overloaded");
    let turn = client
        .run_turn_with(
            &session,
            REMOVE,
            &TurnOptions::default().reconcile(2, Duration::from_millis(50)),
        )
        .await
        .expect("the turn ran: its end is an outcome, not an error");
    let TurnEnd::AgentError(err) = &turn.end else {
        panic!("{:?}", turn.end);
    };
    assert!(err.to_string().contains("model overloaded"), "{err}");
    let changes = turn.changes.as_ref().expect("the state was read");
    assert!(changes.to_string().contains(MASK_TRACK), "{changes}");
    assert!(
        turn.answer().contains("model overloaded"),
        "{}",
        turn.answer()
    );
    assert_eq!(sim.request_count(Endpoint::RunSse), 1);
}
