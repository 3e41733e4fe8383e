//! One conformance suite, two engines: RocksDB and memory must behave the
//! same for every operation the Raft layer and the state machine rely on.

use storage::Durability;
use storage::Engine;
use storage::MemEngine;
use storage::RocksEngine;
use storage::Table;
use storage::WriteBatch;

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

fn put_get_delete(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Table::Meta, b"a".to_vec(), b"1".to_vec());
    b.put(Table::State, b"a".to_vec(), b"2".to_vec());
    e.write(b, Durability::Sync).expect("write");
    assert_eq!(e.get(Table::Meta, b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(e.get(Table::State, b"a").expect("get"), Some(b"2".to_vec()), "tables are separate");
    assert_eq!(e.get(Table::Log, b"a").expect("get"), None);
    let mut b = WriteBatch::new();
    b.delete(Table::Meta, b"a".to_vec());
    e.write(b, Durability::Buffered).expect("write");
    assert_eq!(e.get(Table::Meta, b"a").expect("get"), None);
    assert_eq!(e.get(Table::State, b"a").expect("get"), Some(b"2".to_vec()));
}

fn batch_is_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Table::Meta, b"k".to_vec(), b"old".to_vec());
    b.delete(Table::Meta, b"k".to_vec());
    b.put(Table::Meta, b"k".to_vec(), b"new".to_vec());
    e.write(b, Durability::Sync).expect("write");
    assert_eq!(e.get(Table::Meta, b"k").expect("get"), Some(b"new".to_vec()));
}

fn scan_range_and_limit(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for k in [b"b1", b"b2", b"b3", b"c1"] {
        b.put(Table::Log, k.to_vec(), k.to_vec());
    }
    b.put(Table::Log, b"a9".to_vec(), b"x".to_vec());
    e.write(b, Durability::Sync).expect("write");
    let all = e.scan(Table::Log, b"b", b"c", 100).expect("scan");
    assert_eq!(all, vec![kv(b"b1", b"b1"), kv(b"b2", b"b2"), kv(b"b3", b"b3")]);
    let two = e.scan(Table::Log, b"b", b"c", 2).expect("scan");
    assert_eq!(two.len(), 2);
    assert_eq!(e.scan(Table::Log, b"c", b"b", 10).expect("empty range"), vec![]);
    assert_eq!(e.last(Table::Log, b"b", b"c").expect("last"), Some(kv(b"b3", b"b3")));
    assert_eq!(e.last(Table::Log, b"d", b"e").expect("last"), None);
    assert_eq!(e.last(Table::Log, b"a", b"b2").expect("last"), Some(kv(b"b1", b"b1")));
}

fn delete_range_is_half_open(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for k in [b"r1", b"r2", b"r3", b"r4"] {
        b.put(Table::State, k.to_vec(), b"v".to_vec());
    }
    e.write(b, Durability::Sync).expect("write");
    let mut b = WriteBatch::new();
    b.delete_range(Table::State, b"r2".to_vec(), b"r4".to_vec());
    e.write(b, Durability::Sync).expect("write");
    let left: Vec<Vec<u8>> = e.scan(Table::State, b"r", b"s", 10).expect("scan").into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec![b"r1".to_vec(), b"r4".to_vec()]);
}

fn run_suite(make: &dyn Fn() -> Box<dyn Engine>) {
    put_get_delete(make().as_ref());
    batch_is_ordered(make().as_ref());
    scan_range_and_limit(make().as_ref());
    delete_range_is_half_open(make().as_ref());
}

#[test]
fn memory_engine_conforms() {
    run_suite(&|| Box::new(MemEngine::new()));
}

#[test]
fn rocksdb_engine_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    run_suite(&|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RocksEngine::open(dir.path()).expect("open");
        dirs.borrow_mut().push(dir);
        Box::new(engine)
    });
}

#[test]
fn rocksdb_engine_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let e = RocksEngine::open(dir.path()).expect("open");
        let mut b = WriteBatch::new();
        b.put(Table::Log, b"k".to_vec(), b"durable".to_vec());
        e.write(b, Durability::Sync).expect("write");
    }
    let e = RocksEngine::open(dir.path()).expect("reopen");
    assert_eq!(e.get(Table::Log, b"k").expect("get"), Some(b"durable".to_vec()));
}
