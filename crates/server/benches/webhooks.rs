//! Webhook throughput and latency over real HTTP, in one run and under the same load: a bare axum
//! server (the HTTP stack's limit on this machine), the `livebattle` server in memory, and with
//! durable storage: the log store (the default) and redb.
//!
//! `cargo bench -p livebattle-server --bench webhooks` (LIVEBATTLE_BENCH_SMOKE=1: a short run).
//! Options after `--`: `--seconds N` per run (default 10), `--connections N` (default 128),
//! `--no-half` (skip the rate-limited runs), `--only bare|in-memory|durable|durable-redb` (one mode),
//! `--rounds N` (repeat the closed-loop runs N times, modes interleaved; the summary takes the
//! medians; the half-rate runs are in the first round), `--in-process` (run each server inside
//! this process, on the load generator's own tokio runtime: how passes 1–8 measured).
//! Profiling: `--serve bare|in-memory|durable|durable-redb` runs one server until SIGTERM; `--drive ADDR --requests N`
//! sends exactly N requests to it (docs/benchmarks.md has the callgrind recipe).
//!
//! Each connection posts signed Tencent callbacks over keep-alive: a Create (NeedResponse false,
//! 10 min) then an End for the same fresh battle, again and again. Requests/s counts HTTP 200
//! replies; latency is per request, client side. Client and server share this 2-core machine,
//! equally in every mode.
//!
//! Each server runs in a process of its own, as it is deployed, beside the load generator (this
//! process):
//!
//! * **bare**: this bench's own `--serve bare`: axum on `axum::serve`, one `POST /callback` route
//!   that reads the body, parses it as JSON (`serde_json::Value`) and returns livebattle's OK ack
//!   (the same bytes and `Content-Type`, from `TencentReply::ok()`). No signature check, no
//!   engine. The same tokio runtime as the `livebattle` binary's (multi-thread, one worker per CPU)
//!   and the same allocator (mimalloc).
//! * **in-memory** / **durable** / **durable-redb**: the release `livebattle` binary (or
//!   `LIVEBATTLE_BENCH_BIN`) with `--in-memory` / `--data-dir` (a fresh temp dir)
//!   `--durable-store log` / `redb`.
//!
//! Besides requests/s, each run reports the server process's own CPU time per request (from
//! `/proc/PID/stat`): what livebattle costs over the bare stack, apart from the load generator.
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

/// The bare server runs on the allocator the `livebattle` binary runs on, so the comparison is
/// of the work done, not of the allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::{
    arg, binary, bodies, cpu_s, drive, flag, http_client, pct_ms, post_callback, server_args, Run,
    Server, APP, TOKEN,
};

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

/// One closed-loop run of a mode: maximum requests/s, requests per CPU-second (load generator
/// and server together) and, for a server in its own process, its CPU µs per request.
#[derive(Clone, Copy)]
struct Round {
    max: f64,
    per_cpu: f64,
    server_us: Option<f64>,
}

impl Round {
    /// The figures of `run`, in which the server's own process (if any) used `server_cpu_s`.
    fn of(run: &Run, server_cpu_s: Option<f64>) -> Round {
        Round {
            max: run.ok as f64 / run.secs,
            per_cpu: run.ok as f64 / (run.cpu_s + server_cpu_s.unwrap_or(0.0)).max(0.01),
            server_us: server_cpu_s.map(|s| s * 1e6 / run.ok.max(1) as f64),
        }
    }
}

