//! Field types for Tencent's JSON, lenient where Tencent's own docs and samples disagree and
//! strict where a value would be misread.
//!
//! * [`Int`] / [`Millis`]: a JSON integer, an integral float, or a numeric string (`"30000"`).
//!   Never an object, array or bool. `Millis` refuses negatives.
//! * [`Flag`]: `true`/`false`, `0`/`1`, or those as strings.
//! * [`Account`]: a user ID as a JSON string or a JSON integer of any size, kept digit for digit
//!   as a string (read from the raw JSON token, never through `f64`).
//! * [`ObjectOnly`]: a JSON object only (serde would otherwise accept an array positionally).
//!
//! `null` is always "absent" (`Option::None`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, value::MapAccessDeserializer, Deserialize, Deserializer, Unexpected, Visitor,
};
use serde_json::value::RawValue;

/// A signed integer (`CreateTime`, `StartTime`, `EndTime` in s; `EventTime` in ms; `OpType`; `Score`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int(pub i64);

/// A non-negative count of milliseconds (`Duration`, `Timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub u64);

/// A boolean (`NeedResponse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

/// A user ID (`Owner_Account`, `Operator_Account`), as exact text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account(pub String);

/// A value that must be a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectOnly<T>(pub T);

/// The integer types [`IntVisitor`] produces.
trait Integer: Sized + TryFrom<i64> + TryFrom<u64> + std::str::FromStr {
    const EXPECTING: &'static str;
}

impl Integer for i64 {
    const EXPECTING: &'static str = "an integer (or a numeric string)";
}

impl Integer for u64 {
    const EXPECTING: &'static str = "a non-negative integer of milliseconds (or a numeric string)";
}

struct IntVisitor<T>(PhantomData<T>);

impl<'de, T: Integer> Visitor<'de> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // 2^63 as f64; integral floats strictly inside ±2^63 convert exactly.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.is_finite() && v.fract() == 0.0 && v > -LIMIT && v < LIMIT {
            #[allow(clippy::cast_possible_truncation)]
            return self.visit_i64(v as i64);
        }
        Err(E::invalid_value(Unexpected::Float(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let t = v.trim();
        let digits = t.strip_prefix('-').unwrap_or(t);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = t.parse::<T>() {
                return Ok(n);
            }
        }
        Err(E::invalid_value(Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Int, D::Error> {
        d.deserialize_any(IntVisitor::<i64>(PhantomData)).map(Int)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(IntVisitor::<u64>(PhantomData))
            .map(Millis)
    }
}

struct FlagVisitor;

impl<'de> Visitor<'de> for FlagVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean (true/false, 0/1)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" => Ok(true),
            t if t.eq_ignore_ascii_case("false") || t == "0" => Ok(false),
            _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        d.deserialize_any(FlagVisitor).map(Flag)
    }
}

const ACCOUNT_EXPECTING: &str = "a user ID as a string or an integer";

struct AccountExpecting;

impl de::Expected for AccountExpecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ACCOUNT_EXPECTING)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Account, D::Error> {
        // The raw token keeps every digit of an integer beyond 2^53, or beyond u64.
        let raw = <&'de RawValue>::deserialize(d)?;
        let text = raw.get();
        if let Some(plain) = plain_string(text) {
            return Ok(Account(plain.to_owned()));
        }
        if text.starts_with('"') {
            return serde_json::from_str::<String>(text)
                .map(Account)
                .map_err(de::Error::custom);
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Account(text.to_owned()));
        }
        let unexpected = match text.as_bytes().first() {
            Some(b'{') => Unexpected::Map,
            Some(b'[') => Unexpected::Seq,
            Some(b't') => Unexpected::Bool(true),
            Some(b'f') => Unexpected::Bool(false),
            _ => Unexpected::Other("a non-integer number"),
        };
        Err(de::Error::invalid_type(unexpected, &AccountExpecting))
    }
}

