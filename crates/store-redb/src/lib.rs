//! # livebattle-store-redb
//!
//! The durable, embedded [`Store`] for `livebattle-engine`, on [redb](https://www.redb.org): one
//! file, `livebattle.redb`, in a data directory. Every battle is kept as a record with its version
//! and its timer (absolute deadline + generation); evicted ids stay for the dedupe horizon; the
//! latest notifications are kept so subscriptions resume across a restart.
//!
//! Writes go through one writer thread that commits every batch waiting for it in a single
//! transaction (**group commit**): with many shards or a burst of webhooks, one fsync covers
//! them all, and each caller is answered only once its batch is durable.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use livebattle_engine::Engine;
//! use livebattle_store_redb::RedbStore;
//!
//! let store = RedbStore::open("./livebattle-data")?;
//! let engine = Engine::builder().store(store).start().await?;
//! # let _ = engine; Ok(()) }
//! ```
//!
//! The file format carries a version ([`FORMAT_VERSION`]); a data directory written by an
//! incompatible version, a corrupt file or one locked by another process is refused at open with
//! an error naming the path — never wiped.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use livebattle_engine::store::{batch_versions, BoxFuture};
use livebattle_engine::{
    Battle, BattleSnapshot, Loaded, Notification, NotificationFields, Store, StoreError, StoreOp,
};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

/// The version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 2;

/// The database file inside the data directory.
pub const FILE_NAME: &str = "livebattle.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// battle id → version (8 bytes, little endian) ++ postcard(Battle).
const BATTLES: TableDefinition<&str, &[u8]> = TableDefinition::new("battles");
/// evicted battle id → Unix ms after which it may be forgotten.
const EVICTED: TableDefinition<&str, i64> = TableDefinition::new("evicted");
/// seq → JSON(Notification).
const NOTIFICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("notifications");

