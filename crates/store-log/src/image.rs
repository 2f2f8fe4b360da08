//! The state the files describe. Reading is two passes, so memory holds an index, never the
//! records: [`Index::build`] reads every file once and keeps, per battle, its version and where
//! its latest record is; [`Index::live`] reads the files again and hands over only those
//! records — what a compaction writes as the next snapshot and what a load decodes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use livebattle_engine::{Battle, Loaded, StoreError};

use crate::files::{self, Kind, Plan};
use crate::frame::{self, Ending};
use crate::record::{self, Raw, Records};

/// The hasher of the store's maps (ids come from outside: seeded per process).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// Where a record is: a file (its index in [`Index::sources`]) and the record's offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    file: u32,
    offset: u64,
}

/// A file of the state, and how far its good data goes.
struct Source {
    path: PathBuf,
    kind: Kind,
    number: u64,
    end: u64,
}

/// What to do about a torn tail (see `frame.rs`): allowed only in the last log, or in a log
/// followed by logs that hold nothing but their header (a rotation's new log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Cut the file back to its last good frame, keeping the cut bytes aside in
    /// `log-N.torn-OFFSET` (at open: the write was never acknowledged).
    Truncate,
    /// Stop reading there, leave the file alone.
    Stop,
    /// Every file must end clean (compaction reads only finished logs).
    MustBeClean,
}

/// The stored state as an index of its live records.
pub(crate) struct Index {
    sources: Vec<Source>,
    /// Each battle's version and latest `Put` record.
    battles: HashMap<Arc<str>, (u64, Loc), Hasher>,
    evicted: HashMap<Arc<str>, i64, Hasher>,
    /// seq → its `Notify` record.
    notifications: BTreeMap<u64, Loc>,
}

