//! The state the files describe, as records: what replaying a snapshot and its logs gives, what a
//! compaction writes back as the next snapshot, and what loading decodes for the engine.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use livebattle_engine::{Battle, Loaded, StoreError};

use crate::files::{self, Kind, Plan};
use crate::frame::{self, Ending};
use crate::record::{self, Raw, Records};

/// The hasher of the store's maps (ids are attacker-influenced: seeded per process).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// Where a record's bytes are: a frame payload of [`Image::chunks`], and the span in it.
#[derive(Clone, Copy, Debug)]
struct Loc {
    chunk: u32,
    start: u32,
    len: u32,
}

/// A battle's latest record.
struct Entry {
    version: u64,
    /// The whole `Put` record.
    record: Loc,
}

/// The stored state, as records. The frames read are kept whole (one allocation per frame, not
/// per record); the maps point into them.
#[derive(Default)]
pub(crate) struct Image {
    chunks: Vec<Box<[u8]>>,
    battles: HashMap<Arc<str>, Entry, Hasher>,
    evicted: HashMap<Arc<str>, i64, Hasher>,
    /// seq → the whole `Notify` record.
    notifications: BTreeMap<u64, Loc>,
}

/// What to do about a torn tail at the end of the last log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Cut the file back to its last good frame (at open: the write was never acknowledged).
    Truncate,
    /// Stop reading there, leave the file alone.
    Stop,
    /// Every file must end clean (compaction reads only finished logs).
    MustBeClean,
}

/// Applies one record to the maps.
fn apply(
    battles: &mut HashMap<Arc<str>, Entry, Hasher>,
    evicted: &mut HashMap<Arc<str>, i64, Hasher>,
    notifications: &mut BTreeMap<u64, Loc>,
    raw: Raw<'_>,
    at: Loc,
) {
    match raw {
        Raw::Put { id, version, .. } => {
            evicted.remove(id);
            let entry = Entry {
                version,
                record: at,
            };
            match battles.get_mut(id) {
                Some(e) => *e = entry,
                None => {
                    battles.insert(Arc::from(id), entry);
                }
            }
        }
        Raw::Evict { id, forget_at_ms } => {
            let key = battles
                .remove_entry(id)
                .map_or_else(|| Arc::from(id), |(k, _)| k);
            evicted.insert(key, forget_at_ms);
        }
        Raw::Forget { id } => {
            evicted.remove(id);
        }
        Raw::Notify {
            seq, keep_from_seq, ..
        } => {
            notifications.insert(seq, at);
            while let Some(first) = notifications.first_entry() {
                if *first.key() >= keep_from_seq {
                    break;
                }
                first.remove();
            }
        }
        Raw::End { .. } => {}
    }
}

impl Image {
    /// The bytes at `at`.
    fn bytes(&self, at: Loc) -> &[u8] {
        let start = at.start as usize;
        &self.chunks[at.chunk as usize][start..start + at.len as usize]
    }

