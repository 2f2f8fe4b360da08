//! What one simulated battle sends, when, and how it must end. Pure: a seeded PRNG and a start
//! time in, a schedule of webhook deliveries and the expected `end_reason` out.

use serde_json::{json, Value};

use crate::args::Mix;
use crate::tencent::{self, Create, End, Origin, Room, Start};

/// How a battle plays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// `NeedResponse=false`: Start at once, End `OpType 0` when time is up.
    Instant,
    /// `NeedResponse=true`: a callee accepts (Start), End `OpType 0` when time is up.
    Accepted,
    /// `NeedResponse=true`: nobody accepts; End `OpType 2`.
    NotStarted,
    /// `NeedResponse=true`: nobody accepts and no End ever comes; the server's response timer
    /// must end it.
    Silent,
    /// Started, then every host left early: End `OpType 1`.
    Exit,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 5] = [
        Scenario::Instant,
        Scenario::Accepted,
        Scenario::NotStarted,
        Scenario::Silent,
        Scenario::Exit,
    ];

    /// The name used by `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Instant => "instant",
            Scenario::Accepted => "accepted",
            Scenario::NotStarted => "not-started",
            Scenario::Silent => "silent",
            Scenario::Exit => "exit",
        }
    }

    /// Parses a `--mix` name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s)
    }
}

/// Which webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Live.CallbackAfterCreateBattle`.
    Create,
    /// `Live.CallbackAfterStartBattle`.
    Start,
    /// `Live.CallbackAfterEndBattle`.
    End,
}

impl Kind {
    /// The `CallbackCommand`.
    pub fn command(self) -> &'static str {
        match self {
            Kind::Create => tencent::CREATE,
            Kind::Start => tencent::START,
            Kind::End => tencent::END,
        }
    }
}

/// One HTTP delivery of one webhook.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When to send it (Unix ms, wall clock).
    pub at_ms: i64,
    /// Which webhook.
    pub kind: Kind,
    /// The JSON body, rendered once (a battle's plan lives until it settles: at thousands of
    /// battles per second that is hundreds of thousands of plans, and a `Value` is a tree of
    /// allocations).
    pub body: Box<str>,
    /// A second delivery of a webhook already scheduled.
    pub duplicate: bool,
}

impl Delivery {
    /// The body as JSON (tests look inside).
    #[cfg(test)]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a rendered JSON body")
    }
}

/// Deviations from a tidy, in-order, exactly-once delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quirk {
    /// Start delivered before Create (both carry the same `EventTime`).
    StartBeforeCreate,
    /// Create delivered after Start.
    CreateAfterStart,
    /// Start delivered after End.
    StartAfterEnd,
    /// Create delivered after End.
    CreateAfterEnd,
    /// Some webhook delivered twice.
    Duplicate,
    /// A time-up battle's End never delivered.
    EndLost,
    /// All scores equal at the end.
    Draw,
    /// Two callees invited.
    TwoCallees,
}

impl Quirk {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Quirk::StartBeforeCreate => "start-before-create",
            Quirk::CreateAfterStart => "create-after-start",
            Quirk::StartAfterEnd => "start-after-end",
            Quirk::CreateAfterEnd => "create-after-end",
            Quirk::Duplicate => "duplicate",
            Quirk::EndLost => "end-lost",
            Quirk::Draw => "draw",
            Quirk::TwoCallees => "two-callees",
        }
    }
}

/// Scenario-generation settings (see the flags of the same names).
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub mix: Mix,
    pub duration_ms: (u64, u64),
    pub timeout_ms: (u64, u64),
    pub response_grace_ms: u64,
    pub dup_ratio: f64,
    pub reorder_ratio: f64,
    pub end_loss_ratio: f64,
    pub numeric_owner_ratio: f64,
}

/// One simulated battle.
#[derive(Clone, Debug)]
pub struct BattlePlan {
    /// `BattleId`.
    pub id: String,
    /// How it plays out.
    pub scenario: Scenario,
    /// The `end_reason` the server must end up with.
    pub expected: &'static str,
    /// The deliveries, in sending order.
    pub deliveries: Vec<Delivery>,
    /// From when (Unix ms) the battle must show its final state.
    pub settle_at_ms: i64,
    /// What is unusual about it.
    pub quirks: Vec<Quirk>,
    /// `ClientIP` and `OptPlatform` of its callbacks.
    pub origin: Origin,
}

