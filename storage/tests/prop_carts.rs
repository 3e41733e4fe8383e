//! Property test of the cart protocol (`storage::cart`) across groups: four
//! group state machines, carts of 1-4 lines homed by id, and a network that
//! delivers the protocol's messages in any order, duplicates them, and loses
//! coordinators (a crash at any step). Resolvers (the home leader's, and any
//! later request) finish what the dead left, from the home records alone.
//!
//! Checked after every step:
//! - each group's own invariants (units conserved, indexes exact);
//! - no oversell: `reserved + committed <= on_hand` on every position;
//! - all or nothing: no cart has one line committed and another released or
//!   expired; an intent is committed only when its home record is;
//! - exactly once: a committed cart's units are counted once per line.
//!
//! And once the network is drained and the TTLs have passed:
//! - every intent is in the state its home record asks for;
//! - a cart whose client heard "reserved" was never aborted;
//! - a cart nobody committed holds no unit (expiry with a dead coordinator).

use std::collections::BTreeMap;

use proptest::prelude::*;
use storage::inventory::Inventory;
use storage::model::Adjustment;
use storage::model::AdjustmentKind;
use storage::model::Batch;
use storage::model::CartState;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::GroupId;
use storage::model::IntentOf;
use storage::model::Limits;
use storage::model::Line;
use storage::model::Outcome;
use storage::model::PositionKey;
use storage::model::RangeDesc;
use storage::model::ReservationState;
use storage::model::Shortfall;
use storage::model::FIRST_EPOCH;

const GROUPS: GroupId = 4;
/// SKU `s` lives in group `s % GROUPS + 1`.
const SKUS: usize = 8;
const LOCATION: &str = "wh1";
const CARTS: usize = 10;
const TTL_MS: u64 = 3_000;
const STOCK: u64 = 4;

fn sku(s: usize) -> String {
    format!("sku-{s}")
}

fn group_of(s: usize) -> GroupId {
    (s as GroupId % GROUPS) + 1
}

fn home_of(cart: usize) -> GroupId {
    (cart as GroupId * 7 % GROUPS) + 1
}

fn cart_id(cart: usize) -> String {
    format!("cart-{cart}")
}

/// A protocol message in flight.
#[derive(Debug, Clone)]
enum Msg {
    /// To a line group; the answer goes to coordinator `coord`.
    Prepare {
        coord: usize,
        group: GroupId,
        command: Command,
    },
    /// To the home group.
    Decide {
        command: Command,
    },
    Follow {
        group: GroupId,
        home: GroupId,
        id: String,
        begin_index: u64,
        state: ReservationState,
        command: Command,
    },
    Followed {
        home: GroupId,
        command: Command,
    },
}

/// One node running steps 2-3 for a record (the first coordinator, or a
/// recovery). Dies at random.
#[derive(Debug)]
struct Coordinator {
    cart: usize,
    begin_index: u64,
    waiting: BTreeMap<GroupId, Option<(bool, Vec<Shortfall>)>>,
    alive: bool,
    /// The client's request: it hears "reserved" once every prepare held.
    answers_client: bool,
}

#[derive(Debug, Clone)]
enum Op {
    /// Start cart `cart` with these (sku, quantity) lines.
    Reserve {
        cart: usize,
        lines: Vec<(usize, u64)>,
    },
    Deliver(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Crash(prop::sample::Index),
    Commit(usize),
    Release(usize),
    Resolve,
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..CARTS, prop::collection::vec((0..SKUS, 1..=3u64), 1..=4)).prop_map(|(cart, lines)| Op::Reserve { cart, lines }),
        10 => any::<prop::sample::Index>().prop_map(Op::Deliver),
        2 => any::<prop::sample::Index>().prop_map(Op::Duplicate),
        2 => any::<prop::sample::Index>().prop_map(Op::Crash),
        2 => (0..CARTS).prop_map(Op::Commit),
        1 => (0..CARTS).prop_map(Op::Release),
        2 => Just(Op::Resolve),
        2 => (100..2_000u64).prop_map(Op::Tick),
    ]
}

struct World {
    groups: BTreeMap<GroupId, Inventory>,
    index: BTreeMap<GroupId, u64>,
    now_ms: u64,
    net: Vec<Msg>,
    coords: Vec<Coordinator>,
    /// Carts whose client heard "reserved", by begin index.
    acked: BTreeMap<usize, u64>,
}

