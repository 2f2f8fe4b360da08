//! Tencent's wire format: the callback query string and its signature, battle ids, and the three
//! battle webhook bodies with Tencent's field names and units.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `Live.CallbackAfterCreateBattle`.
pub const CREATE: &str = "Live.CallbackAfterCreateBattle";
/// `Live.CallbackAfterStartBattle`.
pub const START: &str = "Live.CallbackAfterStartBattle";
/// `Live.CallbackAfterEndBattle`.
pub const END: &str = "Live.CallbackAfterEndBattle";

/// `Sign = lowercase hex(sha256(token ‖ RequestTime))`.
pub fn sign(token: &str, request_time_s: i64) -> String {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(request_time_s.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Who triggered the event, as the query string tells it.
#[derive(Clone, Debug)]
pub struct Origin {
    /// `ClientIP`.
    pub client_ip: String,
    /// `OptPlatform`.
    pub platform: &'static str,
}

/// The platforms Tencent names in `OptPlatform`.
pub const PLATFORMS: [&str; 5] = ["RESTAPI", "Android", "iOS", "Web", "Unknown"];

/// The full callback URL: `{base}?SdkAppid=..&CallbackCommand=..&contenttype=json&ClientIP=..
/// &OptPlatform=..[&Sign=..&RequestTime=..]`.
pub fn callback_url(
    base: &str,
    sdk_app_id: &str,
    command: &str,
    origin: &Origin,
    token: Option<&str>,
    now_s: i64,
) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{sep}SdkAppid={}&CallbackCommand={}&contenttype=json&ClientIP={}&OptPlatform={}",
        pct_encode(sdk_app_id),
        pct_encode(command),
        pct_encode(&origin.client_ip),
        pct_encode(origin.platform),
    );
    if let Some(token) = token {
        url.push_str(&format!("&Sign={}&RequestTime={now_s}", sign(token, now_s)));
    }
    url
}

/// Percent-encodes everything but RFC 3986's unreserved characters (so a battle id's `/`, `+`
/// and `=` survive as one path segment).
pub fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A battle id shaped like Tencent's: standard base64 of 32 bytes (44 characters, may hold `/`
/// and `+`, ends in `=`). Like Tencent's samples, ids of one app share a prefix.
pub fn battle_id(rng: &mut fastrand::Rng) -> String {
    // The first 15 bytes of Tencent's sample ids ("4siHsNsWN/T3aub9zKra" in base64).
    const PREFIX: [u8; 15] = [
        0xe2, 0xc8, 0x87, 0xb0, 0xdb, 0x16, 0x37, 0xf4, 0xf7, 0x6a, 0xe6, 0xfd, 0xcc, 0xaa, 0xda,
    ];
    let mut bytes = [0u8; 32];
    bytes[..15].copy_from_slice(&PREFIX);
    rng.fill(&mut bytes[15..]);
    base64(&bytes)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A room in a Start/End body: `{RoomId, Owner_Account}` (+ `Score` in End).
#[derive(Clone, Debug)]
pub struct Room {
    /// `RoomId`.
    pub room_id: String,
    /// `Owner_Account`: a JSON string, or (as in Tencent's End sample) a big JSON integer.
    pub owner: Value,
    /// `Score`, for End.
    pub score: i64,
}

impl Room {
    fn start_json(&self) -> Value {
        json!({ "RoomId": self.room_id, "Owner_Account": self.owner })
    }

    fn end_json(&self) -> Value {
        json!({ "RoomId": self.room_id, "Score": self.score, "Owner_Account": self.owner })
    }
}

/// The Create body. `Timeout`, `Duration` in ms; `EventTime` in ms.
#[derive(Clone, Debug)]
pub struct Create<'a> {
    pub battle_id: &'a str,
    pub operator: &'a str,
    pub from_room: &'a str,
    pub to_rooms: &'a [String],
    pub timeout_ms: u64,
    pub duration_ms: u64,
    pub need_response: bool,
    pub extension_info: &'a str,
    pub event_time_ms: i64,
}

impl Create<'_> {
    /// Tencent's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "CallbackCommand": CREATE,
            "Operator_Account": self.operator,
            "BattleId": self.battle_id,
            "FromRoomId": self.from_room,
            "ToRoomIdList": self.to_rooms,
            "Timeout": self.timeout_ms,
            "Duration": self.duration_ms,
            "NeedResponse": self.need_response,
            "ExtensionInfo": self.extension_info,
            "EventTime": self.event_time_ms,
        })
    }
}

/// The Start body: `CreateTime`/`StartTime` in seconds, `Duration` and `EventTime` in ms.
#[derive(Clone, Debug)]
pub struct Start<'a> {
    pub battle_id: &'a str,
    pub duration_ms: u64,
    pub create_time_s: i64,
    pub start_time_s: i64,
    pub from: &'a Room,
    pub to: &'a [Room],
    pub event_time_ms: i64,
}

