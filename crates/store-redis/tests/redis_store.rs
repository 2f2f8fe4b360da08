//! The Redis store against a real Redis (`LIVEBATTLE_TEST_REDIS`, default
//! redis://127.0.0.1:6379): the store contract, and several engines sharing one namespace.

use std::sync::Arc;
use std::time::Duration;

use livebattle_engine::{
    Cause, Created, Delivery, Engine, Event, Filter, Outcome, Rules, Started, State, Store, Target,
};
use livebattle_store_redis::{RedisOptions, RedisStore};

fn url() -> String {
    std::env::var("LIVEBATTLE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh namespace for one test.
fn namespace(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lbtest-{}-{nanos}-{name}", std::process::id())
}

/// Connects, or skips the test loudly when no Redis answers (never under CI).
async fn connect(ns: &str) -> Option<RedisStore> {
    connect_with(RedisOptions {
        namespace: ns.into(),
        lease_ms: 300,
        ..Default::default()
    })
    .await
}

async fn connect_with(options: RedisOptions) -> Option<RedisStore> {
    match RedisStore::connect(&url(), options).await {
        Ok(s) => Some(s),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "\n*** SKIPPED: no Redis at {} ({e}); start redis-server to run this test ***\n",
                url()
            );
            None
        }
        Err(e) => panic!("Redis is required under CI: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_honours_the_store_contract() {
    let base = namespace("contract");
    if connect(&base).await.is_none() {
        return;
    }
    let handle = tokio::runtime::Handle::current();
    let opened = std::sync::Mutex::new(Vec::new());
    livebattle_engine::store_contract::run(|name| {
        let ns = format!("{base}-{name}");
        let store = tokio::task::block_in_place(|| handle.block_on(connect(&ns)))
            .expect("Redis answered a moment ago");
        opened.lock().unwrap().push(store.clone());
        let store: Arc<dyn Store> = Arc::new(store);
        store
    })
    .await;
    for s in opened.into_inner().unwrap() {
        s.clear().await.expect("clean up");
    }
}

fn created(id: &str, now: i64, duration_ms: u64) -> Event {
    Event::Created(Created {
        battle_id: id.into(),
        from_room: Some(format!("from-{id}")),
        to_rooms: vec![format!("to-{id}")],
        timeout_ms: Some(10_000),
        duration_ms: Some(duration_ms),
        need_response: Some(true),
        event_time_ms: Some(now),
        ..Default::default()
    })
}

async fn start_engine(store: RedisStore) -> Engine {
    Engine::builder()
        .rules(Rules {
            retention_ms: 1_500,
            ..Rules::default()
        })
        .shards(2)
        .store(store)
        .replay_capacity(1_000)
        .start()
        .await
        .expect("engine starts on Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_battles_timers_and_one_notification_order() {
    let ns = namespace("two");
    let Some(a_store) = connect(&ns).await else {
        return;
    };
    let b_store = connect(&ns).await.expect("second connection");
    let a = start_engine(a_store.clone()).await;
    let b = start_engine(b_store).await;
    let mut sub_a = a.subscribe(Filter::All);
    let mut sub_b = b.subscribe(Filter::All);

    let now = a.now_ms();
    // Create on A, Start on B, concurrently for many battles: conflicts are retried, nothing lost.
    let n = 40;
    let mut tasks = Vec::new();
    for i in 0..n {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("battle-{i}");
            let start = Event::Started(Started {
                battle_id: id.clone(),
                duration_ms: Some(1_500),
                event_time_ms: Some(now),
                start_time_s: Some(now / 1000),
                ..Default::default()
            });
            let (x, y) = tokio::join!(a.apply(created(&id, now, 1_500)), b.apply(start));
            (x.expect("create applied"), y.expect("start applied"))
        }));
    }
    for t in tasks {
        let (x, y) = t.await.unwrap();
        assert!(
            matches!(
                x.outcome,
                Outcome::New | Outcome::Transition | Outcome::Update
            ),
            "{x:?}"
        );
        assert!(
            matches!(
                y.outcome,
                Outcome::New | Outcome::Transition | Outcome::Update
            ),
            "{y:?}"
        );
    }
    // The instance that applied the Start answers with it at once; the other learns it from
    // the change feed a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..n {
        let id = format!("battle-{i}");
        assert_eq!(
            a.battle(&id).expect("on A").state,
            State::Running,
            "{id} runs on A"
        );
        assert_eq!(
            b.battle(&id).expect("on B").state,
            State::Running,
            "{id} runs on B"
        );
    }
    // Both replicas converge, and every battle ends exactly once, by one instance's timer.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for i in 0..n {
        let id = format!("battle-{i}");
        let (on_a, on_b) = (a.battle(&id).expect("A"), b.battle(&id).expect("B"));
        assert_eq!(
            on_a.state,
            State::Ended,
            "{id} on A: {on_a:?}\non B: {on_b:?}"
        );
        assert_eq!(on_b.state, State::Ended, "{id} on B: {on_b:?}");
        let mut on_b = on_b;
        on_b.server_time_ms = on_a.server_time_ms;
        assert_eq!(on_a, on_b, "{id}: both replicas hold the same battle");
    }
    let seen_a = drain(&mut sub_a).await;
    let seen_b = drain(&mut sub_b).await;
    assert_eq!(seen_a, seen_b, "both instances deliver the same sequence");
    for w in seen_a.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "no gap");
    }
    let ends: Vec<_> = seen_a
        .iter()
        .filter(|(_, _, to, _)| *to == Target::State(State::Ended))
        .collect();
    assert_eq!(ends.len(), n, "each battle ended exactly once: {ends:?}");
    assert!(ends.iter().all(|(_, _, _, c)| *c == Cause::EndTimer));

    // Retention over: one instance evicts, both forget the record, and both still know the id
    // (a late duplicate changes nothing, whichever instance it reaches).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    for i in 0..n {
        let id = format!("battle-{i}");
        assert_eq!(a.battle(&id), None, "{id} evicted on A");
        assert_eq!(b.battle(&id), None, "{id} evicted on B");
        let engine = if i % 2 == 0 { &a } else { &b };
        let late = engine
            .apply(created(&id, now, 1_500))
            .await
            .expect("late create");
        assert_eq!(
            late.outcome,
            Outcome::Evicted,
            "{id}: the dedupe memory is shared"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    a_store.clear().await.unwrap();
}

