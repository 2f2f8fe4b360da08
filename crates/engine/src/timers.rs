//! A shard's timer queue: entries bucketed by their absolute Unix-ms deadline, a min-heap of the
//! distinct deadlines, and one tokio `Sleep` for the earliest. Millisecond precision, O(1)
//! insertion into an existing bucket, O(log buckets) for a new one, and no cancellation at all:
//! a battle that changes its timer simply queues the new one, and the old entry, when it comes
//! due, fails the generation check and does nothing (Akka's and gen_statem's guarantee, for the
//! price of a few bytes until the stale deadline passes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::pin::Pin;
use std::task::{Context, Poll};

use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use crate::clock::{instant_for, Clock};

/// The entries due at one deadline; a lone entry (the usual case when deadlines are spread over
/// milliseconds) is kept in the bucket itself, with no allocation.
type Bucket<T> = SmallVec<[T; 1]>;

pub(crate) struct TimerQueue<T> {
    buckets: HashMap<i64, Bucket<T>, foldhash::fast::RandomState>,
    order: BinaryHeap<Reverse<i64>>,
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set for.
    armed_for: Option<i64>,
}

impl<T> TimerQueue<T> {
    pub(crate) fn new() -> TimerQueue<T> {
        TimerQueue {
            buckets: HashMap::default(),
            order: BinaryHeap::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed_for: None,
        }
    }

    /// Queues `item` to come due at `at_ms` (Unix ms).
    pub(crate) fn insert(&mut self, at_ms: i64, item: T) {
        match self.buckets.get_mut(&at_ms) {
            Some(bucket) => bucket.push(item),
            None => {
                let mut bucket = Bucket::new();
                bucket.push(item);
                self.buckets.insert(at_ms, bucket);
                self.order.push(Reverse(at_ms));
            }
        }
    }

    /// The earliest deadline queued, if any.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.order.peek().map(|&Reverse(at)| at)
    }

    /// Takes every entry due at `now_ms`, earliest deadline first, into `out`.
    pub(crate) fn take_due(&mut self, now_ms: i64, out: &mut Vec<(i64, T)>) {
        while let Some(&Reverse(at)) = self.order.peek() {
            if at > now_ms {
                break;
            }
            self.order.pop();
            if let Some(bucket) = self.buckets.remove(&at) {
                out.extend(bucket.into_iter().map(|t| (at, t)));
            }
        }
    }

    /// Resolves when the earliest deadline has come (by `clock`); never while the queue is
    /// empty. The caller then calls [`TimerQueue::take_due`].
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>, clock: &dyn Clock) -> Poll<()> {
        let Some(&Reverse(next)) = self.order.peek() else {
            self.armed_for = None;
            return Poll::Pending;
        };
        if next <= clock.now_ms() {
            return Poll::Ready(());
        }
        if self.armed_for != Some(next) {
            self.sleep.as_mut().reset(instant_for(clock, next));
            self.armed_for = Some(next);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed_for = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;
