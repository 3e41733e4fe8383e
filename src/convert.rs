//! Conversions between the public API (proto) and the domain model.

use storage::model as m;
use storage::validate::InvalidInput;

use crate::proto::v1 as pb;

fn invalid(field: &str, reason: &str) -> InvalidInput {
    InvalidInput { field: field.to_string(), reason: reason.to_string() }
}

pub fn line_from_pb(l: &pb::Line) -> m::Line {
    m::Line { sku: l.sku.clone(), location: l.location.clone(), quantity: l.quantity }
}

pub fn line_to_pb(l: &m::Line) -> pb::Line {
    pb::Line { sku: l.sku.clone(), location: l.location.clone(), quantity: l.quantity }
}

pub fn kind_from_pb(kind: i32) -> Result<m::AdjustmentKind, InvalidInput> {
    use pb::AdjustmentKind as K;
    Ok(match K::try_from(kind).map_err(|_| invalid("kind", "unknown adjustment kind"))? {
        K::Unspecified => return Err(invalid("kind", "must be set (receipt, return, damage, shrink, count, hold, unhold, safety-stock)")),
        K::Receipt => m::AdjustmentKind::Receipt,
        K::Return => m::AdjustmentKind::Return,
        K::Damage => m::AdjustmentKind::Damage,
        K::Shrink => m::AdjustmentKind::Shrink,
        K::Count => m::AdjustmentKind::Count,
        K::Hold => m::AdjustmentKind::Hold,
        K::Unhold => m::AdjustmentKind::Unhold,
        K::SafetyStock => m::AdjustmentKind::SafetyStock,
    })
}

pub fn outcome_to_pb(o: m::Outcome) -> pb::Outcome {
    match o {
        m::Outcome::Ok => pb::Outcome::Ok,
        m::Outcome::InsufficientStock => pb::Outcome::InsufficientStock,
        m::Outcome::IdempotencyConflict => pb::Outcome::IdempotencyConflict,
        m::Outcome::NotFound => pb::Outcome::NotFound,
        m::Outcome::InvalidState => pb::Outcome::InvalidState,
        m::Outcome::StaleEvent => pb::Outcome::StaleEvent,
        m::Outcome::InsufficientQuantity => pb::Outcome::InsufficientQuantity,
        m::Outcome::RiskRefused => pb::Outcome::RiskRefused,
        // The group turns these into `GroupError::StaleRoute` before any
        // answer is built; an answer never carries them.
        m::Outcome::EpochNotMatch | m::Outcome::KeyNotInRange => pb::Outcome::Unspecified,
    }
}

pub fn state_to_pb(s: m::ReservationState) -> pb::ReservationState {
    match s {
        m::ReservationState::Pending => pb::ReservationState::Pending,
        m::ReservationState::Committed => pb::ReservationState::Committed,
        m::ReservationState::Released => pb::ReservationState::Released,
        m::ReservationState::Expired => pb::ReservationState::Expired,
        m::ReservationState::Fulfilled => pb::ReservationState::Fulfilled,
        m::ReservationState::Cancelled => pb::ReservationState::Cancelled,
    }
}

/// A reservation held in one group, `group` (its home).
pub fn reservation_to_pb(r: &m::Reservation, group: m::GroupId) -> pb::Reservation {
    let lines: Vec<pb::Line> = r.lines.iter().map(line_to_pb).collect();
    pb::Reservation {
        id: r.id.clone(),
        state: state_to_pb(r.state) as i32,
        lines: lines.clone(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        home_group: group,
        parts: vec![pb::ReservationPart { group_id: group, lines, state: state_to_pb(r.state) as i32 }],
    }
}

/// A cart across groups, from its home record as group `home` holds it
/// (the id's home now: a split or merge may have moved the record since
/// it was begun in `cart.home`): each group's lines with the state that
/// group confirmed (unspecified while it has not yet), by the group ids the
/// cart was planned with.
pub fn cart_to_pb(cart: &m::Cart, home: m::GroupId) -> pb::Reservation {
    let parts = cart
        .parts
        .iter()
        .map(|(group, part)| pb::ReservationPart {
            group_id: *group,
            lines: part.lines.iter().map(line_to_pb).collect(),
            state: part.followed.map_or(pb::ReservationState::Unspecified, state_to_pb) as i32,
        })
        .collect();
    pb::Reservation { home_group: home, parts, ..reservation_to_pb(&cart.as_reservation(), home) }
}

/// The reservation a command result carries: a cart's record, else the
/// plain reservation of `group`.
fn result_reservation(r: &m::CommandResult, group: m::GroupId) -> Option<pb::Reservation> {
    record_to_pb(r.cart.as_ref(), r.reservation.as_ref(), group)
}

/// The record under an id that `group` holds (a command's result or a
/// read's answer): a cart's record, else a plain reservation.
pub fn record_to_pb(cart: Option<&m::Cart>, plain: Option<&m::Reservation>, group: m::GroupId) -> Option<pb::Reservation> {
    match (cart, plain) {
        (Some(cart), _) => Some(cart_to_pb(cart, group)),
        (None, Some(plain)) => Some(reservation_to_pb(plain, group)),
        (None, None) => None,
    }
}

pub fn position_to_pb(region: &str, key: &m::PositionKey, p: &m::Position) -> pb::Position {
    pb::Position {
        region: region.to_string(),
        sku: key.sku.clone(),
        location: key.location.clone(),
        on_hand: p.on_hand,
        reserved: p.reserved,
        committed: p.committed,
        safety_stock: p.safety_stock,
        held: p.held,
        atp: p.atp(),
        short: p.is_short(),
        recent_changes: p
            .recent_changes
            .iter()
            .map(|c| pb::Change {
                log_index: c.log_index,
                at_ms: c.at_ms,
                kind: c.kind.clone(),
                reference: c.reference.clone(),
                reason: c.reason.clone(),
                on_hand_delta: c.on_hand_delta,
                reserved_delta: c.reserved_delta,
                committed_delta: c.committed_delta,
                held_delta: c.held_delta,
                safety_stock_delta: c.safety_stock_delta,
            })
            .collect(),
    }
}

pub fn reserve_response(index: u64, r: &m::CommandResult, group: m::GroupId) -> pb::ReserveResponse {
    pb::ReserveResponse {
        outcome: outcome_to_pb(r.outcome) as i32,
        replay: r.replay,
        reservation: result_reservation(r, group),
        shortfalls: r
            .shortfalls
            .iter()
            .map(|s| pb::Shortfall { sku: s.sku.clone(), location: s.location.clone(), requested: s.requested, atp: s.atp })
            .collect(),
        applied_index: index,
        risk: Vec::new(),
    }
}

pub fn line_risk_to_pb(r: &m::LineRisk) -> pb::LineRisk {
    pb::LineRisk {
        p_sellable: r.p_sellable().unwrap_or(0.0),
        scored: r.p_sellable_ppm.is_some(),
        threshold: r.threshold(),
        model_version: r.model_version.clone(),
        refused_by: r.refused_by.clone(),
        degraded: r.degraded.clone(),
    }
}

pub fn reservation_response(index: u64, r: &m::CommandResult, group: m::GroupId) -> pb::ReservationResponse {
    pb::ReservationResponse { outcome: outcome_to_pb(r.outcome) as i32, replay: r.replay, reservation: result_reservation(r, group), applied_index: index }
}
