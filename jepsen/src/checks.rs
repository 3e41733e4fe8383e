//! The checkers, each independent of the others, over a recorded history:
//! - `linearizable`: per SKU, the history against the position model
//!   ([`crate::linear`]);
//! - `conservation`: bank-style bounds on every successful read (never
//!   oversold; quantities within what acknowledged and attempted operations
//!   allow);
//! - `no_lost_acks`: set-style, every acknowledged reservation, commit and
//!   release is in the final reads, and the final position adds up;
//! - `availability`: after the final heal every final read succeeds.
//!
//! History values (invocation / successful completion):
//! `reserve {sku, id, qty, ttl_ms}` / `{outcome, replay}` (`ttl_ms` missing:
//! the 1 h default); `commit`, `release`
//! `{sku, id}` / `{outcome}`; `receipt {sku, event, qty}` / `{outcome}`;
//! `read {sku}` / `{on_hand, reserved, committed, ...}`; `lookup {sku, id}` /
//! `{outcome, state}`. The final phase's operations carry `final: true`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;
use serde_json::Value;

use crate::history::Event;
use crate::history::Kind;
use crate::history::Operation;
use crate::history::Process;
use crate::linear;
use crate::linear::LinOp;
use crate::linear::Spec;
use crate::linear::Verdict;
use crate::model::Call;
use crate::model::Outcome;
use crate::model::ResState;
use crate::model::Ret;

/// The result of one checker.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub valid: Validity,
    /// Violations, each one line with the history indexes involved.
    pub errors: Vec<String>,
    pub details: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker could not decide (search budget exhausted).
    Unknown,
}

/// Slack for the machine's own clock and timer jitter.
const CLOCK_SLACK_MS: u64 = 2_000;
/// How often a leader proposes its clock (stockd's `clock_tick_ms`).
const CLOCK_TICK_MS: u64 = 250;

/// The clock faults of a history, which bound how far log time may run
/// ahead of or behind the true time: `(start, end, offset ms)`, from the
/// fault's invocation to the completion of the `unwrap` (or final `heal`)
/// that restarted its node with the true clock (`u64::MAX` if none did).
#[derive(Debug, Clone, Default)]
pub struct ClockFaults {
    faults: Vec<(u64, u64, i64)>,
}

impl ClockFaults {
    /// Reads the nemesis entries of `events`.
    pub fn from_events(events: &[Event]) -> ClockFaults {
        let mut faults = Vec::new();
        let mut invoked = 0;
        for (i, event) in events.iter().enumerate() {
            if event.process != Process::NEMESIS || event.f != "clock" {
                continue;
            }
            if event.kind == Kind::Invoke {
                invoked = event.time;
                continue;
            }
            let Some(offset_s) = event.value.get("offset_s").and_then(Value::as_i64) else { continue };
            let nodes: Vec<u64> = event.value.get("nodes").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
            if nodes.is_empty() {
                continue;
            }
            let end = events[i + 1..]
                .iter()
                .find(|e| {
                    e.process == Process::NEMESIS
                        && e.kind != Kind::Invoke
                        && (e.f == "heal"
                            || (e.f == "unwrap"
                                && e.value
                                    .get("nodes")
                                    .and_then(Value::as_array)
                                    .is_some_and(|a| a.iter().filter_map(Value::as_u64).any(|n| nodes.contains(&n)))))
                })
                .map_or(u64::MAX, |e| e.time);
            faults.push((invoked, end, offset_s.saturating_mul(1_000)));
        }
        ClockFaults { faults }
    }

    /// The earliest history time (ns) at which a reservation made by a
    /// reserve running from `invoked` to `done` (`None`: unknown) with
    /// `ttl_ms` can expire. Apply sets `expires_at_ms = L + ttl`, where the
    /// log time `L` is at least the proposing leader's clock, so at least the
    /// true time of the apply less the largest lag of a clock fault active
    /// while the reserve ran: expiry needs log time to reach `target =
    /// invoked + ttl - lag`. Log time runs ahead of the true time only by the
    /// lead of a clock fault that has started (log time never goes back, so
    /// a lead outlives its fault): at true time `t` it is at most `t` plus
    /// the largest lead of the faults started by `t`. The answer is the
    /// earliest `t` at which that reaches `target`, less some slack.
    pub fn expiry_possible_from(&self, invoked: u64, done: Option<u64>, ttl_ms: u64) -> u64 {
        let done = done.unwrap_or(u64::MAX);
        let lag = self.faults.iter().filter(|(start, end, o)| *o < 0 && *start <= done && *end >= invoked).map(|(_, _, o)| o.unsigned_abs()).max().unwrap_or(0);
        let target = invoked.saturating_add(ttl_ms.saturating_sub(lag + CLOCK_SLACK_MS).saturating_mul(1_000_000));
        self.faults
            .iter()
            .filter(|(_, _, o)| *o > 0)
            .map(|(start, _, lead)| target.saturating_sub(lead.unsigned_abs().saturating_mul(1_000_000)).max(*start))
            .fold(target, u64::min)
    }

    /// The history time (ns) by which a reservation acknowledged at `done`
    /// with `ttl_ms` must have expired, if it is still pending and the
    /// cluster has a leader on the true clock (as in the final phase). It
    /// was made by `done`, at a log time at most the true time plus the
    /// largest lead of a clock fault started by then (log time never goes
    /// back, so a lead outlives its fault); from then on the leader proposes
    /// its clock every [`CLOCK_TICK_MS`] and apply expires what is due.
    pub fn expiry_due_by(&self, done: u64, ttl_ms: u64) -> u64 {
        let lead = self.faults.iter().filter(|(start, _, o)| *o > 0 && *start <= done).map(|(_, _, o)| o.unsigned_abs()).max().unwrap_or(0);
        done.saturating_add((ttl_ms.saturating_add(lead).saturating_add(CLOCK_TICK_MS).saturating_add(CLOCK_SLACK_MS)).saturating_mul(1_000_000))
    }
}