impl World {
    fn new() -> Self {
        let limits = Limits { idempotency_retention_ms: 60_000, recent_changes_max: 4 };
        let mut world = World {
            groups: (1..=GROUPS).map(|g| (g, Inventory::serving(limits.clone(), RangeDesc::whole(g)))).collect(),
            index: BTreeMap::new(),
            now_ms: 1_000,
            net: Vec::new(),
            coords: Vec::new(),
            acked: BTreeMap::new(),
        };
        for s in 0..SKUS {
            let adjustment = Adjustment {
                event_id: format!("stock-{s}"),
                sku: sku(s),
                location: LOCATION.into(),
                kind: AdjustmentKind::Receipt,
                quantity: STOCK,
                reason: String::new(),
                source: "wms".into(),
                source_seq: 1,
                observed_at_ms: None,
            };
            world.apply(group_of(s), Command::Adjust(adjustment));
        }
        world
    }

    fn apply(&mut self, group: GroupId, command: Command) -> (u64, CommandResult) {
        let index = self.index.entry(group).or_insert(0);
        *index += 1;
        let at = *index;
        let inventory = self.groups.get_mut(&group).expect("group");
        let mut results = inventory.apply_batch(at, &Batch::new(self.now_ms, FIRST_EPOCH, vec![command]));
        (at, results.remove(0))
    }

    fn tick(&mut self) {
        for group in 1..=GROUPS {
            let index = self.index.entry(group).or_insert(0);
            *index += 1;
            let at = *index;
            self.groups.get_mut(&group).expect("group").apply_batch(at, &Batch::new(self.now_ms, FIRST_EPOCH, Vec::new()));
        }
    }

    fn reserve(&mut self, cart: usize, lines: &[(usize, u64)]) {
        let home = home_of(cart);
        let mut parts: BTreeMap<GroupId, Vec<Line>> = BTreeMap::new();
        for (s, quantity) in lines {
            parts.entry(group_of(*s)).or_default().push(Line { sku: sku(*s), location: LOCATION.into(), quantity: *quantity });
        }
        let lines: Vec<Line> = lines.iter().map(|(s, q)| Line { sku: sku(*s), location: LOCATION.into(), quantity: *q }).collect();
        if parts.len() == 1 && parts.contains_key(&home) {
            // A plain reservation: not this test's subject.
            return;
        }
        let command = Command::CartBegin { reservation_id: cart_id(cart), lines, ttl_ms: TTL_MS, home, parts, own_gate: None };
        let (_, result) = self.apply(home, command);
        if let Some(record) = result.cart.filter(|c| result.outcome == Outcome::Ok && c.state == CartState::Preparing) {
            self.start_coordinator(cart, &record, true);
        }
    }

    fn start_coordinator(&mut self, cart: usize, record: &storage::model::Cart, answers_client: bool) {
        let coord = self.coords.len();
        let mut waiting = BTreeMap::new();
        for (group, part) in record.parts.iter().filter(|(g, _)| **g != record.home) {
            waiting.insert(*group, None);
            let command = Command::CartPrepare {
                reservation_id: record.id.clone(),
                of: record.of(),
                lines: part.lines.clone(),
                expires_at_ms: record.expires_at_ms,
                gate: None,
            };
            self.net.push(Msg::Prepare { coord, group: *group, command });
        }
        self.coords.push(Coordinator { cart, begin_index: record.begin_index, waiting, alive: true, answers_client });
        self.maybe_decide(coord);
    }

    fn maybe_decide(&mut self, coord: usize) {
        let c = &self.coords[coord];
        if !c.alive || c.waiting.values().any(Option::is_none) {
            return;
        }
        let hold = c.waiting.values().all(|a| a.as_ref().is_some_and(|(held, _)| *held));
        let shortfalls = c.waiting.values().flatten().flat_map(|(_, s)| s.clone()).collect();
        if hold && c.answers_client {
            self.acked.insert(c.cart, c.begin_index);
        }
        let command = Command::CartDecide { reservation_id: cart_id(c.cart), begin_index: c.begin_index, hold, shortfalls };
        self.net.push(Msg::Decide { command });
        self.coords[coord].alive = false;
    }

