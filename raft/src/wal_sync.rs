//! Node-wide group commit of Raft log appends.
//!
//! Every group's `append` writes its entries without fsync (they are readable
//! at once, as openraft requires) and hands its flush callback to the one
//! syncer thread of the node. The syncer takes every callback waiting, fsyncs
//! the write-ahead log once, and only then reports them flushed: one fsync
//! covers the appends of all groups that arrived meanwhile, and no async
//! worker ever blocks on the disk.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use storage::Engine;

use crate::TypeConfig;

/// Most callbacks completed by one fsync.
const CALLBACKS_PER_SYNC_MAX: usize = 4096;

pub struct WalSyncer {
    /// `None` only while dropping.
    tx: Option<mpsc::SyncSender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSyncer {
    /// Starts the syncer thread; it stops when the last `WalSyncer` handle
    /// is dropped.
    pub fn start(engine: Arc<dyn Engine>, queue_max: usize) -> Arc<WalSyncer> {
        let (tx, rx) = mpsc::sync_channel::<LogFlushed<TypeConfig>>(queue_max);
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while waiting.len() < CALLBACKS_PER_SYNC_MAX {
                        match rx.try_recv() {
                            Ok(cb) => waiting.push(cb),
                            Err(_) => break,
                        }
                    }
                    let result = engine.sync();
                    for cb in waiting {
                        cb.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
                    }
                }
            })
            .expect("spawn the wal-sync thread");
        Arc::new(WalSyncer { tx: Some(tx), thread: Some(thread) })
    }

    /// Reports `callback` once everything written before this call is
    /// durable. Returns the callback when the syncer is gone. Blocks only
    /// when the queue is full, which cannot happen while the node hosts no
    /// more groups than the queue holds: each group has at most one append
    /// waiting for its flush.
    pub fn flushed_after_sync(&self, callback: LogFlushed<TypeConfig>) -> Result<(), LogFlushed<TypeConfig>> {
        match &self.tx {
            Some(tx) => tx.send(callback).map_err(|e| e.0),
            None => Err(callback),
        }
    }
}

impl Drop for WalSyncer {
    /// Stops the thread and waits for it: it may hold the last handle of the
    /// engine, and a database still closing when the process exits races
    /// the C++ static destructors (RocksDB aborts with "pthread lock:
    /// Invalid argument").
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
