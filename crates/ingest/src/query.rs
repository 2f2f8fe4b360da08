//! The callback's query string, with keys matched case-insensitively.
//!
//! Tencent appends `?SdkAppid=…&CallbackCommand=…&contenttype=json&ClientIP=…&OptPlatform=…`
//! and, with token auth, `&Sign=…&RequestTime=…`. The docs spell the first key both `SdkAppid`
//! and `SdkAppId`, and one English page calls the command `WebhookCommand`, so keys are compared
//! ignoring ASCII case and `WebhookCommand` stands in for a missing `CallbackCommand`. Unknown
//! keys are ignored. A key given twice with different values is refused as ambiguous.

use std::borrow::Cow;

use crate::reply::{Reason, Refusal};

/// The parameters of one callback URL, percent-decoded. Absent parameters are `None`. A value
/// that needed no decoding (every value of a usual Tencent URL) borrows from the raw query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackQuery<'a> {
    /// `SdkAppid` / `SdkAppId`.
    pub sdk_app_id: Option<Cow<'a, str>>,
    /// `CallbackCommand` (or `WebhookCommand`).
    pub callback_command: Option<Cow<'a, str>>,
    /// `contenttype` (always `json`; not checked).
    pub content_type: Option<Cow<'a, str>>,
    /// `ClientIP`, opaque.
    pub client_ip: Option<Cow<'a, str>>,
    /// `OptPlatform`, opaque (`RESTAPI`, `Web`, `Android`, `iOS`, … or anything else).
    pub opt_platform: Option<Cow<'a, str>>,
    /// `Sign`: hex sha256 of token + RequestTime.
    pub sign: Option<Cow<'a, str>>,
    /// `RequestTime`, as sent (decimal Unix seconds).
    pub request_time: Option<Cow<'a, str>>,
}

const KEYS: [&str; 7] = [
    "SdkAppid",
    "CallbackCommand",
    "contenttype",
    "ClientIP",
    "OptPlatform",
    "Sign",
    "RequestTime",
];

/// The index in [`KEYS`] of `key`, ignoring ASCII case (the usual spelling is compared first:
/// it is the cheap, common case).
fn key_index(key: &str) -> Option<usize> {
    KEYS.iter().position(|k| {
        k.len() == key.len() && (k.as_bytes() == key.as_bytes() || key.eq_ignore_ascii_case(k))
    })
}

impl<'a> CallbackQuery<'a> {
    /// Parses a raw query string (without the leading `?`).
    ///
    /// ```
    /// use livebattle_ingest::CallbackQuery;
    /// let q = CallbackQuery::parse("sdkappid=1400000001&CALLBACKCOMMAND=Live.CallbackAfterEndBattle").unwrap();
    /// assert_eq!(q.sdk_app_id.as_deref(), Some("1400000001"));
    /// assert_eq!(q.callback_command.as_deref(), Some("Live.CallbackAfterEndBattle"));
    /// ```
    pub fn parse(raw: &'a str) -> Result<CallbackQuery<'a>, Refusal> {
        let mut q = CallbackQuery::default();
        let mut webhook_command: Option<Cow<'a, str>> = None;
        for (key, value) in pairs(raw) {
            let slot = match key_index(&key) {
                Some(i) => q.slot(i),
                None if key.eq_ignore_ascii_case("WebhookCommand") => &mut webhook_command,
                None => continue,
            };
            match slot {
                Some(existing) if *existing != value => {
                    return Err(Refusal::new(
                        Reason::AmbiguousQuery,
                        format!("query parameter {key} is given twice with different values"),
                    ));
                }
                Some(_) => {}
                None => *slot = Some(value),
            }
        }
        if q.callback_command.is_none() {
            q.callback_command = webhook_command;
        }
        Ok(q)
    }

    #[inline]
    fn slot(&mut self, i: usize) -> &mut Option<Cow<'a, str>> {
        match i {
            0 => &mut self.sdk_app_id,
            1 => &mut self.callback_command,
            2 => &mut self.content_type,
            3 => &mut self.client_ip,
            4 => &mut self.opt_platform,
            5 => &mut self.sign,
            _ => &mut self.request_time,
        }
    }
}

