//! Who may call: the served SdkAppIds, their callback tokens, `Sign` and `RequestTime`.
//!
//! Tencent signs a callback as `Sign = hex(sha256(Token ‖ RequestTime))`, RequestTime being the
//! decimal Unix second it signed at. The body is not covered, so every callback of one second
//! carries the same Sign: a repeated Sign is *not* a replay and is never refused for that
//! (duplicates are the engine's business, by command and BattleId).
//!
//! Checks, in order: the query parses; `SdkAppid` is present and served; `CallbackCommand` is
//! present; then, for an app with a token, `Sign` and `RequestTime` are present, the Sign
//! matches a valid token (constant time, hex in either case), and only then RequestTime is a
//! decimal number within the window of the engine clock.
//!
//! Rotation: [`Verifier::rotate_token`] makes the new token current and keeps the old one valid
//! for the configured overlap, measured on the engine clock. An `AppConfig::previous_token` is
//! treated the same way from start-up.

use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::command::Command;
use crate::config::{ConfigError, IngestConfig};
use crate::query::CallbackQuery;
use crate::reply::{Reason, Refusal};

/// `hex(sha256(token + request_time))`, lowercase: the `Sign` Tencent sends.
///
/// ```
/// // The documented example (fixtures/tencent/signature.json).
/// assert_eq!(
///     livebattle_ingest::compute_sign("xxxxyyyy", "1669872112"),
///     "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
/// );
/// ```
pub fn compute_sign(token: &str, request_time: &str) -> String {
    hex::encode(digest(token, request_time))
}

fn digest(token: &str, request_time: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(request_time.as_bytes());
    h.finalize().into()
}

/// Whether `sign` (64 hex digits, any case) is the Sign of `token` at `request_time`. The
/// digest comparison is constant-time.
pub fn sign_matches(token: &str, request_time: &str, sign: &str) -> bool {
    decode_sign(sign)
        .map(|got| bool::from(matches_choice(token, request_time, &got)))
        .unwrap_or(false)
}

/// The value of each hex digit (either case); `INVALID` for any other byte.
const HEX: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0x10;

/// The 32 bytes of a Sign: 64 hex digits in either case, surrounding whitespace ignored. One
/// table lookup per digit, and one validity test at the end.
fn decode_sign(sign: &str) -> Option<[u8; 32]> {
    let digits = sign.trim().as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        invalid |= hi | lo;
        *byte = (hi << 4) | lo;
    }
    (invalid & INVALID == 0).then_some(out)
}

fn matches_choice(token: &str, request_time: &str, got: &[u8; 32]) -> Choice {
    digest(token, request_time).ct_eq(got)
}

/// A token rotated out, and until when (engine ms) it is still accepted. `token: None` means
/// the app had auth off: unsigned requests stay accepted until then.
struct Previous {
    token: Option<String>,
    until_ms: i64,
}

/// One app's tokens.
struct AppKeys {
    current: Option<String>,
    previous: Option<Previous>,
    /// The current token's digest for the latest `RequestTime` seen: Tencent signs with the
    /// second it sends in, so under load most callbacks share it and skip the SHA-256. Reset
    /// when the token changes (under the write lock).
    latest: Mutex<Option<(Box<str>, [u8; 32])>>,
}

impl AppKeys {
    fn new(current: Option<String>, previous: Option<Previous>) -> AppKeys {
        AppKeys {
            current,
            previous,
            latest: Mutex::new(None),
        }
    }

    /// `digest(current, request_time)`, from the one-entry cache when it holds that time. A
    /// busy cache (another thread in it) is not waited for: the digest is computed instead.
    fn current_digest(&self, current: &str, request_time: &str) -> [u8; 32] {
        let Ok(mut latest) = self.latest.try_lock() else {
            return digest(current, request_time);
        };
        match &*latest {
            Some((t, d)) if **t == *request_time => *d,
            _ => {
                let d = digest(current, request_time);
                *latest = Some((request_time.into(), d));
                d
            }
        }
    }
}

/// A request that passed the query and signature checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The served SdkAppId it came for.
    pub sdk_app_id: String,
    /// The URL's command.
    pub command: Command,
}

