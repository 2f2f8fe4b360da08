//! The log store: the shared store contract, crash recovery (torn tails, interrupted
//! compactions), compaction itself, and the start-up refusals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use livebattle_engine::{Battle, State, Store, StoreOp};
use livebattle_store_log::{LogOptions, LogStore};

#[tokio::test]
async fn the_log_store_honours_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    livebattle_engine::store_contract::run(|name| {
        let store: Arc<dyn Store> = Arc::new(LogStore::open(dir.path().join(name)).expect("opens"));
        store
    })
    .await;
}

#[tokio::test]
async fn the_contract_holds_with_a_compaction_after_every_few_writes() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = LogOptions {
        compact_after_bytes: 1,
    };
    livebattle_engine::store_contract::run(|name| {
        let store: Arc<dyn Store> =
            Arc::new(LogStore::open_with(dir.path().join(name), tiny.clone()).expect("opens"));
        store
    })
    .await;
}

fn battle(id: &str, version: u64) -> Battle {
    let mut b = Battle::new(id, State::Running, 1_739_954_005_000);
    b.version = version;
    b.from_room = Some(format!("room-{id}").into());
    b
}

fn put(id: &str, version: u64) -> StoreOp {
    StoreOp::Put {
        battle: Arc::new(battle(id, version)),
        expected_version: version.checked_sub(1).filter(|&v| v > 0),
    }
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

async fn versions(store: &LogStore) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = store
        .load()
        .await
        .unwrap()
        .battles
        .iter()
        .map(|b| (b.id.to_string(), b.version))
        .collect();
    v.sort();
    v
}

/// A store holding battles `a` and `b` (one write each), and its log.
async fn a_and_b() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path()).unwrap();
        store.write(vec![put("a", 1)]).await.unwrap();
        store.write(vec![put("b", 1)]).await.unwrap();
    }
    let log = files(dir.path(), "log-").pop().unwrap();
    (dir, log)
}

#[tokio::test]
async fn a_torn_last_write_is_cut_off_and_everything_acknowledged_stays() {
    let (dir, log) = a_and_b().await;
    let good = std::fs::read(&log).unwrap();
    {
        let store = LogStore::open(dir.path()).unwrap();
        store.write(vec![put("c", 1)]).await.unwrap();
    }
    let next = std::fs::read(&log).unwrap()[good.len()..].to_vec();
    // Every way the next write could have been torn: any part of its frame, a damaged byte in
    // it, or zeros where it should be.
    let mut tails: Vec<Vec<u8>> = (1..next.len()).map(|n| next[..n].to_vec()).collect();
    let mut damaged = next.clone();
    *damaged.last_mut().unwrap() ^= 1;
    tails.push(damaged);
    tails.push(vec![0; 4096]);
    for tail in tails {
        std::fs::write(&log, [&good[..], &tail[..]].concat()).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            versions(&store).await,
            vec![("a".into(), 1), ("b".into(), 1)],
            "tail of {} bytes",
            tail.len()
        );
        drop(store);
        assert_eq!(
            std::fs::read(&log).unwrap(),
            good,
            "the torn tail is cut off"
        );
        let mut aside = log.clone().into_os_string();
        aside.push(format!(".torn-{}", good.len()));
        assert_eq!(std::fs::read(&aside).unwrap(), tail, "and kept aside");
        std::fs::remove_file(&aside).unwrap();
    }
    // And the store goes on appending after the cut.
    let store = LogStore::open(dir.path()).unwrap();
    store.write(vec![put("a", 2)]).await.unwrap();
    drop(store);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        versions(&store).await,
        vec![("a".into(), 2), ("b".into(), 1)]
    );
}

#[tokio::test]
async fn damage_before_the_end_is_refused_and_left_alone() {
    let (dir, log) = a_and_b().await;
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[24 + 8 + 2] ^= 0xff; // in the first frame (its header's checksum)
    std::fs::write(&log, &bytes).unwrap();
    let e = LogStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&log.display().to_string()), "{e}");
    assert!(e.contains("checksum"), "{e}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "never wiped");
}

