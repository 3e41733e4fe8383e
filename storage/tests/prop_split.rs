//! Property test of splits and merges (`storage::split`): a group's state
//! built from random feed receipts, reservations, transitions, cart intents
//! and home records, then split at a random key.
//!
//! Checked:
//! - a refused split names a live reservation that the key would cut, and
//!   changes nothing;
//! - after a split, each side keeps its own invariants and holds only keys
//!   of its range; every position, reservation, intent and feed event is on
//!   exactly one side; home records go with their home slot (the child
//!   takes the upper half of the slots); both sides are at the next epoch;
//! - merging the sides back at once gives the unsplit group's state, byte
//!   for byte (range and epoch aside);
//! - a split is invisible: the same later commands, each sent to the side
//!   that holds its keys, give the same results as in the unsplit group
//!   (where a split put a record and its own lines apart, once the lines'
//!   side follows the record, as the home's leader makes it), and
//!   merging then gives its records and indexes (change histories name each
//!   group's own log indexes, so those are left out of the comparison);
//! - that last merge goes through the log commands when it can (`Freeze`
//!   in the right side, `Merge` of its frozen state in the left): the same
//!   state as the direct merge; a freeze is refused exactly while a cart
//!   holds units on the right side, and a frozen side applies nothing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use proptest::prelude::*;
use storage::inventory::Inventory;
use storage::inventory::InventorySnapshot;
use storage::model::Adjustment;
use storage::model::AdjustmentKind;
use storage::model::Batch;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::IntentOf;
use storage::model::Limits;
use storage::model::Line;
use storage::model::RangeDesc;
use storage::model::ReservationState;
use storage::split::TopologyRefusal;