impl Index {
    /// Pass one: reads the plan's snapshot and logs in `dir`.
    pub(crate) fn build(dir: &Path, plan: &Plan, tail: Tail) -> Result<Index, StoreError> {
        let mut index = Index {
            sources: Vec::new(),
            battles: HashMap::default(),
            evicted: HashMap::default(),
            notifications: BTreeMap::new(),
        };
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| files::err(p, format!("cannot be read: {e}")))
        };
        if plan.snapshot > 0 {
            let path = files::path(dir, Kind::Snapshot, plan.snapshot);
            let end = size(&path)?;
            index.sources.push(Source {
                path,
                kind: Kind::Snapshot,
                number: plan.snapshot,
                end,
            });
        }
        for &n in &plan.logs {
            let path = files::path(dir, Kind::Log, n);
            let end = size(&path)?;
            index.sources.push(Source {
                path,
                kind: Kind::Log,
                number: n,
                end,
            });
        }
        for i in 0..index.sources.len() {
            index.scan(i, tail)?;
        }
        Ok(index)
    }

    /// Pass one over source `i`.
    fn scan(&mut self, i: usize, tail: Tail) -> Result<(), StoreError> {
        let Index {
            sources,
            battles,
            evicted,
            notifications,
        } = self;
        let source = &sources[i];
        let snapshot = source.kind == Kind::Snapshot;
        let mut ended = None;
        let mut count = 0u64;
        let file = i as u32;
        let ending = read(source, |offset, raw| {
            if ended.is_some() {
                return Err("records after the end record".into());
            }
            let at = Loc { file, offset };
            match raw {
                Raw::Put { id, version, .. } => {
                    evicted.remove(id);
                    match battles.get_mut(id) {
                        Some(e) => *e = (version, at),
                        None => {
                            battles.insert(Arc::from(id), (version, at));
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
                Raw::End { records } if snapshot => ended = Some(records),
                Raw::End { .. } => return Err("an end record in a log".into()),
            }
            count += u64::from(!matches!(raw, Raw::End { .. }));
            Ok(())
        })?;
        if snapshot {
            if ending != Ending::Clean || ended != Some(count) {
                return Err(files::err(
                    &source.path,
                    "is incomplete or damaged (restore the directory from a backup)",
                ));
            }
            return Ok(());
        }
        let Ending::Torn { valid_len, why } = ending else {
            return Ok(());
        };
        let only_headers_after = sources[i + 1..].iter().all(|s| s.end == files::HEADER_LEN);
        let p = source.path.clone();
        match tail {
            Tail::Truncate if only_headers_after => {
                tracing::warn!(
                    path = %p.display(), valid_len, %why,
                    "the last write was torn (never acknowledged); cutting it off, keeping it aside"
                );
                cut(&p, valid_len)
                    .map_err(|e| files::err(&p, format!("cannot cut a torn tail: {e}")))?;
            }
            Tail::Stop if only_headers_after => {}
            _ => {
                return Err(files::err(
                    &p,
                    format!("is damaged at byte {valid_len}: {why}"),
                ))
            }
        }
        sources[i].end = valid_len;
        Ok(())
    }

    /// Pass two: every live battle's and notification's record, in file order.
    fn live(
        &self,
        mut emit: impl FnMut(Raw<'_>, &[u8]) -> Result<(), String>,
    ) -> Result<(), StoreError> {
        for (i, source) in self.sources.iter().enumerate() {
            let file = i as u32;
            let ending = read_whole(source, |offset, raw, whole| {
                let at = Some(Loc { file, offset });
                let wanted = match raw {
                    Raw::Put { id, .. } => self.battles.get(id).map(|e| e.1) == at,
                    Raw::Notify { seq, .. } => self.notifications.get(&seq).copied() == at,
                    _ => false,
                };
                if wanted {
                    emit(raw, whole)?;
                }
                Ok(())
            })?;
            if ending != Ending::Clean {
                return Err(files::err(&source.path, "changed while it was read"));
            }
        }
        Ok(())
    }

    /// The number of the snapshot the state starts from (0: none).
    pub(crate) fn snapshot(&self) -> u64 {
        self.sources
            .iter()
            .find(|s| s.kind == Kind::Snapshot)
            .map_or(0, |s| s.number)
    }

    /// Whether file `number` of `kind` is one the index was read from.
    pub(crate) fn holds(&self, kind: Kind, number: u64) -> bool {
        self.sources
            .iter()
            .any(|s| s.kind == kind && s.number == number)
    }

    /// The bytes of the good data of the files of `kind` (after a torn tail was cut).
    pub(crate) fn bytes(&self, kind: Kind) -> u64 {
        self.sources
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.end)
            .sum()
    }

    /// Every battle's version (what compare-and-set checks against).
    pub(crate) fn versions(&self) -> HashMap<Arc<str>, u64, Hasher> {
        let mut out = HashMap::with_capacity_and_hasher(self.battles.len(), Hasher::default());
        out.extend(self.battles.iter().map(|(id, e)| (id.clone(), e.0)));
        out
    }

    /// Writes the state as snapshot `number`: to a temporary file, synced, then renamed into
    /// place (by `rename`, which holds the caller's lock). Returns its size.
    pub(crate) fn write_snapshot(
        &self,
        dir: &Path,
        number: u64,
        rename: impl FnOnce(&dyn Fn() -> Result<(), StoreError>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        const CHUNK: usize = 1 << 20;
        const SYNC_EVERY: usize = 4 << 20;
        let tmp = files::temp_path(dir, Kind::Snapshot, number);
        let fail = |e: std::io::Error| files::err(&tmp, format!("cannot be written: {e}"));
        let file = File::create(&tmp).map_err(fail)?;
        let mut w = BufWriter::with_capacity(CHUNK * 2, file);
        w.write_all(&files::header(Kind::Snapshot, number))
            .map_err(fail)?;
        let mut size = files::HEADER_LEN;
        let seed = files::seed(Kind::Snapshot, number);
        let mut records = 0u64;
        let mut buf = Vec::with_capacity(CHUNK * 2);
        let mut at = frame::start(&mut buf);
        // Synced as it is written, a few MiB at a time: one big sync at the end holds the
        // filesystem's journal — and with it the live log's fdatasync, so every webhook — for
        // as long as the whole snapshot takes to reach the disk (`scripts/fsync-stall-probe.py`
        // on ext4 here: 150 MiB synced once stalls a concurrent fdatasync up to 118 ms; synced
        // every 4 MiB, 10–44 ms).
        let mut unsynced = 0usize;
        let mut flush = |buf: &mut Vec<u8>, at: usize| -> Result<usize, String> {
            frame::finish(buf, at, seed).map_err(|e| e.0)?;
            w.write_all(buf).map_err(|e| fail(e).0)?;
            size += buf.len() as u64;
            unsynced += buf.len();
            if unsynced >= SYNC_EVERY {
                w.flush()
                    .and_then(|()| w.get_ref().sync_data())
                    .map_err(|e| fail(e).0)?;
                unsynced = 0;
            }
            buf.clear();
            Ok(frame::start(buf))
        };
        self.live(|_, whole| {
            buf.extend_from_slice(whole);
            records += 1;
            if buf.len() >= CHUNK {
                at = flush(&mut buf, at)?;
            }
            Ok(())
        })?;
        for (id, ms) in &self.evicted {
            record::evict(&mut buf, id, *ms)?;
            records += 1;
            if buf.len() >= CHUNK {
                at = flush(&mut buf, at).map_err(StoreError)?;
            }
        }
        record::end(&mut buf, records)?;
        flush(&mut buf, at).map_err(StoreError)?;
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

    /// Decodes the state for the engine: pass two feeds blocks of battle records to one
    /// decoding thread per CPU (decoding dominates), a few MiB in flight at a time.
    pub(crate) fn into_loaded(self, dir: &Path) -> Result<Loaded, StoreError> {
        const BLOCK: usize = 1 << 22;
        let bad = |e: String| files::err(dir, format!("holds a record that {e}"));
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(threads * 2);
        let rx = Mutex::new(rx);
        let mut notifications = Vec::with_capacity(self.notifications.len());
        let (fed, parts) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| decode_blocks(&rx, &self.battles)))
                .collect();
            let mut block = Vec::with_capacity(BLOCK + (1 << 16));
            let fed = self.live(|raw, whole| {
                match raw {
                    Raw::Put { .. } => {
                        block.extend_from_slice(whole);
                        if block.len() >= BLOCK {
                            tx.send(std::mem::take(&mut block))
                                .map_err(|_| "could not be handed to a decoder".to_string())?;
                        }
                    }
                    Raw::Notify { seq, body, .. } => {
                        notifications.push(record::decode_notification(seq, body)?);
                    }
                    _ => {}
                }
                Ok(())
            });
            if !block.is_empty() {
                let _ = tx.send(block);
            }
            drop(tx);
            let parts: Vec<Result<Vec<Battle>, String>> = workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err("panicked a decoding thread".into()))
                })
                .collect();
            (fed, parts)
        });
        fed?;
        let mut battles = Vec::with_capacity(self.battles.len());
        for part in parts {
            battles.extend(part.map_err(bad)?);
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

/// A decoding thread: battles from the blocks it takes, until the channel closes. After an
/// error it keeps taking blocks (so the reader never waits on it) and reports the first error.
///
/// Each battle gets the index's `Arc` of its id, which the store's version map keeps too: one
/// copy of every id for the engine and the store, not two.
fn decode_blocks(
    rx: &Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
    ids: &HashMap<Arc<str>, (u64, Loc), Hasher>,
) -> Result<Vec<Battle>, String> {
    let mut out = Vec::new();
    let mut failed = None;
    loop {
        let block = match rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(block) => block,
            Err(_) => break,
        };
        if failed.is_some() {
            continue;
        }
        // Even a panic in decoding must not stop this thread from draining the channel.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for item in Records::new(&block) {
                let (raw, _) = item?;
                match raw {
                    Raw::Put { id, body, .. } => {
                        let mut battle = record::decode_battle(id, body)?;
                        if let Some((shared, _)) = ids.get_key_value(id) {
                            battle.id = shared.clone();
                        }
                        out.push(battle);
                    }
                    other => return Err(format!("should be a battle but is {other:?}")),
                }
            }
            Ok(())
        }));
        match decoded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some("made a decoder panic".into()),
        }
    }
    failed.map_or(Ok(out), Err)
}

