//! Probes: `GET /healthz` (the process is alive) and `GET /readyz` (the engine takes events).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Reply of the probes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// `GET /healthz`: 200 while the process serves HTTP.
pub async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// `GET /readyz`: 200 while the engine accepts events; 503 `shutting_down` once shutdown began,
/// 503 `not_ready` while the engine cannot take events (a failing store, a stopped shard).
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    if !state.engine().is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the engine cannot take events now (its store is failing); see the log",
        ));
    }
    Ok(Json(Status {
        status: "ready".into(),
    }))
}
