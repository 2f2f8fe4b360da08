//! The thin async shell: a shard is the single writer of its battles (its task, or an in-memory
//! caller that finds it free: [`ShardCell::inline`]) and the owner of one timer queue. It feeds
//! inputs to the pure core ([`crate::transition`]) and carries out the effects: arm/cancel
//! timers, write the store (one batch per wake-up: group commit), publish notifications, keep
//! the room links, evict, and only then reply.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};

use crate::battle::{Battle, State, Timer};
use crate::clock::Clock;
use crate::engine::{Applied, EngineError, Outcome};
use crate::event::{Cause, Event};
use crate::metrics::{Metrics, MetricsDelta};
use crate::notify::{Hub, Notification, Packed, Target};
use crate::store::{Store, StoreOp};
use crate::table::{Part, Slot, Table};
use crate::timers::TimerQueue;
use crate::transition::{apply_event, apply_timer, Change, Effects, Rules};

mod shared;

/// The hasher of the engine's maps: fast, and seeded per process.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// State shared by all shards and the engine handle (read side).
pub(crate) struct Shared {
    /// Every battle, one part per shard (the shard writes it, queries read it).
    pub(crate) table: Table,
    pub(crate) hub: Hub,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rules: Rules,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Metrics,
    /// False while the latest store write failed (until one succeeds).
    pub(crate) store_healthy: std::sync::atomic::AtomicBool,
    /// Set once shutdown began.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

/// What a shard's replica of a shared store is brought up to.
pub(crate) enum ReplicaUpdate {
    /// Other instances' commits.
    Changes(Vec<crate::store::Replicated>),
    /// The change feed lost changes: exactly what the store holds of this shard (its battles
    /// and evicted ids).
    Reset(Vec<Battle>, Vec<(Arc<str>, i64)>),
}

/// One routed input: the battle it targets when the event does not name it (`RoomDestroyed`,
/// resolved through the room index), and the event.
pub(crate) type Routed = (Option<Arc<str>>, Event);

pub(crate) enum Command {
    Apply {
        items: Vec<Routed>,
        reply: oneshot::Sender<Vec<Result<Applied, EngineError>>>,
    },
    /// Shared store: bring the replica up to date, then answer.
    Replica {
        update: ReplicaUpdate,
        done: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

type Reply = (
    oneshot::Sender<Vec<Result<Applied, EngineError>>>,
    Vec<Result<Applied, EngineError>>,
);

/// A queued timer: which slot of the shard's part and the timer's generation (the queue keeps
/// its deadline next to it): 16 bytes with the deadline.
///
/// It fires for whatever battle holds the slot when it comes due, if that battle's armed timer
/// has this deadline and generation; otherwise it is stale and does nothing. A slot freed and
/// taken by another battle cannot misfire: a battle whose armed timer is due now is right to
/// fire it (its own entry then finds it gone).
pub(crate) struct TimerEntry {
    slot: Slot,
    generation: u32,
}

pub(crate) struct Shard {
    shared: Arc<Shared>,
    /// This shard's part of [`Shared::table`].
    part: usize,
    queue: TimerQueue<TimerEntry>,
    due: Vec<(i64, TimerEntry)>,
    /// Evicted ids still inside the dedupe horizon, and when each may be forgotten.
    evicted: HashMap<Arc<str>, i64, Hasher>,
    evicted_order: VecDeque<(i64, Arc<str>)>,
    // The current batch.
    ops: Vec<StoreOp>,
    op_index: HashMap<Arc<str>, usize, Hasher>,
    notes: Vec<Notification>,
    /// In memory, with nobody listening but the replay ring: the batch's notifications, packed
    /// (never built). Empty whenever `notes` is not: one of the two holds the batch's, in order.
    packed: Packed,
    replies: Vec<Reply>,
    /// After a failed store write: when to try the pending changes again.
    retry_at: Option<tokio::time::Instant>,
    /// The batch being written.
    writing: Option<Writing>,
    /// Metrics counted since the last flush (once per wake-up, before answering).
    delta: MetricsDelta,
    /// Shared store: timers another instance holds the claim on, to look at again when its
    /// lease ends (or when the store failed), with their original deadline.
    rechecks: TimerQueue<(Arc<str>, Timer)>,
    /// Shutdown began: nothing is applied on a caller's task any more.
    closed: bool,
}

/// A batch whose store write is in progress.
struct Writing {
    write: crate::store::BoxFuture<'static, Result<(), crate::store::StoreError>>,
    /// Shared with the batch's `Notify` ops: built once, stored and delivered.
    notes: Vec<Arc<Notification>>,
    replies: Vec<Reply>,
    /// The batch's ops, to put back if the write fails.
    retry: Vec<StoreOp>,
}

impl Shard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        part: usize,
        battles: Vec<Battle>,
        evicted: Vec<(Arc<str>, i64)>,
    ) -> Shard {
        let start_ms = shared.clock.now_ms();
        let mut shard = Shard {
            shared,
            part,
            queue: TimerQueue::new(start_ms),
            due: Vec::new(),
            evicted: HashMap::default(),
            evicted_order: VecDeque::new(),
            ops: Vec::new(),
            op_index: HashMap::default(),
            notes: Vec::new(),
            packed: Packed::default(),
            replies: Vec::new(),
            retry_at: None,
            writing: None,
            delta: MetricsDelta::default(),
            rechecks: TimerQueue::new(start_ms),
            closed: false,
        };
        let mut evicted = evicted;
        evicted.sort_by_key(|(_, at)| *at);
        for (id, at) in evicted {
            shard.evicted.insert(id.clone(), at);
            shard.evicted_order.push_back((at, id));
        }
        for b in battles {
            shard.restore(b);
        }
        shard.delta.flush(&shard.shared.metrics);
        shard
    }

