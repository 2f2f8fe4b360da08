//! Frames: `[len: u32 LE][payload crc32: u32 LE][header crc32: u32 LE][payload]`, the unit one
//! write makes durable. The header's own checksum (over `len` and the payload's checksum) keeps
//! a damaged length from passing for a frame that runs past the end of the file.
//!
//! Both checksums are seeded with the file's identity ([`seed`]), so a frame of another file —
//! bytes of a deleted log that a reused disk block still holds — never passes for one of this
//! file.
//!
//! A log gets one frame per group commit, so a crash can only damage the frames of its last
//! write, at the end of the file — cut short, pages never written (zeros), or written out of
//! order. Reading tells the endings apart: clean; **torn** (a bad frame with no good frame
//! anywhere after it: data never acknowledged); **corrupt** (a bad frame with a good one after
//! it: acknowledged data is damaged) — refused. A damaged last frame that was acknowledged
//! cannot be told from a torn one; that is the limit of any log.

use std::io::Read;

use livebattle_engine::StoreError;

/// Bytes before a frame's payload.
pub(crate) const HEADER: usize = 12;
/// The largest payload (a larger length is damage, not data).
const MAX_PAYLOAD: u64 = 1 << 30;

/// The checksum seed of a file: its kind and number.
pub(crate) fn seed(kind: u8, number: u64) -> u32 {
    crc32fast::hash(&[&[kind][..], &number.to_le_bytes()].concat())
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

/// Starts a frame at the end of `out`; returns where, for [`finish`].
pub(crate) fn start(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    at
}

/// Fills in the header of the frame started at `at` (its payload is the rest of `out`).
pub(crate) fn finish(out: &mut [u8], at: usize, seed: u32) -> Result<(), StoreError> {
    let payload = &out[at + HEADER..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| u64::from(n) <= MAX_PAYLOAD)
        .ok_or_else(|| StoreError(format!("a frame of {} bytes is too big", payload.len())))?;
    let payload_crc = crc(seed, payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&payload_crc.to_le_bytes());
    let head_crc = crc(seed, &out[at..at + 8]);
    out[at + 8..at + 12].copy_from_slice(&head_crc.to_le_bytes());
    Ok(())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The payload length and checksum a header names, if the header is intact.
fn header(seed: u32, head: &[u8; HEADER]) -> Option<(u64, u32)> {
    let len = u64::from(le32(&head[0..4]));
    (crc(seed, &head[..8]) == le32(&head[8..12]) && len <= MAX_PAYLOAD)
        .then(|| (len, le32(&head[4..8])))
}

/// Whether `bytes` starts with a whole, good frame.
fn good_frame_at(seed: u32, bytes: &[u8]) -> bool {
    let Some(head) = bytes
        .get(..HEADER)
        .and_then(|h| <&[u8; HEADER]>::try_from(h).ok())
    else {
        return false;
    };
    let Some((len, payload_crc)) = header(seed, head) else {
        return false;
    };
    bytes
        .get(HEADER..HEADER + len as usize)
        .is_some_and(|p| crc(seed, p) == payload_crc)
}

/// How a file's frames ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// At the end of the file, on a frame boundary.
    Clean,
    /// A torn last write: the good data ends at `valid_len` (offset in the file).
    Torn { valid_len: u64, why: String },
}

/// Reads the frames of `r` (positioned at `offset` of a file of `file_len` bytes), calling
/// `each` with every good payload and its offset in the file. `Err` is corruption (or an I/O
/// error), with its offset.
pub(crate) fn read<R: Read>(
    mut r: R,
    mut offset: u64,
    file_len: u64,
    seed: u32,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<Ending, String> {
    let mut payload = Vec::new();
    let io = |offset: u64| move |e: std::io::Error| format!("at byte {offset}: {e}");
    loop {
        let left = file_len.saturating_sub(offset);
        if left == 0 {
            return Ok(Ending::Clean);
        }
        // What was read of the bad frame, to scan with the rest of the file.
        let mut seen = Vec::new();
        // Where a good frame may start: after the bad one when its header is intact (its
        // payload may hold any bytes), else anywhere.
        let mut search_from = 1;
        let why;
        if left < HEADER as u64 {
            why = format!("{left} bytes, less than a frame header");
        } else {
            let mut head = [0u8; HEADER];
            r.read_exact(&mut head).map_err(io(offset))?;
            match header(seed, &head) {
                Some((len, _)) if HEADER as u64 + len > left => {
                    why = format!("a frame of {len} bytes with {} in the file", left - 12);
                    seen.extend_from_slice(&head);
                }
                Some((len, payload_crc)) => {
                    payload.resize(len as usize, 0);
                    r.read_exact(&mut payload).map_err(io(offset))?;
                    if crc(seed, &payload) == payload_crc {
                        let at = offset + HEADER as u64;
                        each(at, &payload)
                            .map_err(|e| format!("in the frame at byte {offset}: {e}"))?;
                        offset = at + len;
                        continue;
                    }
                    why = "a frame fails its checksum".into();
                    seen.extend_from_slice(&head);
                    seen.extend_from_slice(&payload);
                    search_from = seen.len();
                }
                None if head == [0; HEADER] => {
                    why = "zeros where a frame should be".into();
                    seen.extend_from_slice(&head);
                }
                None => {
                    why = "a frame header fails its checksum".into();
                    seen.extend_from_slice(&head);
                }
            }
        }
        r.read_to_end(&mut seen).map_err(io(offset))?;
        return match (search_from..seen.len()).find(|&i| good_frame_at(seed, &seen[i..])) {
            Some(i) => Err(format!(
                "at byte {offset}: {why}, and a good frame follows at byte {}",
                offset + i as u64
            )),
            None => Ok(Ending::Torn {
                valid_len: offset,
                why,
            }),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u32 = 7;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        frames_of(SEED, payloads)
    }

    fn frames_of(seed: u32, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            let at = start(&mut out);
            out.extend_from_slice(p);
            finish(&mut out, at, seed).unwrap();
        }
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Result<Ending, String>) {
        let mut got = Vec::new();
        let ending = read(bytes, 0, bytes.len() as u64, SEED, |_, p| {
            got.push(p.to_vec());
            Ok(())
        });
        (got, ending)
    }

    fn torn_at(ending: &Result<Ending, String>, at: u64) -> bool {
        matches!(ending, Ok(Ending::Torn { valid_len, .. }) if *valid_len == at)
    }

    #[test]
    fn frames_read_back_with_their_offsets_and_end_clean() {
        let bytes = frames(&[b"one", b"two", b"three"]);
        let (got, ending) = read_all(&bytes);
        assert_eq!(
            got,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(ending, Ok(Ending::Clean));
        let mut at = Vec::new();
        read(&bytes[..], 0, bytes.len() as u64, SEED, |o, _| {
            at.push(o);
            Ok(())
        })
        .unwrap();
        assert_eq!(at, vec![12, 27, 42]);
    }

    #[test]
    fn every_cut_of_the_last_frame_is_a_torn_tail_at_the_previous_frame() {
        let bytes = frames(&[b"first", b"second frame"]);
        let first_end = (HEADER + 5) as u64;
        for cut in first_end as usize + 1..bytes.len() {
            let (got, ending) = read_all(&bytes[..cut]);
            assert_eq!(got, vec![b"first".to_vec()], "cut at {cut}");
            assert!(torn_at(&ending, first_end), "cut at {cut}: {ending:?}");
        }
    }

    #[test]
    fn a_last_write_with_pages_missing_in_any_order_is_torn() {
        // The last write (one frame: a group commit) lost some of its pages, in any order.
        let good = frames(&[b"acknowledged"]);
        let last = frames(&[b"second, never acknowledged: the group commit of a crash"]);
        for zeroed in [
            0..4,
            4..12,
            0..12,
            12..20,
            30..50,
            0..last.len(),
            40..last.len(),
        ] {
            let mut bytes = [&good[..], &last[..]].concat();
            bytes[good.len() + zeroed.start..good.len() + zeroed.end].fill(0);
            let (got, ending) = read_all(&bytes);
            assert_eq!(got[0], b"acknowledged".to_vec(), "{zeroed:?}");
            assert!(ending.is_ok(), "zeroed {zeroed:?}: {ending:?}");
        }
        let mut zeros = frames(&[b"first"]);
        zeros.extend_from_slice(&[0; 100]);
        let (got, ending) = read_all(&zeros);
        assert_eq!(got.len(), 1);
        assert!(torn_at(&ending, 17), "{ending:?}");
    }

    #[test]
    fn frames_of_another_file_or_inside_a_bad_payload_do_not_count_as_good() {
        // Bytes of a deleted log (another seed) after a torn frame: still a torn tail.
        let mut bytes = frames(&[b"acknowledged"]);
        let good_len = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend_from_slice(&frames_of(SEED + 1, &[b"an old file's frame"]));
        assert!(torn_at(&read_all(&bytes).1, good_len));
        // A payload that itself holds a well-formed frame, its checksum failing.
        let mut payload = frames(&[b"looks like a frame"]);
        payload.push(0xAA);
        let mut bytes = frames(&[b"acknowledged"]);
        bytes.extend_from_slice(&frames(&[&payload[..]]));
        *bytes.last_mut().unwrap() ^= 1;
        assert!(
            torn_at(&read_all(&bytes).1, good_len),
            "{:?}",
            read_all(&bytes).1
        );
    }

    #[test]
    fn damage_with_a_good_frame_after_it_is_corruption() {
        // A payload byte, the length, the header's checksum: each damaged in the first frame.
        for at in [HEADER, 0, 1, 9] {
            let mut bytes = frames(&[b"first", b"second"]);
            bytes[at] ^= 0x40;
            let (got, ending) = read_all(&bytes);
            assert!(got.is_empty(), "damage at {at}");
            let e = ending.unwrap_err();
            assert!(
                e.contains("at byte 0") && e.contains("a good frame follows at byte 17"),
                "{e}"
            );
        }
    }
}
