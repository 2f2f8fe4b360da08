//! The pure core: `battle + input + now → battle' + effects`, with no I/O, no clock and no
//! runtime. Every lifecycle rule of docs/lifecycle.md lives here, once.
//!
//! The shell (the shard task) feeds inputs and carries out the [`Effects`] as data: it arms the
//! timer the battle now wants, publishes the notification, writes the store, evicts.

use crate::battle::{
    seen, Battle, EndReason, Participant, Participants, Response, StartSource, State, Timer,
    TimerKind,
};
use crate::event::{Created, Ended, Event, RoomInfo, Started};
use smallvec::SmallVec;

/// The tunable rules. Times are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// After the response deadline, wait this long for the Start/End webhook before deciding.
    pub response_grace_ms: u64,
    /// A Tencent timestamp further in the future than this is clamped to now.
    pub future_tolerance_ms: u64,
    /// How long an ended battle is kept (queries, late duplicates) before eviction.
    pub retention_ms: u64,
    /// After eviction, webhooks for the battle still change nothing for this long.
    pub dedupe_horizon_ms: u64,
    /// A pending battle whose Create webhook does not come within this ends `not_started`.
    pub pending_ttl_ms: u64,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            response_grace_ms: 3_000,
            future_tolerance_ms: 2_000,
            retention_ms: 10 * 60_000,
            dedupe_horizon_ms: 60 * 60_000,
            pending_ttl_ms: 60_000,
        }
    }
}

/// What an input did to a battle, from an observer's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing observable changed (a late no-op, a stale timer).
    None,
    /// The same Tencent callback was applied before: nothing changed.
    Duplicate,
    /// The battle came into being in this state.
    New(State),
    /// The state moved.
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
    },
    /// Fields changed within the same state (a refinement, a late record completion, scores).
    Update,
    /// Retention is over: drop the battle (and remember its id for the dedupe horizon).
    Evict,
}

impl Change {
    /// Whether observers hear of it (and the version moves).
    pub fn notifies(self) -> bool {
        matches!(
            self,
            Change::New(_) | Change::Transition { .. } | Change::Update
        )
    }
}

/// The effects of one step, as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// What changed.
    pub change: Change,
    /// For a timer-caused change: how late the timer fired (ms past its deadline).
    pub late_ms: Option<u64>,
    /// The rooms of the battle changed (the room index must follow).
    pub rooms_changed: bool,
    /// The record changed (even without a notification, e.g. the dedupe memory): store it.
    pub dirty: bool,
}

impl Effects {
    /// A change to store, with or without a membership change.
    fn stored(change: Change, rooms_changed: bool) -> Effects {
        Effects {
            change,
            late_ms: None,
            rooms_changed,
            dirty: true,
        }
    }

    fn of(change: Change) -> Effects {
        Effects {
            change,
            late_ms: None,
            rooms_changed: false,
            dirty: false,
        }
    }
}

/// Refusals of app-side events (webhooks are never refused by the core).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such battle.
    UnknownBattle,
    /// The room is not a participant of the battle.
    UnknownRoom(String),
    /// The room is not an invited callee.
    NotACallee(String),
    /// The End webhook already fixed the final scores.
    ScoresFinal,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownBattle => write!(f, "no such battle"),
            Refusal::UnknownRoom(r) => write!(f, "room {r:?} is not in this battle"),
            Refusal::NotACallee(r) => write!(f, "room {r:?} is not an invited callee"),
            Refusal::ScoresFinal => {
                write!(f, "the End webhook already fixed the final scores")
            }
        }
    }
}

