//! The read API, probes, metrics, errors and the OpenAPI document, over HTTP against the real
//! server on an ephemeral port.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn percent_encoded_battle_ids_round_trip() {
    let server = Server::start(config()).await;
    // The documented sample as-is (its EventTime is in the past, so it may already have ended).
    let (status, reply) = server
        .callback_raw(CREATE, TOKEN, fixture("create_battle.json"))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["ActionStatus"], "OK");

    let (status, battle) = server
        .get(&format!("/v1/battles/{SAMPLE_ID_ENCODED}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{battle}");
    assert_eq!(battle["battle_id"], SAMPLE_ID);
    assert_eq!(battle["from_room"], "pk-3");
    assert_eq!(battle["to_rooms"], json!(["pk-5"]));
    assert_eq!(battle["operator"], "brennanli");
    assert_eq!(battle["extension_info"], "extension pk");
    assert_eq!(battle["created_at_ms"], 1_739_954_005_000_i64);
    // Only '/' must be escaped: '+' and '=' may stay literal.
    let (status, same) = server
        .get("/v1/battles/4siHsNsWN%2FT3aub9zKraqPbSEGRX2z6gs3LDFi+d%2F3M=")
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["battle_id"], SAMPLE_ID);
    // An unescaped '/' is another path: no such route.
    let (status, body) = server.get(&format!("/v1/battles/{SAMPLE_ID}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "no_route");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn battle_snapshot_contract_and_404() {
    let server = Server::start(config()).await;
    server.create_running("b/1+x=", 60_000).await;
    let (status, b) = server
        .get(&format!("/v1/battles/{}", encode("b/1+x=")))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    for key in [
        "battle_id",
        "state",
        "version",
        "from_room",
        "to_rooms",
        "operator",
        "need_response",
        "timeout_ms",
        "duration_ms",
        "extension_info",
        "created_at_ms",
        "response_deadline_ms",
        "started_at_ms",
        "ends_at_ms",
        "ended_at_ms",
        "end_reason",
        "participants",
        "server_time_ms",
    ] {
        assert!(b.get(key).is_some(), "snapshot lacks {key}: {b}");
    }
    assert_eq!(b["state"], "running");
    assert_eq!(b["need_response"], false);
    assert_eq!(b["duration_ms"], 60_000);
    assert_eq!(
        b["ends_at_ms"].as_i64().unwrap() - b["started_at_ms"].as_i64().unwrap(),
        60_000
    );
    let rooms: Vec<&str> = b["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["pk-3", "pk-5"]);
    let p = &b["participants"][0];
    assert!(p.get("owner_account").is_some() && p["score"] == 0);

    let (status, body) = server.get("/v1/battles/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn list_pages_filters_and_refuses_bad_queries() {
    let server = Server::start(config()).await;
    for i in 1..=5 {
        server
            .callback_ok(
                CREATE,
                &create(
                    &format!("list-{i}"),
                    &format!("a{i}"),
                    &[&format!("b{i}")],
                    60_000,
                    i == 5,
                ),
            )
            .await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            None => "/v1/battles?limit=2".to_owned(),
            Some(a) => format!("/v1/battles?limit=2&after={a}"),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for b in page["battles"].as_array().unwrap() {
            seen.push(b["battle_id"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["list-1", "list-2", "list-3", "list-4", "list-5"]);
    assert_eq!(pages, 3);

    let (_, running) = server.get("/v1/battles?state=running").await;
    assert_eq!(running["battles"].as_array().unwrap().len(), 4);
    assert_eq!(running["next_after"], Value::Null);
    let (_, awaiting) = server.get("/v1/battles?state=awaiting_response").await;
    assert_eq!(awaiting["battles"][0]["battle_id"], "list-5");
    let (_, by_room) = server.get("/v1/battles?room=b3").await;
    assert_eq!(by_room["battles"].as_array().unwrap().len(), 1);
    assert_eq!(by_room["battles"][0]["battle_id"], "list-3");

    let (status, body) = server.get("/v1/battles?state=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_state");
    let (status, body) = server.get("/v1/battles?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");
    let (status, body) = server.get("/v1/battles?limit=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_query");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn room_battle_time_and_probes() {
    let server = Server::start(config()).await;
    let (status, body) = server.get("/v1/rooms/pk-3/battle").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    server.create_running("room-b", 60_000).await;
    for room in ["pk-3", "pk-5"] {
        let (status, b) = server.get(&format!("/v1/rooms/{room}/battle")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(b["battle_id"], "room-b");
    }

    let before = now_ms();
    let (status, t) = server.get("/v1/time").await;
    assert_eq!(status, StatusCode::OK);
    let server_time = t["server_time_ms"].as_i64().unwrap();
    assert!(
        (server_time - before).abs() < 5_000,
        "{server_time} vs {before}"
    );

    let (status, h) = server.get("/healthz").await;
    assert_eq!((status, h["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, r) = server.get("/readyz").await;
    assert_eq!(
        (status, r["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );

    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().to_lowercase().contains("<html"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn errors_share_one_shape() {
    let server = Server::start(config()).await;
    let (status, body) = server.get("/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "no_route");
    let r = server
        .client
        .delete(server.url("/v1/battles/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "method_not_allowed");
    assert!(body["error"]["message"].is_string());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn callbacks_are_verified() {
    let server = Server::start(config()).await;
    let body = create("signed", "pk-3", &["pk-5"], 60_000, false);
    let (status, reply) = server
        .callback_raw(CREATE, "wrong-token", body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
    assert_eq!(reply["ActionStatus"], "FAIL");
    assert_eq!(
        server.get("/v1/battles/signed").await.0,
        StatusCode::NOT_FOUND
    );
    server.callback_ok(CREATE, &body).await;
    // The same callback again is acknowledged and changes nothing.
    server.callback_ok(CREATE, &body).await;
    let (_, b) = server.get("/v1/battles/signed").await;
    assert_eq!(b["version"], 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_short_battle_ends_on_its_timer() {
    let server = Server::start(config()).await;
    server.create_running("short", 300).await;
    let ended = server.wait_battle("short", |b| b["state"] == "ended").await;
    assert_eq!(ended["end_reason"], "time_up");
    assert!(ended["ended_at_ms"].as_i64().unwrap() >= ended["started_at_ms"].as_i64().unwrap());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_exposition() {
    let server = Server::start(config()).await;
    server.create_running("m1", 200).await;
    let bad = create("m2", "pk-3", &["pk-5"], 60_000, false);
    server
        .callback_raw(CREATE, "wrong", bad.to_string().into_bytes())
        .await;
    server.wait_battle("m1", |b| b["state"] == "ended").await;
    let _sse = server.sse("/v1/events", None).await;
    server.get("/v1/battles/m1").await;
    server.get("/no/such/route").await;
    server.get("/callback").await; // the webhook route outside the route layer counts too

    let r = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for needle in [
        "livebattle_ingest_requests_total{command=\"Live.CallbackAfterCreateBattle\",outcome=\"new\"} 1",
        "livebattle_ingest_requests_total{command=\"Live.CallbackAfterCreateBattle\",outcome=\"refused\"} 1",
        "livebattle_ingest_refusals_total{reason=\"bad_signature\"",
        "livebattle_battles{state=\"ended\"} 1",
        "livebattle_battles{state=\"running\"} 0",
        "livebattle_transitions_total{cause=\"create_webhook\"} 1",
        "livebattle_transitions_total{cause=\"end_timer\"} 1",
        "# TYPE livebattle_timer_lateness_ms histogram",
        "livebattle_timer_lateness_ms_bucket{le=\"0\"}",
        "livebattle_timer_lateness_ms_bucket{le=\"+Inf\"} 1",
        "livebattle_timer_lateness_ms_count 1",
        "livebattle_timer_lateness_ms_sum ",
        "livebattle_sse_streams 1",
        "livebattle_subscribers 1",
        "livebattle_http_requests_total{route=\"/v1/battles/{battle_id}\",method=\"GET\",status=\"200\"}",
        "livebattle_http_requests_total{route=\"/callback\",method=\"POST\",status=\"401\"} 1",
        "livebattle_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "livebattle_http_requests_total{route=\"/callback\",method=\"GET\",status=\"405\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    server.stop().await.unwrap();
}

/// Every path and method of /openapi.json is routed, and every route is documented.
#[tokio::test]
async fn openapi_matches_the_routes() {
    let server = Server::start(config()).await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = livebattle_server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed, "openapi.json and ROUTES differ");

    for (method, path) in &documented {
        let concrete = path
            .replace("{battle_id}", "openapi-probe")
            .replace("{room_id}", "openapi-room");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = server
            .client
            .request(method.clone(), server.url(&concrete))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if r.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"))
        {
            assert_eq!(status, StatusCode::OK);
            continue;
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(
            error_code(&body),
            "no_route",
            "{method} {path} is not routed"
        );
    }
    // Every documented operation names its responses and every $ref resolves.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_stops() {
    let server = Server::start(config()).await;
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.event().await.event.as_deref(), Some("snapshot"));
    server.stop().await.unwrap();
    // The stream ends instead of holding the shutdown open.
    while let Some(f) = stream.frame(WAIT).await {
        assert!(f.comment, "unexpected frame after shutdown: {f:?}");
    }
}