#[tokio::test]
async fn compaction_keeps_the_state_and_bounds_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        compact_after_bytes: 4096,
    };
    let mut expected = Vec::new();
    {
        let store = LogStore::open_with(dir.path(), options.clone()).unwrap();
        for round in 1..=40u64 {
            let ops: Vec<StoreOp> = (0..20).map(|i| put(&format!("b{i:02}"), round)).collect();
            store.write(ops).await.unwrap();
        }
        store
            .write(vec![StoreOp::Evict {
                battle_id: "b00".into(),
                forget_at_ms: 99,
            }])
            .await
            .unwrap();
        for i in 1..20 {
            expected.push((format!("b{i:02}"), 40));
        }
        assert_eq!(versions(&store).await, expected);
    }
    assert!(
        !files(dir.path(), "snapshot-").is_empty(),
        "a snapshot was written"
    );
    let on_disk: u64 = files(dir.path(), "")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        on_disk < 40 * 4096,
        "old logs were deleted: {on_disk} bytes"
    );
    let store = LogStore::open_with(dir.path(), options).unwrap();
    assert_eq!(versions(&store).await, expected);
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.evicted, vec![("b00".into(), 99)]);
    // Compare-and-set still knows every version after the restart.
    assert!(store.write(vec![put("b05", 40)]).await.is_err());
    store.write(vec![put("b05", 41)]).await.unwrap();
    let figure = |name: &str| {
        store
            .figures()
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    };
    assert_eq!(figure("livebattle_store_commits_total"), Some(1));
    assert_eq!(figure("livebattle_store_refused_total"), Some(1));
    assert!(figure("livebattle_store_snapshot_bytes").unwrap_or(0) > 0);
}

#[tokio::test]
async fn an_interrupted_compaction_leaves_a_readable_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open_with(
            dir.path(),
            LogOptions {
                compact_after_bytes: 1,
            },
        )
        .unwrap();
        for v in 1..=5 {
            store.write(vec![put("a", v)]).await.unwrap();
        }
    }
    // A crash while a snapshot was being written leaves a temporary file; one after the
    // rename but before the deletions leaves covered files: both are cleaned up at open.
    let snap = files(dir.path(), "snapshot-").pop().unwrap();
    let mut tmp = snap.clone().into_os_string();
    tmp.push("0.tmp");
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    let stale = dir.path().join("log-00000000000000000000");
    std::fs::write(&stale, b"covered").unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(versions(&store).await, vec![("a".into(), 5)]);
    assert!(!Path::new(&tmp).exists());
    assert!(!stale.exists());
}

#[test]
fn a_data_dir_in_use_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LogStore::open(dir.path()).unwrap();
    let e = LogStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains(livebattle_store_log::LOCK_FILE), "{e}");
    assert!(e.contains("locked by another process"), "{e}");
}

#[test]
fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(LogStore::open(dir.path()).unwrap());
    let log = files(dir.path(), "log-").pop().unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[12] = 99;
    std::fs::write(&log, &bytes).unwrap();
    let e = LogStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("format version 99"), "{e}");
    assert!(e.contains(&log.display().to_string()), "{e}");
}

#[test]
fn a_gap_in_the_logs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(LogStore::open(dir.path()).unwrap());
    std::fs::write(dir.path().join("log-00000000000000000003"), b"x").unwrap();
    let e = LogStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("log-00000000000000000002") && e.contains("gap"),
        "{e}"
    );
}

#[tokio::test]
async fn a_data_dir_several_levels_deep_is_created_and_reopened() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("var").join("lib").join("livebattle");
    {
        let store = LogStore::open(&dir).unwrap();
        store.write(vec![put("deep", 1)]).await.unwrap();
    }
    let store = LogStore::open(&dir).unwrap();
    assert_eq!(versions(&store).await, [("deep".to_owned(), 1)]);
}
