//! The battle record: what the engine knows of one battle, and its public snapshot.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Lifecycle state. See docs/lifecycle.md for the diagram and every rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Known only from app-side news (a callee's answer) that raced ahead of the Create webhook:
    /// the battle exists, but whether it waits for answers or runs is not known yet.
    Pending,
    /// Created with `NeedResponse=true`; callees have until `response_deadline_ms` (+ grace).
    AwaitingResponse,
    /// Counting down to `ends_at_ms`.
    Running,
    /// Terminal.
    Ended,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 4] = [
        State::Pending,
        State::AwaitingResponse,
        State::Running,
        State::Ended,
    ];

    /// The snake_case name used in JSON, metrics and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::AwaitingResponse => "awaiting_response",
            State::Running => "running",
            State::Ended => "ended",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a battle ended: the stable vocabulary used by the API, events and docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The duration elapsed, or Tencent `OpType` 0.
    TimeUp,
    /// Tencent `OpType` 1, or every other room left through the app API.
    AllExited,
    /// Tencent `OpType` 2 (no callee joined), or a pending battle whose Create never came.
    NotStarted,
    /// The response window closed with no acceptor.
    ResponseTimeout,
    /// Every callee declined.
    Declined,
    /// A room of the battle was destroyed and fewer than two rooms remained.
    RoomDestroyed,
    /// The app ended it through the API.
    EndedByApp,
    /// Any other Tencent `OpType` (kept in `end_op_type`).
    Unknown,
}

impl EndReason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::TimeUp => "time_up",
            EndReason::AllExited => "all_exited",
            EndReason::NotStarted => "not_started",
            EndReason::ResponseTimeout => "response_timeout",
            EndReason::Declined => "declined",
            EndReason::RoomDestroyed => "room_destroyed",
            EndReason::EndedByApp => "ended_by_app",
            EndReason::Unknown => "unknown",
        }
    }

    /// Maps Tencent's End `OpType`.
    pub fn from_op_type(op: Option<i64>) -> EndReason {
        match op {
            Some(0) => EndReason::TimeUp,
            Some(1) => EndReason::AllExited,
            Some(2) => EndReason::NotStarted,
            _ => EndReason::Unknown,
        }
    }
}

/// A callee's answer to the battle request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Accepted.
    Accepted,
    /// Declined.
    Declined,
}

/// One room in the battle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The room.
    pub room_id: Arc<str>,
    /// Its owner (`Owner_Account`), exactly as Tencent sent it.
    pub owner_account: Option<Box<str>>,
    /// Current score (final once the End webhook came).
    pub score: i64,
    /// A callee's answer, when known.
    pub response: Option<Response>,
    /// The room left or was destroyed.
    pub left: bool,
}

impl Participant {
    pub(crate) fn new(room_id: Arc<str>) -> Participant {
        Participant {
            room_id,
            owner_account: None,
            score: 0,
            response: None,
            left: false,
        }
    }
}

/// Which timer a battle has armed. A battle has at most one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Pending: the Create webhook did not come within `pending_ttl`.
    PendingExpiry,
    /// Awaiting response: `response_deadline_ms` + grace.
    ResponseDeadline,
    /// Running: `ends_at_ms`.
    BattleEnd,
    /// Ended: retention is over; evict.
    Evict,
}

/// An armed timer, as data: an absolute deadline and the generation that must still hold when it
/// fires. A timer whose generation is stale does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// What fires.
    pub kind: TimerKind,
    /// Absolute deadline, Unix ms.
    pub at_ms: i64,
    /// Generation; bumped whenever the battle's timer changes.
    pub generation: u32,
}

/// Bits of `Battle::seen`: which Tencent battle callbacks were applied (the dedupe memory).
pub(crate) mod seen {
    pub const CREATE: u8 = 1;
    pub const START: u8 = 2;
    pub const END: u8 = 4;
}

/// Everything the engine knows about one battle. This is also the stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Battle {
    /// `BattleId`.
    pub id: Arc<str>,
    /// Current state.
    pub state: State,
    /// Bumped on every change that observers hear of.
    pub version: u64,
    /// Which battle webhooks were applied (bits of `seen`).
    pub seen: u8,
    /// The caller's room.
    pub from_room: Option<Arc<str>>,
    /// The invited callees (from Create).
    pub to_rooms: Vec<Arc<str>>,
    /// `Operator_Account`.
    pub operator: Option<Box<str>>,
    /// `NeedResponse`.
    pub need_response: Option<bool>,
    /// `Timeout` (ms).
    pub timeout_ms: Option<u64>,
    /// `Duration` (ms).
    pub duration_ms: Option<u64>,
    /// `ExtensionInfo`.
    pub extension_info: Option<Box<str>>,
    /// When Tencent created it (Unix ms).
    pub created_at_ms: Option<i64>,
    /// When the response window closes (Unix ms), for `NeedResponse=true`.
    pub response_deadline_ms: Option<i64>,
    /// When it started (Unix ms).
    pub started_at_ms: Option<i64>,
    /// When it is due to end (Unix ms): `started_at_ms + duration_ms`.
    pub ends_at_ms: Option<i64>,
    /// When it ended (Unix ms).
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Tencent's raw `OpType`, once the End webhook came.
    pub end_op_type: Option<i64>,
    /// The rooms in the battle.
    pub participants: Vec<Participant>,
    /// How `started_at_ms` was learned; a better source refines a worse one.
    pub start_source: Option<StartSource>,
    /// Engine time (Unix ms) when the engine first heard of the battle.
    pub known_since_ms: i64,
    /// Engine time (Unix ms) when the battle entered `ended` (retention counts from here).
    pub closed_at_ms: Option<i64>,
    /// The armed timer.
    pub timer: Option<Timer>,
    /// Timer generation: bumped whenever the armed timer changes.
    pub generation: u32,
}

