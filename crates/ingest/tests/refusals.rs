//! Every refusal path through the real router: HTTP status, Tencent-shaped FAIL body with its
//! ErrorCode and an ErrorInfo that says what was wrong, the refusal counter, and an engine whose
//! state did not change.

mod common;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::Request;
use common::*;
use livebattle_engine::store::{BoxFuture, Loaded, Store, StoreError, StoreOp};
use livebattle_engine::{Engine, TokioClock};
use livebattle_ingest::{compute_sign, IngestConfig, Reason};
use serde_json::json;

/// A harness that already holds one battle, so "unchanged" means something.
async fn seeded() -> Harness {
    let h = harness().await;
    h.deliver(CREATE, "create_battle.json").await;
    h
}

/// Sends, checks the reply, the counter and that the engine did not change.
async fn refused(h: &Harness, request: Request<Body>, status: u16, reason: Reason, words: &[&str]) {
    let before = h.state();
    let counted = h.ingest.metrics().snapshot().refusals(reason);
    let reply = h.send(request).await;
    reply.assert_refused(status, reason.code().into(), words);
    assert_eq!(reason.status().as_u16(), status);
    assert_eq!(h.state(), before, "the engine changed on a refusal");
    assert_eq!(
        h.ingest.metrics().snapshot().refusals(reason),
        counted + 1,
        "refusal counted"
    );
}

/// Each `(request, words)` is refused with `status` and `reason`, mentioning `words`.
async fn refused_all(h: &Harness, cases: Vec<(Request<Body>, &str)>, status: u16, reason: Reason) {
    for (request, words) in cases {
        refused(h, request, status, reason, &[words]).await;
    }
}

fn post(query: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(format!("/callback?{query}"))
        .body(body.into())
        .unwrap()
}

fn create_body(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = fixture_json("create_battle.json");
    v["BattleId"] = "other-battle".into();
    edit(&mut v);
    v.to_string()
}

fn end_body(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = fixture_json("end_battle.json");
    edit(&mut v);
    v.to_string()
}