/// Reads `source` up to its end, calling `each` with every record's offset in the file.
fn read(
    source: &Source,
    mut each: impl FnMut(u64, Raw<'_>) -> Result<(), String>,
) -> Result<Ending, StoreError> {
    read_whole(source, |offset, raw, _| each(offset, raw))
}

/// Reads `source` up to its end, calling `each` with every record, its offset in the file and
/// its whole bytes.
fn read_whole(
    source: &Source,
    mut each: impl FnMut(u64, Raw<'_>, &[u8]) -> Result<(), String>,
) -> Result<Ending, StoreError> {
    let p = &source.path;
    let file = File::open(p).map_err(|e| files::err(p, format!("cannot be opened: {e}")))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    files::check_header(&mut r, p, source.kind, source.number)?;
    let seed = files::seed(source.kind, source.number);
    frame::read(r, files::HEADER_LEN, source.end, seed, |at, payload| {
        for item in Records::new(payload) {
            let (raw, whole) = item?;
            let offset = at + (whole.as_ptr() as usize - payload.as_ptr() as usize) as u64;
            each(offset, raw, whole)?;
        }
        Ok(())
    })
    .map_err(|e| files::err(p, format!("is corrupt {e} (restore from a backup)")))
}

/// Cuts `path` back to `len` bytes, keeping what is cut in `PATH.torn-LEN` (or `.torn-LEN.N`
/// when that exists already), for a post-mortem.
fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::Start(len))?;
    let mut kept = None;
    for n in 0..1000 {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".torn-{len}"));
        if n > 0 {
            aside.push(format!(".{n}"));
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&aside)
        {
            Ok(file) => {
                kept = Some(file);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    let mut kept = kept.ok_or_else(|| std::io::Error::other("too many torn tails kept aside"))?;
    std::io::copy(&mut f, &mut kept)?;
    kept.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    f.set_len(len)?;
    f.sync_all()
}