    fn follows_of(&mut self, home: GroupId, id: &str) {
        let Some(record) = self.groups[&home].cart(id).cloned() else { return };
        let Some(state) = record.state.intent_state() else { return };
        for group in record.unfollowed() {
            let command = Command::CartFollow { reservation_id: record.id.clone(), of: record.of(), state };
            self.net.push(Msg::Follow { group, home, id: record.id.clone(), begin_index: record.begin_index, state, command });
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Prepare { coord, group, command } => {
                let (_, result) = self.apply(group, command);
                if let Some(c) = self.coords.get_mut(coord).filter(|c| c.alive) {
                    c.waiting.insert(group, Some((result.outcome == Outcome::Ok, result.shortfalls)));
                    self.maybe_decide(coord);
                }
            }
            Msg::Decide { command } => {
                let id = command.reservation_id().unwrap_or_default().to_owned();
                let home = self.home_by_id(&id);
                self.apply(home, command);
                self.follows_of(home, &id);
            }
            Msg::Follow { group, home, id, begin_index, state, command } => {
                let (_, result) = self.apply(group, command);
                if result.outcome == Outcome::Ok {
                    let command = Command::CartFollowed { reservation_id: id, begin_index, group, state };
                    self.net.push(Msg::Followed { home, command });
                }
            }
            Msg::Followed { home, command } => {
                self.apply(home, command);
            }
        }
    }

    fn home_by_id(&self, id: &str) -> GroupId {
        home_of(id.trim_start_matches("cart-").parse().unwrap_or(0))
    }

    fn client(&mut self, cart: usize, command: Command) {
        let home = home_of(cart);
        let (_, result) = self.apply(home, command);
        match result.cart {
            Some(record) if result.outcome == Outcome::InvalidState && record.state == CartState::Preparing => self.start_coordinator(cart, &record, false),
            Some(_) if result.outcome == Outcome::Ok => self.follows_of(home, &cart_id(cart)),
            _ => {}
        }
    }

