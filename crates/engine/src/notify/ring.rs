//! The replay ring (the last notifications, for gapless resumption) and the packed form in which
//! it keeps what nobody else heard.
//!
//! A notification delivered live (an observer or a subscription heard it) is kept as the shared
//! `Arc` its listeners got. One that only the ring would hear — the common case of an engine
//! with nobody subscribed — is never built: the shard packs the battle's borrowed view
//! ([`crate::battle::Battle::view`]) with postcard into one byte buffer, and the ring appends
//! those bytes to its own. No allocation per notification, nothing scattered to free when it
//! drops out: a 100,000-entry ring of built notifications is ~7 allocations each, all touched
//! again (cold) when freed. A replay unpacks what it hands out.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::battle::{BattleSnapshot, SnapshotView, State};
use crate::event::Cause;
use crate::notify::{Notification, Target};

/// A notification's fields after `seq`, in postcard order (`Notification` flattens its battle
/// for JSON, which postcard cannot read back).
type Fields<B> = (Option<State>, Target, Cause, Option<u64>, B);

/// Notifications of one step packed back to back, in order, not yet numbered.
#[derive(Default)]
pub(crate) struct Packed {
    bytes: Vec<u8>,
    /// Where each one ends in `bytes`.
    ends: Vec<usize>,
}

