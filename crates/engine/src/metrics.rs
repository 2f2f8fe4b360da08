//! Engine counters, gauges and the timer-lateness histogram, as lock-free atomics. The server
//! renders them as Prometheus text.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::battle::State;
use crate::event::Cause;

/// Upper bounds (ms, inclusive) of the timer-lateness histogram buckets; a last bucket takes the
/// rest. Fine at the low end (every ms up to 3, then 5 and 10), where a healthy host's firings
/// are, so a p99 of 2 ms or a max of 10 ms can be read off it.
pub const LATENESS_BUCKETS_MS: [u64; 12] = [0, 1, 2, 3, 5, 10, 25, 50, 100, 250, 1_000, 10_000];

/// Live engine metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    by_state: [AtomicI64; 4],
    by_cause: [AtomicU64; Cause::ALL.len()],
    events: AtomicU64,
    duplicates: AtomicU64,
    timers_armed: AtomicU64,
    timers_cancelled: AtomicU64,
    timers_fired: AtomicU64,
    evicted: AtomicU64,
    store_conflicts: AtomicU64,
    lateness: [AtomicU64; LATENESS_BUCKETS_MS.len() + 1],
    lateness_sum_ms: AtomicU64,
    lateness_max_ms: AtomicU64,
}

/// A shard's counts since its last flush into the shared [`Metrics`]: plain integers, so an
/// event costs no atomic operation; the shard adds them up once per wake-up (before it answers).
#[derive(Clone, Debug, Default)]
pub(crate) struct MetricsDelta {
    by_state: [i64; 4],
    by_cause: [u64; Cause::ALL.len()],
    events: u64,
    duplicates: u64,
    timers_armed: u64,
    timers_cancelled: u64,
    timers_fired: u64,
    evicted: u64,
    store_conflicts: u64,
    lateness: [u64; LATENESS_BUCKETS_MS.len() + 1],
    lateness_sum_ms: u64,
    lateness_max_ms: u64,
    dirty: bool,
}

impl MetricsDelta {
    pub(crate) fn state_moved(&mut self, from: Option<State>, to: Option<State>) {
        self.dirty = true;
        if let Some(f) = from {
            self.by_state[f.index()] -= 1;
        }
        if let Some(t) = to {
            self.by_state[t.index()] += 1;
        }
    }
    pub(crate) fn change(&mut self, cause: Cause) {
        self.dirty = true;
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.by_cause[i] += 1;
        }
    }
    pub(crate) fn event(&mut self, duplicate: bool) {
        self.dirty = true;
        self.events += 1;
        self.duplicates += u64::from(duplicate);
    }
    pub(crate) fn timer_armed(&mut self, replaced: bool) {
        self.dirty = true;
        self.timers_armed += 1;
        self.timers_cancelled += u64::from(replaced);
    }
    pub(crate) fn timer_cancelled(&mut self) {
        self.dirty = true;
        self.timers_cancelled += 1;
    }
    pub(crate) fn timer_fired(&mut self, late_ms: u64) {
        self.dirty = true;
        self.timers_fired += 1;
        let i = LATENESS_BUCKETS_MS
            .iter()
            .position(|b| late_ms <= *b)
            .unwrap_or(LATENESS_BUCKETS_MS.len());
        self.lateness[i] += 1;
        self.lateness_sum_ms = self.lateness_sum_ms.saturating_add(late_ms);
        self.lateness_max_ms = self.lateness_max_ms.max(late_ms);
    }
    pub(crate) fn evicted(&mut self) {
        self.dirty = true;
        self.evicted += 1;
    }
    pub(crate) fn store_conflict(&mut self) {
        self.dirty = true;
        self.store_conflicts += 1;
    }

    /// Adds the counts to `m` and starts again from zero.
    pub(crate) fn flush(&mut self, m: &Metrics) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let d = std::mem::take(self);
        fn add(a: &AtomicU64, n: u64) {
            if n != 0 {
                a.fetch_add(n, Relaxed);
            }
        }
        for (a, n) in m.by_state.iter().zip(d.by_state) {
            if n != 0 {
                a.fetch_add(n, Relaxed);
            }
        }
        for (a, n) in m.by_cause.iter().zip(d.by_cause) {
            add(a, n);
        }
        add(&m.events, d.events);
        add(&m.duplicates, d.duplicates);
        add(&m.timers_armed, d.timers_armed);
        add(&m.timers_cancelled, d.timers_cancelled);
        add(&m.timers_fired, d.timers_fired);
        add(&m.evicted, d.evicted);
        add(&m.store_conflicts, d.store_conflicts);
        for (a, n) in m.lateness.iter().zip(d.lateness) {
            add(a, n);
        }
        add(&m.lateness_sum_ms, d.lateness_sum_ms);
        if d.lateness_max_ms != 0 {
            m.lateness_max_ms.fetch_max(d.lateness_max_ms, Relaxed);
        }
    }
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Battles per state, in [`State::ALL`] order.
    pub battles_by_state: [u64; 4],
    /// Notifications per cause, in [`Cause::ALL`] order.
    pub changes_by_cause: Vec<(Cause, u64)>,
    /// Events applied (all outcomes).
    pub events: u64,
    /// Events that were duplicates.
    pub duplicates: u64,
    /// Timers armed.
    pub timers_armed: u64,
    /// Timers cancelled or replaced before firing.
    pub timers_cancelled: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Battles evicted after retention.
    pub evicted: u64,
    /// Rounds a shared store (Redis) rejected because another instance changed one of their
    /// battles first (they were read and applied again).
    pub store_conflicts: u64,
    /// Cumulative histogram counts per bucket of [`LATENESS_BUCKETS_MS`], then +Inf.
    pub lateness_buckets: Vec<(Option<u64>, u64)>,
    /// Sum of lateness in ms.
    pub lateness_sum_ms: u64,
    /// The latest any timer fired, in ms after its deadline, since the engine started.
    pub lateness_max_ms: u64,
}

impl Metrics {
    /// Battles currently in `state`.
    pub fn battles_in(&self, state: State) -> u64 {
        self.by_state[state.index()].load(Relaxed).max(0) as u64
    }

    /// A consistent-enough copy for rendering.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut cumulative = 0;
        let lateness_buckets = self
            .lateness
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cumulative += c.load(Relaxed);
                (LATENESS_BUCKETS_MS.get(i).copied(), cumulative)
            })
            .collect();
        MetricsSnapshot {
            battles_by_state: State::ALL.map(|s| self.battles_in(s)),
            changes_by_cause: Cause::ALL
                .iter()
                .zip(&self.by_cause)
                .map(|(c, n)| (*c, n.load(Relaxed)))
                .collect(),
            events: self.events.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            timers_armed: self.timers_armed.load(Relaxed),
            timers_cancelled: self.timers_cancelled.load(Relaxed),
            timers_fired: self.timers_fired.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            store_conflicts: self.store_conflicts.load(Relaxed),
            lateness_buckets,
            lateness_sum_ms: self.lateness_sum_ms.load(Relaxed),
            lateness_max_ms: self.lateness_max_ms.load(Relaxed),
        }
    }
}
