//! The data directory: which files it holds, their headers, the lock, and durable renames.
//!
//! `log-N` holds the frames appended since `snapshot-N` (or since the beginning, for N = 1
//! without a snapshot); `snapshot-N` is the whole state as of the start of `log-N`. The state is
//! the newest snapshot plus every log from its number on. Older files are left-overs of a
//! compaction that had not deleted them yet; `.tmp` files were never completed (a file is
//! written under its `.tmp` name, synced, then renamed).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use livebattle_engine::StoreError;

/// The version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"LBSTORE\n";
/// The header every file starts with: magic, kind, format version, number.
pub(crate) const HEADER_LEN: u64 = 24;
/// The lock file; held (advisory lock) while a store is open.
pub const LOCK_FILE: &str = "LOCK";

/// Which kind of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Log,
    Snapshot,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Log => "log-",
            Kind::Snapshot => "snapshot-",
        }
    }
    fn byte(self) -> u8 {
        match self {
            Kind::Log => b'L',
            Kind::Snapshot => b'S',
        }
    }
}

/// An error about a file or the directory, naming it.
pub(crate) fn err(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{}: {what}", path.display()))
}

/// The path of file `number` of `kind`.
pub(crate) fn path(dir: &Path, kind: Kind, number: u64) -> PathBuf {
    dir.join(format!("{}{number:020}", kind.prefix()))
}

/// The checksum seed of the frames of file `number` of `kind` (see `frame.rs`).
pub(crate) fn seed(kind: Kind, number: u64) -> u32 {
    crate::frame::seed(kind.byte(), number)
}

/// The header of file `number` of `kind`.
pub(crate) fn header(kind: Kind, number: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8] = kind.byte();
    h[12..16].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    h
}

/// Reads and checks the header of `file` (at `path`), leaving it positioned after it.
pub(crate) fn check_header(
    file: &mut impl Read,
    path: &Path,
    kind: Kind,
    number: u64,
) -> Result<(), StoreError> {
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut h)
        .map_err(|e| err(path, format!("cannot read its header: {e}")))?;
    if h[..8] != MAGIC || h[8] != kind.byte() {
        return Err(err(path, "is not a livebattle log store file (bad header)"));
    }
    let version = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if version != FORMAT_VERSION {
        return Err(err(
            path,
            format!(
                "has data format version {version}; this livebattle reads version \
                 {FORMAT_VERSION} (restore a backup made by a matching version)"
            ),
        ));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&h[16..24]);
    if u64::from_le_bytes(n) != number {
        return Err(err(path, "its header names another file number (renamed?)"));
    }
    Ok(())
}

/// Creates file `number` of `kind` (which must not exist) with its header, durably: written
/// under a temporary name and renamed, so a file of that name always has its whole header.
pub(crate) fn create(dir: &Path, kind: Kind, number: u64) -> Result<File, StoreError> {
    let p = path(dir, kind, number);
    let tmp = temp_path(dir, kind, number);
    let fail = |e: std::io::Error| err(&tmp, format!("cannot be written: {e}"));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(&header(kind, number))
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    match std::fs::metadata(&p) {
        // A header-only file of this name is what a rotation that failed after its rename
        // leaves: it holds nothing, and it goes.
        Ok(m) if m.len() == HEADER_LEN => {}
        Ok(_) => return Err(err(&p, "exists already, with data")),
        Err(_) => {}
    }
    std::fs::rename(&tmp, &p).map_err(|e| err(&p, format!("cannot be put in place: {e}")))?;
    let placed = sync_dir(dir).and_then(|()| {
        f.seek(SeekFrom::End(0))
            .map_err(|e| err(&p, format!("cannot be read: {e}")))
    });
    if let Err(e) = placed {
        // Not usable: take it away again, so the state's last log stays the previous one.
        let _ = std::fs::remove_file(&p);
        return Err(e);
    }
    Ok(f)
}

/// Creates `dir` with any missing parents, and syncs the parent of each directory created (or
/// of `dir`), so that a data dir created just now survives a power cut with its first write.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    std::fs::create_dir_all(dir)
        .map_err(|e| err(dir, format!("cannot create the data directory: {e}")))?;
    let synced: Vec<&Path> = if missing.is_empty() {
        vec![dir]
    } else {
        missing
    };
    // Top down: each new directory's entry in its parent.
    for created in synced.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes the directory's entries (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, format!("cannot sync the directory: {e}")))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Takes the directory's lock, or says who holds it.
pub(crate) fn lock(dir: &Path) -> Result<File, StoreError> {
    let p = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| err(&p, format!("cannot be opened: {e}")))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(
            &p,
            "is locked by another process (is another livebattle running on this data dir?)",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(err(&p, format!("cannot be locked: {e}"))),
    }
}

/// What the directory holds.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Snapshot numbers, ascending.
    pub snapshots: Vec<u64>,
    /// Log numbers, ascending.
    pub logs: Vec<u64>,
    /// Files never finished (a crash before their rename).
    pub temps: Vec<PathBuf>,
}

