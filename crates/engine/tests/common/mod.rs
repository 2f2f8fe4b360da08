//! Test helpers: an engine on a virtual clock, event builders, a recording observer.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use livebattle_engine::{
    BattleSnapshot, Created, Ended, Engine, EngineBuilder, Event, Notification, RoomInfo, Rules,
    Started, TokioClock,
};

/// The Create sample's EventTime.
pub const T0: i64 = 1_739_954_005_000;

pub fn builder() -> EngineBuilder {
    Engine::builder()
        .shards(2)
        .clock(TokioClock::starting_at(T0))
        .rules(Rules::default())
}

pub async fn engine() -> Engine {
    builder().start().await.expect("engine starts")
}

/// Sleeps (virtually) until the engine clock reads `T0 + ms`, then lets the shards run.
pub async fn at(engine: &Engine, ms: i64) {
    let delta = T0 + ms - engine.now_ms();
    if delta > 0 {
        tokio::time::sleep(Duration::from_millis(delta as u64)).await;
    }
    settle().await;
}

pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

pub fn create(id: &str, need_response: bool, event_ms: i64) -> Event {
    Event::Created(Created {
        battle_id: id.into(),
        operator: Some("brennanli".into()),
        from_room: Some("pk-3".into()),
        to_rooms: vec!["pk-5".into()],
        timeout_ms: Some(10_000),
        duration_ms: Some(60_000),
        need_response: Some(need_response),
        extension_info: Some("extension pk".into()),
        event_time_ms: Some(event_ms),
    })
}

fn room(id: &str, owner: &str, score: Option<i64>) -> RoomInfo {
    RoomInfo {
        room_id: id.into(),
        owner_account: Some(owner.into()),
        score,
    }
}

pub fn start(id: &str, start_ms: i64) -> Event {
    Event::Started(Started {
        battle_id: id.into(),
        duration_ms: Some(60_000),
        create_time_s: Some(T0 / 1000),
        start_time_s: Some(start_ms.div_euclid(1000)),
        from_room: Some(room("pk-3", "brennan", None)),
        to_rooms: vec![room("pk-5", "tandy", None)],
        event_time_ms: Some(start_ms),
    })
}

pub fn end(id: &str, start_ms: i64, end_ms: i64, op_type: i64) -> Event {
    Event::Ended(Ended {
        battle_id: id.into(),
        duration_ms: Some(60_000),
        create_time_s: Some(T0 / 1000),
        start_time_s: Some(start_ms.div_euclid(1000)),
        end_time_s: Some(end_ms.div_euclid(1000)),
        op_type: Some(op_type),
        from_room: Some(room("pk-3", "144115245353757792", Some(7))),
        to_rooms: vec![room("pk-5", "144115245442327522", Some(3))],
        event_time_ms: Some(end_ms.saturating_add(1_119)),
    })
}

/// Records every notification.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Notification>>>);

impl Recorder {
    pub fn attach(engine: &Engine) -> Recorder {
        let r = Recorder::default();
        let inner = r.0.clone();
        engine.observe(move |n: &Notification| inner.lock().unwrap().push(n.clone()));
        r
    }
    /// A recorder to hand to `EngineBuilder::observer` (hears recovery too).
    pub fn observer(&self) -> impl Fn(&Notification) + Send + Sync + 'static {
        let inner = self.0.clone();
        move |n: &Notification| inner.lock().unwrap().push(n.clone())
    }
    pub fn take(&self) -> Vec<Notification> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn for_battle(&self, id: &str) -> Vec<Notification> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|n| &*n.battle.battle_id == id)
            .cloned()
            .collect()
    }
}

/// A snapshot without the fields that legitimately depend on when/how often it changed.
pub fn essence(mut s: BattleSnapshot) -> BattleSnapshot {
    s.version = 0;
    s.server_time_ms = 0;
    s
}
