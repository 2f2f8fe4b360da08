//! Every lifecycle rule of docs/lifecycle.md, under paused tokio time.

mod common;

use common::*;
use livebattle_engine::{
    Cause, EndReason, EngineError, Event, Outcome, Refusal, RoomDestroyed, Rules, State, Target,
};

#[tokio::test(start_paused = true)]
async fn rule1_no_response_runs_from_event_time_and_ends_exactly_at_deadline() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    let a = e.apply(create("b1", false, T0)).await.unwrap();
    assert_eq!(a.outcome, Outcome::New);
    let b = e.battle("b1").unwrap();
    assert_eq!(b.state, State::Running);
    assert_eq!(b.started_at_ms, Some(T0));
    assert_eq!(b.ends_at_ms, Some(T0 + 60_000));
    assert_eq!(b.next_deadline_ms, Some(T0 + 60_000));

    at(&e, 59_999).await;
    assert_eq!(e.battle("b1").unwrap().state, State::Running);
    at(&e, 60_000).await;
    let b = e.battle("b1").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_reason, Some(EndReason::TimeUp));
    assert_eq!(b.ended_at_ms, Some(T0 + 60_000));

    let notes = rec.take();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].from, None);
    assert_eq!(notes[0].to, Target::State(State::Running));
    assert_eq!(notes[0].cause, Cause::CreateWebhook);
    let last = &notes[1];
    assert_eq!(last.from, Some(State::Running));
    assert_eq!(last.to, Target::State(State::Ended));
    assert_eq!(last.cause, Cause::EndTimer);
    assert_eq!(last.late_ms, Some(0), "fired exactly at its deadline");
    assert_eq!(last.battle.server_time_ms, T0 + 60_000);
    assert!(notes[0].seq < last.seq);
}

#[tokio::test(start_paused = true)]
async fn rule2_every_callee_answers_accept_runs_now() {
    let e = engine().await;
    e.apply(create("b", true, T0)).await.unwrap();
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::AwaitingResponse);
    assert_eq!(b.response_deadline_ms, Some(T0 + 10_000));
    assert_eq!(b.next_deadline_ms, Some(T0 + 10_000));
    at(&e, 4_000).await;
    let a = e
        .apply(Event::Response {
            battle_id: "b".into(),
            room_id: "pk-5".into(),
            accept: true,
        })
        .await
        .unwrap();
    assert_eq!(a.outcome, Outcome::Transition);
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Running);
    assert_eq!(b.started_at_ms, Some(T0 + 4_000));
    assert_eq!(b.ends_at_ms, Some(T0 + 64_000));
    // The response timer was cancelled: nothing happens at the response deadline.
    at(&e, 20_000).await;
    assert_eq!(e.battle("b").unwrap().state, State::Running);
    at(&e, 64_000).await;
    assert_eq!(e.battle("b").unwrap().end_reason, Some(EndReason::TimeUp));
}

