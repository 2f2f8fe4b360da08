//! Events that move battles: the three Tencent battle callbacks, a destroyed room, and the
//! app-side calls of the library API.
//!
//! Every Tencent timestamp keeps its own unit: `*_ms` fields are Unix milliseconds (Tencent's
//! `EventTime`), `*_s` fields are Unix seconds (Tencent's `CreateTime`, `StartTime`, `EndTime`).
//! Durations are milliseconds. Fields Tencent may omit are `Option`s; the engine never guesses
//! them from arrival time except where docs/lifecycle.md says so.

use serde::{Deserialize, Serialize};

/// One room as a Start or End callback describes it (`FromRoomInfo`, `ToRoomList[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// `RoomId`.
    pub room_id: String,
    /// `Owner_Account`, kept exactly as a string even when Tencent sent a big JSON integer.
    pub owner_account: Option<String>,
    /// `Score` (End only).
    pub score: Option<i64>,
}

/// `Live.CallbackAfterCreateBattle`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// `BattleId`.
    pub battle_id: String,
    /// `Operator_Account`.
    pub operator: Option<String>,
    /// `FromRoomId`: the caller's room.
    pub from_room: Option<String>,
    /// `ToRoomIdList`: the invited callee rooms.
    pub to_rooms: Vec<String>,
    /// `Timeout` (ms): how long callees have to answer when `need_response` is true.
    pub timeout_ms: Option<u64>,
    /// `Duration` (ms): how long the battle runs once started.
    pub duration_ms: Option<u64>,
    /// `NeedResponse`.
    pub need_response: Option<bool>,
    /// `ExtensionInfo`.
    pub extension_info: Option<String>,
    /// `EventTime` (Unix ms).
    pub event_time_ms: Option<i64>,
}

/// `Live.CallbackAfterStartBattle`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// `BattleId`.
    pub battle_id: String,
    /// `Duration` (ms).
    pub duration_ms: Option<u64>,
    /// `CreateTime` (Unix s).
    pub create_time_s: Option<i64>,
    /// `StartTime` (Unix s).
    pub start_time_s: Option<i64>,
    /// `FromRoomInfo`.
    pub from_room: Option<RoomInfo>,
    /// `ToRoomList`: the callees in the battle.
    pub to_rooms: Vec<RoomInfo>,
    /// `EventTime` (Unix ms).
    pub event_time_ms: Option<i64>,
}

/// `Live.CallbackAfterEndBattle`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// `BattleId`.
    pub battle_id: String,
    /// `Duration` (ms).
    pub duration_ms: Option<u64>,
    /// `CreateTime` (Unix s).
    pub create_time_s: Option<i64>,
    /// `StartTime` (Unix s).
    pub start_time_s: Option<i64>,
    /// `EndTime` (Unix s).
    pub end_time_s: Option<i64>,
    /// `OpType`: 0 time up, 1 all hosts left, 2 never started; any other value is kept.
    pub op_type: Option<i64>,
    /// `FromRoomInfo`, with its final `Score`.
    pub from_room: Option<RoomInfo>,
    /// `ToRoomList`, with final scores.
    pub to_rooms: Vec<RoomInfo>,
    /// `EventTime` (Unix ms).
    pub event_time_ms: Option<i64>,
}

/// `Live.CallbackAfterDestroyRoom`: a room went away; every live battle it is in hears of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDestroyed {
    /// `RoomId`.
    pub room_id: String,
    /// `EventTime` (Unix ms).
    pub event_time_ms: Option<i64>,
}

/// Anything that can move a battle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The Create webhook.
    Created(Created),
    /// The Start webhook.
    Started(Started),
    /// The End webhook.
    Ended(Ended),
    /// The DestroyRoom webhook.
    RoomDestroyed(RoomDestroyed),
    /// App API: a callee room answered the battle request.
    Response {
        /// The battle.
        battle_id: String,
        /// The answering callee room.
        room_id: String,
        /// `true` accepts, `false` declines.
        accept: bool,
    },
    /// App API: a room left the battle.
    RoomExited {
        /// The battle.
        battle_id: String,
        /// The room that left.
        room_id: String,
    },
    /// App API: end the battle now (`ended_by_app`).
    EndNow {
        /// The battle.
        battle_id: String,
    },
    /// App API: set rooms' current scores.
    Scores {
        /// The battle.
        battle_id: String,
        /// `(room_id, score)` pairs.
        scores: Vec<(String, i64)>,
    },
}

impl Event {
    /// The battle this event is about, when it names one (`RoomDestroyed` names a room).
    pub fn battle_id(&self) -> Option<&str> {
        match self {
            Event::Created(e) => Some(&e.battle_id),
            Event::Started(e) => Some(&e.battle_id),
            Event::Ended(e) => Some(&e.battle_id),
            Event::RoomDestroyed(_) => None,
            Event::Response { battle_id, .. }
            | Event::RoomExited { battle_id, .. }
            | Event::EndNow { battle_id }
            | Event::Scores { battle_id, .. } => Some(battle_id),
        }
    }

    /// What caused a change, when this event causes one.
    pub fn cause(&self) -> Cause {
        match self {
            Event::Created(_) => Cause::CreateWebhook,
            Event::Started(_) => Cause::StartWebhook,
            Event::Ended(_) => Cause::EndWebhook,
            Event::RoomDestroyed(_) => Cause::RoomDestroyedWebhook,
            Event::Response { .. } => Cause::ApiResponse,
            Event::RoomExited { .. } => Cause::ApiRoomExit,
            Event::EndNow { .. } => Cause::ApiEnd,
            Event::Scores { .. } => Cause::ApiScores,
        }
    }
}

/// Why a battle changed: which webhook, which timer or which API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// `Live.CallbackAfterCreateBattle`.
    CreateWebhook,
    /// `Live.CallbackAfterStartBattle`.
    StartWebhook,
    /// `Live.CallbackAfterEndBattle`.
    EndWebhook,
    /// `Live.CallbackAfterDestroyRoom`.
    RoomDestroyedWebhook,
    /// The response window (plus grace) closed.
    ResponseTimer,
    /// The battle's `ends_at` came.
    EndTimer,
    /// A pending battle's Create never came.
    PendingTimer,
    /// App API: a callee's answer.
    ApiResponse,
    /// App API: a room left.
    ApiRoomExit,
    /// App API: end now.
    ApiEnd,
    /// App API: score update.
    ApiScores,
}

impl Cause {
    /// Every cause, for metrics.
    pub const ALL: [Cause; 11] = [
        Cause::CreateWebhook,
        Cause::StartWebhook,
        Cause::EndWebhook,
        Cause::RoomDestroyedWebhook,
        Cause::ResponseTimer,
        Cause::EndTimer,
        Cause::PendingTimer,
        Cause::ApiResponse,
        Cause::ApiRoomExit,
        Cause::ApiEnd,
        Cause::ApiScores,
    ];

    /// The snake_case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::CreateWebhook => "create_webhook",
            Cause::StartWebhook => "start_webhook",
            Cause::EndWebhook => "end_webhook",
            Cause::RoomDestroyedWebhook => "room_destroyed_webhook",
            Cause::ResponseTimer => "response_timer",
            Cause::EndTimer => "end_timer",
            Cause::PendingTimer => "pending_timer",
            Cause::ApiResponse => "api_response",
            Cause::ApiRoomExit => "api_room_exit",
            Cause::ApiEnd => "api_end",
            Cause::ApiScores => "api_scores",
        }
    }
}