const SKUS: [&str; 6] = ["a1", "b2", "c3", "d4", "e5", "f6"];
const KEYS: [&str; 8] = ["", "a1", "b", "b2", "c3x", "d", "f6", "g"];
const LOCATION: &str = "wh1";
const GROUP: u32 = 1;
const CHILD: u32 = 2;
const IDS: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    Receipt {
        sku: usize,
        quantity: u64,
    },
    Reserve {
        id: usize,
        lines: Vec<(usize, u64)>,
    },
    Commit {
        id: usize,
    },
    Release {
        id: usize,
    },
    Fulfill {
        id: usize,
    },
    /// A cart intent held here for a record homed elsewhere.
    Prepare {
        id: usize,
        lines: Vec<(usize, u64)>,
    },
    /// A cart record homed here with a part elsewhere and, when `own` is
    /// not empty, lines held here beside it.
    Begin {
        id: usize,
        own: Vec<(usize, u64)>,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lines = || prop::collection::vec((0..SKUS.len(), 1u64..3), 1..3);
    prop_oneof![
        3 => (0..SKUS.len(), 1u64..6).prop_map(|(sku, quantity)| Op::Receipt { sku, quantity }),
        4 => (0..IDS, lines()).prop_map(|(id, lines)| Op::Reserve { id, lines }),
        2 => (0..IDS).prop_map(|id| Op::Commit { id }),
        1 => (0..IDS).prop_map(|id| Op::Release { id }),
        1 => (0..IDS).prop_map(|id| Op::Fulfill { id }),
        1 => (0..IDS, lines()).prop_map(|(id, lines)| Op::Prepare { id, lines }),
        1 => (0..IDS, prop::collection::vec((0..SKUS.len(), 1u64..3), 0..3)).prop_map(|(id, own)| Op::Begin { id, own }),
        2 => (100u64..4_000).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn limits() -> Limits {
    Limits { idempotency_retention_ms: 6_000, recent_changes_max: 4 }
}

fn lines_of(lines: &[(usize, u64)]) -> Vec<Line> {
    lines.iter().map(|(sku, quantity)| Line { sku: SKUS[*sku].to_owned(), location: LOCATION.to_owned(), quantity: *quantity }).collect()
}

fn id(n: usize) -> String {
    format!("r{n}")
}

/// The command of `op` (`None` for a tick), with `seq` for feed events.
fn command(op: &Op, seq: u64) -> Option<Command> {
    Some(match op {
        Op::Receipt { sku, quantity } => Command::Adjust(Adjustment {
            event_id: format!("e{seq}"),
            sku: SKUS[*sku].to_owned(),
            location: LOCATION.to_owned(),
            kind: AdjustmentKind::Receipt,
            quantity: *quantity,
            reason: "receipt".into(),
            source: "wms".into(),
            source_seq: seq,
            observed_at_ms: None,
        }),
        Op::Reserve { id: n, lines } => Command::Reserve { reservation_id: id(*n), lines: lines_of(lines), ttl_ms: 5_000 },
        Op::Commit { id: n } => Command::Commit { reservation_id: id(*n) },
        Op::Release { id: n } => Command::Release { reservation_id: id(*n) },
        Op::Fulfill { id: n } => Command::Fulfill { reservation_id: id(*n) },
        Op::Prepare { id: n, lines } => Command::CartPrepare {
            reservation_id: format!("c{n}"),
            of: IntentOf { home: 9, begin_index: 1 },
            lines: lines_of(lines),
            expires_at_ms: u64::MAX,
            gate: None,
        },
        Op::Begin { id: n, own } => {
            let elsewhere = vec![Line { sku: "zz".into(), location: LOCATION.into(), quantity: 1 }];
            let mut parts = BTreeMap::from([(9, elsewhere.clone())]);
            let mut lines = elsewhere;
            if !own.is_empty() {
                parts.insert(GROUP, lines_of(own));
                lines.extend(lines_of(own));
            }
            Command::CartBegin { reservation_id: format!("h{n}"), lines, ttl_ms: 5_000, home: GROUP, parts, own_gate: None }
        }
        Op::Tick { .. } => return None,
    })
}

struct World {
    now_ms: u64,
    seq: u64,
}

impl World {
    fn apply(&mut self, inventory: &mut Inventory, op: &Op) -> Option<CommandResult> {
        if let Op::Tick { ms } = op {
            self.now_ms += ms;
        }
        self.seq += 1;
        let index = inventory.last_applied_index() + 1;
        let commands: Vec<Command> = command(op, self.seq).into_iter().collect();
        let mut results = inventory.apply_batch(index, &Batch::new(self.now_ms, inventory.range().epoch, commands));
        assert_eq!(inventory.check_invariants(), Ok(()));
        results.pop()
    }
}

/// Which side of a split an op goes to, as a router would send it; `None`:
/// nowhere (its lines are on both sides, a cart across groups, or its id is
/// held by the other side, which the node's lookup by id would find).
fn route(op: &Op, left: &Inventory, right: &Inventory) -> Option<bool> {
    let in_right = |sku: &usize| right.range().contains(SKUS[*sku]);
    let by_lines = |lines: &[(usize, u64)]| {
        let rights = lines.iter().filter(|(sku, _)| in_right(sku)).count();
        match rights {
            0 => Some(false),
            n if n == lines.len() => Some(true),
            _ => None,
        }
    };
    let holder = |rid: &str| match (left.reservation(rid).is_some(), right.reservation(rid).is_some()) {
        (_, true) => Some(true),
        (true, false) => Some(false),
        (false, false) => None,
    };
    match op {
        Op::Receipt { sku, .. } => Some(in_right(sku)),
        Op::Reserve { id: n, lines } => {
            let side = by_lines(lines)?;
            match holder(&id(*n)) {
                Some(other) if other != side => None,
                _ => Some(side),
            }
        }
        Op::Commit { id: n } | Op::Release { id: n } | Op::Fulfill { id: n } => Some(holder(&id(*n)).unwrap_or(false)),
        Op::Prepare { .. } | Op::Begin { .. } | Op::Tick { .. } => None,
    }
}

/// `inventory` with its range and own log index set to `like`'s: what a
/// split and merge may change.
fn normalized(inventory: &Inventory, like: &Inventory) -> InventorySnapshot {
    let mut snapshot = inventory.to_snapshot();
    snapshot.range = like.range().clone();
    snapshot.last_applied_index = like.last_applied_index();
    snapshot
}

/// A state without the log indexes its change histories name.
fn without_log_indexes(mut snapshot: InventorySnapshot) -> InventorySnapshot {
    for position in snapshot.positions.values_mut() {
        position.recent_changes.iter_mut().for_each(|change| change.log_index = 0);
    }
    snapshot
}

/// A command's result without the log indexes of a position's history.
fn comparable(mut result: Option<CommandResult>) -> Option<CommandResult> {
    if let Some(position) = result.as_mut().and_then(|r| r.position.as_mut()) {
        position.recent_changes.iter_mut().for_each(|change| change.log_index = 0);
    }
    result
}

fn live_straddler(inventory: &Inventory, at: &str) -> Option<String> {
    inventory
        .reservations()
        .filter(|(_, r)| matches!(r.state, ReservationState::Pending | ReservationState::Committed))
        .find(|(_, r)| r.lines.iter().any(|l| l.sku.as_str() >= at) && r.lines.iter().any(|l| l.sku.as_str() < at))
        .map(|(id, _)| id.clone())
}

fn check_split(original: &Inventory, left: &Inventory, right: &Inventory) {
    assert_eq!(left.check_invariants(), Ok(()));
    assert_eq!(right.check_invariants(), Ok(()));
    assert_eq!(left.range().epoch, original.range().epoch + 1);
    assert_eq!(right.range().epoch, left.range().epoch);
    assert_eq!(left.range().end_sku.as_deref(), Some(right.range().start_sku.as_str()));
    assert!(left.positions().all(|(k, _)| left.range().contains(&k.sku)));
    assert!(right.positions().all(|(k, _)| right.range().contains(&k.sku)));
    let positions: BTreeMap<_, _> = left.positions().chain(right.positions()).collect();
    assert_eq!(positions.len(), left.positions().count() + right.positions().count(), "a position on both sides");
    assert_eq!(positions, original.positions().collect::<BTreeMap<_, _>>());
    let ids: BTreeSet<_> = left.reservations().chain(right.reservations()).map(|(id, _)| id).collect();
    assert_eq!(ids.len(), left.reservations().count() + right.reservations().count(), "a reservation on both sides");
    assert_eq!(ids, original.reservations().map(|(id, _)| id).collect::<BTreeSet<_>>());
    for (rid, r) in right.reservations() {
        assert!(r.lines.iter().all(|l| right.range().contains(&l.sku)), "{rid} moved with a line outside");
        assert_eq!(right.intents().any(|(i, _)| i == rid), original.intents().any(|(i, _)| i == rid), "{rid} moved without its intent mark");
    }
    let events: BTreeSet<_> = left.events().chain(right.events()).map(|(id, _)| id).collect();
    assert_eq!(events, original.events().map(|(id, _)| id).collect::<BTreeSet<_>>());
    // Home records go with their home slot: the child took the upper half.
    let (kept, moved) = stockd_home::split_slots(original.range().home_slots);
    assert_eq!((left.range().home_slots, right.range().home_slots), (kept, moved));
    assert!(left.carts().all(|(id, _)| left.range().holds_home(id)) && right.carts().all(|(id, _)| right.range().holds_home(id)));
    assert_eq!(left.carts().count() + right.carts().count(), original.carts().count());
}

/// What one run reached, for the coverage check.
#[derive(Debug, Default)]
struct Coverage {
    outside: usize,
    straddled: usize,
    split: usize,
    moved_live: usize,
    moved_intents: usize,
    routed_right: usize,
    merged_by_commands: usize,
    freeze_refused: usize,
    own_apart: usize,
    followed_apart: usize,
    moved_carts: usize,
}

/// Merges `right` into `left` through the log: `Freeze` in `right`, then
/// `Merge` of its frozen state in `left`. `Err` with the freeze's refusal.
fn merge_by_commands(world: &mut World, left: &mut Inventory, right: &mut Inventory) -> Result<(), String> {
    let index = right.last_applied_index() + 1;
    let frozen = right.apply_batch(index, &Batch::new(world.now_ms, right.range().epoch, vec![Command::Freeze])).remove(0);
    if frozen.outcome != storage::model::Outcome::Ok {
        return Err(frozen.refusal.unwrap_or_default());
    }
    assert_eq!(frozen.frozen_at, Some(index));
    // Frozen: a command, and a clock far ahead, change nothing.
    let before = right.to_snapshot();
    let later = Command::Commit { reservation_id: id(0) };
    let refused = right.apply_batch(index + 1, &Batch::new(world.now_ms + 3_600_000, right.range().epoch, vec![later])).remove(0);
    assert_eq!(refused.outcome, storage::model::Outcome::EpochNotMatch, "a frozen group refuses every command");
    assert_eq!(
        InventorySnapshot { last_applied_index: before.last_applied_index, ..right.to_snapshot() },
        before,
        "a frozen group applies nothing, not even expiry"
    );
    let state = storage::codec::encode(&right.to_snapshot());
    let index = left.last_applied_index() + 1;
    let taken = left.apply_batch(index, &Batch::new(world.now_ms, left.range().epoch, vec![Command::Merge { right: state }])).remove(0);
    assert_eq!(taken.outcome, storage::model::Outcome::Ok, "{:?}", taken.refusal);
    Ok(())
}

fn run(before: Vec<Op>, at: &str, after: Vec<Op>, coverage: &mut Coverage) {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut original = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    // The clock starts with the log (a merge through the log applies
    // batches, which carry it).
    world.apply(&mut original, &Op::Tick { ms: 0 });
    for op in &before {
        world.apply(&mut original, op);
    }
    let mut left = original.clone();
    let mut right = match left.split_off(at, CHILD) {
        Ok(right) => right,
        Err(TopologyRefusal::KeyOutside { .. }) => {
            assert!(at.is_empty(), "only the range's start is outside: {at:?}");
            assert_eq!(left, original);
            coverage.outside += 1;
            return;
        }
        Err(TopologyRefusal::Straddles { id, .. }) => {
            assert_eq!(live_straddler(&original, at).as_deref(), Some(id.as_str()));
            assert_eq!(left, original, "a refused split changes nothing");
            coverage.straddled += 1;
            return;
        }
        Err(other) => panic!("unexpected refusal {other}"),
    };
    assert!(live_straddler(&original, at).is_none());
    check_split(&original, &left, &right);
    coverage.split += 1;
    coverage.moved_live += right.reservations().filter(|(_, r)| matches!(r.state, ReservationState::Pending | ReservationState::Committed)).count();
    coverage.moved_intents += right.intents().count();
    coverage.own_apart += left.carts().chain(right.carts()).filter(|(_, c)| c.own_apart).count();
    coverage.moved_carts += right.carts().count();
    let mut merged = left.clone();
    merged.merge(right.clone()).expect("adjacent, disjoint");
    assert_eq!(merged.range().epoch, original.range().epoch + 2);
    let (merged, unsplit) = (normalized(&merged, &original), original.to_snapshot());
    assert_eq!(bincode::serialize(&merged).expect("encode"), bincode::serialize(&unsplit).expect("encode"), "split then merge: the same bytes");
    left.take_dirty();
    right.take_dirty();

    // The same later commands, each to the side that holds its keys.
    for op in &after {
        let side = route(op, &left, &right);
        if side.is_none() && !matches!(op, Op::Tick { .. }) {
            continue;
        }
        let expected = world_twin(&mut world, &mut original, op);
        coverage.followed_apart += settle(world.now_ms, &mut left, &mut right);
        coverage.routed_right += usize::from(side == Some(true));
        let got = match side {
            Some(true) => world.replay(&mut right, op),
            Some(false) => world.replay(&mut left, op),
            None => {
                world.replay(&mut right, op);
                world.replay(&mut left, op)
            }
        };
        assert_eq!(comparable(got), comparable(expected), "{op:?}");
    }
    let live_intent =
        right.intents().any(|(rid, _)| right.reservation(rid).is_some_and(|r| matches!(r.state, ReservationState::Pending | ReservationState::Committed)));
    let in_flight = live_intent || right.unsettled_carts().next().is_some();
    let mut direct = left.clone();
    direct.merge(right.clone()).expect("adjacent, disjoint");
    match merge_by_commands(&mut world, &mut left, &mut right) {
        Ok(()) => {
            assert!(!in_flight, "frozen with a cart in flight");
            coverage.merged_by_commands += 1;
            let (by_commands, direct) = (without_log_indexes(normalized(&left, &direct)), without_log_indexes(normalized(&direct, &direct)));
            assert_eq!(by_commands, direct, "a merge through the log takes the same state as a direct one");
        }
        Err(refusal) => {
            assert!(in_flight && refusal.contains("cart"), "freeze refused: {refusal}");
            coverage.freeze_refused += 1;
            left = direct;
        }
    }
    assert_eq!(left.check_invariants(), Ok(()));
    assert_eq!(left.range().end_sku, None);
    let merged = Inventory::from_snapshot(limits(), without_log_indexes(normalized(&left, &original)));
    assert_eq!(merged, Inventory::from_snapshot(limits(), without_log_indexes(original.to_snapshot())), "the split was invisible");
}

/// What the home group's leader does between commands once a split put a
/// record's own lines apart from it: the left side's log moves the record
/// (expiry, at `now_ms`), and the right side follows it there and then. In
/// the unsplit group both happened in one apply. Answers how many follows.
fn settle(now_ms: u64, left: &mut Inventory, right: &mut Inventory) -> usize {
    let apply = |inventory: &mut Inventory, command: Option<Command>| {
        let index = inventory.last_applied_index() + 1;
        let mut results = inventory.apply_batch(index, &Batch::new(now_ms, inventory.range().epoch, command.into_iter().collect()));
        assert_eq!(inventory.check_invariants(), Ok(()));
        results.pop()
    };
    apply(left, None);
    apply(right, None);
    let follow = |records: &mut Inventory, lines: &mut Inventory| {
        // In the order the home group's log moved them: several records
        // expire in one apply by (expiry, id), as the unsplit group
        // expired their lines, so the lines' audit trails agree too.
        let mut apart: Vec<_> = records
            .carts()
            .filter(|(_, cart)| cart.own_apart && cart.unfollowed().any(|g| g == cart.home))
            .filter_map(|(id, cart)| cart.state.intent_state().map(|state| (cart.expires_at_ms, id.clone(), cart.of(), state)))
            .collect();
        apart.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, id, of, state) in &apart {
            let followed = apply(lines, Some(Command::CartFollow { reservation_id: id.clone(), of: *of, state: *state })).expect("one result");
            assert_eq!(followed.outcome, storage::model::Outcome::Ok, "{id} follows to {state:?}");
            let note = Command::CartFollowed { reservation_id: id.clone(), begin_index: of.begin_index, group: of.home, state: *state };
            assert_eq!(apply(records, Some(note)).map(|r| r.outcome), Some(storage::model::Outcome::Ok));
        }
        apart.len()
    };
    follow(left, right) + follow(right, left)
}

/// Applies `op` to the unsplit group, advancing the world's clock.
fn world_twin(world: &mut World, original: &mut Inventory, op: &Op) -> Option<CommandResult> {
    world.apply(original, op)
}

impl World {
    /// Applies `op` to a side at the time and sequence `apply` just used.
    fn replay(&mut self, inventory: &mut Inventory, op: &Op) -> Option<CommandResult> {
        let index = inventory.last_applied_index() + 1;
        let commands: Vec<Command> = command(op, self.seq).into_iter().collect();
        let mut results = inventory.apply_batch(index, &Batch::new(self.now_ms, inventory.range().epoch, commands));
        assert_eq!(inventory.check_invariants(), Ok(()));
        results.pop()
    }
}

#[test]
fn a_split_moves_every_record_once_is_invisible_and_merges_back() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
    let coverage = std::cell::RefCell::new(Coverage::default());
    let cases = (prop::collection::vec(op(), 0..40), prop::sample::select(KEYS.to_vec()), prop::collection::vec(op(), 0..30));
    let result = runner.run(&cases, |(before, at, after)| {
        run(before, at, after, &mut coverage.borrow_mut());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let c = coverage.into_inner();
    eprintln!("split coverage: {c:?}");
    assert!(c.outside > 0 && c.straddled > 0 && c.split > 100, "{c:?}");
    assert!(c.moved_live > 0 && c.moved_intents > 0 && c.routed_right > 0, "the runs did not move live records: {c:?}");
    assert!(c.merged_by_commands > 50 && c.freeze_refused > 0, "{c:?}");
    assert!(c.own_apart > 0 && c.followed_apart > 0 && c.moved_carts > 0, "no split moved a record or put its own lines apart from it: {c:?}");
}

#[test]
fn a_merge_refuses_ranges_that_do_not_touch_and_ids_on_both_sides() {
    let mut a = Inventory::serving(limits(), RangeDesc { group: 1, start_sku: String::new(), end_sku: Some("m".into()), epoch: 3, home_slots: 1 });
    let b = Inventory::serving(limits(), RangeDesc { group: 2, start_sku: "n".into(), end_sku: None, epoch: 3, home_slots: 2 });
    assert!(matches!(a.merge(b), Err(TopologyRefusal::NotAdjacent { .. })));
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut left = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut left, &Op::Receipt { sku: 0, quantity: 5 });
    world.apply(&mut left, &Op::Receipt { sku: 5, quantity: 5 });
    world.apply(&mut left, &Op::Reserve { id: 1, lines: vec![(0, 1)] });
    let mut right = left.split_off("c", CHILD).expect("split");
    // The same id reserved on the other side too (an id reused across
    // groups): the merge is refused rather than one of them lost.
    world.replay(&mut right, &Op::Reserve { id: 1, lines: vec![(5, 1)] });
    let before = left.clone();
    let refused = left.merge(right).expect_err("r1 on both sides");
    assert!(matches!(&refused, TopologyRefusal::Collides { what: "reservation", .. }), "{refused}");
    assert_eq!(left, before);
}

/// The checks above must see a split that loses what marks an intent (the
/// moved reservation would then expire on its own, against its home record).
#[test]
fn the_checks_catch_a_split_that_drops_an_intent_mark() {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut original = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut original, &Op::Receipt { sku: 5, quantity: 5 });
    world.apply(&mut original, &Op::Prepare { id: 1, lines: vec![(5, 1)] });
    let mut left = original.clone();
    let right = left.split_off("c", CHILD).expect("split");
    check_split(&original, &left, &right);
    let mut broken = right.to_snapshot();
    broken.intents.clear();
    let broken = Inventory::from_snapshot(limits(), broken);
    assert_eq!(broken.check_invariants(), Ok(()), "each side alone looks consistent");
    let caught = std::panic::catch_unwind(|| check_split(&original, &left, &broken));
    assert!(caught.is_err(), "the dropped intent mark must be caught");
}