fn ttl_of(op: &Operation) -> u64 {
    u64_arg(op, "ttl_ms").unwrap_or(crate::workload::TTL_MS)
}

/// The last time (ns) anything in the history happened.
fn history_end(ops: &[Operation]) -> u64 {
    ops.iter().map(|op| op.completed_at().unwrap_or(op.invoke.time)).max().unwrap_or(0)
}

fn str_arg<'a>(op: &'a Operation, name: &str) -> Option<&'a str> {
    op.arg(name).and_then(Value::as_str)
}

fn u64_arg(op: &Operation, name: &str) -> Option<u64> {
    op.arg(name).and_then(Value::as_u64)
}

fn outcome_of(op: &Operation) -> Option<Outcome> {
    if op.kind() != Kind::Ok {
        return None;
    }
    op.result("outcome").and_then(Value::as_str).and_then(Outcome::parse)
}

fn counters_of(op: &Operation) -> Option<(u64, u64, u64)> {
    if op.kind() != Kind::Ok {
        return None;
    }
    Some((op.result("on_hand")?.as_u64()?, op.result("reserved")?.as_u64()?, op.result("committed")?.as_u64()?))
}

fn lookup_state(op: &Operation) -> Option<ResState> {
    if op.kind() != Kind::Ok {
        return None;
    }
    match op.result("outcome").and_then(Value::as_str)? {
        "not_found" => Some(ResState::Absent),
        _ => op.result("state").and_then(Value::as_str).and_then(ResState::parse),
    }
}

