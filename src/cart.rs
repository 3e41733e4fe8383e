//! The cart coordinator: drives a reservation whose lines fall in several
//! groups through the steps of `storage::cart`, from any node. It keeps no
//! state of its own: everything it needs is in the home record, so any node
//! (the next request for the id, or the home leader's resolver) can take
//! over from any step.
//!
//! Reserve: begin at the home (1), prepare every other group in parallel
//! (2), answer the client, then decide (3) and, when a line was refused,
//! make every group follow (4, 5) before answering. Commit, release,
//! fulfill, cancel: one command at the home, then the line groups follow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft::GroupError;
use storage::model::Cart;
use storage::model::CartState;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::GroupId;
use storage::model::Line;
use storage::model::Outcome;
use storage::model::RiskGate;
use storage::model::Shortfall;

use crate::node::Node;

/// How often each node's resolver looks for home records it leads whose
/// line groups have not followed yet, or that nobody decided.
pub const RESOLVE_INTERVAL: Duration = Duration::from_millis(300);
/// A record this node's resolver has seen preparing for this long (by its
/// own monotonic clock, whatever the leaders' clocks say) has lost its
/// coordinator: the resolver decides it.
pub const PREPARING_STALE: Duration = Duration::from_secs(2);
/// Most records one resolver pass works on, per group.
const RESOLVE_BATCH_MAX: usize = 256;

/// Which group holds which lines of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub home: GroupId,
    pub parts: BTreeMap<GroupId, Vec<Line>>,
}

impl Plan {
    /// Every line in one group: a one-group reservation there, one command.
    pub fn single_group(&self) -> Option<GroupId> {
        match self.parts.keys().next() {
            Some(group) if self.parts.len() == 1 => Some(*group),
            _ => None,
        }
    }
}

/// What the prepares of every line group answered.
enum Prepared {
    Held,
    Refused(Vec<Shortfall>),
}

impl Node {
    /// Reserves a cart across groups (steps 1-3). The answer is the home
    /// record's: `Ok` only once every line group holds its lines.
    /// `gates`: the risk gate's verdicts per group (in part order), kept on
    /// each intent's audit trail.
    pub async fn reserve_cart(
        &self,
        id: &str,
        lines: &[Line],
        ttl_ms: u64,
        plan: &Plan,
        gates: &BTreeMap<GroupId, RiskGate>,
    ) -> Result<(u64, CommandResult), GroupError> {
        let own_gate = gates.get(&plan.home).cloned();
        let begin = Command::CartBegin { reservation_id: id.to_owned(), lines: lines.to_vec(), ttl_ms, home: plan.home, parts: plan.parts.clone(), own_gate };
        let (index, begun) = self.propose(plan.home, begin).await?;
        let Some(cart) = begun.cart.clone() else { return Ok((index, begun)) };
        if begun.outcome != Outcome::Ok || cart.state != CartState::Preparing {
            return Ok((index, begun));
        }
        self.stop_at(crate::failpoint::CART_STOP_AFTER_BEGIN, plan.home)?;
        match self.prepare_all(&cart, gates).await? {
            Prepared::Held => {
                self.stop_at(crate::failpoint::CART_STOP_AFTER_PREPARE, plan.home)?;
                self.decide_after_answer(cart.clone()).await;
                let mut held = cart;
                held.state = CartState::Pending;
                held.parts.values_mut().for_each(|part| part.followed = Some(storage::model::ReservationState::Pending));
                Ok((index, CommandResult { reservation: Some(held.as_reservation()), cart: Some(held), ..begun }))
            }
            Prepared::Refused(shortfalls) => {
                let (index, decided) = self.decide(&cart, false, shortfalls).await?;
                Ok((index, decided))
            }
        }
    }

    /// Step 2 in every line group but the home (which held its own lines
    /// at begin, beside the record, unless a split put them apart), in
    /// parallel. Repeating it is safe: it is how a stuck
    /// record is decided. A part goes to the group holding its lines now
    /// (a split may have moved them since the plan); a part whose lines a
    /// split has put in two groups cannot be held, so it is refused (no
    /// intent of it can exist: a split never cuts a live one).
    async fn prepare_all(&self, cart: &Cart, gates: &BTreeMap<GroupId, RiskGate>) -> Result<Prepared, GroupError> {
        let prepares = cart.parts.iter().filter(|(g, _)| !cart.moves_with_record(**g)).map(|(group, part)| async move {
            let Some(target) = self.group_of_lines(&part.lines) else {
                return Ok((0, storage::model::CommandResult::bare(Outcome::InvalidState)));
            };
            let command = Command::CartPrepare {
                reservation_id: cart.id.clone(),
                of: cart.of(),
                lines: part.lines.clone(),
                expires_at_ms: cart.expires_at_ms,
                gate: gates.get(group).cloned(),
            };
            self.propose(target, command).await
        });
        let answers = futures::future::join_all(prepares).await;
        let mut refused = false;
        let mut shortfalls = Vec::new();
        for answer in answers {
            let (_, result) = answer?;
            if result.outcome != Outcome::Ok {
                refused = true;
                shortfalls.extend(result.shortfalls);
            }
        }
        Ok(if refused { Prepared::Refused(shortfalls) } else { Prepared::Held })
    }