/// Applies an event to a battle that may not exist yet (`existing` is `None`). A new battle is
/// returned as `Some`; an existing one is changed in place. On `Err` nothing changed.
///
/// `RoomDestroyed` must be resolved by the caller to the battle the room is in; here it applies
/// to `existing` (which must then exist).
pub fn apply_event(
    existing: Option<&mut Battle>,
    event: &Event,
    now_ms: i64,
    rules: &Rules,
) -> Result<(Option<Battle>, Effects), Refusal> {
    match existing {
        Some(b) => step(b, event, now_ms, rules, true).map(|fx| (None, fx)),
        None => {
            let Some(id) = event.battle_id() else {
                return Err(Refusal::UnknownBattle);
            };
            if matches!(
                event,
                Event::RoomExited { .. } | Event::EndNow { .. } | Event::Scores { .. }
            ) {
                return Err(Refusal::UnknownBattle);
            }
            let mut b = Battle::new(id, State::Pending, now_ms);
            let fx = step(&mut b, event, now_ms, rules, false)?;
            Ok((Some(b), fx))
        }
    }
}

fn step(
    b: &mut Battle,
    event: &Event,
    now_ms: i64,
    rules: &Rules,
    existed: bool,
) -> Result<Effects, Refusal> {
    let before = b.state;
    let clamp = |t: i64| clamp_future(t, now_ms, rules);
    let mut fx = match event {
        Event::Created(c) => on_created(b, c, now_ms, &clamp),
        Event::Started(s) => on_started(b, s, now_ms, &clamp),
        Event::Ended(e) => on_ended(b, e, now_ms, &clamp),
        Event::RoomDestroyed(d) => on_room_left(b, &d.room_id, EndReason::RoomDestroyed, now_ms),
        Event::RoomExited { room_id, .. } => {
            if b.participant_mut(room_id).is_none() {
                return Err(Refusal::UnknownRoom(room_id.clone()));
            }
            on_room_left(b, room_id, EndReason::AllExited, now_ms)
        }
        Event::Response {
            room_id, accept, ..
        } => on_response(b, room_id, *accept, now_ms)?,
        Event::EndNow { .. } => {
            if b.state == State::Ended {
                Effects::of(Change::None)
            } else {
                end(b, EndReason::EndedByApp, now_ms);
                Effects::of(Change::Update)
            }
        }
        Event::Scores { scores, .. } => on_scores(b, scores)?,
    };
    if !existed && fx.change.notifies() {
        fx.change = Change::New(b.state);
        fx.rooms_changed = true;
    } else if fx.change == Change::Update && b.state != before {
        fx.change = Change::Transition {
            from: before,
            to: b.state,
        };
    }
    if fx.change.notifies() {
        b.version += 1;
        fx.dirty = true;
    }
    if b.state == State::Ended && before != State::Ended {
        b.closed_at_ms = Some(now_ms).into();
    }
    arm(b, rules);
    Ok(fx)
}

/// How late `timer` fires at `now_ms` (0 when on time or early).
pub(crate) fn late_by(timer: Timer, now_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(timer.at_ms)).unwrap_or(0)
}

/// A timer fired. `timer` is what the shell had armed; a stale one (another generation, or a
/// kind the battle no longer wants) changes nothing.
pub fn apply_timer(b: &mut Battle, timer: Timer, now_ms: i64, rules: &Rules) -> Effects {
    if b.timer != Some(timer) {
        return Effects::of(Change::None);
    }
    let before = b.state;
    let late_ms = late_by(timer, now_ms);
    let at = timer.at_ms;
    match (timer.kind, b.state) {
        (TimerKind::PendingExpiry, State::Pending) => end(b, EndReason::NotStarted, at),
        (TimerKind::ResponseDeadline, State::AwaitingResponse) => {
            if accepted_any(b) {
                let start = b.response_deadline_ms.get().unwrap_or(at);
                run_from(b, start, StartSource::Predicted);
            } else {
                end(b, EndReason::ResponseTimeout, at);
            }
        }
        (TimerKind::BattleEnd, State::Running) => {
            let at = b.ends_at_ms.get().unwrap_or(at);
            end(b, EndReason::TimeUp, at);
        }
        (TimerKind::Evict, State::Ended) => {
            b.timer = None;
            return Effects {
                dirty: true,
                ..Effects::of(Change::Evict)
            };
        }
        _ => {
            // The battle moved on without the timer noticing: re-derive and do nothing.
            arm(b, rules);
            return Effects::of(Change::None);
        }
    }
    if b.state == State::Ended {
        b.closed_at_ms = Some(now_ms).into();
    }
    b.version += 1;
    arm(b, rules);
    Effects {
        change: Change::Transition {
            from: before,
            to: b.state,
        },
        late_ms: Some(late_ms),
        rooms_changed: false,
        dirty: true,
    }
}

