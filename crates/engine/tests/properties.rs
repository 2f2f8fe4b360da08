//! Properties of the pure core over random event sequences and time advances, with no runtime:
//! a tiny deterministic driver plays the shell (it even keeps every stale timer it ever armed).

use std::collections::HashMap;

use livebattle_engine::transition::{apply_event, apply_timer, Change, Rules};
use livebattle_engine::{
    Battle, Created, Ended, Event, RoomDestroyed, RoomInfo, Started, State, Timer,
};
use proptest::prelude::*;

const T0: i64 = 1_739_954_005_000;
const IDS: [&str; 3] = ["a", "b", "c"];
const ROOMS: [&str; 3] = ["r1", "r2", "r3"];

#[derive(Clone, Debug)]
enum Op {
    Event(Event),
    Advance(i64),
}

fn room_info(i: usize) -> RoomInfo {
    RoomInfo {
        room_id: ROOMS[i].into(),
        owner_account: Some(format!("owner{i}")),
        score: Some(i as i64),
    }
}

fn event() -> impl Strategy<Value = Event> {
    let id = (0..IDS.len()).prop_map(|i| IDS[i].to_string());
    let t = -70_000i64..70_000;
    prop_oneof![
        (
            id.clone(),
            any::<bool>(),
            t.clone(),
            0u64..20_000,
            1u64..90_000
        )
            .prop_map(
                |(battle_id, need, dt, timeout, dur)| Event::Created(Created {
                    battle_id,
                    operator: Some("op".into()),
                    from_room: Some("r1".into()),
                    to_rooms: vec!["r2".into(), "r3".into()],
                    timeout_ms: Some(timeout),
                    duration_ms: Some(dur),
                    need_response: Some(need),
                    extension_info: None,
                    event_time_ms: Some(T0 + dt),
                })
            ),
        (id.clone(), t.clone(), 1u64..90_000).prop_map(|(battle_id, dt, dur)| {
            Event::Started(Started {
                battle_id,
                duration_ms: Some(dur),
                create_time_s: Some(T0 / 1000),
                start_time_s: Some((T0 + dt).div_euclid(1000)),
                from_room: Some(room_info(0)),
                to_rooms: vec![room_info(1)],
                event_time_ms: Some(T0 + dt),
            })
        }),
        (id.clone(), t.clone(), 0i64..5).prop_map(|(battle_id, dt, op)| Event::Ended(Ended {
            battle_id,
            duration_ms: Some(60_000),
            create_time_s: Some(T0 / 1000),
            start_time_s: Some(T0 / 1000),
            end_time_s: Some((T0 + dt).div_euclid(1000)),
            op_type: Some(op),
            from_room: Some(room_info(0)),
            to_rooms: vec![room_info(1), room_info(2)],
            event_time_ms: Some(T0 + dt),
        })),
        (id.clone(), 0..ROOMS.len(), any::<bool>()).prop_map(|(battle_id, r, accept)| {
            Event::Response {
                battle_id,
                room_id: ROOMS[r].into(),
                accept,
            }
        }),
        (id.clone(), 0..ROOMS.len()).prop_map(|(battle_id, r)| Event::RoomExited {
            battle_id,
            room_id: ROOMS[r].into(),
        }),
        id.clone().prop_map(|battle_id| Event::EndNow { battle_id }),
        (id, 0..ROOMS.len(), -5i64..50).prop_map(|(battle_id, r, s)| Event::Scores {
            battle_id,
            scores: vec![(ROOMS[r].into(), s)],
        }),
        (0..ROOMS.len()).prop_map(|r| Event::RoomDestroyed(RoomDestroyed {
            room_id: ROOMS[r].into(),
            event_time_ms: None,
        })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => event().prop_map(Op::Event),
        1 => (0i64..40_000).prop_map(Op::Advance),
    ]
}

fn is_into_ended(c: Change) -> bool {
    matches!(
        c,
        Change::New(State::Ended)
            | Change::Transition {
                to: State::Ended,
                ..
            }
    )
}

#[derive(Default)]
struct World {
    now: i64,
    battles: HashMap<String, Battle>,
    evicted: Vec<String>,
    /// Every timer ever armed, stale ones included (a worst-case shell that never cancels).
    armed: Vec<(String, Timer)>,
    into_ended: HashMap<String, u32>,
}

impl World {
    fn check_step(&mut self, id: &str, before: Option<&Battle>, change: Change) {
        let after = &self.battles[id];
        if let Some(b) = before {
            if b.state == State::Ended {
                assert_eq!(after.state, State::Ended, "{id} left ended");
            }
            if change.notifies() {
                assert_eq!(
                    after.version,
                    b.version + 1,
                    "{id}: version must step by one"
                );
            } else {
                assert_eq!(
                    after.version, b.version,
                    "{id}: silent change moved version"
                );
            }
        }
        if is_into_ended(change) {
            *self.into_ended.entry(id.to_string()).or_default() += 1;
        }
        assert!(
            self.into_ended.get(id).copied().unwrap_or(0) <= 1,
            "{id} ended twice"
        );
        if after.state == State::Ended {
            assert_eq!(
                self.into_ended.get(id).copied(),
                Some(1),
                "{id} ended silently"
            );
        }
        if let Some(t) = after.timer {
            self.armed.push((id.to_string(), t));
        }
    }

    fn apply(&mut self, ev: &Event, rules: &Rules) {
        let id = match ev {
            Event::RoomDestroyed(d) => {
                // The shell's room index: the live battle the room is in.
                match self.battles.iter().find(|(_, b)| {
                    b.state != State::Ended && b.rooms().contains(&d.room_id.as_str())
                }) {
                    Some((id, _)) => id.clone(),
                    None => return,
                }
            }
            other => other.battle_id().unwrap_or_default().to_string(),
        };
        if self.evicted.contains(&id) {
            return;
        }
        let before = self.battles.get(&id).cloned();
        let result = apply_event(self.battles.get_mut(&id), ev, self.now, rules);
        let Ok((new, fx)) = result else {
            assert_eq!(
                self.battles.get(&id),
                before.as_ref(),
                "a refusal changed the battle"
            );
            return;
        };
        if let Some(b) = new {
            self.battles.insert(id.clone(), b);
        }
        if !self.battles.contains_key(&id) {
            return;
        }
        self.check_step(&id, before.as_ref(), fx.change);
        // Duplicates change nothing.
        if matches!(ev, Event::Created(_) | Event::Started(_) | Event::Ended(_)) {
            let snapshot = self.battles[&id].clone();
            let again = apply_event(self.battles.get_mut(&id), ev, self.now, rules);
            let Ok((_, fx2)) = again else {
                panic!("a duplicate webhook was refused");
            };
            assert_eq!(fx2.change, Change::Duplicate);
            assert_eq!(
                self.battles[&id], snapshot,
                "a duplicate changed the battle"
            );
        }
    }

    fn advance(&mut self, by: i64, rules: &Rules) {
        let target = self.now + by;
        loop {
            // The earliest due timer (stale or not), in deadline order.
            let next = self
                .armed
                .iter()
                .enumerate()
                .filter(|(_, (_, t))| t.at_ms <= target)
                .min_by_key(|(_, (_, t))| t.at_ms)
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let (id, timer) = self.armed.swap_remove(i);
            self.now = self.now.max(timer.at_ms);
            let Some(b) = self.battles.get_mut(&id) else {
                continue;
            };
            let before = b.clone();
            let stale = before.timer != Some(timer);
            let fx = apply_timer(b, timer, self.now, rules);
            if stale {
                assert_eq!(fx.change, Change::None, "a stale timer acted");
                assert_eq!(
                    self.battles[&id], before,
                    "a stale timer changed the battle"
                );
                continue;
            }
            if fx.change == Change::Evict {
                self.battles.remove(&id);
                self.evicted.push(id);
                continue;
            }
            self.check_step(&id, Some(&before), fx.change);
        }
        self.now = target;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_invariants_hold(ops in prop::collection::vec(op(), 1..60)) {
        let rules = Rules { retention_ms: 30_000, ..Rules::default() };
        let mut w = World { now: T0, ..World::default() };
        for op in &ops {
            match op {
                Op::Event(ev) => w.apply(ev, &rules),
                Op::Advance(ms) => w.advance(*ms, &rules),
            }
        }
        // Run every remaining timer out: every battle ends (or is evicted) exactly once.
        w.advance(10 * 24 * 3_600_000, &rules);
        for (id, b) in &w.battles {
            prop_assert_eq!(b.state, State::Ended, "{} never ended", id);
        }
    }
}
