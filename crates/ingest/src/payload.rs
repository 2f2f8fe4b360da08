//! Callback bodies: Tencent's JSON to engine [`Event`]s.
//!
//! One pass reads the command's fields into a wire struct and checks the body's
//! `CallbackCommand` against the URL's. Only if that pass fails do two careful passes find out
//! why: is the body one JSON object (4001) with the right command (4002)? which field is wrong
//! (4222, naming it: `ToRoomList[0].Owner_Account`)? Unknown
//! fields are ignored; every field but `BattleId` (`RoomId` for DestroyRoom) is optional.
//!
//! | callback | event |
//! |---|---|
//! | `Live.CallbackAfterCreateBattle` | [`Event::Created`] |
//! | `Live.CallbackAfterStartBattle` | [`Event::Started`] |
//! | `Live.CallbackAfterEndBattle` | [`Event::Ended`] |
//! | `Live.CallbackAfterDestroyRoom` | [`Event::RoomDestroyed`] |
//! | anything else | acknowledged, not applied |

use livebattle_engine::{Created, Ended, Event, RoomDestroyed, RoomInfo, Started};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::command::Command;
use crate::fields::{Account, Flag, Int, Millis, ObjectOnly};
use crate::reply::{Reason, Refusal};
use crate::signature::shorten;

/// What to do with an accepted callback.
// Short-lived and handed by value to `engine.apply`: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Feed the engine, then reply OK.
    Apply(Event),
    /// Reply OK without touching the engine (a command this crate does not apply).
    Acknowledge,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "CallbackCommand", default, borrow)]
    command: Option<&'a RawValue>,
    // Every other key is read (and so syntax-checked) as IgnoredAny by serde's derive.
}

/// `Live.CallbackAfterCreateBattle`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct CreateWire<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Option<&'a RawValue>,
    #[serde(rename = "BattleId")]
    battle_id: Option<String>,
    #[serde(rename = "Operator_Account")]
    operator: Option<Account>,
    #[serde(rename = "FromRoomId")]
    from_room: Option<String>,
    #[serde(rename = "ToRoomIdList")]
    to_rooms: Option<Vec<String>>,
    #[serde(rename = "Timeout")]
    timeout: Option<Millis>,
    #[serde(rename = "Duration")]
    duration: Option<Millis>,
    #[serde(rename = "NeedResponse")]
    need_response: Option<Flag>,
    #[serde(rename = "ExtensionInfo")]
    extension_info: Option<String>,
    #[serde(rename = "EventTime")]
    event_time: Option<Int>,
}

/// `Live.CallbackAfterStartBattle` and `Live.CallbackAfterEndBattle` (Start has no `EndTime`
/// and `OpType`, and no `Score` in its rooms).
#[derive(Default, Deserialize)]
#[serde(default)]
struct BattleWire<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Option<&'a RawValue>,
    #[serde(rename = "BattleId")]
    battle_id: Option<String>,
    #[serde(rename = "Duration")]
    duration: Option<Millis>,
    #[serde(rename = "CreateTime")]
    create_time: Option<Int>,
    #[serde(rename = "StartTime")]
    start_time: Option<Int>,
    #[serde(rename = "EndTime")]
    end_time: Option<Int>,
    #[serde(rename = "OpType")]
    op_type: Option<Int>,
    #[serde(rename = "FromRoomInfo")]
    from_room: Option<ObjectOnly<RoomWire>>,
    #[serde(rename = "ToRoomList")]
    to_rooms: Option<Vec<ObjectOnly<RoomWire>>>,
    #[serde(rename = "EventTime")]
    event_time: Option<Int>,
}

/// `FromRoomInfo` / `ToRoomList[]`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RoomWire {
    #[serde(rename = "RoomId")]
    room_id: Option<String>,
    #[serde(rename = "Owner_Account")]
    owner_account: Option<Account>,
    #[serde(rename = "Score")]
    score: Option<Int>,
}

/// `Live.CallbackAfterDestroyRoom` (its `RoomInfo{}` and `Statistic{}` are ignored).
#[derive(Default, Deserialize)]
#[serde(default)]
struct DestroyRoomWire<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Option<&'a RawValue>,
    #[serde(rename = "RoomId")]
    room_id: Option<String>,
    #[serde(rename = "EventTime")]
    event_time: Option<Int>,
    #[serde(rename = "EventType")]
    event_type: Option<String>,
    #[serde(rename = "Operator_Account")]
    operator: Option<Account>,
}

