//! A shard's timer queue: a hierarchical timing wheel of absolute Unix-ms deadlines (the design
//! of tokio's time driver and of Varghese & Lauck's hashed wheels), and one tokio `Sleep` for the
//! earliest.
//!
//! Seven levels of 64 slots: a level-0 slot is one millisecond, a level-`n` slot 64ⁿ ms, so the
//! wheel spans 2⁴² ms (139 years) ahead of its position. An entry goes into the slot of the
//! lowest level whose current window holds its deadline: O(1), a push onto that slot's `Vec`,
//! no hashing, no heap. When the wheel's position reaches a slot of a higher level, its entries
//! move down (each entry moves at most once per level) until they sit in a level-0 slot, which
//! holds exactly one millisecond: they are due. Every level keeps a 64-bit mask of its occupied
//! slots, so the next deadline is found in a few instructions.
//!
//! There is no cancellation at all: a battle that changes its timer simply queues the new one,
//! and the old entry, when it comes due, fails the generation check and does nothing (Akka's and
//! gen_statem's guarantee, for the price of a few bytes until the stale deadline passes).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use crate::clock::{instant_for, Clock};

/// Slots per level (64: one bit each in the level's occupancy mask).
const SLOTS: usize = 64;
/// Bits of the deadline each level resolves.
const SLOT_BITS: u32 = 6;
/// Levels: 7 × 6 bits = 2⁴² ms ahead.
const LEVELS: usize = 7;
/// Deadlines further ahead than this are parked in the top level and moved again when it comes
/// round (they are checked against the clock before they are handed out).
const SPAN: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// A drained slot keeps its buffer for the next round unless it grew beyond this many entries.
const KEEP_CAPACITY: usize = 4096;

/// Entries with their deadline (Unix ms).
type Slot<T> = Vec<(i64, T)>;

pub(crate) struct TimerQueue<T> {
    /// The wheel's position (Unix ms, ≥ 0): every entry in a slot is due after it.
    elapsed: u64,
    /// `LEVELS × SLOTS` slots, level-major.
    slots: Box<[Slot<T>]>,
    /// Per level, bit `s` set when slot `s` holds entries.
    occupied: [u64; LEVELS],
    /// Entries queued with a deadline at or before the wheel's position: due at once.
    ready: Slot<T>,
    /// Made on the first poll (inside the runtime).
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline `sleep` is set for.
    armed_for: Option<i64>,
}

/// The next slot to process: its level, index and start (Unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expiration {
    level: usize,
    slot: usize,
    deadline: u64,
}

impl<T> TimerQueue<T> {
    /// An empty queue whose position is `now_ms` (the clock's now: entries due at or before it
    /// are due at once).
    pub(crate) fn new(now_ms: i64) -> TimerQueue<T> {
        TimerQueue {
            elapsed: now_ms.max(0) as u64,
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            ready: Vec::new(),
            sleep: None,
            armed_for: None,
        }
    }

    /// Queues `item` to come due at `at_ms` (Unix ms).
    pub(crate) fn insert(&mut self, at_ms: i64, item: T) {
        let when = at_ms.max(0) as u64;
        if when <= self.elapsed {
            self.ready.push((at_ms, item));
            return;
        }
        let level = level_for(self.elapsed, when);
        let slot = ((when >> (SLOT_BITS as usize * level)) as usize) % SLOTS;
        self.slots[level * SLOTS + slot].push((at_ms, item));
        self.occupied[level] |= 1 << slot;
    }

