//! Server-Sent Events over HTTP: snapshot first, then notifications; resumption with
//! `Last-Event-ID` without gap or duplicate; a fresh snapshot when resumption is impossible.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn battle_ids(snapshot: &Value) -> Vec<String> {
    snapshot["battles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["battle_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn snapshot_then_notifications_with_headers() {
    let server = Server::start(config()).await;
    server
        .callback_ok(CREATE, &create("before", "r1", &["r2"], 60_000, false))
        .await;
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert_eq!(stream.headers["cache-control"], "no-cache");

    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    let data = snap.json();
    assert_eq!(battle_ids(&data), ["before"]);
    assert_eq!(data["seq"], 1);
    assert_eq!(data["reason"], "initial");
    assert_eq!(snap.seq(), 1);

    server
        .callback_ok(CREATE, &create("after", "r3", &["r4"], 60_000, false))
        .await;
    let n = stream.event().await;
    assert_eq!(n.event.as_deref(), Some("battle"));
    assert_eq!(n.seq(), 2);
    let data = n.json();
    assert_eq!(data["seq"], 2);
    assert_eq!(data["battle_id"], "after");
    assert_eq!(data["from"], Value::Null);
    assert_eq!(data["to"], "running");
    assert_eq!(data["cause"], "create_webhook");
    assert_eq!(data["state"], "running");
    assert!(data["server_time_ms"].is_i64() && data["ends_at_ms"].is_i64());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn timer_driven_battle_stream() {
    let server = Server::start(config()).await;
    let mut stream = server
        .sse(&format!("/v1/battles/{}/events", encode("t/1=")), None)
        .await;
    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    assert!(
        battle_ids(&snap.json()).is_empty(),
        "the battle does not exist yet"
    );

    // Another battle's news does not reach this stream.
    server
        .callback_ok(CREATE, &create("other", "o1", &["o2"], 60_000, false))
        .await;
    server.create_running("t/1=", 300).await;
    let started = stream.event().await.json();
    assert_eq!(started["battle_id"], "t/1=");
    assert_eq!(started["to"], "running");
    let ended = stream.event().await.json();
    assert_eq!(ended["from"], "running");
    assert_eq!(ended["to"], "ended");
    assert_eq!(ended["cause"], "end_timer");
    assert_eq!(ended["end_reason"], "time_up");
    assert!(ended["seq"].as_u64() > started["seq"].as_u64());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_with_last_event_id_has_no_gap_and_no_duplicate() {
    let server = Server::start(config()).await;
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.event().await.seq(), 0);
    server
        .callback_ok(CREATE, &create("r-1", "a", &["b"], 60_000, false))
        .await;
    let first = stream.event().await;
    assert_eq!(first.seq(), 1);
    drop(stream);

    // While disconnected: three more changes.
    server
        .callback_ok(CREATE, &create("r-2", "c", &["d"], 60_000, false))
        .await;
    server
        .admin(
            "/v1/battles/r-1/scores",
            &json!({"scores": [{"room_id": "a", "score": 7}]}),
        )
        .await;
    server.admin("/v1/battles/r-2/end", &json!({})).await;

    let mut resumed = server.sse("/v1/events", Some(first.seq())).await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let f = resumed.event().await;
        assert_eq!(
            f.event.as_deref(),
            Some("battle"),
            "no snapshot on a successful resume"
        );
        assert_eq!(f.json()["seq"].as_u64(), Some(f.seq()));
        seqs.push(f.seq());
    }
    assert_eq!(seqs, [2, 3, 4]);
    // Then live, continuing the same sequence.
    server
        .callback_ok(CREATE, &create("r-3", "e", &["f"], 60_000, false))
        .await;
    assert_eq!(resumed.event().await.seq(), 5);
    resumed.assert_quiet(Duration::from_millis(200)).await;

    // A per-battle stream resumes with only that battle's notifications.
    let mut one = server.sse("/v1/battles/r-1/events", Some(1)).await;
    let f = one.event().await;
    assert_eq!(f.seq(), 3);
    assert_eq!(f.json()["participants"][0]["score"], 7);
    one.assert_quiet(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_too_old_gets_a_fresh_snapshot() {
    let mut c = config();
    c.replay_capacity = 2;
    let server = Server::start(c).await;
    for i in 0..5 {
        server
            .callback_ok(
                CREATE,
                &create(
                    &format!("old-{i}"),
                    &format!("x{i}"),
                    &[&format!("y{i}")],
                    60_000,
                    false,
                ),
            )
            .await;
    }
    let mut stream = server.sse("/v1/events", Some(1)).await;
    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    let data = snap.json();
    assert_eq!(data["reason"], "resume_too_old");
    assert_eq!(data["seq"], 5);
    assert_eq!(battle_ids(&data).len(), 5);
    // Within the ring it resumes.
    let mut ok = server.sse("/v1/events", Some(3)).await;
    assert_eq!(ok.event().await.seq(), 4);
    assert_eq!(ok.event().await.seq(), 5);
    // A seq from the future (e.g. before a restart) also gets a snapshot.
    let mut future = server.sse("/v1/events", Some(999)).await;
    assert_eq!(future.event().await.json()["reason"], "resume_too_old");
    // A malformed id is ignored.
    let r = server
        .client
        .get(server.url("/v1/events"))
        .header("last-event-id", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn room_stream_and_keep_alive() {
    let mut c = config();
    c.sse_keep_alive = Duration::from_secs(1);
    let server = Server::start(c).await;
    server.create_running("room-1", 60_000).await;
    let mut stream = server.sse("/v1/rooms/pk-5/events", None).await;
    let snap = stream.event().await.json();
    assert_eq!(battle_ids(&snap), ["room-1"]);
    server
        .callback_ok(CREATE, &create("room-2", "zz-1", &["zz-2"], 60_000, false))
        .await;
    server.admin("/v1/battles/room-1/end", &json!({})).await;
    let n = stream.event().await.json();
    assert_eq!(n["battle_id"], "room-1");
    assert_eq!(n["to"], "ended");
    assert_eq!(n["end_reason"], "ended_by_app");
    // Keep-alive comments arrive while nothing happens.
    let f = stream.frame(WAIT).await.unwrap();
    assert!(f.comment, "{f:?}");
    server.stop().await.unwrap();
}
