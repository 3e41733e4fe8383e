//! A split applied through the state machine adapter: the child group's
//! state is written with the parent's apply, in one atomic batch, and a
//! store opened for the child finds it (no copy over the network).

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::BasicNode;
use openraft::EntryPayload;
use openraft::Membership;
use raft::state_machine::SplitApplied;
use raft::state_machine::StateMachineStore;
use raft::types::Entry;
use raft::types::LogId;
use storage::model::Adjustment;
use storage::model::AdjustmentKind;
use storage::model::Batch;
use storage::model::Command;
use storage::model::Limits;
use storage::model::Line;
use storage::model::Outcome;
use storage::model::PositionKey;
use storage::model::RangeDesc;
use storage::model::FIRST_EPOCH;
use storage::Engine;
use storage::MemEngine;

const PARENT: u32 = 7;
const CHILD: u32 = 9;

fn entry(index: u64, payload: EntryPayload<raft::TypeConfig>) -> Entry {
    Entry { log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index), payload }
}

fn receipt(event_id: &str, sku: &str) -> Command {
    Command::Adjust(Adjustment {
        event_id: event_id.into(),
        sku: sku.into(),
        location: "wh1".into(),
        kind: AdjustmentKind::Receipt,
        quantity: 5,
        reason: "receipt".into(),
        source: "wms".into(),
        source_seq: 1,
        observed_at_ms: None,
    })
}

#[tokio::test]
async fn a_split_writes_the_child_with_the_parent_and_the_child_opens_from_it() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut parent = StateMachineStore::open(engine.clone(), PARENT, Limits::default(), RangeDesc::whole(PARENT)).expect("open");
    let mut splits = parent.report_splits();
    let voters = BTreeMap::from([(1, BasicNode::new("a")), (2, BasicNode::new("b")), (3, BasicNode::new("c"))]);
    let membership = Membership::new(vec![voters.keys().copied().collect::<BTreeSet<_>>()], voters);
    let reserve =
        Command::Reserve { reservation_id: "r1".into(), lines: vec![Line { sku: "x-1".into(), location: "wh1".into(), quantity: 2 }], ttl_ms: 60_000 };
    let split = Command::Split { at_sku: "m".into(), child: CHILD };
    let entries = vec![
        entry(1, EntryPayload::Membership(membership)),
        entry(2, EntryPayload::Normal(Batch::new(1_000, FIRST_EPOCH, vec![receipt("e1", "a-1"), receipt("e2", "x-1"), reserve]))),
        // The split, then a command routed at the old epoch in the same entry.
        entry(3, EntryPayload::Normal(Batch::new(2_000, FIRST_EPOCH, vec![split.clone(), receipt("e3", "b-1")]))),
        // Proposed again at the old epoch: refused, nothing split twice.
        entry(4, EntryPayload::Normal(Batch::new(3_000, FIRST_EPOCH, vec![split]))),
    ];
    let responses = parent.apply(entries).await.expect("apply");
    let split_result = &responses[2].results[0];
    assert_eq!(split_result.outcome, Outcome::Ok);
    let left = RangeDesc { group: PARENT, start_sku: String::new(), end_sku: Some("m".into()), epoch: FIRST_EPOCH + 1, home_slots: u64::from(u32::MAX) };
    assert_eq!(split_result.range.as_ref(), Some(&left));
    assert_eq!(responses[2].results[1].outcome, Outcome::EpochNotMatch, "the rest of the entry was routed before the split");
    assert_eq!(responses[3].results[0].outcome, Outcome::EpochNotMatch);

    let child_range = RangeDesc { group: CHILD, start_sku: "m".into(), end_sku: None, epoch: FIRST_EPOCH + 1, home_slots: u64::MAX << 32 };
    let reported = splits.try_recv().expect("the split is reported");
    assert_eq!(reported, SplitApplied { parent: PARENT, log_index: 3, child: child_range.clone(), voters: vec![1, 2, 3] });
    assert!(splits.try_recv().is_err(), "one split");

    // The child opens from what the parent's apply wrote; its stored range
    // wins over the one it is opened with.
    let child = StateMachineStore::open(engine.clone(), CHILD, Limits::default(), RangeDesc::whole(CHILD)).expect("open child");
    let state = child.state();
    let inventory = state.read();
    assert_eq!(inventory.range(), &child_range);
    assert_eq!(inventory.position(&PositionKey::new("x-1", "wh1")).map(|p| (p.on_hand, p.reserved)), Some((5, 2)));
    assert_eq!(inventory.reservation("r1").map(|r| r.lines.len()), Some(1));
    assert!(inventory.event("e2").is_some() && inventory.event("e1").is_none());
    assert!(inventory.position(&PositionKey::new("a-1", "wh1")).is_none());
    assert_eq!(inventory.check_invariants(), Ok(()));
    drop(inventory);

    // And the parent, reopened, keeps only its side.
    let reopened = StateMachineStore::open(engine, PARENT, Limits::default(), RangeDesc::whole(PARENT)).expect("reopen");
    let state = reopened.state();
    let inventory = state.read();
    assert_eq!(inventory.range(), &left);
    assert!(inventory.position(&PositionKey::new("x-1", "wh1")).is_none() && inventory.reservation("r1").is_none());
    assert_eq!(inventory.position(&PositionKey::new("a-1", "wh1")).map(|p| p.on_hand), Some(5));
    assert_eq!(inventory.check_invariants(), Ok(()));
}