#[tokio::test(start_paused = true)]
async fn malformed_json_4001() {
    let h = seeded().await;
    let q = query(APP, CREATE);
    let cases = [
        (r#"{"CallbackCommand":"#, "not valid JSON"),
        ("", "not valid JSON"),
        (
            r#"{"CallbackCommand":"Live.CallbackAfterCreateBattle"} x"#,
            "not valid JSON",
        ),
        (
            r#"["Live.CallbackAfterCreateBattle","b"]"#,
            "one JSON object",
        ),
        (r#""Live.CallbackAfterCreateBattle""#, "one JSON object"),
    ];
    let cases = cases.map(|(body, words)| (post(&q, body), words));
    refused_all(&h, cases.into(), 400, Reason::MalformedJson).await;
}

#[tokio::test(start_paused = true)]
async fn command_mismatch_4002() {
    let h = seeded().await;
    let no_command = create_body(|v| {
        v.as_object_mut().unwrap().remove("CallbackCommand");
    });
    let numeric = create_body(|v| v["CallbackCommand"] = 5.into());
    // Other commands must agree too.
    let group = r#"{"CallbackCommand":"Group.CallbackAfterSendMsg"}"#;
    let gift = query(APP, "Live.CallbackBeforeSendGift");
    let cases = vec![
        (post(&query(APP, END), fixture("start_battle.json")), START),
        (post(&query(APP, CREATE), no_command), "no CallbackCommand"),
        (post(&query(APP, CREATE), numeric), "not a string"),
        (
            post(&gift, group),
            "differs from the URL's Live.CallbackBeforeSendGift",
        ),
    ];
    refused_all(&h, cases, 400, Reason::CommandMismatch).await;
}

#[tokio::test(start_paused = true)]
async fn missing_or_empty_sdk_app_id_4003() {
    let h = seeded().await;
    let body = fixture("create_battle.json");
    let missing = format!("CallbackCommand={CREATE}&contenttype=json");
    let empty = format!("SdkAppid=&CallbackCommand={CREATE}");
    let no_query = Request::post("/callback")
        .body(Body::from(body.clone()))
        .unwrap();
    let cases = vec![
        (post(&missing, body.clone()), "SdkAppid is missing"),
        (post(&empty, body), "SdkAppid is missing"),
        (no_query, "SdkAppid is missing"),
    ];
    refused_all(&h, cases, 400, Reason::MissingSdkAppId).await;
}

#[tokio::test(start_paused = true)]
async fn missing_command_4004() {
    let h = seeded().await;
    let q = format!("SdkAppid={APP}&contenttype=json");
    let cases = vec![(post(&q, fixture("create_battle.json")), "CallbackCommand")];
    refused_all(&h, cases, 400, Reason::MissingCommand).await;
    // Refused before the command is known: counted under `unknown`.
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.requests("unknown", "refused"), 1);
}

#[tokio::test(start_paused = true)]
async fn ambiguous_query_4005() {
    let h = seeded().await;
    let q = format!("{}&SdkAppId=1400000003", query(APP, CREATE));
    let cases = vec![(
        post(&q, fixture("create_battle.json")),
        "SdkAppId is given twice",
    )];
    refused_all(&h, cases, 400, Reason::AmbiguousQuery).await;
}

#[tokio::test(start_paused = true)]
async fn malformed_request_time_4006() {
    let h = seeded().await;
    // Correctly signed over a RequestTime that is not a number: the signature passes, the time
    // cannot be checked.
    let q = format!(
        "{}&Sign={}&RequestTime=soon",
        query(SIGNED_APP, CREATE),
        compute_sign(TOKEN, "soon")
    );
    let cases = vec![(
        post(&q, fixture("create_battle.json")),
        "RequestTime \"soon\"",
    )];
    refused_all(&h, cases, 400, Reason::MalformedRequestTime).await;
}

#[tokio::test(start_paused = true)]
async fn unreadable_body_4007() {
    let h = seeded().await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"CallbackCommand\":")),
        Err(std::io::Error::other("connection reset")),
    ];
    let body = Body::from_stream(tokio_stream::iter(chunks));
    let cases = vec![(post(&query(APP, CREATE), body), "could not read the body")];
    refused_all(&h, cases, 400, Reason::UnreadableBody).await;
}

#[tokio::test(start_paused = true)]
async fn bad_signature_4011() {
    let h = seeded().await;
    let now_s = START_MS / 1000;
    let body = create_body(|_| {});
    let wrong_token = signed_query(SIGNED_APP, CREATE, "not-the-token", now_s);
    let garbage = format!("{}&Sign=xyz&RequestTime={now_s}", query(SIGNED_APP, CREATE));
    // Signed for another second than the RequestTime sent.
    let other_second = format!(
        "{}&Sign={}&RequestTime={now_s}",
        query(SIGNED_APP, CREATE),
        compute_sign(TOKEN, &(now_s - 1).to_string())
    );
    // Signature is checked first: a bad Sign with a stale time is a bad signature.
    let stale_and_bad = signed_query(SIGNED_APP, CREATE, "nope", now_s - 3600);
    let cases = vec![
        (post(&wrong_token, body.clone()), "Sign does not match"),
        (post(&garbage, body.clone()), "Sign is not 64 hex digits"),
        (post(&other_second, body.clone()), "Sign does not match"),
        (post(&stale_and_bad, body), "Sign does not match"),
    ];
    refused_all(&h, cases, 401, Reason::BadSignature).await;
}

#[tokio::test(start_paused = true)]
async fn missing_signature_4012() {
    let h = seeded().await;
    let body = create_body(|_| {});
    let no_time = format!(
        "{}&Sign={}",
        query(SIGNED_APP, CREATE),
        compute_sign(TOKEN, "1739954005")
    );
    let cases = vec![
        (
            post(&query(SIGNED_APP, CREATE), body.clone()),
            "requires Sign and RequestTime",
        ),
        (post(&no_time, body), "requires Sign and RequestTime"),
    ];
    refused_all(&h, cases, 401, Reason::MissingSignature).await;
}

