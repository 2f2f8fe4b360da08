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
//! Moving a slot down all at once would stall the shard for as long as the slot is large: a
//! level-3 slot spans 262 s, and at a million battles armed over a minute it can hold half a
//! million entries (several ms of moving, during which the timers due at its start wait). So the
//! next slot of a level ≥ 2 is *staged* ahead of time ([`TimerQueue::stage`]), a few thousand
//! entries per poll: its entries are sorted into 64 buckets by the lower-level slot they will
//! fall into, and when the wheel reaches the slot the buckets simply become those lower slots.
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
/// Entries per chunk of a slot ([`Slot`]): 16 KiB of 16-byte entries.
const CHUNK: usize = 1024;
/// Entries a poll stages at most before it yields ([`TimerQueue::stage`]): tens of µs.
const STAGE_BUDGET: usize = 4096;
/// How long before a slot comes due its staging starts (ms): time for a few million entries at
/// [`STAGE_BUDGET`] a poll, and short enough that few of the slot's entries arrive after it
/// (those go straight into the buckets).
const STAGE_LEAD_MS: u64 = 1_000;
/// The lowest level whose slots are staged: a level-1 slot spans 64 ms, small enough to move
/// at once.
const STAGE_FROM_LEVEL: usize = 2;

/// The entries of one slot with their deadline (Unix ms), in chunks of at most [`CHUNK`]: a
/// slot can hold a million entries, and a single `Vec` of them would copy its whole buffer and
/// fault in twice its pages each time it grows (≈ 8 ms at a million, measured), stopping the
/// shard. Chunks grow without moving what is held. Only the first chunk may be empty.
struct Slot<T> {
    chunks: Vec<Vec<(i64, T)>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Slot<T> {
        Slot { chunks: Vec::new() }
    }
}

impl<T> Slot<T> {
    fn push(&mut self, at_ms: i64, item: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push((at_ms, item)),
            _ => {
                // The first chunk grows as a `Vec` does (most slots hold a few entries);
                // later ones are allocated whole.
                let mut c = if self.chunks.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(CHUNK)
                };
                c.push((at_ms, item));
                self.chunks.push(c);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.first().is_none_or(Vec::is_empty)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Takes every entry out, leaving the slot empty (give it a buffer back with
    /// [`Slot::reuse`]).
    fn take(&mut self) -> Vec<Vec<(i64, T)>> {
        std::mem::take(&mut self.chunks)
    }

    /// Gives an emptied slot a drained chunk's buffer back, so that a slot filled every round
    /// does not allocate every round.
    fn reuse(&mut self, mut buffer: Vec<(i64, T)>) {
        if self.chunks.is_empty() && buffer.capacity() <= CHUNK {
            buffer.clear();
            self.chunks.push(buffer);
        }
    }

    /// Takes the last chunk out (`None` when empty).
    fn pop_chunk(&mut self) -> Option<Vec<(i64, T)>> {
        if self.is_empty() {
            return None;
        }
        self.chunks.pop()
    }

    /// Moves every entry of `other` in (no entry is copied, only chunk handles).
    fn append(&mut self, other: &mut Slot<T>) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else if !other.is_empty() {
            self.chunks.append(&mut other.chunks);
        }
    }
}

pub(crate) struct TimerQueue<T> {
    /// The wheel's position (Unix ms, ≥ 0): every entry in a slot is due after it.
    elapsed: u64,
    /// `LEVELS × SLOTS` slots, level-major.
    slots: Box<[Slot<T>]>,
    /// Per level, bit `s` set when slot `s` holds entries.
    occupied: [u64; LEVELS],
    /// Entries queued with a deadline at or before the wheel's position: due at once.
    ready: Vec<(i64, T)>,
    /// Made on the first poll (inside the runtime).
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline `sleep` is set for.
    armed_for: Option<i64>,
    /// The slot being moved down ahead of its time, if any.
    staging: Option<Staging<T>>,
}

/// A slot of level `level` ≥ [`STAGE_FROM_LEVEL`] being moved down ahead of time: its entries,
/// taken from the slot a budget at a time, sorted by the slot of level `level - 1` they fall
/// into. The slot keeps its occupancy bit until the wheel reaches it.
struct Staging<T> {
    level: usize,
    slot: usize,
    /// Where the slot starts (Unix ms): the wheel's position when it comes due.
    start: u64,
    /// Per lower slot; bucket 0 holds the entries due within the first lower slot's span, which
    /// go further down (by [`TimerQueue::insert`]) when the slot comes due.
    buckets: Vec<Slot<T>>,
}

impl<T> Staging<T> {
    fn push(&mut self, at_ms: i64, item: T) {
        let lower = ((at_ms.max(0) as u64) >> (SLOT_BITS as usize * (self.level - 1))) as usize;
        self.buckets[lower % SLOTS].push(at_ms, item);
    }
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
            slots: (0..LEVELS * SLOTS).map(|_| Slot::default()).collect(),
            occupied: [0; LEVELS],
            ready: Vec::new(),
            sleep: None,
            armed_for: None,
            staging: None,
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
        self.occupied[level] |= 1 << slot;
        match &mut self.staging {
            Some(s) if (s.level, s.slot) == (level, slot) => s.push(at_ms, item),
            _ => self.slots[level * SLOTS + slot].push(at_ms, item),
        }
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
        self.next_expiration_from(0)
    }