/// The value of a raw JSON string token without escapes (`"abc"` → `abc`): its text between the
/// quotes is exactly its value, with no second parse. `None` for anything else (an escaped
/// string, a number, …), which the caller parses the full way.
pub(crate) fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    // A token from the parser: without a backslash, no quote can be inside either.
    (!inner.as_bytes().contains(&b'\\')).then_some(inner)
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ObjectOnly<T>, D::Error> {
        d.deserialize_map(ObjectVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, String> {
        serde_json::from_str::<T>(json).map_err(|e| e.to_string())
    }

    // Account borrows from the input, so it gets its own helper.
    fn account(json: &str) -> Result<Option<String>, String> {
        serde_json::from_str::<Option<Account>>(json)
            .map(|a| a.map(|a| a.0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ints() {
        assert_eq!(parse::<Int>("1739954005"), Ok(Int(1_739_954_005)));
        assert_eq!(parse::<Int>("-3"), Ok(Int(-3)));
        assert_eq!(parse::<Int>("\" 42 \""), Ok(Int(42)));
        assert_eq!(parse::<Int>("7.0"), Ok(Int(7)));
        assert!(parse::<Int>("7.5").is_err());
        assert!(parse::<Int>("1e300").is_err());
        assert!(parse::<Int>("99999999999999999999").is_err());
        assert!(parse::<Int>("{}").is_err());
        assert!(parse::<Int>("true").is_err());
        assert!(parse::<Int>("\"12a\"").is_err());
        assert!(parse::<Int>("\"+12\"").is_err());
        assert_eq!(parse::<Option<Int>>("null"), Ok(None));
    }

    #[test]
    fn millis() {
        assert_eq!(parse::<Millis>("30000"), Ok(Millis(30000)));
        assert_eq!(parse::<Millis>("\"30000\""), Ok(Millis(30000)));
        let e = parse::<Millis>("-1").unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
        let e = parse::<Millis>("{\"a\":1}").unwrap_err();
        assert!(e.contains("invalid type: map"), "{e}");
        assert!(parse::<Millis>("\"-5\"").is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(parse::<Flag>("false"), Ok(Flag(false)));
        assert_eq!(parse::<Flag>("1"), Ok(Flag(true)));
        assert_eq!(parse::<Flag>("\"TRUE\""), Ok(Flag(true)));
        assert_eq!(parse::<Flag>("\"0\""), Ok(Flag(false)));
        assert!(parse::<Flag>("2").is_err());
        assert!(parse::<Flag>("-1").is_err());
        assert!(parse::<Flag>("[]").is_err());
    }

    #[test]
    fn accounts_keep_every_digit() {
        assert_eq!(account("\"brennan\""), Ok(Some("brennan".into())));
        assert_eq!(account("\"a\\u0041\""), Ok(Some("aA".into())));
        assert_eq!(
            account("144115245353757792"),
            Ok(Some("144115245353757792".into()))
        );
        assert_eq!(
            account("1234567890123456789012345"),
            Ok(Some("1234567890123456789012345".into()))
        );
        assert_eq!(account("-12"), Ok(Some("-12".into())));
        assert_eq!(account("null"), Ok(None));
        for bad in ["1.5", "1e5", "{}", "[1]", "true"] {
            let e = account(bad).unwrap_err();
            assert!(e.contains(ACCOUNT_EXPECTING), "{bad}: {e}");
        }
    }

    #[test]
    fn plain_strings_are_their_text() {
        for (raw, plain) in [
            ("\"abc\"", Some("abc")),
            ("\"\"", Some("")),
            ("\"é 1\"", Some("é 1")),
            ("\"a\\u0041\"", None),
            ("\"a\\\"b\"", None),
            ("12", None),
            ("\"", None),
            ("null", None),
        ] {
            assert_eq!(plain_string(raw), plain, "{raw}");
            if let Some(p) = plain {
                assert_eq!(serde_json::from_str::<String>(raw).unwrap(), p);
            }
        }
    }

    #[test]
    fn object_only_refuses_arrays() {
        #[derive(serde::Deserialize, Debug)]
        struct S {
            #[serde(rename = "A")]
            _a: String,
        }
        assert!(parse::<ObjectOnly<S>>("{\"A\":\"x\"}").is_ok());
        let e = parse::<ObjectOnly<S>>("[\"x\"]").unwrap_err();
        assert!(e.contains("expected a JSON object"), "{e}");
    }
}
