//! Notifications and who hears them: synchronous observers, async subscriptions (all battles,
//! one battle, one room) and a replay ring for gapless resumption.
//!
//! Every notification gets the next value of one engine-wide sequence, under one lock, in the
//! order it is published; so `seq` is strictly increasing per battle and across battles, and a
//! subscriber that resumes after `seq` N misses nothing and sees nothing twice.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use dashmap::DashMap;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::battle::{BattleSnapshot, State};
use crate::event::Cause;

mod ring;

pub(crate) use ring::Packed;
use ring::Ring;

/// Where a notification moved a battle: a new state, or `"update"` (same state, fields changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new state.
    State(State),
    /// The same state, with fields changed (serialised as `"update"`).
    Update,
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::State(st) => s.serialize_str(st.as_str()),
            Target::Update => s.serialize_str("update"),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        if s == "update" {
            return Ok(Target::Update);
        }
        State::parse(&s)
            .map(Target::State)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown target {s:?}")))
    }
}

/// One change of one battle: everything a countdown UI needs without another query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Engine-wide sequence number (strictly increasing, also per battle).
    pub seq: u64,
    /// The previous state; `None` when the battle is new.
    pub from: Option<State>,
    /// The new state, or `Update`.
    pub to: Target,
    /// What caused it.
    pub cause: Cause,
    /// For a timer that fired late (e.g. after a restart), by how many ms.
    pub late_ms: Option<u64>,
    /// The battle after the change (with `server_time_ms`, `next_deadline_ms`, reason and
    /// scores).
    #[serde(flatten)]
    pub battle: BattleSnapshot,
}

/// A [`Notification`]'s fields as a plain tuple, in declaration order: the form binary encodings
/// (postcard) store, since they cannot read back the flattened battle of the JSON form.
pub type NotificationFields<B> = (u64, Option<State>, Target, Cause, Option<u64>, B);

impl Notification {
    /// Its fields, borrowed, for encoding.
    pub fn fields(&self) -> NotificationFields<&BattleSnapshot> {
        (
            self.seq,
            self.from,
            self.to,
            self.cause,
            self.late_ms,
            &self.battle,
        )
    }

    /// The notification these fields describe.
    pub fn from_fields(fields: NotificationFields<BattleSnapshot>) -> Notification {
        let (seq, from, to, cause, late_ms, battle) = fields;
        Notification {
            seq,
            from,
            to,
            cause,
            late_ms,
            battle,
        }
    }
}

/// A synchronous, in-process observer. Called on the engine's shard task in `seq` order; keep it
/// fast (hand heavy work to a channel).
pub trait Observer: Send + Sync + 'static {
    /// Called once per notification.
    fn notify(&self, n: &Notification);
}

impl<F: Fn(&Notification) + Send + Sync + 'static> Observer for F {
    fn notify(&self, n: &Notification) {
        self(n)
    }
}

/// Which notifications a subscription wants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Every battle.
    All,
    /// One battle.
    Battle(String),
    /// Battles involving one room.
    Room(String),
}

/// What a subscription yields.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// The next notification.
    Notification(Arc<Notification>),
    /// The subscriber fell behind and `missed` notifications were dropped for it: re-read a
    /// snapshot (the engine never slows down for a slow subscriber).
    Lagged {
        /// How many were dropped.
        missed: u64,
    },
}

/// A live stream of notifications (`futures_core::Stream`).
pub struct Subscription {
    replay: VecDeque<Arc<Notification>>,
    live: BroadcastStream<Arc<Notification>>,
    filter: Filter,
    after_seq: u64,
    /// The per-battle or per-room channel map this subscription listens through, to let go of
    /// the channel when it is the last listener.
    keyed: Option<Arc<Keyed>>,
}

/// Per-battle or per-room broadcast channels, by key.
type Keyed = DashMap<Box<str>, broadcast::Sender<Arc<Notification>>>;