/// Checks that `body` is a JSON object whose `CallbackCommand` equals the URL's `command`, then
/// maps it: the four applied commands to an [`Event`], anything else to [`Action::Acknowledge`].
///
/// ```
/// use livebattle_ingest::{parse_payload, Action, Command};
/// use livebattle_engine::Event;
/// let body = br#"{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"b1","OpType":7,
///   "FromRoomInfo":{"RoomId":"pk-3","Score":2,"Owner_Account":144115245353757792}}"#;
/// let Action::Apply(Event::Ended(ended)) = parse_payload(&Command::EndBattle, body).unwrap() else {
///     panic!("not an End")
/// };
/// assert_eq!(ended.op_type, Some(7)); // kept; the engine calls it `unknown`
/// let owner = ended.from_room.unwrap().owner_account.unwrap();
/// assert_eq!(owner, "144115245353757792");
/// ```
pub fn parse_payload(command: &Command, body: &[u8]) -> Result<Action, Refusal> {
    let event = match command {
        Command::CreateBattle => Event::Created(created(wire(command, body)?)?),
        Command::StartBattle => Event::Started(started(wire(command, body)?)?),
        Command::EndBattle => Event::Ended(ended(wire(command, body)?)?),
        Command::DestroyRoom => Event::RoomDestroyed(room_destroyed(wire(command, body)?)?),
        Command::Other(_) => {
            check_envelope(command, body)?;
            return Ok(Action::Acknowledge);
        }
    };
    Ok(Action::Apply(event))
}

/// A wire struct that carries the body's `CallbackCommand`.
trait Wire<'de>: Deserialize<'de> {
    fn command(&self) -> Option<&'de RawValue>;
}

macro_rules! wire_command {
    ($($ty:ident),*) => {$(
        impl<'de> Wire<'de> for $ty<'de> {
            fn command(&self) -> Option<&'de RawValue> {
                self.command
            }
        }
    )*};
}

wire_command!(CreateWire, BattleWire, DestroyRoomWire);

/// The command's fields. Fast path: one pass of the strict reader (`fast_json`, the usual
/// body), else one plain serde_json pass. Only when both fail are the careful passes run, to
/// tell malformed JSON (4001) and a wrong command (4002) from a wrong field (4222, with the
/// field's path).
fn wire<'de, T: Wire<'de>>(command: &Command, body: &'de [u8]) -> Result<T, Refusal> {
    let plain = crate::fast_json::from_slice::<ObjectOnly<T>>(body)
        .or_else(|| serde_json::from_slice::<ObjectOnly<T>>(body).ok());
    if let Some(ObjectOnly(w)) = plain {
        check_command(command, w.command())?;
        return Ok(w);
    }
    check_envelope(command, body)?;
    fields(body)
}

fn check_envelope(command: &Command, body: &[u8]) -> Result<(), Refusal> {
    let envelope: ObjectOnly<Envelope<'_>> = serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() {
            "body must be one JSON object"
        } else {
            "body is not valid JSON"
        };
        Refusal::new(Reason::MalformedJson, format!("{what}: {e}"))
    })?;
    check_command(command, envelope.0.command)
}

fn check_command(command: &Command, body_command: Option<&RawValue>) -> Result<(), Refusal> {
    let url = command.as_str();
    let Some(raw) = body_command else {
        return Err(Refusal::new(
            Reason::CommandMismatch,
            format!("body has no CallbackCommand; the URL says {url}"),
        ));
    };
    // Usual case: a string token without escapes, whose text is its value.
    if let Some(text) = crate::fields::plain_string(raw.get()) {
        if text == url {
            return Ok(());
        }
    }
    match serde_json::from_str::<String>(raw.get()) {
        Ok(body_command) if body_command == url => Ok(()),
        Ok(body_command) => Err(Refusal::new(
            Reason::CommandMismatch,
            format!(
                "body CallbackCommand {} differs from the URL's {url}",
                shorten(&body_command)
            ),
        )),
        Err(_) => Err(Refusal::new(
            Reason::CommandMismatch,
            format!(
                "body CallbackCommand is not a string ({}); the URL says {url}",
                shorten(raw.get())
            ),
        )),
    }
}

