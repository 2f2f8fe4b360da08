//! The run: battles started at the chosen rate, their webhooks sent on schedule over a keep-alive
//! pool, each battle verified once it should have settled, and the summary. One loop keeps the
//! agenda (deliveries and verifications by due instant) and starts each job as a task when due.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::agenda::Agenda;
use crate::args::Args;
use crate::http::{Client, Target};
use crate::plan::{self, BattlePlan, Delivery, PlanConfig};
use crate::tencent;

/// How many error messages are printed in full.
const ERROR_SAMPLES: usize = 10;

/// Counters and ack latencies.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    verified: AtomicU64,
    mismatches: AtomicU64,
    /// Ack latencies, microseconds.
    latencies_us: Mutex<Vec<u64>>,
    /// How long after its planned instant each webhook was acknowledged, ms (the simulator's
    /// own lateness, its queueing and the server's): a Start acknowledged after the response
    /// deadline plus the server's grace rightly loses the battle to `response_timeout`.
    late_ms: Mutex<Vec<u64>>,
}

impl Stats {
    fn error(&self, message: String) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < ERROR_SAMPLES as u64 {
            eprintln!("error: {message}");
        } else if n == ERROR_SAMPLES as u64 {
            eprintln!("error: (further errors are only counted)");
        }
    }
}

struct Shared {
    /// The webhook server's pool, and the path (with any query) webhooks go to.
    hooks: Client,
    hook_path: String,
    /// The query API's pool (the same server unless --api-url names another), and the path
    /// prefix of its routes.
    api: Option<Client>,
    api_prefix: String,
    sdk_app_id: String,
    token: Option<String>,
    verify: bool,
    verify_patience: Duration,
    verbose: bool,
    inflight: Semaphore,
    stats: Stats,
    /// Wall-clock ms at `origin`.
    origin_wall_ms: i64,
    origin: Instant,
}

impl Shared {
    /// The monotonic instant at which the wall clock reads `wall_ms`.
    fn instant_of(&self, wall_ms: i64) -> Instant {
        let offset = wall_ms.saturating_sub(self.origin_wall_ms).max(0) as u64;
        self.origin + Duration::from_millis(offset)
    }

    /// The wall clock, derived from the monotonic one (so schedules never jump).
    fn wall_ms(&self) -> i64 {
        self.origin_wall_ms + self.origin.elapsed().as_millis() as i64
    }
}

