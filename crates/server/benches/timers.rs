//! Timer precision and memory of the real release `livebattle` process (in memory, real time):
//! arms N battles (default 1,000,000) over HTTP, reads the process's resident memory before and
//! after, then waits for every end timer to fire and reports how late each fired.
//!
//! ```sh
//! cargo bench -p livebattle-server --bench timers                          # 1,000,000 battles
//! LIVEBATTLE_BENCH_SMOKE=1 cargo bench -p livebattle-server --bench timers # 2,000, a few seconds
//! cargo bench -p livebattle-server --bench timers -- --battles 200000 --lead 30 --spread 60
//! ```
//!
//! * Every battle is one signed Create webhook (NeedResponse false), posted closed-loop over
//!   `--connections` (128) keep-alive connections. Battle i's deadline is `t0 + lead + spread ×
//!   i / N` (`--lead` 90 s, `--spread` 60 s after the first request; its `Duration` is that
//!   deadline minus its `EventTime`), so deadlines are spread evenly over `spread` seconds and
//!   all fall after the arming when it takes less than `lead`.
//! * Memory: `VmRSS` of the server from `/proc/PID/status` right before the first webhook and
//!   right after the last acknowledgement; the difference divided by N. One `/v1/events` SSE
//!   stream is open throughout (unless `--no-sse`), and the replay ring (100,000 notifications
//!   by default) fills during the arming: both are included, as in production.
//! * Lateness, inside: the server's `livebattle_timer_lateness_ms` histogram and
//!   `livebattle_timer_lateness_max_ms` gauge from `/metrics`.
//! * Lateness, outside: the `/v1/events` stream carries each `end_timer` notification with the
//!   battle's `ends_at_ms`, `ended_at_ms` and `late_ms`; the bench counts each firing's exact
//!   `late_ms` (whole ms, as the engine measures it) and the receipt lateness (this process's
//!   wall clock at receipt minus `ends_at_ms`, in µs; the server's clock is anchored to the same
//!   system clock).
//!
//! Exits non-zero only if a webhook failed or not every timer fired; targets are printed, never
//! enforced.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(serde::Deserialize)]
struct Note {
    cause: Option<String>,
    late_ms: Option<i64>,
    ends_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
}

#[derive(Default)]
struct Outside {
    /// `late_ms` of each end-timer firing → count.
    late_ms: BTreeMap<i64, u64>,
    /// Receipt wall clock minus `ends_at_ms`, µs.
    receipt_us: Vec<i64>,
    lagged: u64,
    events: u64,
    /// `(ends_at_ms, late_ms)` of the firings [`WORST_LATE_MS`] or more late, to see where
    /// they cluster (a wheel boundary, or anywhere: the scheduler).
    worst: Vec<(i64, i64)>,
}

/// Firings this late (ms) or later are listed by deadline.
const WORST_LATE_MS: i64 = 5;