    /// Re-inserts a stored battle and re-arms its timer from its absolute deadline; a deadline
    /// that passed while the process was down fires at once and is reported late.
    fn restore(&mut self, b: Battle) {
        self.delta.state_moved(None, Some(b.state));
        let timer = b.timer;
        let (slot, _) = self.shared.table.write(self.part).insert(b);
        if let Some(t) = timer {
            self.insert_timer(slot, t);
        }
    }

    fn insert_timer(&mut self, slot: Slot, t: Timer) {
        self.queue.insert(
            t.at_ms,
            TimerEntry {
                slot,
                generation: t.generation,
            },
        );
    }

    /// Applies what one wake-up of the shard task brought (commands, due timers), then
    /// publishes and answers, or starts the batch's store write.
    fn on_commands(&mut self, buf: &mut Vec<Command>, closing: &mut Option<oneshot::Sender<()>>) {
        let now = self.now();
        self.forget_expired(now);
        for cmd in buf.drain(..) {
            match cmd {
                Command::Apply { items, reply } => {
                    let results = self.apply_all(items, now);
                    self.replies.push((reply, results));
                }
                Command::Replica { update, done } => {
                    self.update_replica(update);
                    let _ = done.send(());
                }
                Command::Shutdown { reply } => {
                    self.closed = true;
                    *closing = Some(reply);
                }
            }
        }
        self.fire_due();
    }

    /// Applies routed events in order, all at `now` (one instant per step).
    pub(crate) fn apply_all(
        &mut self,
        items: Vec<Routed>,
        now: i64,
    ) -> Vec<Result<Applied, EngineError>> {
        if items.len() > 1 {
            // Look the batch's battles up first (`Part::warm`): their cache misses overlap.
            let part = self.shared.table.read(self.part);
            for (target, ev) in &items {
                if let Some(id) = target.as_deref().or_else(|| ev.battle_id()) {
                    part.warm(id);
                }
            }
        }
        items
            .into_iter()
            .map(|(id, ev)| self.on_event(id, ev, now))
            .collect()
    }

    /// Ends a step: metrics, then publish and answer (in memory) or start the store write.
    fn finish_step(&mut self) {
        self.delta.flush(&self.shared.metrics);
        self.submit();
    }

    /// Whether a caller may apply on its own task: in memory only (a durable event is answered
    /// only once a batch write holds it), and not while shutting down.
    fn takes_inline(&self) -> bool {
        !self.closed
            && self.writing.is_none()
            && self.retry_at.is_none()
            && !self.shared.store.is_persistent()
    }

    /// Nothing applied and not yet written or answered.
    fn is_idle(&self) -> bool {
        self.ops.is_empty()
            && self.notes.is_empty()
            && self.packed.is_empty()
            && self.replies.is_empty()
    }

    /// Fires every timer already due, earliest first (so one wake-up is one batch).
    fn fire_due(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        let now = self.now();
        self.queue.take_due(now, &mut due);
        let shared = self.shared.clone();
        if due.len() > 1 {
            let part = shared.table.read(self.part);
            for (_, entry) in &due {
                part.warm_at(entry.slot);
            }
        }
        for (at_ms, entry) in due.drain(..) {
            let mut part = shared.table.write(self.part);
            self.fire(&mut part, entry.slot, at_ms, entry.generation, now);
        }
        self.due = due;
        self.forget_expired(now);
    }

