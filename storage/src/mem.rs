//! In-memory engine for tests: same semantics as RocksDB, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::engine::KeyValue;
use crate::engine::WriteOp;
use crate::Durability;
use crate::Engine;
use crate::StorageError;
use crate::Table;
use crate::WriteBatch;

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Default)]
pub struct MemEngine {
    tables: Mutex<Tables>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A poisoned lock means a test thread panicked mid-write; the data is
        // still consistent because writes are applied under the lock.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine for MemEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<(), StorageError> {
        let mut tables = self.lock();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    tables.entry(table).or_default().insert(key, value);
                }
                WriteOp::Delete { table, key } => {
                    tables.entry(table).or_default().remove(&key);
                }
                WriteOp::DeleteRange { table, start, end } => {
                    if start < end {
                        let t = tables.entry(table).or_default();
                        let doomed: Vec<Vec<u8>> = t.range(start..end).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            t.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let tables = self.lock();
        Ok(tables.get(&table).map(|t| t.range(start.to_vec()..end.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn last(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let tables = self.lock();
        Ok(tables.get(&table).and_then(|t| t.range(start.to_vec()..end.to_vec()).next_back().map(|(k, v)| (k.clone(), v.clone()))))
    }
}