    /// Step 3, then (for a final record) steps 4-5. Answers with the record
    /// as decided, which may be another node's earlier decision.
    async fn decide(&self, cart: &Cart, hold: bool, shortfalls: Vec<Shortfall>) -> Result<(u64, CommandResult), GroupError> {
        let command = Command::CartDecide { reservation_id: cart.id.clone(), begin_index: cart.begin_index, hold, shortfalls };
        let (index, decided) = self.propose(self.home_now(cart), command).await?;
        let Some(after) = decided.cart.clone() else { return Ok((index, decided)) };
        if after.state.is_final() {
            self.stop_at(crate::failpoint::CART_STOP_BEFORE_FOLLOW, cart.home)?;
            // A refused cart holds nothing anywhere once it is answered.
            self.follow_all(&after).await?;
        }
        let outcome = match after.state {
            CartState::Aborted => Outcome::InsufficientStock,
            _ => Outcome::Ok,
        };
        Ok((index, CommandResult { outcome, replay: decided.replay, shortfalls: after.shortfalls.clone(), ..decided }))
    }

    /// The group holding `cart`'s record now: its id's home slot, which a
    /// split or merge may have moved since the record was begun in
    /// `cart.home` (which stays its identity, in `IntentOf`).
    fn home_now(&self, cart: &Cart) -> GroupId {
        self.home_of(&cart.id).unwrap_or(cart.home)
    }

    /// Test only: the coordinator stops here, as if its node died, when the
    /// node runs with failpoint `name`.
    fn stop_at(&self, name: &str, home: GroupId) -> Result<(), GroupError> {
        if self.failpoint(name) {
            return Err(GroupError::Unavailable { group: home, reason: format!("coordinator stopped by failpoint {name}") });
        }
        Ok(())
    }

    /// Step 3 after the answer, in the background; with
    /// `crate::node::DECIDES_IN_FLIGHT_MAX` already running, before the answer instead,
    /// so a node never piles up unbounded work.
    async fn decide_after_answer(&self, cart: Cart) {
        let Some(node) = self.me() else { return };
        let slot = self.decides_in_flight.clone().try_acquire_owned().ok();
        let in_background = slot.is_some();
        let decide = async move {
            let _slot = slot;
            if let Err(e) = node.decide(&cart, true, Vec::new()).await {
                tracing::debug!(id = %cart.id, error = %e, "cart decision left to the resolver");
            }
        };
        if in_background {
            tokio::spawn(decide);
        } else {
            decide.await;
        }
    }

    /// Decides a record nobody decided: repeats every prepare, then step 3.
    pub async fn recover_cart(&self, cart: &Cart) -> Result<(u64, CommandResult), GroupError> {
        match self.prepare_all(cart, &BTreeMap::new()).await? {
            Prepared::Held => self.decide(cart, true, Vec::new()).await,
            Prepared::Refused(shortfalls) => self.decide(cart, false, shortfalls).await,
        }
    }

