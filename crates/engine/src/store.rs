//! The store seam: where battles and their timers (as absolute deadlines) are kept durably.
//!
//! The engine writes each shard's changes as one batch (group commit) and acknowledges the events
//! of the batch only after [`Store::write`] returned. A store is given the whole record, with its
//! version, so a shared store (Redis) can compare-and-set; timers are part of the record
//! ([`Battle::timer`]: absolute Unix-ms deadline + generation) and are rebuilt from it on start.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::battle::Battle;
use crate::notify::Notification;

/// A boxed future, for dyn-compatible async store methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One change in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a battle. `expected_version` is the version the writer read
    /// (`None`: the battle was new to the writer).
    Put {
        /// The full record.
        battle: Arc<Battle>,
        /// Compare-and-set guard for shared stores.
        expected_version: Option<u64>,
    },
    /// Retention is over: delete the battle, remember its id until `forget_at_ms` (dedupe).
    Evict {
        /// The battle.
        battle_id: Arc<str>,
        /// Unix ms after which the id may be forgotten.
        forget_at_ms: i64,
    },
    /// The dedupe horizon of an evicted id is over.
    Forget {
        /// The battle.
        battle_id: Arc<str>,
    },
    /// A notification, kept for resuming subscriptions across a restart; notifications with a
    /// `seq` below `keep_from_seq` may be dropped.
    Notify {
        /// The notification (with its `seq`).
        notification: Arc<Notification>,
        /// The oldest `seq` still worth keeping.
        keep_from_seq: u64,
    },
}

/// Everything a store holds, as loaded at start.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Every live or retained battle.
    pub battles: Vec<Battle>,
    /// Evicted ids still inside their dedupe horizon, with the Unix ms they may be forgotten.
    pub evicted: Vec<(Arc<str>, i64)>,
    /// The most recent notifications kept, any order.
    pub notifications: Vec<Notification>,
}

/// A store error, with what and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// One figure a store reports for monitoring (the server renders it on `/metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFigure {
    /// The metric's name (`livebattle_store_…`).
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// A counter (only grows) or a gauge.
    pub counter: bool,
    /// Its value now.
    pub value: u64,
}

/// Where the engine keeps its state. Implementations must make a `write` durable before it
/// returns `Ok` and apply a batch atomically.
pub trait Store: Send + Sync + 'static {
    /// Loads everything (at start).
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>>;
    /// Applies one batch of changes, atomically and durably.
    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether writes are worth making (false for the ephemeral store, so the engine skips
    /// building batches).
    fn is_persistent(&self) -> bool {
        true
    }
    /// The store's shared side when several engines (instances) work on it at once (Redis);
    /// `None` for a store only this engine writes.
    fn shared(&self) -> Option<&dyn SharedStore> {
        None
    }
    /// The store's own figures for monitoring (none by default).
    fn figures(&self) -> Vec<StoreFigure> {
        Vec::new()
    }
}

/// A battle as a shared store holds it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A live or retained battle.
    Present(Box<Battle>),
    /// Evicted; its id is remembered (dedupe) until this Unix ms.
    Evicted(i64),
    /// Never seen (or forgotten).
    Absent,
}

/// A timer an engine wants to fire: it asks the shared store for the right to (a claim with a
/// lease), so exactly one instance fires it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The battle.
    pub battle_id: Arc<str>,
    /// The timer's generation.
    pub generation: u32,
}

/// What [`SharedStore::fetch`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// One per asked id, in order.
    pub battles: Vec<Stored>,
    /// One per claim, in order: `Ok(())` when this engine holds it now, `Err(ms)` when another
    /// instance holds it for `ms` more.
    pub claims: Vec<Result<(), u64>>,
}

/// What a [`SharedStore::commit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Every op applied, atomically; the batch's notifications were numbered in order, the
    /// last one with this `seq` (0 when the batch had none).
    Done(u64),
    /// Another instance changed one of these battles first: nothing was applied.
    Conflict(Vec<Arc<str>>),
}

/// A change committed by any instance, in the store's one order (what followers replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// A battle's new record.
    Put(Box<Battle>),
    /// A battle was evicted; dedupe until the Unix ms.
    Evict(Arc<str>, i64),
    /// A notification, with its store-assigned `seq`.
    Notify(Box<Notification>),
    /// The store lost changes this instance had not followed yet (its change feed was trimmed
    /// past them): the replica must be reloaded from the store ([`Store::load`]); following
    /// then goes on from where that load read.
    Reload,
}

