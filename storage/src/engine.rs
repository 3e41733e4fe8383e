//! The storage engine trait. One engine instance per node holds every Raft
//! group of that node: keys start with the group id (see `keys`).

use crate::StorageError;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The logical tables (RocksDB column families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Raft log entries: `group || index`.
    Log,
    /// Raft metadata: vote, committed and purged log ids, snapshot, shard map.
    Meta,
    /// Inventory state machine records.
    State,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Log, Table::Meta, Table::State];

    pub fn name(self) -> &'static str {
        match self {
            Table::Log => "log",
            Table::Meta => "meta",
            Table::State => "state",
        }
    }
}

/// Whether a write must be on stable storage before `write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning (Raft log appends, votes, snapshots).
    Sync,
    /// Buffered; made durable by the next synced write (state machine
    /// records, which the Raft log can always rebuild).
    Buffered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Writes applied atomically: all or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { table, key, value });
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { table, key });
    }

    pub fn delete_range(&mut self, table: Table, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(WriteOp::DeleteRange { table, start, end });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// An ordered key-value store with atomic batches. RocksDB in production,
/// memory in tests; both pass `storage/tests/engine_conformance.rs`.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies `batch` atomically.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError>;

    /// Key-value pairs in `[start, end)` in key order, at most `limit`.
    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError>;

    /// Makes every write that returned before this call durable (one fsync
    /// of the write-ahead log, however many writes it covers).
    fn sync(&self) -> Result<(), StorageError>;

    /// The greatest key in `[start, end)` with its value.
    fn last(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError>;
}