fn main() -> std::process::ExitCode {
    let smoke = smoke();
    let n: usize = arg("--battles").unwrap_or(if smoke { 2_000 } else { 1_000_000 });
    let lead_s: f64 = arg("--lead").unwrap_or(if smoke { 3.0 } else { 90.0 });
    let spread_s: f64 = arg("--spread").unwrap_or(if smoke { 2.0 } else { 60.0 });
    let connections: usize = arg("--connections").unwrap_or(if smoke { 16 } else { 128 });
    let sse = !flag("--no-sse");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let log = std::env::temp_dir().join(format!("livebattle-timers-{}.log", std::process::id()));
    let server = Server::start(&[], 65_536, &log);
    let addr = server.addr;
    println!(
        "timers: {n} battles, deadlines from +{lead_s} s over {spread_s} s, {connections} connections, \
         SSE {}, server pid {} on {addr}, {} CPUs",
        if sse { "on" } else { "off" },
        server.pid,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let code = rt.block_on(async {
        let outside = Arc::new(Mutex::new(Outside::default()));
        let fired_outside = Arc::new(AtomicU64::new(0));
        let reader = if sse {
            let mut client = SseClient::connect(addr, None, "/v1/events", None)
                .await
                .expect("open /v1/events");
            let first = client.next().await.expect("the initial snapshot");
            assert_eq!(first.name, "snapshot");
            let (outside, fired) = (outside.clone(), fired_outside.clone());
            Some(tokio::spawn(async move {
                while let Some(e) = client.next().await {
                    let received_us = now_us();
                    let mut o = outside.lock().expect("outside stats");
                    o.events += 1;
                    if e.name == "snapshot" {
                        o.lagged += 1;
                        continue;
                    }
                    if !e.data.contains("\"cause\":\"end_timer\"") {
                        continue;
                    }
                    let Ok(note) = serde_json::from_str::<Note>(&e.data) else {
                        continue;
                    };
                    if note.cause.as_deref() != Some("end_timer") {
                        continue;
                    }
                    let late = note
                        .late_ms
                        .or_else(|| Some(note.ended_at_ms? - note.ends_at_ms?))
                        .unwrap_or(0);
                    *o.late_ms.entry(late).or_default() += 1;
                    if let Some(ends) = note.ends_at_ms {
                        o.receipt_us.push(received_us - ends * 1000);
                        if late >= WORST_LATE_MS {
                            o.worst.push((ends, late));
                        }
                    }
                    fired.fetch_add(1, Ordering::Relaxed);
                }
            }))
        } else {
            None
        };

        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = server.rss();
        let t0 = now_ms();
        let first_deadline = t0 + (lead_s * 1000.0) as i64;
        let spread_ms = spread_s * 1000.0;
        let armed_at = Instant::now();
        let (ok, errors, _) = post_all(
            addr,
            n,
            connections,
            move |i| {
                let deadline = first_deadline + (spread_ms * i as f64 / n as f64) as i64;
                let t = now_ms();
                (
                    CREATE,
                    create_body(&format!("t{i}"), t, (deadline - t).max(1), false),
                )
            },
            false,
        )
        .await;
        let arm_s = armed_at.elapsed().as_secs_f64();
        let arm_end = now_ms();
        let rss_after = server.rss();
        let hwm = vm(server.pid, "VmHWM:");
        println!(
            "armed: {ok} ok, {errors} errors in {arm_s:.1} s ({:.0} webhooks/s); last ack {} ms {} the first deadline",
            ok as f64 / arm_s,
            (arm_end - first_deadline).abs(),
            if arm_end <= first_deadline { "before" } else { "AFTER" },
        );
        println!(
            "memory: VmRSS {:.1} MiB before, {:.1} MiB with {n} live battles: {:.0} bytes per live battle (target <= 1024){}",
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
            format_args!(", VmHWM {:.1} MiB", hwm as f64 / 1048576.0)
        );

        // Wait for every timer (deadline of the last battle, plus patience).
        let last_deadline = first_deadline + spread_ms as i64;
        let give_up = Instant::now()
            + Duration::from_millis((last_deadline - now_ms()).max(0) as u64)
            + Duration::from_secs(30);
        let mut fired = 0.0;
        let mut text = String::new();
        while Instant::now() < give_up {
            tokio::time::sleep(Duration::from_secs(1)).await;
            text = get_text(addr, "/metrics").await;
            fired = metric(&text, "livebattle_timers_fired_total").unwrap_or(0.0);
            let outside_done = !sse || fired_outside.load(Ordering::Relaxed) >= n as u64;
            if fired >= n as f64 && outside_done {
                break;
            }
        }
        let rss_end = server.rss();
        println!(
            "fired: {fired} timers inside, {} seen over SSE; VmRSS after firing {:.1} MiB",
            fired_outside.load(Ordering::Relaxed),
            rss_end as f64 / 1048576.0
        );

        // The histogram as the server exports it.
        println!("inside: livebattle_timer_lateness_ms (cumulative)");
        let count = metric(&text, "livebattle_timer_lateness_ms_count").unwrap_or(0.0);
        let mut p50 = None;
        let mut p99 = None;
        let mut prev = 0.0;
        for line in text
            .lines()
            .filter(|l| l.starts_with("livebattle_timer_lateness_ms_bucket"))
        {
            let le = line
                .split('"')
                .nth(1)
                .unwrap_or("?")
                .to_owned();
            let c: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if count > 0.0 {
                if p50.is_none() && c >= 0.5 * count {
                    p50 = Some(le.clone());
                }
                if p99.is_none() && c >= 0.99 * count {
                    p99 = Some(le.clone());
                }
            }
            println!(
                "  le {le:>6} ms: {c:>9} cumulative ({:>7.3}%), {:>9} in bucket",
                100.0 * c / count.max(1.0),
                c - prev
            );
            prev = c;
        }
        let max = metric(&text, "livebattle_timer_lateness_max_ms").unwrap_or(-1.0);
        let sum = metric(&text, "livebattle_timer_lateness_ms_sum").unwrap_or(0.0);
        println!(
            "inside: count {count}, mean {:.3} ms, p50 <= {} ms, p99 <= {} ms (target <= 2), max {max} ms (target <= 10)",
            sum / count.max(1.0),
            p50.unwrap_or_default(),
            p99.unwrap_or_default()
        );

        if let Some(reader) = reader {
            reader.abort();
            let mut o = outside.lock().expect("outside stats");
            let total: u64 = o.late_ms.values().sum();
            println!(
                "outside (SSE /v1/events): {} events, {} lagged snapshots, {total} end_timer firings",
                o.events, o.lagged
            );
            let mut cumulative = 0;
            let mut p99_exact = None;
            for (late, c) in &o.late_ms {
                cumulative += c;
                if p99_exact.is_none() && cumulative as f64 >= 0.99 * total as f64 {
                    p99_exact = Some(*late);
                }
                println!(
                    "  late_ms = {late:>5}: {c:>9} ({:>7.3}% cumulative)",
                    100.0 * cumulative as f64 / total.max(1) as f64
                );
            }
            let max_exact = o.late_ms.keys().next_back().copied().unwrap_or(0);
            o.receipt_us.sort_unstable();
            let r = &o.receipt_us;
            println!(
                "outside: late_ms exact p99 {} ms, max {max_exact} ms; receipt - ends_at: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                p99_exact.unwrap_or(0),
                pct(r, 0.50) as f64 / 1000.0,
                pct(r, 0.99) as f64 / 1000.0,
                pct(r, 0.999) as f64 / 1000.0,
                pct(r, 1.0) as f64 / 1000.0
            );
            print_worst(&mut o.worst, first_deadline);
        }
        if errors > 0 || fired < n as f64 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    });
    server.stop();
    if std::env::var_os("LIVEBATTLE_BENCH_KEEP_LOG").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    code
}

/// The firings `WORST_LATE_MS` or more late, grouped into runs of deadlines less than 50 ms
/// apart: where each starts (from the first deadline, and its phase in the wheel's level-2
/// and level-3 slots, 4,096 and 262,144 ms), how many, how late at most.
fn print_worst(worst: &mut [(i64, i64)], first_deadline: i64) {
    worst.sort_unstable();
    let mut runs: Vec<(i64, i64, usize, i64)> = Vec::new(); // start, last, count, max late
    for &(at, late) in worst.iter() {
        match runs.last_mut() {
            Some(run) if at - run.1 < 50 => {
                run.1 = at;
                run.2 += 1;
                run.3 = run.3.max(late);
            }
            _ => runs.push((at, at, 1, late)),
        }
    }
    println!(
        "firings >= {WORST_LATE_MS} ms late: {} in {} runs of deadlines",
        worst.len(),
        runs.len()
    );
    runs.sort_by_key(|r| std::cmp::Reverse(r.3));
    for (start, last, count, max) in runs.iter().take(12) {
        println!(
            "  deadlines +{:.3} s .. +{} ms: {count:>4} firings, max {max} ms late (phase {} of 4096, {} of 262144)",
            (start - first_deadline) as f64 / 1000.0,
            last - start,
            start.rem_euclid(4096),
            start.rem_euclid(262_144),
        );
    }
}