#[tokio::test(start_paused = true)]
async fn rule2_every_callee_declines_ends_declined() {
    let e = engine().await;
    e.apply(create("b", true, T0)).await.unwrap();
    e.apply(Event::Response {
        battle_id: "b".into(),
        room_id: "pk-5".into(),
        accept: false,
    })
    .await
    .unwrap();
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_reason, Some(EndReason::Declined));
    // Not an invited callee.
    e.apply(create("c", true, T0)).await.unwrap();
    let err = e
        .apply(Event::Response {
            battle_id: "c".into(),
            room_id: "pk-9".into(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Refused(Refusal::NotACallee("pk-9".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn rule2_deadline_then_grace_with_no_acceptor_ends_response_timeout() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    e.apply(create("b", true, T0)).await.unwrap();
    let grace = Rules::default().response_grace_ms as i64;
    at(&e, 10_000 + grace - 1).await;
    assert_eq!(e.battle("b").unwrap().state, State::AwaitingResponse);
    at(&e, 10_000 + grace).await;
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_reason, Some(EndReason::ResponseTimeout));
    assert_eq!(b.ended_at_ms, Some(T0 + 10_000 + grace));
    assert_eq!(rec.take().last().unwrap().cause, Cause::ResponseTimer);
}

#[tokio::test(start_paused = true)]
async fn rule2_deadline_with_a_known_acceptor_runs_from_the_deadline() {
    let e = engine().await;
    // Two callees: one accepted, the other never answered.
    let mut c = create("b", true, T0);
    if let Event::Created(c) = &mut c {
        c.to_rooms.push("pk-7".into());
    }
    e.apply(c).await.unwrap();
    e.apply(Event::Response {
        battle_id: "b".into(),
        room_id: "pk-5".into(),
        accept: true,
    })
    .await
    .unwrap();
    assert_eq!(e.battle("b").unwrap().state, State::AwaitingResponse);
    at(&e, 10_000 + Rules::default().response_grace_ms as i64).await;
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Running);
    assert_eq!(b.started_at_ms, Some(T0 + 10_000));
    assert_eq!(b.ends_at_ms, Some(T0 + 70_000));
}

#[tokio::test(start_paused = true)]
async fn rule3_start_is_authoritative_and_precise() {
    let e = engine().await;
    e.apply(create("b", true, T0)).await.unwrap();
    at(&e, 5_000).await;
    // EventTime agrees with StartTime's second: the ms value is used.
    e.apply(start("b", T0 + 4_321)).await.unwrap();
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Running);
    assert_eq!(b.started_at_ms, Some(T0 + 4_321));
    assert_eq!(b.ends_at_ms, Some(T0 + 64_321));

    // EventTime disagrees with StartTime: StartTime × 1000.
    e.apply(create("c", true, T0)).await.unwrap();
    let mut s = start("c", T0 + 4_321);
    if let Event::Started(s) = &mut s {
        s.event_time_ms = Some(T0 + 9_000);
    }
    e.apply(s).await.unwrap();
    assert_eq!(e.battle("c").unwrap().started_at_ms, Some(T0 + 4_000));
}

#[tokio::test(start_paused = true)]
async fn rule3_start_refines_a_predicted_run_and_the_stale_timer_does_nothing() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    e.apply(create("b", false, T0)).await.unwrap();
    at(&e, 1_000).await;
    // Tencent says it started 2 s later than Create's EventTime.
    let a = e.apply(start("b", T0 + 2_000)).await.unwrap();
    assert_eq!(a.outcome, Outcome::Update);
    let b = e.battle("b").unwrap();
    assert_eq!(b.ends_at_ms, Some(T0 + 62_000));
    at(&e, 60_000).await;
    assert_eq!(
        e.battle("b").unwrap().state,
        State::Running,
        "old timer is stale"
    );
    at(&e, 62_000).await;
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.ended_at_ms, Some(T0 + 62_000));
    let notes = rec.take();
    let kinds: Vec<_> = notes.iter().map(|n| (n.from, n.to)).collect();
    assert_eq!(
        kinds,
        vec![
            (None, Target::State(State::Running)),
            (Some(State::Running), Target::Update),
            (Some(State::Running), Target::State(State::Ended)),
        ]
    );
    assert_eq!(e.metrics().snapshot().timers_fired, 1);
}