/// The `key=value` pairs of `raw`, decoded exactly as `application/x-www-form-urlencoded`
/// (`form_urlencoded::parse`: `&`-separated, empty pieces skipped, `+` is a space,
/// percent-escapes decoded, invalid UTF-8 replaced). A piece with neither `%` nor `+` (every
/// piece of a usual Tencent URL) needs no decoding and is borrowed as is: no allocation, no
/// UTF-8 re-validation. One vectorised scan of the whole string tells whether any piece needs
/// decoding at all.
fn pairs(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let bytes = raw.as_bytes();
    let encoded = memchr::memchr2(b'%', b'+', bytes).is_some();
    let mut ends = memchr::memchr_iter(b'&', bytes).chain(std::iter::once(bytes.len()));
    let mut start = 0;
    std::iter::from_fn(move || loop {
        let end = ends.next()?;
        // `&` is ASCII, so both ends are char boundaries; `get` keeps this panic-free anyway.
        let piece = raw.get(start..end).unwrap_or("");
        start = end + 1;
        if piece.is_empty() {
            continue;
        }
        if encoded && memchr::memchr2(b'%', b'+', piece.as_bytes()).is_some() {
            // Rare: decode this one piece the standard way.
            return Some(
                form_urlencoded::parse(piece.as_bytes())
                    .next()
                    .unwrap_or((Cow::Borrowed(""), Cow::Borrowed(""))),
            );
        }
        let (key, value) = match memchr::memchr(b'=', piece.as_bytes()) {
            // `=` is ASCII: a char boundary.
            Some(i) => (
                piece.get(..i).unwrap_or(""),
                piece.get(i + 1..).unwrap_or(""),
            ),
            None => (piece, ""),
        };
        return Some((Cow::Borrowed(key), Cow::Borrowed(value)));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_url() {
        let q = CallbackQuery::parse(
            "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterStartBattle&contenttype=json\
             &ClientIP=127.0.0.1&OptPlatform=RESTAPI\
             &Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061&RequestTime=1669872112",
        )
        .unwrap();
        assert_eq!(q.sdk_app_id.as_deref(), Some("1400000001"));
        assert_eq!(
            q.callback_command.as_deref(),
            Some("Live.CallbackAfterStartBattle")
        );
        assert_eq!(q.content_type.as_deref(), Some("json"));
        assert_eq!(q.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(q.opt_platform.as_deref(), Some("RESTAPI"));
        assert_eq!(q.request_time.as_deref(), Some("1669872112"));
        assert_eq!(q.sign.as_deref().map(str::len), Some(64));
    }

    #[test]
    fn keys_any_case_and_percent_decoded() {
        let q =
            CallbackQuery::parse("SdkAppId=1&callbackcommand=Live.X%2EY&clientip=%3A%3A1").unwrap();
        assert_eq!(q.sdk_app_id.as_deref(), Some("1"));
        assert_eq!(q.callback_command.as_deref(), Some("Live.X.Y"));
        assert_eq!(q.client_ip.as_deref(), Some("::1"));
        assert_eq!(q.sign, None);
    }

    #[test]
    fn webhook_command_alias_only_fills_a_gap() {
        let q = CallbackQuery::parse("WebhookCommand=A.B").unwrap();
        assert_eq!(q.callback_command.as_deref(), Some("A.B"));
        let q = CallbackQuery::parse("WebhookCommand=A.B&CallbackCommand=C.D").unwrap();
        assert_eq!(q.callback_command.as_deref(), Some("C.D"));
    }

    #[test]
    fn conflicting_duplicates_refused_equal_ones_kept() {
        let e = CallbackQuery::parse("SdkAppid=1&SdkAppId=2").unwrap_err();
        assert_eq!(e.reason, Reason::AmbiguousQuery);
        assert!(e.info.contains("SdkAppId"), "{}", e.info);
        let q = CallbackQuery::parse("SdkAppid=1&SDKAPPID=1").unwrap();
        assert_eq!(q.sdk_app_id.as_deref(), Some("1"));
    }

    #[test]
    fn pairs_decode_like_form_urlencoded() {
        for raw in [
            "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterStartBattle&contenttype=json",
            "a=b&&c=d&",
            "a&b=&=c",
            "k=v=w",
            "a+b=c+d&e%20f=g%2Bh",
            "x=%zz&y=%&z=%e9",
            "ClientIP=%3A%3A1&OptPlatform=RESTAPI",
            "é=ü&%C3%A9=%C3%BC",
            "",
        ] {
            let ours: Vec<(String, String)> = pairs(raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let reference: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, reference, "{raw:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn pairs_match_form_urlencoded_on_any_input(raw in "[a-zA-Z0-9%+=&é .:-]{0,40}") {
            let ours: Vec<(String, String)> = pairs(&raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let reference: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for raw in ["", "&&&", "=", "%", "%zz=%", "a=b=c", "\u{0}=\u{ffff}"] {
            let _ = CallbackQuery::parse(raw);
        }
    }
}
