//! The battle record: what the engine knows of one battle, and its public snapshot.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// A battle's invited callees: usually one, kept inline.
pub type Rooms = SmallVec<[Arc<str>; 1]>;

/// A battle's participants: usually two, kept inline.
pub type Participants = SmallVec<[Participant; 2]>;

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
    /// Current score (final once the End webhook came).
    pub score: i64,
    /// Where its owner (`Owner_Account`) is in the battle's text arena ([`Battle::owner_of`]).
    owner_at: u32,
    /// The owner's length; `u16::MAX` when unknown.
    owner_len: u16,
    /// A callee's answer, when known.
    pub response: Option<Response>,
    /// The room left or was destroyed.
    pub left: bool,
}

impl Participant {
    pub(crate) fn new(room_id: Arc<str>) -> Participant {
        Participant {
            room_id,
            score: 0,
            owner_at: 0,
            owner_len: u16::MAX,
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

/// An optional Unix-ms instant (or Tencent's `OpType` code) in 8 bytes instead of
/// `Option<i64>`'s 16: `i64::MIN` means none (a `Some(i64::MIN)` is stored as `i64::MIN + 1`, a
/// date no clock produces and a code Tencent does not send). Serialized, and
/// compared with `Option<i64>` by [`OptMs::get`], exactly like an `Option<i64>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<i64>", into = "Option<i64>")]
pub struct OptMs(i64);

impl OptMs {
    /// None.
    pub const NONE: OptMs = OptMs(i64::MIN);

    /// The instant, if any.
    #[inline]
    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }

    /// Whether there is no instant.
    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == i64::MIN
    }
}

impl From<Option<i64>> for OptMs {
    #[inline]
    fn from(v: Option<i64>) -> OptMs {
        match v {
            Some(t) => OptMs(t.max(i64::MIN + 1)),
            None => OptMs::NONE,
        }
    }
}

impl From<OptMs> for Option<i64> {
    #[inline]
    fn from(v: OptMs) -> Option<i64> {
        v.get()
    }
}

impl std::fmt::Debug for OptMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// An optional millisecond duration in 4 bytes instead of `Option<u64>`'s 16: `u32::MAX` means
/// none, and longer durations (over 49 days) are stored as `u32::MAX - 1` ms.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<u32>", into = "Option<u32>")]
pub struct OptDur(u32);

impl OptDur {
    /// None.
    pub const NONE: OptDur = OptDur(u32::MAX);

