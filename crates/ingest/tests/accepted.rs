//! What is accepted, and how: leniency, acknowledged commands, duplicates, big owner accounts,
//! OpType, DestroyRoom, signature freshness and rotation on the engine clock, and the OK reply
//! coming only after the engine stored the event.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use livebattle_engine::store::{BoxFuture, Loaded, Store, StoreError, StoreOp};
use livebattle_engine::{EndReason, Engine, State, TokioClock};
use livebattle_ingest::{Reason, ACKNOWLEDGED_COMMANDS};
use serde_json::json;

fn end_with(owner_from: serde_json::Value, op_type: serde_json::Value) -> String {
    let mut v = fixture_json("end_battle.json");
    v["BattleId"] = "big-owner".into();
    v["FromRoomInfo"]["Owner_Account"] = owner_from;
    v["OpType"] = op_type;
    v.to_string()
}

#[tokio::test(start_paused = true)]
async fn owner_account_144115245353757792_and_a_25_digit_one_kept_exactly() {
    let h = harness().await;
    // serde_json::Value would turn the 25-digit number into a float: write the JSON by hand.
    let body = end_with(json!("PLACEHOLDER"), json!(0))
        .replace("\"PLACEHOLDER\"", "1234567890123456789012345");
    h.post(&query(APP, END), body).await.assert_ok();
    let b = h.engine.battle("big-owner").unwrap();
    let owners: Vec<Option<&str>> = b
        .participants
        .iter()
        .map(|p| p.owner_account.as_deref())
        .collect();
    assert!(
        owners.contains(&Some("1234567890123456789012345")),
        "{owners:?}"
    );
    assert!(owners.contains(&Some("144115245442327522")), "{owners:?}");

    let body = end_with(json!("x"), json!(0))
        .replace("\"x\"", "144115245353757792")
        .replace("big-owner", "big-owner-2");
    h.post(&query(APP, END), body).await.assert_ok();
    let b = h.engine.battle("big-owner-2").unwrap();
    assert!(b
        .participants
        .iter()
        .any(|p| p.owner_account.as_deref() == Some("144115245353757792")));
}

#[tokio::test(start_paused = true)]
async fn op_type_beyond_0_to_2_is_kept_as_unknown() {
    let h = harness().await;
    h.post(&query(APP, END), end_with(json!("o"), json!(7)))
        .await
        .assert_ok();
    let b = h.engine.battle("big-owner").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_op_type, Some(7));
    assert_eq!(b.end_reason, Some(EndReason::Unknown));
}

#[tokio::test(start_paused = true)]
async fn lenient_numbers_unknown_fields_and_defaults() {
    let h = harness().await;
    let mut v = fixture_json("create_battle.json");
    v["BattleId"] = "lenient".into();
    v["Timeout"] = "30000".into(); // numeric string
    v["Duration"] = json!(60000.0); // integral float
    v["NeedResponse"] = json!(1);
    v["SomethingNew"] = json!({"nested": [1, 2, 3]});
    v["RoomInfo"] = json!({"RoomId": "pk-3"});
    h.post(&query(APP, CREATE), v.to_string()).await.assert_ok();
    let b = h.engine.battle("lenient").unwrap();
    assert_eq!(b.timeout_ms, Some(30_000));
    assert_eq!(b.duration_ms, Some(60_000));
    assert_eq!(b.need_response, Some(true));
    assert_eq!(b.state, State::AwaitingResponse);

    // Only the command and BattleId: every other field defaulted.
    let minimal = json!({"CallbackCommand": START, "BattleId": "minimal"}).to_string();
    h.post(&query(APP, START), minimal).await.assert_ok();
    assert!(h.engine.battle("minimal").is_some());
    // null is "absent".
    let nulls = json!({"CallbackCommand": END, "BattleId": "nulls", "OpType": null,
        "FromRoomInfo": null, "ToRoomList": null, "EndTime": null});
    h.post(&query(APP, END), nulls.to_string())
        .await
        .assert_ok();
    assert_eq!(h.engine.battle("nulls").unwrap().state, State::Ended);
}

