//! Webhook throughput and latency over real HTTP, in one run and under the same load: a bare axum
//! server (the HTTP stack's limit on this machine), the `livebattle` server in memory, and with
//! durable storage: the log store (the default) and redb.
//!
//! `cargo bench -p livebattle-server --bench webhooks` (LIVEBATTLE_BENCH_SMOKE=1: a short run).
//! Options after `--`: `--seconds N` per run (default 10), `--connections N` (default 128),
//! `--no-half` (skip the rate-limited runs), `--only bare|in-memory|durable|durable-redb` (one mode),
//! `--rounds N` (repeat the closed-loop runs N times, modes interleaved; the summary takes the
//! medians; the half-rate runs are in the first round).
//! Profiling: `--serve bare|in-memory|durable|durable-redb` runs one server until SIGTERM; `--drive ADDR --requests N`
//! sends exactly N requests to it (docs/benchmarks.md has the callgrind recipe).
//!
//! Each connection posts signed Tencent callbacks over keep-alive: a Create (NeedResponse false,
//! 10 min) then an End for the same fresh battle, again and again. Requests/s counts HTTP 200
//! replies; latency is per request, client side. Client and server share this 2-core machine,
//! equally in every mode.
//!
//! * **bare**: axum on the same `axum::serve`, one `POST /callback` route that reads the body,
//!   parses it as JSON (`serde_json::Value`) and returns livebattle's OK ack (the same bytes and
//!   `Content-Type`, from `TencentReply::ok()`). No signature check, no engine.
//! * **in-memory** / **durable** / **durable-redb**: `livebattle_server::serve` with
//!   `Storage::InMemory` / `Storage::DataDir` (a fresh temp dir) with the log store / with redb.
//!
//! Each mode first runs closed-loop (every connection sends its next request as soon as the
//! reply came: the maximum throughput), then rate-limited at half that maximum (each connection
//! on a fixed schedule). In the rate-limited run a request whose slot came while its connection
//! was still waiting for the previous reply is timed from its slot, so the wait counts (no
//! coordinated omission); one sent on a free connection is timed from its send (the client's own
//! timer wake-up, up to a millisecond late, is not the server's latency). The plain send-to-reply
//! figure is printed too.
//!
//! Nothing here fails on a timing: the exit status is non-zero only when a mode answered no
//! request at all.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use livebattle_ingest::{AppConfig, TencentReply};
use livebattle_server::{serve, Config, DurableStore, Storage};

mod common;

use common::{arg, bodies, drive, flag, http_client, pct_ms, post_callback, Run, APP, TOKEN};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(1)
        .collect()
}

/// The bare server's only handler: read the body, parse it as JSON, reply livebattle's ack.
async fn bare_callback(body: Bytes) -> Response {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            std::hint::black_box(v);
            TencentReply::ok().into_response()
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "bad json").into_response(),
    }
}

/// A mode's label, its rounds' (max req/s, req/CPU-s), and its half-rate p99.
type ModeRounds = (&'static str, Vec<(f64, f64)>, Option<f64>);

#[derive(Clone)]
enum Mode {
    Bare,
    Livebattle(Storage),
}

/// The modes, in the order each round runs them.
const MODES: [&str; 4] = ["bare", "in-memory", "durable", "durable-redb"];

impl Mode {
    /// The mode of `label`, durable ones in `dir`.
    fn of(label: &str, dir: &std::path::Path) -> Mode {
        let durable = |store| {
            Mode::Livebattle(Storage::DataDir {
                dir: dir.to_path_buf(),
                store: Some(store),
            })
        };
        match label {
            "bare" => Mode::Bare,
            "durable" => durable(DurableStore::Log),
            "durable-redb" => durable(DurableStore::Redb),
            _ => Mode::Livebattle(Storage::InMemory),
        }
    }
}

/// Starts the server of `mode`; returns its address and a stop handle.
async fn start(
    mode: &Mode,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the listener's address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = rx.await;
    };
    let server = match mode.clone() {
        Mode::Bare => {
            let app = axum::Router::new().route("/callback", axum::routing::post(bare_callback));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            })
        }
        Mode::Livebattle(storage) => {
            let mut config = Config {
                storage,
                listen: addr,
                ..Config::default()
            };
            config.ingest.apps = vec![AppConfig::with_token(APP, TOKEN)];
            tokio::spawn(async move {
                let _ = serve(config, listener, stopped).await;
            })
        }
    };
    (addr, tx, server)
}

fn report(label: &str, load: &str, run: &Run, connections: usize) {
    println!(
        "{label:>9} {load:<11} {:>8.0} req/s {:>8.0} req/CPU-s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms{}  ({} ok, {} errors, {connections} connections, {:.1} s, {:.1} CPU-s, load {})",
        run.ok as f64 / run.secs,
        run.ok as f64 / run.cpu_s.max(0.01),
        pct_ms(&run.latencies_us, 0.50),
        pct_ms(&run.latencies_us, 0.99),
        pct_ms(&run.latencies_us, 1.0),
        if run.scheduled_us.is_empty() {
            String::new()
        } else {
            format!(
                "  | corrected: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                pct_ms(&run.scheduled_us, 0.50),
                pct_ms(&run.scheduled_us, 0.99),
                pct_ms(&run.scheduled_us, 1.0)
            )
        },
        run.ok,
        run.errors,
        run.secs,
        run.cpu_s,
        loadavg()
    );
}

