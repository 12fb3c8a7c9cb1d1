//! [`Index`]: the in-memory map from keys to the on-disk versions of their
//! values, with snapshot pinning and per-segment live-byte accounting.
//!
//! Model: each key has a newest version and, oldest first, the older versions
//! some snapshot still needs. A version is `(seq, location)` or a tombstone.
//! Version `v` with successor `n` is kept only while a snapshot `s` of its
//! namespace exists with `v.seq <= s < n.seq`; everything else is dead and its
//! bytes are subtracted from its segment's live count, which drives
//! compaction. The index is rebuilt at open from the last checkpoint plus the
//! log replayed after it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::batch::Namespace;

/// Where a value lives: segment, byte offset, length and its CRC32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

/// One version of a key: the batch that wrote it and where its value is
/// (`None`: a deletion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub seq: u64,
    pub loc: Option<Loc>,
}

/// The versions of one key.
#[derive(Clone, Debug)]
pub struct Versions {
    pub latest: Version,
    /// Older versions still pinned by snapshots, oldest first.
    pub older: Vec<Version>,
}

impl Versions {
    /// The version visible at `at` (`None`: the newest).
    fn visible(&self, at: Option<u64>) -> Option<Version> {
        let Some(at) = at else {
            return Some(self.latest);
        };
        if self.latest.seq <= at {
            return Some(self.latest);
        }
        self.older.iter().rev().find(|v| v.seq <= at).copied()
    }
}

/// One namespace: its keys and its snapshots (by sequence number).
#[derive(Clone, Debug, Default)]
pub struct NsIndex {
    pub keys: BTreeMap<u64, Versions>,
    pub snapshots: BTreeSet<u64>,
}

/// What [`Index::diff`] reports for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key has a (new) value in the newer snapshot.
    Put,
    /// The key had a value in the older snapshot and has none in the newer.
    Deleted,
}

/// The whole index.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: BTreeMap<Namespace, NsIndex>,
    seg_live: BTreeMap<u32, u64>,
    live_bytes: u64,
}

fn needed(snapshots: &BTreeSet<u64>, seq: u64, next_seq: u64) -> bool {
    snapshots.range(seq..next_seq).next().is_some()
}

impl Index {
    pub fn new() -> Self {
        Index::default()
    }

    fn add_live(&mut self, loc: Option<Loc>) {
        if let Some(loc) = loc {
            *self.seg_live.entry(loc.seg).or_default() += u64::from(loc.len);
            self.live_bytes += u64::from(loc.len);
        }
    }

    fn sub_live(&mut self, loc: Option<Loc>) {
        if let Some(loc) = loc {
            let live = self.seg_live.get_mut(&loc.seg).expect("live segment");
            *live = live
                .checked_sub(u64::from(loc.len))
                .expect("segment live bytes never go negative");
            assert!(
                self.live_bytes >= u64::from(loc.len),
                "total live bytes never go negative"
            );
            self.live_bytes -= u64::from(loc.len);
        }
    }

    /// Records a new newest version of `key` (a put, or a deletion with
    /// `loc: None`). Versions arrive in non-decreasing `seq`; several ops of
    /// one batch share a seq and the later one wins.
    pub fn set(&mut self, ns: Namespace, key: u64, version: Version) {
        self.add_live(version.loc);
        let nsi = self.namespaces.entry(ns).or_default();
        let mut dead = None;
        match nsi.keys.get_mut(&key) {
            None if version.loc.is_none() => {}
            None => {
                nsi.keys.insert(
                    key,
                    Versions {
                        latest: version,
                        older: Vec::new(),
                    },
                );
            }
            Some(vs) => {
                assert!(
                    version.seq >= vs.latest.seq,
                    "versions of a key arrive in seq order"
                );
                let previous = std::mem::replace(&mut vs.latest, version);
                // An earlier op of the same batch (equal seq) is overridden
                // outright: no snapshot can fall inside one batch.
                if previous.seq < version.seq && needed(&nsi.snapshots, previous.seq, version.seq) {
                    assert!(
                        vs.older.last().is_none_or(|o| o.seq < previous.seq),
                        "older versions stay in seq order"
                    );
                    vs.older.push(previous);
                } else {
                    dead = previous.loc;
                }
                if vs.latest.loc.is_none() && vs.older.is_empty() {
                    nsi.keys.remove(&key);
                }
            }
        }
        self.sub_live(dead);
    }

    /// Deletes every key of `ns` in `range` as of `seq`.
    pub fn delete_range(&mut self, ns: Namespace, range: Range<u64>, seq: u64) {
        let Some(nsi) = self.namespaces.get(&ns) else {
            return;
        };
        let keys: Vec<u64> = nsi
            .keys
            .range(range)
            .filter(|(_, vs)| vs.latest.loc.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.set(ns, key, Version { seq, loc: None });
        }
    }