/// The one timer a battle wants in its current state, as a pure function of the battle.
pub fn wanted_timer(b: &Battle, rules: &Rules) -> Option<(TimerKind, i64)> {
    let grace = rules.response_grace_ms as i64;
    match b.state {
        State::Pending => Some((
            TimerKind::PendingExpiry,
            b.known_since_ms.saturating_add(rules.pending_ttl_ms as i64),
        )),
        State::AwaitingResponse => b
            .response_deadline_ms
            .get()
            .map(|d| (TimerKind::ResponseDeadline, d.saturating_add(grace))),
        State::Running => b.ends_at_ms.get().map(|e| (TimerKind::BattleEnd, e)),
        State::Ended => b.closed_at_ms.get().map(|c| {
            (
                TimerKind::Evict,
                c.saturating_add(rules.retention_ms as i64),
            )
        }),
    }
}

/// Re-derives the armed timer; a changed timer gets a new generation (so the old one is stale).
fn arm(b: &mut Battle, rules: &Rules) {
    let wanted = wanted_timer(b, rules);
    let current = b.timer.map(|t| (t.kind, t.at_ms));
    if wanted == current {
        return;
    }
    b.generation = b.generation.wrapping_add(1);
    let generation = b.generation;
    b.timer = wanted.map(|(kind, at_ms)| Timer {
        kind,
        at_ms,
        generation,
    });
}

fn clamp_future(t: i64, now_ms: i64, rules: &Rules) -> i64 {
    if t > now_ms.saturating_add(rules.future_tolerance_ms as i64) {
        now_ms
    } else {
        t
    }
}

/// The most precise consistent instant: `EventTime` (ms) when it falls in the same second as
/// the `*Time` field (s), else the `*Time` field × 1000, else `EventTime`.
fn precise(event_ms: Option<i64>, secs: Option<i64>) -> Option<i64> {
    match (event_ms, secs.filter(|s| *s > 0)) {
        (Some(ms), Some(s)) if ms.div_euclid(1000) == s => Some(ms),
        (_, Some(s)) => Some(s.saturating_mul(1000)),
        (Some(ms), None) => Some(ms),
        (None, None) => None,
    }
}

fn set_if_changed<T: PartialEq>(slot: &mut Option<T>, value: Option<T>) -> bool {
    if value.is_some() && *slot != value {
        *slot = value;
        true
    } else {
        false
    }
}

fn on_created(b: &mut Battle, c: &Created, now_ms: i64, clamp: &dyn Fn(i64) -> i64) -> Effects {
    if !first_delivery(b, seen::CREATE) {
        return Effects::of(Change::Duplicate);
    }
    let later_news = b.seen & (seen::START | seen::END) != 0;
    let at = clamp(c.event_time_ms.unwrap_or(now_ms));
    // Create is the best source for what it alone carries.
    b.created_at_ms = Some(at).into();
    if b.operator().is_none() && b.extension_info().is_none() {
        b.set_texts(c.operator.as_deref(), c.extension_info.as_deref());
    } else {
        let operator = c.operator.as_deref().or(b.operator()).map(str::to_owned);
        let extension_info = c
            .extension_info
            .as_deref()
            .or(b.extension_info())
            .map(str::to_owned);
        b.set_texts(operator.as_deref(), extension_info.as_deref());
    }
    b.set_need_response(c.need_response.or(b.need_response()));
    b.timeout_ms = c.timeout_ms.or(b.timeout_ms.get()).into();
    b.to_rooms = c.to_rooms.iter().map(|r| b.room_arc(r)).collect();
    if b.from_room.is_none() {
        b.from_room = c.from_room.as_deref().map(|r| b.room_arc(r));
    }
    if !later_news {
        b.duration_ms = c.duration_ms.or(b.duration_ms.get()).into();
    }
    let need_response = c.need_response == Some(true);
    if need_response {
        b.response_deadline_ms = Some(at.saturating_add(c.timeout_ms.unwrap_or(0) as i64)).into();
    }
    let mut rooms_changed = false;
    if !later_news {
        // Provisional membership: caller and invited callees, keeping answers already heard.
        let mut rooms: Vec<&str> = c.from_room.iter().map(String::as_str).collect();
        rooms.extend(c.to_rooms.iter().map(String::as_str));
        b.participants.reserve_exact(rooms.len());
        for r in rooms {
            if b.participant_mut(r).is_none() {
                let arc = b.room_arc(r);
                b.participants.push(Participant::new(arc));
                rooms_changed = true;
            }
        }
        // Answers heard from rooms that were never invited do not make them participants.
        let invited = |room: &str| {
            c.from_room.as_deref() == Some(room) || c.to_rooms.iter().any(|r| r == room)
        };
        let before = b.participants.len();
        b.participants.retain(|p| invited(&p.room_id));
        rooms_changed |= before != b.participants.len();
    }
    if b.state == State::Pending {
        if need_response {
            b.state = State::AwaitingResponse;
            settle_responses(b, now_ms);
        } else {
            run_from(b, at, StartSource::Predicted);
        }
    }
    Effects::stored(Change::Update, rooms_changed)
}

