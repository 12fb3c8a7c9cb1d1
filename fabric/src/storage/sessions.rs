//! Client sessions: block commands applied at most once, however often a
//! client (or a node forwarding for it) delivers them (Raft thesis §6.3;
//! TigerBeetle's client sessions).
//!
//! Contract:
//! - A client registers a session through the volume's log
//!   (`VolumeCommand::RegisterSession`); its id is that entry's log index,
//!   so ids are unique and increasing. Every block command it sends after
//!   is a `VolumeCommand::Once` carrying (session, request number), numbers
//!   from 1, each new request a new number, a retry the same number.
//! - Per session the state machine keeps the highest request number
//!   applied and which of the [`SESSION_WINDOW_REQUESTS`] numbers up to it
//!   were applied (and which of those were refused as out of range). A
//!   command whose number was applied is *not applied again*: it is
//!   answered as the first delivery was. A number below the window is
//!   refused (`RequestStale`), never applied. A client keeps its requests in
//!   flight within one window (the oldest unanswered one and the newest
//!   sent less than [`SESSION_WINDOW_REQUESTS`] apart), so a request it
//!   still waits for is always inside the window.
//! - At most [`SESSIONS_MAX`] sessions per volume; registering one more
//!   evicts the least recently active (lowest last-active log index, then
//!   lowest id). Eviction is decided by the log alone, so every replica
//!   evicts the same session; requests of an evicted session are refused
//!   (`SessionExpired`), never applied.
//! - The table is state-machine state: each change is in the same kvstore
//!   batch as the entry's other changes (namespace `KIND_SESSIONS`), it is
//!   reloaded on open, and a Raft snapshot carries it exactly as of the
//!   snapshot's last applied entry (a table from later would make the
//!   receiver skip entries it replays).

use std::collections::BTreeMap;

use metro_kvstore::{Namespace, Store};

use super::StorageError;
use crate::limits::{SESSION_WINDOW_REQUESTS, SESSIONS_MAX};

/// Bytes of one encoded [`SessionRecord`].
pub const SESSION_RECORD_BYTES: usize = 32;
/// Bytes of one session in a table encoding: its id, then its record.
pub const SESSION_ENTRY_BYTES: usize = 8 + SESSION_RECORD_BYTES;

// The window is one bit per request of a u64.
const _: () = assert!(SESSION_WINDOW_REQUESTS == u64::BITS as u64);

/// What a session remembers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// The log index of the session's last registration or applied request.
    pub last_active: u64,
    /// The highest request number applied (0: none yet).
    pub highest: u64,
    /// Bit `i`: request `highest - i` was applied.
    pub applied: u64,
    /// Bit `i`: request `highest - i` was applied and refused (out of range).
    pub refused: u64,
}

/// What to do with a delivered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not applied before: apply it.
    Apply,
    /// Applied before: answer as then (`refused`: out of range), apply nothing.
    Duplicate { refused: bool },
    /// The session is unknown: refuse.
    Expired,
    /// Below the session's window: refuse.
    Stale,
}

