//! # livebattle-store-log
//!
//! A durable, embedded [`Store`] for `livebattle-engine` built for write throughput: an
//! append-only log in a data directory, made durable by one `fdatasync` per group of batches,
//! with background compaction into snapshots.
//!
//! - **Group commit.** One writer thread takes every batch waiting for it, checks each one's
//!   compare-and-set, appends the accepted ones as **one checksummed frame**, syncs it once and
//!   only then answers. Nothing is answered `Ok` before it is on disk.
//! - **Crash safety.** A crash can tear only the last frame of the last log — a write never
//!   acknowledged — and opening cuts it off (keeping the bytes aside as `log-N.torn-OFFSET`). A
//!   damaged frame with a good frame after it, a gap in the logs, a bad header or another format
//!   version is refused with the file's path, never wiped.
//! - **Compaction.** When the logs since the last snapshot outgrow it (and
//!   [`LogOptions::compact_after_bytes`]), the writer starts a new log and a background thread
//!   writes the next snapshot from the previous one and the finished logs (to a temporary file,
//!   synced every 4 MiB as it is written so the live log's syncs never wait behind it, renamed),
//!   then deletes what it covers. Writes go on meanwhile.
//! - **Monitoring.** [`Store::figures`] reports commits, batches, refusals, failures, log and
//!   snapshot bytes and compactions (the server shows them on `/metrics`).
//! - **Memory.** The store keeps only each battle's version in memory (for compare-and-set).
//!   Opening, loading and compaction read the files in two passes — an index of where each
//!   battle's latest record is, then only those records — so they hold the index (about 120
//!   bytes per battle), never the files.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use livebattle_engine::Engine;
//! use livebattle_store_log::LogStore;
//!
//! let store = LogStore::open("./livebattle-data")?;
//! let engine = Engine::builder().store(store).start().await?;
//! # let _ = engine; Ok(()) }
//! ```
//!
//! Files (see `files.rs`): `LOCK`, `snapshot-N` (the state as of the start of `log-N`) and
//! `log-N`, each with a header carrying [`FORMAT_VERSION`].

mod files;
mod frame;
mod image;
mod record;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use livebattle_engine::store::BoxFuture;
use livebattle_engine::{Loaded, Store, StoreError, StoreFigure, StoreOp};

pub use files::{FORMAT_VERSION, LOCK_FILE};

use files::{Kind, Plan};
use image::{Index, Tail};
use writer::{Job, Writer};

/// How a [`LogStore`] behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Compact once the logs since the last snapshot hold more than this many bytes (and more
    /// than the snapshot itself, so compaction's cost stays proportional to what was written).
    pub compact_after_bytes: u64,
}

impl Default for LogOptions {
    /// Compact after 64 MiB of log.
    fn default() -> LogOptions {
        LogOptions {
            compact_after_bytes: 64 << 20,
        }
    }
}

/// The log store. The writer thread stops when the store is dropped (after the batches already
/// sent, and any compaction in progress); the directory's lock is released then.
pub struct LogStore {
    dir: PathBuf,
    stats: std::sync::Arc<writer::Stats>,
    tx: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// Held for the store's life.
    _lock: std::fs::File,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.dir).finish()
    }
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir`, with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogStore, StoreError> {
        LogStore::open_with(dir, LogOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: takes its lock, reads every file to check
    /// it (cutting off a torn last write) and starts the writer.
    pub fn open_with(dir: impl AsRef<Path>, options: LogOptions) -> Result<LogStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        files::create_dir_durably(&dir)?;
        let lock = files::lock(&dir)?;
        let listing = files::list(&dir)?;
        for tmp in &listing.temps {
            std::fs::remove_file(tmp)
                .map_err(|e| files::err(tmp, format!("cannot delete an unfinished file: {e}")))?;
        }
        let plan = Plan::of(&dir, &listing)?;
        let index = Index::build(&dir, &plan, Tail::Truncate)?;
        for old in &plan.obsolete {
            if let Err(e) = std::fs::remove_file(old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot delete a compacted file");
            }
        }
        let log = match plan.logs.last() {
            Some(&n) => {
                let p = files::path(&dir, Kind::Log, n);
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .map_err(|e| files::err(&p, format!("cannot be opened: {e}")))?;
                let len = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                    .map_err(|e| files::err(&p, format!("cannot be read: {e}")))?;
                (f, n, len)
            }
            None => {
                let n = plan.snapshot.max(1);
                (files::create(&dir, Kind::Log, n)?, n, files::HEADER_LEN)
            }
        };
        let writer = Writer::new(dir.clone(), options.compact_after_bytes, log, index);
        let stats = writer.stats.clone();
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("livebattle-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| files::err(&dir, format!("cannot start the writer thread: {e}")))?;
        Ok(LogStore {
            dir,
            stats,
            tx: Some(tx),
            writer: Some(writer),
            _lock: lock,
        })
    }

    /// Whether `dir` holds a log store's files (a log or a snapshot).
    pub fn found_in(dir: impl AsRef<Path>) -> bool {
        files::list(dir.as_ref()).is_ok_and(|l| !l.logs.is_empty() || !l.snapshots.is_empty())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn ask<T>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let closed = || files::err(&self.dir, "the store is closed");
        self.tx
            .as_ref()
            .ok_or_else(closed)?
            .send(job(reply))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the jobs already sent; join it so the lock
        // is released when this returns.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store for LogStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(self.ask(|reply| Job::Load { reply }))
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(|reply| Job::Write { ops, reply }))
    }

    fn figures(&self) -> Vec<StoreFigure> {
        self.stats.figures()
    }
}
