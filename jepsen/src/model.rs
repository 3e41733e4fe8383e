//! The sequential model of one position (one SKU at one location), the
//! specification the linearizability checker holds a history against.
//!
//! It follows the state machine's rules (storage/src/inventory.rs) for the
//! operations the workloads use:
//! - reserve of a new id: `Ok` and `reserved += qty` when `qty <= atp`, else
//!   `InsufficientStock` with nothing changed (a refused id is not
//!   remembered); the same id again is `Ok` (a replay) with the same
//!   quantity and `IdempotencyConflict` with another;
//! - commit / release of a pending reservation move its units; the target
//!   state again is a replay (`Ok`); an unknown id is `NotFound`, any other
//!   state `InvalidState`;
//! - receipt: `on_hand += qty` once per event id;
//! - read: `(on_hand, reserved, committed)`; lookup: a reservation's state;
//! - expire: not a client call but the state machine's own step when log
//!   time passes a reservation's `expires_at_ms`: a `Pending` reservation
//!   becomes `Expired` and its units return to ATP (`Ok`); any other state is
//!   left alone (`InvalidState`, which the checker never accepts for an
//!   expiry, so it only ever takes the real transition). An expired
//!   reservation answers commit and release with `InvalidState`, a re-sent
//!   reserve with the same payload as a replay (`Ok`), a lookup with
//!   `Expired`. When an expiry may happen is the checker's business
//!   ([`crate::linear`]): at any point after the reserve took effect.
//!
//! Reservation and event ids are interned per history into dense numbers.
//! The state carries an incrementally maintained fingerprint (Zobrist
//! hashing) so the checker memoises configurations in O(1).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Serialize;

