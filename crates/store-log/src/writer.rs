//! The writer thread: every write and load goes through it, in order. It appends each group of
//! waiting batches as one frame and makes it durable with one `fdatasync` (group commit), then
//! answers; it starts a compaction when the logs since the last snapshot outgrow it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use std::convert::Infallible;

use livebattle_engine::store::{batch_versions, VersionChange};
use livebattle_engine::{Loaded, StoreError, StoreFigure, StoreOp};
use tokio::sync::oneshot;

use crate::files::{self, Kind, Plan};
use crate::frame;
use crate::image::{Hasher, Index, Tail};
use crate::record;

/// What the writer is asked to do.
pub(crate) enum Job {
    /// Append a batch durably, if its compare-and-set holds.
    Write { ops: Vec<StoreOp>, reply: Reply },
    /// Read the whole state (after every write sent before).
    Load {
        reply: oneshot::Sender<Result<Loaded, StoreError>>,
    },
}

/// Where a write's outcome goes.
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// What the writer reports for monitoring (see [`Stats::figures`]).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    commits: AtomicU64,
    batches: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
    logs_bytes: AtomicU64,
    snapshot_bytes: AtomicU64,
    compactions: AtomicU64,
    compaction_failures: AtomicU64,
}

impl Stats {
    /// The figures, as the server's `/metrics` shows them.
    pub(crate) fn figures(&self) -> Vec<StoreFigure> {
        let f = |name, help, counter, v: &AtomicU64| StoreFigure {
            name,
            help,
            counter,
            value: v.load(Ordering::Relaxed),
        };
        vec![
            f("livebattle_store_commits_total", "Group commits of the log store: one appended frame and one fdatasync each.", true, &self.commits),
            f("livebattle_store_batches_total", "Batches the log store stored (batches ÷ commits: how many one fdatasync covered).", true, &self.batches),
            f("livebattle_store_refused_total", "Batches the log store refused on a compare-and-set conflict.", true, &self.refused),
            f("livebattle_store_write_failures_total", "Group commits that failed (I/O); their batches were not acknowledged.", true, &self.failures),
            f("livebattle_store_log_bytes", "Bytes of the logs since the last snapshot (compaction starts above 64 MiB and the snapshot's size).", false, &self.logs_bytes),
            f("livebattle_store_snapshot_bytes", "Bytes of the latest snapshot.", false, &self.snapshot_bytes),
            f("livebattle_store_compactions_total", "Compactions that wrote a snapshot and deleted what it covers.", true, &self.compactions),
            f("livebattle_store_compaction_failures_total", "Compactions that failed (the logs were kept; retried later).", true, &self.compaction_failures),
        ]
    }
}

/// The most batches one group commit takes.
const MAX_GROUP: usize = 1024;

impl Drop for Writer {
    /// A compaction in progress ends before the writer does (also when it unwinds), so the
    /// directory's lock is never released while it still renames or deletes files.
    fn drop(&mut self) {
        if let Some(c) = self.compaction.take() {
            let _ = c.handle.join();
        }
    }
}

/// Battles' new versions (`None`: no longer stored).
type Changes = HashMap<Arc<str>, Option<u64>, Hasher>;

/// A compaction in progress: it writes snapshot `target` from the files before `log-target`.
struct Compaction {
    target: u64,
    handle: JoinHandle<Result<u64, StoreError>>,
}

/// The writer's state (owned by its thread).
pub(crate) struct Writer {
    dir: PathBuf,
    /// Compact when the logs since the snapshot exceed this and the snapshot's size.
    compact_after: u64,
    log: File,
    log_number: u64,
    log_len: u64,
    /// Each stored battle's version.
    versions: HashMap<Arc<str>, u64, Hasher>,
    /// The snapshot the state starts from (0: none) and its size.
    snapshot: u64,
    snapshot_len: u64,
    /// Bytes of the logs since that snapshot.
    logs_len: u64,
    /// Held while files are renamed or deleted, and while a load reads them.
    files: Arc<Mutex<()>>,
    /// Shared with the store handle, for monitoring.
    pub(crate) stats: Arc<Stats>,
    /// Set when a failed append could not be undone: every later write is refused.
    broken: Option<StoreError>,
    /// After a failed compaction: the log size to wait for before trying again.
    retry_at: u64,
    /// The state as open read it, kept for the first load while nothing has been written
    /// since (the engine loads right after opening: no second read of every file).
    recovered: Option<Index>,
    compaction: Option<Compaction>,
    buf: Vec<u8>,
}

