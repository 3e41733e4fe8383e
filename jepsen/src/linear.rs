//! Linearizability of one position's history: Wing & Gong's search with
//! Lowe's memoisation, as Porcupine does it. Operations become call and
//! return entries in a linked list sorted by time; the search linearizes the
//! earliest call it can, lifting it out of the list, and backtracks when it
//! reaches a return whose call it could not linearize. A configuration
//! (set of linearized operations, model state) is visited at most once: both
//! halves are 64-bit incremental fingerprints.
//!
//! An operation whose outcome is unknown (`info`) has no return entry before
//! the end of time and accepts any result: it may take effect at any point
//! after its invocation, or never (never is the same as "after everything").
//!
//! A reservation with a short TTL also gets an expiry ([`Call::Expire`]): an
//! optional step with no return that may be taken at any point from the
//! earliest time its TTL allows while the reservation is pending, or never
//! (see [`search`]). The checker does not model log time itself (the leader's
//! clock may be skewed), so any such point is allowed.
//!
//! A failing history is explained by a counterexample that is minimal in the
//! Jepsen sense: the shortest failing prefix (cut at an invocation, every
//! operation still running at the cut becomes of unknown outcome), then every
//! completed operation that is not needed is dropped (a read) or weakened to
//! unknown outcome (a write). Both are relaxations, so what remains is still
//! impossible to linearize whatever the weakened operations did: it is a
//! witness, and removing any one of its operations would explain it.

use std::collections::HashSet;

use serde::Serialize;

use crate::model::mix;
use crate::model::Call;
use crate::model::Position;
use crate::model::Ret;
use crate::model::Undo;

/// One operation for the checker.
#[derive(Debug, Clone, PartialEq)]
pub struct LinOp {
    pub call: Call,
    /// `None`: outcome unknown.
    pub ret: Option<Ret>,
    pub invoke: u64,
    /// `None`: outcome unknown (never returned).
    pub complete: Option<u64>,
    /// Index of the invocation in the history.
    pub index: u64,
    pub process: u64,
    /// Human-readable form, for counterexamples.
    pub label: String,
}

/// Sizes of the model state a history needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub ids: usize,
    pub events: usize,
}

/// The answer of one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search used up its step budget.
    Unknown,
}

/// The verdict with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub operations: usize,
    pub steps: u64,
    /// For a violation: the completed operations that cannot be ordered, by
    /// history index.
    pub counterexample: Vec<String>,
    /// Operations of the counterexample's prefix whose outcome is unknown
    /// (or was weakened to unknown): they may have taken effect anywhere
    /// after their invocation, or not at all.
    pub unknown_in_counterexample: Vec<String>,
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    is_return: bool,
    op: usize,
}

/// A move of the search, to take back.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// A client operation, by the position of its call entry.
    Call(usize),
    /// An expiry: its operation, the index of its TTL, and the return entry
    /// that blocked the client operations when it was taken.
    Expiry { op: usize, class: usize, blocking: usize },
}