/// Where `started_at_ms` came from, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartSource {
    /// Predicted by the engine (Create with `NeedResponse=false`, an acceptance, the deadline).
    Predicted,
    /// The End webhook's `StartTime` (seconds).
    EndWebhook,
    /// The Start webhook (authoritative).
    StartWebhook,
}

impl Battle {
    /// A battle nobody has heard anything about yet (stores and tests build records with it).
    pub fn new(id: impl Into<Arc<str>>, state: State, now_ms: i64) -> Battle {
        Battle {
            id: id.into(),
            state,
            version: 0,
            seen: 0,
            from_room: None,
            to_rooms: Vec::new(),
            operator: None,
            need_response: None,
            timeout_ms: None,
            duration_ms: None,
            extension_info: None,
            created_at_ms: None,
            response_deadline_ms: None,
            started_at_ms: None,
            ends_at_ms: None,
            ended_at_ms: None,
            end_reason: None,
            end_op_type: None,
            participants: Vec::new(),
            start_source: None,
            known_since_ms: now_ms,
            closed_at_ms: None,
            timer: None,
            generation: 0,
        }
    }

    /// The deadline a countdown shows next: the response deadline while awaiting answers, the end
    /// while running.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        match self.state {
            State::Pending | State::Ended => None,
            State::AwaitingResponse => self.response_deadline_ms,
            State::Running => self.ends_at_ms,
        }
    }

    /// Every room this battle involves (caller, invited callees, participants), deduplicated.
    pub fn rooms(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.participants.len() + 1);
        let all = self
            .from_room
            .iter()
            .map(|r| &**r)
            .chain(self.to_rooms.iter().map(|r| &**r))
            .chain(self.participants.iter().map(|p| &*p.room_id));
        for r in all {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// The battle's own `Arc` for a room it already knows, or a new one: a room's name is
    /// allocated once per battle, whatever list it appears in.
    pub(crate) fn room_arc(&self, room: &str) -> Arc<str> {
        self.from_room
            .iter()
            .chain(&self.to_rooms)
            .chain(self.participants.iter().map(|p| &p.room_id))
            .find(|r| &***r == room)
            .cloned()
            .unwrap_or_else(|| Arc::from(room))
    }

    pub(crate) fn participant_mut(&mut self, room: &str) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| &*p.room_id == room)
    }

    /// The public view of this battle at `server_time_ms`.
    pub fn snapshot(&self, server_time_ms: i64) -> BattleSnapshot {
        BattleSnapshot {
            battle_id: self.id.clone(),
            state: self.state,
            version: self.version,
            from_room: self.from_room.clone(),
            to_rooms: self.to_rooms.clone(),
            operator: self.operator.clone(),
            need_response: self.need_response,
            timeout_ms: self.timeout_ms,
            duration_ms: self.duration_ms,
            extension_info: self.extension_info.clone(),
            created_at_ms: self.created_at_ms,
            response_deadline_ms: self.response_deadline_ms,
            started_at_ms: self.started_at_ms,
            ends_at_ms: self.ends_at_ms,
            ended_at_ms: self.ended_at_ms,
            end_reason: self.end_reason,
            end_op_type: self.end_op_type,
            next_deadline_ms: self.next_deadline_ms(),
            participants: self
                .participants
                .iter()
                .map(|p| ParticipantView {
                    room_id: p.room_id.clone(),
                    owner_account: p.owner_account.clone(),
                    score: p.score,
                    response: p.response,
                    left: p.left,
                })
                .collect(),
            server_time_ms,
        }
    }
}

/// One participant in a [`BattleSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantView {
    /// The room.
    pub room_id: Arc<str>,
    /// Its owner, exactly as Tencent sent it.
    pub owner_account: Option<Box<str>>,
    /// Current (or final) score.
    pub score: i64,
    /// A callee's answer, when known.
    pub response: Option<Response>,
    /// The room left the battle.
    pub left: bool,
}

/// The public, stable view of a battle (the HTTP API's battle object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BattleSnapshot {
    /// `BattleId`.
    pub battle_id: Arc<str>,
    /// Current state.
    pub state: State,
    /// Bumped on every change.
    pub version: u64,
    /// The caller's room.
    pub from_room: Option<Arc<str>>,
    /// The invited callees.
    pub to_rooms: Vec<Arc<str>>,
    /// `Operator_Account`.
    pub operator: Option<Box<str>>,
    /// `NeedResponse`.
    pub need_response: Option<bool>,
    /// `Timeout` (ms).
    pub timeout_ms: Option<u64>,
    /// `Duration` (ms).
    pub duration_ms: Option<u64>,
    /// `ExtensionInfo`.
    pub extension_info: Option<Box<str>>,
    /// Unix ms.
    pub created_at_ms: Option<i64>,
    /// Unix ms.
    pub response_deadline_ms: Option<i64>,
    /// Unix ms.
    pub started_at_ms: Option<i64>,
    /// Unix ms.
    pub ends_at_ms: Option<i64>,
    /// Unix ms.
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Tencent's raw `OpType`.
    pub end_op_type: Option<i64>,
    /// The deadline a countdown shows (Unix ms).
    pub next_deadline_ms: Option<i64>,
    /// The rooms in the battle.
    pub participants: Vec<ParticipantView>,
    /// The engine's clock when this snapshot was taken (Unix ms).
    pub server_time_ms: i64,
}