    fn now(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Applies one event at `now` (Unix ms).
    pub(crate) fn on_event(
        &mut self,
        target: Option<Arc<str>>,
        event: Event,
        now: i64,
    ) -> Result<Applied, EngineError> {
        let id: &str = match (&target, event.battle_id()) {
            (Some(t), _) => t,
            (None, Some(id)) => id,
            (None, None) => return Err(EngineError::Invalid("no battle".into())),
        };
        if self.evicted.contains_key(id) {
            self.delta.event(true);
            return Ok(Applied::unchanged(Outcome::Evicted, Some(State::Ended), 0));
        }
        let cause = event.cause();
        let shared = self.shared.clone();
        let rules = &shared.rules;
        let mut part = shared.table.write(self.part);
        let found = part.entry(id);
        let slot = found.ok();
        let leavable = slot.map(|s| part.leavable_keys(s)).unwrap_or_default();
        let existing = slot.and_then(|s| part.at_mut(s));
        let before_state = existing.as_ref().map(|b| b.state);
        let before_timer = existing.as_ref().and_then(|b| b.timer);
        let before_version = existing.as_ref().map(|b| b.version);
        let (new, fx) = apply_event(existing, &event, now, rules).map_err(EngineError::Refused)?;
        self.delta.event(matches!(fx.change, Change::Duplicate));
        match new {
            Some(b) => {
                if !fx.change.notifies() {
                    return Ok(Applied::unchanged(Outcome::Unchanged, None, 0));
                }
                let timer = b.timer;
                let applied = self.after_change(&b, fx, cause, None, None, now);
                let slot = match found {
                    Err(vacant) if *b.id == *id => part.fill(vacant, b),
                    _ => part.insert(b).0,
                };
                if let Some(t) = timer {
                    self.delta.timer_armed(false);
                    self.insert_timer(slot, t);
                }
                Ok(applied)
            }
            None => {
                let Some(slot) = slot else {
                    return Err(EngineError::Refused(
                        crate::transition::Refusal::UnknownBattle,
                    ));
                };
                follow_rooms(&mut part, slot, &leavable, &fx, cause, before_state);
                let Some(b) = part.at(slot) else {
                    return Err(EngineError::Refused(
                        crate::transition::Refusal::UnknownBattle,
                    ));
                };
                self.retime(slot, b.timer, before_timer);
                Ok(self.after_change(b, fx, cause, before_state, before_version, now))
            }
        }
    }

    /// Queues the battle's timer if it changed. The old one stays queued and, when due, fails
    /// the generation check.
    fn retime(&mut self, slot: Slot, now: Option<Timer>, before: Option<Timer>) {
        if now == before {
            return;
        }
        match now {
            Some(t) => {
                self.delta.timer_armed(before.is_some());
                self.insert_timer(slot, t);
            }
            None => self.delta.timer_cancelled(),
        }
    }

    /// Records what a step did: store op, notification, room index, metrics.
    fn after_change(
        &mut self,
        b: &Battle,
        fx: Effects,
        cause: Cause,
        before: Option<State>,
        before_version: Option<u64>,
        now: i64,
    ) -> Applied {
        let outcome = match fx.change {
            Change::Duplicate => Outcome::Duplicate,
            Change::New(_) => Outcome::New,
            Change::Transition { .. } => Outcome::Transition,
            Change::Update => Outcome::Update,
            Change::None | Change::Evict => Outcome::Unchanged,
        };
        if fx.dirty && self.shared.store.is_persistent() {
            self.put(b, before_version);
        }
        let applied = Applied {
            outcome,
            state: Some(b.state),
            version: b.version,
        };
        if fx.change.notifies() {
            self.delta.change(cause);
            if before != Some(b.state) {
                self.delta.state_moved(before, Some(b.state));
            }
            let to = if before == Some(b.state) {
                Target::Update
            } else {
                Target::State(b.state)
            };
            let hub = &self.shared.hub;
            if !hub.has_live_audience() && !self.shared.store.is_persistent() {
                // Only the replay ring would hear it: pack it, or skip it with the ring off.
                if hub.ring_capacity() == 0
                    || (self.notes.is_empty()
                        && self
                            .packed
                            .push(before, to, cause, fx.late_ms, &b.view(now)))
                {
                    return applied;
                }
            }
            if !self.packed.is_empty() {
                // Someone started listening: what was packed goes first, built.
                self.notes.append(&mut self.packed.take_unpacked());
            }
            self.notes.push(Notification {
                seq: 0,
                from: before,
                to,
                cause,
                late_ms: fx.late_ms,
                battle: b.snapshot(now),
            });
        }
        applied
    }

    fn put(&mut self, b: &Battle, before_version: Option<u64>) {
        let battle = Arc::new(b.clone());
        match self.op_index.get(&b.id) {
            Some(&i) => {
                if let Some(StoreOp::Put { battle: slot, .. }) = self.ops.get_mut(i) {
                    *slot = battle;
                }
            }
            None => {
                self.op_index.insert(b.id.clone(), self.ops.len());
                self.ops.push(StoreOp::Put {
                    battle,
                    expected_version: before_version,
                });
            }
        }
    }

    /// Fires `timer` of battle `id` at `now` (read once per wake-up).
    fn on_timer(&mut self, id: &str, timer: Timer, now: i64) {
        let shared = self.shared.clone();
        let mut part = shared.table.write(self.part);
        if let Some(slot) = part.find(id) {
            self.fire(&mut part, slot, timer.at_ms, timer.generation, now);
        }
    }

    /// Fires the timer of the battle in `slot` at `now`, if its armed timer is still the one
    /// due at `at_ms` with `generation`.
    fn fire(&mut self, part: &mut Part, slot: Slot, at_ms: i64, generation: u32, now: i64) {
        let Some(timer) = part.at(slot).and_then(|b| armed(b, at_ms, generation)) else {
            // Stale: the battle moved on and queued its new timer already.
            return;
        };
        let Some(b) = part.at_mut(slot) else {
            return;
        };
        let before_state = b.state;
        let before_version = b.version;
        let fx = apply_timer(b, timer, now, &self.shared.rules);
        let late = crate::transition::late_by(timer, now);
        match fx.change {
            Change::Evict => {
                self.delta.timer_fired(late);
                let id = b.id.clone();
                self.evict(part, &id, now);
            }
            Change::None => {}
            _ => {
                self.delta.timer_fired(late);
                let cause = match timer.kind {
                    crate::battle::TimerKind::PendingExpiry => Cause::PendingTimer,
                    crate::battle::TimerKind::ResponseDeadline => Cause::ResponseTimer,
                    _ => Cause::EndTimer,
                };
                // A timer never changes who is in the battle: no room can have left.
                let leavable = crate::table::RoomKeys::new();
                follow_rooms(part, slot, &leavable, &fx, cause, Some(before_state));
                let Some(b) = part.at(slot) else {
                    return;
                };
                self.retime(slot, b.timer, Some(timer));
                self.after_change(b, fx, cause, Some(before_state), Some(before_version), now);
            }
        }
    }

    fn evict(&mut self, part: &mut Part, id: &Arc<str>, now: i64) {
        let Some(b) = part.remove(id) else {
            return;
        };
        self.delta.evicted();
        self.delta.state_moved(Some(b.state), None);
        // Its rooms left the room index when it ended (an ended battle is never indexed).
        self.shared.hub.forget_battle(id);
        let forget_at = now.saturating_add(self.shared.rules.dedupe_horizon_ms as i64);
        self.evicted.insert(id.clone(), forget_at);
        self.evicted_order.push_back((forget_at, id.clone()));
        if self.shared.store.is_persistent() {
            if let Some(i) = self.op_index.remove(id) {
                // A Put of this batch is superseded by the eviction.
                self.ops[i] = StoreOp::Forget {
                    battle_id: id.clone(),
                };
            }
            self.ops.push(StoreOp::Evict {
                battle_id: id.clone(),
                forget_at_ms: forget_at,
            });
        }
    }

    fn forget_expired(&mut self, now: i64) {
        while let Some((at, _)) = self.evicted_order.front() {
            if *at > now {
                break;
            }
            let Some((at, id)) = self.evicted_order.pop_front() else {
                break;
            };
            if self.evicted.get(&id) == Some(&at) {
                self.evicted.remove(&id);
                if self.shared.store.is_persistent() {
                    self.ops.push(StoreOp::Forget { battle_id: id });
                }
            }
        }
    }

    /// Starts writing the next batch when no write is in progress (or, without a persistent
    /// store, delivers and answers it at once).
    fn submit(&mut self) {
        if self.writing.is_some() || self.retry_at.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let hub = &shared.hub;
        if !shared.store.is_persistent() {
            if !self.packed.is_empty() {
                hub.publish_packed(&mut self.packed);
            }
            if !self.notes.is_empty() {
                hub.publish(std::mem::take(&mut self.notes));
            }
            let replies = std::mem::take(&mut self.replies);
            answer(replies, &Ok(()));
            return;
        }
        if self.ops.is_empty() && self.notes.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            answer(replies, &Ok(()));
            return;
        }
        // Number, store, deliver: shards store concurrently (so the store can commit their
        // batches together) and the hub delivers in seq order.
        let mut notes = std::mem::take(&mut self.notes);
        hub.number(&mut notes);
        let notes: Vec<Arc<Notification>> = notes.into_iter().map(Arc::new).collect();
        let mut ops = std::mem::take(&mut self.ops);
        self.op_index.clear();
        let retry = ops.clone();
        if let Some(last) = notes.last() {
            let keep_from_seq = last
                .seq
                .saturating_sub(hub.ring_capacity().max(1) as u64 - 1);
            ops.extend(notes.iter().map(|n| StoreOp::Notify {
                notification: n.clone(),
                keep_from_seq,
            }));
        }
        let store = shared.store.clone();
        self.writing = Some(Writing {
            write: Box::pin(async move { store.write(ops).await }),
            notes,
            replies: std::mem::take(&mut self.replies),
            retry,
        });
    }