/// Records that a Tencent battle callback is being applied; false when it was before (the
/// dedupe rule: one of each command per battle).
fn first_delivery(b: &mut Battle, command: u8) -> bool {
    if b.seen & command != 0 {
        return false;
    }
    b.seen |= command;
    true
}

fn on_started(b: &mut Battle, s: &Started, now_ms: i64, clamp: &dyn Fn(i64) -> i64) -> Effects {
    if !first_delivery(b, seen::START) {
        return Effects::of(Change::Duplicate);
    }
    let mut changed = true;
    if b.seen & seen::CREATE == 0 {
        let mut created = b.created_at_ms.get();
        set_if_changed(
            &mut created,
            s.create_time_s.map(|t| clamp(t.saturating_mul(1000))),
        );
        b.created_at_ms = created.into();
    }
    b.duration_ms = s.duration_ms.or(b.duration_ms.get()).into();
    let rooms_changed = if b.seen & seen::END == 0 {
        replace_members(b, s.from_room.as_ref(), &s.to_rooms)
    } else {
        fill_owners(b, s.from_room.as_ref(), &s.to_rooms)
    };
    let start = clamp(precise(s.event_time_ms, s.start_time_s).unwrap_or(now_ms));
    match b.state {
        State::Pending | State::AwaitingResponse | State::Running => {
            let (old_start, old_end) = (b.started_at_ms, b.ends_at_ms);
            let was_running = b.state == State::Running;
            run_from(b, start, StartSource::StartWebhook);
            if was_running && old_start == b.started_at_ms && old_end == b.ends_at_ms {
                changed = rooms_changed;
            }
        }
        State::Ended => {
            b.started_at_ms = Some(start).into();
            b.start_source = Some(StartSource::StartWebhook);
            b.ends_at_ms = end_of(b).into();
        }
    }
    let change = if changed {
        Change::Update
    } else {
        Change::None
    };
    Effects::stored(change, rooms_changed)
}