/// A merge the left side refuses (an id held by both) is remembered: the
/// same frozen state is refused again, so the right side may thaw, and a
/// thaw of another freeze changes nothing.
#[test]
fn a_refused_merge_is_remembered_and_the_right_side_thaws() {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut left = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut left, &Op::Receipt { sku: 0, quantity: 5 });
    world.apply(&mut left, &Op::Receipt { sku: 5, quantity: 5 });
    world.apply(&mut left, &Op::Reserve { id: 1, lines: vec![(0, 1)] });
    let mut right = left.split_off("c", CHILD).expect("split");
    world.replay(&mut right, &Op::Reserve { id: 1, lines: vec![(5, 1)] });
    let now = world.now_ms;
    let batch = |inventory: &Inventory, command: Command| Batch::new(now, inventory.range().epoch, vec![command]);
    let frozen = right.apply_batch(10, &batch(&right, Command::Freeze)).remove(0);
    assert_eq!((frozen.outcome, frozen.frozen_at), (storage::model::Outcome::Ok, Some(10)));
    let again = right.apply_batch(11, &batch(&right, Command::Freeze)).remove(0);
    assert_eq!((again.outcome, again.replay, again.frozen_at), (storage::model::Outcome::Ok, true, Some(10)), "a repeated freeze answers its index");
    let state = storage::codec::encode(&right.to_snapshot());
    let before = left.to_snapshot();
    for index in [20, 21] {
        let refused = left.apply_batch(index, &batch(&left, Command::Merge { right: state.clone() })).remove(0);
        assert_eq!(refused.outcome, storage::model::Outcome::InvalidState);
        assert_eq!(refused.frozen_at, Some(10), "the refusal is remembered: the right side may thaw");
        assert_eq!((left.positions().count(), left.range()), (before.positions.len(), &before.range), "nothing taken");
    }
    let wrong = right.apply_batch(12, &batch(&right, Command::Thaw { frozen_at: 9 })).remove(0);
    assert_eq!(wrong.outcome, storage::model::Outcome::InvalidState, "a thaw names its freeze");
    assert_eq!(right.frozen_at(), Some(10));
    let thawed = right.apply_batch(13, &batch(&right, Command::Thaw { frozen_at: 10 })).remove(0);
    assert_eq!(thawed.outcome, storage::model::Outcome::Ok);
    assert_eq!(right.frozen_at(), None);
    let served = world.replay(&mut right, &Op::Commit { id: 1 }).expect("a command");
    assert_eq!(served.outcome, storage::model::Outcome::Ok, "a thawed group serves again");
    // A state that is not frozen is never taken.
    let unfrozen = storage::codec::encode(&right.to_snapshot());
    let refused = left.apply_batch(30, &batch(&left, Command::Merge { right: unfrozen })).remove(0);
    assert_eq!((refused.outcome, refused.frozen_at), (storage::model::Outcome::InvalidState, None));
}

