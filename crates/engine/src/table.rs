//! Where battles live: one [`Part`] per shard, each a slab of records addressed by `u32` slots,
//! an id table of slots, and the room links of its live battles.
//!
//! Why not a map of boxed records keyed by id: at a million battles the engine is bound by
//! memory, not instructions. Here a record sits in a chunk of the slab (no allocation of its
//! own), and an entry of the id table or of the room table is 8 bytes (a slot and 32 bits of the
//! id's or room's hash) instead of an `Arc<str>` key and a value. The tables are
//! `hashbrown::HashTable`s: they store what we give them and ask us to compare and to hash, so
//! they need no copy of the key; a lookup checks the record itself. Each is split in 64 pieces
//! ([`Links`]) so that growing one never rehashes a whole shard's battles at once.
//!
//! Each part sits behind its own lock in [`Table`]: its shard is the only writer, queries read.
//! A room is linked to every live battle that names it, in the part of that battle; the battle a
//! room is in is the live one among them that the engine heard of last ([`Table::room_battle`]).

use std::hash::BuildHasher;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::battle::{Battle, State};
use crate::shard::Hasher;

/// Records per slab chunk: a chunk is allocated whole (≈ 260 KB), so growing never moves a record.
const CHUNK: usize = 1024;

/// A record's place in its part's slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(u32);

/// An entry of the id or room table: a slot, and 32 bits of the hash of the battle's id or of
/// one of its rooms ([`Part::key_of`]). The table hashes an entry by its key alone, so growing a
/// table never reads a record, and a lookup reads a record only when the key matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    slot: u32,
    key: u32,
}

/// Pieces of the id and of the room table, by the top bits of a link's key.
const PIECE_BITS: u32 = 6;

/// A table of links split into 2^[`PIECE_BITS`] `HashTable`s by the key's top bits: hashbrown
/// grows a table by rehashing every entry at once, and at the sizes a shard reaches that stops
/// it for milliseconds (3.5 ms at 460,000 links, 7 ms at 920,000, 25 ms at 1.8 million,
/// measured with mimalloc); a piece grows with a sixty-fourth of that.
struct Links {
    pieces: Box<[HashTable<Link>]>,
}

impl Links {
    fn new() -> Links {
        Links {
            pieces: (0..1 << PIECE_BITS).map(|_| HashTable::new()).collect(),
        }
    }

