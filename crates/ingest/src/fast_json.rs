//! A strict, fast JSON reader for the webhook bodies, behind the same `Deserialize` impls as
//! serde_json (the wire structs of `payload.rs` and the field types of `fields.rs`: the rules
//! stay there, in one place).
//!
//! It reads a subset of JSON: strings without escapes or control characters, integers without
//! fraction or exponent that fit `u64` (`i64` when negative), `true`, `false`, `null`, and
//! objects and arrays nested at most [`MAX_DEPTH`] deep. Anything else — an escape, a float, a
//! syntax error, a type the target refuses — is a failure without a diagnosis: the caller then
//! reads the body with serde_json, which accepts all of JSON and names what is wrong. What this
//! reader accepts, it hands to the visitors exactly as serde_json does (`visit_borrowed_str`,
//! `visit_u64` for non-negative and `visit_i64` for negative integers, `visit_bool`, `visit_unit`
//! for null, maps, sequences, and serde_json's `RawValue` as the value's raw text), so the value
//! built is the same (the tests of `payload.rs` compare the two on generated bodies).
//!
//! Why: serde_json's general machinery (UTF-8 re-validation and escape scanning of every key,
//! number parsing for floats) cost ~10k instructions per webhook, a fifth of the request.

use std::fmt;

use serde::de::value::{BorrowedBytesDeserializer, BorrowedStrDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Deepest nesting of objects and arrays read (a Tencent body nests two deep).
pub(crate) const MAX_DEPTH: u8 = 16;

/// serde_json's name for its `RawValue` newtype: a `&RawValue` asks the deserializer for the
/// raw text of the next value under this name.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// `body` as a `T`, when it is within the subset and `T` accepts it; `None` otherwise.
pub(crate) fn from_slice<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Option<T> {
    let mut reader = Reader {
        input: body,
        pos: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut reader).ok()?;
    reader.skip_whitespace();
    (reader.pos == body.len()).then_some(value)
}

/// Outside the subset, or refused by the target type. Carries nothing: the caller falls back.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outside the fast JSON subset")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<T: fmt::Display>(_msg: T) -> Unsupported {
        Unsupported
    }
}

type Result<T> = std::result::Result<T, Unsupported>;

struct Reader<'de> {
    input: &'de [u8],
    pos: usize,
    depth: u8,
}

/// An integer token.
enum Integer {
    NonNegative(u64),
    Negative(i64),
}

impl<'de> Reader<'de> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.input.get(self.pos).copied() {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Result<u8> {
        self.skip_whitespace();
        self.input.get(self.pos).copied().ok_or(Unsupported)
    }

