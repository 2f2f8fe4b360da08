//! Frames: `[len: u32 LE][crc32: u32 LE][payload]`, the unit one write makes durable.
//!
//! A log gets one frame per group commit, so a crash can tear only its last frame. Reading
//! tells the three endings apart: clean; torn (the last frame runs past the end of the file,
//! fails its checksum and ends exactly at the end of the file, or the file ends in zeros) —
//! data never acknowledged; and corrupt (a bad frame with more data after it) — refused.

use std::io::Read;

use livebattle_engine::StoreError;

/// Bytes before a frame's payload.
pub(crate) const HEADER: usize = 8;
/// The largest payload a reader accepts (a larger length is damage, not data).
const MAX_PAYLOAD: u64 = 1 << 30;

/// Starts a frame at the end of `out`; returns where, for [`finish`].
pub(crate) fn start(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    at
}

/// Fills in the header of the frame started at `at` (its payload is the rest of `out`, never
/// empty: an all-zero header reads as the end of the data).
pub(crate) fn finish(out: &mut [u8], at: usize) -> Result<(), StoreError> {
    let payload = &out[at + HEADER..];
    if payload.is_empty() {
        return Err(StoreError("an empty frame".into()));
    }
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| u64::from(n) <= MAX_PAYLOAD)
        .ok_or_else(|| StoreError(format!("a frame of {} bytes is too big", payload.len())))?;
    let crc = crc32fast::hash(payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
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
/// `each` with every good payload. `Err` is corruption (or an I/O error), with its offset.
pub(crate) fn read<R: Read>(
    mut r: R,
    mut offset: u64,
    file_len: u64,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Ending, String> {
    let mut payload = Vec::new();
    loop {
        let left = file_len.saturating_sub(offset);
        if left == 0 {
            return Ok(Ending::Clean);
        }
        let torn = |why: String| {
            Ok(Ending::Torn {
                valid_len: offset,
                why,
            })
        };
        if left < HEADER as u64 {
            return torn(format!("{left} bytes, less than a frame header"));
        }
        let mut head = [0u8; HEADER];
        r.read_exact(&mut head)
            .map_err(|e| format!("at byte {offset}: {e}"))?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if head == [0; HEADER] {
            // A zero-filled tail (the file grew, its data never reached the disk)?
            let mut rest = Vec::new();
            r.read_to_end(&mut rest)
                .map_err(|e| format!("at byte {offset}: {e}"))?;
            if rest.iter().all(|&b| b == 0) {
                return torn(format!("{left} zero bytes"));
            }
            return Err(format!("at byte {offset}: an empty frame followed by data"));
        }
        let end = offset + HEADER as u64 + len;
        if end > file_len {
            return torn(format!(
                "a frame of {len} bytes with only {} in the file",
                left - HEADER as u64
            ));
        }
        if len > MAX_PAYLOAD {
            return Err(format!("at byte {offset}: a frame length of {len} bytes"));
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)
            .map_err(|e| format!("at byte {offset}: {e}"))?;
        if crc32fast::hash(&payload) != crc {
            if end == file_len {
                return torn("the last frame fails its checksum".into());
            }
            return Err(format!(
                "at byte {offset}: a frame fails its checksum and {} bytes follow it",
                file_len - end
            ));
        }
        each(&payload).map_err(|e| format!("in the frame at byte {offset}: {e}"))?;
        offset = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            let at = start(&mut out);
            out.extend_from_slice(p);
            finish(&mut out, at).unwrap();
        }
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Result<Ending, String>) {
        let mut got = Vec::new();
        let ending = read(bytes, 0, bytes.len() as u64, |p| {
            got.push(p.to_vec());
            Ok(())
        });
        (got, ending)
    }

    #[test]
    fn frames_read_back_and_end_clean() {
        let bytes = frames(&[b"one", b"two", b"three"]);
        let (got, ending) = read_all(&bytes);
        assert_eq!(
            got,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(ending, Ok(Ending::Clean));
    }

    #[test]
    fn every_cut_of_the_last_frame_is_a_torn_tail_at_the_previous_frame() {
        let bytes = frames(&[b"first", b"second frame"]);
        let first_end = (HEADER + 5) as u64;
        for cut in first_end as usize + 1..bytes.len() {
            let (got, ending) = read_all(&bytes[..cut]);
            assert_eq!(got, vec![b"first".to_vec()], "cut at {cut}");
            assert!(
                matches!(ending, Ok(Ending::Torn { valid_len, .. }) if valid_len == first_end),
                "cut at {cut}: {ending:?}"
            );
        }
    }

    #[test]
    fn a_damaged_last_frame_or_a_zero_tail_is_torn() {
        let mut bytes = frames(&[b"first", b"second"]);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        let (_, ending) = read_all(&bytes);
        assert!(matches!(ending, Ok(Ending::Torn { .. })), "{ending:?}");
        let mut zeros = frames(&[b"first"]);
        zeros.extend_from_slice(&[0; 100]);
        let (got, ending) = read_all(&zeros);
        assert_eq!(got.len(), 1);
        assert!(
            matches!(ending, Ok(Ending::Torn { valid_len: 13, .. })),
            "{ending:?}"
        );
    }

    #[test]
    fn a_damaged_frame_with_data_after_it_is_corruption() {
        let mut bytes = frames(&[b"first", b"second"]);
        bytes[HEADER] ^= 1;
        let (got, ending) = read_all(&bytes);
        assert!(got.is_empty());
        let e = ending.unwrap_err();
        assert!(e.contains("at byte 0") && e.contains("checksum"), "{e}");
        let mut nonzero = frames(&[b"first"]);
        nonzero.extend_from_slice(&[0; 9]);
        nonzero.push(7);
        assert!(read_all(&nonzero).1.is_err());
    }
}
