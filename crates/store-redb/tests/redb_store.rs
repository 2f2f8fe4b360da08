//! The redb store: the shared store contract, and the start-up refusals.

use std::sync::Arc;

use livebattle_engine::Store;
use livebattle_store_redb::{RedbStore, FILE_NAME};

#[tokio::test]
async fn the_redb_store_honours_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    livebattle_engine::store_contract::run(|name| {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join(name)).expect("opens"));
        store
    })
    .await;
}

#[test]
fn a_data_dir_in_use_by_another_store_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RedbStore::open(dir.path()).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(FILE_NAME), "{err}");
    assert!(err.contains("locked by another process"), "{err}");
}

#[test]
fn a_corrupt_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    std::fs::write(
        &file,
        b"this is not a database, and it is longer than a header would be....",
    )
    .unwrap();
    let before = std::fs::read(&file).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "never wiped");
}

#[test]
fn an_incompatible_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("format version 99"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn an_unreadable_data_dir_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"file").unwrap();
    let err = RedbStore::open(&blocker).unwrap_err().to_string();
    assert!(err.contains("not-a-dir"), "{err}");
}