/// The served apps and their tokens; checks a callback's query. Cheap to share behind an `Arc`;
/// rotations take a short write lock.
pub struct Verifier {
    /// Sorted by SdkAppId (a binary search is cheaper than hashing the id of every request).
    apps: RwLock<Vec<(String, AppKeys)>>,
    window_ms: i128,
    overlap_ms: i64,
    body_limit: usize,
}

fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Verifier {
    /// Builds the verifier from a validated config. `now_ms` (the engine clock) starts the
    /// overlap of any `previous_token`.
    pub fn new(config: &IngestConfig, now_ms: i64) -> Result<Verifier, ConfigError> {
        config.validate()?;
        let overlap_ms = millis_i64(config.token_overlap);
        let mut apps: Vec<(String, AppKeys)> = config
            .apps
            .iter()
            .map(|app| {
                let previous = app.previous_token.clone().map(|t| Previous {
                    token: Some(t),
                    until_ms: now_ms.saturating_add(overlap_ms),
                });
                let keys = AppKeys::new(app.token.clone(), previous);
                (app.sdk_app_id.clone(), keys)
            })
            .collect();
        // Ids are unique (validated above).
        apps.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Verifier {
            apps: RwLock::new(apps),
            window_ms: i128::try_from(config.signature_window.as_millis()).unwrap_or(i128::MAX),
            overlap_ms,
            body_limit: config.body_limit,
        })
    }

    /// The configured body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// Refuses a body of `len` bytes when it is over the limit.
    pub fn check_body_size(&self, len: usize) -> Result<(), Refusal> {
        if len > self.body_limit {
            return Err(body_too_large(self.body_limit));
        }
        Ok(())
    }

    /// Whether this SdkAppId is served.
    pub fn serves(&self, sdk_app_id: &str) -> bool {
        app_index(&self.read(), sdk_app_id).is_some()
    }

    /// Makes `new_token` the app's token (`None` turns token auth off) and keeps the current one
    /// valid for the configured overlap from `now_ms`. Rotating to the current token is a no-op.
    pub fn rotate_token(
        &self,
        sdk_app_id: &str,
        new_token: Option<String>,
        now_ms: i64,
    ) -> Result<(), ConfigError> {
        if new_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::EmptyToken(sdk_app_id.to_owned()));
        }
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        let keys = app_index(&apps, sdk_app_id)
            .and_then(|i| apps.get_mut(i))
            .map(|(_, keys)| keys)
            .ok_or_else(|| ConfigError::UnknownSdkAppId(sdk_app_id.to_owned()))?;
        if keys.current == new_token {
            return Ok(());
        }
        let old = std::mem::replace(&mut keys.current, new_token);
        *keys
            .latest
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        keys.previous = Some(Previous {
            token: old,
            until_ms: now_ms.saturating_add(self.overlap_ms),
        });
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(String, AppKeys)>> {
        self.apps.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks one callback's parsed query at engine time `now_ms`: the app, the command, and the
    /// signature with its freshness.
    pub fn authorize(&self, query: &CallbackQuery<'_>, now_ms: i64) -> Result<Authorized, Refusal> {
        let command = self.authorize_command(query, now_ms)?;
        Ok(Authorized {
            // `authorize_command` refused a missing SdkAppid.
            sdk_app_id: query.sdk_app_id.as_deref().unwrap_or_default().to_owned(),
            command,
        })
    }

    /// [`Verifier::authorize`] without copying the SdkAppId: the URL's command when every check
    /// passed (the handler's path).
    pub(crate) fn authorize_command(
        &self,
        query: &CallbackQuery<'_>,
        now_ms: i64,
    ) -> Result<Command, Refusal> {
        let sdk_app_id = match query.sdk_app_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Err(Refusal::new(
                    Reason::MissingSdkAppId,
                    "query parameter SdkAppid is missing",
                ))
            }
        };
        // Hashing under the read lock is fine: only a rotation takes the write lock.
        let apps = self.read();
        let keys = app_index(&apps, sdk_app_id)
            .and_then(|i| apps.get(i))
            .map(|(_, keys)| keys);
        let keys = keys.ok_or_else(|| {
            Refusal::new(
                Reason::ForeignSdkAppId,
                format!("SdkAppid {} is not served here", shorten(sdk_app_id)),
            )
        })?;
        let command = match query.callback_command.as_deref() {
            Some(c) if !c.is_empty() => Command::parse(c),
            _ => {
                return Err(Refusal::new(
                    Reason::MissingCommand,
                    "query parameter CallbackCommand is missing",
                ))
            }
        };
        self.check_signature(keys, query, now_ms)?;
        Ok(command)
    }

    fn check_signature(
        &self,
        keys: &AppKeys,
        query: &CallbackQuery<'_>,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        let Some(current) = keys.current.as_deref() else {
            return Ok(()); // token auth off for this app
        };
        let previous = keys.previous.as_ref().filter(|p| now_ms <= p.until_ms);
        let (sign, request_time) = match (query.sign.as_deref(), query.request_time.as_deref()) {
            (Some(s), Some(t)) if !s.is_empty() && !t.is_empty() => (s, t),
            _ => {
                // Auth was off until a rotation moments ago: unsigned still passes in the overlap.
                if previous.is_some_and(|p| p.token.is_none()) {
                    return Ok(());
                }
                return Err(Refusal::new(
                    Reason::MissingSignature,
                    "this SdkAppid requires Sign and RequestTime query parameters",
                ));
            }
        };
        let Some(got) = decode_sign(sign) else {
            return Err(Refusal::new(
                Reason::BadSignature,
                "Sign is not 64 hex digits",
            ));
        };
        let mut ok = keys.current_digest(current, request_time).ct_eq(&got);
        if let Some(old) = previous.and_then(|p| p.token.as_deref()) {
            ok |= matches_choice(old, request_time, &got);
        }
        if !bool::from(ok) {
            return Err(Refusal::new(
                Reason::BadSignature,
                "Sign does not match sha256(token + RequestTime) for this SdkAppid",
            ));
        }
        self.check_fresh(request_time, now_ms)
    }

    fn check_fresh(&self, request_time: &str, now_ms: i64) -> Result<(), Refusal> {
        let seconds = parse_unix_seconds(request_time).ok_or_else(|| {
            Refusal::new(
                Reason::MalformedRequestTime,
                format!(
                    "RequestTime {:?} is not a decimal Unix time in seconds",
                    shorten(request_time)
                ),
            )
        })?;
        let now_s = i128::from(now_ms.div_euclid(1000));
        let skew_ms = (now_s - seconds).abs() * 1000;
        if skew_ms > self.window_ms {
            return Err(Refusal::new(
                Reason::StaleRequestTime,
                format!(
                    "RequestTime {seconds} is {} s away from now ({now_s}); the window is {} s",
                    skew_ms / 1000,
                    self.window_ms / 1000
                ),
            ));
        }
        Ok(())
    }
}

