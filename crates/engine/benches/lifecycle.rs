//! Engine lifecycle benchmark: the full lifecycle of many concurrent battles, pushed through the
//! engine and, in the same run, through a naive design, on one core.
//!
//! ```text
//! cargo bench -p livebattle-engine --bench lifecycle                 # 1,000,000 battles
//! LIVEBATTLE_BENCH_SMOKE=1 cargo bench -p livebattle-engine --bench lifecycle   # 10,000 (CI)
//! cargo bench -p livebattle-engine --bench lifecycle -- --battles 200000
//! cargo bench -p livebattle-engine --bench lifecycle -- --child naive  # one design only
//! ```
//!
//! Every battle goes Create (`NeedResponse=true`, `Timeout` 10 s, `Duration` 60–300 s) → the
//! callee accepts (the response timer is cancelled and the end timer armed) → Start webhook (the
//! end is refined: another re-arm) → the end timer fires at `ends_at` (`time_up`) → End webhook
//! (record completion). Phases: (1) 1M Creates, then RSS per live battle; (2a) responses,
//! (2b) starts; (3) virtual time advances in 100 ms steps until every end timer fired;
//! (4) End webhooks.
//!
//! Each design runs in its own child process (this binary re-executed with `--child <design>`)
//! so resident-memory figures do not contaminate each other:
//!
//! * `engine`: [`Engine::apply_batch`] with batches of 1024 events, one shard, on a
//!   current-thread runtime with paused time and a [`TokioClock`];
//! * `engine-single`: the same with one [`Engine::apply`] per event (fewer battles);
//! * `naive`: the same pure core ([`transition::apply_event`], [`transition::apply_timer`]) in a
//!   naive shell — one `Mutex<HashMap>` of battles (and a room index, as the engine keeps), one
//!   tokio task per battle sleeping with `tokio::time::sleep_until`, and a `Notify` per battle to
//!   re-arm (the task drops its sleep and sleeps again). Only the shell differs;
//! * `records`: the floor — the `Battle` records alone, in a `Vec`.
//!
//! Times are measured around the applying code only (building the events is excluded), and for
//! phase 3 around the whole advance-and-fire loop, both as wall time and as the thread's CPU
//! time; rates are per CPU-second (the machine may be shared). A counting allocator wraps the
//! system allocator in every design (allocations per event, live heap bytes). The process
//! exits non-zero only when a design gets the lifecycle wrong; missed targets print `MISS`.
//! Results and analysis: docs/benchmarks.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use livebattle_engine::transition::{apply_event, apply_timer, Change};
use livebattle_engine::{
    Battle, Cause, Clock, Created, EndReason, Ended, Engine, Event, RoomInfo, Rules, Started,
    State, TokioClock,
};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident set size in bytes (`/proc/self/statm` resident pages × page size, as the kernel
/// reports it in `/proc/self/status` `VmRSS`).
fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Configuration and workload
// ---------------------------------------------------------------------------------------------

/// Virtual Unix time at the start (2025-02-19T08:33:25Z).
const T0: i64 = 1_739_954_005_000;
/// Virtual ms after T0 when the callees answer.
const RESPONSE_AT: i64 = 1_000;
/// Virtual ms after T0 when the Start webhooks come (the end moves by 500 ms: a re-arm).
const START_AT: i64 = 1_500;
/// Virtual time step of phase 3.
const STEP_MS: i64 = 100;
const MIN_DURATION_MS: u64 = 60_000;
const MAX_DURATION_MS: u64 = 300_000;

#[derive(Clone, Debug)]
struct Config {
    battles: usize,
    single: usize,
    batch: usize,
    smoke: bool,
}

impl Config {
    fn from_args(args: &[String]) -> Config {
        // A debug build (e.g. `cargo test --all-targets` runs this bench as a test) is never for
        // figures: smoke mode.
        let smoke = args.iter().any(|a| a == "--smoke")
            || std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
            || cfg!(debug_assertions);
        let get = |name: &str| -> Option<usize> {
            let i = args.iter().position(|a| a == name)?;
            args.get(i + 1)?.replace('_', "").parse().ok()
        };
        Config {
            battles: get("--battles").unwrap_or(if smoke { 10_000 } else { 1_000_000 }),
            single: get("--single").unwrap_or(if smoke { 2_000 } else { 100_000 }),
            batch: get("--batch").unwrap_or(1024).max(1),
            smoke,
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--battles".to_string(),
            self.battles.to_string(),
            "--single".to_string(),
            self.single.to_string(),
            "--batch".to_string(),
            self.batch.to_string(),
        ];
        if self.smoke {
            v.push("--smoke".into());
        }
        v
    }
}

fn mix(i: usize) -> u64 {
    // splitmix64: a deterministic spread.
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The battles: ids, rooms and accounts shaped like Tencent's (21-, 14- and 13-byte strings).
struct Workload;

impl Workload {
    fn battle_id(i: usize) -> String {
        format!("pk_{:08x}_{i:09}", mix(i) as u32)
    }
    fn caller(i: usize) -> String {
        format!("live_{i:08}a")
    }
    fn callee(i: usize) -> String {
        format!("live_{i:08}b")
    }
    fn account(i: usize, side: char) -> String {
        format!("host_{i:07}{side}")
    }
    fn duration_ms(i: usize) -> u64 {
        MIN_DURATION_MS + mix(i ^ 0x5555_5555) % (MAX_DURATION_MS - MIN_DURATION_MS + 1)
    }
    /// Virtual ms after T0 when battle `i` ends (Start at `START_AT`).
    fn end_offset(i: usize) -> i64 {
        START_AT + Self::duration_ms(i) as i64
    }

    fn create(i: usize) -> Event {
        Event::Created(Created {
            battle_id: Self::battle_id(i),
            operator: Some(Self::account(i, 'a')),
            from_room: Some(Self::caller(i)),
            to_rooms: vec![Self::callee(i)],
            timeout_ms: Some(10_000),
            duration_ms: Some(Self::duration_ms(i)),
            need_response: Some(true),
            extension_info: None,
            event_time_ms: Some(T0),
        })
    }
    fn response(i: usize) -> Event {
        Event::Response {
            battle_id: Self::battle_id(i),
            room_id: Self::callee(i),
            accept: true,
        }
    }
    fn started(i: usize) -> Event {
        let at = T0 + START_AT;
        Event::Started(Started {
            battle_id: Self::battle_id(i),
            duration_ms: Some(Self::duration_ms(i)),
            create_time_s: Some(T0 / 1000),
            start_time_s: Some(at / 1000),
            from_room: Some(RoomInfo {
                room_id: Self::caller(i),
                owner_account: Some(Self::account(i, 'a')),
                score: None,
            }),
            to_rooms: vec![RoomInfo {
                room_id: Self::callee(i),
                owner_account: Some(Self::account(i, 'b')),
                score: None,
            }],
            event_time_ms: Some(at),
        })
    }
    fn ended(i: usize, now_ms: i64) -> Event {
        let end = T0 + Self::end_offset(i);
        Event::Ended(Ended {
            battle_id: Self::battle_id(i),
            duration_ms: Some(Self::duration_ms(i)),
            create_time_s: Some(T0 / 1000),
            start_time_s: Some((T0 + START_AT) / 1000),
            end_time_s: Some(end / 1000),
            op_type: Some(0),
            from_room: Some(RoomInfo {
                room_id: Self::caller(i),
                owner_account: Some(Self::account(i, 'a')),
                score: Some((mix(i) % 1000) as i64),
            }),
            to_rooms: vec![RoomInfo {
                room_id: Self::callee(i),
                owner_account: Some(Self::account(i, 'b')),
                score: Some((mix(i + 1) % 1000) as i64),
            }],
            event_time_ms: Some(now_ms),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The naive design
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    armed: AtomicU64,
    cancelled: AtomicU64,
    fired: AtomicU64,
    ended: AtomicU64,
}

struct NaiveSlot {
    battle: Battle,
    rearm: Arc<Notify>,
}

#[derive(Default)]
struct NaiveState {
    battles: HashMap<Arc<str>, NaiveSlot>,
    rooms: HashMap<Box<str>, Arc<str>>,
}

/// One task plus one `sleep` per battle, a global `Mutex<HashMap>`, a `Notify` to re-arm.
struct Naive {
    clock: TokioClock,
    rules: Rules,
    state: Mutex<NaiveState>,
    counters: Counters,
}

fn index_rooms(rooms: &mut HashMap<Box<str>, Arc<str>>, b: &Battle) {
    for r in b.rooms() {
        if b.state == State::Ended {
            if rooms.get(r).is_some_and(|id| *id == b.id) {
                rooms.remove(r);
            }
        } else if rooms.get(r).is_none_or(|id| *id != b.id) {
            rooms.insert(r.into(), b.id.clone());
        }
    }
}

impl Naive {
    fn new(clock: TokioClock) -> Arc<Naive> {
        Arc::new(Naive {
            clock,
            rules: Rules::default(),
            state: Mutex::new(NaiveState::default()),
            counters: Counters::default(),
        })
    }

    fn apply(self: &Arc<Self>, event: Event) -> bool {
        let now = self.clock.now_ms();
        self.counters.events.fetch_add(1, Relaxed);
        let Some(id) = event.battle_id() else {
            return false;
        };
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        if let Some(slot) = st.battles.get_mut(id) {
            let (timer, state) = (slot.battle.timer, slot.battle.state);
            let Ok((_, fx)) = apply_event(Some(&mut slot.battle), &event, now, &self.rules) else {
                return false;
            };
            if fx.rooms_changed || state != slot.battle.state {
                index_rooms(&mut st.rooms, &slot.battle);
            }
            if slot.battle.timer != timer {
                slot.rearm.notify_one();
            }
            true
        } else {
            let Ok((Some(b), fx)) = apply_event(None, &event, now, &self.rules) else {
                return false;
            };
            if !fx.change.notifies() {
                return true;
            }
            index_rooms(&mut st.rooms, &b);
            let id = b.id.clone();
            let rearm = Arc::new(Notify::new());
            st.battles.insert(
                id.clone(),
                NaiveSlot {
                    battle: b,
                    rearm: rearm.clone(),
                },
            );
            drop(guard);
            tokio::spawn(battle_task(self.clone(), id, rearm));
            true
        }
    }

    fn instant_for(&self, at_ms: i64) -> tokio::time::Instant {
        let delta = at_ms.saturating_sub(self.clock.now_ms()).max(0);
        tokio::time::Instant::now() + Duration::from_millis(delta as u64)
    }
}

/// The per-battle task: sleeps until the battle's timer, or until told to re-arm.
async fn battle_task(n: Arc<Naive>, id: Arc<str>, rearm: Arc<Notify>) {
    loop {
        let timer = {
            let st = n.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.battles.get(&id) {
                Some(slot) => slot.battle.timer,
                None => return,
            }
        };
        let Some(timer) = timer else {
            rearm.notified().await;
            continue;
        };
        n.counters.armed.fetch_add(1, Relaxed);
        let sleep = tokio::time::sleep_until(n.instant_for(timer.at_ms));
        tokio::select! {
            biased;
            _ = rearm.notified() => {
                n.counters.cancelled.fetch_add(1, Relaxed);
            }
            _ = sleep => {
                let now = n.clock.now_ms();
                let mut guard = n.state.lock().unwrap_or_else(|e| e.into_inner());
                let st = &mut *guard;
                let Some(slot) = st.battles.get_mut(&id) else {
                    return;
                };
                let fx = apply_timer(&mut slot.battle, timer, now, &n.rules);
                match fx.change {
                    Change::None => {}
                    Change::Evict => {
                        n.counters.fired.fetch_add(1, Relaxed);
                        if let Some(slot) = st.battles.remove(&id) {
                            for r in slot.battle.rooms() {
                                if st.rooms.get(r).is_some_and(|b| *b == id) {
                                    st.rooms.remove(r);
                                }
                            }
                        }
                        return;
                    }
                    _ => {
                        n.counters.fired.fetch_add(1, Relaxed);
                        if slot.battle.state == State::Ended {
                            n.counters.ended.fetch_add(1, Relaxed);
                            index_rooms(&mut st.rooms, &slot.battle);
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The designs behind one interface
// ---------------------------------------------------------------------------------------------

enum Design {
    Engine(Engine),
    EngineSingle(Engine),
    Naive(Arc<Naive>),
}

#[derive(Clone, Copy, Default, Debug)]
struct Count {
    events: u64,
    armed: u64,
    cancelled: u64,
    fired: u64,
    ended: u64,
}

impl Design {
    fn name(&self) -> &'static str {
        match self {
            Design::Engine(_) => "engine",
            Design::EngineSingle(_) => "engine-single",
            Design::Naive(_) => "naive",
        }
    }

    /// Applies a chunk of events; returns how many failed.
    async fn apply(&self, events: Vec<Event>) -> usize {
        match self {
            Design::Engine(e) => e
                .apply_batch(events)
                .await
                .iter()
                .filter(|r| r.is_err())
                .count(),
            Design::EngineSingle(e) => {
                let mut failed = 0;
                for ev in events {
                    failed += usize::from(e.apply(ev).await.is_err());
                }
                failed
            }
            Design::Naive(n) => {
                let mut failed = 0;
                for ev in events {
                    failed += usize::from(!n.apply(ev));
                }
                // Let the battle tasks spawned or notified by this chunk run.
                tokio::task::yield_now().await;
                failed
            }
        }
    }

    fn count(&self) -> Count {
        match self {
            Design::Engine(e) | Design::EngineSingle(e) => {
                let m = e.metrics().snapshot();
                Count {
                    events: m.events,
                    armed: m.timers_armed,
                    cancelled: m.timers_cancelled,
                    fired: m.timers_fired,
                    ended: e.metrics().battles_in(State::Ended),
                }
            }
            Design::Naive(n) => Count {
                events: n.counters.events.load(Relaxed),
                armed: n.counters.armed.load(Relaxed),
                cancelled: n.counters.cancelled.load(Relaxed),
                fired: n.counters.fired.load(Relaxed),
                ended: n.counters.ended.load(Relaxed),
            },
        }
    }

    fn ended(&self) -> u64 {
        match self {
            Design::Engine(e) | Design::EngineSingle(e) => e.metrics().battles_in(State::Ended),
            Design::Naive(n) => n.counters.ended.load(Relaxed),
        }
    }

    /// Waits until the design's own tasks caught up: for the naive design, until its battle
    /// tasks armed `armed` sleeps in total (the engine is settled when `apply` returns).
    async fn settle(&self, armed: u64) {
        if let Design::Naive(n) = self {
            wait_until(
                || n.counters.armed.load(Relaxed) >= armed,
                "naive timers armed",
            )
            .await;
        }
    }

    fn now_ms(&self) -> i64 {
        match self {
            Design::Engine(e) | Design::EngineSingle(e) => e.now_ms(),
            Design::Naive(n) => n.clock.now_ms(),
        }
    }

    /// (battles ended with reason `time_up` and the End webhook applied, battles held)
    fn check(&self, n: usize) -> (u64, u64) {
        let good = |b: Option<(State, Option<EndReason>, Option<i64>)>| {
            matches!(b, Some((State::Ended, Some(EndReason::TimeUp), Some(0))))
        };
        match self {
            Design::Engine(e) | Design::EngineSingle(e) => {
                let ok = (0..n)
                    .filter(|&i| {
                        good(
                            e.battle(&Workload::battle_id(i))
                                .map(|s| (s.state, s.end_reason, s.end_op_type)),
                        )
                    })
                    .count();
                (ok as u64, e.battle_count() as u64)
            }
            Design::Naive(nv) => {
                let st = nv.state.lock().unwrap_or_else(|e| e.into_inner());
                let ok = (0..n)
                    .filter(|&i| {
                        good(st.battles.get(Workload::battle_id(i).as_str()).map(|s| {
                            (
                                s.battle.state,
                                s.battle.end_reason,
                                s.battle.end_op_type.get(),
                            )
                        }))
                    })
                    .count();
                (ok as u64, st.battles.len() as u64)
            }
        }
    }
}

async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let mut spins: u64 = 0;
    while !done() {
        tokio::task::yield_now().await;
        spins += 1;
        assert!(spins < 100_000_000, "stalled waiting for {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// One design, in its own process
// ---------------------------------------------------------------------------------------------

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): what one core spent, whatever
/// else the machine runs. The designs run on a current-thread runtime, so this is all of it.
fn thread_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall time, thread CPU time and allocations, summed over measured stretches.
#[derive(Clone, Copy, Default)]
struct Meter {
    wall: Duration,
    cpu: Duration,
    allocs: u64,
}

impl Meter {
    /// Measures `work` and adds it.
    async fn measure<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        let (w, c, a) = (StdInstant::now(), thread_cpu(), ALLOCS.load(Relaxed));
        let out = work.await;
        self.cpu += thread_cpu() - c;
        self.wall += w.elapsed();
        self.allocs += ALLOCS.load(Relaxed) - a;
        out
    }
}

struct Phase {
    name: &'static str,
    events: u64,
    meter: Meter,
    delta: Count,
}

fn sub(a: Count, b: Count) -> Count {
    Count {
        events: a.events - b.events,
        armed: a.armed - b.armed,
        cancelled: a.cancelled - b.cancelled,
        fired: a.fired - b.fired,
        ended: a.ended - b.ended,
    }
}

/// Runs one input phase over `n` battles in chunks, measuring only the applying (building the
/// events is excluded).
async fn input_phase(
    d: &Design,
    n: usize,
    batch: usize,
    failed: &mut usize,
    make: impl Fn(usize) -> Event,
) -> Meter {
    let mut meter = Meter::default();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let events: Vec<Event> = (i..end).map(&make).collect();
        *failed += meter.measure(d.apply(events)).await;
        i = end;
    }
    meter
}

/// One measured input phase: apply every battle's event, then (naive design) wait until the
/// battle tasks armed `settle_to` timers in total.
async fn measured_phase(
    d: &Design,
    name: &'static str,
    (n, batch): (usize, usize),
    settle_to: u64,
    failed: &mut usize,
    make: impl Fn(usize) -> Event,
) -> Phase {
    let c0 = d.count();
    let mut meter = input_phase(d, n, batch, failed, make).await;
    meter.measure(d.settle(settle_to)).await;
    Phase {
        name,
        events: n as u64,
        meter,
        delta: sub(d.count(), c0),
    }
}

async fn run_design(design: &str, cfg: &Config) {
    let n = if design == "engine-single" {
        cfg.single
    } else {
        cfg.battles
    };
    let clock = TokioClock::starting_at(T0);
    let d = match design {
        "engine" | "engine-single" => {
            let engine = Engine::builder()
                .shards(1)
                .clock(clock)
                .start()
                .await
                .expect("engine starts");
            if design == "engine" {
                Design::Engine(engine)
            } else {
                Design::EngineSingle(engine)
            }
        }
        "naive" => Design::Naive(Naive::new(clock)),
        other => panic!("unknown design {other:?} (engine, engine-single, naive)"),
    };
    let batch = cfg.batch;
    let mut failed = 0usize;
    let mut phases: Vec<Phase> = Vec::new();
    let advance = |ms: i64| tokio::time::advance(Duration::from_millis(ms as u64));

    eprintln!("[{}] {n} battles, batches of {batch}", d.name());
    let rss_before = rss_bytes();
    let heap_before = LIVE_BYTES.load(Relaxed);

    // Phase 1: arm — every Create arms a response timer.
    phases.push(
        measured_phase(
            &d,
            "create",
            (n, batch),
            n as u64,
            &mut failed,
            Workload::create,
        )
        .await,
    );
    let rss_live = rss_bytes();
    let heap_live = LIVE_BYTES.load(Relaxed);
    eprintln!(
        "[{}] {n} live battles: RSS +{} MiB, heap +{} MiB",
        d.name(),
        (rss_live.saturating_sub(rss_before)) >> 20,
        (heap_live - heap_before) >> 20
    );

    // Phase 2a: the callee accepts — the response timer is cancelled, the end timer armed.
    advance(RESPONSE_AT).await;
    phases.push(
        measured_phase(
            &d,
            "response",
            (n, batch),
            2 * n as u64,
            &mut failed,
            Workload::response,
        )
        .await,
    );

    // Phase 2b: the Start webhook refines the end — re-armed again.
    advance(START_AT - RESPONSE_AT).await;
    phases.push(
        measured_phase(
            &d,
            "start",
            (n, batch),
            3 * n as u64,
            &mut failed,
            Workload::started,
        )
        .await,
    );

    // Phase 3: virtual time moves in steps; every end timer fires at its `ends_at`.
    let last = (START_AT + MAX_DURATION_MS as i64) / STEP_MS + 1;
    let mut due = vec![0u64; last as usize + 1];
    for i in 0..n {
        let step = (Workload::end_offset(i) + STEP_MS - 1) / STEP_MS;
        due[step as usize] += 1;
    }
    for k in 1..due.len() {
        due[k] += due[k - 1];
    }
    let c0 = d.count();
    let mut meter = Meter::default();
    meter
        .measure(async {
            for (k, due_by_now) in due
                .iter()
                .enumerate()
                .skip((START_AT / STEP_MS) as usize + 1)
            {
                advance(STEP_MS).await;
                debug_assert_eq!(d.now_ms(), T0 + k as i64 * STEP_MS);
                wait_until(|| d.ended() >= *due_by_now, "end timers").await;
            }
            // The naive tasks re-arm (retention) after firing: let them.
            d.settle(4 * n as u64).await;
        })
        .await;
    phases.push(Phase {
        name: "timers fire",
        events: n as u64,
        meter,
        delta: sub(d.count(), c0),
    });

    // Phase 4: End webhooks complete the records.
    let now = d.now_ms();
    phases.push(
        measured_phase(&d, "end", (n, batch), 4 * n as u64, &mut failed, |i| {
            Workload::ended(i, now)
        })
        .await,
    );

    let (ok, held) = d.check(n);
    let extra = match &d {
        Design::Engine(e) | Design::EngineSingle(e) => {
            let m = e.metrics().snapshot();
            let end_timer = m
                .changes_by_cause
                .iter()
                .find(|(c, _)| *c == Cause::EndTimer)
                .map_or(0, |(_, v)| *v);
            format!(
                " end_timer_changes={end_timer} metrics_ended={}",
                m.battles_by_state[3]
            )
        }
        Design::Naive(_) => String::new(),
    };
    for p in &phases {
        let (wall, cpu) = (p.meter.wall.as_secs_f64(), p.meter.cpu.as_secs_f64());
        eprintln!(
            "[{}] {:<12} {:>9} in {wall:>7.3} s wall, {cpu:>7.3} s CPU = {:>9.0}/CPU-s; armed {:>8} cancelled {:>8} fired {:>8}; {:.1} allocs/event",
            d.name(),
            p.name,
            p.events,
            p.events as f64 / cpu,
            p.delta.armed,
            p.delta.cancelled,
            p.delta.fired,
            p.meter.allocs as f64 / p.events as f64
        );
        println!(
            "phase design={} name={} events={} wall={wall} cpu={cpu} armed={} cancelled={} fired={} allocs={}",
            d.name(),
            p.name.replace(' ', "_"),
            p.events,
            p.delta.armed,
            p.delta.cancelled,
            p.delta.fired,
            p.meter.allocs
        );
    }
    let total = d.count();
    println!(
        "result design={} battles={n} batch={batch} rss_before={rss_before} rss_live={rss_live} \
         heap_before={heap_before} heap_live={heap_live} hwm={} failed={failed} ok={ok} held={held} \
         events={} armed={} cancelled={} fired={} ended={}{extra}",
        d.name(),
        proc_status_kb("VmHWM:") * 1024,
        total.events,
        total.armed,
        total.cancelled,
        total.fired,
        total.ended,
    );
    // Skip tearing down a million battles.
    std::process::exit(0);
}

/// The floor: the battle records alone, as the pure core builds them on Create, in a `Vec`
/// (no map, no index, no timer).
fn run_records(cfg: &Config) {
    let n = cfg.battles;
    let rules = Rules::default();
    let rss_before = rss_bytes();
    let heap_before = LIVE_BYTES.load(Relaxed);
    let mut records: Vec<Battle> = Vec::with_capacity(n);
    for i in 0..n {
        if let Ok((Some(b), _)) = apply_event(None, &Workload::create(i), T0, &rules) {
            records.push(b);
        }
    }
    let (rss_live, heap_live) = (rss_bytes(), LIVE_BYTES.load(Relaxed));
    println!(
        "result design=records battles={} rss_before={rss_before} rss_live={rss_live} \
         heap_before={heap_before} heap_live={heap_live} battle_size={}",
        records.len(),
        std::mem::size_of::<Battle>()
    );
    std::process::exit(0);
}

fn child(design: &str, cfg: &Config) {
    if design == "records" {
        run_records(cfg);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run_design(design, cfg));
}

// ---------------------------------------------------------------------------------------------
// The parent: run each design in its own process, print the table
// ---------------------------------------------------------------------------------------------

type Fields = HashMap<String, String>;

fn parse_line(line: &str) -> (String, Fields) {
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or("").to_string();
    let fields = parts
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (kind, fields)
}

/// A figure read from one design's run.
type Figure = fn(&Run) -> f64;

struct Run {
    result: Fields,
    phases: Vec<Fields>,
}

impl Run {
    fn num(&self, k: &str) -> f64 {
        self.result
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
    fn battles(&self) -> f64 {
        self.num("battles")
    }
    fn phase(&self, name: &str) -> Option<&Fields> {
        self.phases
            .iter()
            .find(|p| p.get("name").map(String::as_str) == Some(name))
    }
    fn phase_num(&self, name: &str, k: &str) -> f64 {
        self.phase(name)
            .and_then(|p| p.get(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
    fn sum(&self, k: &str) -> f64 {
        self.phases
            .iter()
            .filter_map(|p| p.get(k).and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
    /// Lifecycle steps (input events plus timer firings) per CPU-second of the design's one
    /// thread: the throughput of one core, however busy the rest of the machine is.
    fn events_per_s(&self) -> f64 {
        self.sum("events") / self.sum("cpu")
    }
    /// The same per wall-clock second (lower when other processes took the core).
    fn events_per_wall_s(&self) -> f64 {
        self.sum("events") / self.sum("wall")
    }
    fn phase_rate(&self, name: &str) -> f64 {
        self.phase_num(name, "events") / self.phase_num(name, "cpu")
    }
    fn armed_per_s(&self) -> f64 {
        self.sum("armed") / self.sum("cpu")
    }
    fn cancelled_per_s(&self) -> f64 {
        self.sum("cancelled") / self.sum("cpu")
    }
    fn rss_per_battle(&self) -> f64 {
        (self.num("rss_live") - self.num("rss_before")) / self.battles()
    }
    fn heap_per_battle(&self) -> f64 {
        (self.num("heap_live") - self.num("heap_before")) / self.battles()
    }
    fn correct(&self) -> bool {
        let n = self.battles();
        self.num("failed") == 0.0
            && self.num("ok") == n
            && self.num("held") == n
            && self.num("ended") == n
            && self.num("fired") == n
    }
}

fn run_child(design: &str, cfg: &Config) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(design)
        .args(cfg.to_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out).map_err(|e| e.to_string())?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{design}: child exited with {status}"));
    }
    let mut run = Run {
        result: Fields::new(),
        phases: Vec::new(),
    };
    for line in out.lines() {
        println!("  {line}");
        match parse_line(line) {
            (k, f) if k == "result" => run.result = f,
            (k, f) if k == "phase" => run.phases.push(f),
            _ => {}
        }
    }
    if run.result.is_empty() {
        return Err(format!("{design}: no result"));
    }
    Ok(run)
}

fn si(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {cpu}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn parent(cfg: &Config) -> i32 {
    println!(
        "livebattle engine lifecycle benchmark: {} battles (engine-single: {}), batches of {}{}",
        cfg.battles,
        cfg.single,
        cfg.batch,
        if cfg.smoke { " [smoke]" } else { "" }
    );
    println!(
        "machine: {}; one core per design (current-thread runtime, paused time); load average {}",
        machine(),
        loadavg()
    );
    let mut runs = HashMap::new();
    for design in ["engine", "naive", "engine-single"] {
        match run_child(design, cfg) {
            Ok(r) => {
                runs.insert(design, r);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    let (e, nv, s) = (&runs["engine"], &runs["naive"], &runs["engine-single"]);
    let floor = run_child("records", cfg).ok();

    println!();
    println!(
        "{:<40} {:>14} {:>14} {:>9} {:>16}",
        "per CPU-second of the design's one thread", "engine", "naive", "ratio", "engine-single"
    );
    println!("{}", "-".repeat(97));
    let row = |label: &str, a: f64, b: f64, c: f64, higher_better: bool| {
        let ratio = if higher_better { a / b } else { b / a };
        println!(
            "{label:<40} {:>14} {:>14} {:>8.2}x {:>16}",
            si(a),
            si(b),
            ratio,
            si(c)
        );
    };
    row("battles", e.battles(), nv.battles(), s.battles(), true);
    let row_r = |label: &str, f: &dyn Fn(&Run) -> f64, hb: bool| row(label, f(e), f(nv), f(s), hb);
    row_r("lifecycle events/s (overall)", &|r| r.events_per_s(), true);
    for (label, phase) in [
        ("  1 create (arm)", "create"),
        ("  2a response (cancel + arm)", "response"),
        ("  2b start (cancel + arm)", "start"),
        ("  3 end timers fired/s", "timers_fire"),
        ("  4 end webhook", "end"),
    ] {
        row_r(label, &|r| r.phase_rate(phase), true);
    }
    row_r("timers armed/s (overall)", &|r| r.armed_per_s(), true);
    row_r(
        "timers cancelled/s (overall)",
        &|r| r.cancelled_per_s(),
        true,
    );
    row_r(
        "timer re-arms/s (phase 2)",
        &|r| {
            (r.phase_num("response", "cancelled") + r.phase_num("start", "cancelled"))
                / (r.phase_num("response", "cpu") + r.phase_num("start", "cpu"))
        },
        true,
    );
    row_r("resident bytes/live battle", &|r| r.rss_per_battle(), false);
    row_r("heap bytes/live battle", &|r| r.heap_per_battle(), false);
    row_r(
        "allocations/event (overall)",
        &|r| r.sum("allocs") / r.sum("events"),
        false,
    );
    row_r("measured CPU seconds", &|r| r.sum("cpu"), false);
    row_r("measured wall seconds", &|r| r.sum("wall"), false);
    row_r(
        "lifecycle events/wall-s (overall)",
        &|r| r.events_per_wall_s(),
        true,
    );
    println!("{}", "-".repeat(97));
    if let Some(f) = &floor {
        println!(
            "floor: the Battle records alone (pure core, Vec<Battle>, size_of {} B): {:.0} resident / {:.0} heap bytes per battle",
            f.num("battle_size"),
            f.rss_per_battle(),
            f.heap_per_battle()
        );
    }
    println!(
        "lifecycle events = Create + Response + Start + End + end-timer firing (5 per battle);"
    );
    println!("ratio = how many times better the engine is than the naive design (same battles).");
    println!();

    let mut ok = true;
    for (name, r) in [("engine", e), ("naive", nv), ("engine-single", s)] {
        let good = r.correct();
        ok &= good;
        println!(
            "correctness {name:<14} {}: {} of {} battles ended time_up with End applied, {} timers fired, {} failed events",
            if good { "ok  " } else { "FAIL" },
            r.num("ok"),
            r.battles(),
            r.num("fired"),
            r.num("failed"),
        );
    }
    println!();
    let target = |label: &str, met: bool, detail: String| {
        println!(
            "target {label:<46} {} ({detail})",
            if met { "MET " } else { "MISS" }
        );
    };
    target(
        ">= 1,000,000 events/s on one core",
        e.events_per_s() >= 1e6,
        format!("{} events/s", si(e.events_per_s())),
    );
    target(
        "<= 512 bytes per live battle (RSS)",
        e.rss_per_battle() <= 512.0,
        format!("{:.0} bytes", e.rss_per_battle()),
    );
    let better: [(&str, Figure, bool); 4] = [
        ("events/s", Run::events_per_s, true),
        ("timers armed/s", Run::armed_per_s, true),
        ("timers cancelled/s", Run::cancelled_per_s, true),
        ("bytes per live battle", Run::rss_per_battle, false),
    ];
    for (label, f, higher_better) in better {
        let ratio = if higher_better {
            f(e) / f(nv)
        } else {
            f(nv) / f(e)
        };
        target(
            &format!(">= 3x naive: {label}"),
            ratio >= 3.0,
            format!("{ratio:.2}x"),
        );
    }
    println!("load average after the run: {}", loadavg());
    if cfg.smoke {
        println!("(smoke run: figures are not representative; targets apply to the full run)");
    }
    if ok {
        0
    } else {
        1
    }
}

fn main() {
    // `cargo bench` passes `--bench`; unknown arguments are ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = Config::from_args(&args);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let design = args.get(i + 1).map_or("engine", String::as_str);
        child(design, &cfg);
        return;
    }
    std::process::exit(parent(&cfg));
}