    /// The batch being written is durable (or failed): deliver and answer it, or put its
    /// changes back in front of the next batch and answer with the error.
    fn written(&mut self, stored: Result<(), crate::store::StoreError>) {
        let Some(done) = self.writing.take() else {
            return;
        };
        let shared = self.shared.clone();
        shared
            .store_healthy
            .store(stored.is_ok(), std::sync::atomic::Ordering::Relaxed);
        match &stored {
            Ok(()) => shared.hub.deliver(done.notes),
            Err(e) => {
                tracing::error!(error = %e, "store write failed; the batch is not acknowledged and will be retried");
                shared.hub.skip(done.notes.iter().map(|n| n.seq));
                self.requeue(done.retry);
                // The failed write dropped its ops, so these are (almost always) the only
                // holders: unwrapped, not copied.
                let mut notes: Vec<Notification> =
                    done.notes.into_iter().map(Arc::unwrap_or_clone).collect();
                notes.append(&mut self.notes);
                self.notes = notes;
                self.retry_at =
                    Some(tokio::time::Instant::now() + std::time::Duration::from_millis(100));
            }
        }
        answer(done.replies, &stored);
    }

    /// Puts a failed batch's ops back before the ones gathered since. A newer `Put` of the same
    /// battle keeps its (newer) record but takes the failed one's expected version: that is
    /// what the store still holds.
    fn requeue(&mut self, failed: Vec<StoreOp>) {
        let newer = std::mem::take(&mut self.ops);
        self.op_index.clear();
        let mut expected: HashMap<Arc<str>, Option<u64>> = HashMap::new();
        for op in failed {
            if let StoreOp::Put {
                battle,
                expected_version,
            } = &op
            {
                let superseded = newer
                    .iter()
                    .any(|n| matches!(n, StoreOp::Put { battle: b, .. } if b.id == battle.id));
                if superseded {
                    expected.insert(battle.id.clone(), *expected_version);
                    continue;
                }
            }
            self.push_op(op);
        }
        for mut op in newer {
            if let StoreOp::Put {
                battle,
                expected_version,
            } = &mut op
            {
                if let Some(e) = expected.get(&battle.id) {
                    *expected_version = *e;
                }
            }
            self.push_op(op);
        }
    }