/// Two parts of one cart, one on each side, finished (kept for idempotent
/// answers): the merge keeps one record of them rather than refuse.
#[test]
fn the_finished_parts_of_one_cart_on_both_sides_merge_into_one_record() {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut left = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut left, &Op::Receipt { sku: 0, quantity: 5 });
    world.apply(&mut left, &Op::Receipt { sku: 5, quantity: 5 });
    let mut right = left.split_off("c", CHILD).expect("split");
    // The same cart (id c1, the same home record) prepared on both sides.
    world.replay(&mut left, &Op::Prepare { id: 1, lines: vec![(0, 1)] });
    world.replay(&mut right, &Op::Prepare { id: 1, lines: vec![(5, 2)] });
    let of = IntentOf { home: 9, begin_index: 1 };
    let now = world.now_ms;
    let released = |inventory: &mut Inventory| {
        let index = inventory.last_applied_index() + 1;
        let follow = Command::CartFollow { reservation_id: "c1".into(), of, state: ReservationState::Released };
        let result = inventory.apply_batch(index, &Batch::new(now, inventory.range().epoch, vec![follow])).remove(0);
        assert_eq!(result.outcome, storage::model::Outcome::Ok);
    };
    released(&mut left);
    let refused = merge_by_commands(&mut world, &mut left.clone(), &mut right.clone()).expect_err("the right part still holds units");
    assert!(refused.contains("c1"), "{refused}");
    released(&mut right);
    merge_by_commands(&mut world, &mut left, &mut right).expect("both parts finished");
    assert_eq!(left.check_invariants(), Ok(()));
    assert_eq!(left.intents().filter(|(id, _)| *id == "c1").count(), 1, "one record of the cart's parts");
    assert_eq!(left.reservation("c1").map(|r| r.state), Some(ReservationState::Released));
    assert!(left.positions().all(|(_, p)| p.reserved == 0), "nothing held");
}

