//! Tencent's reply envelope and the table of refusals.
//!
//! Every answer, accepted or refused, is the JSON Tencent expects:
//! `{"ActionStatus":"OK"|"FAIL","ErrorInfo":"…","ErrorCode":0|code}`. A refusal carries one of
//! the codes of [`Reason`] and the HTTP status that goes with it; docs/ingest.md has the table.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::fmt;

/// The JSON body of every reply, field names and order as Tencent documents them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TencentReply {
    /// `"OK"` or `"FAIL"`.
    #[serde(rename = "ActionStatus")]
    pub action_status: &'static str,
    /// Empty on success; what was wrong otherwise.
    #[serde(rename = "ErrorInfo")]
    pub error_info: String,
    /// `0` on success; a [`Reason::code`] otherwise.
    #[serde(rename = "ErrorCode")]
    pub error_code: u32,
}

impl TencentReply {
    /// `{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}`.
    pub fn ok() -> TencentReply {
        TencentReply {
            action_status: "OK",
            error_info: String::new(),
            error_code: 0,
        }
    }

    /// The serialized body.
    pub fn to_json(&self) -> String {
        // Serializing three plain fields cannot fail; the fallback keeps this panic-free anyway.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"ActionStatus":"{}","ErrorInfo":"","ErrorCode":{}}}"#,
                self.action_status, self.error_code
            )
        })
    }
}

/// Why a callback was refused. Each reason has a stable error code, HTTP status and metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 4001 / 400: the body is not JSON, or not a JSON object.
    MalformedJson,
    /// 4002 / 400: the body's `CallbackCommand` is missing or differs from the URL's.
    CommandMismatch,
    /// 4003 / 400: no `SdkAppid` query parameter.
    MissingSdkAppId,
    /// 4004 / 400: no `CallbackCommand` query parameter.
    MissingCommand,
    /// 4005 / 400: a query parameter is given twice with different values.
    AmbiguousQuery,
    /// 4006 / 400: `RequestTime` is not a decimal Unix time in seconds.
    MalformedRequestTime,
    /// 4007 / 400: the body could not be read (connection error).
    UnreadableBody,
    /// 4011 / 401: `Sign` matches no valid token.
    BadSignature,
    /// 4012 / 401: the app has a token but `Sign` or `RequestTime` is absent.
    MissingSignature,
    /// 4013 / 401: `RequestTime` is outside the signature window.
    StaleRequestTime,
    /// 4031 / 403: `SdkAppid` is not one this process serves.
    ForeignSdkAppId,
    /// 4051 / 405: not a POST.
    MethodNotAllowed,
    /// 4131 / 413: the body is over the configured limit.
    BodyTooLarge,
    /// 4221 / 422: a well-formed body without `BattleId` (or `RoomId` for DestroyRoom).
    MissingField,
    /// 4222 / 422: a field has the wrong JSON type or an out-of-range value.
    WrongFieldType,
    /// 4223 / 422: the engine found the event invalid.
    EventRejected,
    /// 5031 / 503: the engine refused or is shut down.
    EngineUnavailable,
    /// 5032 / 503: the engine did not accept within the apply timeout.
    EngineTimeout,
}

impl Reason {
    /// Every reason, in code order (metrics iterate this).
    pub const ALL: [Reason; 18] = [
        Reason::MalformedJson,
        Reason::CommandMismatch,
        Reason::MissingSdkAppId,
        Reason::MissingCommand,
        Reason::AmbiguousQuery,
        Reason::MalformedRequestTime,
        Reason::UnreadableBody,
        Reason::BadSignature,
        Reason::MissingSignature,
        Reason::StaleRequestTime,
        Reason::ForeignSdkAppId,
        Reason::MethodNotAllowed,
        Reason::BodyTooLarge,
        Reason::MissingField,
        Reason::WrongFieldType,
        Reason::EventRejected,
        Reason::EngineUnavailable,
        Reason::EngineTimeout,
    ];