/// The temporary name file `number` of `kind` is written under before it is renamed into place.
pub(crate) fn temp_path(dir: &Path, kind: Kind, number: u64) -> PathBuf {
    let mut p = path(dir, kind, number).into_os_string();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Lists the directory's store files (others are left alone).
pub(crate) fn list(dir: &Path) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot be read: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, format!("cannot be read: {e}")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours =
            name.starts_with(Kind::Snapshot.prefix()) || name.starts_with(Kind::Log.prefix());
        if ours && name.ends_with(".tmp") {
            listing.temps.push(entry.path());
            continue;
        }
        for (kind, into) in [
            (Kind::Snapshot, &mut listing.snapshots),
            (Kind::Log, &mut listing.logs),
        ] {
            let number = name
                .strip_prefix(kind.prefix())
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = number {
                into.push(n);
            }
        }
    }
    listing.snapshots.sort_unstable();
    listing.logs.sort_unstable();
    Ok(listing)
}

/// Which files make up the state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The snapshot to start from (0: none, the empty state).
    pub snapshot: u64,
    /// The logs to replay after it, ascending and contiguous.
    pub logs: Vec<u64>,
    /// Files a finished compaction made obsolete.
    pub obsolete: Vec<PathBuf>,
}

impl Plan {
    /// The plan for what `listing` holds; refuses a gap in the logs.
    pub(crate) fn of(dir: &Path, listing: &Listing) -> Result<Plan, StoreError> {
        let snapshot = listing.snapshots.last().copied().unwrap_or(0);
        let first = snapshot.max(1);
        let logs: Vec<u64> = listing
            .logs
            .iter()
            .copied()
            .filter(|&n| n >= first)
            .collect();
        for (i, &n) in logs.iter().enumerate() {
            if n != first + i as u64 {
                let missing = path(dir, Kind::Log, first + i as u64);
                return Err(err(
                    &missing,
                    "is missing: the store's files have a gap (restore the directory from a backup)",
                ));
            }
        }
        if snapshot > 0 && logs.is_empty() {
            return Err(err(
                &path(dir, Kind::Log, snapshot),
                "is missing, though its snapshot exists (restore the directory from a backup)",
            ));
        }
        let obsolete = listing
            .snapshots
            .iter()
            .filter(|&&n| n < snapshot)
            .map(|&n| path(dir, Kind::Snapshot, n))
            .chain(
                listing
                    .logs
                    .iter()
                    .filter(|&&n| n < first)
                    .map(|&n| path(dir, Kind::Log, n)),
            )
            .collect();
        Ok(Plan {
            snapshot,
            logs,
            obsolete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(snapshots: &[u64], logs: &[u64]) -> Listing {
        Listing {
            snapshots: snapshots.to_vec(),
            logs: logs.to_vec(),
            temps: vec![],
        }
    }

    #[test]
    fn the_newest_snapshot_and_the_logs_from_its_number_make_the_state() {
        let dir = Path::new("/d");
        let plan = Plan::of(dir, &listing(&[3, 5], &[3, 4, 5, 6])).unwrap();
        assert_eq!(plan.snapshot, 5);
        assert_eq!(plan.logs, vec![5, 6]);
        assert_eq!(
            plan.obsolete,
            vec![
                path(dir, Kind::Snapshot, 3),
                path(dir, Kind::Log, 3),
                path(dir, Kind::Log, 4)
            ]
        );
        let fresh = Plan::of(dir, &listing(&[], &[1, 2])).unwrap();
        assert_eq!((fresh.snapshot, fresh.logs), (0, vec![1, 2]));
        assert_eq!(
            Plan::of(dir, &listing(&[], &[])).unwrap().logs,
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_gap_or_a_missing_log_is_refused_naming_the_file() {
        let dir = Path::new("/d");
        let e = Plan::of(dir, &listing(&[], &[1, 3])).unwrap_err().0;
        assert!(
            e.contains("log-00000000000000000002") && e.contains("gap"),
            "{e}"
        );
        let e = Plan::of(dir, &listing(&[], &[2])).unwrap_err().0;
        assert!(e.contains("log-00000000000000000001"), "{e}");
        let e = Plan::of(dir, &listing(&[4], &[2])).unwrap_err().0;
        assert!(e.contains("log-00000000000000000004"), "{e}");
    }

    #[test]
    fn headers_are_checked() {
        let p = Path::new("/d/log-1");
        let h = header(Kind::Log, 1);
        assert!(check_header(&mut &h[..], p, Kind::Log, 1).is_ok());
        let e = check_header(&mut &h[..], p, Kind::Snapshot, 1)
            .unwrap_err()
            .0;
        assert!(e.contains("bad header"), "{e}");
        let e = check_header(&mut &h[..], p, Kind::Log, 2).unwrap_err().0;
        assert!(e.contains("another file number"), "{e}");
        let mut newer = h;
        newer[12] = 9;
        let e = check_header(&mut &newer[..], p, Kind::Log, 1)
            .unwrap_err()
            .0;
        assert!(e.contains("format version 9"), "{e}");
        let e = check_header(&mut &h[..10], p, Kind::Log, 1).unwrap_err().0;
        assert!(e.contains("cannot read its header"), "{e}");
    }
}