/// Applies `command` alone in the next entry of `inventory`, at log time
/// 2 s, and checks the invariants after it.
fn apply_at_2s(inventory: &mut Inventory, command: Command) -> CommandResult {
    let index = inventory.last_applied_index() + 1;
    let result = inventory.apply_batch(index, &Batch::new(2_000, inventory.range().epoch, vec![command])).remove(0);
    assert_eq!(inventory.check_invariants(), Ok(()));
    result
}

/// A locator at an id's home naming the group that holds the reservation:
/// once the two groups merge, it names the merged group itself. The merge
/// drops it (on disk too), so that the reservation's own retry is a replay,
/// not a reused id. So does a locator naming a third group that the
/// reservation left by an earlier merge; one beside no reservation stays.
#[test]
fn a_merge_drops_the_locators_that_name_either_side() {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut left = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut left, &Op::Tick { ms: 0 });
    world.apply(&mut left, &Op::Receipt { sku: 0, quantity: 5 });
    world.apply(&mut left, &Op::Receipt { sku: 5, quantity: 5 });
    let mut right = left.split_off("c", CHILD).expect("split");
    let homed = |side: &Inventory, skip: usize| (skip..1_000).find(|n| side.range().holds_home(&id(*n))).expect("an id homed there");
    let (in_right, in_left) = (homed(&left, 0), homed(&right, 0));
    let elsewhere = homed(&left, in_right + 1);
    let moved_in = homed(&left, elsewhere + 1);
    let locate = |n: usize, group: u32| Command::Locate { reservation_id: id(n), group, ttl_ms: 5_000 };
    // Each side holds a reservation homed on the other, which notes it.
    let reserve_right = Op::Reserve { id: in_right, lines: vec![(5, 1)] };
    let reserve_left = Op::Reserve { id: in_left, lines: vec![(0, 1)] };
    assert_eq!(world.apply(&mut right, &reserve_right).map(|r| r.outcome), Some(storage::model::Outcome::Ok));
    assert_eq!(world.apply(&mut left, &reserve_left).map(|r| r.outcome), Some(storage::model::Outcome::Ok));
    assert_eq!(apply_at_2s(&mut left, locate(in_right, CHILD)).outcome, storage::model::Outcome::Ok);
    assert_eq!(apply_at_2s(&mut right, locate(in_left, GROUP)).outcome, storage::model::Outcome::Ok);
    assert_eq!(apply_at_2s(&mut left, locate(elsewhere, 7)).outcome, storage::model::Outcome::Ok);
    // Reserved in a group 8 that merged into the right side since.
    let reserve_moved_in = Op::Reserve { id: moved_in, lines: vec![(5, 2)] };
    assert_eq!(world.apply(&mut right, &reserve_moved_in).map(|r| r.outcome), Some(storage::model::Outcome::Ok));
    assert_eq!(apply_at_2s(&mut left, locate(moved_in, 8)).outcome, storage::model::Outcome::Ok);
    left.take_dirty();

    merge_by_commands(&mut world, &mut left, &mut right).expect("nothing in flight");
    assert_eq!(left.check_invariants(), Ok(()));
    assert!(left.locator(&id(in_right)).is_none() && left.locator(&id(in_left)).is_none(), "they name this group now");
    assert!(left.locator(&id(moved_in)).is_none(), "it stood beside the reservation it locates");
    assert_eq!(left.locator(&id(elsewhere)).map(|l| l.group), Some(7), "a third group's stays");
    let dirty = left.take_dirty();
    for n in [in_right, in_left, moved_in] {
        assert!(dirty.locators.iter().any(|(i, l)| *i == id(n) && l.is_none()), "{} deleted from disk", id(n));
    }
    for op in [reserve_right, reserve_left, reserve_moved_in] {
        let retried = world.apply(&mut left, &op).expect("a result");
        assert_eq!((retried.outcome, retried.replay), (storage::model::Outcome::Ok, true), "{op:?}: the retry is a replay");
    }
}