    /// Consumes `byte` (after whitespace).
    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.peek()? != byte {
            return Err(Unsupported);
        }
        self.pos += 1;
        Ok(())
    }

    /// Consumes the literal `word` (`true`, `false`, `null`) at the current position.
    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if !self
            .input
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            return Err(Unsupported);
        }
        self.pos += word.len();
        Ok(())
    }

    /// A string token without escapes or control characters: its bytes between the quotes,
    /// borrowed, and whether they are all ASCII (else they are yet to be checked as UTF-8).
    fn string_bytes(&mut self) -> Result<(&'de [u8], bool)> {
        self.expect(b'"')?;
        let rest = self.input.get(self.pos..).ok_or(Unsupported)?;
        let end = memchr::memchr2(b'"', b'\\', rest).ok_or(Unsupported)?;
        if rest.get(end) != Some(&b'"') {
            return Err(Unsupported); // an escape
        }
        let bytes = rest.get(..end).ok_or(Unsupported)?;
        // The smallest byte (a control character is below 0x20) and the union of all bits (a
        // non-ASCII byte has 0x80): two reductions without branches, which the compiler
        // vectorises.
        let (lowest, union) = bytes.iter().fold((u8::MAX, 0u8), |(lowest, union), &b| {
            (lowest.min(b), union | b)
        });
        if lowest < 0x20 {
            return Err(Unsupported);
        }
        self.pos += end + 1; // past the closing quote
        Ok((bytes, union < 0x80))
    }

    /// A string token without escapes or control characters; its text borrowed.
    fn string(&mut self) -> Result<&'de str> {
        let (bytes, ascii) = self.string_bytes()?;
        if ascii {
            return Ok(ascii_str(bytes));
        }
        std::str::from_utf8(bytes).map_err(|_| Unsupported)
    }

    /// An integer token as serde_json reads it (`-0` and anything beyond the 64-bit ranges are
    /// floats there: unsupported here).
    fn integer(&mut self) -> Result<Integer> {
        self.skip_whitespace();
        let negative = self.input.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(&b) = self.input.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(Unsupported)?;
            self.pos += 1;
        }
        let digits = self.pos - start;
        let leading_zero = digits > 1 && self.input.get(start) == Some(&b'0');
        let fraction = matches!(self.input.get(self.pos).copied(), Some(b'.' | b'e' | b'E'));
        if digits == 0 || leading_zero || fraction {
            return Err(Unsupported);
        }
        if !negative {
            return Ok(Integer::NonNegative(n));
        }
        match i64::try_from(n) {
            Ok(0) | Err(_) => Err(Unsupported), // -0, or below i64::MIN + 1
            Ok(m) => Ok(Integer::Negative(-m)),
        }
    }

    /// Reads past one value (validating it as the subset); returns its raw text.
    fn skip_value(&mut self) -> Result<&'de str> {
        self.skip_whitespace();
        let start = self.pos;
        // Whether the raw text is known to be ASCII (else it is checked as UTF-8 at the end).
        let ascii = match self.peek()? {
            b'"' => self.string_bytes()?.1,
            b'-' | b'0'..=b'9' => self.integer().map(|_| true)?,
            b't' => self.literal(b"true").map(|()| true)?,
            b'f' => self.literal(b"false").map(|()| true)?,
            b'n' => self.literal(b"null").map(|()| true)?,
            b'[' => self
                .nested(b'[', b']', |r| r.skip_value().map(drop))
                .map(|()| false)?,
            b'{' => self
                .nested(b'{', b'}', |r| {
                    r.string()?;
                    r.expect(b':')?;
                    r.skip_value().map(drop)
                })
                .map(|()| false)?,
            _ => return Err(Unsupported),
        };
        let raw = self.input.get(start..self.pos).ok_or(Unsupported)?;
        if ascii {
            return Ok(ascii_str(raw));
        }
        std::str::from_utf8(raw).map_err(|_| Unsupported)
    }

    /// Reads `open`, the comma-separated items (each by `item`), then `close`.
    fn nested(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.enter(open)?;
        let mut first = true;
        while self.next_item(close, &mut first)? {
            item(self)?;
        }
        self.leave(close)
    }

    /// Reads `open`, then the items as `visit` takes them, then `close`.
    fn within<T>(
        &mut self,
        open: u8,
        close: u8,
        visit: impl FnOnce(Items<'_, 'de>) -> Result<T>,
    ) -> Result<T> {
        self.enter(open)?;
        let value = visit(Items {
            reader: &mut *self,
            first: true,
        })?;
        self.leave(close)?;
        Ok(value)
    }

    /// Consumes `open` and goes one level deeper.
    fn enter(&mut self, open: u8) -> Result<()> {
        self.expect(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        Ok(())
    }

    /// Consumes `close` and comes back up one level.
    fn leave(&mut self, close: u8) -> Result<()> {
        self.expect(close)?;
        self.depth -= 1;
        Ok(())
    }

    /// Whether another item follows in an object or array closed by `close`: consumes the comma
    /// before every item but the first; leaves `close` for [`Reader::leave`].
    fn next_item(&mut self, close: u8, first: &mut bool) -> Result<bool> {
        let b = self.peek()?;
        if b == close {
            return Ok(false);
        }
        if !std::mem::take(first) {
            if b != b',' {
                return Err(Unsupported);
            }
            self.pos += 1;
        }
        Ok(true)
    }
}