    /// The duration in ms, if any.
    #[inline]
    pub fn get(self) -> Option<u64> {
        (self.0 != u32::MAX).then_some(u64::from(self.0))
    }
}

impl From<Option<u64>> for OptDur {
    #[inline]
    fn from(v: Option<u64>) -> OptDur {
        match v {
            Some(d) => OptDur(u32::try_from(d).unwrap_or(u32::MAX - 1).min(u32::MAX - 1)),
            None => OptDur::NONE,
        }
    }
}

impl From<Option<u32>> for OptDur {
    #[inline]
    fn from(v: Option<u32>) -> OptDur {
        OptDur::from(v.map(u64::from))
    }
}

impl From<OptDur> for Option<u32> {
    #[inline]
    fn from(v: OptDur) -> Option<u32> {
        (v.0 != u32::MAX).then_some(v.0)
    }
}

impl std::fmt::Debug for OptDur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Bits of `Battle::seen`: which Tencent battle callbacks were applied (the dedupe memory).
pub(crate) mod seen {
    pub const CREATE: u8 = 1;
    pub const START: u8 = 2;
    pub const END: u8 = 4;
    /// Not a webhook: `NeedResponse` is known ...
    pub const NEED_RESPONSE_KNOWN: u8 = 8;
    /// ... and true.
    pub const NEED_RESPONSE: u8 = 16;
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
    /// Which battle webhooks were applied (bits 0–2 of `seen`), and `NeedResponse` (bit 3: known,
    /// bit 4: its value; see [`Battle::need_response`]).
    pub seen: u8,
    /// The caller's room.
    pub from_room: Option<Arc<str>>,
    /// The invited callees (from Create); one is kept inline.
    pub to_rooms: Rooms,
    /// `Operator_Account`, `ExtensionInfo` and the participants' owners, in one allocation (see
    /// [`Battle::operator`], [`Battle::extension_info`], [`Battle::owner_of`]).
    texts: Box<str>,
    /// Length of the operator at the start of `texts`; `u32::MAX` when there is none.
    operator_len: u32,
    /// Length of `ExtensionInfo`, right after the operator; `u32::MAX` when there is none.
    extension_len: u32,
    /// `Timeout` (ms).
    pub timeout_ms: OptDur,
    /// `Duration` (ms).
    pub duration_ms: OptDur,
    /// When Tencent created it (Unix ms).
    pub created_at_ms: OptMs,
    /// When the response window closes (Unix ms), for `NeedResponse=true`.
    pub response_deadline_ms: OptMs,
    /// When it started (Unix ms).
    pub started_at_ms: OptMs,
    /// When it is due to end (Unix ms): `started_at_ms + duration_ms`.
    pub ends_at_ms: OptMs,
    /// When it ended (Unix ms).
    pub ended_at_ms: OptMs,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Tencent's raw `OpType`, once the End webhook came.
    pub end_op_type: OptMs,
    /// The rooms in the battle; two are kept inline.
    pub participants: Participants,
    /// How `started_at_ms` was learned; a better source refines a worse one.
    pub start_source: Option<StartSource>,
    /// Engine time (Unix ms) when the engine first heard of the battle.
    pub known_since_ms: i64,
    /// Engine time (Unix ms) when the battle entered `ended` (retention counts from here).
    pub closed_at_ms: OptMs,
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
            to_rooms: Rooms::new(),
            texts: Box::default(),
            operator_len: u32::MAX,
            extension_len: u32::MAX,
            timeout_ms: OptDur::NONE,
            duration_ms: OptDur::NONE,
            created_at_ms: OptMs::NONE,
            response_deadline_ms: OptMs::NONE,
            started_at_ms: OptMs::NONE,
            ends_at_ms: OptMs::NONE,
            ended_at_ms: OptMs::NONE,
            end_reason: None,
            end_op_type: OptMs::NONE,
            participants: Participants::new(),
            start_source: None,
            known_since_ms: now_ms,
            closed_at_ms: OptMs::NONE,
            timer: None,
            generation: 0,
        }
    }

    /// The deadline a countdown shows next: the response deadline while awaiting answers, the end
    /// while running.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        match self.state {
            State::Pending | State::Ended => None,
            State::AwaitingResponse => self.response_deadline_ms.get(),
            State::Running => self.ends_at_ms.get(),
        }
    }

    /// `NeedResponse` (kept in two bits of `seen`).
    pub fn need_response(&self) -> Option<bool> {
        (self.seen & seen::NEED_RESPONSE_KNOWN != 0).then_some(self.seen & seen::NEED_RESPONSE != 0)
    }

    /// Sets `NeedResponse`.
    pub fn set_need_response(&mut self, v: Option<bool>) {
        self.seen &= !(seen::NEED_RESPONSE_KNOWN | seen::NEED_RESPONSE);
        match v {
            Some(true) => self.seen |= seen::NEED_RESPONSE_KNOWN | seen::NEED_RESPONSE,
            Some(false) => self.seen |= seen::NEED_RESPONSE_KNOWN,
            None => {}
        }
    }

    /// `Operator_Account`.
    pub fn operator(&self) -> Option<&str> {
        let n = self.operator_len;
        (n != u32::MAX).then(|| &self.texts[..n as usize])
    }

    /// `ExtensionInfo`.
    pub fn extension_info(&self) -> Option<&str> {
        let from = match self.operator_len {
            u32::MAX => 0,
            n => n as usize,
        };
        let n = self.extension_len;
        (n != u32::MAX).then(|| &self.texts[from..from + n as usize])
    }

    /// A participant's owner (`Owner_Account`), exactly as Tencent sent it.
    pub fn owner_of(&self, p: &Participant) -> Option<&str> {
        let at = p.owner_at as usize;
        (p.owner_len != u16::MAX).then(|| &self.texts[at..at + p.owner_len as usize])
    }

    /// Sets `Operator_Account` and `ExtensionInfo` (the owners stay).
    pub fn set_texts(&mut self, operator: Option<&str>, extension_info: Option<&str>) {
        let owners = self.participants.iter().map(|p| self.owner_of(p));
        let texts = Texts::build(operator, extension_info, owners);
        self.install(texts);
    }

    /// Sets the owners of the participants at the given indexes (the last one listed for an
    /// index wins).
    pub fn set_owners(&mut self, owners: &[(usize, &str)]) {
        let owner = |i: usize| owners.iter().rev().find(|(j, _)| *j == i).map(|(_, o)| *o);
        let all = (self.participants.iter().enumerate())
            .map(|(i, p)| owner(i).or_else(|| self.owner_of(p)));
        let texts = Texts::build(self.operator(), self.extension_info(), all);
        self.install(texts);
    }

    fn install(&mut self, t: Texts) {
        self.texts = t.buf;
        self.operator_len = t.operator_len;
        self.extension_len = t.extension_len;
        for (p, (at, len)) in self.participants.iter_mut().zip(t.owners) {
            p.owner_at = at;
            p.owner_len = len;
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
            .chain(self.to_rooms.iter())
            .chain(self.participants.iter().map(|p| &p.room_id))
            .find(|r| &***r == room)
            .cloned()
            .unwrap_or_else(|| Arc::from(room))
    }

    /// Where a room stands in `participants`.
    pub(crate) fn participant_index(&self, room: &str) -> Option<usize> {
        self.participants.iter().position(|p| &*p.room_id == room)
    }

    pub(crate) fn participant_mut(&mut self, room: &str) -> Option<&mut Participant> {
        let i = self.participant_index(room)?;
        self.participants.get_mut(i)
    }

    /// The public view of this battle at `server_time_ms`.
    pub fn snapshot(&self, server_time_ms: i64) -> BattleSnapshot {
        self.view(server_time_ms).to_snapshot()
    }

    /// [`Battle::snapshot`] borrowed from the record: what a snapshot shows, without copying a
    /// text. It serializes exactly like the [`BattleSnapshot`] it stands for (the same fields in
    /// the same order), so the replay ring packs it and unpacks a `BattleSnapshot`.
    pub(crate) fn view(&self, server_time_ms: i64) -> SnapshotView<'_> {
        SnapshotView {
            battle_id: &self.id,
            state: self.state,
            version: self.version,
            from_room: self.from_room.as_ref(),
            to_rooms: &self.to_rooms,
            operator: self.operator(),
            need_response: self.need_response(),
            timeout_ms: self.timeout_ms.get(),
            duration_ms: self.duration_ms.get(),
            extension_info: self.extension_info(),
            created_at_ms: self.created_at_ms.get(),
            response_deadline_ms: self.response_deadline_ms.get(),
            started_at_ms: self.started_at_ms.get(),
            ends_at_ms: self.ends_at_ms.get(),
            ended_at_ms: self.ended_at_ms.get(),
            end_reason: self.end_reason,
            end_op_type: self.end_op_type.get(),
            next_deadline_ms: self.next_deadline_ms(),
            participants: ParticipantRefs(self),
            server_time_ms,
        }
    }

    /// What a snapshot shows of one participant.
    fn participant_ref<'a>(&'a self, p: &'a Participant) -> ParticipantRef<'a> {
        ParticipantRef {
            room_id: &p.room_id,
            owner_account: self.owner_of(p),
            score: p.score,
            response: p.response,
            left: p.left,
        }
    }
}