/// The careful pass: the command's fields, with the failing field's path on error.
fn fields<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize::<_, ObjectOnly<T>>(&mut de)
        .map(|o| o.0)
        .map_err(|e| {
            Refusal::new(
                Reason::WrongFieldType,
                format!("field {}: {}", e.path(), e.inner()),
            )
        })
}

fn required(value: Option<String>, name: &str) -> Result<String, Refusal> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Refusal::new(
            Reason::MissingField,
            format!("{name} is missing or empty"),
        )),
    }
}

fn created(w: CreateWire<'_>) -> Result<Created, Refusal> {
    Ok(Created {
        battle_id: required(w.battle_id, "BattleId")?,
        operator: w.operator.map(|a| a.0),
        from_room: w.from_room,
        to_rooms: w.to_rooms.unwrap_or_default(),
        timeout_ms: w.timeout.map(|m| m.0),
        duration_ms: w.duration.map(|m| m.0),
        need_response: w.need_response.map(|f| f.0),
        extension_info: w.extension_info,
        event_time_ms: w.event_time.map(|i| i.0),
    })
}

/// Builds a `Started` or `Ended` from a [`BattleWire`]: the shared fields once, plus `extra`.
macro_rules! battle_event {
    ($ty:ident, $w:ident { $($extra:ident: $value:expr),* }) => {{
        let battle_id = required($w.battle_id, "BattleId")?;
        $ty {
            from_room: $w.from_room.and_then(|r| room(r.0, &battle_id, "FromRoomInfo")),
            to_rooms: $w
                .to_rooms
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| room(r.0, &battle_id, "ToRoomList[]"))
                .collect(),
            battle_id,
            duration_ms: $w.duration.map(|m| m.0),
            create_time_s: $w.create_time.map(|i| i.0),
            start_time_s: $w.start_time.map(|i| i.0),
            event_time_ms: $w.event_time.map(|i| i.0),
            $($extra: $value),*
        }
    }};
}

fn started(w: BattleWire<'_>) -> Result<Started, Refusal> {
    Ok(battle_event!(Started, w {}))
}

fn ended(w: BattleWire<'_>) -> Result<Ended, Refusal> {
    Ok(battle_event!(
        Ended,
        w {
            end_time_s: w.end_time.map(|i| i.0),
            op_type: w.op_type.map(|i| i.0)
        }
    ))
}

/// A room without a `RoomId` cannot be named to the engine: it is left out (and logged), so
/// the rest of the callback — the other rooms, the end itself — still counts.
fn room(w: RoomWire, battle_id: &str, place: &str) -> Option<RoomInfo> {
    match w.room_id {
        Some(room_id) if !room_id.is_empty() => Some(RoomInfo {
            room_id,
            owner_account: w.owner_account.map(|a| a.0),
            score: w.score.map(|i| i.0),
        }),
        _ => {
            tracing::warn!(battle_id, place, "room without RoomId left out");
            None
        }
    }
}

fn room_destroyed(w: DestroyRoomWire<'_>) -> Result<RoomDestroyed, Refusal> {
    let room_id = required(w.room_id, "RoomId")?;
    tracing::debug!(
        room_id,
        event_type = w.event_type.as_deref(),
        operator = w.operator.as_ref().map(|a| a.0.as_str()),
        "room destroyed"
    );
    Ok(RoomDestroyed {
        room_id,
        event_time_ms: w.event_time.map(|i| i.0),
    })
}

#[cfg(test)]
mod tests {
    //! The strict reader (`fast_json`) against serde_json: on every body the first accepts, both
    //! build the same event.

    use super::*;
    use proptest::prelude::*;

    /// If the strict reader takes `body` as a `T`, serde_json takes it too and `build` makes the
    /// same event of both. Returns whether the strict reader took it.
    fn agree<'de, T: Wire<'de>, E: PartialEq + std::fmt::Debug>(
        body: &'de [u8],
        build: fn(T) -> Result<E, Refusal>,
    ) -> bool {
        let Some(ObjectOnly(fast)) = crate::fast_json::from_slice::<ObjectOnly<T>>(body) else {
            return false;
        };
        let text = String::from_utf8_lossy(body);
        let ObjectOnly(reference) = serde_json::from_slice::<ObjectOnly<T>>(body)
            .unwrap_or_else(|e| panic!("serde_json refuses what fast_json took ({e}): {text}"));
        let command = |w: &T| w.command().map(|c| c.get().to_owned());
        assert_eq!(command(&fast), command(&reference), "{text}");
        assert_eq!(build(fast), build(reference), "{text}");
        true
    }