    /// When the queue next needs attention (Unix ms): the earliest deadline, or the start of a
    /// higher-level slot whose entries must move down first. `None` when empty.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        if !self.ready.is_empty() {
            return Some(self.elapsed as i64);
        }
        self.next_expiration().map(|e| e.deadline as i64)
    }

    fn next_expiration(&self) -> Option<Expiration> {
        // Every entry of a lower level is due before every entry of a higher one, so the lowest
        // occupied level holds the next slot.
        (0..LEVELS).find_map(|level| {
            let occupied = self.occupied[level];
            if occupied == 0 {
                return None;
            }
            let shift = SLOT_BITS as usize * level;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let now_slot = ((self.elapsed >> shift) as usize) % SLOTS;
            let mut rotated = occupied.rotate_right(now_slot as u32);
            if level == LEVELS - 1 && rotated & 1 == 1 && rotated != 1 {
                // Only the top level can hold entries in its current slot: deadlines beyond the
                // wheel's span, parked there until it comes round. That slot is the last of the
                // level to come round, so every other one goes first.
                rotated &= !1;
            }
            let ahead = rotated.trailing_zeros() as usize;
            let slot = (now_slot + ahead) % SLOTS;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + slot as u64 * slot_range;
            if deadline <= self.elapsed {
                // Past the current slot of this level: the next time round.
                deadline += level_range;
            }
            Some(Expiration {
                level,
                slot,
                deadline,
            })
        })
    }

    /// Takes every entry due at `now_ms`, earliest deadline first, into `out`.
    pub(crate) fn take_due(&mut self, now_ms: i64, out: &mut Vec<(i64, T)>) {
        let start = out.len();
        let now = now_ms.max(0) as u64;
        self.take_ready(now_ms, out);
        while let Some(exp) = self.next_expiration().filter(|e| e.deadline <= now) {
            self.elapsed = exp.deadline;
            let index = exp.level * SLOTS + exp.slot;
            self.occupied[exp.level] &= !(1 << exp.slot);
            let mut entries = std::mem::take(&mut self.slots[index]);
            for (at, item) in entries.drain(..) {
                // Down a level (or into `ready` when due at the slot's start).
                self.insert(at, item);
            }
            if entries.capacity() <= KEEP_CAPACITY && self.slots[index].is_empty() {
                self.slots[index] = entries;
            }
            self.take_ready(now_ms, out);
        }
        self.elapsed = self.elapsed.max(now);
        if !out[start..].is_sorted_by_key(|(at, _)| *at) {
            out[start..].sort_by_key(|(at, _)| *at);
        }
    }

    /// Moves the ready entries due at `now_ms` into `out` (a ready entry can be later only
    /// after the clock stepped back).
    fn take_ready(&mut self, now_ms: i64, out: &mut Vec<(i64, T)>) {
        if self.ready.iter().all(|(at, _)| *at <= now_ms) {
            out.append(&mut self.ready);
            return;
        }
        let mut i = 0;
        while i < self.ready.len() {
            if self.ready[i].0 <= now_ms {
                out.push(self.ready.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Resolves when the queue needs attention (by `clock`); never while it is empty. The caller
    /// then calls [`TimerQueue::take_due`].
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>, clock: &dyn Clock) -> Poll<()> {
        let Some(next) = self.next_deadline() else {
            self.armed_for = None;
            return Poll::Pending;
        };
        if next <= clock.now_ms() {
            return Poll::Ready(());
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now())));
        if self.armed_for != Some(next) {
            sleep.as_mut().reset(instant_for(clock, next));
            self.armed_for = Some(next);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed_for = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The level whose window around `elapsed` holds `when`: the highest 6-bit group in which they
/// differ (deadlines beyond the wheel's span go to the top level).
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(SPAN - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut TimerQueue<u32>, now: i64) -> Vec<(i64, u32)> {
        let mut out = Vec::new();
        q.take_due(now, &mut out);
        out
    }

    #[test]
    fn entries_come_due_at_their_millisecond_in_order_across_levels() {
        let t0 = 1_764_547_200_000; // a realistic Unix ms
        let mut q = TimerQueue::new(t0);
        let offsets: [i64; 10] = [1, 63, 64, 65, 4_095, 4_096, 300_000, 86_400_000, 7, 64];
        for (i, off) in offsets.iter().enumerate() {
            q.insert(t0 + off, i as u32);
        }
        let mut fired = Vec::new();
        let mut now = t0;
        // Step 1 ms at a time through the first 5 s, then jump.
        while now < t0 + 5_000 {
            now += 1;
            for (at, i) in drain(&mut q, now) {
                assert_eq!(at, now, "entry {i} fired at its millisecond");
                fired.push(i);
            }
        }
        assert_eq!(fired, vec![0, 8, 1, 2, 9, 3, 4, 5]);
        assert_eq!(q.next_deadline().map(|d| d <= t0 + 300_000), Some(true));
        assert!(drain(&mut q, t0 + 299_999).is_empty());
        assert_eq!(drain(&mut q, t0 + 300_000), vec![(t0 + 300_000, 6)]);
        // A late poll hands out everything due, earliest first.
        assert_eq!(drain(&mut q, t0 + 90_000_000), vec![(t0 + 86_400_000, 7)]);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn a_deadline_already_passed_is_due_at_once_and_far_ones_wait() {
        let t0 = 1_000_000;
        let mut q = TimerQueue::new(t0);
        q.insert(t0 - 5, 1);
        q.insert(t0, 2);
        q.insert(t0 + (SPAN as i64) * 3, 3);
        assert_eq!(q.next_deadline(), Some(t0));
        assert_eq!(drain(&mut q, t0), vec![(t0 - 5, 1), (t0, 2)]);
        assert!(drain(&mut q, t0 + SPAN as i64).is_empty());
        let far = t0 + (SPAN as i64) * 3;
        assert_eq!(drain(&mut q, far), vec![(far, 3)]);
    }

    use proptest::prelude::*;

    proptest! {
        /// Against a plain sorted list: every entry comes out exactly once, at the first take at
        /// or after its deadline, earliest first; `next_deadline` never lies past the earliest.
        #[test]
        fn the_wheel_hands_out_what_a_sorted_list_would(
            ops in prop::collection::vec(
                prop_oneof![
                    4 => (-50i64..5_000_000).prop_map(Ok),
                    1 => ((SPAN as i64) - 300_000..(SPAN as i64) + 300_000).prop_map(Ok),
                    4 => (0i64..400_000).prop_map(Err),
                ],
                1..200,
            ),
            near_boundary in any::<bool>(),
        ) {
            // Near a 2^36 ms boundary, ordinary deadlines cross into the top level.
            let t0 = if near_boundary { (26i64 << 36) - 600_000 } else { 1_764_547_200_000 };
            let mut q = TimerQueue::new(t0);
            let mut pending: Vec<(i64, u32)> = Vec::new();
            let mut now = t0;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Ok(offset) => {
                        q.insert(now + offset, i as u32);
                        pending.push((now + offset, i as u32));
                    }
                    Err(step) => {
                        now += step;
                        let mut got = drain(&mut q, now);
                        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "earliest first");
                        got.sort_unstable();
                        let mut want: Vec<(i64, u32)> =
                            pending.iter().copied().filter(|(at, _)| *at <= now).collect();
                        want.sort_unstable();
                        pending.retain(|(at, _)| *at > now);
                        prop_assert_eq!(got, want);
                    }
                }
                match pending.iter().map(|(at, _)| *at).min() {
                    Some(earliest) => prop_assert!(
                        q.next_deadline().is_some_and(|d| d <= earliest.max(now)),
                        "next deadline {:?} after the earliest entry {}", q.next_deadline(), earliest
                    ),
                    None => prop_assert_eq!(q.next_deadline(), None),
                }
            }
        }
    }

    #[test]
    fn a_deadline_beyond_the_span_parked_in_the_top_slot_hides_no_other() {
        // Just before a 2^36 ms boundary, a near deadline across it lands in the top level;
        // a deadline a whole span ahead lands in the top level's current slot.
        let now = (26i64 << 36) - 1_000;
        let mut q = TimerQueue::new(now);
        q.insert(now + (SPAN as i64) - 10_000, 1);
        q.insert(now + 2_000, 2);
        assert!(q.next_deadline().is_some_and(|d| d <= now + 2_000));
        assert_eq!(drain(&mut q, now + 2_000), vec![(now + 2_000, 2)]);
        assert!(drain(&mut q, now + 3_600_000).is_empty());
    }

    #[test]
    fn a_late_take_returns_every_due_entry_sorted() {
        let t0 = 10_000;
        let mut q = TimerQueue::new(t0);
        let mut want = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..5_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = t0 + 1 + (x >> 40) as i64 % 1_000_000;
            q.insert(at, i);
            want.push(at);
        }
        want.sort_unstable();
        let mut got = drain(&mut q, t0 + 500_000);
        got.extend(drain(&mut q, t0 + 2_000_000));
        assert_eq!(got.iter().map(|(at, _)| *at).collect::<Vec<_>>(), want);
    }
}