impl SessionRecord {
    fn encode(&self) -> [u8; SESSION_RECORD_BYTES] {
        let mut out = [0u8; SESSION_RECORD_BYTES];
        for (i, word) in [self.last_active, self.highest, self.applied, self.refused]
            .into_iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Session `id`'s record from `bytes`; `None` unless well-formed and
    /// consistent (see [`Self::is_consistent`]) and the id a log index no
    /// later than the session's activity.
    fn decode(id: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SESSION_RECORD_BYTES {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let record = Self {
            last_active: word(0),
            highest: word(1),
            applied: word(2),
            refused: word(3),
        };
        (id > 0 && record.last_active >= id && record.is_consistent()).then_some(record)
    }

    /// Refusals are a subset of applied requests; nothing is applied above
    /// `highest`, which is applied if set; nothing below request 1.
    fn is_consistent(&self) -> bool {
        let below_first = match self.highest {
            0 => u64::MAX,
            h if h < SESSION_WINDOW_REQUESTS => u64::MAX << h,
            _ => 0,
        };
        self.refused & !self.applied == 0
            && (self.highest == 0 || self.applied & 1 == 1)
            && self.applied & below_first == 0
    }
}

/// One volume's sessions (see the module contract).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    sessions: BTreeMap<u64, SessionRecord>,
}

impl SessionTable {
    /// Reads the table from its namespace.
    pub fn load(store: &Store, ns: Namespace) -> Result<Self, StorageError> {
        let mut table = Self::default();
        for (id, value) in store.scan(ns, 0..u64::MAX, SESSIONS_MAX + 1)? {
            let record =
                SessionRecord::decode(id, &value).ok_or_else(|| StorageError::Corrupt {
                    what: "session record",
                    key: id,
                    reason: format!("{} bytes, inconsistent bits or id", value.len()),
                })?;
            table.sessions.insert(id, record);
        }
        if table.sessions.len() > SESSIONS_MAX {
            return Err(StorageError::Corrupt {
                what: "session table",
                key: 0,
                reason: format!("{} sessions, over {SESSIONS_MAX}", table.sessions.len()),
            });
        }
        Ok(table)
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Session `id`'s record.
    pub fn get(&self, id: u64) -> Option<&SessionRecord> {
        self.sessions.get(&id)
    }

    /// Opens session `id` (the registering entry's log index); the session
    /// evicted to make room, if any. Registering an open id changes nothing.
    pub fn register(&mut self, id: u64) -> (SessionRecord, Option<u64>) {
        if let Some(record) = self.sessions.get(&id) {
            return (*record, None);
        }
        assert!(
            self.sessions.keys().all(|&open| open < id),
            "session ids are log indexes, registered in order"
        );
        let evicted = (self.sessions.len() >= SESSIONS_MAX)
            .then(|| {
                self.sessions
                    .iter()
                    .min_by_key(|(id, record)| (record.last_active, **id))
                    .map(|(id, _)| *id)
            })
            .flatten();
        if let Some(old) = evicted {
            self.sessions.remove(&old);
        }
        let record = SessionRecord {
            last_active: id,
            ..SessionRecord::default()
        };
        self.sessions.insert(id, record);
        assert!(
            self.sessions.len() <= SESSIONS_MAX,
            "the table stays bounded"
        );
        (record, evicted)
    }

    /// What to do with request `request` of `session`.
    pub fn verdict(&self, session: u64, request: u64) -> Verdict {
        let Some(record) = self.sessions.get(&session) else {
            return Verdict::Expired;
        };
        if request > record.highest {
            return Verdict::Apply;
        }
        let age = record.highest - request;
        if age >= SESSION_WINDOW_REQUESTS {
            return Verdict::Stale;
        }
        if record.applied >> age & 1 == 1 {
            Verdict::Duplicate {
                refused: record.refused >> age & 1 == 1,
            }
        } else {
            Verdict::Apply
        }
    }

    /// Records that `request` of `session` was applied at `log_index`
    /// (`refused`: answered out of range); the record to persist. The
    /// caller had [`Verdict::Apply`] for it.
    pub fn record(
        &mut self,
        session: u64,
        request: u64,
        log_index: u64,
        refused: bool,
    ) -> Option<SessionRecord> {
        let record = self.sessions.get_mut(&session)?;
        assert!(request > 0, "request numbers start at 1");
        assert!(
            log_index > record.last_active,
            "a session's activity follows the log"
        );
        if request > record.highest {
            let shift = request - record.highest;
            let (applied, refused_bits) = if shift >= SESSION_WINDOW_REQUESTS {
                (0, 0)
            } else {
                (record.applied << shift, record.refused << shift)
            };
            record.applied = applied | 1;
            record.refused = refused_bits | u64::from(refused);
            record.highest = request;
        } else {
            let age = record.highest - request;
            assert!(
                age < SESSION_WINDOW_REQUESTS,
                "only a request in the window applies"
            );
            record.applied |= 1 << age;
            record.refused |= u64::from(refused) << age;
        }
        record.last_active = log_index;
        assert!(record.is_consistent(), "a session record stays consistent");
        Some(*record)
    }

    /// The encoded record of a session, for its namespace.
    pub fn encode_record(record: &SessionRecord) -> Vec<u8> {
        record.encode().to_vec()
    }

    /// The whole table: id and record per session, ascending.
    pub fn encode_all(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.sessions.len() * SESSION_ENTRY_BYTES);
        for (id, record) in &self.sessions {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&record.encode());
        }
        out
    }