/// One mode: closed loop, then (unless `no_half`) rate-limited at half its maximum. Returns the
/// maximum requests/s, requests per CPU-second at that maximum and the half-load run's
/// corrected p99 (ms).
async fn mode(
    mode: Mode,
    label: &str,
    seconds: f64,
    connections: usize,
    half: bool,
) -> (f64, f64, Option<f64>) {
    let (addr, stop, server) = start(&mode).await;
    let run = drive(
        &[format!("http://{addr}")],
        label,
        seconds,
        connections,
        None,
    )
    .await;
    report(label, "max", &run, connections);
    let max = run.ok as f64 / run.secs;
    let per_cpu = run.ok as f64 / run.cpu_s.max(0.01);
    let mut p99 = None;
    if half && max > 0.0 {
        let tag = format!("{label}-half");
        let run = drive(
            &[format!("http://{addr}")],
            &tag,
            seconds,
            connections,
            Some(max / 2.0),
        )
        .await;
        report(label, "half-rate", &run, connections);
        p99 = Some(pct_ms(&run.scheduled_us, 0.99));
    }
    let _ = stop.send(());
    let _ = server.await;
    (max, per_cpu, p99)
}

/// `--drive ADDR --requests N`: exactly N requests (closed loop, `connections` connections),
/// for profiling a server started with `--serve` under callgrind.
async fn drive_fixed(addr: SocketAddr, requests: u64, connections: usize) {
    let started = Instant::now();
    let per = requests.div_ceil(connections as u64 * 2);
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let url = format!("http://{addr}/callback");
            let pid = std::process::id();
            let (mut ok, mut errors) = (0u64, 0u64);
            for i in 0..per {
                for (command, body) in bodies(&format!("fixed-{pid}-{c}-{i}")) {
                    match post_callback(&client, &url, command, body).await {
                        Ok(()) => ok += 1,
                        Err(_) => errors += 1,
                    }
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((o, e)) = t.await {
            ok += o;
            errors += e;
        }
    }
    println!(
        "drove {ok} ok, {errors} errors in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `--serve bare|in-memory|durable`: one server on `--listen` (default a free loopback port) until
/// SIGTERM/SIGINT, for profiling (`valgrind --tool=callgrind`).
async fn serve_only(which: &str) {
    let dir = std::env::temp_dir().join(format!("livebattle-serve-{}", std::process::id()));
    let mode = Mode::of(which, &dir);
    let (addr, stop, server) = start(&mode).await;
    println!("listening on {addr}");
    livebattle_server::shutdown_signal().await;
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() -> std::process::ExitCode {
    let smoke = std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let seconds: f64 = arg("--seconds").unwrap_or(if smoke { 1.0 } else { 10.0 });
    let connections: usize = arg("--connections").unwrap_or(if smoke { 16 } else { 128 });
    let half = !flag("--no-half");
    let only: Option<String> = arg("--only");
    let wanted = |m: &str| only.as_deref().is_none_or(|o| o == m);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "webhooks: {seconds} s per run, {connections} keep-alive connections, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(which) = arg::<String>("--serve") {
        rt.block_on(serve_only(&which));
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(addr) = arg::<SocketAddr>("--drive") {
        let requests = arg("--requests").unwrap_or(20_000);
        rt.block_on(drive_fixed(addr, requests, connections));
        return std::process::ExitCode::SUCCESS;
    }
    let rounds: usize = arg("--rounds").unwrap_or(1);
    rt.block_on(async {
        // Per mode: (max req/s, req/CPU-s, half-rate p99) of each round, modes interleaved so a
        // busy neighbour weighs on each alike. Half-rate runs in the first round only.
        let mut per_mode: Vec<ModeRounds> = Vec::new();
        let dir = std::env::temp_dir().join(format!("livebattle-bench-{}", std::process::id()));
        for round in 0..rounds.max(1) {
            if rounds > 1 {
                println!("round {}", round + 1);
            }
            for label in MODES {
                if !wanted(label) {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&dir);
                let m = Mode::of(label, &dir);
                let (max, per_cpu, p99) =
                    mode(m, label, seconds, connections, half && round == 0).await;
                let _ = std::fs::remove_dir_all(&dir);
                match per_mode.iter_mut().find(|r| r.0 == label) {
                    Some(r) => r.1.push((max, per_cpu)),
                    None => per_mode.push((label, vec![(max, per_cpu)], p99)),
                }
            }
        }
        let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x.get(x.len() / 2).copied().unwrap_or(0.0)
        };
        let results: Vec<(&str, f64, f64, Option<f64>)> = per_mode
            .iter()
            .map(|(l, v, p99)| (*l, median(v, |r| r.0), median(v, |r| r.1), *p99))
            .collect();
        let bare = results
            .iter()
            .find(|r| r.0 == "bare")
            .map(|r| (r.1, r.2))
            .filter(|b| b.0 > 0.0);
        println!(
            "summary{}:",
            if rounds > 1 {
                format!(" (median of {rounds} rounds)")
            } else {
                String::new()
            }
        );
        for (label, max, per_cpu, p99) in &results {
            let target = match *label {
                "in-memory" => " (target >= 85%)",
                "durable" | "durable-redb" => " (target >= 50%)",
                _ => "",
            };
            let ratio = bare.map_or_else(
                || "-".to_owned(),
                |(b, b_cpu)| {
                    format!(
                        "{:.0}% of bare's req/s, {:.0}% of bare's req/CPU-s{target}",
                        100.0 * max / b,
                        100.0 * per_cpu / b_cpu
                    )
                },
            );
            let p99 = p99.map_or_else(
                || "-".to_owned(),
                |p| format!("{p:.2} ms (target <= 5 ms)"),
            );
            println!(
                "  {label:>12}: max {max:>8.0} req/s ({per_cpu:.0} req/CPU-s), {ratio}; p99 at half rate {p99}"
            );
        }
        if results.iter().any(|r| r.1 <= 0.0) {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
