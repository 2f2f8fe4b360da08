//! One record: a change as a log frame holds it, and the state as a snapshot holds it.
//!
//! A record is `[len: u32 LE][tag: u8][fields]`; ids are `[len: u32 LE][UTF-8]`; integers are
//! little endian; battle and notification bodies are postcard. Frames guard records with a
//! checksum, so a record that does not parse inside a good frame is corruption, never a torn
//! write.

use livebattle_engine::{Battle, BattleSnapshot, Notification, NotificationFields};
use livebattle_engine::{StoreError, StoreOp};

const PUT: u8 = 1;
const EVICT: u8 = 2;
const FORGET: u8 = 3;
const NOTIFY: u8 = 4;
const END: u8 = 5;

/// A record as read, borrowing the frame's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Raw<'a> {
    /// A battle's full record (`body`: postcard of the battle).
    Put {
        id: &'a str,
        version: u64,
        body: &'a [u8],
    },
    /// The battle is deleted; its id is remembered until the Unix ms.
    Evict { id: &'a str, forget_at_ms: i64 },
    /// The id's dedupe horizon is over.
    Forget { id: &'a str },
    /// A notification for the replay ring (`body`: postcard of its fields); older ones than
    /// `keep_from_seq` may go.
    Notify {
        seq: u64,
        keep_from_seq: u64,
        body: &'a [u8],
    },
    /// A snapshot's last record: how many came before it.
    End { records: u64 },
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError(format!("encode: {what}"))
}

/// Appends `[len]` + what `body` writes to `out`.
fn framed(
    out: &mut Vec<u8>,
    body: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    *out = body(std::mem::take(out))?;
    let len = u32::try_from(out.len() - at - 4).map_err(|_| bad("a record over 4 GiB"))?;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_id(out: &mut Vec<u8>, id: &str) -> Result<(), StoreError> {
    let len = u32::try_from(id.len()).map_err(|_| bad("an id over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    Ok(())
}

/// Appends a battle's record.
pub(crate) fn put(out: &mut Vec<u8>, battle: &Battle) -> Result<(), StoreError> {
    framed(out, |mut out| {
        out.push(PUT);
        put_id(&mut out, &battle.id)?;
        out.extend_from_slice(&battle.version.to_le_bytes());
        postcard::to_extend(battle, out).map_err(|e| bad(format!("battle {:?}: {e}", battle.id)))
    })
}

/// Appends an eviction's record.
pub(crate) fn evict(out: &mut Vec<u8>, id: &str, forget_at_ms: i64) -> Result<(), StoreError> {
    framed(out, |mut out| {
        out.push(EVICT);
        put_id(&mut out, id)?;
        out.extend_from_slice(&forget_at_ms.to_le_bytes());
        Ok(out)
    })
}

/// Appends a notification's record.
pub(crate) fn notify(
    out: &mut Vec<u8>,
    notification: &Notification,
    keep_from_seq: u64,
) -> Result<(), StoreError> {
    framed(out, |mut out| {
        out.push(NOTIFY);
        out.extend_from_slice(&notification.seq.to_le_bytes());
        out.extend_from_slice(&keep_from_seq.to_le_bytes());
        postcard::to_extend(&notification.fields(), out)
            .map_err(|e| bad(format!("notification {}: {e}", notification.seq)))
    })
}

/// Appends a snapshot's end record.
pub(crate) fn end(out: &mut Vec<u8>, records: u64) -> Result<(), StoreError> {
    framed(out, |mut out| {
        out.push(END);
        out.extend_from_slice(&records.to_le_bytes());
        Ok(out)
    })
}

/// Appends the records of one batch of changes.
pub(crate) fn batch(out: &mut Vec<u8>, ops: &[StoreOp]) -> Result<(), StoreError> {
    for op in ops {
        match op {
            StoreOp::Put { battle, .. } => put(out, battle)?,
            StoreOp::Evict {
                battle_id,
                forget_at_ms,
            } => evict(out, battle_id, *forget_at_ms)?,
            StoreOp::Forget { battle_id } => framed(out, |mut out| {
                out.push(FORGET);
                put_id(&mut out, battle_id)?;
                Ok(out)
            })?,
            StoreOp::Notify {
                notification,
                keep_from_seq,
            } => notify(out, notification, *keep_from_seq)?,
        }
    }
    Ok(())
}

/// Reads the records of a frame's payload, each with its whole bytes (length included).
pub(crate) struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Records<'a> {
        Records { rest: payload }
    }
}

/// Takes `n` bytes from the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if rest.len() < n {
        return Err(format!("needs {n} bytes, {} left", rest.len()));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn u32_at(rest: &mut &[u8]) -> Result<u32, String> {
    let b = take(rest, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(rest: &mut &[u8]) -> Result<u64, String> {
    let b = take(rest, 8)?;
    let mut a = [0; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn id_at<'a>(rest: &mut &'a [u8]) -> Result<&'a str, String> {
    let len = u32_at(rest)? as usize;
    std::str::from_utf8(take(rest, len)?).map_err(|e| format!("an id is not UTF-8: {e}"))
}

/// Parses one record's body (after its length).
fn parse(mut body: &[u8]) -> Result<Raw<'_>, String> {
    let rest = &mut body;
    let tag = take(rest, 1)?[0];
    let raw = match tag {
        PUT => Raw::Put {
            id: id_at(rest)?,
            version: u64_at(rest)?,
            body: std::mem::take(rest),
        },
        EVICT => Raw::Evict {
            id: id_at(rest)?,
            forget_at_ms: u64_at(rest)? as i64,
        },
        FORGET => Raw::Forget { id: id_at(rest)? },
        NOTIFY => Raw::Notify {
            seq: u64_at(rest)?,
            keep_from_seq: u64_at(rest)?,
            body: std::mem::take(rest),
        },
        END => Raw::End {
            records: u64_at(rest)?,
        },
        other => return Err(format!("unknown record tag {other}")),
    };
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after a record", rest.len()));
    }
    Ok(raw)
}

impl<'a> Iterator for Records<'a> {
    /// The record and its whole bytes; `Err` says what is wrong.
    type Item = Result<(Raw<'a>, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let whole = self.rest;
        let item = (|| {
            let len = u32_at(&mut self.rest)? as usize;
            let body = take(&mut self.rest, len)?;
            Ok((parse(body)?, &whole[..4 + len]))
        })();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// The battle a `Put` record's body holds.
pub(crate) fn decode_battle(id: &str, body: &[u8]) -> Result<Battle, String> {
    postcard::from_bytes(body).map_err(|e| format!("battle {id:?} cannot be decoded: {e}"))
}

/// The notification a `Notify` record's body holds.
pub(crate) fn decode_notification(seq: u64, body: &[u8]) -> Result<Notification, String> {
    postcard::from_bytes::<NotificationFields<BattleSnapshot>>(body)
        .map(Notification::from_fields)
        .map_err(|e| format!("notification {seq} cannot be decoded: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebattle_engine::{Cause, State, Target};
    use std::sync::Arc;

    #[test]
    fn every_record_reads_back_as_written() {
        let mut b = Battle::new("b-1", State::Running, 1_000);
        b.version = 7;
        let n = Notification {
            seq: 9,
            from: Some(State::AwaitingResponse),
            to: Target::State(State::Running),
            cause: Cause::StartWebhook,
            late_ms: Some(3),
            battle: b.snapshot(2_000),
        };
        let mut out = Vec::new();
        batch(
            &mut out,
            &[
                StoreOp::Put {
                    battle: Arc::new(b.clone()),
                    expected_version: None,
                },
                StoreOp::Evict {
                    battle_id: "e".into(),
                    forget_at_ms: -5,
                },
                StoreOp::Forget {
                    battle_id: "f".into(),
                },
                StoreOp::Notify {
                    notification: Arc::new(n.clone()),
                    keep_from_seq: 4,
                },
            ],
        )
        .unwrap();
        end(&mut out, 4).unwrap();
        let read: Vec<_> = Records::new(&out).map(|r| r.unwrap().0).collect();
        let Raw::Put { id, version, body } = read[0] else {
            panic!("{:?}", read[0])
        };
        assert_eq!((id, version), ("b-1", 7));
        assert_eq!(decode_battle(id, body).unwrap(), b);
        assert_eq!(
            read[1],
            Raw::Evict {
                id: "e",
                forget_at_ms: -5
            }
        );
        assert_eq!(read[2], Raw::Forget { id: "f" });
        let Raw::Notify {
            seq,
            keep_from_seq,
            body,
        } = read[3]
        else {
            panic!("{:?}", read[3])
        };
        assert_eq!((seq, keep_from_seq), (9, 4));
        assert_eq!(decode_notification(seq, body).unwrap(), n);
        assert_eq!(read[4], Raw::End { records: 4 });
    }

    #[test]
    fn a_short_or_unknown_record_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        evict(&mut out, "abc", 1).unwrap();
        for cut in 0..out.len() {
            let mut r = Records::new(&out[..cut]);
            if cut > 0 {
                assert!(r.next().unwrap().is_err(), "cut at {cut}");
            }
            assert!(r.next().is_none());
        }
        let mut odd = out.clone();
        odd[4] = 42;
        let e = Records::new(&odd).next().unwrap().unwrap_err();
        assert!(e.contains("unknown record tag 42"), "{e}");
    }
}
