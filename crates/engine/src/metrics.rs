//! Engine counters, gauges and the timer-lateness histogram, as lock-free atomics. The server
//! renders them as Prometheus text.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::battle::State;
use crate::event::Cause;

/// Upper bounds (ms, inclusive) of the timer-lateness histogram buckets; a last bucket takes the
/// rest.
pub const LATENESS_BUCKETS_MS: [u64; 10] = [0, 1, 2, 5, 10, 25, 50, 100, 1_000, 10_000];

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
    lateness: [AtomicU64; LATENESS_BUCKETS_MS.len() + 1],
    lateness_sum_ms: AtomicU64,
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
    /// Cumulative histogram counts per bucket of [`LATENESS_BUCKETS_MS`], then +Inf.
    pub lateness_buckets: Vec<(Option<u64>, u64)>,
    /// Sum of lateness in ms.
    pub lateness_sum_ms: u64,
}

impl Metrics {
    pub(crate) fn state_moved(&self, from: Option<State>, to: Option<State>) {
        if let Some(f) = from {
            self.by_state[f.index()].fetch_sub(1, Relaxed);
        }
        if let Some(t) = to {
            self.by_state[t.index()].fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn change(&self, cause: Cause) {
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.by_cause[i].fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn event(&self, duplicate: bool) {
        self.events.fetch_add(1, Relaxed);
        if duplicate {
            self.duplicates.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn timer_armed(&self, replaced: bool) {
        self.timers_armed.fetch_add(1, Relaxed);
        if replaced {
            self.timers_cancelled.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn timer_cancelled(&self) {
        self.timers_cancelled.fetch_add(1, Relaxed);
    }
    pub(crate) fn timer_fired(&self, late_ms: u64) {
        self.timers_fired.fetch_add(1, Relaxed);
        let i = LATENESS_BUCKETS_MS
            .iter()
            .position(|b| late_ms <= *b)
            .unwrap_or(LATENESS_BUCKETS_MS.len());
        self.lateness[i].fetch_add(1, Relaxed);
        self.lateness_sum_ms.fetch_add(late_ms, Relaxed);
    }
    pub(crate) fn evicted(&self) {
        self.evicted.fetch_add(1, Relaxed);
    }

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
            lateness_buckets,
            lateness_sum_ms: self.lateness_sum_ms.load(Relaxed),
        }
    }
}
