//! Ingest micro-benchmark: ns per request for parse only, parse + verify, and parse + verify +
//! apply into the real engine (through `Ingest::process` and through the axum router).
//!
//! `cargo bench -p livebattle-ingest --bench ingest`; `LIVEBATTLE_BENCH_SMOKE=1` runs a few
//! iterations only (CI). `LIVEBATTLE_BENCH_N` overrides the iteration count. Each line prints
//! wall ns/op and process CPU ns/op (all threads: the engine's shard tasks included).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use livebattle_engine::{Clock, Engine, TokioClock};
use livebattle_ingest::{
    compute_sign, parse_and_verify, parse_payload, AppConfig, CallbackQuery, Command, Ingest,
    IngestConfig, Verifier,
};
use tower::ServiceExt;

const APP: &str = "1400000001";
const TOKEN: &str = "xxxxyyyy";

fn fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tencent"
    ));
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("bench: cannot read {}: {e}", path.display());
            std::process::exit(2);
        }
    }
}

fn config() -> IngestConfig {
    IngestConfig {
        apps: vec![AppConfig::with_token(APP, TOKEN)],
        // The signed query is made once; keep it fresh for the whole run.
        signature_window: Duration::from_secs(24 * 3600),
        ..IngestConfig::default()
    }
}

fn signed_query(command: &str, now_ms: i64) -> String {
    let t = (now_ms / 1000).to_string();
    format!(
        "SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign={}&RequestTime={t}",
        compute_sign(TOKEN, &t)
    )
}

/// `n` copies of the Create sample, each with its own BattleId (every apply is a new battle).
fn unique_creates(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(&fixture("create_battle.json")).into_owned();
    let id = "4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=";
    (0..n)
        .map(|i| text.replace(id, &format!("bench-{tag}-{i}")).into_bytes())
        .collect()
}

/// CPU time of the whole process, all threads (`CLOCK_PROCESS_CPUTIME_ID`): on a shared machine
/// it says what a request costs even when wall time is stretched by other work.
#[cfg(target_os = "linux")]
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), nanos)
}

#[cfg(not(target_os = "linux"))]
fn process_cpu() -> Duration {
    Duration::ZERO
}

/// Wall and CPU time since it was made.
struct Meter(Instant, Duration);

impl Meter {
    fn start() -> Meter {
        Meter(Instant::now(), process_cpu())
    }

    fn report(self, name: &str, n: usize) {
        let per_op = |d: Duration| d.as_nanos() as f64 / n as f64;
        let wall = per_op(self.0.elapsed());
        let cpu = per_op(process_cpu().saturating_sub(self.1));
        println!("{name:<48} {wall:>9.0} ns/op wall {cpu:>9.0} ns/op CPU  ({n} iterations)");
    }
}

fn time_sync(name: &str, n: usize, mut f: impl FnMut(usize)) {
    for i in 0..(n / 10).max(1) {
        f(i); // warm-up
    }
    let meter = Meter::start();
    for i in 0..n {
        f(i);
    }
    meter.report(name, n);
}

fn main() {
    let smoke = std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let n: usize = std::env::var("LIVEBATTLE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 200 } else { 50_000 });
    println!(
        "ingest micro-benchmark: {n} iterations per line{}",
        if smoke { " (smoke)" } else { "" }
    );

    let samples = [
        (
            "create",
            Command::CreateBattle,
            fixture("create_battle.json"),
        ),
        ("start", Command::StartBattle, fixture("start_battle.json")),
        ("end", Command::EndBattle, fixture("end_battle.json")),
    ];

    // 1. Parse only: body bytes → engine Event.
    for (name, command, body) in &samples {
        time_sync(&format!("parse only ({name})"), n, |_| {
            black_box(parse_payload(command, black_box(body)).is_ok());
        });
    }

    // 2. Parse + verify: query, SdkAppid, sha256 Sign, freshness, size, body.
    let now_ms = TokioClock::system().now_ms();
    let verifier = match Verifier::new(&config(), now_ms) {
        Ok(v) => v,
        Err(e) => panic!("bench config: {e}"),
    };
    let query = signed_query(Command::EndBattle.as_str(), now_ms);
    time_sync("verify only (query, SdkAppid, Sign, freshness)", n, |_| {
        let q = CallbackQuery::parse(black_box(&query));
        assert!(q.is_ok_and(|q| verifier.authorize(&q, now_ms).is_ok()));
    });
    time_sync("sha256 Sign only", n, |_| {
        black_box(compute_sign(black_box(TOKEN), black_box("1739954005")));
    });
    for (name, command, body) in &samples {
        let query = signed_query(command.as_str(), now_ms);
        time_sync(&format!("parse + verify ({name}, signed)"), n, |_| {
            let r = parse_and_verify(&verifier, black_box(&query), black_box(body), now_ms);
            assert!(r.is_ok());
        });
    }

    // 3. Parse + verify + apply into the real engine (2 worker threads, one request at a time).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    runtime.block_on(async {
        let engine = match Engine::builder().start().await {
            Ok(e) => e,
            Err(e) => panic!("engine: {e}"),
        };
        let ingest = match Ingest::new(engine.clone(), config()) {
            Ok(i) => i,
            Err(e) => panic!("ingest: {e}"),
        };
        let create_q = signed_query(Command::CreateBattle.as_str(), engine.now_ms());

        let bodies = unique_creates(n + n / 10 + 1, "process");
        for body in bodies.iter().skip(n) {
            let _ = ingest.process(&create_q, body).await; // warm-up
        }
        let meter = Meter::start();
        for body in bodies.iter().take(n) {
            let outcome = ingest.process(&create_q, body).await;
            assert!(outcome.is_ok(), "{outcome:?}");
        }
        meter.report("parse + verify + apply (create, new battle)", n);

        let dup = &bodies[0];
        let meter = Meter::start();
        for _ in 0..n {
            let outcome = ingest.process(&create_q, dup).await;
            assert!(outcome.is_ok());
        }
        meter.report("parse + verify + apply (create, duplicate)", n);

        // 4. The same through the axum router (request building included).
        let router = ingest.router();
        let uri = format!("/callback?{create_q}");
        let bodies = unique_creates(n, "router");
        let meter = Meter::start();
        for body in bodies {
            let request = Request::post(uri.as_str()).body(Body::from(body));
            let Ok(request) = request else {
                panic!("request")
            };
            let response = router.clone().oneshot(request).await;
            assert!(response.is_ok_and(|r| r.status().is_success()));
        }
        meter.report("router: HTTP + parse + verify + apply (create)", n);
        engine.shutdown().await;
    });
}