    fn push_op(&mut self, op: StoreOp) {
        if let StoreOp::Put { battle, .. } = &op {
            self.op_index.insert(battle.id.clone(), self.ops.len());
        }
        self.ops.push(op);
    }
}

/// A shard's state behind a lock, and the wake-up of its task.
///
/// The shard task is the writer of its battles; in memory, a caller that finds the shard idle
/// (the lock free, no batch being written) applies its event right there, on its own task, under
/// the same lock: the result is the same as through the task, without the channel hop, the reply
/// channel and two task wake-ups. A caller that finds it busy queues the event for the task.
pub(crate) struct ShardCell {
    shard: std::sync::Mutex<Shard>,
    /// Rings when a caller queued a timer earlier than the one the task sleeps for.
    wake: tokio::sync::Notify,
}

impl ShardCell {
    pub(crate) fn new(shard: Shard) -> ShardCell {
        ShardCell {
            shard: std::sync::Mutex::new(shard),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `apply(shard, input, now)` on the caller's task when the shard is free and may take it
    /// ([`Shard::takes_inline`]); gives `input` back when the caller must queue it instead.
    /// Publishes and answers what it changed before returning, and wakes the task if its next
    /// timer moved earlier.
    pub(crate) fn inline<T, R>(
        &self,
        input: T,
        apply: impl FnOnce(&mut Shard, T, i64) -> R,
    ) -> Result<R, T> {
        let mut guard = match self.shard.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(input),
        };
        let shard = &mut *guard;
        if !shard.takes_inline() {
            return Err(input);
        }
        let now = shard.now();
        shard.forget_expired(now);
        let next_before = shard.queue.next_attention();
        let r = apply(shard, input, now);
        shard.finish_step();
        let next_after = shard.queue.next_attention();
        drop(guard);
        if next_after.is_some() && (next_before.is_none() || next_after < next_before) {
            self.wake.notify_one();
        }
        Ok(r)
    }

    /// The shard loop. Commands and timers are applied as they come, into the next batch; at
    /// most one batch is being written to the store at a time, and a batch's notifications and
    /// replies go out when its write is durable. So a slow write (an fsync stall) delays
    /// acknowledgements, never the timers: they fire on time and join the next batch.
    pub(crate) async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Command>) {
        let clock = self.lock().shared.clock.clone();
        let mut buf = Vec::with_capacity(256);
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            let (retry_at, writing) = {
                let s = self.lock();
                (s.retry_at, s.writing.is_some())
            };
            tokio::select! {
                biased;
                n = rx.recv_many(&mut buf, 256), if closing.is_none() => {
                    if n == 0 {
                        break;
                    }
                    let mut s = self.lock();
                    s.on_commands(&mut buf, &mut closing);
                    s.finish_step();
                }
                () = std::future::poll_fn(|cx| self.lock().queue.poll_due(cx, &*clock)),
                    if closing.is_none() => {
                    let mut s = self.lock();
                    s.fire_due();
                    s.finish_step();
                }
                stored = std::future::poll_fn(|cx| match &mut self.lock().writing {
                    Some(w) => w.write.as_mut().poll(cx),
                    None => Poll::Pending,
                }), if writing => {
                    let mut s = self.lock();
                    s.written(stored);
                    s.finish_step();
                }
                () = sleep_until_some(retry_at), if !writing => {
                    let mut s = self.lock();
                    s.retry_at = None;
                    s.finish_step();
                }
                () = self.wake.notified() => {}
            }
            if let Some(reply) = closing.take() {
                let done = {
                    let s = self.lock();
                    s.writing.is_none() && s.is_idle()
                };
                if done {
                    let _ = reply.send(());
                    break;
                }
                closing = Some(reply);
            }
        }
    }
}