    /// Both battle wires on `body`; whether the strict reader took it as either.
    fn agree_all(body: &[u8]) -> bool {
        let create = agree::<CreateWire, _>(body, created);
        let end = agree::<BattleWire, _>(body, ended);
        let destroy = agree::<DestroyRoomWire, _>(body, room_destroyed);
        create || end || destroy
    }

    /// JSON text of a value: mostly within the strict subset, some outside it (escapes,
    /// floats, `-0`, leading zeros, out-of-range integers, bad escapes).
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            4 => "[a-zA-Z0-9 ._/+=é-]{0,10}".prop_map(|s| format!("\"{s}\"")),
            1 => "[a-z\"\\\\/ntu0-9]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            1 => "[a-z\\\\]{0,4}".prop_map(|s| format!("\"{s}\"")),
            3 => any::<i64>().prop_map(|n| n.to_string()),
            2 => any::<u64>().prop_map(|n| n.to_string()),
            2 => (0u32..100_000).prop_map(|n| n.to_string()),
            1 => prop_oneof![
                Just("-0"), Just("01"), Just("1.0"), Just("7.5"), Just("1e3"), Just("-"),
                Just("18446744073709551616"), Just("-9223372036854775808"), Just("true"),
                Just("false"), Just("null"), Just("nul"), Just("\"\\u0041\""),
                Just("\"12\""), Just("\"x"), Just("1 2"),
            ]
            .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|kv| object(&kv)),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "CallbackCommand", "BattleId", "Operator_Account", "FromRoomId", "ToRoomIdList",
                "Timeout", "Duration", "NeedResponse", "ExtensionInfo", "EventTime",
                "CreateTime", "StartTime", "EndTime", "OpType", "FromRoomInfo", "ToRoomList",
                "RoomId", "Owner_Account", "Score", "EventType", "Unknown",
            ])
            .prop_map(str::to_owned),
            1 => "[A-Za-z_é]{1,8}",
        ]
    }

    fn object(fields: &[(String, String)]) -> String {
        let items: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\" : {v}"))
            .collect();
        format!("{{ {} }}", items.join(",\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn strict_reader_builds_what_serde_json_builds(
            fields in prop::collection::vec((key(), value()), 0..10),
            room in prop::collection::vec((key(), value()), 0..4),
            trailing in prop::sample::select(vec!["", " ", "\n", " x", "}"]),
        ) {
            let mut fields = fields;
            fields.push(("FromRoomInfo".into(), object(&room)));
            fields.push(("ToRoomList".into(), format!("[{}]", object(&room))));
            let body = format!("{}{trailing}", object(&fields));
            agree_all(body.as_bytes());
        }
    }

    #[test]
    fn the_usual_bodies_take_the_strict_reader() {
        let create = br#"{"CallbackCommand":"Live.CallbackAfterCreateBattle","Operator_Account":"op","BattleId":"4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=","FromRoomId":"pk-3","ToRoomIdList":["pk-5"],"Timeout":30000,"Duration":60000,"NeedResponse":false,"ExtensionInfo":"extension pk","EventTime":1739954005000}"#;
        let end = br#"{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"b1","Duration":600000,"CreateTime":1739954005,"StartTime":1739954005,"EndTime":1739954065,"OpType":1,"FromRoomInfo":{"RoomId":"a","Score":1,"Owner_Account":144115245353757792},"ToRoomList":[{"RoomId":"b","Score":-2,"Owner_Account":"y"}],"EventTime":1739954065000}"#;
        let destroy = br#"{"CallbackCommand":"Live.CallbackAfterDestroyRoom","RoomId":"pk-3","EventTime":1739954065000,"EventType":"x","Operator_Account":"op","RoomInfo":{"a":[1,{"b":null}]},"Statistic":{}}"#;
        assert!(agree::<CreateWire, _>(create, created));
        assert!(agree::<BattleWire, _>(end, ended));
        assert!(agree::<DestroyRoomWire, _>(destroy, room_destroyed));
        // Outside the subset: left to serde_json.
        let escaped = br#"{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"b\u0031"}"#;
        assert!(!agree::<BattleWire, _>(escaped, ended));
    }
}