/// Runs the whole simulation; the exit code tells whether everything was acknowledged and
/// verified.
pub async fn run(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let (hooks, hook_path, api, api_prefix) = match clients(&args).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("livebattle-simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let watchers = match watch_sse(&args).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("livebattle-simulate: --watch-sse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let count = args.battle_count();
    let cfg: PlanConfig = args.plan_config();
    println!(
        "livebattle-simulate: {count} battles at {}/s -> {} (seed {seed}, mix {}, duration {}..{} ms, \
         timeout {}..{} ms, verify {})",
        args.rate,
        args.url,
        args.mix,
        args.min_duration_ms,
        args.max_duration_ms,
        args.min_timeout_ms,
        args.max_timeout_ms,
        args.verify,
    );
    let shared = Arc::new(Shared {
        hooks,
        hook_path,
        api,
        api_prefix,
        sdk_app_id: args.sdk_app_id.clone(),
        token: args.token.clone(),
        verify: args.verify,
        verify_patience: Duration::from_millis(args.verify_patience_ms),
        verbose: args.verbose,
        inflight: Semaphore::new(args.max_inflight),
        stats: Stats::default(),
        origin_wall_ms: unix_ms(),
        origin: Instant::now(),
    });

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut scenarios: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut quirks: BTreeMap<&'static str, u64> = BTreeMap::new();
    // Deliveries and verifications by due instant; a job becomes a task when it is due.
    let mut agenda: Agenda<Job> = Agenda::default();
    let mut running = JoinSet::new();
    // Battles whose deliveries are all done (acknowledged or failed), to be verified once
    // settled.
    let (delivered_tx, mut delivered_rx) = mpsc::unbounded_channel::<Arc<Battle>>();
    let mut created = 0;
    loop {
        while let Some(done) = running.try_join_next() {
            reaped(&shared, done);
        }
        while let Ok(b) = delivered_rx.try_recv() {
            verify_when_settled(&mut agenda, &shared, b);
        }
        let now = Instant::now();
        while created < count && creation_at(&shared, created, args.rate) <= now {
            created += 1;
            let plan = plan::plan(&mut rng, shared.wall_ms(), &cfg);
            *scenarios.entry(plan.scenario.name()).or_default() += 1;
            for q in &plan.quirks {
                *quirks.entry(q.name()).or_default() += 1;
            }
            let b = Arc::new(Battle::new(plan));
            for (i, d) in b.plan.deliveries.iter().enumerate() {
                agenda.add(shared.instant_of(d.at_ms), Job::Deliver(b.clone(), i));
            }
            if b.plan.deliveries.is_empty() && shared.verify {
                verify_when_settled(&mut agenda, &shared, b);
            }
        }
        while let Some(job) = agenda.pop_due(now) {
            let shared = shared.clone();
            match job {
                Job::Deliver(b, i) => {
                    let done = Done {
                        to_verify: shared.verify.then(|| delivered_tx.clone()),
                        battle: b,
                    };
                    running.spawn(async move {
                        let done = done;
                        let b = &done.battle;
                        if let Some(late_ms) =
                            deliver(&shared, &b.plan, &b.plan.deliveries[i]).await
                        {
                            b.latest_ms.fetch_max(late_ms, Ordering::Relaxed);
                        }
                        // `done` drops here, or while a panic unwinds: the delivery is done.
                    });
                }
                Job::Verify(b) => {
                    running.spawn(async move {
                        verify(&shared, &b.plan, b.latest_ms.load(Ordering::Relaxed)).await
                    });
                }
            }
        }
        let next = agenda
            .next_at()
            .into_iter()
            .chain((created < count).then(|| creation_at(&shared, created, args.rate)))
            .min();
        if next.is_none() && running.is_empty() && delivered_rx.is_empty() {
            break;
        }
        // Wake for the next job or creation, or when a battle's last delivery is acknowledged.
        tokio::select! {
            () = sleep_until_some(next) => {}
            Some(b) = delivered_rx.recv() => verify_when_settled(&mut agenda, &shared, b),
            Some(done) = running.join_next(), if !running.is_empty() => reaped(&shared, done),
        }
    }

    let s = &shared.stats;
    let mut lat = std::mem::take(
        &mut *s
            .latencies_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    lat.sort_unstable();
    let mut late = std::mem::take(&mut *s.late_ms.lock().unwrap_or_else(PoisonError::into_inner));
    late.sort_unstable();
    let (sent, acks, errors) = (
        s.sent.load(Ordering::Relaxed),
        s.acks.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
    );
    let (verified, mismatches) = (
        s.verified.load(Ordering::Relaxed),
        s.mismatches.load(Ordering::Relaxed),
    );
    println!("scenarios: {}", join_counts(&scenarios));
    println!("quirks: {}", join_counts(&quirks));
    println!(
        "summary: battles={count} sent={sent} acks={acks} errors={errors} verified={verified} \
         mismatches={mismatches} ack_p50_ms={:.2} ack_p99_ms={:.2} late_p50_ms={} late_p99_ms={} \
         late_max_ms={} elapsed_s={:.1}",
        percentile_ms(&lat, 0.50),
        percentile_ms(&lat, 0.99),
        nearest_rank(&late, 0.50),
        nearest_rank(&late, 0.99),
        late.last().copied().unwrap_or(0),
        shared.origin.elapsed().as_secs_f64(),
    );
    let mut sse_ok = true;
    if let Some(watchers) = watchers {
        let n = args.watch_sse;
        match watchers.finish(Duration::from_secs(10)).await {
            Ok(t) => {
                println!(
                    "sse: watchers={n} events={} lagged={} gaps={} broken={} caught_up={}/{n}",
                    t.events, t.lagged, t.gaps, t.broken, t.caught_up
                );
                sse_ok = t.gaps == 0 && t.broken == 0 && t.caught_up == n as u64;
            }
            Err(e) => {
                eprintln!("livebattle-simulate: --watch-sse: {e}");
                sse_ok = false;
            }
        }
    }
    if errors > 0 || mismatches > 0 || acks != sent || !sse_ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The `--watch-sse` clients, started before the first battle.
async fn watch_sse(args: &Args) -> Result<Option<crate::watch::Watchers>, String> {
    if args.watch_sse == 0 {
        return Ok(None);
    }
    let api = Target::parse(&args.api_base())?;
    let addr = crate::http::resolve(&api.authority).await?;
    crate::watch::start(addr, &api.authority, args.watch_sse)
        .await
        .map(Some)
}

/// The connection pools for the webhooks and the query API (one when they share a server).
async fn clients(args: &Args) -> Result<(Client, String, Option<Client>, String), String> {
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let hooks = Target::parse(&args.url)?;
    let api = Target::parse(&args.api_base())?;
    let hook_client = Client::new(&hooks.authority, args.connections, timeout).await?;
    let api_client = if api.authority == hooks.authority {
        None
    } else {
        Some(Client::new(&api.authority, args.connections, timeout).await?)
    };
    let api_prefix = api.path.trim_end_matches('/').to_owned();
    Ok((hook_client, hooks.path, api_client, api_prefix))
}

/// When battle `i` is created.
fn creation_at(shared: &Shared, i: u64, rate: f64) -> Instant {
    shared.origin + Duration::from_secs_f64(i as f64 / rate)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Puts the battle's verification on the agenda, at the instant it should have settled.
fn verify_when_settled(agenda: &mut Agenda<Job>, shared: &Shared, b: Arc<Battle>) {
    agenda.add(shared.instant_of(b.plan.settle_at_ms), Job::Verify(b));
}

/// Counts a task that panicked.
fn reaped(shared: &Shared, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        shared.stats.error(format!("a task failed: {e}"));
    }
}

/// A job on the agenda.
enum Job {
    /// Send delivery `i` of the battle.
    Deliver(Arc<Battle>, usize),
    /// Check the battle's final state (only with `--verify`).
    Verify(Arc<Battle>),
}

/// One delivery's end, counted when dropped: at the end of its task, or when the task panics
/// (so that its battle is still verified).
struct Done {
    battle: Arc<Battle>,
    /// Where a battle goes once its last delivery is done (with `--verify`).
    to_verify: Option<mpsc::UnboundedSender<Arc<Battle>>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.battle.delivered() {
            if let Some(tx) = &self.to_verify {
                let _ = tx.send(self.battle.clone());
            }
        }
    }
}

/// A battle in flight: its plan, and what its deliveries left to know.
struct Battle {
    plan: BattlePlan,
    /// Deliveries not yet acknowledged (or failed).
    left: AtomicUsize,
    /// The most late of its acknowledged deliveries, ms (reported with a mismatch).
    latest_ms: AtomicU64,
}

impl Battle {
    fn new(plan: BattlePlan) -> Battle {
        Battle {
            left: AtomicUsize::new(plan.deliveries.len()),
            latest_ms: AtomicU64::new(0),
            plan,
        }
    }

    /// Records one delivery done; true for the last.
    fn delivered(&self) -> bool {
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// POSTs one webhook and checks Tencent's reply shape; once acknowledged, how long after its
/// planned instant (ms).
async fn deliver(shared: &Shared, plan: &BattlePlan, d: &Delivery) -> Option<u64> {
    let _permit = shared.inflight.acquire().await;
    let url = tencent::callback_url(
        &shared.hook_path,
        &shared.sdk_app_id,
        d.kind.command(),
        &plan.origin,
        shared.token.as_deref(),
        shared.wall_ms().div_euclid(1000),
    );
    shared.stats.sent.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let copy = if d.duplicate { " (duplicate)" } else { "" };
    let what = || format!("{}{copy} {}", d.kind.command(), plan.id);
    let response = shared.hooks.post_json(&url, d.body.as_bytes()).await;
    let (status, text) = match response {
        Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        Err(e) => {
            shared.stats.error(format!("{}: {e}", what()));
            return None;
        }
    };
    let elapsed = started.elapsed();
    let reply: Option<Value> = serde_json::from_str(&text).ok();
    let ok = status == 200
        && reply
            .as_ref()
            .is_some_and(|r| r["ActionStatus"] == "OK" && r["ErrorCode"].as_i64() == Some(0));
    if !ok {
        shared
            .stats
            .error(format!("{}: HTTP {status}: {}", what(), text.trim()));
        return None;
    }
    shared.stats.acks.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .latencies_us
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(elapsed.as_micros() as u64);
    let late_ms = shared.wall_ms().saturating_sub(d.at_ms).max(0) as u64;
    shared
        .stats
        .late_ms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(late_ms);
    Some(late_ms)
}

/// Polls `GET /v1/battles/{id}` until the battle shows the expected end, or patience runs out.
/// `latest_ms`: the battle's most late delivery (reported with a mismatch).
async fn verify(shared: &Shared, plan: &BattlePlan, latest_ms: u64) {
    let url = format!(
        "{}/v1/battles/{}",
        shared.api_prefix,
        tencent::pct_encode(&plan.id)
    );
    let give_up = Instant::now() + shared.verify_patience;
    let seen = loop {
        let seen = match fetch_battle(shared, &url).await {
            Ok(Some(b)) => {
                let state = b["state"].as_str().unwrap_or("?");
                let reason = b["end_reason"].as_str().unwrap_or("null");
                if state == "ended" && reason == plan.expected {
                    shared.stats.verified.fetch_add(1, Ordering::Relaxed);
                    if shared.verbose {
                        println!(
                            "ok {} {} -> {reason} [{}]",
                            plan.id,
                            plan.scenario.name(),
                            quirk_names(plan)
                        );
                    }
                    return;
                }
                format!("state={state} end_reason={reason}")
            }
            Ok(None) => "404 not found".to_owned(),
            Err(e) => {
                shared.stats.error(format!("GET {url}: {e}"));
                "an HTTP error".to_owned()
            }
        };
        if Instant::now() >= give_up {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    shared.stats.mismatches.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "MISMATCH {} scenario={} quirks=[{}]: expected state=ended end_reason={}, got {seen} \
         (its latest webhook was acknowledged {latest_ms} ms after its planned instant)",
        plan.id,
        plan.scenario.name(),
        quirk_names(plan),
        plan.expected,
    );
}

/// One battle as JSON, `None` on 404.
async fn fetch_battle(shared: &Shared, url: &str) -> Result<Option<Value>, String> {
    let response = shared
        .api
        .as_ref()
        .unwrap_or(&shared.hooks)
        .get(url)
        .await?;
    let status = response.status;
    if status == 404 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&response.body);
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("not JSON ({e}): {}", text.trim()))
}

fn quirk_names(plan: &BattlePlan) -> String {
    plan.quirks
        .iter()
        .map(|q| q.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn join_counts(counts: &BTreeMap<&'static str, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Nearest-rank percentile of sorted microsecond samples, in ms.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    nearest_rank(sorted_us, p) as f64 / 1000.0
}

/// Nearest-rank percentile of sorted samples (0 when there are none).
fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.50), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&[1500], 0.99), 1.5);
    }
}