/// A reservation's state in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResState {
    Absent,
    Pending,
    Committed,
    Released,
    /// Reached only through [`Call::Expire`].
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
    Reserve {
        id: usize,
        qty: u64,
    },
    Commit {
        id: usize,
    },
    Release {
        id: usize,
    },
    Receipt {
        event: usize,
        qty: u64,
    },
    Read,
    Lookup {
        id: usize,
    },
    /// The TTL of a reservation elapsed (a spontaneous step of the state
    /// machine, not a client call). `ttl_ms` is its TTL: see
    /// [`Position::set_ttl`].
    Expire {
        id: usize,
        ttl_ms: u64,
    },
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
    /// Order of creation (how many reservations existed before it).
    seq: u32,
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
    /// Reservations created so far.
    created: u32,
    /// TTL of each reservation that may expire (0: never expires). Fixed for
    /// a history, not part of the state.
    ttls: Vec<u64>,
    /// Per TTL, the pending reservations that may expire, oldest first:
    /// `(seq, id)`. Derived from `reservations` (kept so that the next
    /// possible expiry is found without a scan).
    queues: BTreeMap<u64, BTreeSet<(u32, usize)>>,
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
    created: u32,
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
    mix((id as u64) << 3 | res.state.code()) ^ mix(res.qty ^ 0x5bd1_e995 ^ (u64::from(res.seq) << 32))
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
            reservations: vec![Res { state: ResState::Absent, qty: 0, seq: 0 }; ids],
            events: vec![false; events],
            zobrist: 0,
            created: 0,
            ttls: vec![0; ids],
            queues: BTreeMap::new(),
        }
    }

    /// The state of reservation `id`.
    pub fn state_of(&self, id: usize) -> ResState {
        self.reservations[id].state
    }

    /// Whether [`Call::Expire`] of `id` would expire it: it is pending and
    /// no older reservation of the same TTL is.
    pub fn may_expire(&self, id: usize, ttl_ms: u64) -> bool {
        self.ttls[id] == ttl_ms && self.next_expiry(ttl_ms) == Some(id)
    }

    /// The reservation of TTL `ttl_ms` that would expire next: the oldest
    /// pending one.
    pub fn next_expiry(&self, ttl_ms: u64) -> Option<usize> {
        self.queues.get(&ttl_ms).and_then(|q| q.first()).map(|&(_, id)| id)
    }

    /// Declares that reservation `id` has TTL `ttl_ms` and may expire.
    /// Reservations of one TTL expire in the order they were made: apply
    /// sets `expires_at_ms` to log time plus the TTL, log time never goes
    /// back, and apply expires every pending reservation past its time at
    /// once. So an [`Call::Expire`] is refused while an older reservation of
    /// the same TTL is still pending (it must expire first, or be committed
    /// or released before).
    ///
    /// Call it before any step: a TTL is a fact of the history.
    pub fn set_ttl(&mut self, id: usize, ttl_ms: u64) {
        debug_assert_eq!(self.reservations[id].state, ResState::Absent, "set_ttl after a step");
        self.ttls[id] = ttl_ms;
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
        self.track(id, self.reservations[id], res);
        self.reservations[id] = res;
    }

    /// Keeps `queues` in step with reservation `id` going from `old` to `new`.
    fn track(&mut self, id: usize, old: Res, new: Res) {
        let ttl = self.ttls[id];
        if ttl == 0 || (old.state == ResState::Pending) == (new.state == ResState::Pending) {
            return;
        }
        let queue = self.queues.entry(ttl).or_default();
        if old.state == ResState::Pending {
            queue.remove(&(old.seq, id));
        } else {
            queue.insert((new.seq, id));
        }
    }

    /// Applies `call` and returns what it returns.
    pub fn apply(&mut self, call: &Call) -> Ret {
        self.step(call).0
    }

    /// Applies `call`; returns its result and what to undo it with.
    pub fn step(&mut self, call: &Call) -> (Ret, Undo) {
        let undo = Undo {
            on_hand: self.on_hand,
            reserved: self.reserved,
            committed: self.committed,
            reservation: None,
            event: None,
            zobrist: self.zobrist,
            created: self.created,
        };
        let mut undo = undo;
        let ret = match *call {
            Call::Reserve { id, qty } => {
                let existing = self.reservations[id];
                if existing.state != ResState::Absent {
                    Ret::Write(if existing.qty == qty { Outcome::Ok } else { Outcome::IdempotencyConflict })
                } else if qty <= self.atp() {
                    undo.reservation = Some((id, existing));
                    self.set_reservation(id, Res { state: ResState::Pending, qty, seq: self.created });
                    self.created += 1;
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
                        self.set_reservation(id, Res { state: to, ..existing });
                        self.reserved -= existing.qty;
                        if to == ResState::Committed {
                            self.committed += existing.qty;
                        }
                        Ret::Write(Outcome::Ok)
                    }
                    _ => Ret::Write(Outcome::InvalidState),
                }
            }
            Call::Expire { id, ttl_ms } => {
                let existing = self.reservations[id];
                if self.may_expire(id, ttl_ms) {
                    undo.reservation = Some((id, existing));
                    self.set_reservation(id, Res { state: ResState::Expired, ..existing });
                    self.reserved -= existing.qty;
                    Ret::Write(Outcome::Ok)
                } else {
                    Ret::Write(Outcome::InvalidState)
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
            self.track(id, self.reservations[id], res);
            self.reservations[id] = res;
        }
        if let Some(event) = undo.event {
            self.events[event] = false;
        }
        self.zobrist = undo.zobrist;
        self.created = undo.created;
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

    /// A position with reservation ids 0..3, each made with a 5 ms TTL.
    fn three_ids_with_ttl_5() -> Position {
        let mut p = Position::new(3, 1);
        for id in 0..3 {
            p.set_ttl(id, 5);
        }
        p
    }

    #[test]
    fn an_expired_reservation_returns_its_units() {
        let mut p = three_ids_with_ttl_5();
        p.apply(&Call::Receipt { event: 0, qty: 3 });
        assert_eq!(p.apply(&Call::Expire { id: 0, ttl_ms: 5 }), Ret::Write(Outcome::InvalidState), "nothing to expire");
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 3 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Reserve { id: 1, qty: 1 }), Ret::Write(Outcome::InsufficientStock));
        assert_eq!(p.apply(&Call::Expire { id: 0, ttl_ms: 5 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Expire { id: 0, ttl_ms: 5 }), Ret::Write(Outcome::InvalidState), "expires once");
        assert_eq!(p.apply(&Call::Lookup { id: 0 }), Ret::Lookup(ResState::Expired));
        assert_eq!(p.apply(&Call::Read), Ret::Read { on_hand: 3, reserved: 0, committed: 0 });
        assert_eq!(p.apply(&Call::Commit { id: 0 }), Ret::Write(Outcome::InvalidState));
        assert_eq!(p.apply(&Call::Release { id: 0 }), Ret::Write(Outcome::InvalidState));
        assert_eq!(p.apply(&Call::Reserve { id: 0, qty: 3 }), Ret::Write(Outcome::Ok), "a replay, nothing reserved");
        assert_eq!(p.reserved, 0);
        assert_eq!(p.apply(&Call::Reserve { id: 1, qty: 3 }), Ret::Write(Outcome::Ok), "the units are back");
        p.apply(&Call::Commit { id: 1 });
        assert_eq!(p.apply(&Call::Expire { id: 1, ttl_ms: 5 }), Ret::Write(Outcome::InvalidState), "a committed reservation never expires");
    }

    #[test]
    fn reservations_of_one_ttl_expire_in_the_order_they_were_made() {
        let mut p = three_ids_with_ttl_5();
        p.apply(&Call::Receipt { event: 0, qty: 9 });
        p.apply(&Call::Reserve { id: 2, qty: 1 });
        p.apply(&Call::Reserve { id: 0, qty: 1 });
        p.apply(&Call::Reserve { id: 1, qty: 1 });
        assert_eq!(p.apply(&Call::Expire { id: 0, ttl_ms: 5 }), Ret::Write(Outcome::InvalidState), "2 is older and pending");
        assert_eq!(p.apply(&Call::Commit { id: 2 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Expire { id: 1, ttl_ms: 5 }), Ret::Write(Outcome::InvalidState), "0 is older and pending");
        assert_eq!(p.apply(&Call::Expire { id: 0, ttl_ms: 5 }), Ret::Write(Outcome::Ok));
        assert_eq!(p.apply(&Call::Expire { id: 1, ttl_ms: 5 }), Ret::Write(Outcome::Ok));
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