fn on_ended(b: &mut Battle, e: &Ended, now_ms: i64, clamp: &dyn Fn(i64) -> i64) -> Effects {
    if !first_delivery(b, seen::END) {
        return Effects::of(Change::Duplicate);
    }
    if b.seen & seen::CREATE == 0 {
        let mut created = b.created_at_ms.get();
        set_if_changed(
            &mut created,
            e.create_time_s.map(|t| clamp(t.saturating_mul(1000))),
        );
        b.created_at_ms = created.into();
    }
    if b.seen & seen::START == 0 {
        b.duration_ms = e.duration_ms.or(b.duration_ms.get()).into();
        if e.op_type != Some(2) && b.start_source < Some(StartSource::EndWebhook) {
            if let Some(s) = e.start_time_s.filter(|s| *s > 0) {
                b.started_at_ms = Some(clamp(s.saturating_mul(1000))).into();
                b.start_source = Some(StartSource::EndWebhook);
                b.ends_at_ms = end_of(b).into();
            }
        }
    }
    let rooms_changed = replace_members(b, e.from_room.as_ref(), &e.to_rooms);
    let ended_at = clamp(precise(e.event_time_ms, e.end_time_s).unwrap_or(now_ms));
    let reason = EndReason::from_op_type(e.op_type);
    b.end_op_type = e.op_type.into();
    end(b, reason, ended_at);
    // The End webhook is the authority on how the battle ended, even after the engine's own end.
    b.end_reason = Some(reason);
    b.ended_at_ms = Some(ended_at).into();
    Effects::stored(Change::Update, rooms_changed)
}

fn on_response(b: &mut Battle, room: &str, accept: bool, now_ms: i64) -> Result<Effects, Refusal> {
    let answer = if accept {
        Response::Accepted
    } else {
        Response::Declined
    };
    match b.state {
        State::Pending => {}
        State::AwaitingResponse => {
            if !b.to_rooms.iter().any(|r| &**r == room) {
                return Err(Refusal::NotACallee(room.to_owned()));
            }
        }
        State::Running | State::Ended => return Ok(Effects::of(Change::None)),
    }
    let mut rooms_changed = false;
    if b.participant_mut(room).is_none() {
        let arc = b.room_arc(room);
        b.participants.push(Participant::new(arc));
        rooms_changed = true;
    }
    let Some(p) = b.participant_mut(room) else {
        return Ok(Effects::of(Change::None));
    };
    if p.response.is_some() {
        return Ok(Effects::of(Change::Duplicate));
    }
    p.response = Some(answer);
    settle_responses(b, now_ms);
    Ok(Effects::stored(Change::Update, rooms_changed))
}

fn on_room_left(b: &mut Battle, room: &str, reason: EndReason, now_ms: i64) -> Effects {
    if b.state == State::Ended {
        return Effects::of(Change::None);
    }
    let Some(p) = b.participant_mut(room) else {
        return Effects::of(Change::None);
    };
    if p.left {
        return Effects::of(Change::None);
    }
    p.left = true;
    match b.state {
        State::Running => {
            if b.participants.iter().filter(|p| !p.left).count() < 2 {
                end(b, reason, now_ms);
            }
        }
        State::AwaitingResponse => {
            if b.from_room.as_deref() == Some(room) {
                end(b, reason, now_ms);
            } else {
                if let Some(p) = b.participant_mut(room) {
                    p.response.get_or_insert(Response::Declined);
                }
                settle_responses(b, now_ms);
            }
        }
        State::Pending | State::Ended => {}
    }
    Effects::of(Change::Update)
}

fn on_scores(b: &mut Battle, scores: &[(String, i64)]) -> Result<Effects, Refusal> {
    if b.seen & seen::END != 0 {
        return Err(Refusal::ScoresFinal);
    }
    if let Some((room, _)) = scores
        .iter()
        .find(|(room, _)| !b.participants.iter().any(|p| &*p.room_id == room))
    {
        return Err(Refusal::UnknownRoom(room.clone()));
    }
    let mut changed = false;
    for (room, score) in scores {
        if let Some(p) = b.participant_mut(room) {
            if p.score != *score {
                p.score = *score;
                changed = true;
            }
        }
    }
    Ok(Effects::of(if changed {
        Change::Update
    } else {
        Change::None
    }))
}

/// Awaiting answers: once every invited callee answered, run (someone accepted) or end
/// `declined`.
fn settle_responses(b: &mut Battle, now_ms: i64) {
    if b.state != State::AwaitingResponse || b.to_rooms.is_empty() {
        return;
    }
    let answered = b.to_rooms.iter().all(|r| {
        b.participants
            .iter()
            .any(|p| p.room_id == *r && p.response.is_some())
    });
    if !answered {
        return;
    }
    if accepted_any(b) {
        run_from(b, now_ms, StartSource::Predicted);
    } else {
        end(b, EndReason::Declined, now_ms);
    }
}