    /// The table hash of a key: the key spread over 64 bits (low bits pick the bucket, high
    /// bits are hashbrown's tag; the key's top bits, which pick the piece, count for little).
    fn spread(key: u32) -> u64 {
        u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn piece(&self, key: u32) -> &HashTable<Link> {
        &self.pieces[(key >> (32 - PIECE_BITS)) as usize]
    }

    fn piece_mut(&mut self, key: u32) -> &mut HashTable<Link> {
        &mut self.pieces[(key >> (32 - PIECE_BITS)) as usize]
    }

    /// The first link with `key` that `eq` accepts.
    fn find(&self, key: u32, eq: impl FnMut(&Link) -> bool) -> Option<&Link> {
        self.piece(key).find(Self::spread(key), eq)
    }

    fn insert(&mut self, link: Link) {
        self.piece_mut(link.key)
            .insert_unique(Self::spread(link.key), link, |l| Self::spread(l.key));
    }

    /// Removes the first link with `key` that `eq` accepts.
    fn remove(&mut self, key: u32, eq: impl FnMut(&Link) -> bool) {
        if let Ok(e) = self.piece_mut(key).find_entry(Self::spread(key), eq) {
            e.remove();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pieces.iter().map(HashTable::len).sum()
    }
}

/// A battle [`Part::entry`] did not find: its id's key, for [`Part::fill`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vacant(u32);

/// The room keys of one battle (most battles have two rooms).
pub(crate) type RoomKeys = SmallVec<[u32; 4]>;

/// The battles of one shard.
pub(crate) struct Part {
    chunks: Vec<Box<[Option<Battle>]>>,
    /// Slots freed by removals, reused first.
    free: Vec<u32>,
    /// Slots in use.
    len: usize,
    /// Every held battle, by its id's key.
    ids: Links,
    /// The rooms of live battles, by the room's key.
    rooms: Links,
    hasher: Hasher,
}

impl Part {
    fn new(hasher: Hasher) -> Part {
        Part {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            ids: Links::new(),
            rooms: Links::new(),
            hasher,
        }
    }

    /// How many battles it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The key of an id or a room: 32 bits of its hash. Every lookup checks the record itself,
    /// so a key never has to identify a battle or a room on its own; two rooms of the same
    /// battle with the same key are one link (either finds the battle).
    fn key_of(&self, s: &str) -> u32 {
        (self.hasher.hash_one(s) >> 32) as u32
    }

    fn record(chunks: &[Box<[Option<Battle>]>], slot: u32) -> Option<&Battle> {
        let i = slot as usize;
        chunks.get(i / CHUNK)?.get(i % CHUNK)?.as_ref()
    }

    fn record_mut(&mut self, slot: u32) -> Option<&mut Battle> {
        let i = slot as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)?.as_mut()
    }

    /// Where the battle `id` is.
    pub(crate) fn find(&self, id: &str) -> Option<Slot> {
        self.entry(id).ok()
    }

    /// Where the battle `id` is, or the place to [`Part::fill`] with it (one hash and one probe
    /// for a lookup followed by an insert).
    pub(crate) fn entry(&self, id: &str) -> Result<Slot, Vacant> {
        let chunks = &self.chunks;
        let key = self.key_of(id);
        self.ids
            .find(key, |l| {
                l.key == key && Self::record(chunks, l.slot).is_some_and(|b| *b.id == *id)
            })
            .map(|l| Slot(l.slot))
            .ok_or(Vacant(key))
    }

    /// Reads what applying an event to battle `id` will read (its table entry, record, id,
    /// rooms and text arena), so that a batch can look all its battles up first: those lookups
    /// do not depend on each other, so their cache misses overlap, and the applying pass (whose
    /// steps do depend on each other) then finds everything in cache.
    pub(crate) fn warm(&self, id: &str) {
        if let Some(slot) = self.find(id) {
            self.warm_at(slot);
        }
    }

    /// [`Part::warm`] for the battle in `slot` (a due timer's).
    pub(crate) fn warm_at(&self, slot: Slot) {
        if let Some(b) = self.at(slot) {
            let first = |r: Option<&Arc<str>>| r.and_then(|r| r.as_bytes().first().copied());
            std::hint::black_box((
                b.state,
                b.timer,
                b.closed_at_ms,
                b.participants.len(),
                b.operator().map(str::len),
                first(b.from_room.as_ref()),
                first(b.to_rooms.first()),
            ));
        }
    }

    /// The battle `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Battle> {
        self.find(id).and_then(|s| self.at(s))
    }

    /// The battle in `slot`.
    pub(crate) fn at(&self, slot: Slot) -> Option<&Battle> {
        Self::record(&self.chunks, slot.0)
    }

    /// The battle in `slot`, to change in place. A change to its rooms or to whether it is live
    /// must be followed by [`Part::follow`].
    pub(crate) fn at_mut(&mut self, slot: Slot) -> Option<&mut Battle> {
        self.record_mut(slot.0)
    }

    /// Every battle it holds, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Battle> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    /// Holds `b`, replacing (and returning) a battle with the same id; links its rooms if it is
    /// live.
    pub(crate) fn insert(&mut self, b: Battle) -> (Slot, Option<Battle>) {
        match self.entry(&b.id) {
            Ok(slot) => {
                // Any of the old record's rooms may be missing from the new one.
                let was_live = self.at(slot).is_some_and(|b| b.state != State::Ended);
                let before = self.room_keys(slot);
                let old = self.record_mut(slot.0).map(|r| std::mem::replace(r, b));
                self.follow(slot, was_live, &before);
                (slot, old)
            }
            Err(vacant) => (self.fill(vacant, b), None),
        }
    }

    /// Holds `b`, which [`Part::entry`] just found missing (no change to the part since).
    pub(crate) fn fill(&mut self, Vacant(key): Vacant, b: Battle) -> Slot {
        debug_assert!(self.find(&b.id).is_none(), "fill of a battle already held");
        let slot = self.take_slot();
        let i = slot as usize;
        if let Some(cell) = self
            .chunks
            .get_mut(i / CHUNK)
            .and_then(|c| c.get_mut(i % CHUNK))
        {
            *cell = Some(b);
        }
        self.ids.insert(Link { slot, key });
        self.len += 1;
        self.follow(Slot(slot), false, &RoomKeys::new());
        Slot(slot)
    }