    /// Removes a namespace, its keys and its snapshots.
    pub fn drop_namespace(&mut self, ns: Namespace) {
        if let Some(nsi) = self.namespaces.remove(&ns) {
            for vs in nsi.keys.into_values() {
                self.sub_live(vs.latest.loc);
                for v in vs.older {
                    self.sub_live(v.loc);
                }
            }
        }
    }

    pub fn create_snapshot(&mut self, ns: Namespace, seq: u64) {
        let nsi = self.namespaces.entry(ns).or_default();
        assert!(
            nsi.snapshots.last().is_none_or(|&last| last < seq),
            "snapshots are taken in seq order"
        );
        nsi.snapshots.insert(seq);
    }

    /// Releases a snapshot; false if it did not exist.
    pub fn drop_snapshot(&mut self, ns: Namespace, seq: u64) -> bool {
        let Some(nsi) = self.namespaces.get_mut(&ns) else {
            return false;
        };
        if !nsi.snapshots.remove(&seq) {
            return false;
        }
        let mut dead = Vec::new();
        let snapshots = &nsi.snapshots;
        nsi.keys.retain(|_, vs| {
            let mut next = vs.latest.seq;
            let mut kept = Vec::with_capacity(vs.older.len());
            for v in vs.older.iter().rev() {
                if needed(snapshots, v.seq, next) {
                    kept.push(*v);
                } else {
                    dead.push(v.loc);
                }
                next = v.seq;
            }
            kept.reverse();
            vs.older = kept;
            vs.latest.loc.is_some() || !vs.older.is_empty()
        });
        for loc in dead {
            self.sub_live(loc);
        }
        true
    }

    pub fn has_snapshot(&self, ns: Namespace, seq: u64) -> bool {
        self.namespaces
            .get(&ns)
            .is_some_and(|n| n.snapshots.contains(&seq))
    }

