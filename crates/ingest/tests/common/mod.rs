//! Shared test harness: a real engine on a paused tokio clock, the real router, the fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use livebattle_engine::{BattleSnapshot, Engine, EngineBuilder, TokioClock};
use livebattle_ingest::{compute_sign, AppConfig, Ingest, IngestConfig};
use serde_json::Value;
use tower::ServiceExt;

/// An app with token auth off.
pub const APP: &str = "1400000001";
/// An app whose callbacks are signed with [`TOKEN`] (the documented example token).
pub const SIGNED_APP: &str = "1400000002";
pub const TOKEN: &str = "xxxxyyyy";
/// The engine clock's start: the Create/Start samples' EventTime.
pub const START_MS: i64 = 1_739_954_005_000;

pub const CREATE: &str = "Live.CallbackAfterCreateBattle";
pub const START: &str = "Live.CallbackAfterStartBattle";
pub const END: &str = "Live.CallbackAfterEndBattle";
pub const DESTROY: &str = "Live.CallbackAfterDestroyRoom";

/// BattleIds of the documented samples.
pub const CREATE_ID: &str = "4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=";
pub const START_ID: &str = "4siHsNsWN/T3aub9zKraqI4zZAyPRpXQhdtKv1q4HOs=";
pub const END_ID: &str = "4siHsNsWN/T3aub9zKraqPfGQAimPhdFoe6VWhtz9lY=";

/// `shared/fixtures/tencent`, beside the repository root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tencent"
    ))
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

pub fn config() -> IngestConfig {
    IngestConfig {
        apps: vec![
            AppConfig::new(APP),
            AppConfig::with_token(SIGNED_APP, TOKEN),
        ],
        ..IngestConfig::default()
    }
}

pub struct Harness {
    pub engine: Engine,
    pub ingest: Ingest,
    pub router: Router,
}

pub async fn harness() -> Harness {
    harness_at(START_MS).await
}

pub async fn harness_at(start_ms: i64) -> Harness {
    harness_with(
        Engine::builder().clock(TokioClock::starting_at(start_ms)),
        config(),
    )
    .await
}

/// An engine on the fixed clock, with this ingest config.
pub async fn harness_config(config: IngestConfig) -> Harness {
    harness_with(
        Engine::builder().clock(TokioClock::starting_at(START_MS)),
        config,
    )
    .await
}

/// `builder` should set the clock (the harnesses above start it at a fixed time).
pub async fn harness_with(builder: EngineBuilder, config: IngestConfig) -> Harness {
    let engine = builder.start().await.unwrap();
    harness_on(engine, config)
}

pub fn harness_on(engine: Engine, config: IngestConfig) -> Harness {
    let ingest = Ingest::new(engine.clone(), config).unwrap();
    let router = ingest.router();
    Harness {
        engine,
        ingest,
        router,
    }
}

/// An unsigned URL query.
pub fn query(app: &str, command: &str) -> String {
    format!(
        "SdkAppid={app}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI"
    )
}

/// A signed URL query at `request_time` (Unix s).
pub fn signed_query(app: &str, command: &str, token: &str, request_time: i64) -> String {
    let t = request_time.to_string();
    format!(
        "{}&Sign={}&RequestTime={t}",
        query(app, command),
        compute_sign(token, &t)
    )
}

/// The reply: status and parsed JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
}

impl Reply {
    pub fn assert_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.json);
        assert_eq!(
            self.json,
            serde_json::json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})
        );
    }

    /// A FAIL reply with this status and code, whose ErrorInfo mentions every `words`.
    pub fn assert_refused(&self, status: u16, code: u64, words: &[&str]) {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.json);
        assert_eq!(self.json["ActionStatus"], "FAIL", "{:?}", self.json);
        assert_eq!(
            self.json["ErrorCode"].as_u64(),
            Some(code),
            "{:?}",
            self.json
        );
        let info = self.json["ErrorInfo"].as_str().unwrap();
        for w in words {
            assert!(info.contains(w), "ErrorInfo {info:?} should mention {w:?}");
        }
        let keys: Vec<&String> = self.json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{:?}", self.json);
    }
}

impl Harness {
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "every reply is JSON"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {bytes:?}"));
        Reply { status, json }
    }

    /// Posts a fixture, unsigned, for [`APP`] under `command`, and expects OK.
    pub async fn deliver(&self, command: &str, file: &str) {
        self.post(&query(APP, command), fixture(file))
            .await
            .assert_ok();
    }

    pub async fn post(&self, query: &str, body: impl Into<Body>) -> Reply {
        let request = Request::post(format!("/callback?{query}"))
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        self.send(request).await
    }

    /// Every battle, with the snapshot time blanked: equal before and after means the engine
    /// did not change.
    pub fn state(&self) -> (usize, Vec<BattleSnapshot>) {
        let mut all = self.engine.battles(None, None, None, usize::MAX);
        for b in &mut all {
            b.server_time_ms = 0;
        }
        (self.engine.battle_count(), all)
    }
}