/// A [`BattleSnapshot`] borrowed from its [`Battle`] ([`Battle::view`]); field for field the same
/// serialization.
#[derive(Serialize)]
pub(crate) struct SnapshotView<'a> {
    battle_id: &'a Arc<str>,
    state: State,
    version: u64,
    from_room: Option<&'a Arc<str>>,
    to_rooms: &'a [Arc<str>],
    operator: Option<&'a str>,
    need_response: Option<bool>,
    timeout_ms: Option<u64>,
    duration_ms: Option<u64>,
    extension_info: Option<&'a str>,
    created_at_ms: Option<i64>,
    response_deadline_ms: Option<i64>,
    started_at_ms: Option<i64>,
    ends_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    end_reason: Option<EndReason>,
    end_op_type: Option<i64>,
    next_deadline_ms: Option<i64>,
    participants: ParticipantRefs<'a>,
    server_time_ms: i64,
}

impl SnapshotView<'_> {
    /// The owned snapshot.
    pub(crate) fn to_snapshot(&self) -> BattleSnapshot {
        let b = self.participants.0;
        BattleSnapshot {
            battle_id: self.battle_id.clone(),
            state: self.state,
            version: self.version,
            from_room: self.from_room.cloned(),
            to_rooms: self.to_rooms.to_vec(),
            operator: self.operator.map(Into::into),
            need_response: self.need_response,
            timeout_ms: self.timeout_ms,
            duration_ms: self.duration_ms,
            extension_info: self.extension_info.map(Into::into),
            created_at_ms: self.created_at_ms,
            response_deadline_ms: self.response_deadline_ms,
            started_at_ms: self.started_at_ms,
            ends_at_ms: self.ends_at_ms,
            ended_at_ms: self.ended_at_ms,
            end_reason: self.end_reason,
            end_op_type: self.end_op_type,
            next_deadline_ms: self.next_deadline_ms,
            participants: b
                .participants
                .iter()
                .map(|p| b.participant_ref(p).to_view())
                .collect(),
            server_time_ms: self.server_time_ms,
        }
    }
}