impl Packed {
    /// Packs one notification; `false` (and nothing packed) if it cannot be encoded.
    pub(crate) fn push(
        &mut self,
        from: Option<State>,
        to: Target,
        cause: Cause,
        late_ms: Option<u64>,
        battle: &SnapshotView<'_>,
    ) -> bool {
        let start = self.bytes.len();
        let fields: Fields<&SnapshotView<'_>> = (from, to, cause, late_ms, battle);
        match postcard::serialize_with_flavor(&fields, Append(&mut self.bytes)) {
            Ok(()) => {
                self.ends.push(self.bytes.len());
                true
            }
            Err(e) => {
                // Unreachable for the types packed; the caller builds the notification instead.
                tracing::error!(error = %e, "cannot pack a notification");
                self.bytes.truncate(start);
                false
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each packed notification's bytes, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Builds every packed notification (unnumbered) and empties the pack.
    pub(crate) fn take_unpacked(&mut self) -> Vec<Notification> {
        let out = self.iter().filter_map(|bytes| unpack(0, bytes)).collect();
        self.clear();
        out
    }
}

/// postcard's output appended to a `Vec` (its own `to_extend` pushes byte by byte through
/// `Extend`, which costs more than building the notification).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Builds a packed notification with its number.
pub(crate) fn unpack(seq: u64, bytes: &[u8]) -> Option<Notification> {
    match postcard::from_bytes::<Fields<BattleSnapshot>>(bytes) {
        Ok((from, to, cause, late_ms, battle)) => Some(Notification::from_fields((
            seq, from, to, cause, late_ms, battle,
        ))),
        Err(e) => {
            // Unreachable: the bytes were packed by this build a moment ago.
            tracing::error!(seq, error = %e, "cannot unpack a notification");
            None
        }
    }
}

/// One notification the ring keeps.
enum Kept {
    /// Delivered live: the `Arc` its listeners got.
    Shared(Arc<Notification>),
    /// Heard by nobody else: `len` bytes of the ring's buffer, after the previous packed one.
    Packed { seq: u64, len: usize },
}

impl Kept {
    fn seq(&self) -> u64 {
        match self {
            Kept::Shared(n) => n.seq,
            Kept::Packed { seq, .. } => *seq,
        }
    }
}

/// The last `capacity` notifications, oldest first.
pub(crate) struct Ring {
    capacity: usize,
    kept: VecDeque<Kept>,
    /// The packed entries' bytes, oldest first.
    bytes: VecDeque<u8>,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Ring {
        Ring {
            capacity,
            kept: VecDeque::new(),
            bytes: VecDeque::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The oldest `seq` kept.
    pub(crate) fn oldest_seq(&self) -> Option<u64> {
        self.kept.front().map(Kept::seq)
    }

    /// The newest `seq` kept.
    pub(crate) fn newest_seq(&self) -> Option<u64> {
        self.kept.back().map(Kept::seq)
    }

    /// Keeps a notification that was delivered live.
    pub(crate) fn push_shared(&mut self, n: Arc<Notification>) {
        if self.make_room() {
            self.kept.push_back(Kept::Shared(n));
        }
    }

    /// Keeps a packed notification (the bytes [`Packed`] made) under its number.
    pub(crate) fn push_packed(&mut self, seq: u64, bytes: &[u8]) {
        if self.make_room() {
            self.bytes.extend(bytes);
            self.kept.push_back(Kept::Packed {
                seq,
                len: bytes.len(),
            });
        }
    }

    /// Drops the oldest entry when full; `false` when the ring keeps nothing at all.
    fn make_room(&mut self) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if self.kept.len() >= self.capacity {
            if let Some(Kept::Packed { len, .. }) = self.kept.pop_front() {
                self.bytes.drain(..len);
            }
        }
        true
    }

    /// Every kept notification after `after_seq` that `keep` accepts, oldest first.
    pub(crate) fn after(
        &self,
        after_seq: u64,
        mut keep: impl FnMut(&Notification) -> bool,
    ) -> VecDeque<Arc<Notification>> {
        let mut out = VecDeque::new();
        let mut at = 0;
        let mut scratch = Vec::new();
        for k in &self.kept {
            let n = match *k {
                Kept::Shared(ref n) if n.seq > after_seq => n.clone(),
                Kept::Shared(_) => continue,
                Kept::Packed { seq, len } => {
                    let range = at..at + len;
                    at += len;
                    if seq <= after_seq {
                        continue;
                    }
                    scratch.clear();
                    scratch.extend(self.bytes.range(range));
                    match unpack(seq, &scratch) {
                        Some(n) => Arc::new(n),
                        None => continue,
                    }
                }
            };
            if keep(&n) {
                out.push_back(n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::battle::Battle;

    fn battle(id: &str, version: u64) -> Battle {
        let mut b = Battle::new(id, State::Running, 5);
        b.version = version;
        b
    }

    fn packed_ring(capacity: usize, seqs: std::ops::RangeInclusive<u64>) -> Ring {
        let mut ring = Ring::new(capacity);
        for seq in seqs {
            let b = battle(&format!("b{seq}"), seq);
            let mut p = Packed::default();
            assert!(p.push(None, Target::Update, Cause::ApiScores, None, &b.view(7)));
            let bytes: Vec<&[u8]> = p.iter().collect();
            ring.push_packed(seq, bytes[0]);
        }
        ring
    }

    #[test]
    fn a_packed_notification_unpacks_to_the_one_it_stands_for() {
        let b = battle("b1", 3);
        let mut p = Packed::default();
        assert!(p.push(
            Some(State::AwaitingResponse),
            Target::State(State::Running),
            Cause::StartWebhook,
            Some(12),
            &b.view(99)
        ));
        assert!(p.push(None, Target::Update, Cause::ApiScores, None, &b.view(100)));
        let got = p.take_unpacked();
        assert!(p.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Notification {
                seq: 0,
                from: Some(State::AwaitingResponse),
                to: Target::State(State::Running),
                cause: Cause::StartWebhook,
                late_ms: Some(12),
                battle: b.snapshot(99),
            }
        );
        assert_eq!(got[1].battle, b.snapshot(100));
    }

    #[test]
    fn the_ring_keeps_the_last_capacity_and_replays_after_a_seq() {
        let ring = packed_ring(3, 1..=5);
        assert_eq!((ring.oldest_seq(), ring.newest_seq()), (Some(3), Some(5)));
        assert_eq!(
            ring.bytes.len(),
            ring.kept
                .iter()
                .map(|k| match k {
                    Kept::Packed { len, .. } => *len,
                    Kept::Shared(_) => 0,
                })
                .sum::<usize>()
        );
        let seqs =
            |after| -> Vec<u64> { ring.after(after, |_| true).iter().map(|n| n.seq).collect() };
        assert_eq!(seqs(0), [3, 4, 5]);
        assert_eq!(seqs(3), [4, 5]);
        assert_eq!(seqs(5), Vec::<u64>::new());
        let replayed = ring.after(3, |n| &*n.battle.battle_id == "b5");
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].battle, battle("b5", 5).snapshot(7));
    }

    #[test]
    fn shared_and_packed_entries_keep_their_order() {
        let mut ring = packed_ring(4, 1..=2);
        let mut n = ring.after(1, |_| true).pop_front().expect("seq 2");
        Arc::make_mut(&mut n).seq = 3;
        ring.push_shared(n);
        let b = battle("b4", 4);
        let mut p = Packed::default();
        assert!(p.push(None, Target::Update, Cause::ApiScores, None, &b.view(7)));
        ring.push_packed(4, p.iter().next().expect("one"));
        ring.push_shared(Arc::new(
            unpack(5, p.iter().next().expect("one")).expect("unpacks"),
        ));
        let seqs: Vec<u64> = ring.after(0, |_| true).iter().map(|n| n.seq).collect();
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!(ring.after(3, |_| true)[0].battle, b.snapshot(7));
    }

    #[test]
    fn a_ring_of_capacity_zero_keeps_nothing() {
        let ring = packed_ring(0, 1..=3);
        assert!(ring.is_empty());
        assert!(ring.bytes.is_empty());
    }
}
