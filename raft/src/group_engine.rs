//! The storage engine as one group's replica sees it: every write of its
//! log store and state machine goes through a gate that closes when the
//! replica is retired (moved or merged away). openraft's state machine
//! worker can finish an apply (a clock tick, a snapshot) after the group
//! was shut down; once the gate closed, such a write is refused, so the
//! records deleted with the replica never come back.

use std::sync::Arc;
use std::sync::Mutex;

use storage::engine::KeyValue;
use storage::keys;
use storage::model::GroupId;
use storage::Durability;
use storage::Engine;
use storage::StorageError;
use storage::Table;
use storage::WriteBatch;

/// One group's view of the node's engine (see the module notes).
pub struct GroupEngine {
    group: GroupId,
    inner: Arc<dyn Engine>,
    /// True once the replica's records were deleted; held while a write
    /// goes in, so no write lands after the deletion.
    deleted: Mutex<bool>,
}

impl GroupEngine {
    pub fn new(group: GroupId, inner: Arc<dyn Engine>) -> Arc<GroupEngine> {
        Arc::new(GroupEngine { group, inner, deleted: Mutex::new(false) })
    }

    /// Deletes every record of the group (its log, metadata and state) and
    /// refuses every later write through this view.
    pub fn delete_group(&self) -> Result<(), StorageError> {
        let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        *deleted = true;
        let mut batch = WriteBatch::new();
        for table in [Table::Log, Table::Meta, Table::State] {
            batch.delete_range(table, keys::group_prefix(self.group), keys::group_end(self.group));
        }
        self.inner.write(batch, Durability::Sync)
    }
}

impl Engine for GroupEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(table, key)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        if *deleted {
            return Err(StorageError::Io { op: "write", reason: format!("group {}'s replica was retired and its records deleted", self.group) });
        }
        self.inner.write(batch, durability)
    }

    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(table, start, end, limit)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }

    fn last(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.inner.last(table, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_write_lands_after_the_group_is_deleted() {
        let inner: Arc<dyn Engine> = Arc::new(storage::MemEngine::new());
        let mine = GroupEngine::new(7, inner.clone());
        let other = GroupEngine::new(8, inner.clone());
        let put = |engine: &GroupEngine, group: GroupId| {
            let mut batch = WriteBatch::new();
            batch.put(Table::State, keys::state_meta_key(group, "applied"), vec![1]);
            engine.write(batch, Durability::Buffered)
        };
        put(&mine, 7).expect("written");
        put(&other, 8).expect("written");
        mine.delete_group().expect("deleted");
        assert_eq!(inner.get(Table::State, &keys::state_meta_key(7, "applied")).expect("get"), None);
        let refused = put(&mine, 7).expect_err("a late write");
        assert!(refused.to_string().contains("retired"), "{refused}");
        assert_eq!(inner.get(Table::State, &keys::state_meta_key(7, "applied")).expect("get"), None, "nothing came back");
        assert!(inner.get(Table::State, &keys::state_meta_key(8, "applied")).expect("get").is_some(), "another group is untouched");
        put(&other, 8).expect("another group still writes");
    }
}