/// A mode's label, its rounds, and its half-rate p99.
type ModeRounds = (&'static str, Vec<Round>, Option<f64>);

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

/// A server under load: a process of its own (the default) or a task of this one
/// (`--in-process`).
enum Host {
    Process(Server),
    Task(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Host {
    /// Starts the server of the mode `label` (durable ones in `dir`).
    async fn start(label: &str, dir: &std::path::Path, in_process: bool) -> (SocketAddr, Host) {
        if in_process {
            let (addr, stop, task) = start(&Mode::of(label, dir)).await;
            return (addr, Host::Task(stop, task));
        }
        let log = std::env::temp_dir().join(format!(
            "livebattle-bench-webhooks-{label}-{}.log",
            std::process::id()
        ));
        let dir = dir.to_string_lossy().into_owned();
        let server = if label == "bare" {
            let me = std::env::current_exe().expect("the bench's own path");
            Server::spawn(&me, &["--serve", "bare"], 65_536, &log)
        } else {
            let args = match label {
                "durable" => server_args(&["--data-dir", &dir, "--durable-store", "log"]),
                "durable-redb" => server_args(&["--data-dir", &dir, "--durable-store", "redb"]),
                _ => server_args(&["--in-memory"]),
            };
            Server::spawn(&binary(), &args, 65_536, &log)
        };
        (server.addr, Host::Process(server))
    }

    /// The server's own process, when it has one.
    fn pid(&self) -> Option<u32> {
        match self {
            Host::Process(server) => Some(server.pid),
            Host::Task(..) => None,
        }
    }

    async fn stop(self) {
        match self {
            Host::Process(server) => {
                let _ = tokio::task::spawn_blocking(move || server.stop()).await;
            }
            Host::Task(stop, task) => {
                let _ = stop.send(());
                let _ = task.await;
            }
        }
    }
}

/// Prints one run; `server_cpu_s` is the server process's CPU time in it (when it has its own).
fn report(label: &str, load: &str, run: &Run, server_cpu_s: Option<f64>, connections: usize) {
    let cpu = run.cpu_s + server_cpu_s.unwrap_or(0.0);
    let figures = Round::of(run, server_cpu_s);
    let server = figures
        .server_us
        .map_or_else(String::new, |us| format!("  server {us:.2} µs/req"));
    println!(
        "{label:>12} {load:<9} {:>7.0} req/s {:>6.0} req/CPU-s{server}  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms{}  ({} ok, {} errors, {connections} connections, {:.1} s, {:.1} CPU-s{}, load {})",
        figures.max,
        figures.per_cpu,
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
        cpu,
        server_cpu_s.map_or_else(String::new, |s| format!(" of which the server {s:.1}")),
        loadavg()
    );
}

/// One driven run against `addr`, with the CPU time the server process `pid` used in it.
async fn measured(
    addr: SocketAddr,
    pid: Option<u32>,
    tag: &str,
    seconds: f64,
    connections: usize,
    rate: Option<f64>,
) -> (Run, Option<f64>) {
    let before = pid.map(cpu_s);
    let run = drive(&[format!("http://{addr}")], tag, seconds, connections, rate).await;
    let server = pid.zip(before).map(|(pid, before)| cpu_s(pid) - before);
    (run, server)
}

/// One mode: closed loop, then (unless `half` is false) rate-limited at half its maximum.
/// Returns the closed-loop round and the half-load run's corrected p99 (ms).
async fn mode(
    label: &str,
    dir: &std::path::Path,
    seconds: f64,
    connections: usize,
    half: bool,
    in_process: bool,
) -> (Round, Option<f64>) {
    let (addr, host) = Host::start(label, dir, in_process).await;
    let pid = host.pid();
    let (run, server_cpu) = measured(addr, pid, label, seconds, connections, None).await;
    report(label, "max", &run, server_cpu, connections);
    let round = Round::of(&run, server_cpu);
    let max = round.max;
    let mut p99 = None;
    if half && max > 0.0 {
        let tag = format!("{label}-half");
        let (run, server_cpu) =
            measured(addr, pid, &tag, seconds, connections, Some(max / 2.0)).await;
        report(label, "half-rate", &run, server_cpu, connections);
        p99 = Some(pct_ms(&run.scheduled_us, 0.99));
    }
    host.stop().await;
    (round, p99)
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
    let in_process = flag("--in-process");
    let only: Option<String> = arg("--only");
    let wanted = |m: &str| only.as_deref().is_none_or(|o| o == m);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Some(which) = arg::<String>("--serve") {
        // (Its first line is the address: the parent reads it.)
        rt.block_on(serve_only(&which));
        return std::process::ExitCode::SUCCESS;
    }
    println!(
        "webhooks: {seconds} s per run, {connections} keep-alive connections, {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if in_process {
            "each server inside this process (--in-process)".to_owned()
        } else {
            format!(
                "each server in its own process (livebattle: {})",
                binary().display()
            )
        }
    );
    if let Some(addr) = arg::<SocketAddr>("--drive") {
        let requests = arg("--requests").unwrap_or(20_000);
        rt.block_on(drive_fixed(addr, requests, connections));
        return std::process::ExitCode::SUCCESS;
    }
    let rounds: usize = arg("--rounds").unwrap_or(1);
    rt.block_on(async {
        // Per mode: each round's closed-loop figures and the half-rate p99, modes interleaved so
        // a busy neighbour weighs on each alike. Half-rate runs in the first round only.
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
                let (r, p99) = mode(
                    label,
                    &dir,
                    seconds,
                    connections,
                    half && round == 0,
                    in_process,
                )
                .await;
                let _ = std::fs::remove_dir_all(&dir);
                match per_mode.iter_mut().find(|m| m.0 == label) {
                    Some(m) => m.1.push(r),
                    None => per_mode.push((label, vec![r], p99)),
                }
            }
        }
        summary(&per_mode, rounds)
    })
}