/// The room links follow a battle's live rooms: they change when it comes to life or ends, when
/// its membership changes, and with Create (which names the invited rooms). A move between live
/// states (a re-arm) leaves them alone.
fn follow_rooms(
    part: &mut Part,
    slot: Slot,
    leavable: &crate::table::RoomKeys,
    fx: &Effects,
    cause: Cause,
    before: Option<State>,
) {
    let ended = part.at(slot).is_some_and(|b| b.state == State::Ended);
    if fx.rooms_changed
        || before.map(|s| s == State::Ended) != Some(ended)
        || cause == Cause::CreateWebhook
    {
        let was_live = before.is_some_and(|s| s != State::Ended);
        part.follow(slot, was_live, leavable);
    }
}

/// The battle's armed timer, if it is the one queued for `at_ms` with `generation` (a queued
/// entry that is not is stale).
fn armed(b: &Battle, at_ms: i64, generation: u32) -> Option<Timer> {
    b.timer
        .filter(|t| t.at_ms == at_ms && t.generation == generation)
}

/// Answers the callers of a batch.
fn answer(replies: Vec<Reply>, stored: &Result<(), crate::store::StoreError>) {
    for (reply, results) in replies {
        let results = match stored {
            Ok(()) => results,
            Err(e) => results
                .into_iter()
                .map(|r| r.and(Err(EngineError::Store(e.clone()))))
                .collect(),
        };
        let _ = reply.send(results);
    }
}
/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