type Seen = Vec<(u64, String, Target, Cause)>;

/// Everything a subscription has delivered so far.
async fn drain(sub: &mut livebattle_engine::Subscription) -> Seen {
    let mut seen = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        match d {
            Delivery::Notification(n) => {
                seen.push((n.seq, n.battle.battle_id.to_string(), n.to, n.cause))
            }
            Delivery::Lagged { missed } => panic!("lagged by {missed}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_changes_were_trimmed_from_the_feed_reloads_them() {
    let ns = namespace("trim");
    // A feed of about ten entries: Redis trims whole nodes (100 entries), so one burst of a
    // few hundred changes trims entries the other instance has not read yet.
    let options = RedisOptions {
        namespace: ns.clone(),
        lease_ms: 300,
        feed_len: 10,
        ..Default::default()
    };
    let Some(a_store) = connect_with(options.clone()).await else {
        return;
    };
    let b_store = connect_with(options).await.expect("second connection");
    let a = start_engine(a_store).await;
    let b = start_engine(b_store).await;
    let now = a.now_ms();
    let n = 400;
    let burst: Vec<Event> = (0..n)
        .map(|i| created(&format!("burst-{i}"), now, 60_000))
        .collect();
    for r in a.apply_batch(burst).await {
        assert!(matches!(r.expect("applied").outcome, Outcome::New));
    }
    // B follows the feed; the burst's first changes are trimmed before it reads them, so it
    // must notice and reload.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.battle_count() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.battle_count(), n, "every battle reached the follower");
    for i in [0, n / 2, n - 1] {
        let id = format!("burst-{i}");
        let (x, y) = (a.battle(&id).expect("on A"), b.battle(&id).expect("on B"));
        assert_eq!((x.state, x.version), (y.state, y.version), "{id}");
    }
    assert_eq!(
        b.room_battle(&format!("from-burst-{}", n - 1))
            .map(|s| s.battle_id.to_string()),
        Some(format!("burst-{}", n - 1)),
        "the reloaded replica's room index"
    );
    // Following goes on after the reload.
    a.apply(created("after", now, 60_000))
        .await
        .expect("applied");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.battle("after").is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.battle("after").is_some(), "followed after the reload");
    a.shutdown().await;
    b.shutdown().await;
}