#[tokio::test(start_paused = true)]
async fn content_type_header_and_key_case_do_not_matter() {
    let h = harness().await;
    let q = format!("sdkappid={APP}&CALLBACKCOMMAND={CREATE}&ContentType=json");
    let request = Request::post(format!("/callback?{q}"))
        .header("content-type", "text/plain; charset=gbk")
        .body(Body::from(fixture("create_battle.json")))
        .unwrap();
    h.send(request).await.assert_ok();
    let q = format!("SdkAppId={APP}&CallbackCommand={START}");
    let request = Request::post(format!("/callback?{q}"))
        .body(Body::from(fixture("start_battle.json")))
        .unwrap();
    h.send(request).await.assert_ok();
    assert_eq!(h.engine.battle_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn other_commands_are_acknowledged_counted_not_applied() {
    let h = harness().await;
    let before = h.state();
    for command in ACKNOWLEDGED_COMMANDS
        .iter()
        .copied()
        .chain(["Live.SomethingNew"])
    {
        let body = json!({"CallbackCommand": command, "RoomId": "pk-3", "BattleId": "x"});
        h.post(&query(APP, command), body.to_string())
            .await
            .assert_ok();
    }
    assert_eq!(h.state(), before, "nothing applied");
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(
        snap.requests("Group.CallbackAfterSendMsg", "acknowledged"),
        1
    );
    assert_eq!(
        snap.requests("Follow.CallbackAfterFollowAdd", "acknowledged"),
        1
    );
    assert_eq!(
        snap.requests("Mic.CallbackAfterSeatInfoChanged", "acknowledged"),
        1
    );
    assert_eq!(snap.requests("other", "acknowledged"), 1);
}

#[tokio::test(start_paused = true)]
async fn destroy_room_feeds_the_engine() {
    let h = harness().await;
    let destroy = json!({"CallbackCommand": DESTROY, "RoomId": "pk-5", "EventTime": START_MS + 1000,
        "EventType": "DestroyBySystem", "Operator_Account": 144115245442327522_u64,
        "RoomInfo": {"RoomId": "pk-5"}, "Statistic": {}});
    // No battle has the room yet.
    h.post(&query(APP, DESTROY), destroy.to_string())
        .await
        .assert_ok();
    assert_eq!(
        h.ingest.metrics().snapshot().requests(DESTROY, "no_battle"),
        1
    );
    h.deliver(CREATE, "create_battle.json").await;
    let version = h.engine.battle(CREATE_ID).unwrap().version;
    h.post(&query(APP, DESTROY), destroy.to_string())
        .await
        .assert_ok();
    let b = h.engine.battle(CREATE_ID).unwrap();
    assert!(
        b.version > version,
        "the battle heard of its destroyed room"
    );
    assert!(b
        .participants
        .iter()
        .any(|p| &*p.room_id == "pk-5" && p.left));
}

#[tokio::test(start_paused = true)]
async fn duplicate_delivery_is_ok_and_counted_as_duplicate() {
    let h = harness().await;
    for _ in 0..2 {
        h.deliver(CREATE, "create_battle.json").await;
    }
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.requests(CREATE, "new"), 1);
    assert_eq!(snap.requests(CREATE, "duplicate"), 1);
    assert_eq!(h.engine.battle_count(), 1);
}

/// Every callback of one second carries the same Sign: a repeated Sign is not a replay.
#[tokio::test(start_paused = true)]
async fn repeated_sign_within_a_second_is_accepted() {
    let h = harness().await;
    let now_s = START_MS / 1000;
    let create_q = signed_query(SIGNED_APP, CREATE, TOKEN, now_s);
    let start_q = signed_query(SIGNED_APP, START, TOKEN, now_s);
    let sign = |q: &str| q.split("Sign=").nth(1).map(|s| s[..64].to_owned());
    assert_eq!(sign(&create_q), sign(&start_q));
    h.post(&create_q, fixture("create_battle.json"))
        .await
        .assert_ok();
    h.post(&start_q, fixture("start_battle.json"))
        .await
        .assert_ok();
    // The very same URL again, with the same body: OK (the engine calls it a duplicate).
    h.post(&create_q, fixture("create_battle.json"))
        .await
        .assert_ok();
    assert_eq!(h.engine.battle_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn upper_case_sign_accepted() {
    let h = harness().await;
    let q = signed_query(SIGNED_APP, CREATE, TOKEN, START_MS / 1000);
    let (head, sign) = q.split_once("Sign=").unwrap();
    let q = format!(
        "{head}Sign={}",
        sign.to_uppercase().replace("REQUESTTIME", "RequestTime")
    );
    h.post(&q, fixture("create_battle.json")).await.assert_ok();
}

/// Freshness on the engine's clock: the same signed URL is fresh for 60 s, then stale.
#[tokio::test(start_paused = true)]
async fn freshness_follows_the_engine_clock() {
    let h = harness().await;
    let q = signed_query(SIGNED_APP, CREATE, TOKEN, START_MS / 1000);
    tokio::time::advance(Duration::from_millis(60_999)).await;
    h.post(&q, fixture("create_battle.json")).await.assert_ok();
    tokio::time::advance(Duration::from_millis(1)).await;
    let before = h.state();
    let reply = h.post(&q, fixture("start_battle.json")).await;
    reply.assert_refused(401, 4013, &["RequestTime", "61 s"]);
    assert_eq!(h.state(), before);
}

#[tokio::test(start_paused = true)]
async fn configured_signature_window() {
    let h = harness_config(livebattle_ingest::IngestConfig {
        signature_window: Duration::from_secs(5),
        ..config()
    })
    .await;
    let now_s = START_MS / 1000;
    let ok = signed_query(SIGNED_APP, CREATE, TOKEN, now_s - 5);
    h.post(&ok, fixture("create_battle.json")).await.assert_ok();
    let stale = signed_query(SIGNED_APP, START, TOKEN, now_s - 6);
    h.post(&stale, fixture("start_battle.json"))
        .await
        .assert_refused(401, 4013, &["window is 5 s"]);
}

/// During a rotation both tokens pass for `token_overlap` (engine clock), then only the new one.
#[tokio::test(start_paused = true)]
async fn token_rotation_overlap() {
    let h = harness().await;
    h.ingest
        .rotate_token(SIGNED_APP, Some("new-token".into()))
        .unwrap();
    let now_s = START_MS / 1000;
    let old = signed_query(SIGNED_APP, CREATE, TOKEN, now_s);
    let new = signed_query(SIGNED_APP, START, "new-token", now_s);
    h.post(&old, fixture("create_battle.json"))
        .await
        .assert_ok();
    h.post(&new, fixture("start_battle.json")).await.assert_ok();

    tokio::time::advance(Duration::from_secs(5 * 60) + Duration::from_millis(1)).await;
    let now_s = h.engine.now_ms() / 1000;
    let old = signed_query(SIGNED_APP, END, TOKEN, now_s);
    let before = h.state();
    h.post(&old, fixture("end_battle.json"))
        .await
        .assert_refused(401, 4011, &["Sign does not match"]);
    assert_eq!(h.state(), before);
    let new = signed_query(SIGNED_APP, END, "new-token", now_s);
    h.post(&new, fixture("end_battle.json")).await.assert_ok();
    assert_eq!(
        h.ingest.rotate_token("999", Some("t".into())).unwrap_err(),
        livebattle_ingest::ConfigError::UnknownSdkAppId("999".into())
    );
}

/// Delays every write by 400 ms (virtual time) and counts finished writes.
struct SlowStore(Arc<AtomicUsize>);

impl Store for SlowStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async { Ok(Loaded::default()) })
    }
    fn write(&self, _ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        let done = self.0.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// The OK reply is sent only after `engine.apply` returned: the write had finished by then.
#[tokio::test(start_paused = true)]
async fn ok_only_after_the_engine_stored_the_event() {
    let writes = Arc::new(AtomicUsize::new(0));
    let builder = Engine::builder()
        .clock(TokioClock::starting_at(START_MS))
        .store(SlowStore(writes.clone()));
    let h = harness_with(builder, config()).await;
    let started = tokio::time::Instant::now();
    h.deliver(CREATE, "create_battle.json").await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "inside Tencent's 2 s"
    );
    assert_eq!(writes.load(Ordering::SeqCst), 1, "stored before the reply");
    assert!(h.engine.battle(CREATE_ID).is_some());
}

#[tokio::test(start_paused = true)]
async fn metrics_by_command_outcome_and_reason() {
    let h = harness().await;
    h.deliver(CREATE, "create_battle.json").await;
    h.post(&query("1", CREATE), fixture("create_battle.json"))
        .await
        .assert_refused(403, 4031, &["1"]);
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.requests(CREATE, "new"), 1);
    assert_eq!(snap.requests(CREATE, "refused"), 1);
    assert_eq!(snap.refusals(Reason::ForeignSdkAppId), 1);
    let text = h.ingest.metrics().to_prometheus();
    assert!(text.contains(
        "livebattle_ingest_requests_total{command=\"Live.CallbackAfterCreateBattle\",outcome=\"new\"} 1"
    ));
    assert!(text.contains(
        "livebattle_ingest_refusals_total{reason=\"foreign_sdk_app_id\",code=\"4031\"} 1"
    ));
}