    /// Steps 4 and 5 for every line group that has not followed the record's
    /// state. An error names a group that could not be reached: the record
    /// has decided, and the resolver repeats the follow until it lands.
    pub async fn follow_all(&self, cart: &Cart) -> Result<(), GroupError> {
        let Some(state) = cart.state.intent_state() else { return Ok(()) };
        let groups: Vec<GroupId> = cart.unfollowed().collect();
        let follows = groups.iter().map(|group| async move {
            // Sent where the part's lines are now (a split moves intents
            // with their positions). Lines a split put in two groups hold
            // no intent (a split never cuts a live one): nothing to follow.
            let lines = cart.parts.get(group).map(|part| part.lines.as_slice()).unwrap_or_default();
            if let Some(target) = self.group_of_lines(lines) {
                let command = Command::CartFollow { reservation_id: cart.id.clone(), of: cart.of(), state };
                let (_, followed) = self.propose(target, command).await?;
                if followed.outcome != Outcome::Ok {
                    tracing::error!(id = %cart.id, group, outcome = ?followed.outcome, "a line group refused to follow its cart's record");
                    let reason = format!("group {group} refused to follow reservation {} to {}", cart.id, state.as_str());
                    return Err(GroupError::Unavailable { group: *group, reason });
                }
            }
            let note = Command::CartFollowed { reservation_id: cart.id.clone(), begin_index: cart.begin_index, group: *group, state };
            self.propose(self.home_now(cart), note).await.map(|_| ())
        });
        let mut first_error = None;
        for result in futures::future::join_all(follows).await {
            if let Err(e) = result {
                tracing::debug!(id = %cart.id, error = %e, "cart follow left to the resolver");
                first_error = first_error.or(Some(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Commit, release, fulfill or cancel at the id's home group. A cart
    /// still preparing is decided first; its line groups follow before the
    /// answer, as one group's reservation is applied before it answers. If
    /// one cannot be reached the outcome is reported unknown (the record has
    /// decided; a retry with the same id answers once every group followed).
    pub async fn transition_at_home(&self, home: GroupId, command: Command) -> Result<(u64, CommandResult), GroupError> {
        if matches!(command, Command::Commit { .. }) && self.failpoint(crate::failpoint::PARTIAL_CART) {
            if let Some(planted) = self.commit_one_group_only(home, &command).await? {
                return Ok(planted);
            }
        }
        let (mut index, mut result) = self.propose(home, command.clone()).await?;
        if let Some(cart) = result.cart.clone().filter(|c| c.state == CartState::Preparing && result.outcome == Outcome::InvalidState) {
            // Decided either way now; the command answers from the decision
            // (an aborted cart is not found, as a refused reserve).
            self.recover_cart(&cart).await?;
            (index, result) = self.propose(home, command).await?;
        }
        if let Some(cart) = result.cart.as_mut().filter(|_| result.outcome == Outcome::Ok) {
            self.stop_at(crate::failpoint::CART_STOP_BEFORE_FOLLOW, home)?;
            self.follow_all(cart).await?;
            // Every line group is in the record's state now.
            let state = cart.state.intent_state();
            cart.parts.values_mut().for_each(|part| part.followed = state);
        }
        Ok((index, result))
    }

    /// The planted `partial-cart` bug: a cart's lines committed in one line
    /// group, the home record left as it is, and OK answered. `None` when
    /// the id is not a pending cart.
    async fn commit_one_group_only(&self, home: GroupId, command: &Command) -> Result<Option<(u64, CommandResult)>, GroupError> {
        let id = command.reservation_id().unwrap_or_default().to_owned();
        let answer = self.read(home, crate::read::ReadQuery::Reservation(id), crate::read::Consistency::Strong).await?;
        let Some(cart) = answer.cart.filter(|c| c.state == CartState::Pending) else { return Ok(None) };
        let Some(group) = cart.parts.keys().copied().find(|g| *g != cart.home) else { return Ok(None) };
        let follow = Command::CartFollow { reservation_id: cart.id.clone(), of: cart.of(), state: storage::model::ReservationState::Committed };
        let (index, _) = self.propose(group, follow).await?;
        let mut shown = cart;
        shown.state = CartState::Committed;
        Ok(Some((index, CommandResult { reservation: Some(shown.as_reservation()), cart: Some(shown), ..CommandResult::bare(Outcome::Ok) })))
    }

    /// One pass of the resolver over the groups this node leads: line
    /// groups made to follow their records, stuck records decided.
    /// `seen`: when this resolver first saw each preparing record.
    pub async fn resolve_carts(&self, seen: &mut BTreeMap<(GroupId, String), std::time::Instant>) {
        let stopping = [crate::failpoint::CART_STOP_AFTER_BEGIN, crate::failpoint::CART_STOP_AFTER_PREPARE, crate::failpoint::CART_STOP_BEFORE_FOLLOW];
        if stopping.iter().any(|name| self.failpoint(name)) {
            // Test only: this node plays a dead coordinator; others resolve.
            return;
        }
        let now = std::time::Instant::now();
        let mut still_preparing = BTreeMap::new();
        for group in self.groups().filter(|g| g.is_leader()) {
            let work: Vec<Cart> = {
                let inventory = group.state().read();
                let mut work = Vec::new();
                for cart in inventory.unsettled_carts() {
                    // Every preparing record keeps its first-seen time, even
                    // past this pass's batch, or a busy group's records would
                    // never look stale.
                    let stale = cart.state == CartState::Preparing && {
                        let key = (group.id, cart.id.clone());
                        let first = seen.get(&key).copied().unwrap_or(now);
                        still_preparing.insert(key, first);
                        now.duration_since(first) >= PREPARING_STALE
                    };
                    if work.len() < RESOLVE_BATCH_MAX && (stale || cart.unfollowed().next().is_some()) {
                        work.push(cart.clone());
                    }
                }
                work
            };
            for cart in work {
                if cart.state == CartState::Preparing {
                    if let Err(e) = self.recover_cart(&cart).await {
                        tracing::debug!(id = %cart.id, error = %e, "stuck cart not decided yet");
                    }
                } else if let Err(e) = self.follow_all(&cart).await {
                    tracing::debug!(id = %cart.id, error = %e, "cart follow not applied yet");
                }
            }
        }
        *seen = still_preparing;
    }
}

/// Runs the resolver until the node stops.
pub fn spawn_resolver(node: Arc<Node>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(RESOLVE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = BTreeMap::new();
        loop {
            interval.tick().await;
            node.resolve_carts(&mut seen).await;
        }
    })
}