    /// The `ErrorCode` in the reply.
    pub fn code(self) -> u32 {
        match self {
            Reason::MalformedJson => 4001,
            Reason::CommandMismatch => 4002,
            Reason::MissingSdkAppId => 4003,
            Reason::MissingCommand => 4004,
            Reason::AmbiguousQuery => 4005,
            Reason::MalformedRequestTime => 4006,
            Reason::UnreadableBody => 4007,
            Reason::BadSignature => 4011,
            Reason::MissingSignature => 4012,
            Reason::StaleRequestTime => 4013,
            Reason::ForeignSdkAppId => 4031,
            Reason::MethodNotAllowed => 4051,
            Reason::BodyTooLarge => 4131,
            Reason::MissingField => 4221,
            Reason::WrongFieldType => 4222,
            Reason::EventRejected => 4223,
            Reason::EngineUnavailable => 5031,
            Reason::EngineTimeout => 5032,
        }
    }

    /// The HTTP status of the reply.
    pub fn status(self) -> StatusCode {
        match self.code() / 10 {
            400 => StatusCode::BAD_REQUEST,
            401 => StatusCode::UNAUTHORIZED,
            403 => StatusCode::FORBIDDEN,
            405 => StatusCode::METHOD_NOT_ALLOWED,
            413 => StatusCode::PAYLOAD_TOO_LARGE,
            422 => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The snake_case label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::CommandMismatch => "command_mismatch",
            Reason::MissingSdkAppId => "missing_sdk_app_id",
            Reason::MissingCommand => "missing_command",
            Reason::AmbiguousQuery => "ambiguous_query",
            Reason::MalformedRequestTime => "malformed_request_time",
            Reason::UnreadableBody => "unreadable_body",
            Reason::BadSignature => "bad_signature",
            Reason::MissingSignature => "missing_signature",
            Reason::StaleRequestTime => "stale_request_time",
            Reason::ForeignSdkAppId => "foreign_sdk_app_id",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::BodyTooLarge => "body_too_large",
            Reason::MissingField => "missing_field",
            Reason::WrongFieldType => "wrong_field_type",
            Reason::EventRejected => "event_rejected",
            Reason::EngineUnavailable => "engine_unavailable",
            Reason::EngineTimeout => "engine_timeout",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused callback: the reason and a human-readable `ErrorInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Which row of the table.
    pub reason: Reason,
    /// What was wrong, sent as `ErrorInfo`.
    pub info: String,
}

impl Refusal {
    /// A refusal with the given reason and text.
    pub fn new(reason: Reason, info: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            info: info.into(),
        }
    }

    /// The `FAIL` reply body.
    pub fn reply(&self) -> TencentReply {
        TencentReply {
            action_status: "FAIL",
            error_info: self.info.clone(),
            error_code: self.reason.code(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.reason.code(), self.info)
    }
}

impl std::error::Error for Refusal {}

/// The OK reply's bytes, sent without serializing anything.
const OK_JSON: &str = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

fn json_response(status: StatusCode, reply: &TencentReply) -> Response {
    let body = if *reply == TencentReply::ok() {
        axum::body::Body::from(OK_JSON)
    } else {
        axum::body::Body::from(reply.to_json())
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for TencentReply {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, &self)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_response(self.reason.status(), &self.reply())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_static_ok_body_is_the_serialized_ok_reply() {
        assert_eq!(OK_JSON, TencentReply::ok().to_json());
    }

    #[test]
    fn ok_reply_is_tencents() {
        assert_eq!(
            TencentReply::ok().to_json(),
            r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#
        );
    }

    #[test]
    fn codes_labels_and_statuses_are_distinct_and_consistent() {
        let codes: HashSet<u32> = Reason::ALL.iter().map(|r| r.code()).collect();
        let labels: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert_eq!(labels.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(u32::from(r.status().as_u16()), r.code() / 10, "{r}");
            assert_ne!(r.code(), 0);
        }
    }

    #[test]
    fn refusal_reply_shape() {
        let r = Refusal::new(Reason::BadSignature, "Sign does not match");
        assert_eq!(
            r.reply().to_json(),
            r#"{"ActionStatus":"FAIL","ErrorInfo":"Sign does not match","ErrorCode":4011}"#
        );
    }
}
