//! Properties of the pure `parse_and_verify`: it never panics, and its answers are coherent
//! (the fuzz target checks the same on unbounded input).

use livebattle_engine::Event;
use livebattle_ingest::{
    compute_sign, parse_and_verify, Action, AppConfig, IngestConfig, Reason, Verifier,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW_MS: i64 = 1_739_954_005_000;

fn verifier() -> Verifier {
    let config = IngestConfig {
        apps: vec![
            AppConfig::new("1400000001"),
            AppConfig::with_token("1400000002", "xxxxyyyy"),
        ],
        ..IngestConfig::default()
    };
    Verifier::new(&config, NOW_MS).unwrap()
}

const COMMANDS: [&str; 5] = [
    "Live.CallbackAfterCreateBattle",
    "Live.CallbackAfterStartBattle",
    "Live.CallbackAfterEndBattle",
    "Live.CallbackAfterDestroyRoom",
    "Group.CallbackAfterSendMsg",
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9 ]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[A-Za-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 16] = [
    "BattleId",
    "Operator_Account",
    "FromRoomId",
    "ToRoomIdList",
    "Timeout",
    "Duration",
    "NeedResponse",
    "ExtensionInfo",
    "EventTime",
    "CreateTime",
    "StartTime",
    "EndTime",
    "OpType",
    "FromRoomInfo",
    "ToRoomList",
    "RoomId",
];

proptest! {
    #[test]
    fn raw_bytes_never_panic(query in ".{0,200}", body in prop::collection::vec(any::<u8>(), 0..512)) {
        let v = verifier();
        let _ = parse_and_verify(&v, &query, &body, NOW_MS);
    }

    /// Real field names with values of any type: an event, or a 4221/4222, never a panic or
    /// another refusal.
    #[test]
    fn fields_of_any_type(
        command in prop::sample::select(&COMMANDS[..]),
        values in prop::collection::vec((prop::sample::select(&FIELDS[..]), any_json()), 0..8),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("CallbackCommand".into(), command.into());
        for (k, v) in values {
            body.insert(k.into(), v);
        }
        let body = Value::Object(body).to_string();
        let query = format!("SdkAppid=1400000001&CallbackCommand={command}");
        match parse_and_verify(&verifier(), &query, body.as_bytes(), NOW_MS) {
            Ok(accepted) => match accepted.action {
                Action::Apply(Event::RoomDestroyed(d)) => prop_assert!(!d.room_id.is_empty()),
                Action::Apply(e) => prop_assert!(!e.battle_id().unwrap_or_default().is_empty()),
                Action::Acknowledge => prop_assert_eq!(command, "Group.CallbackAfterSendMsg"),
            },
            Err(r) => prop_assert!(
                matches!(r.reason, Reason::MissingField | Reason::WrongFieldType),
                "{}", r
            ),
        }
    }

    /// Any signed RequestTime within the window passes; any outside is stale.
    #[test]
    fn freshness_window(offset_s in -200i64..200) {
        let t = (NOW_MS / 1000 + offset_s).to_string();
        let query = format!(
            "SdkAppid=1400000002&CallbackCommand=Group.CallbackAfterSendMsg&Sign={}&RequestTime={t}",
            compute_sign("xxxxyyyy", &t)
        );
        let body = br#"{"CallbackCommand":"Group.CallbackAfterSendMsg"}"#;
        let result = parse_and_verify(&verifier(), &query, body, NOW_MS);
        if offset_s.abs() <= 60 {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(result.unwrap_err().reason, Reason::StaleRequestTime);
        }
    }

    /// Owner_Account integers of any length survive digit for digit.
    #[test]
    fn owner_account_digits_kept(digits in "[1-9][0-9]{0,40}") {
        let body = format!(
            r#"{{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"b","FromRoomInfo":{{"RoomId":"r","Owner_Account":{digits}}}}}"#
        );
        let query = "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterEndBattle";
        let accepted = parse_and_verify(&verifier(), query, body.as_bytes(), NOW_MS).unwrap();
        let Action::Apply(Event::Ended(e)) = accepted.action else { panic!("not Ended") };
        let owner = e.from_room.and_then(|r| r.owner_account);
        prop_assert_eq!(owner.as_deref(), Some(digits.as_str()));
    }
}