fn label(op: &Operation) -> String {
    let args = op.invoke.value.as_object().map(|o| o.iter().filter(|(k, _)| *k != "sku").map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    let result = match &op.completion {
        Some(c) => format!("{} {}", serde_json::to_string(&c.kind).unwrap_or_default().trim_matches('"'), c.value),
        None => "(no completion)".to_owned(),
    };
    format!("{} {} -> {}", op.f, args.unwrap_or_default(), result)
}

/// The state of each reservation in the final lookups: `(sku, id)`.
fn final_states(ops: &[Operation]) -> HashMap<(&str, &str), ResState> {
    ops.iter().filter(|op| op.f == "lookup" && op.is_final()).filter_map(|op| Some(((op.sku()?, str_arg(op, "id")?), lookup_state(op)?))).collect()
}

/// Whether `op`, of unknown outcome, is known from the final lookups to
/// have changed nothing, so that the search may leave it out: an operation
/// of unknown outcome may take effect anywhere after its invocation, and
/// each one left in multiplies the configurations to search.
///
/// - a commit (release) of a reservation found in any other state than
///   committed (released) at the end: had it taken effect, the reservation
///   would have stayed committed (released), states no operation leaves;
/// - a reserve of an id found absent at the end: had it taken effect, the
///   id would exist (finished reservations are kept for a day, far longer
///   than a test).
///
/// The final lookups are strong reads after the heal, when every client has
/// stopped: a write still in flight then can never commit later (a leader
/// that served a strong read has committed an entry of its term, so any
/// entry it lacks is dead).
fn resolved_without_effect(op: &Operation, final_states: &HashMap<(&str, &str), ResState>) -> bool {
    if op.kind() != Kind::Info {
        return false;
    }
    let (Some(sku), Some(id)) = (op.sku(), str_arg(op, "id")) else { return false };
    let Some(&state) = final_states.get(&(sku, id)) else { return false };
    match op.f.as_str() {
        "commit" => state != ResState::Committed,
        "release" => state != ResState::Released,
        "reserve" => state == ResState::Absent,
        _ => false,
    }
}

/// The operations of each SKU as the linearizability checker sees them.
pub fn lin_ops_by_sku(ops: &[Operation], clock: &ClockFaults) -> BTreeMap<String, (Vec<LinOp>, Spec)> {
    /// A SKU's operations and its interned reservation and event ids.
    type Interned = (Vec<LinOp>, HashMap<String, usize>, HashMap<String, usize>);
    let mut by_sku: BTreeMap<String, Interned> = BTreeMap::new();
    /// Per reservation: the earliest time it may expire, with the index,
    /// process and TTL of the reserve that set it.
    type Expirable = BTreeMap<usize, (u64, u64, u64, u64)>;
    let mut expirable: BTreeMap<String, Expirable> = BTreeMap::new();
    let final_states = final_states(ops);
    let end = history_end(ops);
    for op in ops {
        let Some(sku) = op.sku() else { continue };
        let kind = op.kind();
        if kind == Kind::Fail || resolved_without_effect(op, &final_states) {
            continue;
        }
        let (list, ids, events) = by_sku.entry(sku.to_owned()).or_default();
        let intern = |table: &mut HashMap<String, usize>, name: Option<&str>| -> Option<usize> {
            let name = name?;
            let next = table.len();
            Some(*table.entry(name.to_owned()).or_insert(next))
        };
        let id = intern(ids, str_arg(op, "id"));
        let (call, ret) = match (op.f.as_str(), id) {
            ("reserve", Some(id)) => (Call::Reserve { id, qty: u64_arg(op, "qty").unwrap_or(0) }, outcome_of(op).map(Ret::Write)),
            ("commit", Some(id)) => (Call::Commit { id }, outcome_of(op).map(Ret::Write)),
            ("release", Some(id)) => (Call::Release { id }, outcome_of(op).map(Ret::Write)),
            ("lookup", Some(id)) => match lookup_state(op) {
                Some(state) => (Call::Lookup { id }, Some(Ret::Lookup(state))),
                None => continue,
            },
            ("receipt", _) => {
                let Some(event) = intern(events, str_arg(op, "event")) else { continue };
                (Call::Receipt { event, qty: u64_arg(op, "qty").unwrap_or(0) }, outcome_of(op).map(Ret::Write))
            }
            ("read", _) => match counters_of(op) {
                Some((on_hand, reserved, committed)) => (Call::Read, Some(Ret::Read { on_hand, reserved, committed })),
                None => continue,
            },
            _ => continue,
        };
        if let (Call::Reserve { id, .. }, false) = (call, ret.is_some_and(|r| r != Ret::Write(Outcome::Ok))) {
            let from = clock.expiry_possible_from(op.invoke.time, op.completed_at().filter(|_| ret.is_some()), ttl_of(op));
            let e = expirable.entry(sku.to_owned()).or_default().entry(id).or_insert((from, op.invoke.index, op.process, ttl_of(op)));
            if from < e.0 {
                *e = (from, op.invoke.index, op.process, ttl_of(op));
            }
        }
        let complete = if ret.is_some() { op.completed_at() } else { None };
        list.push(LinOp { call, ret, invoke: op.invoke.time, complete, index: op.invoke.index, process: op.process, label: label(op) });
    }
    // A pending reservation may expire at any point from then on (or never).
    // Expired is final, so one found committed or released at the end never
    // expired: it keeps an expiry that is never possible, which still holds
    // back the expiry of the reservations of its TTL made after it.
    for (sku, ids) in expirable {
        let Some((list, names, _)) = by_sku.get_mut(&sku) else { continue };
        let mut name_of = vec![""; names.len()];
        for (name, &id) in names.iter() {
            name_of[id] = name.as_str();
        }
        for (id, (mut from, index, process, ttl_ms)) in ids.into_iter().filter(|(_, (from, ..))| *from <= end) {
            let name = name_of[id];
            if matches!(final_states.get(&(sku.as_str(), name)), Some(ResState::Committed | ResState::Released)) {
                from = u64::MAX;
            }
            let label = format!("expiry of {name} (ttl {ttl_ms} ms)");
            list.push(LinOp { call: Call::Expire { id, ttl_ms }, ret: Some(Ret::Write(Outcome::Ok)), invoke: from, complete: None, index, process, label });
        }
    }
    by_sku.into_iter().map(|(sku, (list, ids, events))| (sku, (list, Spec { ids: ids.len().max(1), events: events.len().max(1) }))).collect()
}

/// Most time the linearizability check spends shrinking counterexamples,
/// over every SKU (a broken history can make each search slow).
pub const EXPLAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Per-SKU linearizability.
pub fn linearizable(ops: &[Operation], clock: &ClockFaults, budget: u64) -> CheckResult {
    let mut errors = Vec::new();
    let mut details = serde_json::Map::new();
    let mut unknown = false;
    let explain_until = std::time::Instant::now() + EXPLAIN_TIME_MAX;
    for (sku, (list, spec)) in lin_ops_by_sku(ops, clock) {
        // The first SKU found wrong is explained in full; later ones get a
        // shorter search for their counterexample (a broken history can
        // make every SKU wrong, and each explanation costs minutes).
        let explain_checks = if errors.is_empty() { 2_000 } else { 100 };
        let report = linear::check(&list, spec, budget, explain_checks, explain_until);
        match report.verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown = true,
            Verdict::NotLinearizable => {
                let mut text = format!("sku {sku}: not linearizable; no order of these {} operations explains them:", report.counterexample.len());
                for line in &report.counterexample {
                    text.push_str("\n    ");
                    text.push_str(line);
                }
                if !report.unknown_in_counterexample.is_empty() {
                    text.push_str(&format!(
                        "\n  whatever these {} operations did (outcome unknown, or not needed: each may have applied once after its invocation, or not at all):",
                        report.unknown_in_counterexample.len()
                    ));
                    for line in report.unknown_in_counterexample.iter().take(20) {
                        text.push_str("\n    ");
                        text.push_str(line);
                    }
                }
                errors.push(text);
            }
        }
        details.insert(sku, serde_json::to_value(&report).unwrap_or(Value::Null));
    }
    let valid = if !errors.is_empty() {
        Validity::Invalid
    } else if unknown {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    CheckResult { valid, errors, details: Value::Object(details) }
}

/// What the history says about one reservation id.
#[derive(Debug, Default)]
struct IdFacts {
    qty: u64,
    /// (invoke time, completion time if ok, outcome if ok, index)
    reserves: Vec<(u64, Option<u64>, Option<Outcome>, u64)>,
    commits: Vec<(u64, Option<u64>, Option<Outcome>, u64)>,
    releases: Vec<(u64, Option<u64>, Option<Outcome>, u64)>,
    /// State, index and invocation time of the final lookup.
    final_state: Option<(ResState, u64, u64)>,
    /// The earliest time it may expire ([`ClockFaults::expiry_possible_from`]).
    expires_from: Option<u64>,
    /// The time by which it must have left `Pending` ([`ClockFaults::expiry_due_by`]).
    due_by: Option<u64>,
}

impl IdFacts {
    /// May it have expired by `at` (it was reserved with a TTL short enough,
    /// and no commit was acknowledged before `at`: a committed reservation
    /// never expires)?
    fn may_expire_by(&self, at: u64) -> bool {
        self.expires_from.is_some_and(|from| from <= at) && Self::acked(&self.commits, at).is_none()
    }
}

impl IdFacts {
    fn acked(list: &[(u64, Option<u64>, Option<Outcome>, u64)], before: u64) -> Option<u64> {
        list.iter().find(|(_, done, outcome, _)| *outcome == Some(Outcome::Ok) && done.is_some_and(|d| d < before)).map(|e| e.3)
    }

    fn attempted(list: &[(u64, Option<u64>, Option<Outcome>, u64)], before: u64) -> bool {
        list.iter().any(|(invoked, _, outcome, _)| *invoked < before && outcome.is_none_or(|o| o == Outcome::Ok))
    }
}

struct SkuFacts<'a> {
    ids: BTreeMap<String, IdFacts>,
    /// event -> (qty, invoke, ok completion)
    receipts: BTreeMap<String, (u64, u64, Option<u64>)>,
    reads: Vec<&'a Operation>,
}