    fn take_slot(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.len as u32;
        if s as usize / CHUNK >= self.chunks.len() {
            self.chunks
                .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
        }
        s
    }

    /// Lets go of the battle `id` (and of its room links).
    pub(crate) fn remove(&mut self, id: &str) -> Option<Battle> {
        let slot = self.find(id)?;
        if self.at(slot).is_some_and(|b| b.state != State::Ended) {
            for key in self.room_keys(slot) {
                self.unlink(slot.0, key);
            }
        }
        let key = self.key_of(id);
        self.ids.remove(key, |l| l.slot == slot.0);
        let i = slot.0 as usize;
        let old = self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)?.take();
        self.len -= 1;
        self.free.push(slot.0);
        old
    }

    /// The keys of the rooms of the battle in `slot`, live or not.
    fn room_keys(&self, slot: Slot) -> RoomKeys {
        let mut keys = RoomKeys::new();
        if let Some(b) = self.at(slot) {
            for r in rooms_of(b) {
                let k = self.key_of(r);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    /// The keys of the rooms that a step could take out of the battle in `slot`: participants
    /// that are neither its caller nor an invited callee (those two lists only ever grow).
    /// Usually none, found without reading a room's name: a participant's room shares the
    /// caller's or a callee's allocation. Read before the step, for [`Part::follow`].
    pub(crate) fn leavable_keys(&self, slot: Slot) -> RoomKeys {
        let mut keys = RoomKeys::new();
        let Some(b) = self.at(slot) else {
            return keys;
        };
        for p in &b.participants {
            let r = &p.room_id;
            let same = |x: &Arc<str>| Arc::ptr_eq(x, r);
            if b.from_room.as_ref().is_some_and(same) || b.to_rooms.iter().any(same) {
                continue;
            }
            if b.from_room.as_deref() == Some(&**r) || b.to_rooms.iter().any(|t| **t == **r) {
                continue;
            }
            let k = self.key_of(r);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    /// Makes the room links of the battle in `slot` follow a step that may have changed its
    /// rooms or ended it: the rooms of a live battle are linked, those of an ended one are not.
    /// `was_live` and `leavable` ([`Part::leavable_keys`]) are from before the step.
    pub(crate) fn follow(&mut self, slot: Slot, was_live: bool, leavable: &RoomKeys) {
        let live = self.at(slot).is_some_and(|b| b.state != State::Ended);
        let now = self.room_keys(slot);
        if was_live {
            for &k in leavable.iter().filter(|k| !live || !now.contains(k)) {
                self.unlink(slot.0, k);
            }
            if !live {
                for &k in &now {
                    self.unlink(slot.0, k);
                }
            }
        }
        if live {
            for &k in &now {
                let link = Link {
                    slot: slot.0,
                    key: k,
                };
                if !was_live || self.rooms.find(k, |l| *l == link).is_none() {
                    self.rooms.insert(link);
                }
            }
        }
    }

    fn unlink(&mut self, slot: u32, key: u32) {
        let link = Link { slot, key };
        self.rooms.remove(key, |l| *l == link);
    }

    /// The live battle of this part that names `room` and that the engine heard of last.
    pub(crate) fn room_battle(&self, room: &str) -> Option<&Battle> {
        let key = self.key_of(room);
        let mut best: Option<&Battle> = None;
        // `find` stops at the first match; to see every battle linked to the room, the closure
        // keeps the best and answers "no" (the probe then runs to the end of the sequence).
        self.rooms.find(key, |l| {
            if l.key == key {
                if let Some(b) = Self::record(&self.chunks, l.slot) {
                    if b.state != State::Ended
                        && rooms_of(b).any(|r| **r == *room)
                        && best.is_none_or(|x| recency(b) > recency(x))
                    {
                        best = Some(b);
                    }
                }
            }
            false
        });
        best
    }
}

/// How recently the engine heard of a battle: the greater, the later (the id breaks a tie).
fn recency(b: &Battle) -> (i64, &str) {
    (b.known_since_ms, &b.id)
}

/// Each distinct room of a battle once (participants usually repeat the caller and callees).
fn rooms_of(b: &Battle) -> impl Iterator<Item = &Arc<str>> {
    let listed = |r: &&Arc<str>| b.from_room.as_ref() == Some(*r) || b.to_rooms.contains(*r);
    b.from_room.iter().chain(b.to_rooms.iter()).chain(
        b.participants
            .iter()
            .map(|p| &p.room_id)
            .filter(move |r| !listed(r)),
    )
}

/// Every battle the engine holds: one [`Part`] per shard, each behind its own lock.
pub(crate) struct Table {
    parts: Box<[RwLock<Part>]>,
}

impl Table {
    /// `n` empty parts.
    pub(crate) fn new(n: usize) -> Table {
        let hasher = Hasher::default();
        Table {
            parts: (0..n.max(1))
                .map(|_| RwLock::new(Part::new(hasher.clone())))
                .collect(),
        }
    }

    /// How many parts (shards) it has.
    pub(crate) fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The part that holds battle `id`.
    pub(crate) fn part_of(&self, id: &str) -> usize {
        part_of(id, self.parts.len())
    }

    /// Reads part `i`.
    pub(crate) fn read(&self, i: usize) -> RwLockReadGuard<'_, Part> {
        self.parts[i % self.parts.len()]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes part `i` (its shard only).
    pub(crate) fn write(&self, i: usize) -> RwLockWriteGuard<'_, Part> {
        self.parts[i % self.parts.len()]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the battle `id`, under its part's read lock.
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&Battle) -> R) -> Option<R> {
        self.read(self.part_of(id)).get(id).map(f)
    }

    /// How many battles are held.
    pub(crate) fn len(&self) -> usize {
        (0..self.parts.len()).map(|i| self.read(i).len()).sum()
    }

    /// The id of the live battle `room` is in: of the live battles that name it, the one the
    /// engine heard of last.
    pub(crate) fn room_battle(&self, room: &str) -> Option<Arc<str>> {
        let mut best: Option<(i64, Arc<str>)> = None;
        for i in 0..self.parts.len() {
            let part = self.read(i);
            if let Some(b) = part.room_battle(room) {
                if best
                    .as_ref()
                    .is_none_or(|(since, id)| recency(b) > (*since, &**id))
                {
                    best = Some((b.known_since_ms, b.id.clone()));
                }
            }
        }
        best.map(|(_, id)| id)
    }
}

/// The shard (and part) of battle `id` among `n`: FNV-1a of the id, stable across runs and
/// builds (instances sharing a store agree on it).
pub(crate) fn part_of(id: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Created, Event};
    use crate::transition::{apply_event, Rules};

    fn created(id: &str, from: &str, to: &[&str], at: i64) -> Battle {
        let ev = Event::Created(Created {
            battle_id: id.into(),
            from_room: Some(from.into()),
            to_rooms: to.iter().map(|r| r.to_string()).collect(),
            need_response: Some(false),
            timeout_ms: Some(10_000),
            duration_ms: Some(60_000),
            event_time_ms: Some(at),
            ..Default::default()
        });
        let (b, _) = apply_event(None, &ev, at, &Rules::default()).expect("valid create");
        b.expect("a new battle")
    }

    #[test]
    fn holds_finds_replaces_and_removes_by_id_reusing_slots() {
        let mut p = Part::new(Hasher::default());
        for i in 0..3000 {
            let (_, old) = p.insert(created(&format!("b{i}"), &format!("r{i}"), &[], 1_000));
            assert!(old.is_none());
        }
        assert_eq!(p.len(), 3000);
        assert_eq!(&*p.get("b2999").expect("held").id, "b2999");
        let slot = p.find("b7").expect("held");
        let (again, old) = p.insert(created("b7", "r7", &[], 2_000));
        assert_eq!(again, slot);
        assert_eq!(old.expect("replaced").known_since_ms, 1_000);
        assert_eq!(p.len(), 3000);
        assert_eq!(p.remove("b7").map(|b| b.id), Some("b7".into()));
        assert!(p.get("b7").is_none());
        assert!(p.remove("b7").is_none());
        let (reused, _) = p.insert(created("c", "rc", &[], 1_000));
        assert_eq!(reused, slot, "a freed slot is reused");
        assert_eq!(p.iter().count(), 3000);
        assert_eq!(
            p.get("b1").map(|b| b.from_room.as_deref().unwrap_or("")),
            Some("r1")
        );
    }

    #[test]
    fn rooms_link_live_battles_only_and_follow_changes() {
        let mut p = Part::new(Hasher::default());
        let (s, _) = p.insert(created("a", "x", &["y"], 1_000));
        assert_eq!(p.room_battle("y").map(|b| &*b.id), Some("a"));
        assert!(p.room_battle("z").is_none());
        // A newer battle naming the same room wins; the older one is still linked by its other room.
        p.insert(created("b", "y", &["z"], 2_000));
        assert_eq!(p.room_battle("y").map(|b| &*b.id), Some("b"));
        assert_eq!(p.room_battle("x").map(|b| &*b.id), Some("a"));
        // Ending "b" lets go of its rooms: "y" is back with "a".
        let sb = p.find("b").expect("held");
        let leavable = p.leavable_keys(sb);
        if let Some(b) = p.at_mut(sb) {
            b.state = State::Ended;
        }
        p.follow(sb, true, &leavable);
        assert_eq!(p.room_battle("y").map(|b| &*b.id), Some("a"));
        assert!(p.room_battle("z").is_none());
        // A participant that is neither caller nor callee can leave, and is unlinked.
        if let Some(b) = p.at_mut(s) {
            let extra = b.room_arc("w");
            b.participants.push(crate::battle::Participant::new(extra));
        }
        p.follow(s, true, &RoomKeys::new());
        assert_eq!(p.room_battle("w").map(|b| &*b.id), Some("a"));
        let leavable = p.leavable_keys(s);
        assert_eq!(leavable.len(), 1, "only the extra participant can leave");
        if let Some(b) = p.at_mut(s) {
            b.participants.retain(|q| &*q.room_id != "w");
        }
        p.follow(s, true, &leavable);
        assert!(p.room_battle("w").is_none());
        // Replacing the record relinks it from scratch.
        let mut smaller = p.get("a").expect("held").clone();
        smaller.to_rooms.clear();
        smaller.participants.retain(|q| &*q.room_id != "y");
        p.insert(smaller);
        assert!(p.room_battle("y").is_none());
        assert_eq!(p.rooms.len(), 1);
        p.remove("a");
        assert!(p.room_battle("x").is_none());
        assert_eq!(p.rooms.len(), 0);
    }

    #[test]
    fn the_table_answers_a_room_across_parts_with_the_latest_battle() {
        let t = Table::new(4);
        for (i, id) in ["p", "q", "r", "s", "t"].iter().enumerate() {
            let part = t.part_of(id);
            t.write(part)
                .insert(created(id, "room", &[], 1_000 + i as i64 * 1_000));
        }
        assert_eq!(t.room_battle("room").as_deref(), Some("t"));
        assert_eq!(t.len(), 5);
        assert_eq!(t.with("q", |b| b.known_since_ms), Some(2_000));
    }

    /// Not a check but a measurement (`cargo test --release -p livebattle-engine --lib
    /// longest_steps -- --ignored --nocapture`): the longest single insert into one part while
    /// it grows to a million battles — what a growth stops the shard for.
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn longest_steps_while_a_part_grows_to_a_million() {
        let mut p = Part::new(Hasher::default());
        let battles: Vec<Battle> = (0..1_000_000)
            .map(|i| {
                created(
                    &format!("battle-{i}"),
                    &format!("a-{i}"),
                    &[&format!("b-{i}")],
                    1,
                )
            })
            .collect();
        let mut worst = (std::time::Duration::ZERO, 0);
        for (i, b) in battles.into_iter().enumerate() {
            let t = std::time::Instant::now();
            p.insert(b);
            let took = t.elapsed();
            if took > worst.0 {
                worst = (took, i);
            }
        }
        println!(
            "part of 1,000,000 battles: longest insert {:?} (at battle {})",
            worst.0, worst.1
        );
    }
}
