//! The admin API over HTTP: bearer auth, the three app-side calls, and engine refusals mapped to
//! the JSON error shape.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn disabled_without_an_admin_token() {
    let mut c = config();
    c.admin_token = None;
    let server = Server::start(c).await;
    server.create_running("d1", 60_000).await;
    for path in [
        "/v1/battles/d1/end",
        "/v1/battles/d1/scores",
        "/v1/battles/d1/responses",
    ] {
        let (status, body) = server.post(path, Some("anything"), &json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error_code(&body), "admin_disabled");
    }
    let (_, b) = server.get("/v1/battles/d1").await;
    assert_eq!(b["state"], "running");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn refuses_missing_or_wrong_tokens() {
    let server = Server::start(config()).await;
    server.create_running("a1", 60_000).await;
    let r = server
        .client
        .post(server.url("/v1/battles/a1/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "unauthorized");
    let (status, body) = server
        .post("/v1/battles/a1/end", Some("admin-secreT"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");
    let r = server
        .client
        .post(server.url("/v1/battles/a1/end"))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Nothing changed.
    let (_, b) = server.get("/v1/battles/a1").await;
    assert_eq!(b["state"], "running");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn responses_scores_and_end() {
    let server = Server::start(config()).await;
    let id = "adm/1+=";
    let enc = encode(id);
    server
        .callback_ok(CREATE, &create(id, "pk-3", &["pk-5"], 60_000, true))
        .await;
    let (_, b) = server.get(&format!("/v1/battles/{enc}")).await;
    assert_eq!(b["state"], "awaiting_response");
    assert!(b["response_deadline_ms"].is_i64());

    // The caller's room is not a callee.
    let (status, body) = server
        .admin(
            &format!("/v1/battles/{enc}/responses"),
            &json!({"room_id": "pk-3", "accept": true}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "not_a_callee");

    let (status, b) = server
        .admin(
            &format!("/v1/battles/{enc}/responses"),
            &json!({"room_id": "pk-5", "accept": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["battle_id"], id);
    assert_eq!(b["state"], "running");
    assert_eq!(b["participants"][1]["response"], "accepted");

    let (status, b) = server
        .admin(
            &format!("/v1/battles/{enc}/scores"),
            &json!({"scores": [{"room_id": "pk-3", "score": 10}, {"room_id": "pk-5", "score": 4}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["participants"][0]["score"], 10);
    assert_eq!(b["participants"][1]["score"], 4);

    let (status, body) = server
        .admin(
            &format!("/v1/battles/{enc}/scores"),
            &json!({"scores": [{"room_id": "elsewhere", "score": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), "unknown_room");

    let (status, body) = server
        .admin(
            &format!("/v1/battles/{enc}/scores"),
            &json!({"scores": "high"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_body");
    let (status, body) = server
        .admin(&format!("/v1/battles/{enc}/scores"), &json!({"scores": []}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");

    let (status, b) = server
        .admin(&format!("/v1/battles/{enc}/end"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "ended");
    assert_eq!(b["end_reason"], "ended_by_app");
    // Ending again is harmless.
    let (status, again) = server
        .admin(&format!("/v1/battles/{enc}/end"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["version"], b["version"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn engine_refusals_map_to_statuses() {
    let server = Server::start(config()).await;
    let (status, body) = server.admin("/v1/battles/ghost/end", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = server
        .admin(
            "/v1/battles/ghost/scores",
            &json!({"scores": [{"room_id": "a", "score": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    // Final scores from the End webhook cannot be overwritten.
    server.create_running("fin", 60_000).await;
    server
        .callback_ok(END, &end("fin", ("pk-3", 3), ("pk-5", 9)))
        .await;
    let (status, body) = server
        .admin(
            "/v1/battles/fin/scores",
            &json!({"scores": [{"room_id": "pk-3", "score": 100}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "scores_final");
    let (_, b) = server.get("/v1/battles/fin").await;
    assert_eq!(b["participants"][0]["score"], 3);
    server.stop().await.unwrap();
}