    /// The next slot to process among the levels from `lowest` up.
    fn next_expiration_from(&self, lowest: usize) -> Option<Expiration> {
        // Every entry of a lower level is due before every entry of a higher one, so the lowest
        // occupied level holds the next slot.
        (lowest..LEVELS).find_map(|level| {
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
            self.unstage(exp);
            let mut chunks = self.slots[index].take();
            for chunk in &mut chunks {
                for (at, item) in chunk.drain(..) {
                    // Down a level (or into `ready` when due at the slot's start).
                    self.insert(at, item);
                }
            }
            if let Some(first) = chunks.into_iter().next() {
                self.slots[index].reuse(first);
            }
            self.take_ready(now_ms, out);
        }
        self.elapsed = self.elapsed.max(now);
        if !out[start..].is_sorted_by_key(|(at, _)| *at) {
            out[start..].sort_by_key(|(at, _)| *at);
        }
    }

    /// The next slot to stage: the next of the levels ≥ [`STAGE_FROM_LEVEL`] below the top
    /// (the top level's current slot can park deadlines beyond the span).
    fn stage_target(&self) -> Option<Expiration> {
        self.next_expiration_from(STAGE_FROM_LEVEL)
            .filter(|e| e.level < LEVELS - 1)
    }

    /// When staging next wants a poll (Unix ms): at once while the staged slot holds entries
    /// not yet staged; [`STAGE_LEAD_MS`] before the next slot to stage comes due; `None` when
    /// there is nothing to stage.
    pub(crate) fn stage_at(&self) -> Option<i64> {
        match &self.staging {
            Some(s) => {
                (!self.slots[s.level * SLOTS + s.slot].is_empty()).then_some(self.elapsed as i64)
            }
            None => self
                .stage_target()
                .map(|e| e.deadline.saturating_sub(STAGE_LEAD_MS).max(self.elapsed) as i64),
        }
    }

    /// Stages up to `budget` entries of the next slot of a level ≥ [`STAGE_FROM_LEVEL`] once
    /// it is [`STAGE_LEAD_MS`] away at `now_ms`, so that reaching it costs 64 swaps instead of
    /// moving every entry. Returns whether entries remain to stage (the caller should come
    /// back soon).
    pub(crate) fn stage(&mut self, now_ms: i64, budget: usize) -> bool {
        if self.stage_at().is_none_or(|at| at > now_ms) {
            return false;
        }
        if self.staging.is_none() {
            let Some(exp) = self.stage_target() else {
                return false;
            };
            self.staging = Some(Staging {
                level: exp.level,
                slot: exp.slot,
                start: exp.deadline,
                buckets: (0..SLOTS).map(|_| Slot::default()).collect(),
            });
        }
        let Some(staging) = self.staging.as_mut() else {
            return false;
        };
        let source = &mut self.slots[staging.level * SLOTS + staging.slot];
        let mut moved = 0;
        while moved < budget {
            let Some(mut chunk) = source.pop_chunk() else {
                break;
            };
            moved += chunk.len();
            for (at, item) in chunk.drain(..) {
                staging.push(at, item);
            }
        }
        !source.is_empty()
    }

    /// When the wheel reaches the staged slot (`exp`), its buckets become the slots of the level
    /// below; its bucket 0 and whatever the slot gained since go down the usual way.
    fn unstage(&mut self, exp: Expiration) {
        if self
            .staging
            .as_ref()
            .is_none_or(|s| (s.level, s.slot) != (exp.level, exp.slot))
        {
            return;
        }
        let Some(staging) = self.staging.take() else {
            return;
        };
        debug_assert_eq!(
            staging.start, exp.deadline,
            "a staged slot comes due at its start"
        );
        let lower = staging.level - 1;
        for (j, mut bucket) in staging.buckets.into_iter().enumerate() {
            if bucket.is_empty() {
                continue;
            }
            if j == 0 {
                // Due within the lower level's current slot: further down.
                for mut chunk in bucket.take() {
                    for (at, item) in chunk.drain(..) {
                        self.insert(at, item);
                    }
                }
                continue;
            }
            // The lower level is empty when the wheel reaches a higher slot (its window has
            // passed), so this is a move of the bucket's chunks.
            self.slots[lower * SLOTS + j].append(&mut bucket);
            self.occupied[lower] |= 1 << j;
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

    /// When the queue next needs a poll (Unix ms): [`TimerQueue::next_deadline`], or earlier
    /// when a slot is to be staged ([`TimerQueue::stage_at`]).
    pub(crate) fn next_attention(&self) -> Option<i64> {
        earliest(self.next_deadline(), self.stage_at())
    }

    /// Resolves when entries are due (by `clock`); never while it is empty. The caller then
    /// calls [`TimerQueue::take_due`]. Stages the next large slot meanwhile, a budget per poll.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>, clock: &dyn Clock) -> Poll<()> {
        let now = clock.now_ms();
        let due = self.next_deadline();
        if due.is_some_and(|d| d <= now) {
            return Poll::Ready(());
        }
        if self.stage(now, STAGE_BUDGET) {
            // More to stage: yield, and come back for the next budget.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // (Staging moves no occupancy bit: `due` still holds.)
        let Some(next) = earliest(due, self.stage_at()) else {
            self.armed_for = None;
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now())));
        if self.armed_for != Some(next) {
            sleep.as_mut().reset(instant_for(clock, next));
            self.armed_for = Some(next);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Due, or time to stage (then the caller's take finds nothing, once).
                self.armed_for = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
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

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i64),
        Advance(i64),
        Stage(usize),
    }

    proptest! {
        /// Against a plain sorted list: every entry comes out exactly once, at the first take at
        /// or after its deadline, earliest first, whatever staging happened between;
        /// `next_deadline` never lies past the earliest.
        #[test]
        fn the_wheel_hands_out_what_a_sorted_list_would(
            ops in prop::collection::vec(
                prop_oneof![
                    4 => (-50i64..5_000_000).prop_map(Op::Insert),
                    1 => ((SPAN as i64) - 300_000..(SPAN as i64) + 300_000).prop_map(Op::Insert),
                    4 => (0i64..400_000).prop_map(Op::Advance),
                    2 => (1usize..8).prop_map(Op::Stage),
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
                    Op::Insert(offset) => {
                        q.insert(now + offset, i as u32);
                        pending.push((now + offset, i as u32));
                    }
                    Op::Stage(budget) => {
                        // As a poll would, once the lead allows: ahead of the slot's start.
                        if q.stage_at().is_some_and(|at| at <= now) {
                            q.stage(now, budget);
                        }
                        prop_assert!(q.stage_at().is_none_or(|at| at >= now.min(q.elapsed as i64)));
                    }
                    Op::Advance(step) => {
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
    fn a_slot_holds_its_entries_in_chunks_and_moves_them_whole() {
        let mut a = Slot::default();
        for i in 0..2_500u32 {
            a.push(i64::from(i), i);
        }
        assert_eq!((a.len(), a.chunks.len()), (2_500, 3));
        assert!(a.chunks.iter().all(|c| c.capacity() <= CHUNK));
        let last = a.pop_chunk().map(|c| c.len());
        assert_eq!(last, Some(2_500 - 2 * CHUNK));
        let mut b = Slot::default();
        b.push(-1, 9);
        b.append(&mut a);
        assert_eq!((b.len(), a.len()), (1 + 2 * CHUNK, 0));
        let mut chunks = b.take();
        assert!(b.is_empty());
        let first = chunks.remove(0);
        b.reuse(first);
        assert!(
            b.is_empty() && b.chunks[0].capacity() > 0,
            "the buffer is kept"
        );
    }

    #[test]
    fn a_large_slot_is_staged_ahead_so_reaching_it_moves_only_its_first_lower_slot() {
        // Half a million deadlines 90–150 s ahead across a level-3 boundary (2¹⁸ ms).
        let base = (6_730_000i64 << 18) - 100_000;
        let mut q = TimerQueue::new(base);
        let mut x: u64 = 1;
        for i in 0..500_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            q.insert(base + 90_000 + (x >> 33) as i64 % 60_000, i);
        }
        let boundary = base + 100_000;
        let level3 = 3 * SLOTS + ((boundary as u64 >> 18) as usize % SLOTS);
        let in_slot = q.slots[level3].len();
        assert!(
            in_slot > 200_000,
            "the slot past the boundary holds {in_slot}"
        );
        let mut fired = 0;
        let mut out = Vec::new();
        let mut now = base;
        let mut polls = 0;
        while now < boundary - 1 {
            now += 1;
            if q.stage_at().is_some_and(|at| at <= now) {
                while q.stage(now, STAGE_BUDGET) {
                    polls += 1;
                }
            }
            q.take_due(now, &mut out);
            fired += out.len();
            out.clear();
        }
        assert!(
            polls >= in_slot / STAGE_BUDGET - 1,
            "staged a budget a poll ({polls})"
        );
        assert!(
            q.slots[level3].is_empty(),
            "everything staged before the boundary"
        );
        let staging = q.staging.as_ref().expect("the slot is staged");
        assert_eq!(
            staging.buckets.iter().map(Slot::len).sum::<usize>(),
            in_slot
        );
        let first = staging.buckets[0].len();
        // The slot holds 50 s of deadlines; only its first 4.1 s (one level-2 slot) go down
        // entry by entry at the boundary.
        assert!(
            first < in_slot / 10,
            "only the first 4 s go down at the boundary: {first}"
        );
        let lower_slots = staging.buckets[1..]
            .iter()
            .filter(|b| !b.is_empty())
            .count();
        let mut rest = 0;
        q.take_due(boundary, &mut out);
        assert!(q.staging.is_none() && q.slots[level3].is_empty());
        assert_eq!(
            q.occupied[2].count_ones() as usize,
            lower_slots,
            "the buckets are level 2"
        );
        rest += out.len();
        out.clear();
        now = boundary;
        while now < base + 151_000 {
            now += 1;
            q.take_due(now, &mut out);
            assert!(out.iter().all(|(at, _)| *at == now), "on time");
            rest += out.len();
            out.clear();
        }
        assert_eq!(fired + rest, 500_000);
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

    /// Not a check but a measurement (`cargo test --release -p livebattle-engine --lib
    /// longest_steps -- --ignored --nocapture`): half a million deadlines 90–150 s ahead (the
    /// timers bench's shape per shard), stepped through a millisecond at a time with staging
    /// as the shard polls it; the longest single insert, staging budget and take — what the
    /// wheel stops the shard for. Three starts: inside one level-3 slot, across a level-3
    /// boundary, and across a top-level boundary (not staged).
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn longest_steps_of_half_a_million_deadlines() {
        use std::time::{Duration, Instant};
        let starts = [
            ("inside a level-3 slot", 1_764_547_200_000i64),
            ("across a level-3 boundary", (6_730_000i64 << 18) - 100_000),
            ("across a top-level boundary", (26i64 << 36) - 120_000),
        ];
        for (what, base) in starts {
            let mut q: TimerQueue<u64> = TimerQueue::new(base);
            let mut x: u64 = 1;
            let (mut insert, mut stage, mut take) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            for i in 0..500_000u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let t = Instant::now();
                q.insert(base + 90_000 + (x >> 33) as i64 % 60_000, i);
                insert = insert.max(t.elapsed());
            }
            let mut out = Vec::new();
            let mut now = base;
            while now < base + 151_000 {
                now += 1;
                if q.stage_at().is_some_and(|at| at <= now) {
                    loop {
                        let t = Instant::now();
                        let more = q.stage(now, STAGE_BUDGET);
                        stage = stage.max(t.elapsed());
                        if !more {
                            break;
                        }
                    }
                }
                let t = Instant::now();
                q.take_due(now, &mut out);
                take = take.max(t.elapsed());
                out.clear();
            }
            println!("{what}: longest insert {insert:?}, staging budget {stage:?}, take {take:?}");
        }
    }
}
