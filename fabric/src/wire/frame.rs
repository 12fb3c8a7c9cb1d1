//! The frame layer: version byte, checksummed archived header, raw blocks.
//!
//! ```text
//! offset  size                      field
//! 0       1                         version (WIRE_VERSION)
//! 1       3                         reserved, zero
//! 4       4  u32 LE                 header_len: archived header bytes
//! 8       4  u32 LE                 block_count
//! 12      4  u32 LE                 header_crc: CRC32C of bytes 0..12, the padded
//!                                   header and the padded CRC table
//! 16      header_len, padded to 16  rkyv-archived header, zero padding
//! ..      4 * block_count, padded   CRC32C of each block, u32 LE, zero padding
//! ..      4096 * block_count        the blocks, raw
//! ```
//!
//! Contract: [`decode_frame`] accepts exactly the frames [`encode_frame`]
//! produces and rejects anything else with a [`WireError`]: a flipped bit
//! anywhere fails a CRC, a padding check or a length check; it never panics.
//! The header comes back in a fresh [`HeaderBuf`] (16-byte aligned) so that
//! `rkyv::access` can validate it whatever the alignment of the received
//! buffer; blocks are borrowed from the received buffer (no copy).

use rkyv::util::AlignedVec;

use super::WireError;
use crate::limits::{FRAME_BLOCKS_MAX, HEADER_BYTES_MAX};
use crate::volume::BLOCK_BYTES;

/// The version of the wire format this build speaks. Bump on any change of
/// layout; a frame of another version is refused, never guessed at.
pub const WIRE_VERSION: u8 = 2;

/// Bytes in the fixed prelude before the header.
pub const PRELUDE_BYTES: usize = 16;

/// Alignment of the header, the CRC table and the blocks inside a frame, and
/// of the buffer the header is validated in.
pub const HEADER_ALIGN: usize = 16;

/// A 16-byte aligned buffer holding an archived header.
pub type HeaderBuf = AlignedVec<HEADER_ALIGN>;

/// A decoded frame: its header, copied out and aligned, and its blocks,
/// borrowed from the frame, each already checked against its CRC.
#[derive(Debug)]
pub struct RawFrame<'a> {
    /// The archived header, not yet validated by rkyv.
    pub header: HeaderBuf,
    /// The blocks, each exactly [`BLOCK_BYTES`] long.
    pub blocks: Vec<&'a [u8]>,
}

fn padded(len: usize) -> usize {
    len.div_ceil(HEADER_ALIGN) * HEADER_ALIGN
}