/// A battle's participants as a snapshot shows them (serialized as a sequence of
/// [`ParticipantView`]s).
struct ParticipantRefs<'a>(&'a Battle);

impl Serialize for ParticipantRefs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.0;
        s.collect_seq(b.participants.iter().map(|p| b.participant_ref(p)))
    }
}

/// A [`ParticipantView`] borrowed from its battle; the same serialization.
#[derive(Serialize)]
struct ParticipantRef<'a> {
    room_id: &'a Arc<str>,
    owner_account: Option<&'a str>,
    score: i64,
    response: Option<Response>,
    left: bool,
}

impl ParticipantRef<'_> {
    fn to_view(&self) -> ParticipantView {
        ParticipantView {
            room_id: self.room_id.clone(),
            owner_account: self.owner_account.map(Into::into),
            score: self.score,
            response: self.response,
            left: self.left,
        }
    }
}

/// A battle's text arena being rebuilt: operator, extension info, then each participant's owner.
/// Lengths are capped (4 GiB for the first two, 64 KiB for an owner: an account id is a few
/// dozen bytes), cut at a char boundary.
struct Texts {
    buf: Box<str>,
    operator_len: u32,
    extension_len: u32,
    owners: SmallVec<[(u32, u16); 2]>,
}

impl Texts {
    fn build<'a>(
        operator: Option<&str>,
        extension_info: Option<&str>,
        owners: impl Iterator<Item = Option<&'a str>> + Clone,
    ) -> Texts {
        let cut = |s: &'a str, max: usize| &s[..floor_char_boundary(s, max)];
        let owners = owners.map(|o| o.map(|o| cut(o, u16::MAX as usize - 1)));
        let op = operator.map(|o| &o[..floor_char_boundary(o, u32::MAX as usize - 1)]);
        let ext = extension_info.map(|e| &e[..floor_char_boundary(e, u32::MAX as usize - 1)]);
        let len = op.map_or(0, str::len)
            + ext.map_or(0, str::len)
            + owners.clone().map(|o| o.map_or(0, str::len)).sum::<usize>();
        let mut buf = String::with_capacity(len);
        buf.push_str(op.unwrap_or(""));
        buf.push_str(ext.unwrap_or(""));
        let owners = owners
            .map(|o| match o {
                Some(o) => {
                    let at = buf.len() as u32;
                    buf.push_str(o);
                    (at, o.len() as u16)
                }
                None => (0, u16::MAX),
            })
            .collect();
        Texts {
            buf: buf.into_boxed_str(),
            operator_len: op.map_or(u32::MAX, |o| o.len() as u32),
            extension_len: ext.map_or(u32::MAX, |e| e.len() as u32),
            owners,
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
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
