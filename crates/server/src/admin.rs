//! The admin API: app-side battle calls, behind a bearer token.
//!
//! Without a configured admin token every admin route answers 403 `admin_disabled`; with one, a
//! missing or wrong `Authorization: Bearer …` answers 401 `unauthorized`. The token is compared
//! in constant time.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use livebattle_engine::{BattleSnapshot, Event, Outcome};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::api::unknown_battle;
use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the request carried the admin bearer token.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let Some(expected) = state.admin_token() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin API disabled: no admin token is configured (--admin-token)",
            ));
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(Admin),
            Some(_) => Err(unauthorized("wrong admin token")),
            None => Err(unauthorized(
                "admin token required: Authorization: Bearer <token>",
            )),
        }
    }
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Body of `POST /v1/battles/{battle_id}/responses`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRequest {
    /// The answering callee room.
    pub room_id: String,
    /// `true` accepts, `false` declines.
    pub accept: bool,
}

/// One entry of `POST /v1/battles/{battle_id}/scores`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomScore {
    /// The room.
    pub room_id: String,
    /// Its current score.
    pub score: i64,
}

/// Body of `POST /v1/battles/{battle_id}/scores`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoresRequest {
    /// The scores to set.
    pub scores: Vec<RoomScore>,
}

/// `POST /v1/battles/{battle_id}/responses`: a callee room accepts or declines.
pub async fn respond(
    _: Admin,
    State(state): State<AppState>,
    battle_id: Result<Path<String>, PathRejection>,
    body: Result<Json<ResponseRequest>, JsonRejection>,
) -> Result<Json<BattleSnapshot>, ApiError> {
    let Path(battle_id) = battle_id?;
    let Json(body) = body?;
    let event = Event::Response {
        battle_id: battle_id.clone(),
        room_id: body.room_id,
        accept: body.accept,
    };
    apply(&state, &battle_id, event).await
}

/// `POST /v1/battles/{battle_id}/end`: end the battle now (`ended_by_app`).
pub async fn end(
    _: Admin,
    State(state): State<AppState>,
    battle_id: Result<Path<String>, PathRejection>,
) -> Result<Json<BattleSnapshot>, ApiError> {
    let Path(battle_id) = battle_id?;
    let event = Event::EndNow {
        battle_id: battle_id.clone(),
    };
    apply(&state, &battle_id, event).await
}

/// `POST /v1/battles/{battle_id}/scores`: set rooms' current scores.
pub async fn scores(
    _: Admin,
    State(state): State<AppState>,
    battle_id: Result<Path<String>, PathRejection>,
    body: Result<Json<ScoresRequest>, JsonRejection>,
) -> Result<Json<BattleSnapshot>, ApiError> {
    let Path(battle_id) = battle_id?;
    let Json(body) = body?;
    if body.scores.is_empty() {
        return Err(ApiError::bad_request("scores must not be empty"));
    }
    let event = Event::Scores {
        battle_id: battle_id.clone(),
        scores: body
            .scores
            .into_iter()
            .map(|s| (s.room_id, s.score))
            .collect(),
    };
    apply(&state, &battle_id, event).await
}

/// Applies an admin event and replies with the battle afterwards.
async fn apply(
    state: &AppState,
    battle_id: &str,
    event: Event,
) -> Result<Json<BattleSnapshot>, ApiError> {
    if battle_id.is_empty() {
        return Err(ApiError::bad_request("the battle id must not be empty"));
    }
    let cause = event.cause();
    let applied = state.engine().apply(event).await.map_err(|e| {
        tracing::info!(battle_id, cause = cause.as_str(), error = %e, "admin call refused");
        ApiError::from(e)
    })?;
    tracing::info!(
        battle_id,
        cause = cause.as_str(),
        outcome = applied.outcome.as_str(),
        "admin call applied"
    );
    if applied.outcome == Outcome::Evicted {
        return Err(ApiError::not_found(format!(
            "battle {battle_id:?} ended and was evicted after its retention"
        )));
    }
    state
        .engine()
        .battle(battle_id)
        .map(Json)
        .ok_or_else(|| unknown_battle(battle_id))
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