fn accepted_any(b: &Battle) -> bool {
    b.participants
        .iter()
        .any(|p| p.response == Some(Response::Accepted))
}

/// Running from `start` (learned from `source`); a weaker source never overrides a stronger one.
fn run_from(b: &mut Battle, start: i64, source: StartSource) {
    if b.start_source <= Some(source) {
        b.started_at_ms = Some(start).into();
        b.start_source = Some(source);
    }
    b.ends_at_ms = end_of(b).into();
    if b.state != State::Ended {
        b.state = State::Running;
    }
}

fn end_of(b: &Battle) -> Option<i64> {
    let start = b.started_at_ms.get()?;
    Some(start.saturating_add(b.duration_ms.get()? as i64))
}

/// Enters `ended` (if not already there) with the engine's own reason and time; the End webhook
/// overrides both afterwards.
fn end(b: &mut Battle, reason: EndReason, at_ms: i64) {
    if b.state == State::Ended {
        return;
    }
    b.state = State::Ended;
    if b.seen & seen::END == 0 {
        b.end_reason = Some(reason);
        b.ended_at_ms = Some(at_ms).into();
    }
}

/// Membership from a Start/End callback: the listed rooms, keeping what we knew of each.
fn replace_members(b: &mut Battle, from: Option<&RoomInfo>, to: &[RoomInfo]) -> bool {
    if from.is_none() && to.is_empty() {
        return false;
    }
    if let Some(f) = from {
        if b.from_room.is_none() {
            b.from_room = Some(b.room_arc(&f.room_id));
        }
    }
    let listed = || from.into_iter().chain(to);
    let same_rooms = b.participants.len() == listed().count()
        && listed()
            .zip(&b.participants)
            .all(|(info, p)| *p.room_id == *info.room_id);
    let changed = if same_rooms {
        false
    } else {
        // Rebuild in the callback's order, keeping what was known of each room.
        let old = std::mem::take(&mut b.participants);
        let mut rebuilt = Participants::with_capacity(listed().count());
        for info in listed() {
            if rebuilt.iter().any(|p| *p.room_id == *info.room_id) {
                continue;
            }
            let p = match old.iter().position(|p| *p.room_id == *info.room_id) {
                Some(i) => old[i].clone(),
                None => {
                    let arc = b.room_arc(&info.room_id);
                    Participant::new(arc)
                }
            };
            rebuilt.push(p);
        }
        let changed = rebuilt.len() != old.len()
            || rebuilt
                .iter()
                .zip(&old)
                .any(|(n, o)| n.room_id != o.room_id);
        b.participants = rebuilt;
        changed
    };
    let mut owners: SmallVec<[(usize, &str); 2]> = SmallVec::new();
    for info in listed() {
        let Some(i) = b.participant_index(&info.room_id) else {
            continue;
        };
        if let Some(o) = &info.owner_account {
            // The last one listed for a room wins.
            owners.retain(|(j, _)| *j != i);
            if b.owner_of(&b.participants[i]) != Some(o.as_str()) {
                owners.push((i, o.as_str()));
            }
        }
        if let Some(s) = info.score {
            b.participants[i].score = s;
        }
    }
    if !owners.is_empty() {
        b.set_owners(&owners);
    }
    changed
}

/// Owners from a Start that came after End: End's membership and scores stand.
fn fill_owners(b: &mut Battle, from: Option<&RoomInfo>, to: &[RoomInfo]) -> bool {
    let mut owners: SmallVec<[(usize, &str); 2]> = SmallVec::new();
    for info in from.into_iter().chain(to) {
        let Some(i) = b.participant_index(&info.room_id) else {
            continue;
        };
        // Only an unknown owner is filled, by the first one listed.
        if let Some(o) = &info.owner_account {
            if b.owner_of(&b.participants[i]).is_none() && !owners.iter().any(|(j, _)| *j == i) {
                owners.push((i, o.as_str()));
            }
        }
    }
    if !owners.is_empty() {
        b.set_owners(&owners);
    }
    false
}
