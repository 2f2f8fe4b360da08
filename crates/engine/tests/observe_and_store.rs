//! Subscriptions (filters, lag, resume) and the store seam (restart recovery, late timers).

mod common;

use common::*;
use livebattle_engine::{
    Cause, Delivery, EndReason, Filter, MemoryStore, Outcome, State, Store, StoreError, StoreOp,
    Target,
};

fn seq_of(d: Delivery) -> (u64, String) {
    match d {
        Delivery::Notification(n) => (n.seq, n.battle.battle_id.to_string()),
        Delivery::Lagged { missed } => panic!("unexpected lag of {missed}"),
    }
}

#[tokio::test(start_paused = true)]
async fn subscriptions_filter_by_battle_and_room() {
    let e = engine().await;
    let mut all = e.subscribe(Filter::All);
    let mut one = e.subscribe(Filter::Battle("b".into()));
    let mut room = e.subscribe(Filter::Room("pk-9".into()));
    e.apply(create("a", false, T0)).await.unwrap();
    e.apply(create("b", false, T0)).await.unwrap();
    let mut c = create("c", false, T0);
    if let livebattle_engine::Event::Created(c) = &mut c {
        c.to_rooms = vec!["pk-9".into()];
    }
    e.apply(c).await.unwrap();
    let (s1, id1) = seq_of(all.next().await.unwrap());
    let (s2, _) = seq_of(all.next().await.unwrap());
    let (s3, _) = seq_of(all.next().await.unwrap());
    assert_eq!(id1, "a");
    assert!(s1 < s2 && s2 < s3);
    assert_eq!(seq_of(one.next().await.unwrap()).1, "b");
    assert_eq!(seq_of(room.next().await.unwrap()).1, "c");
    assert_eq!(e.subscriber_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_is_told_it_lagged_and_never_slows_the_engine() {
    let e = builder().channel_capacity(4).start().await.unwrap();
    let mut slow = e.subscribe(Filter::All);
    for i in 0..20 {
        e.apply(create(&format!("b{i}"), false, T0)).await.unwrap();
    }
    match slow.next().await.unwrap() {
        Delivery::Lagged { missed } => assert_eq!(missed, 16),
        other => panic!("expected lag, got {other:?}"),
    }
    // After the lag it continues with what is still buffered.
    assert!(matches!(
        slow.next().await.unwrap(),
        Delivery::Notification(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn resume_after_a_seq_has_no_gap_and_no_duplicate() {
    let e = builder().replay_capacity(100).start().await.unwrap();
    for i in 0..5 {
        e.apply(create(&format!("b{i}"), false, T0)).await.unwrap();
    }
    let last = e.last_seq();
    assert_eq!(last, 5);
    let mut sub = e.subscribe_after(Filter::All, 2).unwrap();
    for i in 5..7 {
        e.apply(create(&format!("b{i}"), false, T0)).await.unwrap();
    }
    let seqs: Vec<u64> = [(); 4]
        .iter()
        .map(|_| ())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|_| 0)
        .collect();
    let mut got = Vec::new();
    for _ in seqs {
        got.push(seq_of(sub.next().await.unwrap()).0);
    }
    assert_eq!(got, vec![3, 4, 5, 6]);
    let next = seq_of(sub.next().await.unwrap()).0;
    assert_eq!(next, 7);
    // Too old: refused, so the client re-reads a snapshot.
    let small = builder().replay_capacity(2).start().await.unwrap();
    for i in 0..5 {
        small
            .apply(create(&format!("b{i}"), false, T0))
            .await
            .unwrap();
    }
    let err = small.subscribe_after(Filter::All, 1).err().unwrap();
    assert_eq!(err.oldest_available, 4);
    assert!(small.subscribe_after(Filter::All, 3).is_ok());
}

/// Drives the same battles through `e`: webhooks with every field, a score update and timers.
async fn same_story(e: &livebattle_engine::Engine) {
    e.apply(create("a", true, T0)).await.unwrap();
    e.apply(create("b", false, T0)).await.unwrap();
    at(e, 1_000).await;
    e.apply(start("a", T0 + 1_000)).await.unwrap();
    e.apply(end("b", T0, T0 + 2_000, 1)).await.unwrap();
    // a's end timer fires at T0 + 61 s.
    at(e, 62_000).await;
}

#[tokio::test(start_paused = true)]
async fn a_replay_of_what_nobody_heard_equals_what_a_listener_heard() {
    // `heard` has an observer from the start: every notification is built and delivered live.
    // `quiet` has nobody: its ring keeps them packed and builds them on replay.
    let heard = builder().replay_capacity(100).start().await.unwrap();
    let rec = Recorder::attach(&heard);
    let quiet = builder().replay_capacity(100).start().await.unwrap();
    // Side by side, so that both see the same clock readings.
    tokio::join!(same_story(&heard), same_story(&quiet));
    let live = rec.take();
    assert!(live.len() >= 5, "{live:?}");
    assert!(live.iter().any(|n| n.cause == Cause::EndTimer));
    let mut sub = quiet.subscribe_after(Filter::All, 0).unwrap();
    for want in &live {
        match sub.next().await.unwrap() {
            Delivery::Notification(got) => assert_eq!(*got, *want),
            Delivery::Lagged { missed } => panic!("lagged {missed}"),
        }
    }
    // The same through a battle filter.
    let mut one = quiet
        .subscribe_after(Filter::Battle("a".into()), 1)
        .unwrap();
    for want in live
        .iter()
        .filter(|n| n.seq > 1 && &*n.battle.battle_id == "a")
    {
        match one.next().await.unwrap() {
            Delivery::Notification(got) => assert_eq!(*got, *want),
            Delivery::Lagged { missed } => panic!("lagged {missed}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_listener_midway_gets_packed_and_built_notifications_in_order() {
    let e = builder().replay_capacity(100).start().await.unwrap();
    for i in 0..3 {
        e.apply(create(&format!("b{i}"), false, T0)).await.unwrap();
    }
    let mut live = e.subscribe(Filter::All);
    for i in 3..5 {
        e.apply(create(&format!("b{i}"), false, T0)).await.unwrap();
    }
    assert_eq!(seq_of(live.next().await.unwrap()), (4, "b3".to_string()));
    assert_eq!(seq_of(live.next().await.unwrap()), (5, "b4".to_string()));
    let mut sub = e.subscribe_after(Filter::All, 1).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(seq_of(sub.next().await.unwrap()));
    }
    let want: Vec<(u64, String)> = (2..=5).map(|s| (s, format!("b{}", s - 1))).collect();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn a_restart_rebuilds_battles_and_fires_overdue_timers_once_marked_late() {
    let store = MemoryStore::new();
    // One wall clock across the "restart", as the real one would be.
    let clock = std::sync::Arc::new(livebattle_engine::TokioClock::starting_at(T0));
    let e = builder()
        .clock(clock.clone())
        .store(store.clone())
        .start()
        .await
        .unwrap();
    e.apply(create("soon", false, T0)).await.unwrap();
    let mut later = create("later", false, T0);
    if let livebattle_engine::Event::Created(c) = &mut later {
        c.duration_ms = Some(120_000);
        c.from_room = Some("pk-30".into());
        c.to_rooms = vec!["pk-50".into()];
    }
    e.apply(later).await.unwrap();
    e.apply(create("dup", false, T0)).await.unwrap();
    e.apply(end("dup", T0, T0 + 1_000, 1)).await.unwrap();
    e.shutdown().await;
    assert_eq!(store.len(), 3);

    // Down for 70 s: "soon" (ends at T0+60 s) is overdue.
    tokio::time::sleep(std::time::Duration::from_secs(70)).await;
    let rec = Recorder::default();
    let e2 = builder()
        .clock(clock)
        .store(store.clone())
        .observer(rec.observer())
        .start()
        .await
        .unwrap();
    settle().await;
    let soon = e2.battle("soon").unwrap();
    assert_eq!(soon.state, State::Ended);
    assert_eq!(soon.ended_at_ms, Some(T0 + 60_000));
    let notes = rec.for_battle("soon");
    assert_eq!(notes.len(), 1, "fired exactly once");
    assert_eq!(notes[0].cause, Cause::EndTimer);
    assert_eq!(notes[0].late_ms, Some(10_000));
    // "later" still runs, and ends at its original deadline.
    assert_eq!(e2.battle("later").unwrap().state, State::Running);
    // The dedupe memory survived.
    let a = e2.apply(end("dup", T0, T0 + 1_000, 1)).await.unwrap();
    assert_eq!(a.outcome, Outcome::Duplicate);
    assert_eq!(
        e2.room_battle("pk-50").map(|b| b.battle_id.to_string()),
        Some("later".into())
    );
    assert_eq!(e2.metrics().snapshot().timers_fired, 1);
    assert_eq!(
        e2.battle("dup").unwrap().end_reason,
        Some(EndReason::AllExited)
    );
    at(&e2, 120_000).await;
    let later = e2.battle("later").unwrap();
    assert_eq!(later.ended_at_ms, Some(T0 + 120_000));
    assert_eq!(rec.for_battle("later")[0].late_ms, Some(0));
}

/// A memory store whose writes can be made to fail, or to take a while (an fsync stall).
#[derive(Clone, Default)]
struct TestStore {
    inner: MemoryStore,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: u64,
    /// Writes that succeeded.
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Store for TestStore {
    fn load(
        &self,
    ) -> livebattle_engine::store::BoxFuture<'_, Result<livebattle_engine::Loaded, StoreError>>
    {
        self.inner.load()
    }
    fn write(
        &self,
        ops: Vec<StoreOp>,
    ) -> livebattle_engine::store::BoxFuture<'_, Result<(), StoreError>> {
        let delay = std::time::Duration::from_millis(self.delay_ms);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError("disk on fire".into()));
            }
            self.inner.write(ops).await?;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_acknowledged_before_it_is_stored() {
    let store = TestStore::default();
    let e = builder().store(store.clone()).start().await.unwrap();
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(e.is_ready());
    let err = e.apply(create("b", false, T0)).await.unwrap_err();
    assert!(err.to_string().contains("disk on fire"));
    assert!(!e.is_ready(), "not ready while the store fails");
    assert!(store.inner.is_empty());
    // The retry (Tencent's, or any) is acknowledged only once the change is stored.
    let err = e.apply(create("b", false, T0)).await.unwrap_err();
    assert!(matches!(err, livebattle_engine::EngineError::Store(_)));
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let a = e.apply(create("b", false, T0)).await.unwrap();
    assert_eq!(a.outcome, Outcome::Duplicate);
    assert_eq!(store.inner.len(), 1);
    assert!(e.is_ready(), "ready again once a write succeeds");
    e.shutdown().await;
    assert!(!e.is_ready(), "not ready once shut down");
    let n = e.battle("b").unwrap();
    assert_eq!(n.state, State::Running);
    let _ = Target::Update;
}

#[tokio::test(start_paused = true)]
async fn seq_and_resume_continue_across_a_restart() {
    let store = MemoryStore::new();
    let clock = std::sync::Arc::new(livebattle_engine::TokioClock::starting_at(T0));
    let first = builder()
        .clock(clock.clone())
        .store(store.clone())
        .replay_capacity(100)
        .start()
        .await
        .unwrap();
    for i in 0..3 {
        first
            .apply(create(&format!("b{i}"), false, T0))
            .await
            .unwrap();
    }
    assert_eq!(first.last_seq(), 3);
    first.shutdown().await;
    let second = builder()
        .clock(clock)
        .store(store)
        .replay_capacity(100)
        .start()
        .await
        .unwrap();
    assert_eq!(second.last_seq(), 3);
    let mut sub = second.subscribe_after(Filter::All, 1).unwrap();
    second.apply(create("b3", false, T0)).await.unwrap();
    let got: Vec<u64> = [
        sub.next().await.unwrap(),
        sub.next().await.unwrap(),
        sub.next().await.unwrap(),
    ]
    .into_iter()
    .map(|d| seq_of(d).0)
    .collect();
    assert_eq!(
        got,
        vec![2, 3, 4],
        "no gap, no duplicate across the restart"
    );
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_honours_the_store_contract() {
    let stores = std::sync::Mutex::new(std::collections::HashMap::<String, MemoryStore>::new());
    livebattle_engine::store_contract::run(|name| {
        let store = stores
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone();
        std::sync::Arc::new(store)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn callers_join_the_next_batch_while_one_is_written_and_wait_for_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = TestStore {
        delay_ms: 100,
        ..TestStore::default()
    };
    let e = builder()
        .shards(1)
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.apply(create("a", false, T0)).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    // While the first batch is being written, two more callers apply.
    let later: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|id| {
            let e = e.clone();
            let mut ev = create(id, false, T0);
            if let livebattle_engine::Event::Created(c) = &mut ev {
                c.from_room = Some(format!("from-{id}"));
                c.to_rooms = vec![format!("to-{id}")];
            }
            tokio::spawn(async move { e.apply(ev).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert!(e.battle("b").is_some(), "applied at once");
    assert_eq!(store.writes.load(SeqCst), 0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        first.is_finished(),
        "the first batch is stored and answered"
    );
    assert_eq!(store.writes.load(SeqCst), 1);
    assert!(
        later.iter().all(|t| !t.is_finished()),
        "the others wait for their own batch"
    );
    assert_eq!(store.inner.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(store.writes.load(SeqCst), 2, "both joined one batch");
    assert_eq!(store.inner.len(), 3);
    for t in later {
        assert_eq!(t.await.unwrap().unwrap().outcome, Outcome::New);
    }
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_write_delays_acknowledgements_not_timers() {
    let rec = Recorder::default();
    let store = TestStore {
        delay_ms: 700,
        ..TestStore::default()
    };
    let e = builder()
        .shards(1)
        .store(store.clone())
        .observer(rec.observer())
        .start()
        .await
        .unwrap();
    e.apply(create("b", false, T0)).await.unwrap();
    // A write starts at 59.7 s and stalls until 60.4 s, across the battle's deadline.
    at(&e, 59_000).await;
    let busy = e.clone();
    let mut other = create("other", false, T0 + 59_700);
    if let livebattle_engine::Event::Created(c) = &mut other {
        c.from_room = Some("x".into());
        c.to_rooms = vec!["y".into()];
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let pending = tokio::spawn(async move { busy.apply(other).await });
    at(&e, 60_000).await;
    // The timer fired on time, although its notification waits for the store.
    assert_eq!(e.battle("b").unwrap().state, State::Ended);
    at(&e, 61_500).await;
    pending.await.unwrap().unwrap();
    let ended = rec
        .for_battle("b")
        .into_iter()
        .find(|n| n.to == Target::State(State::Ended))
        .expect("the end was delivered once stored");
    assert_eq!(ended.battle.server_time_ms, T0 + 60_000);
    assert_eq!(ended.late_ms, Some(0));
    assert_eq!(ended.battle.ended_at_ms, Some(T0 + 60_000));
}