impl Writer {
    /// The writer of the state `index` read (kept for the first load), appending to `log`
    /// (file `log_number`, `log_len` bytes long).
    pub(crate) fn new(
        dir: PathBuf,
        compact_after: u64,
        (log, log_number, log_len): (File, u64, u64),
        index: Index,
    ) -> Writer {
        let snapshot_len = index.bytes(Kind::Snapshot);
        // The log is among the files the index read, unless open has just created it.
        let fresh = if index.holds(Kind::Log, log_number) {
            0
        } else {
            log_len
        };
        let logs_len = index.bytes(Kind::Log) + fresh;
        Writer {
            dir,
            compact_after,
            log,
            log_number,
            log_len,
            versions: index.versions(),
            snapshot: index.snapshot(),
            snapshot_len,
            logs_len,
            files: Arc::new(Mutex::new(())),
            stats: Arc::new(Stats {
                snapshot_bytes: AtomicU64::new(snapshot_len),
                logs_bytes: AtomicU64::new(logs_len),
                ..Stats::default()
            }),
            broken: None,
            retry_at: 0,
            recovered: Some(index),
            compaction: None,
            buf: Vec::new(),
        }
    }

    /// Serves jobs until every sender is gone, then waits for a running compaction.
    pub(crate) fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut group = Vec::new();
            // A bounded group: one frame stays far below the frame limit, and memory small.
            for job in std::iter::once(first).chain(rx.try_iter().take(MAX_GROUP - 1)) {
                match job {
                    Job::Write { ops, reply } => group.push((ops, reply)),
                    Job::Load { reply } => {
                        self.commit(std::mem::take(&mut group));
                        let _ = reply.send(self.load());
                    }
                }
            }
            self.commit(group);
            self.maintain();
        }
    }

    fn log_path(&self) -> PathBuf {
        files::path(&self.dir, Kind::Log, self.log_number)
    }

    /// Appends every batch of the group whose compare-and-set holds, as one frame, durably;
    /// answers each batch.
    fn commit(&mut self, group: Vec<(Vec<StoreOp>, Reply)>) {
        if group.is_empty() {
            return;
        }
        if let Some(broken) = &self.broken {
            for (_, reply) in group {
                let _ = reply.send(Err(broken.clone()));
            }
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let at = frame::start(&mut buf);
        // Versions this group changes (None: no longer stored), applied once it is durable.
        let mut changed: Changes = HashMap::default();
        let mut accepted = Vec::with_capacity(group.len());
        for (ops, reply) in group {
            let mark = buf.len();
            let checked = self
                .check(&ops, &changed)
                .and_then(|batch| record::batch(&mut buf, &ops).map(|()| batch));
            match checked {
                Ok(batch) => {
                    changed.extend(batch);
                    accepted.push(reply);
                }
                Err(e) => {
                    buf.truncate(mark);
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(e));
                }
            }
        }
        if !accepted.is_empty() {
            self.recovered = None;
            let outcome = if buf.len() == at + frame::HEADER {
                Ok(()) // only empty batches: nothing to store
            } else {
                let seed = files::seed(Kind::Log, self.log_number);
                frame::finish(&mut buf, at, seed).and_then(|()| self.append(&buf))
            };
            let counter = if outcome.is_ok() {
                self.stats
                    .batches
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                &self.stats.commits
            } else {
                &self.stats.failures
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.stats
                .logs_bytes
                .store(self.logs_len, Ordering::Relaxed);
            if outcome.is_ok() {
                for (id, version) in changed {
                    match version {
                        Some(v) => self.versions.insert(id, v),
                        None => self.versions.remove(&id),
                    };
                }
            }
            for reply in accepted {
                let _ = reply.send(outcome.clone());
            }
        }
        if buf.capacity() > 1 << 22 {
            buf = Vec::new();
        }
        self.buf = buf;
    }

    /// The version changes a batch makes, if every `Put`'s expected version holds against the
    /// store with `changed` (the group's earlier batches) on top.
    fn check(&self, ops: &[StoreOp], changed: &Changes) -> Result<Vec<VersionChange>, StoreError> {
        let stored = |id: &str| {
            let now = changed.get(id).copied();
            Ok::<_, Infallible>(now.unwrap_or_else(|| self.versions.get(id).copied()))
        };
        batch_versions(ops, stored).unwrap_or_else(|never| match never {})
    }

    /// Writes `bytes` at the end of the log and syncs them; on failure, cuts the log back so
    /// no part of the frame stays (or, if that fails too, refuses every later write).
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let written = self
            .log
            .write_all(bytes)
            .and_then(|()| self.log.sync_data());
        match written {
            Ok(()) => {
                self.log_len += bytes.len() as u64;
                self.logs_len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let p = self.log_path();
                let failure = files::err(&p, format!("cannot append: {e}"));
                let undo = self
                    .log
                    .set_len(self.log_len)
                    .and_then(|()| self.log.seek(SeekFrom::Start(self.log_len)))
                    .and_then(|_| self.log.sync_data());
                if let Err(u) = undo {
                    tracing::error!(path = %p.display(), error = %u,
                        "a failed append could not be undone; the store refuses writes until restarted");
                    self.broken = Some(files::err(
                        &p,
                        format!("a failed append could not be undone ({u}); restart to recover"),
                    ));
                }
                Err(failure)
            }
        }
    }

    /// The whole state, read from the files.
    fn load(&mut self) -> Result<Loaded, StoreError> {
        if let Some(index) = self.recovered.take() {
            return index.into_loaded(&self.dir);
        }
        // Both passes under the lock: a compaction must not delete what the index points to.
        let _files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let plan = Plan::of(&self.dir, &files::list(&self.dir)?)?;
        Index::build(&self.dir, &plan, Tail::Stop)?.into_loaded(&self.dir)
    }

    /// Takes a finished compaction's result; starts one when the logs have outgrown the
    /// snapshot.
    fn maintain(&mut self) {
        if let Some(c) = self.compaction.take_if(|c| c.handle.is_finished()) {
            let result = c
                .handle
                .join()
                .unwrap_or_else(|_| Err(StoreError("the compaction thread panicked".into())));
            match result {
                Ok(len) => {
                    tracing::info!(snapshot = c.target, bytes = len, "compaction done");
                    self.snapshot = c.target;
                    self.snapshot_len = len;
                    self.logs_len = self.log_len;
                    self.retry_at = 0;
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    self.stats.snapshot_bytes.store(len, Ordering::Relaxed);
                    self.stats
                        .logs_bytes
                        .store(self.logs_len, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction failed; the logs are kept, retrying later");
                    self.retry_at = self.logs_len + self.compact_after;
                    self.stats
                        .compaction_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let due = self.logs_len > self.compact_after.max(self.snapshot_len)
            && self.logs_len >= self.retry_at;
        if self.compaction.is_some() || self.broken.is_some() || !due {
            return;
        }
        let Some(target) = self.log_number.checked_add(1) else {
            return;
        };
        // The index open read points into files this compaction will delete.
        self.recovered = None;
        match files::create(&self.dir, Kind::Log, target) {
            Ok(log) => {
                self.log = log;
                self.log_number = target;
                self.log_len = files::HEADER_LEN;
                self.logs_len += files::HEADER_LEN;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new log; compaction postponed");
                self.retry_at = self.logs_len + self.compact_after;
                return;
            }
        }
        let (dir, base, files) = (self.dir.clone(), self.snapshot, self.files.clone());
        let spawned = std::thread::Builder::new()
            .name("livebattle-log-compaction".into())
            .spawn(move || compact(&dir, base, target, &files));
        match spawned {
            Ok(handle) => self.compaction = Some(Compaction { target, handle }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the compaction thread");
                self.retry_at = self.logs_len + self.compact_after;
            }
        }
    }
}

/// Writes snapshot `target` (snapshot `base` + logs `base..target`), then deletes what it
/// covers. Returns the snapshot's size.
fn compact(
    dir: &std::path::Path,
    base: u64,
    target: u64,
    files: &Mutex<()>,
) -> Result<u64, StoreError> {
    let plan = Plan {
        snapshot: base,
        logs: (base.max(1)..target).collect(),
        obsolete: Vec::new(),
    };
    let index = Index::build(dir, &plan, Tail::MustBeClean)?;
    let written = index.write_snapshot(dir, target, |rename| {
        let _files = files.lock().unwrap_or_else(PoisonError::into_inner);
        rename()?;
        let covered = (base > 0)
            .then(|| files::path(dir, Kind::Snapshot, base))
            .into_iter()
            .chain(plan.logs.iter().map(|&n| files::path(dir, Kind::Log, n)));
        for p in covered {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot delete a compacted file");
            }
        }
        Ok(())
    });
    if written.is_err() {
        let _ = std::fs::remove_file(files::temp_path(dir, Kind::Snapshot, target));
    }
    written
}