    /// Snapshots of `ns`, oldest first.
    pub fn snapshots(&self, ns: Namespace) -> Vec<u64> {
        self.namespaces
            .get(&ns)
            .map(|n| n.snapshots.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Where the value of `key` visible at `at` lives (`at: None`: newest).
    pub fn get(&self, ns: Namespace, key: u64, at: Option<u64>) -> Option<Loc> {
        let vs = self.namespaces.get(&ns)?.keys.get(&key)?;
        vs.visible(at)?.loc
    }

    /// Up to `max_items` live keys of `ns` in `range` visible at `at`.
    pub fn range(
        &self,
        ns: Namespace,
        range: Range<u64>,
        at: Option<u64>,
        max_items: usize,
    ) -> Vec<(u64, Loc)> {
        let Some(nsi) = self.namespaces.get(&ns) else {
            return Vec::new();
        };
        nsi.keys
            .range(range)
            .filter_map(|(k, vs)| Some((*k, vs.visible(at)?.loc?)))
            .take(max_items)
            .collect()
    }

    /// Keys of `ns` whose visible value differs between snapshot `older` and
    /// `newer` (`None`: now). Touches only the index, never a value.
    pub fn diff(&self, ns: Namespace, older: u64, newer: Option<u64>) -> Vec<(u64, ChangeKind)> {
        let Some(nsi) = self.namespaces.get(&ns) else {
            return Vec::new();
        };
        let live = |v: Option<Version>| v.filter(|v| v.loc.is_some()).map(|v| v.seq);
        nsi.keys
            .iter()
            .filter_map(|(k, vs)| {
                let before = live(vs.visible(Some(older)));
                let after = live(vs.visible(newer));
                match (before, after) {
                    (b, a) if b == a => None,
                    (_, Some(_)) => Some((*k, ChangeKind::Put)),
                    (Some(_), None) => Some((*k, ChangeKind::Deleted)),
                    (None, None) => None,
                }
            })
            .collect()
    }

    /// Moves version `seq` of `key` from `from` to `to` if the index still
    /// points there (compaction). Returns whether it moved.
    pub fn relocate(&mut self, ns: Namespace, key: u64, seq: u64, from: Loc, to: Loc) -> bool {
        assert!(
            from.len == to.len && from.crc == to.crc && from.seg != to.seg,
            "relocation moves a value's bytes to another segment unchanged"
        );
        let Some(vs) = self
            .namespaces
            .get_mut(&ns)
            .and_then(|n| n.keys.get_mut(&key))
        else {
            return false;
        };
        let slot = std::iter::once(&mut vs.latest)
            .chain(vs.older.iter_mut())
            .find(|v| v.seq == seq && v.loc == Some(from));
        let Some(slot) = slot else {
            return false;
        };
        slot.loc = Some(to);
        self.sub_live(Some(from));
        self.add_live(Some(to));
        true
    }

    /// True if version `seq` of `key` still lives at `loc`.
    pub fn points_at(&self, ns: Namespace, key: u64, seq: u64, loc: Loc) -> bool {
        self.namespaces
            .get(&ns)
            .and_then(|n| n.keys.get(&key))
            .is_some_and(|vs| {
                std::iter::once(&vs.latest)
                    .chain(vs.older.iter())
                    .any(|v| v.seq == seq && v.loc == Some(loc))
            })
    }

    /// Live bytes per segment (segments with none are absent).
    pub fn segment_live(&self, seg: u32) -> u64 {
        self.seg_live.get(&seg).copied().unwrap_or(0)
    }

    pub fn forget_segment(&mut self, seg: u32) {
        if let Some(live) = self.seg_live.remove(&seg) {
            assert_eq!(live, 0, "only dead segments are forgotten");
        }
    }

    /// Bytes of values some key or snapshot still references.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&Namespace, &NsIndex)> {
        self.namespaces.iter()
    }

    pub fn contains_namespace(&self, ns: Namespace) -> bool {
        self.namespaces.contains_key(&ns)
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// Inserts a whole namespace read back from a checkpoint.
    pub fn load_namespace(&mut self, ns: Namespace, nsi: NsIndex) {
        for vs in nsi.keys.values() {
            self.add_live(vs.latest.loc);
            for v in &vs.older {
                self.add_live(v.loc);
            }
        }
        let previous = self.namespaces.insert(ns, nsi);
        assert!(previous.is_none(), "a checkpoint lists each namespace once");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Namespace = Namespace::new(1, 1);

    fn put(seq: u64, seg: u32) -> Version {
        Version {
            seq,
            loc: Some(Loc {
                seg,
                offset: seq as u32,
                len: 10,
                crc: 0,
            }),
        }
    }

    #[test]
    fn overwrites_free_space_unless_pinned() {
        let mut ix = Index::new();
        ix.set(NS, 1, put(1, 1));
        ix.set(NS, 1, put(2, 1));
        assert_eq!(ix.live_bytes(), 10);
        ix.create_snapshot(NS, 3);
        ix.set(NS, 1, put(4, 2));
        assert_eq!(ix.live_bytes(), 20);
        assert_eq!(ix.get(NS, 1, Some(3)).unwrap().offset, 2);
        assert_eq!(ix.get(NS, 1, None).unwrap().offset, 4);
        assert_eq!(ix.diff(NS, 3, None), vec![(1, ChangeKind::Put)]);
        assert!(ix.drop_snapshot(NS, 3));
        assert_eq!(ix.live_bytes(), 10);
        assert_eq!(ix.segment_live(1), 0);
    }

    #[test]
    fn deletions_are_remembered_only_while_pinned() {
        let mut ix = Index::new();
        ix.set(NS, 7, put(1, 1));
        ix.create_snapshot(NS, 1);
        ix.set(NS, 7, Version { seq: 2, loc: None });
        ix.set(NS, 8, put(3, 1));
        assert_eq!(ix.get(NS, 7, None), None);
        assert!(ix.get(NS, 7, Some(1)).is_some());
        assert_eq!(
            ix.diff(NS, 1, None),
            vec![(7, ChangeKind::Deleted), (8, ChangeKind::Put)]
        );
        ix.drop_snapshot(NS, 1);
        assert_eq!(ix.range(NS, 0..100, None, 10).len(), 1);
        assert_eq!(ix.live_bytes(), 10);
    }

    #[test]
    fn later_ops_of_one_batch_override_earlier_ones() {
        let mut ix = Index::new();
        ix.create_snapshot(NS, 1);
        ix.set(NS, 1, put(2, 1));
        ix.set(NS, 1, put(2, 1));
        assert_eq!(ix.live_bytes(), 10, "the first put of the batch is dead");
        ix.set(NS, 1, Version { seq: 2, loc: None });
        assert_eq!(ix.get(NS, 1, None), None);
        assert_eq!(ix.live_bytes(), 0);
        ix.set(NS, 1, put(2, 1));
        assert_eq!(ix.live_bytes(), 10);
    }

    #[test]
    fn relocation_moves_accounting() {
        let mut ix = Index::new();
        let v = put(1, 1);
        ix.set(NS, 1, v);
        let to = Loc {
            seg: 9,
            offset: 0,
            len: 10,
            crc: 0,
        };
        assert!(ix.relocate(NS, 1, 1, v.loc.unwrap(), to));
        assert!(!ix.relocate(NS, 1, 1, v.loc.unwrap(), to));
        assert_eq!((ix.segment_live(1), ix.segment_live(9)), (0, 10));
    }
}
