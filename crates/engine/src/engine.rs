//! The engine handle: start it, feed it events, query it, listen to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::battle::{BattleSnapshot, State};
use crate::clock::{Clock, TokioClock};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::notify::{Filter, Hub, Observer, ResumeTooOld, Subscription};
use crate::shard::{Command, ReplicaUpdate, Routed, Shard, ShardCell, Shared};
use crate::store::{EphemeralStore, Store, StoreError};
// A battle's shard is its part of the table: FNV-1a of the id, the same in every process.
use crate::table::{part_of as shard_of, Table};
use crate::transition::{Refusal, Rules};

/// What applying an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The kind of change.
    pub outcome: Outcome,
    /// The battle's state afterwards (`None` when no battle is involved).
    pub state: Option<State>,
    /// The battle's version afterwards.
    pub version: u64,
}

impl Applied {
    pub(crate) fn unchanged(outcome: Outcome, state: Option<State>, version: u64) -> Applied {
        Applied {
            outcome,
            state,
            version,
        }
    }
}

/// The kind of change an event made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new battle.
    New,
    /// The battle changed state.
    Transition,
    /// Fields changed within the state.
    Update,
    /// Accepted, nothing observable changed.
    Unchanged,
    /// The same callback was applied before; nothing changed.
    Duplicate,
    /// The battle was evicted after retention; within the dedupe horizon nothing changes.
    Evicted,
    /// A destroyed room that is in no live battle.
    NoBattle,
}

impl Outcome {
    /// The snake_case name (logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Transition => "transition",
            Outcome::Update => "update",
            Outcome::Unchanged => "unchanged",
            Outcome::Duplicate => "duplicate",
            Outcome::Evicted => "evicted",
            Outcome::NoBattle => "no_battle",
        }
    }
}

/// Why the engine did not apply an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The event is not valid (e.g. an empty battle id).
    Invalid(String),
    /// An app-side event was refused by the lifecycle rules.
    Refused(Refusal),
    /// The store failed: the event is not acknowledged.
    Store(StoreError),
    /// The engine is shut down.
    ShutDown,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Invalid(m) => write!(f, "invalid event: {m}"),
            EngineError::Refused(r) => write!(f, "{r}"),
            EngineError::Store(e) => write!(f, "{e}"),
            EngineError::ShutDown => write!(f, "the engine is shut down"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Engine configuration beyond the [`Rules`].
#[derive(Clone)]
pub struct EngineBuilder {
    rules: Rules,
    shards: usize,
    clock: Option<Arc<dyn Clock>>,
    store: Arc<dyn Store>,
    channel_capacity: usize,
    replay_capacity: usize,
    queue_capacity: usize,
    observers: Vec<Arc<dyn Observer>>,
}

impl Default for EngineBuilder {
    fn default() -> EngineBuilder {
        EngineBuilder {
            rules: Rules::default(),
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            clock: None,
            store: Arc::new(EphemeralStore),
            channel_capacity: 1024,
            replay_capacity: 0,
            queue_capacity: 4096,
            observers: Vec::new(),
        }
    }
}

impl EngineBuilder {
    /// The lifecycle rules (grace, tolerance, retention, dedupe horizon).
    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }
    /// How many shard tasks (default: the number of CPUs).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }
    /// The wall clock (default: [`TokioClock::system`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }
    /// The store (default: [`EphemeralStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Arc::new(store);
        self
    }
    /// Per-subscription buffer; a subscriber further behind is told it lagged (default 1024).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n;
        self
    }
    /// How many recent notifications are kept for resuming subscriptions (default 0: off).
    pub fn replay_capacity(mut self, n: usize) -> Self {
        self.replay_capacity = n;
        self
    }

    /// Registers an observer before the engine starts, so it also hears what recovery does
    /// (deadlines that passed while the process was down fire at once, with `late_ms`).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Loads the store, rebuilds every battle and timer, and starts the shard tasks. Must be
    /// called inside a tokio runtime.
    pub async fn start(self) -> Result<Engine, EngineError> {
        let started = std::time::Instant::now();
        let loaded = self.store.load().await.map_err(EngineError::Store)?;
        let load_ms = started.elapsed().as_millis() as u64;
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::system()));
        let stored = loaded.battles.len();
        let shared = Arc::new(Shared {
            table: Table::new(self.shards),
            hub: Hub::new(self.channel_capacity, self.replay_capacity, 0),
            clock,
            rules: self.rules,
            store: self.store,
            metrics: Metrics::default(),
            store_healthy: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        });
        shared.hub.restore(loaded.notifications, 0);
        let n = self.shards;
        let per_shard = by_shard(loaded.battles, loaded.evicted, n);
        let mut senders = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        // Rebuild the shards in parallel (one blocking task each): recovery of a large store is
        // bound by inserting battles, room links and timers.
        let mut building = Vec::with_capacity(n);
        for (part, (battles, evicted)) in per_shard.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            let shared = shared.clone();
            building.push(tokio::task::spawn_blocking(move || {
                Shard::new(shared, part, battles, evicted)
            }));
            senders.push(tx);
            receivers.push(rx);
        }
        let mut shards = Vec::with_capacity(n);
        for built in building {
            shards.push(
                built
                    .await
                    .map_err(|e| EngineError::Invalid(format!("rebuilding a shard failed: {e}")))?,
            );
        }
        for observer in self.observers {
            shared.hub.add_observer(observer);
        }
        let is_shared = shared.store.shared().is_some();
        let mut cells = Vec::with_capacity(n);
        for (shard, rx) in shards.into_iter().zip(receivers) {
            if is_shared {
                // Every round goes through the store: callers always queue.
                handles.push(tokio::spawn(shard.run_shared(rx)));
            } else {
                let cell = Arc::new(ShardCell::new(shard));
                handles.push(tokio::spawn(cell.clone().run(rx)));
                cells.push(cell);
            }
        }
        let follower = is_shared.then(|| tokio::spawn(follow(shared.clone(), senders.clone())));
        if stored > 0 {
            tracing::info!(
                battles = stored,
                load_ms,
                rebuild_ms = started.elapsed().as_millis() as u64 - load_ms,
                "recovered from the store"
            );
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                shared,
                senders,
                cells,
                handles: Mutex::new(handles),
                follower: Mutex::new(follower),
            }),
        })
    }
}