#[tokio::test(start_paused = true)]
async fn stale_request_time_4013() {
    let h = seeded().await;
    let now_s = START_MS / 1000;
    let body = create_body(|_| {});
    let cases = [now_s - 61, now_s + 61, 0].map(|t| {
        let q = signed_query(SIGNED_APP, CREATE, TOKEN, t);
        (post(&q, body.clone()), "the window is 60 s")
    });
    refused_all(&h, cases.into(), 401, Reason::StaleRequestTime).await;
}

#[tokio::test(start_paused = true)]
async fn foreign_sdk_app_id_4031() {
    let h = seeded().await;
    let q = query("1400009999", CREATE);
    let cases = vec![(
        post(&q, fixture("create_battle.json")),
        "SdkAppid 1400009999 is not served",
    )];
    refused_all(&h, cases, 403, Reason::ForeignSdkAppId).await;
}

#[tokio::test(start_paused = true)]
async fn not_post_4051() {
    let h = seeded().await;
    let request = Request::get(format!("/callback?{}", query(APP, CREATE)))
        .body(Body::empty())
        .unwrap();
    refused_all(&h, vec![(request, "POST")], 405, Reason::MethodNotAllowed).await;
}

fn chunked(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(tokio_stream::iter(chunks))
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit_4131() {
    // Default 64 KiB: a valid callback padded past it, with and without Content-Length.
    let h = seeded().await;
    let padded = create_body(|v| v["ExtensionInfo"] = "x".repeat(64 * 1024).into());
    assert!(padded.len() > 64 * 1024);
    let mut declared = post(&query(APP, CREATE), padded.clone());
    let length = padded.len().into();
    declared.headers_mut().insert("content-length", length);
    let streamed = post(&query(APP, CREATE), chunked(padded.into_bytes()));
    let cases = vec![
        (declared, "larger than the limit of 65536 bytes"),
        (streamed, "larger than the limit of 65536 bytes"),
    ];
    refused_all(&h, cases, 413, Reason::BodyTooLarge).await;

    // A configured limit.
    let small = harness_config(IngestConfig {
        body_limit: 256,
        ..config()
    })
    .await;
    let body = fixture("end_battle.json");
    assert!(body.len() > 256);
    let cases = vec![(post(&query(APP, END), body), "limit of 256 bytes")];
    refused_all(&small, cases, 413, Reason::BodyTooLarge).await;
    // Under the limit passes.
    let tiny = r#"{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"t"}"#;
    small.post(&query(APP, END), tiny).await.assert_ok();
    // Also in several pieces (joined in order), and with empty pieces among them.
    let pieces = [
        "",
        "{\"CallbackCommand\":",
        "",
        "\"Live.CallbackAfterEndBattle\",",
        "\"BattleId\":\"t2\"}",
    ];
    let chunks: Vec<Result<Bytes, std::io::Error>> = pieces
        .iter()
        .map(|p| Ok(Bytes::from_static(p.as_bytes())))
        .collect();
    let body = Body::from_stream(tokio_stream::iter(chunks));
    small.post(&query(APP, END), body).await.assert_ok();
    assert!(small.engine.battle("t2").is_some());
}

#[tokio::test(start_paused = true)]
async fn missing_battle_id_or_room_id_4221() {
    let h = seeded().await;
    let no_id = create_body(|v| {
        v.as_object_mut().unwrap().remove("BattleId");
    });
    let empty = end_body(|v| v["BattleId"] = "".into());
    let null = end_body(|v| v["BattleId"] = serde_json::Value::Null);
    let destroy = json!({"CallbackCommand": DESTROY, "EventTime": START_MS}).to_string();
    let cases = vec![
        (post(&query(APP, CREATE), no_id), "BattleId is missing"),
        (post(&query(APP, END), empty), "BattleId is missing"),
        (post(&query(APP, END), null), "BattleId is missing"),
        (post(&query(APP, DESTROY), destroy), "RoomId is missing"),
    ];
    refused_all(&h, cases, 422, Reason::MissingField).await;
}

#[tokio::test(start_paused = true)]
async fn wrong_field_types_4222() {
    let h = seeded().await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            CREATE,
            create_body(|v| v["BattleId"] = 12345.into()),
            "BattleId",
        ),
        (
            CREATE,
            create_body(|v| v["Duration"] = json!({"ms": 60000})),
            "Duration",
        ),
        (CREATE, create_body(|v| v["Timeout"] = json!(-1)), "Timeout"),
        (
            CREATE,
            create_body(|v| v["NeedResponse"] = "maybe".into()),
            "NeedResponse",
        ),
        (
            CREATE,
            create_body(|v| v["ToRoomIdList"] = "pk-5".into()),
            "ToRoomIdList",
        ),
        (
            CREATE,
            create_body(|v| v["ToRoomIdList"] = json!([5])),
            "ToRoomIdList[0]",
        ),
        (
            CREATE,
            create_body(|v| v["EventTime"] = true.into()),
            "EventTime",
        ),
        (
            END,
            end_body(|v| v["FromRoomInfo"] = json!(["pk-3", 0, "x"])),
            "FromRoomInfo",
        ),
        (
            END,
            end_body(|v| v["ToRoomList"][0]["Owner_Account"] = json!(1.5)),
            "ToRoomList[0].Owner_Account",
        ),
        (
            END,
            end_body(|v| v["ToRoomList"][0]["Score"] = json!("lots")),
            "ToRoomList[0].Score",
        ),
        (END, end_body(|v| v["OpType"] = json!(1e30)), "OpType"),
        (END, end_body(|v| v["EndTime"] = json!([1])), "EndTime"),
    ];
    let cases = cases
        .into_iter()
        .map(|(command, body, field)| (post(&query(APP, command), body), field))
        .collect();
    refused_all(&h, cases, 422, Reason::WrongFieldType).await;
}

