//! Webhook throughput and latency over real HTTP: the `livebattle` server in memory versus with
//! durable storage (redb), in the same run, driven by the same load.
//!
//! `cargo bench -p livebattle-server --bench webhooks` (LIVEBATTLE_BENCH_SMOKE=1: a short run).
//! Options after `--`: `--seconds N` per mode (default 10), `--connections N` (default 128).
//!
//! Each connection posts signed Tencent callbacks over keep-alive: a Create (NeedResponse false,
//! 10 min) then an End for the same fresh battle, again and again. Requests/s counts HTTP 200
//! replies; latency is per request, client side. Client and server share this 2-core machine,
//! equally in both modes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livebattle_ingest::AppConfig;
use livebattle_server::{serve, Config, Storage};
use sha2::{Digest, Sha256};

const APP: &str = "1400000001";
const TOKEN: &str = "bench-token";

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn query(command: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let sign = hex::encode(Sha256::digest(format!("{TOKEN}{t}")));
    format!(
        "SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign={sign}&RequestTime={t}"
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Run {
    ok: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

async fn drive(addr: SocketAddr, label: &str, seconds: u64, connections: usize) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..connections {
        let stop = stop.clone();
        let label = label.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let url = format!("http://{addr}/callback");
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{label}-{c}-{i}");
                i += 1;
                let t = now_ms();
                let create = format!(
                    r#"{{"CallbackCommand":"Live.CallbackAfterCreateBattle","Operator_Account":"op","BattleId":"{id}","FromRoomId":"a-{id}","ToRoomIdList":["b-{id}"],"Timeout":30000,"Duration":600000,"NeedResponse":false,"ExtensionInfo":"bench","EventTime":{t}}}"#
                );
                let end = format!(
                    r#"{{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"{id}","Duration":600000,"CreateTime":{s},"StartTime":{s},"EndTime":{s},"OpType":1,"FromRoomInfo":{{"RoomId":"a-{id}","Score":1,"Owner_Account":"x"}},"ToRoomList":[{{"RoomId":"b-{id}","Score":2,"Owner_Account":"y"}}],"EventTime":{t}}}"#,
                    s = t / 1000
                );
                for (command, body) in [
                    ("Live.CallbackAfterCreateBattle", create),
                    ("Live.CallbackAfterEndBattle", end),
                ] {
                    let sent = Instant::now();
                    let reply = client
                        .post(format!("{url}?{}", query(command)))
                        .body(body)
                        .send()
                        .await;
                    match reply {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok += 1;
                            lat.push(sent.elapsed().as_micros() as u64);
                        }
                        _ => errors += 1,
                    }
                }
            }
            (ok, errors, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        ok: 0,
        errors: 0,
        secs: 0.0,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        if let Ok((ok, errors, lat)) = t.await {
            run.ok += ok;
            run.errors += errors;
            run.latencies_us.extend(lat);
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    run.latencies_us.sort_unstable();
    run
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn mode(storage: Storage, label: &str, seconds: u64, connections: usize) -> f64 {
    let mut config = Config {
        storage,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    config.ingest.apps = vec![AppConfig::with_token(APP, TOKEN)];
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, listener, async move {
        let _ = rx.await;
    }));
    let run = drive(addr, label, seconds, connections).await;
    let _ = tx.send(());
    let _ = server.await;
    let rate = run.ok as f64 / run.secs;
    println!(
        "{label:>9}: {:>8.0} webhooks/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} ok, {} errors, {connections} connections, {:.1} s)",
        rate,
        pct(&run.latencies_us, 0.50),
        pct(&run.latencies_us, 0.99),
        pct(&run.latencies_us, 1.0),
        run.ok,
        run.errors,
        run.secs
    );
    rate
}

fn main() {
    let smoke = std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let seconds = arg("--seconds").unwrap_or(if smoke { 1 } else { 10 });
    let connections = arg("--connections").unwrap_or(if smoke { 16 } else { 128 }) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let memory = mode(Storage::InMemory, "in-memory", seconds, connections).await;
        let dir = std::env::temp_dir().join(format!("livebattle-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let durable = mode(
            Storage::DataDir(dir.clone()),
            "durable",
            seconds,
            connections,
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "durable / in-memory: {:.0}% (target >= 50%)",
            100.0 * durable / memory.max(1.0)
        );
    });
}