#[tokio::test(start_paused = true)]
async fn rule3_start_agreeing_with_the_prediction_notifies_nobody() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    e.apply(create("b", false, T0)).await.unwrap();
    // The sample pair: Create and Start share EventTime.
    e.apply(start("b", T0)).await.unwrap();
    assert_eq!(rec.take().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn rule4_end_webhook_after_time_up_completes_the_record_as_an_update() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    e.apply(create("b", false, T0)).await.unwrap();
    at(&e, 60_000).await;
    assert_eq!(e.battle("b").unwrap().state, State::Ended);
    at(&e, 61_200).await;
    let a = e.apply(end("b", T0, T0 + 60_000, 0)).await.unwrap();
    assert_eq!(a.outcome, Outcome::Update);
    let b = e.battle("b").unwrap();
    assert_eq!(b.end_reason, Some(EndReason::TimeUp));
    assert_eq!(b.end_op_type, Some(0));
    assert_eq!(b.ended_at_ms, Some(T0 + 60_000));
    assert_eq!(b.participants[0].score, 7);
    assert_eq!(
        b.participants[0].owner_account.as_deref(),
        Some("144115245353757792")
    );
    let notes = rec.take();
    assert_eq!(notes.len(), 3);
    assert_eq!(notes[2].to, Target::Update);
    assert_eq!(notes[2].cause, Cause::EndWebhook);
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.to == Target::State(State::Ended))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn rule5_end_from_every_state_and_ended_is_terminal() {
    let e = engine().await;
    // awaiting_response → ended (OpType 2)
    e.apply(create("a", true, T0)).await.unwrap();
    e.apply(end("a", T0, T0 + 10_000, 2)).await.unwrap();
    let a = e.battle("a").unwrap();
    assert_eq!(
        (a.state, a.end_reason),
        (State::Ended, Some(EndReason::NotStarted))
    );
    assert_eq!(a.started_at_ms, None, "OpType 2 never started");
    // A late Start fills fields but does not revive it.
    e.apply(start("a", T0 + 1_000)).await.unwrap();
    assert_eq!(e.battle("a").unwrap().state, State::Ended);
    // running → ended (OpType 1, all exited)
    e.apply(create("r", false, T0)).await.unwrap();
    e.apply(end("r", T0, T0 + 30_000, 1)).await.unwrap();
    assert_eq!(
        e.battle("r").unwrap().end_reason,
        Some(EndReason::AllExited)
    );
    // unknown OpType keeps its code
    e.apply(end("u", T0, T0 + 30_000, 7)).await.unwrap();
    let u = e.battle("u").unwrap();
    assert_eq!(
        (u.end_reason, u.end_op_type),
        (Some(EndReason::Unknown), Some(7))
    );
    // A late Create only fills what is missing.
    e.apply(create("u", false, T0)).await.unwrap();
    let u = e.battle("u").unwrap();
    assert_eq!(u.state, State::Ended);
    assert_eq!(u.extension_info.as_deref(), Some("extension pk"));
    // App end on an ended battle changes nothing.
    let a = e
        .apply(Event::EndNow {
            battle_id: "u".into(),
        })
        .await
        .unwrap();
    assert_eq!(a.outcome, Outcome::Unchanged);
}

