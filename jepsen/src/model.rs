//! The sequential model of one position (one SKU at one location), the
//! specification the linearizability checker holds a history against.
//!
//! It follows the state machine's rules (storage/src/inventory.rs) for the
//! operations the workloads use, with long TTLs so that nothing expires
//! during a test:
//! - reserve of a new id: `Ok` and `reserved += qty` when `qty <= atp`, else
//!   `InsufficientStock` with nothing changed (a refused id is not
//!   remembered); the same id again is `Ok` (a replay) with the same
//!   quantity and `IdempotencyConflict` with another;
//! - commit / release of a pending reservation move its units; the target
//!   state again is a replay (`Ok`); an unknown id is `NotFound`, any other
//!   state `InvalidState`;
//! - receipt: `on_hand += qty` once per event id;
//! - read: `(on_hand, reserved, committed)`; lookup: a reservation's state.
//!
//! Reservation and event ids are interned per history into dense numbers.
//! The state carries an incrementally maintained fingerprint (Zobrist
//! hashing) so the checker memoises configurations in O(1).

use serde::Serialize;

/// A reservation's state in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResState {
    Absent,
    Pending,
    Committed,
    Released,
    /// Reported by a node, never produced by the model: the workloads use
    /// TTLs far longer than a test, so an expiry is a violation.
    Expired,
}

impl ResState {
    pub fn parse(name: &str) -> Option<ResState> {
        Some(match name {
            "absent" => ResState::Absent,
            "pending" => ResState::Pending,
            "committed" => ResState::Committed,
            "released" => ResState::Released,
            "expired" => ResState::Expired,
            _ => return None,
        })
    }

    fn code(self) -> u64 {
        match self {
            ResState::Absent => 0,
            ResState::Pending => 1,
            ResState::Committed => 2,
            ResState::Released => 3,
            ResState::Expired => 4,
        }
    }
}

/// Business outcome of a write, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    InsufficientStock,
    IdempotencyConflict,
    NotFound,
    InvalidState,
}

impl Outcome {
    pub fn parse(name: &str) -> Option<Outcome> {
        Some(match name {
            "ok" => Outcome::Ok,
            "insufficient_stock" => Outcome::InsufficientStock,
            "idempotency_conflict" => Outcome::IdempotencyConflict,
            "not_found" => Outcome::NotFound,
            "invalid_state" => Outcome::InvalidState,
            _ => return None,
        })
    }
}

/// An operation on one position; ids are interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Reserve { id: usize, qty: u64 },
    Commit { id: usize },
    Release { id: usize },
    Receipt { event: usize, qty: u64 },
    Read,
    Lookup { id: usize },
}

impl Call {
    /// Reads change nothing: a counterexample may drop them.
    pub fn is_read(&self) -> bool {
        matches!(self, Call::Read | Call::Lookup { .. })
    }
}

/// What an operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    Write(Outcome),
    Read { on_hand: u64, reserved: u64, committed: u64 },
    Lookup(ResState),
}

/// One reservation in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Res {
    state: ResState,
    qty: u64,
}

/// The state of one position, with room for `ids` reservations and `events`
/// feed events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub on_hand: u64,
    pub reserved: u64,
    pub committed: u64,
    reservations: Vec<Res>,
    events: Vec<bool>,
    /// XOR of the Zobrist keys of every reservation and applied event.
    zobrist: u64,
}

/// What [`Position::step`] changed, to take it back.
#[derive(Debug, Clone, Copy)]
pub struct Undo {
    on_hand: u64,
    reserved: u64,
    committed: u64,
    reservation: Option<(usize, Res)>,
    event: Option<usize>,
    zobrist: u64,
}

/// SplitMix64: a good 64-bit mixer, used for Zobrist keys and fingerprints.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn reservation_key(id: usize, res: Res) -> u64 {
    if res.state == ResState::Absent {
        return 0;
    }
    mix((id as u64) << 3 | res.state.code()) ^ mix(res.qty ^ 0x5bd1_e995)
}

fn event_key(event: usize) -> u64 {
    mix(!(event as u64))
}

impl Position {
    pub fn new(ids: usize, events: usize) -> Self {
        Self {
            on_hand: 0,
            reserved: 0,
            committed: 0,
            reservations: vec![Res { state: ResState::Absent, qty: 0 }; ids],
            events: vec![false; events],
            zobrist: 0,
        }
    }

