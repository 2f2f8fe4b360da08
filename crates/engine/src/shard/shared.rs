//! The shard loop when several engines (instances) share one store ([`SharedStore`], Redis).
//!
//! The shard's maps are then a replica: every instance holds every battle, kept current by the
//! store's change feed ([`Command::Replicate`]). A round of work reads the stored records of the
//! battles it touches and claims its due timers (one round trip), applies the events and timers
//! to those records with the same pure core, and commits the result with compare-and-set (a
//! second round trip). When another instance changed one of the battles in between, nothing was
//! stored: the round reads again and re-applies. Callers are answered only once their round is
//! committed; notifications reach subscribers through the change feed, so every instance
//! delivers them in the store's one order.

use std::collections::HashSet;

use super::*;
use crate::store::{Claim, Commit, StoreError, Stored};

/// Rounds retried after a compare-and-set conflict before the callers get an error.
const MAX_ATTEMPTS: usize = 16;
/// After a failed store call: how soon the timers it held are looked at again.
const RETRY_MS: i64 = 100;

type Pending = (
    Vec<Routed>,
    oneshot::Sender<Vec<Result<Applied, EngineError>>>,
);

impl Shard {
    /// The shard loop on a shared store: rounds of read → apply → commit, one at a time.
    pub(crate) async fn run_shared(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut buf = Vec::with_capacity(256);
        loop {
            let mut closing = None;
            let mut pending: Vec<Pending> = Vec::new();
            tokio::select! {
                biased;
                n = rx.recv_many(&mut buf, 256) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in buf.drain(..) {
                        match cmd {
                            Command::Apply { items, reply } => pending.push((items, reply)),
                            Command::Replica { update, done } => {
                                self.update_replica(update);
                                let _ = done.send(());
                            }
                            Command::Shutdown { reply } => closing = Some(reply),
                        }
                    }
                }
                () = std::future::poll_fn(|cx| {
                    let clock = self.shared.clock.clone();
                    self.queue.poll_due(cx, &*clock)
                }) => {}
                () = std::future::poll_fn(|cx| {
                    let clock = self.shared.clock.clone();
                    self.rechecks.poll_due(cx, &*clock)
                }) => {}
            }
            self.forget_expired(self.now());
            let due = self.take_due_current();
            if !pending.is_empty() || !due.is_empty() {
                self.round(pending, due).await;
            }
            self.delta.flush(&self.shared.metrics);
            if let Some(reply) = closing {
                let _ = reply.send(());
                break;
            }
        }
    }

    /// The due timers that are still current in the replica (stale ones are dropped here, as
    /// in the single-instance loop), each once.
    fn take_due_current(&mut self) -> Vec<(Arc<str>, Timer)> {
        let now = self.now();
        let mut due = std::mem::take(&mut self.due);
        self.queue.take_due(now, &mut due);
        let mut out: Vec<(Arc<str>, Timer)> = Vec::new();
        let mut seen = HashSet::new();
        let part = self.shared.table.read(self.part);
        let mut consider =
            |b: Option<&Battle>, at_ms: i64, generation: u32, out: &mut Vec<(Arc<str>, Timer)>| {
                let current = b.and_then(|b| armed(b, at_ms, generation).map(|t| (b, t)));
                if let Some((b, t)) = current {
                    if seen.insert((b.id.clone(), t.generation)) {
                        out.push((b.id.clone(), t));
                    }
                }
            };
        for (at_ms, e) in due.drain(..) {
            consider(part.at(e.slot), at_ms, e.generation, &mut out);
        }
        let mut again = Vec::new();
        self.rechecks.take_due(now, &mut again);
        for (_, (id, t)) in again {
            consider(part.get(&id), t.at_ms, t.generation, &mut out);
        }
        drop(part);
        self.due = due;
        out
    }

    /// One round: read, apply, commit (again after a conflict); then answer.
    async fn round(&mut self, pending: Vec<Pending>, due: Vec<(Arc<str>, Timer)>) {
        let shared = self.shared.clone();
        let Some(store) = shared.store.shared() else {
            return;
        };
        let mut ids: Vec<Arc<str>> = Vec::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        let named = pending.iter().flat_map(|(items, _)| {
            items
                .iter()
                .filter_map(|(target, ev)| target.clone().or_else(|| ev.battle_id().map(Arc::from)))
        });
        for id in named.chain(due.iter().map(|(id, _)| id.clone())) {
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        let claims: Vec<Claim> = due
            .iter()
            .map(|(id, t)| Claim {
                battle_id: id.clone(),
                generation: t.generation,
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fetched = match store.fetch(ids.clone(), claims.clone()).await {
                Ok(f) if f.battles.len() == ids.len() && f.claims.len() == claims.len() => f,
                Ok(_) => {
                    let e = StoreError("the store answered a read with the wrong count".into());
                    self.failed(pending, &due, e);
                    return;
                }
                Err(e) => {
                    self.failed(pending, &due, e);
                    return;
                }
            };
            for (id, stored) in ids.iter().zip(&fetched.battles) {
                self.adopt(id, stored);
            }
            // What the round counts (events, changes, timers) counts only if it is committed.
            let counted = self.delta.clone();
            let now = self.now();
            let results: Vec<Vec<Result<Applied, EngineError>>> = pending
                .iter()
                .map(|(items, _)| {
                    items
                        .iter()
                        .map(|(target, ev)| self.on_event(target.clone(), ev.clone(), now))
                        .collect()
                })
                .collect();
            for ((id, t), claim) in due.iter().zip(&fetched.claims) {
                match claim {
                    Ok(()) => self.on_timer(id, *t, now),
                    // Another instance fires it; if it dies first, look again after its lease.
                    Err(ms) => self
                        .rechecks
                        .insert(now.saturating_add(*ms as i64), (id.clone(), *t)),
                }
            }
            let mut ops = std::mem::take(&mut self.ops);
            self.op_index.clear();
            let mut notes = std::mem::take(&mut self.notes);
            ops.extend(notes.iter().map(|n| StoreOp::Notify {
                notification: Arc::new(n.clone()),
                keep_from_seq: 0,
            }));
            let outcome = if ops.is_empty() {
                Ok(Commit::Done(0))
            } else {
                store.commit(ops).await
            };
            match outcome {
                Ok(Commit::Done(last_seq)) => {
                    shared
                        .store_healthy
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    // Deliver our own notifications now (in seq order, after any lower number
                    // the change feed brings), so a caller that is answered sees them.
                    let first = (last_seq + 1).saturating_sub(notes.len() as u64);
                    for (n, seq) in notes.iter_mut().zip(first..) {
                        n.seq = seq;
                    }
                    if !notes.is_empty() {
                        shared
                            .hub
                            .deliver(notes.into_iter().map(Arc::new).collect());
                    }
                    for ((_, reply), results) in pending.into_iter().zip(results) {
                        let _ = reply.send(results);
                    }
                    return;
                }
                Ok(Commit::Conflict(conflicting)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(
                        ?conflicting,
                        attempt,
                        "another instance changed these battles first; reading again"
                    );
                    self.rollback(&ids, &fetched.battles);
                    self.delta = counted;
                    self.delta.store_conflict();
                }
                Ok(Commit::Conflict(conflicting)) => {
                    self.rollback(&ids, &fetched.battles);
                    self.delta = counted;
                    self.delta.store_conflict();
                    let e = StoreError(format!(
                        "battles {conflicting:?} kept changing under {MAX_ATTEMPTS} attempts"
                    ));
                    self.failed(pending, &due, e);
                    return;
                }
                Err(e) => {
                    self.rollback(&ids, &fetched.battles);
                    self.delta = counted;
                    self.failed(pending, &due, e);
                    return;
                }
            }
        }
    }

    /// Puts the replica back to what the store held when the round read it (the round's own
    /// changes were not stored; if they were after all — a lost reply — the change feed brings
    /// them).
    fn rollback(&mut self, ids: &[Arc<str>], stored: &[Stored]) {
        // Forgetting an old evicted id does not depend on the round: keep it for the next one.
        self.ops.retain(|op| matches!(op, StoreOp::Forget { .. }));
        self.op_index.clear();
        self.notes.clear();
        for (id, s) in ids.iter().zip(stored) {
            self.adopt(id, s);
        }
    }

    /// The store failed: answer with the error (nothing was acknowledged) and look at the
    /// round's timers again soon.
    fn failed(&mut self, pending: Vec<Pending>, due: &[(Arc<str>, Timer)], e: StoreError) {
        tracing::error!(error = %e, "shared store failed; the events are refused (not acknowledged)");
        self.shared
            .store_healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let retry_at = self.now().saturating_add(RETRY_MS);
        for (id, t) in due {
            self.rechecks.insert(retry_at, (id.clone(), *t));
        }
        for (items, reply) in pending {
            let results = items
                .iter()
                .map(|_| Err(EngineError::Store(e.clone())))
                .collect();
            let _ = reply.send(results);
        }
    }

    /// Brings the replica up to date.
    pub(super) fn update_replica(&mut self, update: ReplicaUpdate) {
        match update {
            ReplicaUpdate::Changes(changes) => self.replicate(changes),
            ReplicaUpdate::Reset(battles, evicted) => self.resync(battles, evicted),
        }
    }

    /// Applies changes other instances committed (newer records only).
    fn replicate(&mut self, changes: Vec<crate::store::Replicated>) {
        for change in changes {
            match change {
                crate::store::Replicated::Put(b) => {
                    let newer = self
                        .shared
                        .table
                        .read(self.part)
                        .get(&b.id)
                        .is_none_or(|held| held.version < b.version);
                    if newer {
                        let id = b.id.clone();
                        self.adopt(&id, &Stored::Present(b));
                    }
                }
                crate::store::Replicated::Evict(id, forget_at) => {
                    self.adopt(&id, &Stored::Evicted(forget_at));
                }
                // Notifications reach the hub from the follower; a reload is the follower's.
                crate::store::Replicated::Notify(_) | crate::store::Replicated::Reload => {}
            }
        }
    }

    /// Makes the replica exactly what the store holds: `battles` and `evicted` are all of this
    /// shard's; a battle or evicted id held here and not there is forgotten.
    fn resync(&mut self, battles: Vec<Battle>, evicted: Vec<(Arc<str>, i64)>) {
        let held: HashSet<Arc<str>> = battles
            .iter()
            .map(|b| b.id.clone())
            .chain(evicted.iter().map(|(id, _)| id.clone()))
            .collect();
        let gone: Vec<Arc<str>> = {
            let part = self.shared.table.read(self.part);
            part.iter()
                .map(|b| b.id.clone())
                .chain(self.evicted.keys().cloned())
                .filter(|id| !held.contains(id))
                .collect()
        };
        for id in gone {
            self.adopt(&id, &Stored::Absent);
        }
        for b in battles {
            let id = b.id.clone();
            self.adopt(&id, &Stored::Present(Box::new(b)));
        }
        for (id, at) in evicted {
            self.adopt(&id, &Stored::Evicted(at));
        }
    }

    /// Makes the replica of one battle what the store holds: record, room links, timer,
    /// dedupe memory and state gauges.
    fn adopt(&mut self, id: &Arc<str>, stored: &Stored) {
        let shared = self.shared.clone();
        let mut part = shared.table.write(self.part);
        match stored {
            Stored::Present(b) => {
                self.evicted.remove(id);
                if part.get(id).is_some_and(|held| *held == **b) {
                    return;
                }
                // The replaced record's room links give way to the new one's.
                let (slot, old) = part.insert((**b).clone());
                let before = old.map(|o| (o.state, o.timer));
                if let Some(t) = b.timer {
                    if before.and_then(|(_, t)| t) != Some(t) {
                        self.insert_timer(slot, t);
                    }
                }
                self.delta
                    .state_moved(before.map(|(s, _)| s), Some(b.state));
            }
            Stored::Evicted(_) | Stored::Absent => {
                if let Some(old) = part.remove(id) {
                    self.delta.state_moved(Some(old.state), None);
                    shared.hub.forget_battle(id);
                }
                match stored {
                    Stored::Evicted(at) => {
                        if self.evicted.insert(id.clone(), *at) != Some(*at) {
                            self.evicted_order.push_back((*at, id.clone()));
                        }
                    }
                    _ => {
                        self.evicted.remove(&**id);
                    }
                }
            }
        }
    }
}
