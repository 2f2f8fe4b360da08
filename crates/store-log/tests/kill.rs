//! SIGKILL while batches are being appended and snapshots compacted: nothing acknowledged is
//! lost, and the store always reopens.
//!
//! The test re-runs its own binary as a child (`LOG_STORE_CHILD_DIR` set) that writes battles
//! from several tasks at once, with compaction after every few KiB, and prints `ack ID VERSION`
//! once each write is acknowledged. The parent kills it at a random moment, reopens the store,
//! and checks every battle against the last acknowledged version; then starts the child again
//! on the same directory. `KILL_SEED=N` replays the kill times.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livebattle_engine::{Battle, Notification, State, Store, StoreOp, Target};
use livebattle_store_log::{LogOptions, LogStore};

const TEST: &str = "kill_9_during_appends_and_compactions_loses_nothing_acknowledged";
const WRITERS: usize = 8;
const ROUNDS: usize = 6;

fn options() -> LogOptions {
    LogOptions {
        compact_after_bytes: 8 << 10,
    }
}

fn battle(id: &str, version: u64) -> Battle {
    let mut b = Battle::new(id, State::Running, 1_739_954_005_000);
    b.version = version;
    b.from_room = Some(format!("room-{id}-{}", "x".repeat(version as usize % 64)).into());
    b
}

/// The child: writes until killed, printing each acknowledged version.
fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(LogStore::open_with(dir, options()).expect("the store reopens"));
        let loaded = store.load().await.expect("loads");
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            let id = format!("w{w}");
            let mut version = loaded
                .battles
                .iter()
                .find(|b| *b.id == *id)
                .map_or(0, |b| b.version);
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = battle(&id, version + 1);
                    let note = Notification {
                        seq: 0,
                        from: Some(State::Running),
                        to: Target::Update,
                        cause: livebattle_engine::Cause::StartWebhook,
                        late_ms: None,
                        battle: next.snapshot(0),
                    };
                    let ops = vec![
                        StoreOp::Put {
                            battle: Arc::new(next),
                            expected_version: (version > 0).then_some(version),
                        },
                        StoreOp::Notify {
                            notification: Arc::new(note),
                            keep_from_seq: 0,
                        },
                    ];
                    store.write(ops).await.expect("a write succeeds");
                    version += 1;
                    println!("ack {id} {version}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn kill_9_during_appends_and_compactions_loses_nothing_acknowledged() {
    if let Ok(dir) = std::env::var("LOG_STORE_CHILD_DIR") {
        child(&dir);
        return;
    }
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill test seed {seed} (KILL_SEED={seed} replays the kill times)");
    let mut rng = seed | 1;
    let dir = tempfile::tempdir().unwrap();
    let mut acked = [0u64; WRITERS];
    let mut total = 0;
    for round in 0..ROUNDS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = Duration::from_millis(150 + rng % 600);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env("LOG_STORE_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = vec![0u64; WRITERS];
            let mut n = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() != Some("ack") {
                    continue;
                }
                let w: usize = parts.next().unwrap()[1..].parse().unwrap();
                let v: u64 = parts.next().unwrap().parse().unwrap();
                assert!(v > last[w], "acknowledged versions only grow");
                last[w] = v;
                n += 1;
            }
            (last, n)
        });
        let started = Instant::now();
        std::thread::sleep(kill_after);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let (last, n) = reader.join().unwrap();
        assert!(
            status.code().is_none(),
            "the child ran until killed: {status}"
        );
        total += n;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stored = rt.block_on(async {
            let store = LogStore::open_with(dir.path(), options()).expect("reopens after a kill");
            store.load().await.expect("loads after a kill")
        });
        for w in 0..WRITERS {
            let version = stored
                .battles
                .iter()
                .find(|b| *b.id == *format!("w{w}"))
                .map_or(0, |b| b.version);
            let floor = acked[w].max(last[w]);
            assert!(
                version >= floor && version <= floor + 1,
                "round {round}: w{w} stored at version {version}, last acknowledged {floor}"
            );
            acked[w] = version;
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        println!(
            "round {round}: killed after {:?}, {n} writes acknowledged, all there; {files} files",
            started.elapsed()
        );
    }
    assert!(total > 0, "the child wrote something");
}