#[tokio::test(start_paused = true)]
async fn rule6_duplicates_change_nothing_and_notify_nobody() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    for ev in [
        create("b", false, T0),
        start("b", T0 + 500),
        end("b", T0, T0 + 60_000, 0),
    ] {
        e.apply(ev.clone()).await.unwrap();
        let before = e.battle("b").unwrap();
        let n = rec.take().len();
        assert!(n <= 1);
        let a = e.apply(ev).await.unwrap();
        assert_eq!(a.outcome, Outcome::Duplicate);
        assert_eq!(e.battle("b").unwrap(), before);
        assert!(rec.take().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn rule6_every_permutation_of_create_start_end_gives_the_same_battle() {
    let events = [
        create("p", true, T0),
        start("p", T0 + 3_250),
        end("p", T0 + 3_250, T0 + 63_000, 0),
    ];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut finals = Vec::new();
    for order in orders {
        let e = engine().await;
        let rec = Recorder::attach(&e);
        at(&e, 70_000).await;
        for i in order {
            e.apply(events[i].clone()).await.unwrap();
        }
        let b = e.battle("p").unwrap();
        assert_eq!(b.state, State::Ended, "order {order:?}");
        let into_ended = rec
            .take()
            .iter()
            .filter(|n| {
                n.to == Target::State(State::Ended)
                    || (n.from.is_none() && n.battle.state == State::Ended)
            })
            .count();
        assert_eq!(
            into_ended, 1,
            "exactly one transition into ended, order {order:?}"
        );
        finals.push((order, essence(b)));
    }
    for (order, f) in &finals[1..] {
        assert_eq!(
            f, &finals[0].1,
            "order {order:?} differs from {:?}",
            finals[0].0
        );
    }
    let b = &finals[0].1;
    assert_eq!(b.started_at_ms, Some(T0 + 3_250));
    assert_eq!(b.ended_at_ms, Some(T0 + 63_000));
    assert_eq!(b.created_at_ms, Some(T0));
}

#[tokio::test(start_paused = true)]
async fn rule7_deadlines_are_anchored_at_event_time_not_arrival() {
    let e = engine().await;
    let rec = Recorder::attach(&e);
    at(&e, 1_000).await;
    // Arrives 1 s late: ends 59 s after arrival.
    e.apply(create("late", false, T0)).await.unwrap();
    assert_eq!(e.battle("late").unwrap().ends_at_ms, Some(T0 + 60_000));
    at(&e, 60_000).await;
    assert_eq!(e.battle("late").unwrap().state, State::Ended);

    // Its whole duration already passed: ends at once, marked late.
    at(&e, 200_000).await;
    rec.take();
    e.apply(create("stale", false, T0 + 100_000)).await.unwrap();
    settle().await;
    let b = e.battle("stale").unwrap();
    assert_eq!(b.state, State::Ended);
    assert_eq!(b.end_reason, Some(EndReason::TimeUp));
    assert_eq!(b.ended_at_ms, Some(T0 + 160_000));
    let last = rec.take().pop().unwrap();
    assert_eq!(last.late_ms, Some(40_000));
}

#[tokio::test(start_paused = true)]
async fn rule7_future_timestamps_beyond_tolerance_are_clamped_to_now() {
    let e = engine().await;
    let tol = Rules::default().future_tolerance_ms as i64;
    // Within tolerance: kept.
    e.apply(create("near", false, T0 + tol)).await.unwrap();
    assert_eq!(e.battle("near").unwrap().started_at_ms, Some(T0 + tol));
    // Beyond: clamped, so the countdown is never stretched.
    e.apply(create("far", false, T0 + 3_600_000)).await.unwrap();
    let b = e.battle("far").unwrap();
    assert_eq!(b.started_at_ms, Some(T0));
    assert_eq!(b.ends_at_ms, Some(T0 + 60_000));
}

#[tokio::test(start_paused = true)]
async fn rule8_retention_eviction_and_the_dedupe_horizon() {
    let rules = Rules {
        retention_ms: 5_000,
        dedupe_horizon_ms: 20_000,
        ..Rules::default()
    };
    let e = builder().rules(rules).start().await.unwrap();
    e.apply(create("b", false, T0)).await.unwrap();
    e.apply(end("b", T0, T0 + 1_000, 1)).await.unwrap();
    at(&e, 4_999).await;
    assert!(e.battle("b").is_some(), "kept for retention");
    at(&e, 5_000).await;
    assert!(e.battle("b").is_none(), "evicted after retention");
    assert_eq!(e.battle_count(), 0);
    assert_eq!(e.metrics().snapshot().evicted, 1);
    // A duplicate after eviction changes nothing.
    let a = e.apply(create("b", false, T0)).await.unwrap();
    assert_eq!(a.outcome, Outcome::Evicted);
    assert_eq!(e.battle_count(), 0);
    // After the horizon the id is forgotten.
    at(&e, 25_001).await;
    let a = e.apply(create("b", false, T0 + 25_001)).await.unwrap();
    assert_eq!(a.outcome, Outcome::New);
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_under_endless_load() {
    let rules = Rules {
        retention_ms: 1_000,
        dedupe_horizon_ms: 2_000,
        ..Rules::default()
    };
    let e = builder().rules(rules).start().await.unwrap();
    for round in 0..50i64 {
        let now = round * 500;
        at(&e, now).await;
        let evs = (0..100)
            .map(|i| {
                let mut c = create(&format!("r{round}-{i}"), false, T0 + now);
                if let Event::Created(c) = &mut c {
                    c.duration_ms = Some(300);
                }
                c
            })
            .collect();
        for r in e.apply_batch(evs).await {
            r.unwrap();
        }
    }
    at(&e, 50 * 500 + 5_000).await;
    assert_eq!(e.battle_count(), 0, "every ended battle was evicted");
}

#[tokio::test(start_paused = true)]
async fn destroyed_room_ends_a_two_room_battle() {
    let e = engine().await;
    e.apply(create("b", false, T0)).await.unwrap();
    assert_eq!(&*e.room_battle("pk-5").unwrap().battle_id, "b");
    let a = e
        .apply(Event::RoomDestroyed(RoomDestroyed {
            room_id: "pk-5".into(),
            event_time_ms: Some(T0 + 100),
        }))
        .await
        .unwrap();
    assert_eq!(a.outcome, Outcome::Transition);
    let b = e.battle("b").unwrap();
    assert_eq!(b.end_reason, Some(EndReason::RoomDestroyed));
    assert!(e.room_battle("pk-5").is_none());
    // A room in no battle: acknowledged, nothing happens.
    let a = e
        .apply(Event::RoomDestroyed(RoomDestroyed {
            room_id: "nowhere".into(),
            event_time_ms: None,
        }))
        .await
        .unwrap();
    assert_eq!(a.outcome, Outcome::NoBattle);
}

#[tokio::test(start_paused = true)]
async fn pending_until_create_then_settles_or_expires() {
    let e = engine().await;
    // The SDK-side acceptance raced ahead of the Create webhook.
    e.apply(Event::Response {
        battle_id: "b".into(),
        room_id: "pk-5".into(),
        accept: true,
    })
    .await
    .unwrap();
    assert_eq!(e.battle("b").unwrap().state, State::Pending);
    at(&e, 300).await;
    e.apply(create("b", true, T0)).await.unwrap();
    let b = e.battle("b").unwrap();
    assert_eq!(b.state, State::Running, "every callee already answered");
    assert_eq!(b.started_at_ms, Some(T0 + 300));

    // A pending battle whose Create never comes ends not_started.
    e.apply(Event::Response {
        battle_id: "orphan".into(),
        room_id: "pk-8".into(),
        accept: true,
    })
    .await
    .unwrap();
    at(&e, 300 + Rules::default().pending_ttl_ms as i64).await;
    let b = e.battle("orphan").unwrap();
    assert_eq!(
        (b.state, b.end_reason),
        (State::Ended, Some(EndReason::NotStarted))
    );
}

#[tokio::test(start_paused = true)]
async fn app_api_scores_exit_and_end() {
    let e = engine().await;
    let err = e
        .apply(Event::Scores {
            battle_id: "none".into(),
            scores: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::Refused(Refusal::UnknownBattle));
    e.apply(create("b", false, T0)).await.unwrap();
    let a = e
        .apply(Event::Scores {
            battle_id: "b".into(),
            scores: vec![("pk-3".into(), 10), ("pk-5".into(), 12)],
        })
        .await
        .unwrap();
    assert_eq!(a.outcome, Outcome::Update);
    assert_eq!(e.battle("b").unwrap().participants[1].score, 12);
    let err = e
        .apply(Event::Scores {
            battle_id: "b".into(),
            scores: vec![("pk-x".into(), 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Refused(Refusal::UnknownRoom("pk-x".into()))
    );
    e.apply(Event::RoomExited {
        battle_id: "b".into(),
        room_id: "pk-3".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        e.battle("b").unwrap().end_reason,
        Some(EndReason::AllExited)
    );

    e.apply(create("c", false, T0)).await.unwrap();
    e.apply(Event::EndNow {
        battle_id: "c".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        e.battle("c").unwrap().end_reason,
        Some(EndReason::EndedByApp)
    );
    e.apply(end("c", T0, T0 + 5_000, 1)).await.unwrap();
    let err = e
        .apply(Event::Scores {
            battle_id: "c".into(),
            scores: vec![("pk-3".into(), 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::Refused(Refusal::ScoresFinal));
}

#[tokio::test(start_paused = true)]
async fn queries_by_state_and_room() {
    let e = engine().await;
    e.apply(create("a", false, T0)).await.unwrap();
    e.apply(create("b", true, T0)).await.unwrap();
    e.apply(end("c", T0, T0, 0)).await.unwrap();
    let running = e.battles(Some(State::Running), None, None, 10);
    assert_eq!(running.len(), 1);
    assert_eq!(&*running[0].battle_id, "a");
    let all = e.battles(None, Some("pk-3"), None, 10);
    assert_eq!(all.len(), 3);
    let page = e.battles(None, None, Some("a"), 1);
    assert_eq!(&*page[0].battle_id, "b");
    assert_eq!(e.metrics().battles_in(State::AwaitingResponse), 1);
}

#[tokio::test(start_paused = true)]
async fn a_page_is_the_first_ids_in_order_whatever_its_size() {
    let e = engine().await;
    // Ids in no particular order (a multiplicative hash of i).
    let ids: Vec<String> = (0..300u64)
        .map(|i| format!("p-{:08x}", i.wrapping_mul(2_654_435_761) % 1_000_000))
        .collect();
    for id in &ids {
        e.apply(create(id, false, T0)).await.unwrap();
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    for limit in [0, 1, 7, 150, sorted.len(), 1_000] {
        let page: Vec<String> = e
            .battles(None, None, None, limit)
            .iter()
            .map(|b| b.battle_id.to_string())
            .collect();
        assert_eq!(page, sorted[..limit.min(sorted.len())], "limit {limit}");
    }
    let after = &sorted[100];
    let page: Vec<String> = e
        .battles(None, None, Some(after), 5)
        .iter()
        .map(|b| b.battle_id.to_string())
        .collect();
    assert_eq!(page, sorted[101..106]);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_queued_after_a_later_one_still_fires_on_time() {
    let e = builder().shards(1).start().await.unwrap();
    e.apply(create("late", false, T0)).await.unwrap();
    at(&e, 1_000).await;
    let mut early = create("early", false, T0 + 1_000);
    if let Event::Created(c) = &mut early {
        c.duration_ms = Some(5_000);
        c.from_room = Some("pk-30".into());
        c.to_rooms = vec!["pk-50".into()];
    }
    e.apply(early).await.unwrap();
    at(&e, 5_999).await;
    assert_eq!(e.battle("early").unwrap().state, State::Running);
    at(&e, 6_000).await;
    let b = e.battle("early").unwrap();
    assert_eq!((b.state, b.ended_at_ms), (State::Ended, Some(T0 + 6_000)));
    assert_eq!(e.battle("late").unwrap().state, State::Running);
}

#[tokio::test(start_paused = true)]
async fn extreme_timestamps_never_panic_and_every_timer_still_fires() {
    // Tencent's times are input: the engine saturates, it does not overflow (debug builds
    // check every subtraction).
    let e = engine().await;
    let extremes = [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX];
    for (i, &t) in extremes.iter().enumerate() {
        for need_response in [false, true] {
            let id = format!("x{i}-{need_response}");
            e.apply(create(&id, need_response, t)).await.unwrap();
            let _ = e.apply(start(&id, t)).await;
            let _ = e.apply(end(&id, t, t, 0)).await;
            let id = format!("y{i}-{need_response}");
            e.apply(create(&id, need_response, t)).await.unwrap();
        }
    }
    // Inside the retention (10 min from when each ended): every one is still held.
    at(&e, 5 * 60_000).await;
    for (i, _) in extremes.iter().enumerate() {
        for need_response in [false, true] {
            let b = e.battle(&format!("y{i}-{need_response}")).unwrap();
            assert_eq!(
                b.state,
                State::Ended,
                "y{i}-{need_response} ended by its timer"
            );
        }
    }
}
