//! The contract every [`Store`] must honour, as a test suite a store crate runs against its own
//! implementation (feature `store-contract`):
//!
//! ```ignore
//! #[tokio::test]
//! async fn redb_store_honours_the_contract() {
//!     let dir = tempfile::tempdir().unwrap();
//!     livebattle_engine::store_contract::run(|name| {
//!         std::sync::Arc::new(MyStore::open(dir.path().join(name)).unwrap())
//!     })
//!     .await;
//! }
//! ```
//!
//! `open(name)` must return a store holding what the last store opened under `name` held (the
//! previous handle is dropped first): that is how a restart is simulated.

use std::sync::Arc;
use std::time::Duration;

use crate::battle::{Battle, State};
use crate::event::{Created, Ended, Event};
use crate::notify::{Notification, Target};
use crate::store::{Store, StoreOp};
use crate::{Cause, Engine, Filter, TokioClock};

const T0: i64 = 1_739_954_005_000;
/// How long the recovery check's battle runs.
const RUN_MS: i64 = 3_000;

/// Runs every check. Panics with a message naming the broken rule.
pub async fn run<F>(open: F)
where
    F: Fn(&str) -> Arc<dyn Store>,
{
    empty_store_loads_nothing(open("empty")).await;
    writes_survive_a_reopen(&open).await;
    compare_and_set_is_enforced_and_batches_are_atomic(open("cas")).await;
    eviction_and_forgetting(open("evict")).await;
    notifications_are_kept_and_trimmed(open("notify")).await;
    an_engine_recovers_everything(&open).await;
    a_copy_holds_the_same(&open).await;
}

fn battle(id: &str, version: u64) -> Battle {
    let mut b = Battle::new(id, State::Running, T0);
    b.version = version;
    b.from_room = Some("pk-3".into());
    b.to_rooms = vec!["pk-5".into()].into();
    b.started_at_ms = Some(T0).into();
    b.duration_ms = Some(60_000u64).into();
    b.ends_at_ms = Some(T0 + 60_000).into();
    b.set_texts(None, Some("ext/+="));
    b
}

fn put(b: Battle, expected_version: Option<u64>) -> StoreOp {
    StoreOp::Put {
        battle: Arc::new(b),
        expected_version,
    }
}

async fn empty_store_loads_nothing(store: Arc<dyn Store>) {
    let loaded = store.load().await.expect("a new store loads");
    assert!(loaded.battles.is_empty(), "a new store holds no battle");
    assert!(loaded.evicted.is_empty(), "a new store holds no evicted id");
    assert!(
        loaded.notifications.is_empty(),
        "a new store holds no notification"
    );
}

async fn writes_survive_a_reopen<F: Fn(&str) -> Arc<dyn Store>>(open: &F) {
    let store = open("reopen");
    let a = battle("4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=", 1);
    let b = battle("b", 3);
    store
        .write(vec![put(a.clone(), None), put(b.clone(), None)])
        .await
        .expect("a write succeeds");
    drop(store);
    let store = open("reopen");
    let mut loaded = store.load().await.expect("the store reopens").battles;
    loaded.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(loaded, vec![a, b], "records come back exactly as written");
}

async fn compare_and_set_is_enforced_and_batches_are_atomic(store: Arc<dyn Store>) {
    store
        .write(vec![put(battle("x", 1), None)])
        .await
        .expect("first put");
    store
        .write(vec![put(battle("x", 2), Some(1))])
        .await
        .expect("a put expecting the stored version succeeds");
    let stale = store.write(vec![put(battle("x", 3), Some(1))]).await;
    assert!(stale.is_err(), "a put expecting a stale version is refused");
    let dup = store.write(vec![put(battle("x", 3), None)]).await;
    assert!(
        dup.is_err(),
        "a put expecting no battle is refused when one is stored"
    );
    let mixed = store
        .write(vec![
            put(battle("y", 1), None),
            put(battle("x", 9), Some(7)),
        ])
        .await;
    assert!(mixed.is_err(), "a batch with a conflict is refused");
    let loaded = store.load().await.expect("load");
    assert!(
        loaded.battles.iter().all(|b| &*b.id != "y"),
        "a refused batch applies nothing"
    );
    let x = loaded.battles.iter().find(|b| &*b.id == "x");
    assert_eq!(
        x.map(|b| b.version),
        Some(2),
        "the refused puts changed nothing"
    );
}

async fn eviction_and_forgetting(store: Arc<dyn Store>) {
    store
        .write(vec![put(battle("e", 1), None)])
        .await
        .expect("put");
    store
        .write(vec![StoreOp::Evict {
            battle_id: "e".into(),
            forget_at_ms: T0 + 5,
        }])
        .await
        .expect("evict");
    let loaded = store.load().await.expect("load");
    assert!(loaded.battles.is_empty(), "an evicted battle is deleted");
    assert_eq!(
        loaded.evicted,
        vec![("e".into(), T0 + 5)],
        "its id is remembered"
    );
    store
        .write(vec![StoreOp::Forget {
            battle_id: "e".into(),
        }])
        .await
        .expect("forget");
    assert!(
        store.load().await.expect("load").evicted.is_empty(),
        "a forgotten id is gone"
    );
}