/// The 413 refusal for a body over `limit` bytes.
pub(crate) fn body_too_large(limit: usize) -> Refusal {
    Refusal::new(
        Reason::BodyTooLarge,
        format!("body is larger than the limit of {limit} bytes"),
    )
}

/// Digits only (at most 19, so it fits an i64), no sign or spaces.
fn parse_unix_seconds(s: &str) -> Option<i128> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    // At most 19 digits: below 10^19, within u64.
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(i128::from(n))
}

/// The position of `sdk_app_id` in the sorted app list.
fn app_index(apps: &[(String, AppKeys)], sdk_app_id: &str) -> Option<usize> {
    apps.binary_search_by(|(id, _)| id.as_str().cmp(sdk_app_id))
        .ok()
}

/// Echoes outside text in ErrorInfo at most 64 characters long.
pub(crate) fn shorten(s: &str) -> String {
    shorten_cow(s).into_owned()
}

/// [`shorten`] without an allocation when `s` is short enough (for span fields).
pub(crate) fn shorten_cow(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return std::borrow::Cow::Borrowed(s); // at most 64 bytes: at most 64 chars
    }
    match s.char_indices().nth(MAX) {
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..i])),
        None => std::borrow::Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;

    const T0: i64 = 1_669_872_112_000; // RequestTime of the documented example, in ms
    const SIGN: &str = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";

    fn verifier(apps: Vec<AppConfig>) -> Verifier {
        let config = IngestConfig {
            apps,
            ..IngestConfig::default()
        };
        Verifier::new(&config, T0).unwrap()
    }

    impl Verifier {
        fn check(&self, raw: &str, now_ms: i64) -> Result<Authorized, Refusal> {
            self.authorize(&CallbackQuery::parse(raw)?, now_ms)
        }
    }

    fn q(app: &str, sign: &str, time: &str) -> String {
        format!("SdkAppid={app}&CallbackCommand=Live.CallbackAfterEndBattle&contenttype=json&Sign={sign}&RequestTime={time}")
    }

    #[test]
    fn documented_example() {
        assert_eq!(compute_sign("xxxxyyyy", "1669872112"), SIGN);
        assert!(sign_matches("xxxxyyyy", "1669872112", SIGN));
        assert!(sign_matches(
            "xxxxyyyy",
            "1669872112",
            &SIGN.to_ascii_uppercase()
        ));
        assert!(!sign_matches("xxxyyy", "1669872112", SIGN)); // the doc's typo'd token
        assert!(!sign_matches("xxxxyyyy", "1669872113", SIGN));
        assert!(!sign_matches("xxxxyyyy", "1669872112", "zz"));
    }

    #[test]
    fn order_of_checks() {
        let v = verifier(vec![AppConfig::with_token("1", "xxxxyyyy")]);
        let reason = |query: &str, now: i64| v.check(query, now).map(|_| ()).unwrap_err().reason;
        assert!(v.check(&q("1", SIGN, "1669872112"), T0).is_ok());
        assert_eq!(reason("CallbackCommand=A.B", T0), Reason::MissingSdkAppId);
        assert_eq!(
            reason(&q("2", SIGN, "1669872112"), T0),
            Reason::ForeignSdkAppId
        );
        assert_eq!(reason("SdkAppid=1", T0), Reason::MissingCommand);
        assert_eq!(
            reason("SdkAppid=1&CallbackCommand=A.B", T0),
            Reason::MissingSignature
        );
        assert_eq!(
            reason(&q("1", SIGN, "1669872113"), T0),
            Reason::BadSignature
        );
        // A bad signature is reported even when the time is stale too: signature first.
        assert_eq!(
            reason(&q("1", &"0".repeat(64), "1669872112"), T0 + 3_600_000),
            Reason::BadSignature
        );
        assert_eq!(
            reason(&q("1", SIGN, "1669872112"), T0 + 61_000),
            Reason::StaleRequestTime
        );
        assert_eq!(
            reason(&q("1", SIGN, "1669872112"), T0 - 61_000),
            Reason::StaleRequestTime
        );
        assert!(v.check(&q("1", SIGN, "1669872112"), T0 + 60_999).is_ok());
        assert!(v.check(&q("1", SIGN, "1669872112"), T0 - 60_000).is_ok());
        let odd = compute_sign("xxxxyyyy", "+1669872112");
        assert_eq!(
            reason(&q("1", &odd, "%2B1669872112"), T0),
            Reason::MalformedRequestTime
        );
    }

    #[test]
    fn app_without_token_ignores_sign() {
        let v = verifier(vec![AppConfig::new("7")]);
        assert!(v.check("SdkAppid=7&CallbackCommand=A.B", T0).is_ok());
        assert!(v.check(&q("7", "junk", "junk"), T0).is_ok());
    }

    #[test]
    fn rotation_keeps_old_token_for_the_overlap() {
        let v = verifier(vec![AppConfig::with_token("1", "xxxxyyyy")]);
        v.rotate_token("1", Some("new".into()), T0).unwrap();
        let new_sign = compute_sign("new", "1669872112");
        assert!(v.check(&q("1", &new_sign, "1669872112"), T0).is_ok());
        assert!(v.check(&q("1", SIGN, "1669872112"), T0).is_ok());
        // 5 min later the old token is gone (the RequestTime is re-signed to stay fresh).
        let later = T0 + 300_001;
        let t = (later / 1000).to_string();
        assert!(v
            .check(&q("1", &compute_sign("new", &t), &t), later)
            .is_ok());
        let e = v
            .check(&q("1", &compute_sign("xxxxyyyy", &t), &t), later)
            .unwrap_err();
        assert_eq!(e.reason, Reason::BadSignature);
        assert_eq!(
            v.rotate_token("9", Some("x".into()), T0),
            Err(ConfigError::UnknownSdkAppId("9".into()))
        );
        assert_eq!(
            v.rotate_token("1", Some(String::new()), T0),
            Err(ConfigError::EmptyToken("1".into()))
        );
    }

    #[test]
    fn previous_token_from_config_and_enabling_auth() {
        let mut app = AppConfig::with_token("1", "new");
        app.previous_token = Some("xxxxyyyy".into());
        let v = verifier(vec![app, AppConfig::new("2")]);
        assert!(v.check(&q("1", SIGN, "1669872112"), T0).is_ok());
        // App 2 turns auth on: unsigned requests still pass during the overlap only.
        v.rotate_token("2", Some("t2".into()), T0).unwrap();
        assert!(v.check("SdkAppid=2&CallbackCommand=A.B", T0 + 1000).is_ok());
        let e = v
            .check("SdkAppid=2&CallbackCommand=A.B", T0 + 300_001)
            .unwrap_err();
        assert_eq!(e.reason, Reason::MissingSignature);
    }

    #[test]
    fn the_digest_cache_never_changes_a_verdict() {
        let v = verifier(vec![AppConfig::with_token("1", "xxxxyyyy")]);
        let t = "1669872112";
        // Same second again and again (cached), a wrong sign in that second, another second.
        for _ in 0..3 {
            assert!(v.check(&q("1", SIGN, t), T0).is_ok());
        }
        let wrong = compute_sign("other", t);
        assert_eq!(
            v.check(&q("1", &wrong, t), T0).unwrap_err().reason,
            Reason::BadSignature
        );
        let t2 = "1669872113";
        assert!(v
            .check(&q("1", &compute_sign("xxxxyyyy", t2), t2), T0)
            .is_ok());
        assert_eq!(
            v.check(&q("1", SIGN, t2), T0).unwrap_err().reason,
            Reason::BadSignature
        );
        // A rotation with no overlap forgets the old token's cached digest at once.
        let config = IngestConfig {
            apps: vec![AppConfig::with_token("1", "xxxxyyyy")],
            token_overlap: Duration::ZERO,
            ..IngestConfig::default()
        };
        let v = Verifier::new(&config, T0).unwrap();
        assert!(v.check(&q("1", SIGN, t), T0).is_ok());
        v.rotate_token("1", Some("new".into()), T0).unwrap();
        assert_eq!(
            v.check(&q("1", SIGN, t), T0 + 1).unwrap_err().reason,
            Reason::BadSignature
        );
        assert!(v.check(&q("1", &compute_sign("new", t), t), T0 + 1).is_ok());
    }

    #[test]
    fn decode_sign_matches_the_hex_crate() {
        let upper = SIGN.to_ascii_uppercase();
        let padded = format!("  {SIGN}\n");
        let bad_digit = SIGN.replacen('7', "g", 1);
        let short = &SIGN[..62];
        let long = format!("{SIGN}00");
        for sign in [SIGN, &upper, &padded, &bad_digit, short, &long, "", "é"] {
            let mut reference = [0u8; 32];
            let expected = hex::decode_to_slice(sign.trim(), &mut reference)
                .ok()
                .map(|()| reference);
            assert_eq!(decode_sign(sign), expected, "{sign:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_sign_matches_the_hex_crate_on_any_input(sign in "[0-9a-fA-FgG ]{62,66}") {
            let mut reference = [0u8; 32];
            let expected = hex::decode_to_slice(sign.trim(), &mut reference)
                .ok()
                .map(|()| reference);
            proptest::prop_assert_eq!(decode_sign(&sign), expected);
        }

        #[test]
        fn unix_seconds_parse_like_i128(s in "[0-9+-]{0,21}") {
            let expected = if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<i128>().ok()
            } else {
                None
            };
            proptest::prop_assert_eq!(parse_unix_seconds(&s), expected);
        }
    }

    #[test]
    fn shorten_caps_echoed_text() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), 65);
    }
}