/// Searches for a linearization within `budget` steps.
///
/// Expiries ([`Call::Expire`] operations) are optional spontaneous steps:
/// they have no return, an expiry may be taken at any point after its
/// `invoke` time (the earliest moment it is possible) while its reservation
/// is pending, or never. They are tried only when no client operation can be
/// linearized next, so a history that needs no expiry is searched as before.
/// Reservations of one TTL expire oldest first, so at any point there is at
/// most one candidate per TTL.
pub fn search(ops: &[LinOp], spec: Spec, budget: u64) -> (Verdict, u64) {
    let n = ops.len();
    let is_expiry = |op: &LinOp| matches!(op.call, Call::Expire { .. });
    let mut sorted: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| !is_expiry(op)) {
        sorted.push((op.invoke, false, i));
        sorted.push((op.complete.unwrap_or(u64::MAX), true, i));
    }
    // Equal times: calls first, so that touching operations count as
    // concurrent (the permissive reading).
    sorted.sort_by_key(|&(time, is_return, op)| (time, is_return, op));
    let entries: Vec<Entry> = sorted.iter().map(|&(_, is_return, op)| Entry { is_return, op }).collect();
    let times: Vec<u64> = sorted.iter().map(|&(time, _, _)| time).collect();
    let m = entries.len();
    let head = m;
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    let mut return_of = vec![NIL; n];
    let mut last = head;
    for (pos, entry) in entries.iter().enumerate() {
        next[last] = pos;
        prev[pos] = last;
        last = pos;
        if entry.is_return {
            return_of[entry.op] = pos;
        }
    }
    // The expiry of each reservation, and the TTLs: the candidates at any
    // point are the oldest pending reservation of each TTL (see
    // [`Position::next_expiry`]).
    let mut expiry_of = vec![NIL; spec.ids];
    let mut ttls: Vec<u64> = Vec::new();
    let mut state = Position::new(spec.ids, spec.events);
    for (i, op) in ops.iter().enumerate() {
        if let Call::Expire { id, ttl_ms } = op.call {
            expiry_of[id] = i;
            state.set_ttl(id, ttl_ms);
            ttls.push(ttl_ms);
        }
    }
    ttls.sort_unstable();
    ttls.dedup();
    let op_key: Vec<u64> = (0..n).map(|i| mix(i as u64 ^ 0x0123_4567_89ab_cdef)).collect();
    let mut linearized: u64 = 0;
    let mut cache: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<(Frame, Undo)> = Vec::new();
    let mut steps: u64 = 0;

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        next[prev[pos]] = next[pos];
        if next[pos] != NIL {
            prev[next[pos]] = prev[pos];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        next[prev[pos]] = pos;
        if next[pos] != NIL {
            prev[next[pos]] = pos;
        }
    };

    let mut entry = next[head];
    // `Some(class)`: every client operation was tried at this point and
    // `entry` is the return that blocks them; the next expiries of the TTLs
    // from `class` on are tried.
    let mut expiry: Option<usize> = None;
    while next[head] != NIL {
        steps += 1;
        if steps > budget {
            return (Verdict::Unknown, steps);
        }
        match expiry {
            None => {
                let Entry { is_return, op } = entries[entry];
                if is_return {
                    expiry = Some(0);
                    continue;
                }
                let (ret, undo) = state.step(&ops[op].call);
                if ops[op].ret.is_none_or(|expected| expected == ret) {
                    let key = (linearized ^ op_key[op], state.fingerprint());
                    if cache.insert(key) {
                        linearized ^= op_key[op];
                        stack.push((Frame::Call(entry), undo));
                        unlink(&mut next, &mut prev, entry);
                        unlink(&mut next, &mut prev, return_of[op]);
                        entry = next[head];
                        continue;
                    }
                }
                state.undo(undo);
                entry = next[entry];
                continue;
            }
            Some(mut class) if class < ttls.len() => {
                // The next expiry of each TTL, if it is possible here: its
                // earliest time is not after the blocking return.
                let candidate = |class: usize, state: &Position| {
                    state.next_expiry(ttls[class]).map(|id| expiry_of[id]).filter(|&op| op != NIL && ops[op].invoke <= times[entry])
                };
                while class < ttls.len() && candidate(class, &state).is_none() {
                    class += 1;
                }
                let Some(op) = (class < ttls.len()).then(|| candidate(class, &state)).flatten() else {
                    expiry = Some(ttls.len());
                    continue;
                };
                let (ret, undo) = state.step(&ops[op].call);
                if ops[op].ret.is_none_or(|expected| expected == ret) {
                    let key = (linearized ^ op_key[op], state.fingerprint());
                    if cache.insert(key) {
                        linearized ^= op_key[op];
                        stack.push((Frame::Expiry { op, class, blocking: entry }, undo));
                        entry = next[head];
                        expiry = None;
                        continue;
                    }
                }
                state.undo(undo);
                expiry = Some(class + 1);
                continue;
            }
            Some(_) => {}
        }
        // Nothing more to try here: take back the last move.
        let Some((frame, undo)) = stack.pop() else { return (Verdict::NotLinearizable, steps) };
        state.undo(undo);
        match frame {
            Frame::Call(call) => {
                let op = entries[call].op;
                linearized ^= op_key[op];
                relink(&mut next, &mut prev, return_of[op]);
                relink(&mut next, &mut prev, call);
                entry = next[call];
                expiry = None;
            }
            Frame::Expiry { op, class, blocking } => {
                linearized ^= op_key[op];
                entry = blocking;
                expiry = Some(class + 1);
            }
        }
    }
    (Verdict::Linearizable, steps)
}