struct Inner {
    shared: Arc<Shared>,
    senders: Vec<mpsc::Sender<Command>>,
    /// The shards' state, for applying on the caller's task (empty on a shared store).
    cells: Vec<Arc<ShardCell>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// The change-feed follower, on a shared store.
    follower: Mutex<Option<JoinHandle<()>>>,
}

/// On a shared store: follows every instance's commits in the store's order, brings each
/// shard's replica up to date, then delivers the notifications (so a subscriber that reads
/// after a notification sees at least that state). Redis down: not ready, and it tries again.
async fn follow(shared: Arc<Shared>, senders: Vec<mpsc::Sender<Command>>) {
    let Some(store) = shared.store.shared() else {
        return;
    };
    let n = senders.len();
    let mut failing = false;
    let mut reload = false;
    while !shared.stopping.load(Ordering::Relaxed) {
        if reload {
            match shared.store.load().await {
                Ok(loaded) => {
                    resync(&senders, loaded).await;
                    tracing::info!("reloaded every battle from the shared store");
                    reload = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reloading from the shared store failed; retrying");
                    shared.store_healthy.store(false, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    continue;
                }
            }
        }
        let changes = match store.follow().await {
            Ok(changes) => changes,
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "following the shared store failed; retrying");
                }
                failing = true;
                shared.store_healthy.store(false, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
        };
        if failing {
            tracing::info!("following the shared store again");
            failing = false;
            shared.store_healthy.store(true, Ordering::Relaxed);
        }
        let mut per_shard: Vec<Vec<crate::store::Replicated>> = vec![Vec::new(); n];
        let mut notes = Vec::new();
        for c in changes {
            match c {
                crate::store::Replicated::Put(ref b) => per_shard[shard_of(&b.id, n)].push(c),
                crate::store::Replicated::Evict(ref id, _) => per_shard[shard_of(id, n)].push(c),
                crate::store::Replicated::Notify(note) => notes.push(*note),
                crate::store::Replicated::Reload => reload = true,
            }
        }
        if reload {
            // Changes were lost: the whole replica is reloaded before following on (the
            // subscribers miss the lost notifications; a lagging one re-reads a snapshot).
            continue;
        }
        let mut acks = Vec::new();
        for (tx, changes) in senders.iter().zip(per_shard) {
            if changes.is_empty() {
                continue;
            }
            let (done, ack) = oneshot::channel();
            let update = ReplicaUpdate::Changes(changes);
            if tx.send(Command::Replica { update, done }).await.is_ok() {
                acks.push(ack);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        if !notes.is_empty() {
            shared.hub.deliver_followed(notes);
        }
    }
}

/// What a store holds of one shard: its battles and its evicted ids.
type ShardState = (Vec<crate::battle::Battle>, Vec<(Arc<str>, i64)>);

/// Splits what a store holds among `n` shards.
fn by_shard(
    battles: Vec<crate::battle::Battle>,
    evicted: Vec<(Arc<str>, i64)>,
    n: usize,
) -> Vec<ShardState> {
    let mut per_shard: Vec<ShardState> = (0..n).map(|_| (Vec::new(), Vec::new())).collect();
    for b in battles {
        per_shard[shard_of(&b.id, n)].0.push(b);
    }
    for (id, at) in evicted {
        per_shard[shard_of(&id, n)].1.push((id, at));
    }
    per_shard
}

/// Makes every shard's replica what the store holds (`loaded`), after the change feed lost
/// changes: battles the store no longer has are dropped, the others adopted.
async fn resync(senders: &[mpsc::Sender<Command>], loaded: crate::store::Loaded) {
    let per_shard = by_shard(loaded.battles, loaded.evicted, senders.len());
    let mut acks = Vec::new();
    for (tx, (battles, evicted)) in senders.iter().zip(per_shard) {
        let (done, ack) = oneshot::channel();
        let update = ReplicaUpdate::Reset(battles, evicted);
        if tx.send(Command::Replica { update, done }).await.is_ok() {
            acks.push(ack);
        }
    }
    for ack in acks {
        let _ = ack.await;
    }
}

/// A running engine. Cheap to clone; every clone is the same engine.
///
/// ```
/// use livebattle_engine::{Created, Engine, Event, Outcome, State, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = Engine::builder()
///     .clock(TokioClock::starting_at(1_739_954_005_000))
///     .start()
///     .await
///     .unwrap();
/// let applied = engine
///     .apply(Event::Created(Created {
///         battle_id: "b1".into(),
///         from_room: Some("pk-3".into()),
///         to_rooms: vec!["pk-5".into()],
///         duration_ms: Some(60_000),
///         need_response: Some(false),
///         event_time_ms: Some(1_739_954_005_000),
///         ..Default::default()
///     }))
///     .await
///     .unwrap();
/// assert_eq!(applied.outcome, Outcome::New);
/// let battle = engine.battle("b1").unwrap();
/// assert_eq!(battle.state, State::Running);
/// assert_eq!(battle.ends_at_ms, Some(1_739_954_065_000));
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The engine's wall clock, Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.inner.shared.clock.now_ms()
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.inner.shared.rules
    }

    fn route(&self, event: Event) -> Result<Option<(usize, Routed)>, EngineError> {
        let n = self.inner.senders.len();
        match &event {
            Event::RoomDestroyed(d) => match self.inner.shared.table.room_battle(&d.room_id) {
                Some(id) => Ok(Some((shard_of(&id, n), (Some(id), event)))),
                None => Ok(None),
            },
            other => match other.battle_id() {
                Some(id) if !id.is_empty() => Ok(Some((shard_of(id, n), (None, event)))),
                _ => Err(EngineError::Invalid("empty battle id".into())),
            },
        }
    }

    /// Applies one event. Returns once the event's effect is applied, stored and published.
    pub async fn apply(&self, event: Event) -> Result<Applied, EngineError> {
        let Some((shard, mut routed)) = self.route(event)? else {
            return Ok(Applied::unchanged(Outcome::NoBattle, None, 0));
        };
        if let Some(cell) = self.inner.cells.get(shard) {
            match cell.inline(routed, |s, (id, ev), now| s.on_event(id, ev, now)) {
                Ok(applied) => return applied,
                Err(back) => routed = back,
            }
        }
        let (tx, rx) = oneshot::channel();
        self.inner.senders[shard]
            .send(Command::Apply {
                items: vec![routed],
                reply: tx,
            })
            .await
            .map_err(|_| EngineError::ShutDown)?;
        rx.await
            .map_err(|_| EngineError::ShutDown)?
            .pop()
            .unwrap_or(Err(EngineError::ShutDown))
    }

    /// Applies many events with one round trip per shard; results come back in input order.
    /// Events of one battle are applied in input order.
    pub async fn apply_batch(&self, events: Vec<Event>) -> Vec<Result<Applied, EngineError>> {
        let n = self.inner.senders.len();
        let mut results: Vec<Option<Result<Applied, EngineError>>> = vec![None; events.len()];
        let mut per_shard: Vec<(Vec<usize>, Vec<Routed>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, ev) in events.into_iter().enumerate() {
            match self.route(ev) {
                Ok(Some((s, routed))) => {
                    per_shard[s].0.push(i);
                    per_shard[s].1.push(routed);
                }
                Ok(None) => results[i] = Some(Ok(Applied::unchanged(Outcome::NoBattle, None, 0))),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut waits = Vec::new();
        for (s, (idx, mut items)) in per_shard.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            if let Some(cell) = self.inner.cells.get(s) {
                match cell.inline(items, Shard::apply_all) {
                    Ok(rs) => {
                        for (i, r) in idx.into_iter().zip(rs) {
                            results[i] = Some(r);
                        }
                        continue;
                    }
                    Err(back) => items = back,
                }
            }
            let (tx, rx) = oneshot::channel();
            let sent = self.inner.senders[s]
                .send(Command::Apply { items, reply: tx })
                .await;
            waits.push((idx, sent.ok().map(|_| rx)));
        }
        for (idx, rx) in waits {
            let got = match rx {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            match got {
                Some(rs) => {
                    for (i, r) in idx.into_iter().zip(rs) {
                        results[i] = Some(r);
                    }
                }
                None => {
                    for i in idx {
                        results[i] = Some(Err(EngineError::ShutDown));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(EngineError::ShutDown)))
            .collect()
    }

    /// One battle's snapshot.
    pub fn battle(&self, battle_id: &str) -> Option<BattleSnapshot> {
        let now = self.now_ms();
        self.inner.shared.table.with(battle_id, |b| b.snapshot(now))
    }

    /// How many battles are held (live and retained).
    pub fn battle_count(&self) -> usize {
        self.inner.shared.table.len()
    }

    /// Battles matching `state` and/or `room`, ordered by battle id, at most `limit` after the
    /// id `after` (for paging).
    pub fn battles(
        &self,
        state: Option<State>,
        room: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<BattleSnapshot> {
        let now = self.now_ms();
        let table = &self.inner.shared.table;
        let mut ids: Vec<Arc<str>> = Vec::new();
        for i in 0..table.parts() {
            ids.extend(
                table
                    .read(i)
                    .iter()
                    .filter(|b| {
                        state.is_none_or(|s| b.state == s)
                            && room.is_none_or(|r| b.rooms().contains(&r))
                            && after.is_none_or(|a| &*b.id > a)
                    })
                    .map(|b| b.id.clone()),
            );
        }
        // Only the first `limit` in id order are wanted: select them (linear), then sort only
        // those — a snapshot's 10,000 of 400,000 retained battles, say, is not a full sort.
        if ids.len() > limit && limit > 0 {
            ids.select_nth_unstable(limit - 1);
        }
        ids.truncate(limit);
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| table.with(id, |b| b.snapshot(now)))
            .collect()
    }

    /// The live battle a room is in now.
    pub fn room_battle(&self, room_id: &str) -> Option<BattleSnapshot> {
        let id = self.inner.shared.table.room_battle(room_id)?;
        self.battle(&id)
    }

    /// Registers a synchronous observer of every notification.
    pub fn observe(&self, observer: impl Observer) {
        self.inner.shared.hub.add_observer(Arc::new(observer));
    }

    /// Subscribes to notifications from now on.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        self.inner.shared.hub.subscribe_live(filter)
    }

    /// Subscribes, first replaying every notification after `after_seq` (needs
    /// [`EngineBuilder::replay_capacity`]); refuses when they are no longer all kept.
    pub fn subscribe_after(
        &self,
        filter: Filter,
        after_seq: u64,
    ) -> Result<Subscription, ResumeTooOld> {
        self.inner.shared.hub.subscribe(filter, Some(after_seq))
    }

    /// The sequence number of the latest notification.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.hub.last_seq()
    }

    /// How many notifications a subscription with `filter` may fall behind before it gets
    /// [`Delivery::Lagged`](crate::Delivery::Lagged): [`EngineBuilder::channel_capacity`] for
    /// every battle, at most 64 for one battle or room.
    pub fn lag_limit(&self, filter: &Filter) -> usize {
        self.inner.shared.hub.lag_limit(filter)
    }

    /// How many async subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        self.inner.shared.hub.subscriber_count()
    }

    /// Live metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// The store's own figures for monitoring (see [`Store::figures`]).
    pub fn store_figures(&self) -> Vec<crate::store::StoreFigure> {
        self.inner.shared.store.figures()
    }

    /// Whether the engine takes events and its store is writable: false once shutdown began,
    /// when a shard task is gone, or while the latest store write failed (until one succeeds).
    pub fn is_ready(&self) -> bool {
        let shared = &self.inner.shared;
        !shared.stopping.load(Ordering::Relaxed)
            && shared.store_healthy.load(Ordering::Relaxed)
            && !self.inner.senders.iter().any(|s| s.is_closed())
    }

    /// Stops the shard tasks after the work already queued (and its store writes) is done.
    pub async fn shutdown(&self) {
        self.inner.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(f) = self.inner.follower.lock().ok().and_then(|mut f| f.take()) {
            f.abort();
        }
        for tx in &self.inner.senders {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Shutdown { reply }).await.is_ok() {
                let _ = rx.await;
            }
        }
        let handles = match self.inner.handles.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.await;
        }
    }
}
