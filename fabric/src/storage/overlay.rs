//! [`BlockOverlay`]: applied block changes whose kvstore batch is not yet
//! durable (kvstore shows a batch only once it is durable).
//!
//! Every apply batch gets a ticket (increasing). A write records the block's
//! new data under its ticket; a trim, write-zeroes or shrink records a zeroed
//! range under its ticket. When the batch is durable its ticket's records
//! are dropped: kvstore now shows the same thing. A lookup returns the
//! newest record covering the block, or [`Lookup::Miss`] (read kvstore).
//! Size: bounded by the apply batches in flight
//! ([`crate::limits::APPLY_IN_FLIGHT_MAX`] per volume).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::volume::{BLOCK_BYTES, BlockData};

/// What the overlay knows about one block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// The block's newest applied data.
    Data(&'a [u8]),
    /// The block reads as zeroes.
    Zero,
    /// Nothing pending: kvstore has the newest state.
    Miss,
}

#[derive(Debug, Default)]
pub(crate) struct BlockOverlay {
    /// Newest pending write per block: (ticket, payload, block within it).
    blocks: BTreeMap<u64, (u64, BlockData, u32)>,
    /// Pending zeroed ranges by ticket.
    zeroed: BTreeMap<u64, Range<u64>>,
    /// Blocks written by each pending ticket.
    written: BTreeMap<u64, Vec<u64>>,
    next_ticket: u64,
}

impl BlockOverlay {
    /// A fresh ticket for the next apply batch.
    pub(crate) fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Records that batch `ticket` writes `data` from block `offset`.
    pub(crate) fn write(&mut self, ticket: u64, offset: u64, data: &BlockData) {
        assert!(
            0 < ticket && ticket <= self.next_ticket,
            "a write's ticket was handed out"
        );
        assert!(
            self.written.keys().next_back().is_none_or(|t| *t < ticket),
            "overlay writes come in ticket order"
        );
        let blocks = self.written.entry(ticket).or_default();
        for i in 0..data.block_count() {
            let block = offset + u64::from(i);
            self.blocks.insert(block, (ticket, data.clone(), i));
            blocks.push(block);
        }
    }

    /// Records that batch `ticket` zeroes `range`.
    pub(crate) fn zero(&mut self, ticket: u64, range: Range<u64>) {
        assert!(
            0 < ticket && ticket <= self.next_ticket,
            "a zeroing's ticket was handed out"
        );
        assert!(
            self.zeroed.keys().next_back().is_none_or(|t| *t < ticket),
            "overlay zeroings come in ticket order"
        );
        assert!(range.start <= range.end, "a zeroed range is not reversed");
        self.zeroed.insert(ticket, range);
    }

    /// Batch `ticket` is durable: forget what kvstore now shows.
    pub(crate) fn durable(&mut self, ticket: u64) {
        assert!(
            ticket <= self.next_ticket,
            "only handed-out tickets turn durable"
        );
        self.zeroed.remove(&ticket);
        for block in self.written.remove(&ticket).unwrap_or_default() {
            if self
                .blocks
                .get(&block)
                .is_some_and(|(t, _, _)| *t == ticket)
            {
                self.blocks.remove(&block);
            }
        }
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.zeroed.is_empty() && self.written.is_empty()
    }

    /// Forgets everything (the block map was replaced wholesale).
    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.zeroed.clear();
        self.written.clear();
    }

    /// The newest pending state of `block`.
    pub(crate) fn lookup(&self, block: u64) -> Lookup<'_> {
        let zeroed_at = self
            .zeroed
            .iter()
            .rev()
            .find(|(_, range)| range.contains(&block))
            .map(|(ticket, _)| *ticket);
        let newest_write = self
            .blocks
            .get(&block)
            .filter(|(wrote, _, _)| zeroed_at.is_none_or(|z| z < *wrote));
        match (newest_write, zeroed_at) {
            (Some((_, data, i)), _) => {
                debug_assert!(*i < data.block_count(), "the block lies within its payload");
                let at = *i as usize * BLOCK_BYTES;
                Lookup::Data(&data.as_bytes()[at..at + BLOCK_BYTES])
            }
            (None, Some(_)) => Lookup::Zero,
            (None, None) => Lookup::Miss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_record_wins_and_durable_forgets() {
        let mut overlay = BlockOverlay::default();
        let data = BlockData::new(vec![7; 2 * BLOCK_BYTES]).unwrap();
        let t1 = overlay.ticket();
        overlay.write(t1, 10, &data);
        let t2 = overlay.ticket();
        overlay.zero(t2, 11..20);
        assert!(matches!(overlay.lookup(10), Lookup::Data(b) if b[0] == 7));
        assert_eq!(overlay.lookup(11), Lookup::Zero);
        assert_eq!(overlay.lookup(9), Lookup::Miss);
        let t3 = overlay.ticket();
        overlay.write(t3, 11, &BlockData::new(vec![9; BLOCK_BYTES]).unwrap());
        assert!(matches!(overlay.lookup(11), Lookup::Data(b) if b[0] == 9));
        overlay.durable(t1);
        assert_eq!(overlay.lookup(10), Lookup::Miss);
        overlay.durable(t2);
        overlay.durable(t3);
        assert_eq!(overlay.lookup(11), Lookup::Miss);
    }
}