    /// What each home leader's resolver does: follows repeated, records
    /// stuck in preparing decided again.
    fn resolve(&mut self) {
        for home in 1..=GROUPS {
            let records: Vec<_> = self.groups[&home].carts().map(|(_, c)| c.clone()).collect();
            for record in records {
                if record.state == CartState::Preparing {
                    let cart = record.id.trim_start_matches("cart-").parse().unwrap_or(0);
                    self.start_coordinator(cart, &record, false);
                } else {
                    self.follows_of(home, &record.id);
                }
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Reserve { cart, lines } => self.reserve(*cart, lines),
            Op::Deliver(i) if !self.net.is_empty() => {
                let msg = self.net.remove(i.index(self.net.len()));
                self.deliver(msg);
            }
            Op::Duplicate(i) if !self.net.is_empty() => {
                let msg = self.net[i.index(self.net.len())].clone();
                self.net.push(msg);
            }
            Op::Crash(i) if !self.coords.is_empty() => {
                let n = self.coords.len();
                self.coords[i.index(n)].alive = false;
            }
            Op::Commit(cart) => self.client(*cart, Command::Commit { reservation_id: cart_id(*cart) }),
            Op::Release(cart) => self.client(*cart, Command::Release { reservation_id: cart_id(*cart) }),
            Op::Resolve => self.resolve(),
            Op::Tick(ms) => {
                self.now_ms += ms;
                self.tick();
            }
            _ => {}
        }
    }

    /// Intent states of every cart, by (cart id, incarnation).
    fn intents(&self) -> BTreeMap<(String, IntentOf), Vec<(GroupId, ReservationState)>> {
        let mut out: BTreeMap<(String, IntentOf), Vec<(GroupId, ReservationState)>> = BTreeMap::new();
        for (group, inventory) in &self.groups {
            for (id, of) in inventory.intents() {
                if let Some(r) = inventory.reservation(id) {
                    out.entry((id.clone(), *of)).or_default().push((*group, r.state));
                }
            }
        }
        out
    }

    fn check_always(&self) -> Result<(), TestCaseError> {
        for (group, inventory) in &self.groups {
            inventory.check_invariants().map_err(|e| TestCaseError::fail(format!("group {group}: {e}")))?;
            for (key, position) in inventory.positions() {
                prop_assert!(position.reserved + position.committed <= position.on_hand, "oversold {:?} in group {}", key, group);
            }
        }
        for ((id, of), states) in self.intents() {
            let committed = states.iter().any(|(_, s)| matches!(s, ReservationState::Committed | ReservationState::Fulfilled | ReservationState::Cancelled));
            let freed = states.iter().any(|(_, s)| matches!(s, ReservationState::Released | ReservationState::Expired));
            prop_assert!(!(committed && freed), "cart {} has committed and freed lines: {:?}", id, states);
            if committed {
                let record = self.groups[&of.home].cart(&id).filter(|c| c.begin_index == of.begin_index);
                prop_assert!(
                    record.is_some_and(|c| matches!(c.state, CartState::Committed | CartState::Fulfilled | CartState::Cancelled)),
                    "cart {} has a committed line but its record is {:?}",
                    id,
                    record.map(|c| c.state)
                );
            }
        }
        Ok(())
    }

    fn settle_messages(&mut self) {
        while let Some(msg) = (!self.net.is_empty()).then(|| self.net.remove(0)) {
            self.deliver(msg);
        }
    }

    /// Drains the network, then lets every TTL pass and resolves again.
    fn settle(&mut self) {
        for _ in 0..3 {
            let mut rounds = 0;
            while !self.net.is_empty() && rounds < 10_000 {
                let msg = self.net.remove(0);
                self.deliver(msg);
                rounds += 1;
            }
            self.resolve();
            while let Some(msg) = (!self.net.is_empty()).then(|| self.net.remove(0)) {
                self.deliver(msg);
            }
            self.now_ms += TTL_MS + 1_000;
            self.tick();
            self.resolve();
        }
        while let Some(msg) = (!self.net.is_empty()).then(|| self.net.remove(0)) {
            self.deliver(msg);
        }
    }

    fn check_settled(&self) -> Result<(), TestCaseError> {
        for ((id, of), states) in self.intents() {
            let Some(record) = self.groups[&of.home].cart(&id).filter(|c| c.begin_index == of.begin_index) else { continue };
            let want = record.state.intent_state();
            prop_assert!(record.state != CartState::Preparing && record.state != CartState::Pending, "cart {} still {:?} after its TTL", id, record.state);
            let freed = |s: Option<ReservationState>| matches!(s, Some(ReservationState::Released | ReservationState::Expired));
            for (group, state) in states {
                let follows = Some(state) == want || (freed(Some(state)) && freed(want));
                prop_assert!(follows, "cart {} group {} is {:?}, its record {:?}", id, group, state, record.state);
            }
            prop_assert!(record.unfollowed().next().is_none(), "cart {} still has unfollowed groups", id);
        }
        for (cart, begin_index) in &self.acked {
            if let Some(record) = self.groups[&home_of(*cart)].cart(&cart_id(*cart)).filter(|c| c.begin_index == *begin_index) {
                prop_assert!(record.state != CartState::Aborted, "cart {} was acknowledged, then aborted", cart);
            }
        }
        // Nothing committed stays reserved: every unit is committed or free.
        for inventory in self.groups.values() {
            for (key, position) in inventory.positions() {
                let committed: u64 = self.committed_units(key);
                prop_assert_eq!(position.reserved, 0, "{:?} still reserved after every TTL", key);
                prop_assert_eq!(position.committed, committed, "{:?} committed units differ from committed carts", key);
            }
        }
        Ok(())
    }

    /// Units of `key` in committed carts' lines, counted once per line.
    fn committed_units(&self, key: &PositionKey) -> u64 {
        self.groups
            .values()
            .flat_map(|inventory| inventory.carts().map(|(_, c)| c))
            .filter(|c| c.state == CartState::Committed)
            .flat_map(|c| c.lines.iter())
            .filter(|l| l.sku == key.sku && l.location == key.location)
            .map(|l| l.quantity)
            .sum()
    }
}

/// What the random runs reached, so that a run that never commits, aborts
/// or expires a cart fails instead of passing vacuously.
#[derive(Debug, Default)]
struct Coverage {
    committed: usize,
    aborted: usize,
    expired: usize,
    released: usize,
    acked: usize,
    recovered: usize,
}

impl Coverage {
    fn add(&mut self, world: &World) {
        for inventory in world.groups.values() {
            for (_, cart) in inventory.carts() {
                match cart.state {
                    CartState::Committed => self.committed += 1,
                    CartState::Aborted => self.aborted += 1,
                    CartState::Expired => self.expired += 1,
                    CartState::Released => self.released += 1,
                    _ => {}
                }
            }
        }
        self.acked += world.acked.len();
        self.recovered += world.coords.iter().filter(|c| !c.answers_client).count();
    }
}

#[test]
fn carts_are_all_or_nothing_under_any_interleaving() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&prop::collection::vec(op(), 1..120), |ops| {
        let mut world = World::new();
        for op in &ops {
            world.step(op);
            world.check_always()?;
        }
        world.settle();
        world.check_always()?;
        world.check_settled()?;
        coverage.borrow_mut().add(&world);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let coverage = coverage.into_inner();
    let reached = [coverage.committed, coverage.aborted, coverage.expired, coverage.released, coverage.acked, coverage.recovered];
    assert!(reached.iter().all(|n| *n > 0), "the runs did not reach every protocol outcome: {coverage:?}");
}

/// The planted bug of the jepsen cart workload (`--bug partial-cart`), here
/// on the state machines: one group's lines committed without the home
/// record. The checker must see it.
#[test]
fn the_checker_catches_lines_committed_without_their_record() {
    let mut world = World::new();
    world.reserve(1, &[(0, 1), (1, 1), (2, 1)]);
    world.settle_messages();
    let home = home_of(1);
    let record = world.groups[&home].cart(&cart_id(1)).cloned().expect("record");
    assert_eq!(record.state, CartState::Pending);
    assert!(world.check_always().is_ok());
    let group = record.parts.keys().copied().find(|g| *g != home).expect("a line group");
    let command = Command::CartFollow { reservation_id: record.id.clone(), of: record.of(), state: ReservationState::Committed };
    let (_, result) = world.apply(group, command);
    assert_eq!(result.outcome, Outcome::Ok, "a line group cannot tell a forged follow");
    let caught = world.check_always().expect_err("a committed line under a pending record");
    assert!(caught.to_string().contains("committed line but its record is"), "{caught}");
}

#[test]
fn a_dead_coordinator_leaves_nothing_held_after_the_ttl() {
    let mut world = World::new();
    world.reserve(1, &[(0, 2), (1, 2), (2, 2)]);
    // The coordinator dies after the prepares reached two of the groups.
    let prepares: Vec<Msg> = world.net.drain(..).collect();
    for msg in prepares.into_iter().take(2) {
        world.deliver(msg);
    }
    world.coords.iter_mut().for_each(|c| c.alive = false);
    let held: u64 = world.groups.values().flat_map(|i| i.positions().map(|(_, p)| p.reserved)).sum();
    assert!(held > 0, "the prepares that arrived hold units");
    world.now_ms += TTL_MS;
    world.tick();
    world.resolve();
    world.coords.iter_mut().for_each(|c| c.alive = false);
    while let Some(msg) = (!world.net.is_empty()).then(|| world.net.remove(0)) {
        if !matches!(msg, Msg::Prepare { .. }) {
            world.deliver(msg);
        }
    }
    let held: u64 = world.groups.values().flat_map(|i| i.positions().map(|(_, p)| p.reserved)).sum();
    assert_eq!(held, 0, "the home expired the record and every group followed");
    let record = world.groups[&home_of(1)].cart(&cart_id(1)).expect("record");
    assert_eq!(record.state, CartState::Expired);
}

/// A prepare delayed across the reuse of its id: incarnation X of cart "c"
/// is aborted before its prepare reaches line group 2 (which follows the
/// abort with a tombstone), the client retries under the same id
/// (incarnation Y, which group 2 prepares and then follows to released),
/// and only then does X's prepare arrive, then X's follow again. Both must
/// change nothing: no record will ever ask group 2 to free what X's
/// prepare would hold. Before intents remembered the incarnations they
/// replaced, X's prepare held a unit for good (a jepsen cart run found it,
/// seed 3 of the topology matrix).
#[test]
fn a_late_message_of_a_replaced_incarnation_changes_nothing() {
    let limits = Limits { idempotency_retention_ms: 60_000, recent_changes_max: 4 };
    let mut groups: BTreeMap<GroupId, (Inventory, u64)> = (1..=2).map(|g| (g, (Inventory::serving(limits.clone(), RangeDesc::whole(g)), 0))).collect();
    let mut apply = |group: GroupId, command: Command| -> (u64, CommandResult) {
        let (inventory, index) = groups.get_mut(&group).expect("group");
        *index += 1;
        let mut results = inventory.apply_batch(*index, &Batch::new(1_000 + *index, FIRST_EPOCH, vec![command]));
        (*index, results.remove(0))
    };
    let line = |sku: &str| Line { sku: sku.into(), location: LOCATION.into(), quantity: 1 };
    for (group, sku) in [(1, "a"), (2, "b")] {
        let stock = Adjustment {
            event_id: format!("stock-{sku}"),
            sku: sku.into(),
            location: LOCATION.into(),
            kind: AdjustmentKind::Receipt,
            quantity: 5,
            reason: String::new(),
            source: "wms".into(),
            source_seq: 1,
            observed_at_ms: None,
        };
        apply(group, Command::Adjust(stock));
    }
    let parts: BTreeMap<GroupId, Vec<Line>> = [(1, vec![line("a")]), (2, vec![line("b")])].into();
    let begin = Command::CartBegin { reservation_id: "c".into(), lines: vec![line("a"), line("b")], ttl_ms: TTL_MS, home: 1, parts, own_gate: None };
    let prepare = |of: IntentOf| Command::CartPrepare { reservation_id: "c".into(), of, lines: vec![line("b")], expires_at_ms: 1_000_000, gate: None };
    let follow = |of: IntentOf, state: ReservationState| Command::CartFollow { reservation_id: "c".into(), of, state };
    let decide = |begin_index: u64| Command::CartDecide { reservation_id: "c".into(), begin_index, hold: false, shortfalls: Vec::new() };
    let followed = |begin_index: u64| Command::CartFollowed { reservation_id: "c".into(), begin_index, group: 2, state: ReservationState::Released };

    // Incarnation X: begun, its prepare lost on the way; aborted, and group
    // 2 follows the abort before any prepare.
    let (x_index, begun) = apply(1, begin.clone());
    assert_eq!(begun.outcome, Outcome::Ok);
    let x = IntentOf { home: 1, begin_index: x_index };
    let late_prepare = prepare(x);
    assert_eq!(apply(1, decide(x_index)).1.outcome, Outcome::Ok);
    assert_eq!(apply(2, follow(x, ReservationState::Released)).1.outcome, Outcome::Ok);
    assert_eq!(apply(1, followed(x_index)).1.outcome, Outcome::Ok);
    // Incarnation Y: the same request again takes the aborted record's place,
    // group 2 holds its line, then it is aborted and followed too.
    let (y_index, begun) = apply(1, begin);
    assert_eq!(begun.outcome, Outcome::Ok);
    assert!(y_index > x_index);
    let y = IntentOf { home: 1, begin_index: y_index };
    assert_eq!(apply(2, prepare(y)).1.outcome, Outcome::Ok);
    let reserved = |groups: &BTreeMap<GroupId, (Inventory, u64)>| groups[&2].0.position(&PositionKey::new("b", LOCATION)).map_or(0, |p| p.reserved);
    assert_eq!(apply(1, decide(y_index)).1.outcome, Outcome::Ok);
    assert_eq!(apply(2, follow(y, ReservationState::Released)).1.outcome, Outcome::Ok);
    // X's messages arrive at last.
    let (_, answer) = apply(2, late_prepare);
    assert_eq!(answer.outcome, Outcome::InvalidState, "{answer:?}");
    let (_, answer) = apply(2, follow(x, ReservationState::Released));
    assert_eq!((answer.outcome, answer.replay), (Outcome::Ok, true), "{answer:?}");
    assert_eq!(reserved(&groups), 0, "the late prepare held nothing");
    let line_group = &groups[&2].0;
    assert_eq!(line_group.intent_of("c"), Some(y), "Y's tombstone stays");
    assert_eq!(line_group.reservation("c").map(|r| r.retired.clone()), Some(vec![x]));
    line_group.check_invariants().expect("invariants");
}