#[tokio::test(start_paused = true)]
async fn engine_shut_down_5031() {
    let h = seeded().await;
    h.engine.shutdown().await;
    let body = create_body(|_| {});
    let cases = vec![(post(&query(APP, CREATE), body), "the engine is shut down")];
    refused_all(&h, cases, 503, Reason::EngineUnavailable).await;
}

/// Refuses every write.
struct FailingStore;

impl Store for FailingStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async { Ok(Loaded::default()) })
    }
    fn write(&self, _ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError("disk full".into())) })
    }
}

/// Never finishes a write.
struct HangingStore;

impl Store for HangingStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async { Ok(Loaded::default()) })
    }
    fn write(&self, _ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn store_failure_5031() {
    let builder = Engine::builder()
        .clock(TokioClock::starting_at(START_MS))
        .store(FailingStore);
    let h = harness_with(builder, config()).await;
    let reply = h
        .post(&query(APP, CREATE), fixture("create_battle.json"))
        .await;
    reply.assert_refused(503, 5031, &["engine", "disk full"]);
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.refusals(Reason::EngineUnavailable), 1);
    assert_eq!(snap.requests(CREATE, "refused"), 1);
    // No OK was sent. (The engine itself keeps the change in memory and retries the write with
    // its next batch: that is the engine's store contract, not a change ingest made.)
}

#[tokio::test(start_paused = true)]
async fn engine_too_slow_5032() {
    let builder = Engine::builder()
        .clock(TokioClock::starting_at(START_MS))
        .store(HangingStore);
    let config = IngestConfig {
        apply_timeout: Duration::from_millis(300),
        ..config()
    };
    let h = harness_with(builder, config).await;
    let reply = h
        .post(&query(APP, CREATE), fixture("create_battle.json"))
        .await;
    reply.assert_refused(503, 5032, &["300 ms"]);
    assert_eq!(
        h.ingest
            .metrics()
            .snapshot()
            .refusals(Reason::EngineTimeout),
        1
    );
}
