//! Segment files and the record frame.
//!
//! A segment file starts with a [`SEGMENT_HEADER_BYTES`] header (magic,
//! format version, kind, segment id, CRC), then records:
//!
//! ```text
//! crc32c u32 | payload_len u32 | seq u64 | payload
//! ```
//!
//! The CRC covers the segment id, the length, the sequence number and the
//! payload. Seeding it with the segment id means bytes left over from a
//! recycled file's previous life never pass as records of its new one.
//! Within log segments sequence numbers are consecutive across files, which
//! lets recovery tell a torn tail from a hole.

use crate::limits::BATCH_BYTES_MAX;

/// Bytes of the segment header; records start here.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 16;
const SEGMENT_MAGIC: &[u8; 8] = b"METROSEG";
const FORMAT_VERSION: u32 = 1;

/// What a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentKind {
    /// The write-ahead log: batches in sequence order, replayed at recovery.
    Log = 1,
    /// Values relocated by compaction; reachable only through a checkpoint.
    Compacted = 2,
}

impl SegmentKind {
    fn prefix(self) -> &'static str {
        match self {
            SegmentKind::Log => "log-",
            SegmentKind::Compacted => "cmp-",
        }
    }
}

/// The file name of segment `id` of `kind`.
pub fn segment_name(kind: SegmentKind, id: u32) -> String {
    format!("{}{id:08x}.seg", kind.prefix())
}

/// Parses a segment file name into its kind and id.
pub fn parse_segment_name(name: &str) -> Option<(SegmentKind, u32)> {
    let rest = name.strip_suffix(".seg")?;
    for kind in [SegmentKind::Log, SegmentKind::Compacted] {
        if let Some(hex) = rest.strip_prefix(kind.prefix()) {
            return u32::from_str_radix(hex, 16).ok().map(|id| (kind, id));
        }
    }
    None
}

/// The header written at the start of segment `id`.
pub fn segment_header(kind: SegmentKind, id: u32) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    h[16..20].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// True if `h` is a valid header for segment `id` of `kind`.
pub fn header_matches(h: &[u8], kind: SegmentKind, id: u32) -> bool {
    h.len() >= SEGMENT_HEADER_BYTES as usize
        && h[..SEGMENT_HEADER_BYTES as usize] == segment_header(kind, id)
}

/// Appends one framed record to `out`.
#[cfg(test)]
pub fn encode_record(out: &mut Vec<u8>, segment_id: u32, seq: u64, payload: &[u8]) {
    encode_record_with(out, segment_id, seq, |out| out.extend_from_slice(payload));
}

/// Appends one framed record whose payload `write_payload` appends to `out`
/// (no intermediate copy). Returns the payload's range inside `out`.
pub fn encode_record_with(
    out: &mut Vec<u8>,
    segment_id: u32,
    seq: u64,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> std::ops::Range<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    write_payload(out);
    let payload = start + RECORD_HEADER_BYTES..out.len();
    assert!(
        payload.len() <= BATCH_BYTES_MAX,
        "a record holds one batch of at most BATCH_BYTES_MAX"
    );
    let len = u32::try_from(payload.len()).expect("record payloads are under 4 GiB");
    let crc = record_crc(segment_id, len, seq, &out[payload.clone()]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    payload
}

fn record_crc(segment_id: u32, len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&segment_id.to_le_bytes());
    head[4..8].copy_from_slice(&len.to_le_bytes());
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// A record found in a segment image.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundRecord<'a> {
    pub seq: u64,
    /// Offset of the record header in the file.
    pub offset: u64,
    /// Offset of the payload in the file.
    pub payload_offset: u64,
    pub payload: &'a [u8],
}

/// Tries to read a valid record of segment `segment_id` at `offset` of the
/// file image `file` (the whole file). `None` if no valid record is there.
pub fn record_at(file: &[u8], segment_id: u32, offset: u64) -> Option<FoundRecord<'_>> {
    let at = usize::try_from(offset).ok()?;
    let head = file.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let crc = u32::from_le_bytes(head[..4].try_into().ok()?);
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let start = at + RECORD_HEADER_BYTES;
    let payload = file.get(start..start.checked_add(len as usize)?)?;
    if record_crc(segment_id, len, seq, payload) != crc {
        return None;
    }
    Some(FoundRecord {
        seq,
        offset,
        payload_offset: start as u64,
        payload,
    })
}

/// After a bad record at `bad_offset`, looks for any valid record later in
/// the image. Finding one means the damage is not a torn tail.
pub fn valid_record_after(file: &[u8], segment_id: u32, bad_offset: u64) -> Option<u64> {
    let start = bad_offset as usize + 1;
    (start..file.len().saturating_sub(RECORD_HEADER_BYTES))
        .map(|at| at as u64)
        .find(|&at| record_at(file, segment_id, at).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_name(SegmentKind::Compacted, 0xab);
        assert_eq!(name, "cmp-000000ab.seg");
        assert_eq!(
            parse_segment_name(&name),
            Some((SegmentKind::Compacted, 0xab))
        );
        assert_eq!(parse_segment_name("log-zz.seg"), None);
        assert_eq!(parse_segment_name("ckpt-1"), None);
    }

    #[test]
    fn records_are_bound_to_their_segment() {
        let mut img = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        encode_record(&mut img, 7, 42, b"payload");
        let r = record_at(&img, 7, SEGMENT_HEADER_BYTES).unwrap();
        assert_eq!((r.seq, r.payload), (42, &b"payload"[..]));
        assert!(record_at(&img, 8, SEGMENT_HEADER_BYTES).is_none());
        let last = img.len() - 1;
        img[last] ^= 1;
        assert!(record_at(&img, 7, SEGMENT_HEADER_BYTES).is_none());
    }

    #[test]
    fn finds_valid_records_after_damage() {
        let mut img = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        encode_record(&mut img, 1, 1, b"first");
        let second = img.len() as u64;
        encode_record(&mut img, 1, 2, b"second");
        img[SEGMENT_HEADER_BYTES as usize + 20] ^= 1;
        assert_eq!(
            valid_record_after(&img, 1, SEGMENT_HEADER_BYTES),
            Some(second)
        );
        assert_eq!(valid_record_after(&img, 1, second), None);
    }
}