/// Builds a frame from an archived `header` and whole `blocks`.
pub fn encode_frame(header: &[u8], blocks: &[&[u8]]) -> Result<Vec<u8>, WireError> {
    let header_len =
        u32::try_from(header.len()).map_err(|_| WireError::HeaderTooLarge { len: u64::MAX })?;
    if header_len > HEADER_BYTES_MAX {
        return Err(WireError::HeaderTooLarge {
            len: u64::from(header_len),
        });
    }
    let block_count = u32::try_from(blocks.len())
        .ok()
        .filter(|count| *count <= FRAME_BLOCKS_MAX)
        .ok_or(WireError::TooManyBlocks {
            count: blocks.len() as u64,
        })?;
    if let Some(bad) = blocks.iter().find(|block| block.len() != BLOCK_BYTES) {
        return Err(WireError::Encode(format!(
            "block of {} bytes, expected {BLOCK_BYTES}",
            bad.len()
        )));
    }
    assert!(
        header_len <= HEADER_BYTES_MAX && block_count <= FRAME_BLOCKS_MAX,
        "an encoded frame is within its limits after the checks"
    );
    let header_padded = padded(header.len());
    let table_padded = padded(blocks.len() * 4);
    assert!(
        header_padded.is_multiple_of(HEADER_ALIGN) && table_padded.is_multiple_of(HEADER_ALIGN),
        "blocks start aligned"
    );
    let total = PRELUDE_BYTES + header_padded + table_padded + blocks.len() * BLOCK_BYTES;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&[WIRE_VERSION, 0, 0, 0]);
    frame.extend_from_slice(&header_len.to_le_bytes());
    frame.extend_from_slice(&block_count.to_le_bytes());
    frame.extend_from_slice(&[0; 4]); // header_crc, filled below
    frame.extend_from_slice(header);
    frame.resize(PRELUDE_BYTES + header_padded, 0);
    for block in blocks {
        frame.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    frame.resize(PRELUDE_BYTES + header_padded + table_padded, 0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..12]), &frame[PRELUDE_BYTES..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    for block in blocks {
        frame.extend_from_slice(block);
    }
    assert_eq!(frame.len(), total, "the frame is as long as planned");
    Ok(frame)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The parsed prelude of a frame.
struct Prelude {
    header_len: usize,
    block_count: usize,
    header_crc: u32,
}

fn decode_prelude(bytes: &[u8]) -> Result<Prelude, WireError> {
    let Some(&version) = bytes.first() else {
        return Err(WireError::Truncated {
            needed: PRELUDE_BYTES as u64,
            got: 0,
        });
    };
    if version != WIRE_VERSION {
        return Err(WireError::Version { got: version });
    }
    if bytes.len() < PRELUDE_BYTES {
        return Err(WireError::Truncated {
            needed: PRELUDE_BYTES as u64,
            got: bytes.len() as u64,
        });
    }
    if bytes[1..4] != [0, 0, 0] {
        return Err(WireError::Reserved);
    }
    let header_len = read_u32(bytes, 4);
    if header_len > HEADER_BYTES_MAX {
        return Err(WireError::HeaderTooLarge {
            len: u64::from(header_len),
        });
    }
    let block_count = read_u32(bytes, 8);
    if block_count > FRAME_BLOCKS_MAX {
        return Err(WireError::TooManyBlocks {
            count: u64::from(block_count),
        });
    }
    Ok(Prelude {
        header_len: header_len as usize,
        block_count: block_count as usize,
        header_crc: read_u32(bytes, 12),
    })
}

/// Checks and splits a received frame. Never panics, whatever `bytes` holds.
pub fn decode_frame(bytes: &[u8]) -> Result<RawFrame<'_>, WireError> {
    let prelude = decode_prelude(bytes)?;
    let header_end = PRELUDE_BYTES + padded(prelude.header_len);
    let table_end = header_end + padded(prelude.block_count * 4);
    let expected = table_end + prelude.block_count * BLOCK_BYTES;
    if bytes.len() < expected {
        return Err(WireError::Truncated {
            needed: expected as u64,
            got: bytes.len() as u64,
        });
    }
    if bytes.len() > expected {
        return Err(WireError::TrailingBytes {
            expected: expected as u64,
            got: bytes.len() as u64,
        });
    }
    let actual = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[..12]),
        &bytes[PRELUDE_BYTES..table_end],
    );
    if actual != prelude.header_crc {
        return Err(WireError::HeaderChecksum {
            expected: prelude.header_crc,
            actual,
        });
    }
    let header_bytes = &bytes[PRELUDE_BYTES..PRELUDE_BYTES + prelude.header_len];
    let table_start = header_end;
    let table_used = table_start + prelude.block_count * 4;
    let pads = [
        &bytes[PRELUDE_BYTES + prelude.header_len..header_end],
        &bytes[table_used..table_end],
    ];
    if pads.iter().any(|pad| pad.iter().any(|byte| *byte != 0)) {
        return Err(WireError::Padding);
    }
    let mut blocks = Vec::with_capacity(prelude.block_count);
    for (index, block) in bytes[table_end..].chunks_exact(BLOCK_BYTES).enumerate() {
        let expected = read_u32(bytes, table_start + index * 4);
        let actual = crc32c::crc32c(block);
        if actual != expected {
            return Err(WireError::BlockChecksum {
                index: index as u32,
                expected,
                actual,
            });
        }
        blocks.push(block);
    }
    let mut header = HeaderBuf::with_capacity(prelude.header_len);
    header.extend_from_slice(header_bytes);
    Ok(RawFrame { header, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let blocks = [vec![7u8; BLOCK_BYTES], vec![9u8; BLOCK_BYTES]];
        let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
        encode_frame(b"hello header", &refs).expect("encodes")
    }

    #[test]
    fn round_trip_keeps_header_and_blocks() {
        let frame = sample();
        assert_eq!(frame.len() % HEADER_ALIGN, 0);
        let raw = decode_frame(&frame).expect("decodes");
        assert_eq!(raw.header.as_slice(), b"hello header");
        assert_eq!(raw.blocks.len(), 2);
        assert!(raw.blocks[1].iter().all(|b| *b == 9));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let frame = sample();
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&bad).is_err(), "flip of bit {bit} accepted");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let frame = sample();
        for len in 0..frame.len() {
            assert!(decode_frame(&frame[..len]).is_err(), "truncation to {len}");
        }
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode_frame(&long),
            Err(WireError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn wrong_version_and_block_crc_are_named() {
        let mut frame = sample();
        frame[0] = WIRE_VERSION + 1;
        assert!(matches!(
            decode_frame(&frame),
            Err(WireError::Version { .. })
        ));
        let mut frame = sample();
        let last = frame.len() - 1;
        frame[last] ^= 0x80;
        assert!(matches!(
            decode_frame(&frame),
            Err(WireError::BlockChecksum { index: 1, .. })
        ));
    }

    #[test]
    fn partial_blocks_are_refused_at_encode() {
        let short = [0u8; 100];
        assert!(encode_frame(b"h", &[&short]).is_err());
    }
}
