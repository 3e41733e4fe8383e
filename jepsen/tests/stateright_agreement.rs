//! The linearizability checker agrees with stateright's
//! `LinearizabilityTester` (a plain exhaustive search, no memoisation) on
//! thousands of small generated histories of the position model, both
//! linearizable and not, with operations of unknown outcome and with
//! reservation expiries (optional steps, in reservation order per TTL).

use jepsen::linear::search;
use jepsen::linear::LinOp;
use jepsen::linear::Spec;
use jepsen::linear::Verdict;
use jepsen::model::Call;
use jepsen::model::Outcome;
use jepsen::model::Position;
use jepsen::model::ResState;
use jepsen::model::Ret;
use jepsen::rng::Rng;
use stateright::semantics::ConsistencyTester;
use stateright::semantics::LinearizabilityTester;
use stateright::semantics::SequentialSpec;

const SPEC: Spec = Spec { ids: 3, events: 2 };

/// The model as stateright's reference object.
#[derive(Clone)]
struct Reference(Position);

impl SequentialSpec for Reference {
    type Op = Call;
    type Ret = Ret;
    fn invoke(&mut self, op: &Call) -> Ret {
        self.0.apply(op)
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Invoke(usize),
    Apply(usize),
    Return(usize),
}

fn random_call(rng: &mut Rng) -> Call {
    let id = rng.below(SPEC.ids as u64) as usize;
    match rng.below(6) {
        0 | 1 => Call::Reserve { id, qty: rng.range(1, 2) },
        2 => Call::Commit { id },
        3 => Call::Release { id },
        4 => Call::Receipt { event: rng.below(SPEC.events as u64) as usize, qty: rng.range(1, 2) },
        _ => {
            if rng.chance(0.5) {
                Call::Read
            } else {
                Call::Lookup { id }
            }
        }
    }
}

fn random_ret(rng: &mut Rng, call: &Call) -> Ret {
    let outcomes = [Outcome::Ok, Outcome::InsufficientStock, Outcome::IdempotencyConflict, Outcome::NotFound, Outcome::InvalidState];
    match call {
        Call::Read => Ret::Read { on_hand: rng.below(4), reserved: rng.below(3), committed: rng.below(3) },
        Call::Lookup { .. } => Ret::Lookup(*rng.pick(&[ResState::Absent, ResState::Pending, ResState::Committed, ResState::Released])),
        _ => Ret::Write(*rng.pick(&outcomes)),
    }
}

/// A fresh position in which every reservation named by an expiry may
/// expire.
fn with_ttls(calls: &[Call]) -> Position {
    let mut position = Position::new(SPEC.ids, SPEC.events);
    for call in calls {
        if let Call::Expire { id, ttl_ms } = *call {
            position.set_ttl(id, ttl_ms);
        }
    }
    position
}

/// A history of `threads` sequential threads: each operation takes effect
/// at a random point between its invocation and its return; some results
/// are then corrupted, and a thread's last operation may never return.
type Generated = (u64, Vec<(usize, Call, Option<Ret>, usize, Option<usize>)>);

fn generate(rng: &mut Rng) -> Generated {
    let threads = rng.range(2, 3) as usize;
    let mut calls: Vec<(usize, Call)> = Vec::new();
    let mut streams: Vec<Vec<Step>> = Vec::new();
    for thread in 0..threads {
        let mut stream = Vec::new();
        let n = rng.range(1, 3);
        for k in 0..n {
            let op = calls.len();
            calls.push((thread, random_call(rng)));
            stream.push(Step::Invoke(op));
            let in_flight = k + 1 == n && rng.chance(0.2);
            if !in_flight || rng.chance(0.5) {
                stream.push(Step::Apply(op));
            }
            if !in_flight {
                stream.push(Step::Return(op));
            }
        }
        streams.push(stream);
    }
    // Sometimes reservations may expire: each expiry is a thread of its
    // own, invoked at the earliest time it is possible, that never returns
    // (it may take effect after that, or never).
    if rng.chance(0.4) {
        for id in 0..SPEC.ids {
            if rng.chance(0.5) {
                let op = calls.len();
                calls.push((streams.len(), Call::Expire { id, ttl_ms: 5 }));
                let mut stream = vec![Step::Invoke(op)];
                if rng.chance(0.7) {
                    stream.push(Step::Apply(op));
                }
                streams.push(stream);
            }
        }
    }
    let threads = streams.len();
    let mut model = with_ttls(&calls.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    // Every history starts with some stock so reserves can succeed.
    let initial_qty = rng.range(0, 3);
    model.apply(&Call::Receipt { event: 0, qty: initial_qty });
    let mut rets: Vec<Option<Ret>> = vec![None; calls.len()];
    let mut invoked = vec![0; calls.len()];
    let mut returned: Vec<Option<usize>> = vec![None; calls.len()];
    let mut cursor = vec![0usize; threads];
    let mut time = 0;
    while cursor.iter().zip(&streams).any(|(c, s)| *c < s.len()) {
        let live: Vec<usize> = (0..threads).filter(|t| cursor[*t] < streams[*t].len()).collect();
        let t = *rng.pick(&live);
        match streams[t][cursor[t]] {
            Step::Invoke(op) => {
                invoked[op] = time;
                time += 1;
            }
            Step::Apply(op) => rets[op] = Some(model.apply(&calls[op].1)),
            Step::Return(op) => {
                returned[op] = Some(time);
                time += 1;
            }
        }
        cursor[t] += 1;
    }
    let ops = calls
        .iter()
        .enumerate()
        .map(|(op, (thread, call))| {
            let ret = returned[op].map(|_| {
                let applied = rets[op].unwrap_or_else(|| panic!("a returned operation was applied"));
                if rng.chance(0.15) {
                    random_ret(rng, call)
                } else {
                    applied
                }
            });
            (*thread, *call, ret, invoked[op], returned[op])
        })
        .collect();
    (initial_qty, ops)
}

#[test]
fn both_checkers_agree_on_generated_histories() {
    let mut rng = Rng::new(20_260_104);
    let (mut linearizable, mut not, mut with_expiry) = (0, 0, 0);
    for case in 0..4_000 {
        let (initial_qty, mut history) = generate(&mut rng);
        // The initial receipt as the first, completed operation.
        history.iter_mut().for_each(|h| {
            h.3 += 2;
            h.4 = h.4.map(|r| r + 2);
        });
        history.insert(0, (99, Call::Receipt { event: 0, qty: initial_qty }, Some(Ret::Write(Outcome::Ok)), 0, Some(1)));

        // Events in time order for stateright.
        let mut events: Vec<(usize, bool, usize)> = Vec::new();
        for (op, h) in history.iter().enumerate() {
            events.push((h.3, false, op));
            if let Some(r) = h.4 {
                events.push((r, true, op));
            }
        }
        events.sort();
        let mut tester = LinearizabilityTester::new(Reference(with_ttls(&history.iter().map(|h| h.1).collect::<Vec<_>>())));
        for (_, is_return, op) in &events {
            let (thread, call, ret, _, _) = &history[*op];
            if *is_return {
                tester.on_return(*thread, ret.unwrap_or_else(|| panic!("returned ops have a result"))).expect("valid history");
            } else {
                tester.on_invoke(*thread, *call).expect("valid history");
            }
        }
        let theirs = tester.is_consistent();

        let ops: Vec<LinOp> = history
            .iter()
            .enumerate()
            .map(|(i, (thread, call, ret, invoke, complete))| LinOp {
                call: *call,
                // Our search takes an expiry only when it expires something.
                ret: if matches!(call, Call::Expire { .. }) { Some(Ret::Write(Outcome::Ok)) } else { *ret },
                invoke: *invoke as u64,
                complete: complete.map(|c| c as u64),
                index: i as u64,
                process: *thread as u64,
                label: format!("{call:?} -> {ret:?}"),
            })
            .collect();
        let (ours, _) = search(&ops, SPEC, 1_000_000);
        assert_ne!(ours, Verdict::Unknown);
        assert_eq!(ours == Verdict::Linearizable, theirs, "case {case}: checkers disagree on {history:#?}");
        if history.iter().any(|h| matches!(h.1, Call::Expire { .. })) {
            with_expiry += 1;
        }
        if theirs {
            linearizable += 1;
        } else {
            not += 1;
        }
    }
    println!("{linearizable} linearizable, {not} not, {with_expiry} with expiries");
    assert!(with_expiry > 1_000, "generated {with_expiry} histories with expiries");
    assert!(linearizable > 500 && not > 500, "generated {linearizable} linearizable and {not} non-linearizable histories");
}