/// `bytes`, all ASCII (checked by the caller), as text without a second validation pass.
fn ascii_str(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: every byte is below 0x80 (`Reader::string_bytes` checked each one), and a run of
    // ASCII bytes is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

impl<'de> Deserializer<'de> for &mut Reader<'de> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'"' => visitor.visit_borrowed_str(self.string()?),
            b'-' | b'0'..=b'9' => match self.integer()? {
                Integer::NonNegative(n) => visitor.visit_u64(n),
                Integer::Negative(n) => visitor.visit_i64(n),
            },
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'[' => self.deserialize_seq(visitor),
            b'{' => self.deserialize_map(visitor),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.string()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.within(b'[', b']', |items| visitor.visit_seq(items))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.within(b'{', b'}', |items| visitor.visit_map(items))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == RAW_VALUE_TOKEN {
            // serde_json's protocol: a one-entry map, the token as key, the raw text as value.
            let raw = self.skip_value()?;
            return visitor.visit_map(RawValueEntry { raw: Some(raw) });
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct tuple tuple_struct enum
    }
}

/// The items of an object (as a map) or an array (as a sequence).
struct Items<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Items<'_, 'de> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.reader.next_item(b'}', &mut self.first)? {
            return Ok(None);
        }
        // Field names are matched as bytes (serde's derived field visitors take bytes as well as
        // text): an ASCII key needs no conversion to text.
        let (key, ascii) = self.reader.string_bytes()?;
        self.reader.expect(b':')?;
        if ascii {
            return seed
                .deserialize(BorrowedBytesDeserializer::new(key))
                .map(Some);
        }
        let key = std::str::from_utf8(key).map_err(|_| Unsupported)?;
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.reader)
    }
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = Unsupported;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.reader.next_item(b']', &mut self.first)? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// The one entry serde_json's `RawValue` visitor reads: its token, then the raw text.
struct RawValueEntry<'de> {
    raw: Option<&'de str>,
}

impl<'de> MapAccess<'de> for RawValueEntry<'de> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.raw.is_none() {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::new(RAW_VALUE_TOKEN))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let raw = self.raw.take().ok_or(Unsupported)?;
        seed.deserialize(BorrowedStrDeserializer::new(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn both<'de, T: Deserialize<'de> + PartialEq + fmt::Debug>(json: &'de str) -> Option<T> {
        let fast = from_slice::<T>(json.as_bytes());
        if let Some(v) = &fast {
            let reference: T = serde_json::from_str(json).expect("serde_json accepts it too");
            assert_eq!(v, &reference, "{json}");
        }
        fast
    }

    #[test]
    fn subset_values_read_as_serde_json_does() {
        assert_eq!(both::<u64>(" 42 "), Some(42));
        assert_eq!(both::<i64>("-7"), Some(-7));
        assert_eq!(both::<u64>("18446744073709551615"), Some(u64::MAX));
        assert_eq!(both::<i64>("-9223372036854775807"), Some(i64::MIN + 1));
        assert_eq!(both::<bool>("true"), Some(true));
        assert_eq!(both::<Option<String>>("null"), Some(None));
        assert_eq!(both::<String>("\"é x\""), Some("é x".into()));
        assert_eq!(
            both::<Vec<Vec<u8>>>("[ [1,2] ,[]]"),
            Some(vec![vec![1, 2], vec![]])
        );
        assert_eq!(
            both::<std::collections::BTreeMap<String, Option<i64>>>("{\"a\":1,\"b\":null}")
                .map(|m| m.len()),
            Some(2)
        );
        let raw = from_slice::<&RawValue>(b" {\"a\": [1, \"x\"]} ").unwrap();
        assert_eq!(raw.get(), "{\"a\": [1, \"x\"]}");
    }

    #[test]
    fn anything_else_is_left_to_serde_json() {
        for json in [
            "",
            "1.5",
            "1e3",
            "-0",
            "01",
            "18446744073709551616",
            "-9223372036854775809",
            "\"a\\nb\"",
            "\"tab\there\"",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1 2]",
            "nul",
            "tru",
            "{",
            "[",
            "\"open",
            "+1",
            "{} x",
            "{\"a\":1}}",
        ] {
            assert!(
                from_slice::<serde::de::IgnoredAny>(json.as_bytes()).is_none(),
                "{json:?}"
            );
        }
        assert!(from_slice::<String>(b"\"\xff\"").is_none());
        let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
        assert!(from_slice::<serde::de::IgnoredAny>(deep.as_bytes()).is_none());
        let ok = format!("{}{}", "[".repeat(16), "]".repeat(16));
        assert!(from_slice::<serde::de::IgnoredAny>(ok.as_bytes()).is_some());
    }
}