/// The median of `f` over `rounds` (`None` when no round has it).
fn median(rounds: &[Round], f: fn(&Round) -> Option<f64>) -> Option<f64> {
    let mut x: Vec<f64> = rounds.iter().filter_map(f).collect();
    x.sort_by(f64::total_cmp);
    x.get(x.len() / 2).copied()
}

/// A mode's medians over its rounds.
struct Medians<'a> {
    label: &'a str,
    max: f64,
    per_cpu: f64,
    server_us: Option<f64>,
    /// The half-rate run's corrected p99 (ms).
    p99: Option<f64>,
}

/// Prints each mode's medians against bare's; fails only when a mode answered nothing.
fn summary(per_mode: &[ModeRounds], rounds: usize) -> std::process::ExitCode {
    let results: Vec<Medians> = per_mode
        .iter()
        .map(|(label, v, p99)| Medians {
            label,
            max: median(v, |r| Some(r.max)).unwrap_or(0.0),
            per_cpu: median(v, |r| Some(r.per_cpu)).unwrap_or(0.0),
            server_us: median(v, |r| r.server_us),
            p99: *p99,
        })
        .collect();
    let bare = results.iter().find(|r| r.label == "bare" && r.max > 0.0);
    println!(
        "summary{}:",
        if rounds > 1 {
            format!(" (median of {rounds} rounds)")
        } else {
            String::new()
        }
    );
    for Medians {
        label,
        max,
        per_cpu,
        server_us,
        p99,
    } in &results
    {
        let target = match *label {
            "in-memory" => " (target >= 85%)",
            "durable" | "durable-redb" => " (target >= 50%)",
            _ => "",
        };
        let ratio = bare.map_or_else(
            || "-".to_owned(),
            |b| {
                format!(
                    "{:.0}% of bare's req/s{target}, {:.0}% of bare's req/CPU-s",
                    100.0 * max / b.max,
                    100.0 * per_cpu / b.per_cpu
                )
            },
        );
        let server = match (server_us, bare.and_then(|b| b.server_us)) {
            (Some(us), Some(bare_us)) => format!(
                "; server {us:.2} µs/req ({:.0}% of bare's requests per server CPU-s)",
                100.0 * bare_us / us
            ),
            (Some(us), None) => format!("; server {us:.2} µs/req"),
            _ => String::new(),
        };
        let p99 = p99.map_or_else(|| "-".to_owned(), |p| format!("{p:.2} ms (target <= 5 ms)"));
        println!(
            "  {label:>12}: max {max:>8.0} req/s ({per_cpu:.0} req/CPU-s), {ratio}{server}; p99 at half rate {p99}"
        );
    }
    if results.iter().any(|r| r.max <= 0.0) {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