fn note(seq: u64) -> Notification {
    Notification {
        seq,
        from: Some(State::Running),
        to: Target::Update,
        cause: Cause::StartWebhook,
        late_ms: None,
        battle: battle("n", seq).snapshot(T0),
    }
}

async fn notifications_are_kept_and_trimmed(store: Arc<dyn Store>) {
    for seq in 1..=5 {
        store
            .write(vec![StoreOp::Notify {
                notification: Arc::new(note(seq)),
                keep_from_seq: seq.saturating_sub(2).max(1),
            }])
            .await
            .expect("notify");
    }
    let mut seqs: Vec<u64> = store
        .load()
        .await
        .expect("load")
        .notifications
        .iter()
        .map(|n| n.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        vec![3, 4, 5],
        "notifications below keep_from_seq are dropped"
    );
    let loaded = store.load().await.expect("load");
    let five = loaded.notifications.iter().find(|n| n.seq == 5);
    assert_eq!(five, Some(&note(5)), "notifications come back exactly");
}

async fn an_engine_recovers_everything<F: Fn(&str) -> Arc<dyn Store>>(open: &F) {
    let clock = Arc::new(TokioClock::starting_at(T0));
    let start = |store: Arc<dyn Store>| {
        Engine::builder()
            .shards(2)
            .clock(clock.clone())
            .store(store)
            .replay_capacity(16)
            .start()
    };
    let engine = start(open("engine")).await.expect("engine starts");
    let create = |id: &str, need_response: bool| {
        Event::Created(Created {
            battle_id: id.into(),
            from_room: Some(format!("from-{id}")),
            to_rooms: vec![format!("to-{id}")],
            timeout_ms: Some(30_000),
            duration_ms: Some(RUN_MS as u64),
            need_response: Some(need_response),
            event_time_ms: Some(T0),
            ..Default::default()
        })
    };
    for ev in [
        create("run", false),
        create("wait", true),
        create("done", false),
        Event::Ended(Ended {
            battle_id: "done".into(),
            op_type: Some(1),
            end_time_s: Some(T0 / 1000 + 1),
            ..Default::default()
        }),
    ] {
        engine.apply(ev).await.expect("applied");
    }
    let before: Vec<_> = ["run", "wait", "done"]
        .iter()
        .map(|id| engine.battle(id).expect("present"))
        .collect();
    let last_seq = engine.last_seq();
    engine.shutdown().await;
    drop(engine);

    let engine = start(open("engine")).await.expect("engine restarts");
    for b in &before {
        let mut now = engine.battle(&b.battle_id).expect("recovered");
        now.server_time_ms = b.server_time_ms;
        assert_eq!(&now, b, "battle {} recovered exactly", b.battle_id);
    }
    assert_eq!(engine.last_seq(), last_seq, "the sequence continues");
    let mut sub = engine
        .subscribe_after(Filter::All, last_seq - 1)
        .expect("resumable across the restart");
    assert!(
        sub.next().await.is_some(),
        "the last notification is replayed"
    );
    let dup = engine
        .apply(create("run", false))
        .await
        .expect("duplicate accepted");
    assert_eq!(
        dup.outcome,
        crate::Outcome::Duplicate,
        "the dedupe memory survived"
    );
    // The recovered timer still fires at the original deadline (short, so a store that needs
    // real time can run this check on a real clock).
    tokio::time::sleep(Duration::from_millis(RUN_MS as u64 + 50)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let run = engine.battle("run").expect("present");
    assert_eq!(run.state, State::Ended, "the recovered timer fired");
    assert_eq!(
        run.ended_at_ms,
        Some(T0 + RUN_MS),
        "at its original deadline"
    );
    engine.shutdown().await;
}

/// [`crate::store::copy`] into this store, across more than one batch: the copy reads back the
/// same; a second copy into it is refused (its battles are no longer new to it).
async fn a_copy_holds_the_same<F: Fn(&str) -> Arc<dyn Store>>(open: &F) {
    let from = crate::store::MemoryStore::default();
    let mut ops: Vec<StoreOp> = (0..12_000)
        .map(|i| put(battle(&format!("copy-{i}"), 1 + i % 3), None))
        .collect();
    ops.push(StoreOp::Evict {
        battle_id: "copy-evicted".into(),
        forget_at_ms: T0 + 1_000,
    });
    ops.extend((7..=9).map(|seq| StoreOp::Notify {
        notification: Arc::new(note(seq)),
        keep_from_seq: 7,
    }));
    from.write(ops).await.expect("the source");
    let to = open("copy");
    let copied = crate::store::copy(&from, &*to).await.expect("copy");
    assert_eq!(
        copied,
        crate::store::Copied {
            battles: 12_000,
            evicted: 1,
            notifications: 3
        }
    );
    assert!(
        crate::store::copy(&from, &*to).await.is_err(),
        "a store that holds the battles already is refused"
    );
}