/// A split that moves the lines a cart's record holds beside it: the
/// record stays, marked `own_apart`; its commit no longer moves them in the
/// same apply, so that part is unfollowed until the new group follows; a
/// merge puts them beside the record again.
#[test]
fn a_split_puts_a_records_own_lines_apart_and_the_record_follows_them() {
    let mut world = World { now_ms: 1_000, seq: 0 };
    let mut left = Inventory::serving(limits(), RangeDesc::whole(GROUP));
    world.apply(&mut left, &Op::Tick { ms: 0 });
    world.apply(&mut left, &Op::Receipt { sku: 4, quantity: 5 });
    let begun = world.apply(&mut left, &Op::Begin { id: 1, own: vec![(4, 2)] }).expect("begin");
    assert_eq!(begun.outcome, storage::model::Outcome::Ok);
    let of = left.cart("h1").expect("record").of();
    let decided = apply_at_2s(&mut left, Command::CartDecide { reservation_id: "h1".into(), begin_index: of.begin_index, hold: true, shortfalls: vec![] });
    assert_eq!(decided.cart.map(|c| c.state), Some(storage::model::CartState::Pending));
    let unsplit = left.clone();

    let mut right = left.split_off("d", CHILD).expect("a record's own lines no longer pin a split");
    let record = left.cart("h1").expect("the record stays with its home");
    assert!(record.own_apart, "its own lines moved to the new group");
    assert_eq!(right.intents().find(|(id, _)| *id == "h1").map(|(_, o)| *o), Some(of));
    assert_eq!(right.reservation("h1").map(|r| r.state), Some(ReservationState::Pending));
    assert!(left.reservation("h1").is_none());

    let committed = apply_at_2s(&mut left, Command::Commit { reservation_id: "h1".into() });
    assert_eq!(committed.outcome, storage::model::Outcome::Ok);
    let record = left.cart("h1").expect("record");
    assert_eq!(record.unfollowed().collect::<BTreeSet<_>>(), BTreeSet::from([GROUP, 9]), "the own part now follows as the others do");
    assert_eq!(right.reservation("h1").map(|r| r.state), Some(ReservationState::Pending), "not moved by the record's apply");
    let followed = apply_at_2s(&mut right, Command::CartFollow { reservation_id: "h1".into(), of, state: ReservationState::Committed });
    assert_eq!(followed.outcome, storage::model::Outcome::Ok);
    let noted = apply_at_2s(
        &mut left,
        Command::CartFollowed { reservation_id: "h1".into(), begin_index: of.begin_index, group: GROUP, state: ReservationState::Committed },
    );
    assert_eq!(noted.outcome, storage::model::Outcome::Ok);
    assert_eq!(left.cart("h1").expect("record").unfollowed().collect::<Vec<_>>(), vec![9]);

    left.merge(right).expect("adjacent");
    assert_eq!(left.check_invariants(), Ok(()));
    let record = left.cart("h1").expect("record");
    assert!(!record.own_apart, "beside its record again, in the state it asks for");
    assert_eq!(left.reservation("h1").map(|r| r.state), Some(ReservationState::Committed));
    assert_ne!(left.cart("h1"), unsplit.cart("h1"));
}
