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

/// The command's fields. Fast path: one plain pass. Only when it fails are the careful passes
/// run, to tell malformed JSON (4001) and a wrong command (4002) from a wrong field (4222, with
/// the field's path).
fn wire<'de, T: Wire<'de>>(command: &Command, body: &'de [u8]) -> Result<T, Refusal> {
    if let Ok(ObjectOnly(w)) = serde_json::from_slice::<ObjectOnly<T>>(body) {
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
