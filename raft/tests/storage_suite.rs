//! openraft's storage conformance suite on our log store and state machine,
//! over both engines.

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use raft::log_store::LogStore;
use raft::state_machine::StateMachineStore;
use raft::types::StorageError;
use raft::wal_sync::WalSyncer;
use raft::TypeConfig;
use storage::model::Limits;
use storage::model::RangeDesc;
use storage::Engine;
use storage::MemEngine;
use storage::RocksEngine;

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let sm = StateMachineStore::open(engine.clone(), 7, Limits::default(), RangeDesc::whole(7))?;
        let syncer = WalSyncer::start(engine.clone(), 64);
        Ok(((), LogStore::new(engine, 7, syncer), sm))
    }
}

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(dir.path()).expect("open rocksdb"));
        // Another group in the same engine must not disturb the one tested.
        let syncer = WalSyncer::start(engine.clone(), 64);
        let neighbour = LogStore::new(engine.clone(), 8, syncer.clone());
        drop(neighbour);
        let sm = StateMachineStore::open(engine.clone(), 7, Limits::default(), RangeDesc::whole(7))?;
        Ok((dir, LogStore::new(engine, 7, syncer), sm))
    }
}

#[test]
fn memory_engine_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(MemBuilder)
}

#[test]
fn rocksdb_engine_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder)
}