/// The extra side of a store several engines share: each engine keeps a replica of every
/// battle (for queries, subscriptions and its timer queue), reads the stored records before it
/// applies events to them, commits with compare-and-set, claims timers before firing them, and
/// follows every instance's commits in one order. `seq`s are assigned by the store.
pub trait SharedStore: Send + Sync {
    /// The stored state of `ids` (in order), and claims on due timers (a lease), in one round
    /// trip.
    fn fetch(
        &self,
        ids: Vec<Arc<str>>,
        claims: Vec<Claim>,
    ) -> BoxFuture<'_, Result<Fetched, StoreError>>;
    /// Applies a batch atomically if every `Put`'s expected version still holds (else applies
    /// nothing and names the conflicting battles); numbers its `Notify` ops that come with
    /// `seq` 0 (one engine-wide sequence for every instance).
    fn commit(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<Commit, StoreError>>;
    /// The next committed changes after the last ones returned (the first call continues from
    /// where [`Store::load`] read); waits up to about a second, and returns empty if nothing
    /// came. Returns [`Replicated::Reload`] alone when changes after the last ones returned
    /// are gone.
    fn follow(&self) -> BoxFuture<'_, Result<Vec<Replicated>, StoreError>>;
}

/// A battle's version after a batch (`None`: no longer stored).
pub type VersionChange = (Arc<str>, Option<u64>);

/// The version changes a batch makes (`None`: the battle is no longer stored), if every `Put`'s
/// expected version holds ([`check_version`]) against `stored` with the batch's own earlier ops
/// on top — the compare-and-set rule of a batch, for every store. The outer `Err` is `stored`'s
/// own failure (a read that failed); the inner one the first conflict.
///
/// ```
/// use std::sync::Arc;
/// use livebattle_engine::store::batch_versions;
/// use livebattle_engine::{Battle, State, StoreOp};
///
/// let put = |version, expected_version| {
///     let mut battle = Battle::new("b", State::Running, 0);
///     battle.version = version;
///     StoreOp::Put { battle: Arc::new(battle), expected_version }
/// };
/// let nothing_stored = |_: &str| Ok::<_, ()>(None);
/// let changes = batch_versions(&[put(1, None), put(2, Some(1))], nothing_stored);
/// assert_eq!(changes, Ok(Ok(vec![(Arc::from("b"), Some(2))])));
/// assert!(batch_versions(&[put(2, Some(1))], nothing_stored).unwrap().is_err());
/// ```
pub fn batch_versions<E>(
    ops: &[StoreOp],
    mut stored: impl FnMut(&str) -> Result<Option<u64>, E>,
) -> Result<Result<Vec<VersionChange>, StoreError>, E> {
    let mut batch: HashMap<&str, (&Arc<str>, Option<u64>), crate::shard::Hasher> =
        HashMap::default();
    for op in ops {
        match op {
            StoreOp::Put {
                battle,
                expected_version,
            } => {
                let now = match batch.get(&*battle.id) {
                    Some(&(_, v)) => v,
                    None => stored(&battle.id)?,
                };
                if let Err(conflict) = check_version(&battle.id, now, *expected_version) {
                    return Ok(Err(conflict));
                }
                batch.insert(&battle.id, (&battle.id, Some(battle.version)));
            }
            StoreOp::Evict { battle_id, .. } => {
                batch.insert(battle_id, (battle_id, None));
            }
            StoreOp::Forget { .. } | StoreOp::Notify { .. } => {}
        }
    }
    Ok(Ok(batch
        .into_values()
        .map(|(id, v)| (id.clone(), v))
        .collect()))
}

/// The compare-and-set rule every store applies to a `Put`: the stored version must be the
/// expected one, and `None` expects no stored battle.
pub fn check_version(
    battle_id: &str,
    stored: Option<u64>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    if stored == expected {
        return Ok(());
    }
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
    Err(StoreError(format!(
        "version conflict on battle {battle_id:?}: stored {}, expected {}",
        show(stored),
        show(expected)
    )))
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        (**self).load()
    }
    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).write(ops)
    }
    fn is_persistent(&self) -> bool {
        (**self).is_persistent()
    }
    fn shared(&self) -> Option<&dyn SharedStore> {
        (**self).shared()
    }
    fn figures(&self) -> Vec<StoreFigure> {
        (**self).figures()
    }
}

/// Keeps nothing: the engine's own maps are the only copy. The default.
#[derive(Clone, Debug, Default)]
pub struct EphemeralStore;

impl Store for EphemeralStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async { Ok(Loaded::default()) })
    }
    fn write(&self, _ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn is_persistent(&self) -> bool {
        false
    }
}

