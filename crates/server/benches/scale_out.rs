//! Webhook throughput of the real `livebattle` binary: one instance on the embedded durable
//! store (redb) beside 1, 2 and 3 instances sharing one Redis, in the same run, driven by the
//! same load spread round-robin over the instances.
//!
//! `cargo bench -p livebattle-server --bench scale_out` (LIVEBATTLE_BENCH_SMOKE=1: a short run).
//! Options after `--`: `--seconds N` per setup (default 10), `--connections N` (default 128),
//! `--redis URL` (default redis://127.0.0.1:6379).
//!
//! Each connection posts signed Tencent callbacks over keep-alive: a Create (NeedResponse false,
//! 10 min) then an End for the same fresh battle, again and again; battles of one connection go
//! to one instance, connections are spread round-robin. Requests/s counts HTTP 200 replies;
//! latency is per request, client side. Client, instances and Redis share this machine.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod common;

use common::{arg, drive, now_ms, pct_ms, server_args, smoke};

const BIN: &str = env!("CARGO_BIN_EXE_livebattle");

/// Starts one instance with `storage` arguments; returns it and its base URL.
async fn instance(storage: &[String]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_LOG", "error")
        .kill_on_drop(true)
        .args(server_args(&[]))
        .args(storage)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("the livebattle binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("it prints its address")
    .expect("stdout readable")
    .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("a listening line")
        .to_owned();
    (child, format!("http://{addr}"))
}

async fn setup(label: &str, storages: Vec<Vec<String>>, seconds: u64, connections: usize) -> f64 {
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for s in &storages {
        let (child, base) = instance(s).await;
        children.push(child);
        bases.push(base);
    }
    let t = drive(&bases, label, seconds as f64, connections, None).await;
    let secs = t.secs;
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    let rate = t.ok as f64 / secs;
    println!(
        "{label:>16}: {rate:>8.0} webhooks/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} ok, {} errors, {connections} connections, {secs:.1} s)",
        pct_ms(&t.latencies_us, 0.50),
        pct_ms(&t.latencies_us, 0.99),
        pct_ms(&t.latencies_us, 1.0),
        t.ok,
        t.errors,
    );
    rate
}

fn main() {
    let smoke = smoke();
    let seconds: u64 = arg("--seconds").unwrap_or(if smoke { 1 } else { 10 });
    let connections: usize = arg("--connections").unwrap_or(if smoke { 8 } else { 128 });
    let redis: String = arg("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("livebattle-scale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let embedded = vec!["--data-dir".to_owned(), dir.display().to_string()];
        let single = setup("embedded (redb)", vec![embedded], seconds, connections).await;
        let _ = std::fs::remove_dir_all(&dir);
        for n in 1..=3usize {
            let ns = format!("bench-{}-{}-{n}", std::process::id(), now_ms());
            let on_redis = vec![
                "--store".to_owned(),
                redis.clone(),
                "--redis-namespace".to_owned(),
                ns.clone(),
            ];
            let label = format!("redis x{n}");
            let rate = setup(&label, vec![on_redis; n], seconds, connections).await;
            println!(
                "{:>16}  {:.0}% of the embedded instance",
                "",
                100.0 * rate / single.max(1.0)
            );
            clear(&redis, &ns).await;
        }
    });
}

/// Deletes a namespace's keys (a redis-cli call; the bench leaves nothing behind).
async fn clear(url: &str, ns: &str) {
    let keys = [
        "format", "battles", "versions", "timers", "evicted", "claims", "seq", "feed",
    ]
    .map(|k| format!("{{{ns}}}:{k}"));
    let _ = Command::new("redis-cli")
        .args(["-u", url, "DEL"])
        .args(&keys)
        .stdout(Stdio::null())
        .status()
        .await;
}