    /// Replays the plan's snapshot and logs in `dir`.
    pub(crate) fn replay(dir: &Path, plan: &Plan, tail: Tail) -> Result<Image, StoreError> {
        let mut image = Image::default();
        if plan.snapshot > 0 {
            let p = files::path(dir, Kind::Snapshot, plan.snapshot);
            let mut ended = None;
            let mut count = 0u64;
            let ending = image.read(&p, Kind::Snapshot, plan.snapshot, |raw| {
                if ended.is_some() {
                    return Err("records after the end record".into());
                }
                match raw {
                    Raw::End { records } => ended = Some(*records),
                    _ => count += 1,
                }
                Ok(())
            })?;
            if ending != Ending::Clean || ended != Some(count) {
                return Err(files::err(
                    &p,
                    "is incomplete or damaged (restore the directory from a backup)",
                ));
            }
        }
        for (i, &n) in plan.logs.iter().enumerate() {
            let p = files::path(dir, Kind::Log, n);
            let ending = image.read(&p, Kind::Log, n, |raw| match raw {
                Raw::End { .. } => Err("an end record in a log".into()),
                _ => Ok(()),
            })?;
            let Ending::Torn { valid_len, why } = ending else {
                continue;
            };
            let last = i + 1 == plan.logs.len();
            match tail {
                Tail::Truncate if last => {
                    tracing::warn!(
                        path = %p.display(), valid_len, %why,
                        "the last write was torn (never acknowledged); cutting it off"
                    );
                    let cut = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(valid_len).and_then(|()| f.sync_all()));
                    cut.map_err(|e| files::err(&p, format!("cannot cut a torn tail: {e}")))?;
                }
                Tail::Stop if last => {}
                _ => {
                    return Err(files::err(
                        &p,
                        format!("is damaged at byte {valid_len}: {why}"),
                    ))
                }
            }
        }
        Ok(image)
    }

    /// Reads one file's records into the image, checking each with `check` first.
    fn read(
        &mut self,
        p: &Path,
        kind: Kind,
        number: u64,
        mut check: impl FnMut(&Raw<'_>) -> Result<(), String>,
    ) -> Result<Ending, StoreError> {
        let file = File::open(p).map_err(|e| files::err(p, format!("cannot be opened: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| files::err(p, format!("cannot be read: {e}")))?
            .len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        files::check_header(&mut r, p, kind, number)?;
        let Image {
            chunks,
            battles,
            evicted,
            notifications,
        } = self;
        frame::read(r, files::HEADER_LEN, len, |payload| {
            let chunk = u32::try_from(chunks.len()).map_err(|_| "too many frames")?;
            chunks.push(payload.into());
            let kept = &chunks[chunk as usize];
            for item in Records::new(kept) {
                let (raw, whole) = item?;
                check(&raw)?;
                let at = Loc {
                    chunk,
                    start: (whole.as_ptr() as usize - kept.as_ptr() as usize) as u32,
                    len: whole.len() as u32,
                };
                apply(battles, evicted, notifications, raw, at);
            }
            Ok(())
        })
        .map_err(|e| files::err(p, format!("is corrupt {e} (restore from a backup)")))
    }

    /// Every battle's version (what compare-and-set checks against).
    pub(crate) fn versions(&self) -> HashMap<Arc<str>, u64, Hasher> {
        let mut out = HashMap::with_capacity_and_hasher(self.battles.len(), Hasher::default());
        out.extend(self.battles.iter().map(|(id, e)| (id.clone(), e.version)));
        out
    }

    /// Writes the image as snapshot `number`: to a temporary file, synced, then renamed into
    /// place (with `rename` holding the caller's lock). Returns its size.
    pub(crate) fn write_snapshot(
        &self,
        dir: &Path,
        number: u64,
        rename: impl FnOnce(&dyn Fn() -> Result<(), StoreError>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        const CHUNK: usize = 1 << 20;
        enum Row<'a> {
            Record(&'a [u8]),
            Evicted(&'a str, i64),
        }
        let tmp = files::temp_path(dir, Kind::Snapshot, number);
        let fail = |e: std::io::Error| files::err(&tmp, format!("cannot be written: {e}"));
        let file = File::create(&tmp).map_err(fail)?;
        let mut w = BufWriter::with_capacity(CHUNK * 2, file);
        w.write_all(&files::header(Kind::Snapshot, number))
            .map_err(fail)?;
        let mut size = files::HEADER_LEN;
        let mut rows = self
            .battles
            .values()
            .map(|e| Row::Record(self.bytes(e.record)))
            .chain(
                self.notifications
                    .values()
                    .map(|&r| Row::Record(self.bytes(r))),
            )
            .chain(self.evicted.iter().map(|(id, ms)| Row::Evicted(id, *ms)));
        let mut records = 0u64;
        let mut buf = Vec::with_capacity(CHUNK * 2);
        loop {
            buf.clear();
            let at = frame::start(&mut buf);
            let mut last = true;
            for row in rows.by_ref() {
                match row {
                    Row::Record(bytes) => buf.extend_from_slice(bytes),
                    Row::Evicted(id, ms) => record::evict(&mut buf, id, ms)?,
                }
                records += 1;
                if buf.len() >= CHUNK {
                    last = false;
                    break;
                }
            }
            if last {
                record::end(&mut buf, records)?;
            }
            frame::finish(&mut buf, at)?;
            w.write_all(&buf).map_err(fail)?;
            size += buf.len() as u64;
            if last {
                break;
            }
        }
        let file = w.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        let done = files::path(dir, Kind::Snapshot, number);
        rename(&|| {
            std::fs::rename(&tmp, &done)
                .map_err(|e| files::err(&done, format!("cannot be put in place: {e}")))?;
            files::sync_dir(dir)
        })?;
        Ok(size)
    }

    /// Decodes the image for the engine (battles in parallel: decoding dominates).
    pub(crate) fn into_loaded(self, dir: &Path) -> Result<Loaded, StoreError> {
        let bad = |e: String| files::err(dir, format!("holds a record that {e}"));
        let rows: Vec<&[u8]> = self
            .battles
            .values()
            .map(|e| self.bytes(e.record))
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let chunk = rows.len().div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<Battle>, String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = rows
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(|r| decode_put(r)).collect()))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err("panicked a decoding thread".into()))
                })
                .collect()
        });
        let mut battles = Vec::with_capacity(rows.len());
        for part in parts {
            battles.extend(part.map_err(bad)?);
        }
        let mut notifications = Vec::with_capacity(self.notifications.len());
        for &at in self.notifications.values() {
            if let Some(Ok((Raw::Notify { seq, body, .. }, _))) =
                Records::new(self.bytes(at)).next()
            {
                notifications.push(record::decode_notification(seq, body).map_err(bad)?);
            }
        }
        Ok(Loaded {
            battles,
            evicted: self
                .evicted
                .iter()
                .map(|(id, &ms)| (id.clone(), ms))
                .collect(),
            notifications,
        })
    }
}

fn decode_put(row: &[u8]) -> Result<Battle, String> {
    match Records::new(row).next() {
        Some(Ok((Raw::Put { id, body, .. }, _))) => record::decode_battle(id, body),
        other => Err(format!("should be a battle but is {other:?}")),
    }
}
