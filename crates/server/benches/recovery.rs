//! Recovery and durable-write benchmarks of the durable stores (the log store and redb), in
//! process, without HTTP.
//!
//! `cargo bench -p livebattle-server --bench recovery` — with LIVEBATTLE_BENCH_SMOKE=1 it runs
//! small. Options after `--`: `--store log|redb` (one store; default both), `--recovery-only`.
//! Reports, per store:
//! 1. recovery: N stored battles (running, with timers) → open + load + engine ready, seconds,
//!    the files on disk and the resident memory it took (for the log store, storing 1,000,000
//!    battles also runs its compactions);
//! 2. event throughput through the engine with the store versus the ephemeral store, in the
//!    same run (full webhook lifecycle events, many concurrent callers, so group commit works).

use std::sync::Arc;
use std::time::Instant;

use livebattle_engine::{
    Battle, Created, Engine, Event, State, Store, StoreOp, Timer, TimerKind, TokioClock,
};
use livebattle_store_log::LogStore;
use livebattle_store_redb::RedbStore;

/// A durable store by name, opened on `dir`.
fn open(store: &str, dir: &std::path::Path) -> Arc<dyn Store> {
    match store {
        "redb" => Arc::new(RedbStore::open(dir).expect("open redb")),
        _ => Arc::new(LogStore::open(dir).expect("open the log store")),
    }
}

/// Bytes of the files in `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn battle_id(i: usize) -> String {
    // Tencent-like: 44 base64 characters.
    format!("{:0>43}=", format!("4siHsNsWN/T3aub9zKraq+{i}"))
}

fn stored_battle(i: usize, now: i64) -> Battle {
    let mut b = Battle::new(battle_id(i), State::Running, now);
    b.version = 2;
    b.seen = 3;
    b.from_room = Some(format!("room-a-{i}").into());
    b.to_rooms = vec![format!("room-b-{i}").into()].into();
    b.set_texts(Some("operator"), Some("extension pk"));
    b.set_need_response(Some(false));
    b.timeout_ms = Some(30_000u64).into();
    b.duration_ms = Some(300_000u64).into();
    b.created_at_ms = Some(now).into();
    b.started_at_ms = Some(now).into();
    b.ends_at_ms = Some(now + 60_000 + (i as i64 % 240_000)).into();
    b.timer = Some(Timer {
        kind: TimerKind::BattleEnd,
        at_ms: b.ends_at_ms.get().unwrap_or(now),
        generation: 1,
    });
    b.generation = 1;
    b
}

async fn recovery(name: &str, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = TokioClock::system();
    let now_ms = livebattle_engine::Clock::now_ms(&now);
    {
        let store = open(name, dir.path());
        let t = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(20_000) {
            let ops = chunk
                .iter()
                .map(|&i| StoreOp::Put {
                    battle: Arc::new(stored_battle(i, now_ms)),
                    expected_version: None,
                })
                .collect();
            store.write(ops).await.expect("write");
        }
        let stored_s = t.elapsed().as_secs_f64();
        drop(store);
        println!(
            "recovery ({name}): stored {n} battles in {stored_s:.2} s ({} MiB on disk)",
            disk_bytes(dir.path()) >> 20
        );
    }
    let t = Instant::now();
    let store = open(name, dir.path());
    let loaded = store.load().await.expect("load");
    let load_s = t.elapsed().as_secs_f64();
    drop(loaded);
    drop(store);
    let rss0 = rss_bytes();
    // What a restart does: open the data dir, load, rebuild every battle and timer.
    let t = Instant::now();
    let store = open(name, dir.path());
    let engine = Engine::builder()
        .store(store)
        .clock(TokioClock::system())
        .replay_capacity(100_000)
        .start()
        .await
        .expect("engine starts");
    let ready_s = t.elapsed().as_secs_f64();
    assert_eq!(engine.battle_count(), n);
    assert_eq!(engine.metrics().battles_in(State::Running) as usize, n);
    println!(
        "recovery ({name}): load alone {load_s:.2} s; open + load + rebuild {n} battles and timers, ready to serve: {ready_s:.2} s; RSS +{} MiB",
        rss_bytes().saturating_sub(rss0) >> 20
    );
    engine.shutdown().await;
}

async fn throughput(label: &str, engine: Engine, battles: usize, concurrency: usize) -> f64 {
    let t = Instant::now();
    let per_task = battles / concurrency;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let engine = engine.clone();
        let label = label.to_owned();
        tasks.push(tokio::spawn(async move {
            for j in 0..per_task {
                let id = format!("{label}-{task}-{j}");
                let create = Event::Created(Created {
                    battle_id: id.clone(),
                    from_room: Some(format!("a-{task}-{j}")),
                    to_rooms: vec![format!("b-{task}-{j}")],
                    duration_ms: Some(120_000),
                    need_response: Some(false),
                    event_time_ms: Some(engine.now_ms()),
                    ..Default::default()
                });
                engine.apply(create).await.expect("create");
                engine
                    .apply(Event::EndNow { battle_id: id })
                    .await
                    .expect("end");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let events = (per_task * concurrency * 2) as f64;
    let rate = events / t.elapsed().as_secs_f64();
    println!("throughput {label:>9}: {events} events, {concurrency} concurrent callers: {rate:>10.0} events/s");
    engine.shutdown().await;
    rate
}

fn main() {
    let smoke = std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let n = if smoke { 10_000 } else { 1_000_000 };
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1).cloned());
    let stores: Vec<&str> = ["log", "redb"]
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == *s))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for store in &stores {
            recovery(store, n).await;
        }
        if args.iter().any(|a| a == "--recovery-only") {
            return;
        }
        let (battles, concurrency) = if smoke { (2_000, 64) } else { (100_000, 256) };
        let memory = Engine::builder()
            .replay_capacity(100_000)
            .start()
            .await
            .expect("engine");
        let mem = throughput("in-memory", memory, battles, concurrency).await;
        for store in &stores {
            let dir = tempfile::tempdir().expect("tempdir");
            let durable = Engine::builder()
                .store(open(store, dir.path()))
                .replay_capacity(100_000)
                .start()
                .await
                .expect("engine");
            let dur = throughput(store, durable, battles, concurrency).await;
            println!(
                "throughput: {store} / in-memory = {:.0}%",
                100.0 * dur / mem
            );
        }
    });
}