/// A store in process memory that keeps full records: it outlives an engine, so a new engine
/// started on it recovers every battle and timer (tests, and the reference for the contract).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    battles: HashMap<Arc<str>, Arc<Battle>>,
    evicted: HashMap<Arc<str>, i64>,
    notifications: std::collections::BTreeMap<u64, Arc<Notification>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many battles it holds.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.battles.len()).unwrap_or(0)
    }

    /// Whether it holds no battle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async move {
            let g = self
                .inner
                .lock()
                .map_err(|_| StoreError("memory store poisoned".into()))?;
            Ok(Loaded {
                battles: g.battles.values().map(|b| (**b).clone()).collect(),
                evicted: g.evicted.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                notifications: g.notifications.values().map(|n| (**n).clone()).collect(),
            })
        })
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut g = self
                .inner
                .lock()
                .map_err(|_| StoreError("memory store poisoned".into()))?;
            let stored =
                |id: &str| Ok::<_, std::convert::Infallible>(g.battles.get(id).map(|b| b.version));
            batch_versions(&ops, stored).unwrap_or_else(|never| match never {})?;
            for op in ops {
                match op {
                    StoreOp::Put { battle, .. } => {
                        g.evicted.remove(&battle.id);
                        g.battles.insert(battle.id.clone(), battle);
                    }
                    StoreOp::Evict {
                        battle_id,
                        forget_at_ms,
                    } => {
                        g.battles.remove(&battle_id);
                        g.evicted.insert(battle_id, forget_at_ms);
                    }
                    StoreOp::Forget { battle_id } => {
                        g.evicted.remove(&battle_id);
                    }
                    StoreOp::Notify {
                        notification,
                        keep_from_seq,
                    } => {
                        g.notifications.insert(notification.seq, notification);
                        g.notifications = g.notifications.split_off(&keep_from_seq);
                    }
                }
            }
            Ok(())
        })
    }
}

/// What [`copy`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Battles (live or retained).
    pub battles: usize,
    /// Evicted ids still inside their dedupe horizon.
    pub evicted: usize,
    /// Notifications kept for resumption.
    pub notifications: usize,
}

/// The most operations [`copy`] writes in one batch.
const COPY_BATCH: usize = 10_000;

/// Copies everything `from` holds into `to` (which should hold nothing: its battles must be
/// new to it), in batches of 10,000, then loads `to` back and checks that it holds the same —
/// every battle equal, the same evicted ids and notifications. For moving a data dir from one
/// store to another (`livebattle copy-store`).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use livebattle_engine::store::{copy, Copied, MemoryStore, Store, StoreOp};
/// use livebattle_engine::{Battle, State};
/// let from = MemoryStore::default();
/// let battle = Battle::new("b-1", State::Running, 1_739_954_005_000);
/// from.write(vec![StoreOp::Put { battle: battle.into(), expected_version: None }]).await?;
/// let to = MemoryStore::default();
/// assert_eq!(copy(&from, &to).await?, Copied { battles: 1, ..Copied::default() });
/// # Ok::<(), livebattle_engine::StoreError>(())
/// # }).unwrap();
/// ```
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, StoreError> {
    let loaded = from.load().await?;
    let keep_from_seq = loaded
        .notifications
        .iter()
        .map(|n| n.seq)
        .min()
        .unwrap_or(0);
    let ops = loaded
        .battles
        .iter()
        .map(|b| StoreOp::Put {
            battle: Arc::new(b.clone()),
            expected_version: None,
        })
        .chain(loaded.evicted.iter().map(|(id, at)| StoreOp::Evict {
            battle_id: id.clone(),
            forget_at_ms: *at,
        }))
        .chain(loaded.notifications.iter().map(|n| StoreOp::Notify {
            notification: Arc::new(n.clone()),
            keep_from_seq,
        }));
    let mut batch = Vec::with_capacity(COPY_BATCH);
    for op in ops {
        batch.push(op);
        if batch.len() == COPY_BATCH {
            to.write(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        to.write(batch).await?;
    }
    let copied = to.load().await?;
    same_contents(loaded, copied)
}

/// `Ok` with the counts when `b` holds what `a` holds (orders aside).
fn same_contents(mut a: Loaded, mut b: Loaded) -> Result<Copied, StoreError> {
    for l in [&mut a, &mut b] {
        l.battles.sort_by(|x, y| x.id.cmp(&y.id));
        l.evicted.sort();
        l.notifications.sort_by_key(|n| n.seq);
    }
    let differs = |what: &str| {
        Err(StoreError(format!(
            "the copy does not read back the same {what}: the source holds {}, {} evicted ids and {} notifications, the copy {}, {} and {}",
            a.battles.len(),
            a.evicted.len(),
            a.notifications.len(),
            b.battles.len(),
            b.evicted.len(),
            b.notifications.len()
        )))
    };
    if a.battles != b.battles {
        return differs("battles");
    }
    if a.evicted != b.evicted {
        return differs("evicted ids");
    }
    if a.notifications != b.notifications {
        return differs("notifications");
    }
    Ok(Copied {
        battles: a.battles.len(),
        evicted: a.evicted.len(),
        notifications: a.notifications.len(),
    })
}
