//! RocksDB engine: one database per node, one column family per [`Table`],
//! every group's keys prefixed by its id.

use std::path::Path;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::engine::KeyValue;
use crate::engine::WriteOp;
use crate::Durability;
use crate::Engine;
use crate::StorageError;
use crate::Table;
use crate::WriteBatch;

pub struct RocksEngine {
    db: DB,
}

fn io(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |e| StorageError::Io { op, reason: e.into_string() }
}

impl RocksEngine {
    /// Opens (creating if missing) the node's database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        let cfs = Table::ALL.iter().map(|t| {
            let mut cf = Options::default();
            if *t == Table::Log {
                // Log entries are written once and read back in order.
                cf.set_write_buffer_size(32 << 20);
            }
            ColumnFamilyDescriptor::new(t.name(), cf)
        });
        let db = DB::open_cf_descriptors(&options, dir, cfs).map_err(io("open the database"))?;
        Ok(Self { db })
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        // Every table's column family is created in `open`.
        self.db.cf_handle(table.name()).expect("column family exists since open")
    }
}

impl Engine for RocksEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(table), key).map_err(io("read a key"))
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => wb.put_cf(self.cf(table), key, value),
                WriteOp::Delete { table, key } => wb.delete_cf(self.cf(table), key),
                WriteOp::DeleteRange { table, start, end } => {
                    if start < end {
                        wb.delete_range_cf(self.cf(table), start, end)
                    }
                }
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &options).map_err(io("write a batch"))
    }

    fn scan(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let iter = self.db.iterator_cf_opt(self.cf(table), read, IteratorMode::From(start, Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(io("scan a range"))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(io("sync the write-ahead log"))
    }

    fn last(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(start.to_vec());
        read.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.iterator_cf_opt(self.cf(table), read, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io("find the last key"))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }
}