    /// The inverse of [`Self::encode_all`]; `None` if malformed (lengths,
    /// order, bounds, ids, activity before registration, record bits).
    pub fn decode_all(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(SESSION_ENTRY_BYTES)
            || bytes.len() / SESSION_ENTRY_BYTES > SESSIONS_MAX
        {
            return None;
        }
        let mut table = Self::default();
        for entry in bytes.chunks_exact(SESSION_ENTRY_BYTES) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&entry[..8]);
            let id = u64::from_le_bytes(id);
            let record = SessionRecord::decode(id, &entry[8..])?;
            if table
                .sessions
                .keys()
                .next_back()
                .is_some_and(|&last| last >= id)
            {
                return None;
            }
            table.sessions.insert(id, record);
        }
        Some(table)
    }

    /// Every session, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &SessionRecord)> {
        self.sessions.iter().map(|(id, record)| (*id, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(id: u64) -> SessionTable {
        let mut table = SessionTable::default();
        table.register(id);
        table
    }

    #[test]
    fn a_request_applies_once_and_its_duplicates_answer_as_it_did() {
        let mut table = table_with(10);
        assert_eq!(table.verdict(10, 1), Verdict::Apply);
        table.record(10, 1, 11, false);
        assert_eq!(table.verdict(10, 1), Verdict::Duplicate { refused: false });
        assert_eq!(table.verdict(10, 3), Verdict::Apply);
        table.record(10, 3, 12, true);
        assert_eq!(table.verdict(10, 3), Verdict::Duplicate { refused: true });
        // Request 2 was overtaken by 3 but never applied: it still applies.
        assert_eq!(table.verdict(10, 2), Verdict::Apply);
        table.record(10, 2, 13, false);
        assert_eq!(table.verdict(10, 2), Verdict::Duplicate { refused: false });
    }

    #[test]
    fn requests_below_the_window_are_stale_and_unknown_sessions_expired() {
        let mut table = table_with(1);
        table.record(1, 1, 2, false);
        table.record(1, 1 + SESSION_WINDOW_REQUESTS, 3, false);
        assert_eq!(table.verdict(1, 1), Verdict::Stale);
        assert_eq!(table.verdict(1, 2), Verdict::Apply);
        assert_eq!(table.verdict(99, 1), Verdict::Expired);
    }

    #[test]
    fn registering_past_the_bound_evicts_the_least_recently_active() {
        let mut table = SessionTable::default();
        for id in 1..=SESSIONS_MAX as u64 {
            assert_eq!(table.register(id).1, None);
        }
        // Session 1 becomes the most recently active; 2 is now the oldest.
        let next = SESSIONS_MAX as u64 + 1;
        table.record(1, 1, next, false);
        assert_eq!(table.register(next + 1).1, Some(2));
        assert_eq!(table.verdict(2, 1), Verdict::Expired);
        assert_eq!(table.len(), SESSIONS_MAX);
    }

    #[test]
    fn the_table_round_trips_and_malformed_encodings_are_refused() {
        let mut table = table_with(5);
        table.register(9);
        table.record(5, 7, 10, true);
        let bytes = table.encode_all();
        assert_eq!(SessionTable::decode_all(&bytes), Some(table.clone()));
        assert_eq!(SessionTable::decode_all(&bytes[1..]), None);
        let mut swapped = bytes[SESSION_ENTRY_BYTES..].to_vec();
        swapped.extend_from_slice(&bytes[..SESSION_ENTRY_BYTES]);
        assert_eq!(SessionTable::decode_all(&swapped), None, "out of order");
        let mut bad_bits = bytes.clone();
        bad_bits[8 + 24] = 0xff; // refused bits outside applied ones
        bad_bits[8 + 16] = 0x01;
        assert_eq!(SessionTable::decode_all(&bad_bits), None);
        // Session 5, active at 10, applied request 7 only: its id, last
        // activity and applied bits at 0, 8 and 24.
        let mut table = table_with(5);
        table.record(5, 7, 10, false);
        let bytes = table.encode_all();
        for (at, value, what) in [
            (0, 0u64, "session id 0"),
            (8, 4, "active before registered"),
            (24, 0b10, "highest not applied"),
            (24, 0b1 | 1 << 7, "applied below request 1"),
        ] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            assert_eq!(SessionTable::decode_all(&bad), None, "{what}");
        }
    }
}
