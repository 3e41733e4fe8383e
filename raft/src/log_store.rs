//! Raft log store over the node's shared storage engine. All of a group's
//! keys carry its id; appends, votes, truncations and purges are fsynced.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::Vote;
use storage::codec;
use storage::keys;
use storage::model::GroupId;
use storage::Durability;
use storage::Engine;
use storage::Table;
use storage::WriteBatch;

use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::wal_sync::WalSyncer;
use crate::NodeId;
use crate::TypeConfig;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Upper bound on entries returned by one read.
const READ_ENTRIES_MAX: usize = 4096;

pub(crate) fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    group: GroupId,
    /// Highest committed index this node knows of (for status only).
    committed: Arc<AtomicU64>,
    syncer: Arc<WalSyncer>,
}

impl LogStore {
    pub fn new(engine: Arc<dyn Engine>, group: GroupId, syncer: Arc<WalSyncer>) -> Self {
        Self { engine, group, committed: Arc::new(AtomicU64::new(0)), syncer }
    }

    /// Shared view of the committed index, for status reports.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageError> {
        let key = keys::meta_key(self.group, name);
        let Some(bytes) = self.engine.get(Table::Meta, &key).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        codec::decode(&bytes, name).map(Some).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    fn write(&self, batch: WriteBatch, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.engine.write(batch, Durability::Sync).map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_range(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        let end_key = if end == u64::MAX { keys::group_end(self.group) } else { keys::log_key(self.group, end) };
        let rows = self
            .engine
            .scan(Table::Log, &keys::log_key(self.group, start), &end_key, READ_ENTRIES_MAX)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let entry: Entry = codec::decode(&value, "log entry").map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = keys::log_index_of(&key);
            if index != Some(entry.log_id.index) {
                return Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, format!("log key {index:?} holds entry {}", entry.log_id)));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(PURGED)?;
        let last = self
            .engine
            .last(Table::Log, &keys::group_prefix(self.group), &keys::group_end(self.group))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            Some((_, value)) => {
                let entry: Entry = codec::decode(&value, "log entry").map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, keys::meta_key(self.group, VOTE), codec::encode(vote));
        self.write(batch, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(id) = committed {
            self.committed.fetch_max(id.index, Ordering::Relaxed);
        }
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, keys::meta_key(self.group, COMMITTED), codec::encode(&committed));
        // The committed index is an optimisation (faster re-apply after a
        // restart); losing its latest value is harmless.
        self.engine.write(batch, Durability::Buffered).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self.read_meta(COMMITTED)?;
        let committed = committed.flatten();
        if let Some(id) = committed {
            self.committed.fetch_max(id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(Table::Log, keys::log_key(self.group, entry.log_id.index), codec::encode(&entry));
        }
        // Written now (readable at once), made durable by the node's syncer,
        // which reports the callback only after its fsync.
        if let Err(e) = self.engine.write(batch, Durability::Buffered) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        if let Err(callback) = self.syncer.flushed_after_sync(callback) {
            let e = "the wal syncer stopped";
            callback.log_io_completed(Err(std::io::Error::other(e)));
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(Table::Log, keys::log_key(self.group, log_id.index), keys::group_end(self.group));
        self.write(batch, ErrorSubject::Logs)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, keys::meta_key(self.group, PURGED), codec::encode(&log_id));
        batch.delete_range(Table::Log, keys::log_key(self.group, 0), keys::log_key(self.group, log_id.index.saturating_add(1)));
        self.write(batch, ErrorSubject::Logs)
    }
}
