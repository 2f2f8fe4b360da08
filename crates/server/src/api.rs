//! The read API: one battle, a page of battles, a room's current battle, the server clock.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use livebattle_engine::{BattleSnapshot, State as BattleState};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Page size of `GET /v1/battles` when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` of `GET /v1/battles`.
pub const MAX_LIMIT: usize = 1000;

/// `GET /v1/battles/{battle_id}`: one battle, or 404.
pub async fn get_battle(
    State(state): State<AppState>,
    battle_id: Result<Path<String>, PathRejection>,
) -> Result<Json<BattleSnapshot>, ApiError> {
    let Path(battle_id) = battle_id?;
    state
        .engine()
        .battle(&battle_id)
        .map(Json)
        .ok_or_else(|| unknown_battle(&battle_id))
}

/// The 404 for a battle id the engine does not hold.
pub fn unknown_battle(battle_id: &str) -> ApiError {
    ApiError::not_found(format!("no battle {battle_id:?}"))
}

/// Query of `GET /v1/battles`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// `pending`, `awaiting_response`, `running` or `ended`.
    pub state: Option<String>,
    /// Only battles involving this room.
    pub room: Option<String>,
    /// Only battles whose id sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
}

/// Reply of `GET /v1/battles`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BattlePage {
    /// The battles, ordered by id.
    pub battles: Vec<BattleSnapshot>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// `GET /v1/battles?state=&room=&after=&limit=`: battles ordered by id, one page at a time.
pub async fn list_battles(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BattlePage>, ApiError> {
    let Query(q) = query?;
    let wanted = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(BattleState::parse(s).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_state",
                format!(
                    "unknown state {s:?}: expected one of pending, awaiting_response, running, ended"
                ),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let room = q.room.as_deref().filter(|r| !r.is_empty());
    let after = q.after.as_deref().filter(|a| !a.is_empty());
    // One more than asked tells whether another page follows.
    let mut battles = state.engine().battles(wanted, room, after, limit + 1);
    let next_after = if battles.len() > limit {
        battles.truncate(limit);
        battles.last().map(|b| b.battle_id.to_string())
    } else {
        None
    };
    Ok(Json(BattlePage {
        battles,
        next_after,
    }))
}

/// `GET /v1/rooms/{room_id}/battle`: the live battle the room is in now, or 404.
pub async fn room_battle(
    State(state): State<AppState>,
    room_id: Result<Path<String>, PathRejection>,
) -> Result<Json<BattleSnapshot>, ApiError> {
    let Path(room_id) = room_id?;
    state
        .engine()
        .room_battle(&room_id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("room {room_id:?} is in no live battle")))
}

/// Reply of `GET /v1/time`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerTime {
    /// The engine's clock, Unix ms.
    pub server_time_ms: i64,
}

/// `GET /v1/time`: the server clock, for client clock-offset estimation.
pub async fn time(State(state): State<AppState>) -> Json<ServerTime> {
    Json(ServerTime {
        server_time_ms: state.engine().now_ms(),
    })
}
