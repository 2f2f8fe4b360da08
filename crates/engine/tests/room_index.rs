//! The engine's room index against a brute-force answer, over random event sequences: after
//! every step, the battle a room is in is the live battle naming it that the engine heard of
//! last (ties: the greater id), whatever came before — memberships replaced by Start and End,
//! rooms leaving, battles ending, evicted, and several shards.

use std::collections::HashMap;
use std::sync::Arc;

use livebattle_engine::{
    Created, Ended, Engine, Event, Outcome, RoomInfo, Rules, Started, State, TokioClock,
};
use proptest::prelude::*;

const T0: i64 = 1_739_954_005_000;
const IDS: [&str; 4] = ["a", "b", "c", "d"];
const ROOMS: [&str; 5] = ["r1", "r2", "r3", "r4", "r5"];

#[derive(Clone, Debug)]
enum Op {
    Event(Event),
    Advance(u64),
}

fn rooms() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (0..ROOMS.len(), prop::collection::vec(0..ROOMS.len(), 0..3))
}

fn info(i: usize) -> RoomInfo {
    RoomInfo {
        room_id: ROOMS[i].into(),
        owner_account: None,
        score: None,
    }
}

fn event() -> impl Strategy<Value = Event> {
    let id = (0..IDS.len()).prop_map(|i| IDS[i].to_string());
    let room = (0..ROOMS.len()).prop_map(|i| ROOMS[i].to_string());
    prop_oneof![
        (id.clone(), rooms(), any::<bool>()).prop_map(|(battle_id, (from, to), need)| {
            Event::Created(Created {
                battle_id,
                from_room: Some(ROOMS[from].into()),
                to_rooms: to.iter().map(|&i| ROOMS[i].to_string()).collect(),
                timeout_ms: Some(5_000),
                duration_ms: Some(30_000),
                need_response: Some(need),
                event_time_ms: Some(T0),
                ..Default::default()
            })
        }),
        (id.clone(), rooms()).prop_map(|(battle_id, (from, to))| {
            Event::Started(Started {
                battle_id,
                duration_ms: Some(30_000),
                start_time_s: Some(T0 / 1000),
                from_room: Some(info(from)),
                to_rooms: to.into_iter().map(info).collect(),
                ..Default::default()
            })
        }),
        (id.clone(), rooms()).prop_map(|(battle_id, (from, to))| {
            Event::Ended(Ended {
                battle_id,
                op_type: Some(0),
                from_room: Some(info(from)),
                to_rooms: to.into_iter().map(info).collect(),
                ..Default::default()
            })
        }),
        (id.clone(), room.clone(), any::<bool>()).prop_map(|(battle_id, room_id, accept)| {
            Event::Response {
                battle_id,
                room_id,
                accept,
            }
        }),
        (id.clone(), room.clone())
            .prop_map(|(battle_id, room_id)| Event::RoomExited { battle_id, room_id }),
        id.prop_map(|battle_id| Event::EndNow { battle_id }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => event().prop_map(Op::Event),
        1 => (1u64..40_000).prop_map(Op::Advance),
    ]
}

/// The live battle naming `room` that was heard of last.
fn expected(engine: &Engine, first_seen: &HashMap<Arc<str>, i64>, room: &str) -> Option<Arc<str>> {
    engine
        .battles(None, None, None, usize::MAX)
        .into_iter()
        .filter(|b| b.state != State::Ended)
        .filter(|b| {
            b.from_room.as_deref() == Some(room)
                || b.to_rooms.iter().any(|r| &**r == room)
                || b.participants.iter().any(|p| &*p.room_id == room)
        })
        .map(|b| {
            let seen = first_seen.get(&b.battle_id).copied().unwrap_or(i64::MIN);
            (seen, b.battle_id)
        })
        .max()
        .map(|(_, id)| id)
}

async fn run(ops: Vec<Op>, shards: usize) -> Result<(), TestCaseError> {
    let rules = Rules {
        retention_ms: 20_000,
        dedupe_horizon_ms: 20_000,
        ..Rules::default()
    };
    let engine = Engine::builder()
        .shards(shards)
        .rules(rules)
        .clock(TokioClock::starting_at(T0))
        .start()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut first_seen: HashMap<Arc<str>, i64> = HashMap::new();
    for op in ops {
        match op {
            Op::Event(ev) => {
                let id: Option<Arc<str>> = ev.battle_id().map(Arc::from);
                let now = engine.now_ms();
                if let Ok(applied) = engine.apply(ev).await {
                    if let (Outcome::New, Some(id)) = (applied.outcome, id) {
                        first_seen.insert(id, now);
                    }
                }
            }
            Op::Advance(ms) => {
                tokio::time::advance(std::time::Duration::from_millis(ms)).await;
                tokio::task::yield_now().await;
            }
        }
        for room in ROOMS {
            let got = engine.room_battle(room).map(|b| b.battle_id);
            prop_assert_eq!(got, expected(&engine, &first_seen, room), "room {}", room);
        }
    }
    engine.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_room_index_names_the_latest_live_battle_of_each_room(
        ops in prop::collection::vec(op(), 1..50),
        shards in 1usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(ops, shards))?;
    }
}