impl Drop for Subscription {
    /// The last subscriber of a battle or room takes its channel with it (a room that never sees
    /// another battle would otherwise keep it for good).
    fn drop(&mut self) {
        let key = match &self.filter {
            Filter::Battle(k) | Filter::Room(k) => k.as_str(),
            Filter::All => return,
        };
        if let Some(map) = &self.keyed {
            // This subscription's receiver is still alive here: it is the last when it is alone.
            map.remove_if(key, |_, tx| tx.receiver_count() <= 1);
        }
    }
}

impl Subscription {
    /// The next delivery; `None` once the engine shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        if let Some(n) = this.replay.pop_front() {
            this.after_seq = n.seq;
            return Poll::Ready(Some(Delivery::Notification(n)));
        }
        loop {
            match Pin::new(&mut this.live).poll_next(cx) {
                Poll::Ready(Some(Ok(n))) => {
                    // Broadcast channels per battle/room already filter; `All` takes everything.
                    // Skip what the replay already delivered.
                    if n.seq <= this.after_seq || !matches_filter(&this.filter, &n) {
                        continue;
                    }
                    this.after_seq = n.seq;
                    return Poll::Ready(Some(Delivery::Notification(n)));
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    return Poll::Ready(Some(Delivery::Lagged { missed }))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn matches_filter(filter: &Filter, n: &Notification) -> bool {
    match filter {
        Filter::All => true,
        Filter::Battle(id) => *n.battle.battle_id == **id,
        Filter::Room(room) => {
            n.battle.from_room.as_deref() == Some(room.as_str())
                || n.battle.to_rooms.iter().any(|r| **r == **room)
                || n.battle.participants.iter().any(|p| *p.room_id == **room)
        }
    }
}

/// Resuming after a sequence number the replay ring no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeTooOld {
    /// The oldest sequence number still replayable (0 when nothing is).
    pub oldest_available: u64,
}

pub(crate) struct Hub {
    inner: Mutex<HubInner>,
    /// Someone listens, or listened once (set on the first observer or subscription): until
    /// then the shards build no notification, and only pack one for the replay ring if it is on.
    live: std::sync::atomic::AtomicBool,
    all: broadcast::Sender<Arc<Notification>>,
    by_battle: Arc<Keyed>,
    by_room: Arc<Keyed>,
    observers: RwLock<Vec<Arc<dyn Observer>>>,
    channel_capacity: usize,
    ring_capacity: usize,
}

struct HubInner {
    /// The last delivered seq.
    last_seq: u64,
    /// The last reserved seq (≥ `last_seq`).
    reserved: u64,
    /// Numbered but not yet deliverable (an earlier number is still being stored); `None` marks
    /// a number whose batch failed to store, which is skipped.
    waiting: std::collections::BTreeMap<u64, Option<Arc<Notification>>>,
    ring: Ring,
}

impl Hub {
    pub(crate) fn new(channel_capacity: usize, ring_capacity: usize, last_seq: u64) -> Hub {
        let channel_capacity = channel_capacity.max(1);
        Hub {
            inner: Mutex::new(HubInner {
                last_seq,
                reserved: last_seq,
                waiting: std::collections::BTreeMap::new(),
                ring: Ring::new(ring_capacity),
            }),
            live: std::sync::atomic::AtomicBool::new(false),
            all: broadcast::channel(channel_capacity).0,
            by_battle: Arc::default(),
            by_room: Arc::default(),
            observers: RwLock::new(Vec::new()),
            channel_capacity,
            ring_capacity,
        }
    }

    /// Whether an observer or a subscription would see a notification (if not, the shard builds
    /// none: it packs one for the replay ring, or skips it when the ring is off).
    pub(crate) fn has_live_audience(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn gained_audience(&self) {
        self.live.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many notifications a subscription with `filter` may fall behind before it lags.
    pub(crate) fn lag_limit(&self, filter: &Filter) -> usize {
        match filter {
            Filter::All => self.channel_capacity,
            Filter::Battle(_) | Filter::Room(_) => self.channel_capacity.min(KEYED_CAPACITY),
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.inner.lock().map(|g| g.last_seq).unwrap_or(0)
    }

    /// Numbers the notifications of one batch (reserving the next `seq`s) without delivering
    /// them: a shard numbers, stores, then [`Hub::deliver`]s. Shards store concurrently; delivery
    /// waits for every lower number, so delivery order is always `seq` order.
    pub(crate) fn number(&self, notes: &mut [Notification]) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for n in notes.iter_mut() {
            g.reserved += 1;
            n.seq = g.reserved;
        }
    }

    /// Delivers numbered notifications (observers, subscriptions, replay ring) once every lower
    /// number was delivered or skipped.
    pub(crate) fn deliver(&self, batch: Vec<Arc<Notification>>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for n in batch {
            // (On a shared store the change feed may have delivered it already.)
            if n.seq > g.last_seq {
                g.reserved = g.reserved.max(n.seq);
                g.waiting.insert(n.seq, Some(n));
            }
        }
        self.drain(&mut g);
    }

    /// Gives up numbers whose batch could not be stored (its changes will be renumbered).
    pub(crate) fn skip(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for seq in seqs {
            g.waiting.insert(seq, None);
        }
        self.drain(&mut g);
    }

    fn drain(&self, g: &mut HubInner) {
        loop {
            let next = g.last_seq + 1;
            let Some(entry) = g.waiting.remove(&next) else {
                break;
            };
            g.last_seq = next;
            if let Some(n) = entry {
                self.deliver_one(g, &n);
            }
        }
    }

    /// Delivers notifications from a shared store's change feed, which holds every instance's
    /// notifications in `seq` order. A number already delivered is ignored. Whatever lower
    /// number is still missing when a feed entry arrives can no longer come (the feed is in
    /// order; it was trimmed past this follower): it is skipped, with a warning.
    pub(crate) fn deliver_followed(&self, batch: Vec<Notification>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for n in batch {
            if n.seq <= g.last_seq {
                continue;
            }
            while let Some((&seq, _)) = g.waiting.first_key_value() {
                if seq >= n.seq {
                    break;
                }
                let entry = g.waiting.remove(&seq);
                g.last_seq = seq;
                if let Some(Some(w)) = entry {
                    self.deliver_one(&mut g, &w);
                }
            }
            if g.last_seq + 1 < n.seq {
                if g.last_seq > 0 {
                    tracing::warn!(
                        from = g.last_seq + 1,
                        to = n.seq - 1,
                        "notifications missing from the shared store's feed; skipped"
                    );
                }
                g.last_seq = n.seq - 1;
            }
            g.reserved = g.reserved.max(n.seq);
            g.waiting.insert(n.seq, Some(Arc::new(n)));
            self.drain(&mut g);
        }
    }

    /// Numbers and delivers at once (when nothing is stored in between).
    pub(crate) fn publish(&self, batch: Vec<Notification>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for mut n in batch {
            g.reserved += 1;
            n.seq = g.reserved;
            self.publish_one(&mut g, n);
        }
        self.drain(&mut g);
    }

    /// [`Hub::publish`] for notifications packed for the replay ring alone: numbered and kept
    /// packed, or built and delivered if someone started listening since they were packed.
    /// Empties `packed`.
    pub(crate) fn publish_packed(&self, packed: &mut Packed) {
        // Taken first, so that a panicking observer cannot leave them to be published again
        // under new numbers; the buffers come back (emptied) for the next batch.
        let mut taken = std::mem::take(packed);
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.has_live_audience();
        for bytes in taken.iter() {
            g.reserved += 1;
            let seq = g.reserved;
            if !live && g.waiting.is_empty() && seq == g.last_seq + 1 {
                g.last_seq = seq;
                g.ring.push_packed(seq, bytes);
            } else {
                match ring::unpack(seq, bytes) {
                    Some(n) => self.publish_one(&mut g, n),
                    None => {
                        g.waiting.insert(seq, None);
                    }
                }
            }
        }
        self.drain(&mut g);
        drop(g);
        taken.clear();
        *packed = taken;
    }

    fn publish_one(&self, g: &mut HubInner, n: Notification) {
        if g.waiting.is_empty() && n.seq == g.last_seq + 1 {
            g.last_seq = n.seq;
            self.deliver_one(g, &Arc::new(n));
        } else {
            g.waiting.insert(n.seq, Some(Arc::new(n)));
        }
    }

    fn deliver_one(&self, g: &mut HubInner, n: &Arc<Notification>) {
        if let Ok(obs) = self.observers.read() {
            for o in obs.iter() {
                o.notify(n);
            }
        }
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(n.clone());
        }
        send_keyed(&self.by_battle, &n.battle.battle_id, n);
        if !self.by_room.is_empty() {
            let mut rooms: Vec<&str> = n.battle.to_rooms.iter().map(|r| &**r).collect();
            rooms.extend(n.battle.from_room.as_deref());
            rooms.extend(n.battle.participants.iter().map(|p| &*p.room_id));
            rooms.sort_unstable();
            rooms.dedup();
            for r in rooms {
                send_keyed(&self.by_room, r, n);
            }
        }
        g.ring.push_shared(n.clone());
    }

    /// How many recent notifications are replayable (and so worth storing).
    pub(crate) fn ring_capacity(&self) -> usize {
        self.ring_capacity
    }

    /// Restores the replay ring and the sequence from a store.
    pub(crate) fn restore(&self, mut stored: Vec<Notification>, last_seq: u64) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        stored.sort_by_key(|n| n.seq);
        g.ring = Ring::new(self.ring_capacity);
        for n in stored {
            g.ring.push_shared(Arc::new(n));
        }
        g.last_seq = last_seq.max(g.ring.newest_seq().unwrap_or(0));
        g.reserved = g.last_seq;
    }

    pub(crate) fn add_observer(&self, o: Arc<dyn Observer>) {
        self.gained_audience();
        if let Ok(mut obs) = self.observers.write() {
            obs.push(o);
        }
    }

    /// Subscribes from now on.
    pub(crate) fn subscribe_live(&self, filter: Filter) -> Subscription {
        match self.subscribe(filter.clone(), None) {
            Ok(s) => s,
            // Unreachable: without `after_seq` nothing is refused.
            Err(_) => Subscription {
                replay: VecDeque::new(),
                live: BroadcastStream::new(self.all.subscribe()),
                filter,
                after_seq: 0,
                keyed: None,
            },
        }
    }

    /// Subscribes; with `after_seq`, first replays what came after it (or refuses when the ring
    /// no longer reaches back that far).
    pub(crate) fn subscribe(
        &self,
        filter: Filter,
        after_seq: Option<u64>,
    ) -> Result<Subscription, ResumeTooOld> {
        self.gained_audience();
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut replay = VecDeque::new();
        let start = match after_seq {
            None => g.last_seq,
            Some(after) => {
                if after < g.last_seq {
                    let oldest = g.ring.oldest_seq().unwrap_or(g.last_seq + 1);
                    if after + 1 < oldest || after > g.last_seq {
                        return Err(ResumeTooOld {
                            oldest_available: if g.ring.is_empty() { 0 } else { oldest },
                        });
                    }
                    replay = g.ring.after(after, |n| matches_filter(&filter, n));
                } else if after > g.last_seq {
                    return Err(ResumeTooOld {
                        oldest_available: g.ring.oldest_seq().unwrap_or(0),
                    });
                }
                after
            }
        };
        let (rx, keyed) = match &filter {
            Filter::All => (self.all.subscribe(), None),
            Filter::Battle(id) => (
                keyed_receiver(&self.by_battle, id, self.lag_limit(&filter)),
                Some(self.by_battle.clone()),
            ),
            Filter::Room(r) => (
                keyed_receiver(&self.by_room, r, self.lag_limit(&filter)),
                Some(self.by_room.clone()),
            ),
        };
        drop(g);
        Ok(Subscription {
            replay,
            live: BroadcastStream::new(rx),
            filter,
            after_seq: start,
            keyed,
        })
    }

    /// Drops per-battle channels nobody listens to any more.
    pub(crate) fn forget_battle(&self, id: &str) {
        self.by_battle
            .remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    pub(crate) fn subscriber_count(&self) -> usize {
        self.all.receiver_count()
            + self
                .by_battle
                .iter()
                .map(|e| e.value().receiver_count())
                .sum::<usize>()
            + self
                .by_room
                .iter()
                .map(|e| e.value().receiver_count())
                .sum::<usize>()
    }
}

fn send_keyed(map: &Keyed, key: &str, n: &Arc<Notification>) {
    let mut unused = false;
    if let Some(tx) = map.get(key) {
        unused = tx.send(n.clone()).is_err();
    }
    if unused {
        map.remove_if(key, |_, tx| tx.receiver_count() == 0);
    }
}

/// The largest buffer of a per-battle or per-room channel (a subscriber further behind on one
/// battle or room is told it lagged).
const KEYED_CAPACITY: usize = 64;

fn keyed_receiver(
    map: &Keyed,
    key: &str,
    capacity: usize,
) -> broadcast::Receiver<Arc<Notification>> {
    // One battle or room has few notifications in flight: a small ring per key (`lag_limit`)
    // keeps many per-battle streams cheap (each slot is reserved up front).
    map.entry(key.into())
        .or_insert_with(|| broadcast::channel(capacity).0)
        .subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::battle::Battle;

    fn note(seq: u64) -> Notification {
        Notification {
            seq,
            from: None,
            to: Target::State(State::Running),
            cause: Cause::CreateWebhook,
            late_ms: None,
            battle: Battle::new("b", State::Running, 0).snapshot(0),
        }
    }

    fn seqs(sub: &mut Subscription) -> Vec<u64> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(Delivery::Notification(n))) =
            Pin::new(&mut *sub).poll_next(&mut cx)
        {
            out.push(n.seq);
        }
        out
    }

    #[test]
    fn the_last_subscriber_of_a_battle_or_room_takes_its_channel_along() {
        let hub = Hub::new(64, 16, 0);
        let one = hub.subscribe_live(Filter::Battle("b".into()));
        let two = hub.subscribe_live(Filter::Battle("b".into()));
        let room = hub.subscribe_live(Filter::Room("pk-3".into()));
        assert_eq!((hub.by_battle.len(), hub.by_room.len()), (1, 1));
        drop(one);
        assert_eq!(hub.by_battle.len(), 1, "another subscriber still listens");
        let mut two = two;
        hub.publish(vec![note(1)]);
        assert_eq!(seqs(&mut two), [1], "the channel still delivers");
        drop(two);
        drop(room);
        assert_eq!((hub.by_battle.len(), hub.by_room.len()), (0, 0));
        let mut again = hub.subscribe_live(Filter::Battle("b".into()));
        hub.publish(vec![note(2)]);
        assert_eq!(seqs(&mut again), [2], "a new subscriber gets a new channel");
    }

    #[test]
    fn own_notifications_wait_for_lower_numbers_from_the_feed() {
        let hub = Hub::new(64, 16, 0);
        let mut sub = hub.subscribe_live(Filter::All);
        hub.deliver_followed(vec![note(1)]);
        // This instance committed 3 and hands it over before the feed brought 2.
        hub.deliver(vec![Arc::new(note(3))]);
        assert_eq!(seqs(&mut sub), vec![1]);
        // The feed brings 2, then 3 again: 3 is delivered once, in order.
        hub.deliver_followed(vec![note(2), note(3)]);
        assert_eq!(seqs(&mut sub), vec![2, 3]);
        assert_eq!(hub.last_seq(), 3);
        // Handing over what the feed already delivered changes nothing.
        hub.deliver(vec![Arc::new(note(3))]);
        assert_eq!(seqs(&mut sub), Vec::<u64>::new());
    }

    #[test]
    fn a_gap_in_the_feed_is_skipped_not_waited_for() {
        let hub = Hub::new(64, 16, 0);
        let mut sub = hub.subscribe_live(Filter::All);
        hub.deliver_followed(vec![note(1), note(2)]);
        // The feed was trimmed past 3..=4: 5 comes next and must not wait for them.
        hub.deliver_followed(vec![note(5), note(6)]);
        assert_eq!(seqs(&mut sub), vec![1, 2, 5, 6]);
        // A follower that started with an empty ring takes the feed's numbers as they come.
        let fresh = Hub::new(64, 0, 0);
        let mut sub = fresh.subscribe_live(Filter::All);
        fresh.deliver_followed(vec![note(1_000)]);
        assert_eq!(seqs(&mut sub), vec![1_000]);
    }
}