/// The history cut at time `at`: operations invoked later are dropped, and
/// writes still running at `at` become of unknown outcome (reads still
/// running are dropped: a read of unknown result says nothing).
fn prefix(ops: &[LinOp], at: u64) -> Vec<LinOp> {
    ops.iter()
        .filter(|op| op.invoke <= at && !(op.call.is_read() && op.complete.is_none_or(|c| c > at)))
        .map(|op| {
            let mut op = op.clone();
            if op.complete.is_none_or(|c| c > at) {
                op.complete = None;
                op.ret = None;
            }
            op
        })
        .collect()
}

/// Checks `ops` and, when they are not linearizable, finds a minimal
/// counterexample (each search bounded by `budget` steps; at most
/// `explain_checks` searches, and none after `explain_until`, are spent on
/// the explanation: a cut short one is a failing history still, only less
/// small).
pub fn check(ops: &[LinOp], spec: Spec, budget: u64, explain_checks: usize, explain_until: std::time::Instant) -> Report {
    let (verdict, steps) = search(ops, spec, budget);
    let mut report = Report { verdict, operations: ops.len(), steps, counterexample: Vec::new(), unknown_in_counterexample: Vec::new() };
    if verdict != Verdict::NotLinearizable {
        return report;
    }
    let mut checks_left = explain_checks;
    let fails = |candidate: &[LinOp], checks_left: &mut usize| -> bool {
        if *checks_left == 0 || std::time::Instant::now() >= explain_until {
            return false;
        }
        *checks_left -= 1;
        search(candidate, spec, budget).0 == Verdict::NotLinearizable
    };
    // Shortest failing prefix: binary search over completion times (the
    // whole history, cut at the end of time, is known to fail).
    let mut times: Vec<u64> = ops.iter().filter_map(|op| op.complete).collect();
    times.push(u64::MAX);
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(&prefix(ops, times[mid]), &mut checks_left) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut current = prefix(ops, times[hi]);
    // Drop or weaken every completed operation the failure does not need.
    let mut i = current.len();
    while i > 0 {
        i -= 1;
        if current[i].complete.is_none() {
            continue;
        }
        let mut candidate = current.clone();
        if candidate[i].call.is_read() {
            candidate.remove(i);
        } else {
            candidate[i].complete = None;
            candidate[i].ret = None;
        }
        if fails(&candidate, &mut checks_left) {
            current = candidate;
        }
    }
    current.sort_by_key(|op| op.index);
    for op in current.iter().filter(|op| !matches!(op.call, Call::Expire { .. })) {
        let line = format!("index {} process {}: {}", op.index, op.process, op.label);
        if op.complete.is_some() {
            report.counterexample.push(line);
        } else {
            report.unknown_in_counterexample.push(line);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Outcome;

    fn op(call: Call, ret: Option<Ret>, invoke: u64, complete: Option<u64>, index: u64) -> LinOp {
        LinOp { call, ret, invoke, complete, index, process: index, label: format!("{call:?} -> {ret:?}") }
    }

    const SPEC: Spec = Spec { ids: 4, events: 2 };

    #[test]
    fn sequential_history_of_the_model_is_linearizable() {
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 3 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Reserve { id: 1, qty: 2 }, Some(Ret::Write(Outcome::InsufficientStock)), 4, Some(5), 2),
            op(Call::Read, Some(Ret::Read { on_hand: 3, reserved: 2, committed: 0 }), 6, Some(7), 3),
        ];
        assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping reserves for the last unit: either may win.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 1 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 1 }, Some(Ret::Write(Outcome::InsufficientStock)), 2, Some(10), 1),
            op(Call::Reserve { id: 1, qty: 1 }, Some(Ret::Write(Outcome::Ok)), 3, Some(9), 2),
        ];
        assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::Linearizable);
    }

    #[test]
    fn an_oversell_is_caught_with_a_minimal_counterexample() {
        // One unit, two sequential reservations both acknowledged, plus
        // unrelated noise that the counterexample must leave out.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 1 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Read, Some(Ret::Read { on_hand: 1, reserved: 0, committed: 0 }), 2, Some(3), 1),
            op(Call::Lookup { id: 3 }, Some(Ret::Lookup(crate::model::ResState::Absent)), 2, Some(3), 2),
            op(Call::Reserve { id: 0, qty: 1 }, Some(Ret::Write(Outcome::Ok)), 4, Some(5), 3),
            op(Call::Reserve { id: 2, qty: 1 }, None, 4, None, 4),
            op(Call::Reserve { id: 1, qty: 1 }, Some(Ret::Write(Outcome::Ok)), 6, Some(7), 5),
            op(Call::Read, Some(Ret::Read { on_hand: 1, reserved: 1, committed: 0 }), 8, Some(9), 6),
        ];
        let report = check(&ops, SPEC, 10_000, 100, far());
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        // The receipt only needs to be possible (it adds one unit at most
        // once), so the witness is the two acknowledged reserves; the noise
        // is gone and the reads are dropped.
        assert_eq!(report.counterexample.len(), 2, "{report:#?}");
        assert!(report.counterexample[0].starts_with("index 3"));
        assert!(report.counterexample[1].starts_with("index 5"));
        let unknown: Vec<&str> = report.unknown_in_counterexample.iter().map(|l| &l[..7]).collect();
        assert_eq!(unknown, ["index 0", "index 4"], "{report:#?}");
        // Out of time for the explanation: still not linearizable, with
        // the whole failing history as its counterexample.
        let late = check(&ops, SPEC, 10_000, 100, std::time::Instant::now());
        assert_eq!(late.verdict, Verdict::NotLinearizable);
        assert_eq!(late.counterexample.len(), 6, "every completed operation: {late:#?}");
    }

    fn far() -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(3_600)
    }

    fn expiry(id: usize, from: u64, index: u64) -> LinOp {
        op(Call::Expire { id, ttl_ms: 5 }, Some(Ret::Write(Outcome::Ok)), from, None, index)
    }

    #[test]
    fn an_expired_reservation_frees_its_units_for_another_process() {
        // Two units; process 1 reserves both, the reservation expires, process
        // 2 reserves them again; process 1's commit then finds it expired.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Read, Some(Ret::Read { on_hand: 2, reserved: 2, committed: 0 }), 4, Some(5), 2),
            op(Call::Reserve { id: 1, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 6, Some(7), 3),
            op(Call::Commit { id: 0 }, Some(Ret::Write(Outcome::InvalidState)), 8, Some(9), 4),
            op(Call::Lookup { id: 0 }, Some(Ret::Lookup(crate::model::ResState::Expired)), 10, Some(11), 5),
            op(Call::Read, Some(Ret::Read { on_hand: 2, reserved: 2, committed: 0 }), 12, Some(13), 6),
            expiry(0, 0, 1),
            expiry(1, 0, 3),
        ];
        assert_eq!(search(&ops, SPEC, 10_000).0, Verdict::Linearizable);
        // Without the expiry (a long TTL) the same history is an oversell.
        assert_eq!(search(&ops[..7], SPEC, 10_000).0, Verdict::NotLinearizable);
        // The expiry cannot come before the earliest time the TTL allows.
        let mut late = ops.clone();
        late[7].invoke = 8;
        assert_eq!(search(&late, SPEC, 10_000).0, Verdict::NotLinearizable);
    }

    #[test]
    fn units_reserved_twice_without_expiry_or_release_are_an_oversell() {
        // Expiries are allowed, but the read in between shows the first
        // reservation still holding its units when the second succeeds, and
        // the first is committed afterwards: it never expired.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Reserve { id: 1, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 4, Some(5), 2),
            op(Call::Commit { id: 0 }, Some(Ret::Write(Outcome::Ok)), 6, Some(7), 3),
            expiry(0, 0, 1),
            expiry(1, 0, 2),
        ];
        let report = check(&ops, SPEC, 10_000, 100, far());
        assert_eq!(report.verdict, Verdict::NotLinearizable, "{report:#?}");
        assert!(report.counterexample.iter().all(|l| !l.contains("Expire")), "{report:#?}");
        // An expired reservation cannot be committed either.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Lookup { id: 0 }, Some(Ret::Lookup(crate::model::ResState::Expired)), 4, Some(5), 2),
            op(Call::Commit { id: 0 }, Some(Ret::Write(Outcome::Ok)), 6, Some(7), 3),
            expiry(0, 0, 1),
        ];
        assert_eq!(search(&ops, SPEC, 10_000).0, Verdict::NotLinearizable);
        // And a committed one never expires.
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Commit { id: 0 }, Some(Ret::Write(Outcome::Ok)), 4, Some(5), 2),
            op(Call::Read, Some(Ret::Read { on_hand: 2, reserved: 0, committed: 0 }), 6, Some(7), 3),
            expiry(0, 0, 1),
        ];
        assert_eq!(search(&ops, SPEC, 10_000).0, Verdict::NotLinearizable);
    }

    #[test]
    fn a_lost_acknowledged_reservation_is_caught() {
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 5 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Reserve { id: 0, qty: 2 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Lookup { id: 0 }, Some(Ret::Lookup(crate::model::ResState::Absent)), 4, Some(5), 2),
        ];
        let report = check(&ops, SPEC, 1_000, 100, far());
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        assert_eq!(report.counterexample.len(), 2, "the receipt is not needed to refute it: {report:#?}");
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let base =
            vec![op(Call::Receipt { event: 0, qty: 5 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0), op(Call::Reserve { id: 0, qty: 2 }, None, 2, None, 1)];
        for reserved in [0, 2] {
            let mut ops = base.clone();
            ops.push(op(Call::Read, Some(Ret::Read { on_hand: 5, reserved, committed: 0 }), 10, Some(11), 2));
            assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::Linearizable, "reserved {reserved}");
        }
        // But it happened at most once, and not before it was invoked.
        let mut ops = base.clone();
        ops.push(op(Call::Read, Some(Ret::Read { on_hand: 5, reserved: 4, committed: 0 }), 10, Some(11), 2));
        assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::NotLinearizable);
        let mut ops = base;
        ops[1].invoke = 20;
        ops.push(op(Call::Read, Some(Ret::Read { on_hand: 5, reserved: 2, committed: 0 }), 10, Some(11), 2));
        assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::NotLinearizable);
    }

    #[test]
    fn a_stale_read_is_not_linearizable() {
        let ops = vec![
            op(Call::Receipt { event: 0, qty: 5 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0),
            op(Call::Receipt { event: 1, qty: 5 }, Some(Ret::Write(Outcome::Ok)), 2, Some(3), 1),
            op(Call::Read, Some(Ret::Read { on_hand: 5, reserved: 0, committed: 0 }), 4, Some(5), 2),
        ];
        assert_eq!(search(&ops, SPEC, 1_000).0, Verdict::NotLinearizable);
    }

    #[test]
    fn the_budget_bounds_the_search() {
        let mut ops = vec![op(Call::Receipt { event: 0, qty: 100 }, Some(Ret::Write(Outcome::Ok)), 0, Some(1), 0)];
        for i in 0..4 {
            ops.push(op(Call::Reserve { id: i, qty: 1 }, None, 2, None, i as u64 + 1));
        }
        ops.push(op(Call::Read, Some(Ret::Read { on_hand: 100, reserved: 5, committed: 0 }), 10, Some(11), 9));
        assert_eq!(search(&ops, SPEC, 3).0, Verdict::Unknown);
        assert_eq!(search(&ops, SPEC, 100_000).0, Verdict::NotLinearizable);
    }
}
