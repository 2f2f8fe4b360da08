//! Every documented sample (shared/fixtures/tencent) through the real router into the real
//! engine, and the documented signature example.

mod common;

use common::*;
use livebattle_engine::{EndReason, State};
use livebattle_ingest::{compute_sign, parse_payload, sign_matches, Action, Command};

#[tokio::test(start_paused = true)]
async fn create_sample_creates_a_running_battle() {
    let h = harness().await;
    h.deliver(CREATE, "create_battle.json").await;
    let b = h.engine.battle(CREATE_ID).expect("battle created");
    // NeedResponse false: the battle starts at once.
    assert_eq!(b.state, State::Running);
    assert_eq!(b.operator.as_deref(), Some("brennanli"));
    assert_eq!(b.from_room.as_deref(), Some("pk-3"));
    assert_eq!(
        b.to_rooms.iter().map(|r| &**r).collect::<Vec<_>>(),
        ["pk-5"]
    );
    assert_eq!(b.timeout_ms, Some(30_000));
    assert_eq!(b.duration_ms, Some(60_000));
    assert_eq!(b.need_response, Some(false));
    assert_eq!(b.extension_info.as_deref(), Some("extension pk"));
    assert_eq!(b.created_at_ms, Some(1_739_954_005_000)); // EventTime is already ms
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.requests(CREATE, "new"), 1);
}

#[tokio::test(start_paused = true)]
async fn start_sample_runs_with_owners_and_second_times() {
    let h = harness().await;
    h.deliver(START, "start_battle.json").await;
    let b = h.engine.battle(START_ID).expect("battle started");
    assert_eq!(b.state, State::Running);
    // StartTime 1739954005 s → ms; Duration 60000 ms.
    assert_eq!(b.started_at_ms, Some(1_739_954_005_000));
    assert_eq!(b.ends_at_ms, Some(1_739_954_065_000));
    let owners: Vec<(&str, Option<&str>)> = b
        .participants
        .iter()
        .map(|p| (&*p.room_id, p.owner_account.as_deref()))
        .collect();
    assert!(owners.contains(&("pk-3", Some("brennan"))), "{owners:?}");
    assert!(owners.contains(&("pk-5", Some("tandy"))), "{owners:?}");
}

#[tokio::test(start_paused = true)]
async fn end_sample_keeps_big_owner_accounts_exactly() {
    let h = harness_at(1_739_956_146_119).await;
    h.deliver(END, "end_battle.json").await;
    let b = h.engine.battle(END_ID).expect("battle ended");
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_op_type, Some(0));
    assert_eq!(b.end_reason, Some(EndReason::TimeUp));
    let owner = |room: &str| {
        b.participants
            .iter()
            .find(|p| &*p.room_id == room)
            .and_then(|p| p.owner_account.as_deref().map(str::to_owned))
    };
    // Both are JSON integers above 2^53 in the sample: every digit kept.
    assert_eq!(owner("pk-3").as_deref(), Some("144115245353757792"));
    assert_eq!(owner("pk-5").as_deref(), Some("144115245442327522"));
    assert!(b.participants.iter().all(|p| p.score == 0));
}

#[test]
fn samples_map_field_by_field() {
    let Action::Apply(livebattle_engine::Event::Created(c)) =
        parse_payload(&Command::CreateBattle, &fixture("create_battle.json")).unwrap()
    else {
        panic!("not Created")
    };
    assert_eq!(
        c,
        livebattle_engine::Created {
            battle_id: CREATE_ID.into(),
            operator: Some("brennanli".into()),
            from_room: Some("pk-3".into()),
            to_rooms: vec!["pk-5".into()],
            timeout_ms: Some(30_000),
            duration_ms: Some(60_000),
            need_response: Some(false),
            extension_info: Some("extension pk".into()),
            event_time_ms: Some(1_739_954_005_000),
        }
    );
    let Action::Apply(livebattle_engine::Event::Started(s)) =
        parse_payload(&Command::StartBattle, &fixture("start_battle.json")).unwrap()
    else {
        panic!("not Started")
    };
    assert_eq!(s.create_time_s, Some(1_739_954_005));
    assert_eq!(s.start_time_s, Some(1_739_954_005));
    assert_eq!(s.event_time_ms, Some(1_739_954_005_000));
    assert_eq!(s.duration_ms, Some(60_000));
    let from = s.from_room.unwrap();
    assert_eq!(
        (
            from.room_id.as_str(),
            from.owner_account.as_deref(),
            from.score
        ),
        ("pk-3", Some("brennan"), None)
    );
    assert_eq!(s.to_rooms.len(), 1);
    let Action::Apply(livebattle_engine::Event::Ended(e)) =
        parse_payload(&Command::EndBattle, &fixture("end_battle.json")).unwrap()
    else {
        panic!("not Ended")
    };
    assert_eq!(e.battle_id, END_ID);
    assert_eq!(e.duration_ms, Some(30_000));
    assert_eq!(
        (e.create_time_s, e.start_time_s, e.end_time_s),
        (
            Some(1_739_956_115),
            Some(1_739_956_115),
            Some(1_739_956_145)
        )
    );
    assert_eq!(e.op_type, Some(0));
    assert_eq!(e.event_time_ms, Some(1_739_956_146_119));
    let from = e.from_room.unwrap();
    assert_eq!(from.owner_account.as_deref(), Some("144115245353757792"));
    assert_eq!(from.score, Some(0));
    assert_eq!(
        e.to_rooms[0].owner_account.as_deref(),
        Some("144115245442327522")
    );
}

#[test]
fn documented_signature_example() {
    let sig = fixture_json("signature.json");
    let token = sig["token"].as_str().unwrap();
    let time = sig["request_time"].as_i64().unwrap().to_string();
    let sign = sig["sign"].as_str().unwrap();
    assert_eq!(compute_sign(token, &time), sign);
    assert!(sign_matches(token, &time, sign));
    assert!(sign_matches(token, &time, &sign.to_uppercase()));
}

/// The documented URL, Sign and RequestTime, verbatim, accepted by the router when the engine
/// clock is at that RequestTime.
#[tokio::test(start_paused = true)]
async fn documented_signature_example_through_the_router() {
    let sig = fixture_json("signature.json");
    let time = sig["request_time"].as_i64().unwrap();
    let h = harness_at(time * 1000).await;
    let q = format!(
        "{}&Sign={}&RequestTime={time}",
        query(SIGNED_APP, START),
        sig["sign"].as_str().unwrap()
    );
    h.post(&q, fixture("start_battle.json")).await.assert_ok();
    assert!(h.engine.battle(START_ID).is_some());
}

/// All three samples in protocol order on one battle id, signed, as one app would send them.
#[tokio::test(start_paused = true)]
async fn create_start_end_signed_in_order() {
    let h = harness().await;
    let now_s = START_MS / 1000;
    for (command, file) in [
        (CREATE, "create_battle.json"),
        (START, "start_battle.json"),
        (END, "end_battle.json"),
    ] {
        let mut body = fixture_json(file);
        body["BattleId"] = "same-battle".into();
        let q = signed_query(SIGNED_APP, command, TOKEN, now_s);
        h.post(&q, body.to_string()).await.assert_ok();
    }
    let b = h.engine.battle("same-battle").unwrap();
    assert_eq!(b.state, State::Ended);
    let snap = h.ingest.metrics().snapshot();
    assert_eq!(snap.requests(CREATE, "new"), 1);
    assert_eq!(snap.requests(END, "refused"), 0);
}