impl Start<'_> {
    /// Tencent's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "CallbackCommand": START,
            "BattleId": self.battle_id,
            "Duration": self.duration_ms,
            "CreateTime": self.create_time_s,
            "StartTime": self.start_time_s,
            "FromRoomInfo": self.from.start_json(),
            "ToRoomList": self.to.iter().map(Room::start_json).collect::<Vec<_>>(),
            "EventTime": self.event_time_ms,
        })
    }
}

/// The End body: the Start fields (with final scores in the rooms) plus `EndTime` (seconds) and
/// `OpType` 0/1/2.
#[derive(Clone, Debug)]
pub struct End<'a> {
    /// The fields End shares with Start; its rooms carry their final `Score`.
    pub common: Start<'a>,
    pub end_time_s: i64,
    pub op_type: i64,
}

impl End<'_> {
    /// Tencent's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = self.common.to_json();
        v["CallbackCommand"] = json!(END);
        v["EndTime"] = json!(self.end_time_s);
        v["OpType"] = json!(self.op_type);
        v["FromRoomInfo"] = self.common.from.end_json();
        v["ToRoomList"] = self.common.to.iter().map(Room::end_json).collect();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_tencents_worked_example() {
        assert_eq!(
            sign("xxxxyyyy", 1669872112),
            "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
        );
    }

    #[test]
    fn url_carries_every_query_parameter() {
        let origin = Origin {
            client_ip: "203.0.113.7".into(),
            platform: "RESTAPI",
        };
        let url = callback_url(
            "http://127.0.0.1:8080/callback",
            "1400000001",
            END,
            &origin,
            Some("xxxxyyyy"),
            1669872112,
        );
        assert_eq!(
            url,
            "http://127.0.0.1:8080/callback?SdkAppid=1400000001\
             &CallbackCommand=Live.CallbackAfterEndBattle&contenttype=json\
             &ClientIP=203.0.113.7&OptPlatform=RESTAPI\
             &Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061\
             &RequestTime=1669872112"
        );
        let unsigned = callback_url("http://h/cb", "1", CREATE, &origin, None, 0);
        assert!(!unsigned.contains("Sign=") && !unsigned.contains("RequestTime="));
    }

    #[test]
    fn battle_ids_look_like_tencents() {
        let mut rng = fastrand::Rng::with_seed(1);
        let ids: Vec<String> = (0..200).map(|_| battle_id(&mut rng)).collect();
        for id in &ids {
            assert_eq!(id.len(), 44, "{id}");
            assert!(id.starts_with("4siHsNsWN/T3aub9zKra"), "{id}");
            assert!(id.ends_with('=') && !id.ends_with("=="), "{id}");
        }
        assert!(ids.iter().any(|id| id[20..].contains('/')));
        assert!(ids.iter().any(|id| id.contains('+')));
    }

    #[test]
    fn base64_and_percent_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        assert_eq!(pct_encode("4s/T+d/3M="), "4s%2FT%2Bd%2F3M%3D");
        assert_eq!(pct_encode("a-b.c_d~"), "a-b.c_d~");
    }

    #[test]
    fn bodies_use_tencents_names_and_units() {
        let from = Room {
            room_id: "pk-3".into(),
            owner: json!(144115245353757792u64),
            score: 7,
        };
        let to = [Room {
            room_id: "pk-5".into(),
            owner: json!("tandy"),
            score: 3,
        }];
        let end = End {
            common: Start {
                battle_id: "b",
                duration_ms: 30_000,
                create_time_s: 1739956115,
                start_time_s: 1739956115,
                from: &from,
                to: &to,
                event_time_ms: 1739956146119,
            },
            end_time_s: 1739956145,
            op_type: 0,
        }
        .to_json();
        assert_eq!(
            end.to_string(),
            r#"{"BattleId":"b","CallbackCommand":"Live.CallbackAfterEndBattle","CreateTime":1739956115,"Duration":30000,"EndTime":1739956145,"EventTime":1739956146119,"FromRoomInfo":{"Owner_Account":144115245353757792,"RoomId":"pk-3","Score":7},"OpType":0,"StartTime":1739956115,"ToRoomList":[{"Owner_Account":"tandy","RoomId":"pk-5","Score":3}]}"#
        );
        let start = Start {
            battle_id: "b",
            duration_ms: 60_000,
            create_time_s: 1,
            start_time_s: 2,
            from: &from,
            to: &to,
            event_time_ms: 2_000,
        }
        .to_json();
        assert!(start.get("OpType").is_none() && start["FromRoomInfo"].get("Score").is_none());
        let create = Create {
            battle_id: "b",
            operator: "op",
            from_room: "pk-3",
            to_rooms: &["pk-5".to_owned()],
            timeout_ms: 10_000,
            duration_ms: 60_000,
            need_response: true,
            extension_info: "x",
            event_time_ms: 5,
        }
        .to_json();
        assert_eq!(create["ToRoomIdList"], json!(["pk-5"]));
        assert_eq!(create["Timeout"], json!(10_000));
        assert_eq!(create["NeedResponse"], json!(true));
    }
}