    pub fn atp(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved + self.committed)
    }

    /// A 64-bit fingerprint of the whole state.
    pub fn fingerprint(&self) -> u64 {
        mix(self.zobrist ^ mix(self.on_hand) ^ mix(self.reserved.rotate_left(21)) ^ mix(self.committed.rotate_left(42)))
    }

    fn set_reservation(&mut self, id: usize, res: Res) {
        self.zobrist ^= reservation_key(id, self.reservations[id]) ^ reservation_key(id, res);
        self.reservations[id] = res;
    }

    /// Applies `call` and returns what it returns.
    pub fn apply(&mut self, call: &Call) -> Ret {
        self.step(call).0
    }

    /// Applies `call`; returns its result and what to undo it with.
    pub fn step(&mut self, call: &Call) -> (Ret, Undo) {
        let undo = Undo { on_hand: self.on_hand, reserved: self.reserved, committed: self.committed, reservation: None, event: None, zobrist: self.zobrist };
        let mut undo = undo;
        let ret = match *call {
            Call::Reserve { id, qty } => {
                let existing = self.reservations[id];
                if existing.state != ResState::Absent {
                    Ret::Write(if existing.qty == qty { Outcome::Ok } else { Outcome::IdempotencyConflict })
                } else if qty <= self.atp() {
                    undo.reservation = Some((id, existing));
                    self.set_reservation(id, Res { state: ResState::Pending, qty });
                    self.reserved += qty;
                    Ret::Write(Outcome::Ok)
                } else {
                    Ret::Write(Outcome::InsufficientStock)
                }
            }
            Call::Commit { id } | Call::Release { id } => {
                let to = if matches!(call, Call::Commit { .. }) { ResState::Committed } else { ResState::Released };
                let existing = self.reservations[id];
                match existing.state {
                    ResState::Absent => Ret::Write(Outcome::NotFound),
                    state if state == to => Ret::Write(Outcome::Ok),
                    ResState::Pending => {
                        undo.reservation = Some((id, existing));
                        self.set_reservation(id, Res { state: to, qty: existing.qty });
                        self.reserved -= existing.qty;
                        if to == ResState::Committed {
                            self.committed += existing.qty;
                        }
                        Ret::Write(Outcome::Ok)
                    }
                    _ => Ret::Write(Outcome::InvalidState),
                }
            }
            Call::Receipt { event, qty } => {
                if !self.events[event] {
                    undo.event = Some(event);
                    self.events[event] = true;
                    self.zobrist ^= event_key(event);
                    self.on_hand += qty;
                }
                Ret::Write(Outcome::Ok)
            }
            Call::Read => Ret::Read { on_hand: self.on_hand, reserved: self.reserved, committed: self.committed },
            Call::Lookup { id } => Ret::Lookup(self.reservations[id].state),
        };
        (ret, undo)
    }

    /// Takes back the step that returned `undo` (the last one not undone).
    pub fn undo(&mut self, undo: Undo) {
        self.on_hand = undo.on_hand;
        self.reserved = undo.reserved;
        self.committed = undo.committed;
        if let Some((id, res)) = undo.reservation {
            self.reservations[id] = res;
        }
        if let Some(event) = undo.event {
            self.events[event] = false;
        }
        self.zobrist = undo.zobrist;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_the_state_machine_rules() {
        let mut p = Position::new(3, 1);
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 1 }), Ret::Write(Outcome::InsufficientStock));
        assert_eq!(p.apply(&Call::Lookup { id: 0 }), Ret::Lookup(ResState::Absent), "a refused id is not remembered");
        assert_eq!(p.apply(&Call::Receipt { event: 0, qty: 5 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Receipt { event: 0, qty: 5 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.on_hand, 5, "a replayed receipt adds nothing");
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 3 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 3 }), Ret::Write(Outcome::Ok), "replay");
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 2 }), Ret::Write(Outcome::IdempotencyConflict));
        assert_eq!(p.apply(&Call::Reserve { id: 1, qty: 3 }), Ret::Write(Outcome::InsufficientStock));
        assert_eq!(p.apply(&Call::Commit { id: 0 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Commit { id: 0 }), Ret::Write(Outcome::Ok), "replay");
        assert_eq!(p.apply(&Call::Release { id: 0 }), Ret::Write(Outcome::InvalidState));
        assert_eq!(p.apply(&Call::Release { id: 2 }), Ret::Write(Outcome::NotFound));
        assert_eq!(p.apply(&Call::Read), Ret::Read { on_hand: 5, reserved: 0, committed: 3 });
    }

    #[test]
    fn undo_restores_state_and_fingerprint() {
        let mut p = Position::new(2, 1);
        p.apply(&Call::Receipt { event: 0, qty: 4 });
        let before = (p.clone(), p.fingerprint());
        for call in [Call::Reserve { id: 1, qty: 2 }, Call::Receipt { event: 0, qty: 4 }, Call::Read] {
            let (_, undo) = p.step(&call);
            p.undo(undo);
            assert_eq!((p.clone(), p.fingerprint()), before);
        }
        let (_, undo) = p.step(&Call::Reserve { id: 1, qty: 2 });
        let (_, undo2) = p.step(&Call::Release { id: 1 });
        assert_ne!(p.fingerprint(), before.1);
        p.undo(undo2);
        p.undo(undo);
        assert_eq!((p.clone(), p.fingerprint()), before);
    }
}