fn facts<'a>(ops: &'a [Operation], clock: &ClockFaults) -> BTreeMap<String, SkuFacts<'a>> {
    let mut by_sku: BTreeMap<String, SkuFacts> = BTreeMap::new();
    for op in ops {
        let Some(sku) = op.sku() else { continue };
        if op.kind() == Kind::Fail {
            continue;
        }
        let f = by_sku.entry(sku.to_owned()).or_insert_with(|| SkuFacts { ids: BTreeMap::new(), receipts: BTreeMap::new(), reads: Vec::new() });
        let ok_at = if op.kind() == Kind::Ok { op.completed_at() } else { None };
        let entry = (op.invoke.time, ok_at, outcome_of(op), op.invoke.index);
        match op.f.as_str() {
            "receipt" => {
                if let Some(event) = str_arg(op, "event") {
                    let e = f.receipts.entry(event.to_owned()).or_insert((u64_arg(op, "qty").unwrap_or(0), op.invoke.time, None));
                    e.1 = e.1.min(op.invoke.time);
                    if outcome_of(op) == Some(Outcome::Ok) {
                        e.2 = Some(e.2.map_or(entry.1.unwrap_or(u64::MAX), |t| t.min(entry.1.unwrap_or(u64::MAX))));
                    }
                }
            }
            "read" if op.kind() == Kind::Ok => f.reads.push(op),
            "reserve" | "commit" | "release" | "lookup" => {
                let Some(id) = str_arg(op, "id") else { continue };
                let facts = f.ids.entry(id.to_owned()).or_default();
                match op.f.as_str() {
                    "reserve" => {
                        facts.qty = u64_arg(op, "qty").unwrap_or(0);
                        facts.reserves.push(entry);
                        // Only a reserve that may have created it counts.
                        if entry.2.is_none_or(|o| o == Outcome::Ok) {
                            let from = clock.expiry_possible_from(op.invoke.time, ok_at, ttl_of(op));
                            facts.expires_from = Some(facts.expires_from.map_or(from, |f| f.min(from)));
                        }
                        // An acknowledged reserve bounds when it was made.
                        if let (Some(done), Some(Outcome::Ok)) = (ok_at, entry.2) {
                            let due = clock.expiry_due_by(done, ttl_of(op));
                            facts.due_by = Some(facts.due_by.map_or(due, |d| d.min(due)));
                        }
                    }
                    "commit" => facts.commits.push(entry),
                    "release" => facts.releases.push(entry),
                    _ => {
                        if op.is_final() {
                            if let Some(state) = lookup_state(op) {
                                facts.final_state = Some((state, op.invoke.index, op.invoke.time));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    by_sku
}

/// Bank-style bounds on every successful read.
pub fn conservation(ops: &[Operation], clock: &ClockFaults) -> CheckResult {
    let mut errors = Vec::new();
    let mut reads_checked = 0;
    for (sku, f) in facts(ops, clock) {
        for read in &f.reads {
            let Some((on_hand, reserved, committed)) = counters_of(read) else { continue };
            let (ti, tc) = (read.invoke.time, read.completed_at().unwrap_or(u64::MAX));
            let at = format!("sku {sku}, read at index {} ({})", read.invoke.index, label(read));
            reads_checked += 1;
            if reserved + committed > on_hand {
                errors.push(format!("{at}: oversold: reserved {reserved} + committed {committed} > on_hand {on_hand}"));
            }
            let on_hand_min: u64 = f.receipts.values().filter(|(_, _, ok)| ok.is_some_and(|t| t < ti)).map(|r| r.0).sum();
            let on_hand_max: u64 = f.receipts.values().filter(|(_, invoked, _)| *invoked < tc).map(|r| r.0).sum();
            if on_hand < on_hand_min || on_hand > on_hand_max {
                errors.push(format!("{at}: on_hand {on_hand} outside [{on_hand_min}, {on_hand_max}] allowed by the receipts"));
            }
            let held_max: u64 = f.ids.values().filter(|id| IdFacts::attempted(&id.reserves, tc)).map(|id| id.qty).sum();
            let held_min: u64 = f
                .ids
                .values()
                .filter(|id| IdFacts::acked(&id.reserves, ti).is_some() && !IdFacts::attempted(&id.releases, tc) && !id.may_expire_by(tc))
                .map(|id| id.qty)
                .sum();
            if reserved + committed > held_max || reserved + committed < held_min {
                errors.push(format!("{at}: reserved + committed = {} outside [{held_min}, {held_max}] allowed by the reservations", reserved + committed));
            }
            let committed_min: u64 = f.ids.values().filter(|id| IdFacts::acked(&id.commits, ti).is_some()).map(|id| id.qty).sum();
            let committed_max: u64 =
                f.ids.values().filter(|id| IdFacts::attempted(&id.commits, tc) && IdFacts::attempted(&id.reserves, tc)).map(|id| id.qty).sum();
            if committed < committed_min || committed > committed_max {
                errors.push(format!("{at}: committed {committed} outside [{committed_min}, {committed_max}] allowed by the commits"));
            }
        }
    }
    let valid = if errors.is_empty() { Validity::Valid } else { Validity::Invalid };
    CheckResult { valid, errors, details: json!({ "reads_checked": reads_checked }) }
}

/// Set-style: every acknowledged reservation (and its acknowledged commit or
/// release) is in the final lookups, and the final position adds up.
pub fn no_lost_acks(ops: &[Operation], clock: &ClockFaults) -> CheckResult {
    let mut errors = Vec::new();
    let mut acknowledged = 0;
    let mut unchecked = Vec::new();
    let end = history_end(ops);
    for (sku, f) in facts(ops, clock) {
        for (id, facts) in &f.ids {
            let Some(acked_at) = IdFacts::acked(&facts.reserves, u64::MAX) else { continue };
            acknowledged += 1;
            let Some((state, lookup_index, lookup_at)) = facts.final_state else {
                unchecked.push(format!("sku {sku} id {id}"));
                continue;
            };
            let expected = if let Some(i) = IdFacts::acked(&facts.commits, u64::MAX) {
                Some((ResState::Committed, i))
            } else {
                IdFacts::acked(&facts.releases, u64::MAX).map(|i| (ResState::Released, i))
            };
            // Expired is a fate only a reservation with a short enough TTL
            // may meet, and only while it was pending: an acknowledged commit
            // or release must be found as such. One still pending long after
            // its TTL lapsed lost its expiry (its units stay held).
            if state == ResState::Pending && expected.is_none() {
                if let Some(due) = facts.due_by.filter(|due| *due < lookup_at) {
                    errors.push(format!(
                        "sku {sku}: reservation {id}: its TTL lapsed by {:.1} s into the run, but the final lookup (index {lookup_index}, at {:.1} s) finds it still pending",
                        due as f64 / 1e9,
                        lookup_at as f64 / 1e9
                    ));
                }
            }
            let lost = match expected {
                Some((want, _)) => state != want,
                None => match state {
                    ResState::Pending | ResState::Committed | ResState::Released => false,
                    ResState::Expired => !facts.may_expire_by(end),
                    ResState::Absent => true,
                },
            };
            if lost {
                let acked = expected
                    .map_or(format!("reserve acknowledged at index {acked_at}"), |(want, i)| format!("{want:?} acknowledged at index {i}").to_lowercase());
                errors.push(format!("sku {sku}: reservation {id}: {acked}, but the final lookup (index {lookup_index}) finds it {state:?}").to_string());
            }
        }
        // The final position must be the sum of the final reservations.
        let final_read = f.reads.iter().rev().find(|r| r.is_final());
        if let Some(read) = final_read {
            if let Some((on_hand, reserved, committed)) = counters_of(read) {
                let all_looked_up = f.ids.values().all(|id| id.final_state.is_some());
                if all_looked_up {
                    // Expiry goes on in the final phase: one found pending
                    // by a lookup before the read may have expired by the
                    // read, one found expired by a lookup after it may still
                    // have been pending at the read.
                    let read_at = (read.invoke.time, read.completed_at().unwrap_or(u64::MAX));
                    let (mut pending_min, mut pending_max, mut done) = (0, 0, 0);
                    for id in f.ids.values() {
                        let Some((state, _, lookup_at)) = id.final_state else { continue };
                        match state {
                            ResState::Pending => {
                                pending_max += id.qty;
                                if lookup_at > read_at.0 || !id.may_expire_by(read_at.1) {
                                    pending_min += id.qty;
                                }
                            }
                            ResState::Expired if lookup_at > read_at.0 => pending_max += id.qty,
                            ResState::Committed => done += id.qty,
                            _ => {}
                        }
                    }
                    if !(pending_min..=pending_max).contains(&reserved) || committed != done {
                        let pending = if pending_min == pending_max { pending_min.to_string() } else { format!("{pending_min} to {pending_max}") };
                        errors.push(format!(
                            "sku {sku}: final read (index {}) has reserved {reserved}, committed {committed}; the final lookups add up to reserved {pending}, committed {done}",
                            read.invoke.index
                        ));
                    }
                }
                let acked_receipts: u64 = f.receipts.values().filter(|r| r.2.is_some()).map(|r| r.0).sum();
                if on_hand < acked_receipts {
                    errors
                        .push(format!("sku {sku}: final read (index {}) has on_hand {on_hand} < {acked_receipts} acknowledged by receipts", read.invoke.index));
                }
            }
        } else {
            unchecked.push(format!("sku {sku} (no final read)"));
        }
    }
    let valid = if !errors.is_empty() {
        Validity::Invalid
    } else if !unchecked.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    CheckResult { valid, errors, details: json!({ "acknowledged_reservations": acknowledged, "unchecked": unchecked }) }
}

/// After the final heal, every final read must succeed.
pub fn availability(ops: &[Operation]) -> CheckResult {
    let finals: Vec<&Operation> = ops.iter().filter(|op| op.is_final()).collect();
    let ok = finals.iter().filter(|op| op.kind() == Kind::Ok).count();
    let failed: Vec<String> = finals.iter().filter(|op| op.kind() != Kind::Ok).map(|op| format!("index {}: {}", op.invoke.index, label(op))).collect();
    let mut errors = Vec::new();
    if finals.is_empty() {
        errors.push("no final read was made".to_owned());
    }
    if !failed.is_empty() {
        errors.push(format!("{} of {} final reads failed after the heal; first: {}", failed.len(), finals.len(), failed[0]));
    }
    let valid = if errors.is_empty() { Validity::Valid } else { Validity::Invalid };
    CheckResult { valid, errors, details: json!({ "final_reads": finals.len(), "final_reads_ok": ok }) }
}

/// Counts of ok / fail / info per operation.
pub fn stats(ops: &[Operation]) -> Value {
    let mut counts: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut expired: HashSet<&str> = HashSet::new();
    for op in ops {
        let kind = match op.kind() {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            _ => "info",
        };
        *counts.entry(op.f.clone()).or_default().entry(kind).or_default() += 1;
        if op.kind() == Kind::Ok && op.result("state").and_then(Value::as_str) == Some("expired") {
            if let Some(id) = str_arg(op, "id") {
                expired.insert(id);
            }
        }
        if op.f == "reserve" && outcome_of(op) == Some(Outcome::InsufficientStock) {
            *counts.entry(op.f.clone()).or_default().entry("insufficient_stock").or_default() += 1;
        }
    }
    let mut value = json!(counts);
    // Reservations some lookup, commit or release found expired.
    value["expired_reservations"] = json!(expired.len());
    value
}

/// Every checker over one history; `valid` is false on any violation.
pub fn check_all(ops: &[Operation], clock: &ClockFaults, budget: u64) -> (bool, Value) {
    let results = [
        ("linearizable", linearizable(ops, clock, budget)),
        ("conservation", conservation(ops, clock)),
        ("no_lost_acks", no_lost_acks(ops, clock)),
        ("availability", availability(ops)),
    ];
    let valid = results.iter().all(|(_, r)| r.valid != Validity::Invalid);
    let skus: HashSet<&str> = ops.iter().filter_map(Operation::sku).collect();
    let mut map = serde_json::Map::new();
    for (name, result) in results {
        map.insert(name.to_owned(), serde_json::to_value(result).unwrap_or(Value::Null));
    }
    map.insert("stats".to_owned(), stats(ops));
    map.insert("skus".to_owned(), json!(skus.len()));
    (valid, Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::operations;
    use crate::history::Event;
    use crate::history::Process;

    /// A hand-written history: each op is invoked at `t` and completes at `t + 1`.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        t: u64,
    }

    impl H {
        fn op(&mut self, process: u64, f: &str, args: Value, kind: Kind, result: Value) -> &mut Self {
            let index = self.events.len() as u64;
            self.events.push(Event { index, kind: Kind::Invoke, f: f.into(), value: args, process: Process::Client(process), time: self.t });
            self.events.push(Event { index: index + 1, kind, f: f.into(), value: result, process: Process::Client(process), time: self.t + 1 });
            self.t += 2;
            self
        }

        fn base() -> H {
            let mut h = H::default();
            h.op(0, "receipt", json!({"sku": "a", "event": "e0", "qty": 2}), Kind::Ok, json!({"outcome": "ok"}));
            h.op(1, "reserve", json!({"sku": "a", "id": "r1", "qty": 1}), Kind::Ok, json!({"outcome": "ok"}));
            h.op(2, "commit", json!({"sku": "a", "id": "r1"}), Kind::Ok, json!({"outcome": "ok"}));
            h.op(3, "reserve", json!({"sku": "a", "id": "r2", "qty": 1}), Kind::Info, json!({"error": "timeout"}));
            h.op(4, "reserve", json!({"sku": "a", "id": "r3", "qty": 5}), Kind::Ok, json!({"outcome": "insufficient_stock"}));
            h
        }

        fn finals(&mut self, r2: &str, reserved: u64) -> &mut Self {
            self.op(9, "read", json!({"sku": "a", "final": true}), Kind::Ok, json!({"on_hand": 2, "reserved": reserved, "committed": 1}));
            self.op(9, "lookup", json!({"sku": "a", "id": "r1", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "committed"}));
            let r2 = if r2 == "not_found" { json!({"outcome": "not_found"}) } else { json!({"outcome": "ok", "state": r2}) };
            self.op(9, "lookup", json!({"sku": "a", "id": "r2", "final": true}), Kind::Ok, r2);
            self.op(9, "lookup", json!({"sku": "a", "id": "r3", "final": true}), Kind::Ok, json!({"outcome": "not_found"}));
            self
        }

        fn check(&self) -> (bool, Value) {
            check_all(&operations(&self.events).expect("a valid history"), &ClockFaults::from_events(&self.events), 100_000)
        }
    }

    fn validity(results: &Value, checker: &str) -> String {
        results[checker]["valid"].as_str().unwrap_or("missing").to_owned()
    }

    #[test]
    fn a_correct_history_passes_every_checker() {
        // The unknown reserve r2 may have applied or not: both are fine.
        for (r2, reserved) in [("pending", 1), ("not_found", 0)] {
            let (valid, results) = H::base().finals(r2, reserved).check();
            assert!(valid, "{results:#}");
            for checker in ["linearizable", "conservation", "no_lost_acks", "availability"] {
                assert_eq!(validity(&results, checker), "valid", "{checker}: {results:#}");
            }
        }
    }

    #[test]
    fn a_lost_acknowledged_reservation_fails_no_lost_acks_and_linearizability() {
        let mut h = H::base();
        h.op(5, "reserve", json!({"sku": "a", "id": "r4", "qty": 1}), Kind::Ok, json!({"outcome": "ok"}));
        h.finals("not_found", 0);
        h.op(9, "lookup", json!({"sku": "a", "id": "r4", "final": true}), Kind::Ok, json!({"outcome": "not_found"}));
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "no_lost_acks"), "invalid", "{results:#}");
        assert!(results["no_lost_acks"]["errors"][0].as_str().unwrap_or("").contains("reservation r4"), "{results:#}");
        assert_eq!(validity(&results, "linearizable"), "invalid", "{results:#}");
    }

    #[test]
    fn an_oversold_read_fails_conservation() {
        let mut h = H::base();
        h.op(5, "read", json!({"sku": "a"}), Kind::Ok, json!({"on_hand": 2, "reserved": 2, "committed": 1}));
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "conservation"), "invalid", "{results:#}");
        assert!(results["conservation"]["errors"].to_string().contains("oversold"), "{results:#}");
    }

    #[test]
    fn a_read_missing_an_acknowledged_commit_fails_conservation() {
        let mut h = H::base();
        h.op(5, "read", json!({"sku": "a"}), Kind::Ok, json!({"on_hand": 2, "reserved": 1, "committed": 0}));
        let (_, results) = h.check();
        assert_eq!(validity(&results, "conservation"), "invalid", "{results:#}");
        assert!(results["conservation"]["errors"].to_string().contains("committed 0 outside [1, 1]"), "{results:#}");
    }

    #[test]
    fn a_final_position_that_does_not_add_up_fails_no_lost_acks() {
        let (_, results) = H::base().finals("not_found", 1).check();
        assert_eq!(validity(&results, "no_lost_acks"), "invalid", "{results:#}");
    }

    /// Two units; r1 (TTL `ttl_ms`) takes both, the clock runs 10 s, then
    /// r2 takes them again and r1's commit answers invalid_state; the end
    /// finds r1 expired.
    fn expiry_history(ttl_ms: u64) -> H {
        let mut h = H::default();
        h.op(0, "receipt", json!({"sku": "a", "event": "e0", "qty": 2}), Kind::Ok, json!({"outcome": "ok"}));
        h.op(1, "reserve", json!({"sku": "a", "id": "r1", "qty": 2, "ttl_ms": ttl_ms}), Kind::Ok, json!({"outcome": "ok"}));
        h.op(3, "read", json!({"sku": "a"}), Kind::Ok, json!({"on_hand": 2, "reserved": 2, "committed": 0}));
        h.t += 10_000_000_000;
        h.op(2, "reserve", json!({"sku": "a", "id": "r2", "qty": 2, "ttl_ms": ttl_ms}), Kind::Ok, json!({"outcome": "ok"}));
        h.op(1, "commit", json!({"sku": "a", "id": "r1"}), Kind::Ok, json!({"outcome": "invalid_state", "state": "expired"}));
        h.op(3, "read", json!({"sku": "a"}), Kind::Ok, json!({"on_hand": 2, "reserved": 2, "committed": 0}));
        h.op(2, "commit", json!({"sku": "a", "id": "r2"}), Kind::Ok, json!({"outcome": "ok", "state": "committed"}));
        h.op(9, "read", json!({"sku": "a", "final": true}), Kind::Ok, json!({"on_hand": 2, "reserved": 0, "committed": 2}));
        h.op(9, "lookup", json!({"sku": "a", "id": "r1", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "expired"}));
        h.op(9, "lookup", json!({"sku": "a", "id": "r2", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "committed"}));
        h
    }

    #[test]
    fn unknown_outcomes_the_final_lookups_settle_are_left_out() {
        // r2's reserve timed out and the end finds no r2; r1 ends committed,
        // so a timed-out release of r1 changed nothing, a commit may have.
        let mut h = H::base();
        h.op(5, "release", json!({"sku": "a", "id": "r1"}), Kind::Info, json!({"error": "timeout"}));
        h.op(6, "commit", json!({"sku": "a", "id": "r1"}), Kind::Info, json!({"error": "timeout"}));
        h.finals("not_found", 0);
        let ops = operations(&h.events).expect("a valid history");
        let by_sku = lin_ops_by_sku(&ops, &ClockFaults::default());
        let unknown: Vec<&str> = by_sku["a"].0.iter().filter(|op| op.ret.is_none()).map(|op| op.label.as_str()).collect();
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(unknown[0].starts_with("commit"), "{unknown:?}");
        let (valid, results) = h.check();
        assert!(valid, "{results:#}");
        // Left out, r2 cannot explain a read that counts its unit.
        let mut h = H::base();
        h.op(7, "read", json!({"sku": "a"}), Kind::Ok, json!({"on_hand": 2, "reserved": 1, "committed": 1}));
        h.finals("not_found", 0);
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "linearizable"), "invalid", "{results:#}");
    }

    #[test]
    fn an_expired_reservation_is_accepted_when_its_ttl_allows_it() {
        let (valid, results) = expiry_history(5_000).check();
        assert!(valid, "{results:#}");
        for checker in ["linearizable", "conservation", "no_lost_acks", "availability"] {
            assert_eq!(validity(&results, checker), "valid", "{checker}: {results:#}");
        }
        assert_eq!(results["stats"]["expired_reservations"], 1, "{results:#}");
    }

    #[test]
    fn an_expiry_the_ttl_does_not_allow_is_a_violation() {
        // The same history with the default 1 h TTL: r1 cannot have expired.
        let (valid, results) = expiry_history(3_600_000).check();
        assert!(!valid);
        for checker in ["linearizable", "conservation", "no_lost_acks"] {
            assert_eq!(validity(&results, checker), "invalid", "{checker}: {results:#}");
        }
        // A missing reservation stays a violation with a short TTL.
        let mut h = expiry_history(5_000);
        h.op(4, "reserve", json!({"sku": "a", "id": "r3", "qty": 1, "ttl_ms": 5_000}), Kind::Ok, json!({"outcome": "insufficient_stock"}));
        h.op(4, "reserve", json!({"sku": "a", "id": "r4", "qty": 1, "ttl_ms": 5_000}), Kind::Ok, json!({"outcome": "ok"}));
        h.op(9, "lookup", json!({"sku": "a", "id": "r4", "final": true}), Kind::Ok, json!({"outcome": "not_found"}));
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "no_lost_acks"), "invalid", "{results:#}");
        assert_eq!(validity(&results, "linearizable"), "invalid", "{results:#}");
    }

    #[test]
    fn clock_faults_bound_the_earliest_expiry() {
        let none = ClockFaults::default();
        let s = 1_000_000_000;
        assert_eq!(none.expiry_possible_from(10 * s, Some(11 * s), 5_000), 13 * s, "5 s TTL less 2 s slack");
        let lag = ClockFaults { faults: vec![(20 * s, 30 * s, -4_000)] };
        assert_eq!(lag.expiry_possible_from(10 * s, Some(11 * s), 5_000), 13 * s, "a lag after the reserve does not matter");
        assert_eq!(lag.expiry_possible_from(10 * s, None, 5_000), 10 * s + s - s, "unless the reserve's outcome is unknown");
        assert_eq!(lag.expiry_possible_from(25 * s, Some(26 * s), 8_000), 27 * s);
        let lead = ClockFaults { faults: vec![(50 * s, 60 * s, 3_000)] };
        assert_eq!(lead.expiry_possible_from(10 * s, Some(11 * s), 8_000), 16 * s, "a lead that comes later does not matter");
        assert_eq!(lead.expiry_possible_from(45 * s, Some(46 * s), 8_000), 50 * s, "it counts from its start");
        assert_eq!(lead.expiry_possible_from(55 * s, Some(56 * s), 8_000), 58 * s, "and after");
    }

    #[test]
    fn a_reservation_still_pending_long_after_its_ttl_lost_its_expiry() {
        // r1 (5 s TTL) is acknowledged, and 10 s later the end finds it
        // pending: apply never expired it.
        let stuck = || {
            let mut h = H::default();
            h.op(0, "receipt", json!({"sku": "a", "event": "e0", "qty": 2}), Kind::Ok, json!({"outcome": "ok"}));
            h.op(1, "reserve", json!({"sku": "a", "id": "r1", "qty": 2, "ttl_ms": 5_000}), Kind::Ok, json!({"outcome": "ok"}));
            h.t += 10_000_000_000;
            h
        };
        let finals = |h: &mut H| {
            h.op(9, "read", json!({"sku": "a", "final": true}), Kind::Ok, json!({"on_hand": 2, "reserved": 2, "committed": 0}));
            h.op(9, "lookup", json!({"sku": "a", "id": "r1", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "pending"}));
        };
        let mut h = stuck();
        finals(&mut h);
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "no_lost_acks"), "invalid", "{results:#}");
        assert!(results["no_lost_acks"]["errors"][0].as_str().unwrap_or_default().contains("still pending"), "{results:#}");
        // A 10 s lead on the leader's clock before the reserve: log time may
        // be ahead, so the reservation was due later; still pending is fine.
        let mut h = H::default();
        h.events.push(Event { index: 0, kind: Kind::Invoke, f: "clock".into(), value: json!({"offset_s": 10}), process: Process::NEMESIS, time: 0 });
        h.events.push(Event {
            index: 1,
            kind: Kind::Info,
            f: "clock".into(),
            value: json!({"offset_s": 10, "nodes": [1]}),
            process: Process::NEMESIS,
            time: 0,
        });
        let mut rest = stuck();
        for (i, mut e) in rest.events.drain(..).enumerate() {
            e.index = i as u64 + 2;
            h.events.push(e);
        }
        h.t = rest.t;
        finals(&mut h);
        let (valid, results) = h.check();
        assert!(valid, "{results:#}");
        // Expiry goes on during the final phase: a read that still counts r1,
        // then a lookup that finds it expired, add up.
        let mut h = stuck();
        h.op(9, "read", json!({"sku": "a", "final": true}), Kind::Ok, json!({"on_hand": 2, "reserved": 2, "committed": 0}));
        h.op(9, "lookup", json!({"sku": "a", "id": "r1", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "expired"}));
        let (valid, results) = h.check();
        assert!(valid, "{results:#}");
        // But a read that no longer counts it, then a lookup that finds it
        // pending, do not.
        let mut h = stuck();
        h.op(9, "read", json!({"sku": "a", "final": true}), Kind::Ok, json!({"on_hand": 2, "reserved": 0, "committed": 0}));
        h.op(9, "lookup", json!({"sku": "a", "id": "r1", "final": true}), Kind::Ok, json!({"outcome": "ok", "state": "pending"}));
        let (valid, results) = h.check();
        assert!(!valid);
        assert!(results["no_lost_acks"]["errors"].to_string().contains("add up to reserved 2"), "{results:#}");
        let s = 1_000_000_000;
        let lead = ClockFaults { faults: vec![(20 * s, 30 * s, 3_000)] };
        assert_eq!(lead.expiry_due_by(10 * s, 5_000), 10 * s + 7_250_000_000, "TTL, tick and slack");
        assert_eq!(lead.expiry_due_by(25 * s, 5_000), 25 * s + 10_250_000_000, "and a lead started by then");
    }

    #[test]
    fn a_failed_final_read_fails_availability() {
        let mut h = H::base();
        h.finals("pending", 1);
        h.op(9, "read", json!({"sku": "a", "final": true}), Kind::Info, json!({"error": "unavailable"}));
        let (valid, results) = h.check();
        assert!(!valid);
        assert_eq!(validity(&results, "availability"), "invalid", "{results:#}");
        assert_eq!(validity(&results, "linearizable"), "valid", "{results:#}");
    }
}