/// Plans one battle created at `t0_ms` (Unix ms).
pub fn plan(rng: &mut fastrand::Rng, t0_ms: i64, cfg: &PlanConfig) -> BattlePlan {
    let scenario = cfg.mix.pick(rng);
    let id = tencent::battle_id(rng);
    let duration = rng.u64(cfg.duration_ms.0..=cfg.duration_ms.1);
    let timeout = rng.u64(cfg.timeout_ms.0..=cfg.timeout_ms.1);
    let mut quirks = Vec::new();

    let from = room(rng, cfg, None);
    let mut to = vec![room(rng, cfg, Some(&from.room_id))];
    if rng.u8(0..5) == 0 {
        let other = room(rng, cfg, Some(&from.room_id));
        if other.room_id != to[0].room_id {
            to.push(other);
            quirks.push(Quirk::TwoCallees);
        }
    }
    let to_ids: Vec<String> = to.iter().map(|r| r.room_id.clone()).collect();
    let operator = match &from.owner {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let need_response = match scenario {
        Scenario::Instant => false,
        Scenario::Accepted | Scenario::NotStarted | Scenario::Silent => true,
        Scenario::Exit => rng.bool(),
    };
    let reorder = rng.f64() < cfg.reorder_ratio;
    let extension = format!("simulate {}", scenario.name());
    let create_s = t0_ms.div_euclid(1000);
    let create = Create {
        battle_id: &id,
        operator: &operator,
        from_room: &from.room_id,
        to_rooms: &to_ids,
        timeout_ms: timeout,
        duration_ms: duration,
        need_response,
        extension_info: &extension,
        event_time_ms: t0_ms,
    }
    .to_json();

    let mut deliveries = Vec::new();
    let mut push = |at_ms: i64, kind: Kind, body: &Value| {
        deliveries.push(Delivery {
            at_ms,
            kind,
            body: body.to_string().into(),
            duplicate: false,
        })
    };
    let (expected, settle_at_ms) = match scenario {
        Scenario::Instant | Scenario::Accepted | Scenario::Exit => {
            let start_at = if need_response {
                t0_ms + frac(rng, timeout, 0.1, 0.8)
            } else {
                t0_ms
            };
            // With two callees, sometimes only one of them accepted.
            let mut players = to.clone();
            if need_response && players.len() > 1 && rng.bool() {
                players.truncate(1);
            }
            let mut host = from.clone();
            let draw = score(rng, &mut host, &mut players);
            if draw {
                quirks.push(Quirk::Draw);
            }
            let start = Start {
                battle_id: &id,
                duration_ms: duration,
                create_time_s: create_s,
                start_time_s: start_at.div_euclid(1000),
                from: &from,
                to: &players,
                event_time_ms: start_at,
            };
            let exit = scenario == Scenario::Exit;
            let (end_at, end_send) = if exit {
                let at = start_at + frac(rng, duration, 0.2, 0.7);
                (at, at + rng.i64(0..=50))
            } else {
                // Tencent's End comes a little after EndTime.
                let at = start_at + duration as i64;
                (at, at + rng.i64(50..=400))
            };
            let end = End {
                common: Start {
                    from: &host,
                    event_time_ms: end_send,
                    ..start.clone()
                },
                end_time_s: end_at.div_euclid(1000),
                op_type: if exit { 1 } else { 0 },
            }
            .to_json();
            let end_lost = !exit && rng.f64() < cfg.end_loss_ratio;

            let (mut create_send, mut start_send) = (t0_ms, start_at);
            if !need_response {
                start_send = t0_ms + rng.i64(0..=30);
            }
            if reorder {
                if !need_response {
                    start_send = t0_ms;
                    create_send = t0_ms + rng.i64(5..=60);
                    quirks.push(Quirk::StartBeforeCreate);
                } else if exit {
                    start_send = end_send + rng.i64(5..=100);
                    quirks.push(Quirk::StartAfterEnd);
                } else {
                    create_send = start_at + rng.i64(5..=60);
                    quirks.push(Quirk::CreateAfterStart);
                }
            }
            push(create_send, Kind::Create, &create);
            push(start_send, Kind::Start, &start.to_json());
            if end_lost {
                quirks.push(Quirk::EndLost);
            } else {
                push(end_send, Kind::End, &end);
            }
            let expected = if exit { "all_exited" } else { "time_up" };
            let settle = if end_lost {
                end_at + 1_000
            } else {
                create_send.max(start_send).max(end_send) + 200
            };
            (expected, settle)
        }
        Scenario::NotStarted => {
            let end_at = t0_ms + timeout as i64;
            let end_send = end_at + rng.i64(0..=300);
            // What StartTime holds when OpType is 2 is undocumented: send either guess.
            let start_time_s = if rng.bool() { 0 } else { create_s };
            let mut host = from.clone();
            host.score = 0;
            let callees: Vec<Room> = to
                .iter()
                .cloned()
                .map(|mut r| {
                    r.score = 0;
                    r
                })
                .collect();
            let end = End {
                common: Start {
                    battle_id: &id,
                    duration_ms: duration,
                    create_time_s: create_s,
                    start_time_s,
                    from: &host,
                    to: &callees,
                    event_time_ms: end_send,
                },
                end_time_s: end_at.div_euclid(1000),
                op_type: 2,
            }
            .to_json();
            let create_send = if reorder {
                quirks.push(Quirk::CreateAfterEnd);
                end_send + rng.i64(5..=100)
            } else {
                t0_ms
            };
            push(create_send, Kind::Create, &create);
            push(end_send, Kind::End, &end);
            ("not_started", create_send.max(end_send) + 200)
        }
        Scenario::Silent => {
            push(t0_ms, Kind::Create, &create);
            let settle = t0_ms + timeout as i64 + cfg.response_grace_ms as i64 + 1_000;
            ("response_timeout", settle)
        }
    };

    let mut copies = Vec::new();
    for d in &deliveries {
        if rng.f64() < cfg.dup_ratio {
            copies.push(Delivery {
                at_ms: d.at_ms + rng.i64(0..=250),
                duplicate: true,
                ..d.clone()
            });
        }
    }
    if !copies.is_empty() {
        quirks.push(Quirk::Duplicate);
    }
    deliveries.extend(copies);
    deliveries.sort_by_key(|d| d.at_ms);
    let settle_at_ms = deliveries
        .iter()
        .map(|d| d.at_ms + 200)
        .fold(settle_at_ms, i64::max);

    let origin = Origin {
        client_ip: format!("203.0.113.{}", rng.u8(1..=254)),
        platform: tencent::PLATFORMS[rng.usize(..tencent::PLATFORMS.len())],
    };
    BattlePlan {
        id,
        scenario,
        expected,
        deliveries,
        settle_at_ms,
        quirks,
        origin,
    }
}

/// A random point between `lo` and `hi` of `whole` ms.
fn frac(rng: &mut fastrand::Rng, whole: u64, lo: f64, hi: f64) -> i64 {
    ((whole as f64) * (lo + (hi - lo) * rng.f64())) as i64
}

/// A room with an owner; never `avoid`.
fn room(rng: &mut fastrand::Rng, cfg: &PlanConfig, avoid: Option<&str>) -> Room {
    loop {
        let n = rng.u32(1..100_000);
        let room_id = format!("pk-{n}");
        if avoid == Some(room_id.as_str()) {
            continue;
        }
        let owner = if rng.f64() < cfg.numeric_owner_ratio {
            // Tencent's End sample: an 18-digit integer beyond 2^53.
            json!(144_115_245_000_000_000u64 + rng.u64(0..1_000_000_000))
        } else {
            json!(format!("anchor_{n}"))
        };
        return Room {
            room_id,
            owner,
            score: 0,
        };
    }
}

/// Final scores; sometimes a draw (returns whether it is one).
fn score(rng: &mut fastrand::Rng, host: &mut Room, players: &mut [Room]) -> bool {
    if rng.u8(0..7) == 0 {
        let s = rng.i64(0..=300);
        host.score = s;
        players.iter_mut().for_each(|p| p.score = s);
        return true;
    }
    host.score = rng.i64(0..=500);
    players.iter_mut().for_each(|p| p.score = rng.i64(0..=500));
    players.iter().all(|p| p.score == host.score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mix: &str) -> PlanConfig {
        PlanConfig {
            mix: mix.parse().unwrap(),
            duration_ms: (1_000, 3_000),
            timeout_ms: (1_000, 2_000),
            response_grace_ms: 3_000,
            dup_ratio: 0.3,
            reorder_ratio: 0.3,
            end_loss_ratio: 0.2,
            numeric_owner_ratio: 0.5,
        }
    }

    const T0: i64 = 1_739_954_005_123;

    fn kinds(p: &BattlePlan) -> Vec<Kind> {
        let mut k: Vec<Kind> = p
            .deliveries
            .iter()
            .filter(|d| !d.duplicate)
            .map(|d| d.kind)
            .collect();
        k.sort_by_key(|k| *k as u8);
        k
    }

    #[test]
    fn every_scenario_has_its_webhooks_and_expected_reason() {
        let mut rng = fastrand::Rng::with_seed(42);
        for (mix, expected) in [
            ("instant=1", "time_up"),
            ("accepted=1", "time_up"),
            ("not-started=1", "not_started"),
            ("silent=1", "response_timeout"),
            ("exit=1", "all_exited"),
        ] {
            for _ in 0..50 {
                let p = plan(&mut rng, T0, &cfg(mix));
                assert_eq!(p.expected, expected, "{mix}");
                let k = kinds(&p);
                let end_lost = p.quirks.contains(&Quirk::EndLost);
                match p.scenario {
                    Scenario::Instant | Scenario::Accepted | Scenario::Exit if end_lost => {
                        assert_eq!(k, [Kind::Create, Kind::Start])
                    }
                    Scenario::Instant | Scenario::Accepted | Scenario::Exit => {
                        assert_eq!(k, [Kind::Create, Kind::Start, Kind::End])
                    }
                    Scenario::NotStarted => assert_eq!(k, [Kind::Create, Kind::End]),
                    Scenario::Silent => assert_eq!(k, [Kind::Create]),
                }
                assert!(p.deliveries.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
                assert!(p.deliveries.iter().all(|d| d.at_ms < p.settle_at_ms));
                for d in &p.deliveries {
                    let body = d.json();
                    assert_eq!(body["CallbackCommand"], d.kind.command());
                    assert_eq!(body["BattleId"], p.id.as_str());
                    // Never stamped later than it is sent (the server clamps future times).
                    assert!(body["EventTime"].as_i64().unwrap() <= d.at_ms);
                }
            }
        }
    }

    #[test]
    fn units_follow_tencent() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            let p = plan(
                &mut rng,
                T0,
                &cfg("instant=1,accepted=1,exit=1,not-started=1"),
            );
            for d in &p.deliveries {
                let b = &d.json();
                let ms = b["EventTime"].as_i64().unwrap();
                assert!(ms >= T0, "EventTime is ms");
                match d.kind {
                    Kind::Create => {
                        assert_eq!(ms, T0);
                        let dur = b["Duration"].as_u64().unwrap();
                        assert!((1_000..=3_000).contains(&dur), "Duration is ms");
                        let t = b["Timeout"].as_u64().unwrap();
                        assert!((1_000..=2_000).contains(&t), "Timeout is ms");
                    }
                    Kind::Start | Kind::End => {
                        assert_eq!(b["CreateTime"].as_i64().unwrap(), T0 / 1000);
                        let st = b["StartTime"].as_i64().unwrap();
                        assert!(st == 0 || (T0 / 1000..T0 / 1000 + 10).contains(&st));
                        if d.kind == Kind::End {
                            let et = b["EndTime"].as_i64().unwrap();
                            assert!((T0 / 1000..T0 / 1000 + 10).contains(&et), "EndTime is s");
                            let op = b["OpType"].as_i64().unwrap();
                            let want = match p.expected {
                                "time_up" => 0,
                                "all_exited" => 1,
                                _ => 2,
                            };
                            assert_eq!(op, want);
                            assert!(b["FromRoomInfo"]["Score"].is_i64());
                        } else {
                            assert!(b.get("OpType").is_none());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_mix_brings_quirks_and_big_owner_numbers() {
        let mut rng = fastrand::Rng::with_seed(9);
        let c = cfg("instant=1,accepted=1,not-started=1,silent=1,exit=1");
        let plans: Vec<BattlePlan> = (0..300).map(|_| plan(&mut rng, T0, &c)).collect();
        for q in [
            Quirk::StartBeforeCreate,
            Quirk::CreateAfterStart,
            Quirk::StartAfterEnd,
            Quirk::CreateAfterEnd,
            Quirk::Duplicate,
            Quirk::EndLost,
            Quirk::Draw,
            Quirk::TwoCallees,
        ] {
            assert!(plans.iter().any(|p| p.quirks.contains(&q)), "{}", q.name());
        }
        let numeric = plans.iter().flat_map(|p| &p.deliveries).any(|d| {
            d.json()["FromRoomInfo"]["Owner_Account"]
                .as_u64()
                .is_some_and(|n| n > 1 << 53)
        });
        assert!(numeric);
        // Start before Create keeps the shared EventTime.
        let p = plans
            .iter()
            .find(|p| p.quirks.contains(&Quirk::StartBeforeCreate))
            .unwrap();
        let first = p.deliveries.first().unwrap();
        assert_eq!(first.kind, Kind::Start);
        assert_eq!(first.json()["EventTime"].as_i64(), Some(T0));
    }

    #[test]
    fn same_seed_same_battles() {
        let c = cfg("instant=1,silent=1");
        let a = plan(&mut fastrand::Rng::with_seed(5), T0, &c);
        let b = plan(&mut fastrand::Rng::with_seed(5), T0, &c);
        assert_eq!(a.id, b.id);
        assert_eq!(a.deliveries.len(), b.deliveries.len());
    }
}