struct Request {
    ops: Vec<StoreOp>,
    reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// The redb store. Cheap to share (`Arc` inside); the writer thread stops when the last handle
/// is dropped.
pub struct RedbStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn err(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{}: {what}", path.display()))
}

impl RedbStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| err(dir, format!("cannot create the data directory: {e}")))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => err(
                &path,
                "is locked by another process (is another livebattle running on this data dir?)",
            ),
            DatabaseError::UpgradeRequired(v) => err(
                &path,
                format!(
                    "was written by an incompatible redb file format ({v}); refusing to touch it"
                ),
            ),
            other => err(
                &path,
                format!(
                    "cannot be opened as a livebattle data file (corrupt or not ours?): {other}"
                ),
            ),
        })?;
        init(&db, &path)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Request>();
        let writer_db = db.clone();
        let writer_path = path.clone();
        let writer = std::thread::Builder::new()
            .name("livebattle-redb-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_path, rx))
            .map_err(|e| err(&path, format!("cannot start the writer thread: {e}")))?;
        Ok(RedbStore {
            db,
            path: Arc::new(path),
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the batches already sent; join it so the
        // file lock is released when this returns.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Creates the tables and checks (or writes) the format version.
fn init(db: &Database, path: &Path) -> Result<(), StoreError> {
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let txn = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
        let battles = txn.open_table(BATTLES).map_err(|x| e(&x))?;
        txn.open_table(EVICTED).map_err(|x| e(&x))?;
        txn.open_table(NOTIFICATIONS).map_err(|x| e(&x))?;
        let found = meta
            .get("format_version")
            .map_err(|x| e(&x))?
            .map(|v| v.value());
        match found {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(err(
                    path,
                    format!(
                        "has data format version {other}; this livebattle reads version \
                         {FORMAT_VERSION} (restore a backup made by a matching version)"
                    ),
                ))
            }
            None => {
                if !battles.is_empty().map_err(|x| e(&x))? {
                    return Err(err(path, "has battles but no format version: not ours"));
                }
                meta.insert("format_version", FORMAT_VERSION)
                    .map_err(|x| e(&x))?;
            }
        }
    }
    txn.commit().map_err(|x| e(&x))
}

fn encode_battle(b: &Battle) -> Result<Vec<u8>, StoreError> {
    let mut out = b.version.to_le_bytes().to_vec();
    let body = postcard::to_stdvec(b).map_err(|e| StoreError(format!("encode battle: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// First byte of a notification row encoded with postcard. Rows written by earlier builds are
/// JSON and start with `{`; both load.
const NOTE_POSTCARD: u8 = 1;

/// Encodes a notification for the replay ring: postcard behind [`NOTE_POSTCARD`] (several times
/// cheaper than the JSON it replaced, on every durable change).
fn encode_note(n: &Notification) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(&n.fields(), vec![NOTE_POSTCARD])
        .map_err(|e| StoreError(format!("encode notification: {e}")))
}

fn decode_note(path: &Path, seq: u64, bytes: &[u8]) -> Result<Notification, StoreError> {
    let bad =
        |x: &dyn std::fmt::Display| err(path, format!("notification {seq} cannot be decoded: {x}"));
    match bytes.split_first() {
        Some((&NOTE_POSTCARD, body)) => {
            postcard::from_bytes::<NotificationFields<BattleSnapshot>>(body)
                .map(Notification::from_fields)
                .map_err(|x| bad(&x))
        }
        _ => serde_json::from_slice(bytes).map_err(|x| bad(&x)),
    }
}

fn stored_version(bytes: &[u8]) -> Option<u64> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

fn decode_battle(path: &Path, id: &str, bytes: &[u8]) -> Result<Battle, StoreError> {
    let body = bytes
        .get(8..)
        .ok_or_else(|| err(path, format!("battle {id:?} has a truncated record")))?;
    postcard::from_bytes(body)
        .map_err(|e| err(path, format!("battle {id:?} cannot be decoded: {e}")))
}

fn write_loop(db: &Database, path: &Path, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        commit_group(db, path, group);
    }
}

/// Commits every request of the group in one transaction; a request whose compare-and-set fails
/// is refused alone; a failed commit refuses them all.
fn commit_group(db: &Database, path: &Path, group: Vec<Request>) {
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|r| (r.ops, r.reply)).unzip();
    let result = (|| -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = db.begin_write().map_err(|x| e(&x))?;
        let mut outcomes = Vec::with_capacity(batches.len());
        {
            let mut battles = txn.open_table(BATTLES).map_err(|x| e(&x))?;
            let mut evicted = txn.open_table(EVICTED).map_err(|x| e(&x))?;
            let mut notes = txn.open_table(NOTIFICATIONS).map_err(|x| e(&x))?;
            for ops in &batches {
                // Compare-and-set first, against the table as this transaction sees it.
                let verdict = batch_versions(ops, |id| {
                    let row = battles.get(id).map_err(|x| e(&x))?;
                    Ok(row.and_then(|g| stored_version(g.value())))
                })?
                .map(drop);
                if verdict.is_ok() {
                    for op in ops {
                        apply(op, &mut battles, &mut evicted, &mut notes, path)?;
                    }
                }
                outcomes.push(verdict);
            }
        }
        txn.commit().map_err(|x| e(&x))?;
        Ok(outcomes)
    })();
    match result {
        Ok(outcomes) => {
            for (reply, verdict) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(verdict);
            }
        }
        Err(failure) => {
            tracing::error!(error = %failure, "redb commit failed; nothing of the group was stored");
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

fn apply(
    op: &StoreOp,
    battles: &mut Table<'_, &'static str, &'static [u8]>,
    evicted: &mut Table<'_, &'static str, i64>,
    notes: &mut Table<'_, u64, &'static [u8]>,
    path: &Path,
) -> Result<(), StoreError> {
    let e = |x: &dyn std::fmt::Display| err(path, x);
    match op {
        StoreOp::Put { battle, .. } => {
            let bytes = encode_battle(battle)?;
            battles
                .insert(&*battle.id, bytes.as_slice())
                .map_err(|x| e(&x))?;
            evicted.remove(&*battle.id).map_err(|x| e(&x))?;
        }
        StoreOp::Evict {
            battle_id,
            forget_at_ms,
        } => {
            battles.remove(&**battle_id).map_err(|x| e(&x))?;
            evicted
                .insert(&**battle_id, *forget_at_ms)
                .map_err(|x| e(&x))?;
        }
        StoreOp::Forget { battle_id } => {
            evicted.remove(&**battle_id).map_err(|x| e(&x))?;
        }
        StoreOp::Notify {
            notification,
            keep_from_seq,
        } => {
            let bytes = encode_note(notification)?;
            notes
                .insert(notification.seq, bytes.as_slice())
                .map_err(|x| e(&x))?;
            let old: Vec<u64> = notes
                .range(..*keep_from_seq)
                .map_err(|x| e(&x))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            for k in old {
                notes.remove(k).map_err(|x| e(&x))?;
            }
        }
    }
    Ok(())
}

fn load_all(db: &Database, path: &Path) -> Result<Loaded, StoreError> {
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let txn = db.begin_read().map_err(|x| e(&x))?;
    // Decoding dominates loading: split it over the CPUs, each decoding every k-th record.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let decoded: Vec<Result<Vec<Battle>, StoreError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let txn = &txn;
                scope.spawn(move || -> Result<Vec<Battle>, StoreError> {
                    let table = txn.open_table(BATTLES).map_err(|x| e(&x))?;
                    let mut out = Vec::new();
                    for (i, row) in table.iter().map_err(|x| e(&x))?.enumerate() {
                        if i % threads != k {
                            continue;
                        }
                        let (key, value) = row.map_err(|x| e(&x))?;
                        out.push(decode_battle(path, key.value(), value.value())?);
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(err(path, "a decoding thread panicked")))
            })
            .collect()
    });
    let mut battles = Vec::new();
    for part in decoded {
        battles.extend(part?);
    }
    let mut evicted = Vec::new();
    for row in txn
        .open_table(EVICTED)
        .map_err(|x| e(&x))?
        .iter()
        .map_err(|x| e(&x))?
    {
        let (k, v) = row.map_err(|x| e(&x))?;
        evicted.push((Arc::from(k.value()), v.value()));
    }
    let mut notifications = Vec::new();
    for row in txn
        .open_table(NOTIFICATIONS)
        .map_err(|x| e(&x))?
        .iter()
        .map_err(|x| e(&x))?
    {
        let (k, v) = row.map_err(|x| e(&x))?;
        notifications.push(decode_note(path, k.value(), v.value())?);
    }
    Ok(Loaded {
        battles,
        evicted,
        notifications,
    })
}

impl Store for RedbStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        let db = self.db.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || load_all(&db, &path))
                .await
                .map_err(|e| StoreError(format!("load task failed: {e}")))?
        })
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let closed = || err(&self.path, "the store is closed");
            self.tx
                .as_ref()
                .ok_or_else(closed)?
                .send(Request { ops, reply })
                .map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebattle_engine::{Cause, State, Target};

    fn note() -> Notification {
        let mut b = Battle::new("b-1", State::Running, 1_000);
        b.from_room = Some("pk-3".into());
        Notification {
            seq: 7,
            from: Some(State::AwaitingResponse),
            to: Target::State(State::Running),
            cause: Cause::StartWebhook,
            late_ms: Some(3),
            battle: b.snapshot(2_000),
        }
    }

    #[test]
    fn notifications_round_trip_in_postcard_and_json_rows_still_load() {
        let path = Path::new("test.redb");
        let n = note();
        let bytes = encode_note(&n).unwrap();
        assert_eq!(bytes[0], NOTE_POSTCARD);
        assert_eq!(decode_note(path, 7, &bytes).unwrap(), n);
        let json = serde_json::to_vec(&n).unwrap();
        assert_eq!(
            decode_note(path, 7, &json).unwrap(),
            n,
            "rows of earlier builds"
        );
        let e = decode_note(path, 7, &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(e.0.contains("notification 7 cannot be decoded"), "{e}");
    }
}
