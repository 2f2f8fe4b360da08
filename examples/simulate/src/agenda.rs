//! What is due when: one heap of timed jobs for the whole run, instead of a sleeping task (and
//! a timer) per delivery. At 5,800 battles/s with 30–120 s battles that was ≈ 1.8 million
//! sleeping tasks; now a job becomes a task only when it is due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Jobs by due instant; jobs due at the same instant come out in the order they were added.
pub struct Agenda<T> {
    heap: BinaryHeap<Entry<T>>,
    added: u64,
}

struct Entry<T> {
    at: Instant,
    order: u64,
    job: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed: the max-heap yields the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl<T> Default for Agenda<T> {
    fn default() -> Self {
        Agenda {
            heap: BinaryHeap::new(),
            added: 0,
        }
    }
}

impl<T> Agenda<T> {
    /// Adds `job`, due at `at`.
    pub fn add(&mut self, at: Instant, job: T) {
        self.added += 1;
        self.heap.push(Entry {
            at,
            order: self.added,
            job,
        });
    }

    /// When the next job is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The next job due by `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_at()? > now {
            return None;
        }
        self.heap.pop().map(|e| e.job)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn jobs_come_out_when_due_earliest_first_and_ties_in_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Agenda::default();
        for (at, job) in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (10, "a3")] {
            a.add(ms(at), job);
        }
        assert_eq!(a.next_at(), Some(ms(10)));
        assert_eq!(a.pop_due(ms(9)), None, "nothing is due before 10 ms");
        let mut out = Vec::new();
        while let Some(job) = a.pop_due(ms(20)) {
            out.push(job);
        }
        assert_eq!(out, ["a1", "a2", "a3", "b"]);
        assert_eq!(a.next_at(), Some(ms(30)));
        assert_eq!(a.pop_due(ms(30)), Some("c"));
        assert_eq!(a.next_at(), None);
    }
}
