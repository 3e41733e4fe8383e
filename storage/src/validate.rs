//! Input validation of client commands, done before a command is proposed.
//!
//! Apply never fails on input; this module is where malformed input is
//! refused, with the offending field named exactly as the public API names it
//! (`reservation_id`, `lines[2].sku`, `ttl_ms`, `source_seq`...).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::inventory::QUANTITY_MAX;
use crate::model::Adjustment;
use crate::model::AdjustmentKind;
use crate::model::Command;
use crate::model::GroupId;
use crate::model::Line;
use crate::model::ReservationState;
use crate::model::RiskGate;

/// Bounds on client input. Enforced by the node that accepts a command, before
/// it is proposed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InputLimits {
    pub id_bytes_max: usize,
    pub sku_bytes_max: usize,
    pub location_bytes_max: usize,
    pub lines_max: usize,
    pub line_quantity_max: u64,
    pub adjust_quantity_max: u64,
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
    /// Used when a client sends no TTL (0), see [`InputLimits::effective_ttl_ms`].
    pub ttl_ms_default: u64,
    pub reason_bytes_max: usize,
    pub source_bytes_max: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            id_bytes_max: 128,
            sku_bytes_max: 64,
            location_bytes_max: 64,
            lines_max: 64,
            line_quantity_max: 1_000_000,
            adjust_quantity_max: 1_000_000_000,
            ttl_ms_min: 1_000,
            ttl_ms_max: 86_400_000,
            ttl_ms_default: 30_000,
            reason_bytes_max: 256,
            source_bytes_max: 64,
        }
    }
}

impl InputLimits {
    /// Checks the relations between the limits (run at start-up).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("id-bytes-max", self.id_bytes_max as u64),
            ("sku-bytes-max", self.sku_bytes_max as u64),
            ("location-bytes-max", self.location_bytes_max as u64),
            ("lines-max", self.lines_max as u64),
            ("line-quantity-max", self.line_quantity_max),
            ("adjust-quantity-max", self.adjust_quantity_max),
            ("ttl-ms-min", self.ttl_ms_min),
            ("ttl-ms-max", self.ttl_ms_max),
            ("ttl-ms-default", self.ttl_ms_default),
            ("reason-bytes-max", self.reason_bytes_max as u64),
            ("source-bytes-max", self.source_bytes_max as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if !(self.ttl_ms_min <= self.ttl_ms_default && self.ttl_ms_default <= self.ttl_ms_max) {
            return Err(format!(
                "ttl-ms-min ({}) <= ttl-ms-default ({}) <= ttl-ms-max ({}) does not hold",
                self.ttl_ms_min, self.ttl_ms_default, self.ttl_ms_max
            ));
        }
        if self.adjust_quantity_max > QUANTITY_MAX {
            return Err(format!("adjust-quantity-max ({}) must be at most {QUANTITY_MAX}", self.adjust_quantity_max));
        }
        let cart_max = (self.lines_max as u64).checked_mul(self.line_quantity_max);
        if cart_max.is_none_or(|cart_max| cart_max > QUANTITY_MAX) {
            return Err(format!("lines-max ({}) * line-quantity-max ({}) must be at most {QUANTITY_MAX}", self.lines_max, self.line_quantity_max));
        }
        Ok(())
    }

    /// The TTL to propose for a requested one: 0 means "not given".
    pub fn effective_ttl_ms(&self, requested_ttl_ms: u64) -> u64 {
        if requested_ttl_ms == 0 {
            self.ttl_ms_default
        } else {
            requested_ttl_ms
        }
    }
}

/// A command refused before it was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The field as the public API names it, e.g. `lines[2].sku`.
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// Checks one command against the input limits. The caller substitutes the
/// default TTL for 0 ([`InputLimits::effective_ttl_ms`]) before validating.
pub fn validate_command(command: &Command, limits: &InputLimits) -> Result<(), InvalidInput> {
    match command {
        Command::Reserve { reservation_id, lines, ttl_ms } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            check_lines(lines, limits)?;
            check_range("ttl_ms", *ttl_ms, limits.ttl_ms_min, limits.ttl_ms_max)
        }
        Command::ReserveGated { reservation_id, lines, ttl_ms, gate } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            check_lines(lines, limits)?;
            check_range("ttl_ms", *ttl_ms, limits.ttl_ms_min, limits.ttl_ms_max)?;
            check_gate(gate, lines.len())
        }
        Command::Commit { reservation_id } | Command::Release { reservation_id } | Command::Fulfill { reservation_id } | Command::Cancel { reservation_id } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)
        }
        Command::Adjust(adjustment) => check_adjustment(adjustment, limits),
        Command::CartBegin { reservation_id, lines, ttl_ms, home, parts, own_gate } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            check_lines(lines, limits)?;
            check_range("ttl_ms", *ttl_ms, limits.ttl_ms_min, limits.ttl_ms_max)?;
            check_parts(lines, parts, *home)?;
            match own_gate {
                Some(gate) => check_gate(gate, parts.get(home).map_or(0, Vec::len)),
                None => Ok(()),
            }
        }
        Command::CartPrepare { reservation_id, lines, gate, .. } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            check_lines(lines, limits)?;
            match gate {
                Some(gate) => check_gate(gate, lines.len()),
                None => Ok(()),
            }
        }
        Command::CartDecide { reservation_id, shortfalls, .. } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            if shortfalls.len() > limits.lines_max {
                return Err(InvalidInput::new("shortfalls", format!("has {} entries, more than {}", shortfalls.len(), limits.lines_max)));
            }
            for (i, shortfall) in shortfalls.iter().enumerate() {
                check_token(&format!("shortfalls[{i}].sku"), &shortfall.sku, limits.sku_bytes_max)?;
                check_token(&format!("shortfalls[{i}].location"), &shortfall.location, limits.location_bytes_max)?;
            }
            Ok(())
        }
        Command::CartFollow { reservation_id, state, .. } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            if *state == ReservationState::Pending {
                return Err(InvalidInput::new("state", "an intent follows its record to a state after pending"));
            }
            Ok(())
        }
        Command::CartFollowed { reservation_id, .. } => check_token("reservation_id", reservation_id, limits.id_bytes_max),
        Command::Locate { reservation_id, ttl_ms, .. } => {
            check_token("reservation_id", reservation_id, limits.id_bytes_max)?;
            check_range("ttl_ms", *ttl_ms, limits.ttl_ms_min, limits.ttl_ms_max)
        }
        Command::Split { at_sku, .. } => check_token("at_sku", at_sku, limits.sku_bytes_max),
        // Built by nodes only (trusted peers), within the peer payload
        // bound; `Topology::apply` refuses what does not fit the topology,
        // and a merge what is not a frozen adjacent range.
        Command::Topology(_) | Command::Freeze | Command::Thaw { .. } | Command::Merge { .. } => Ok(()),
    }
}

/// A cart's parts hold its lines exactly: each line in one part, no empty
/// part, no line that the cart does not have; and it is not a plain
/// reservation (every line in the home group).
fn check_parts(lines: &[Line], parts: &BTreeMap<GroupId, Vec<Line>>, home: GroupId) -> Result<(), InvalidInput> {
    if parts.is_empty() || (parts.len() == 1 && parts.contains_key(&home)) {
        return Err(InvalidInput::new("parts", "a cart holds lines outside its home group"));
    }
    if parts.values().any(Vec::is_empty) {
        return Err(InvalidInput::new("parts", "a part holds no line"));
    }
    let mut wanted: Vec<&Line> = lines.iter().collect();
    let mut got: Vec<&Line> = parts.values().flatten().collect();
    let order = |a: &&Line, b: &&Line| (&a.sku, &a.location, a.quantity).cmp(&(&b.sku, &b.location, b.quantity));
    wanted.sort_by(order);
    got.sort_by(order);
    if wanted != got {
        return Err(InvalidInput::new("parts", "the parts do not hold exactly the cart's lines"));
    }
    Ok(())
}

/// Most names in a gate verdict's rule and degraded lists, and their length.
const GATE_NAMES_MAX: usize = 16;
const GATE_NAME_BYTES_MAX: usize = 64;

/// The gate's verdict comes from the proposing node, not the client, but it
/// goes into the log: bounded like everything else there.
fn check_gate(gate: &RiskGate, lines: usize) -> Result<(), InvalidInput> {
    if gate.lines.len() != lines {
        return Err(InvalidInput::new("risk_gate.lines", format!("has {} verdicts for {lines} lines", gate.lines.len())));
    }
    for (i, risk) in gate.lines.iter().enumerate() {
        let field = |name: &str| format!("risk_gate.lines[{i}].{name}");
        if risk.p_sellable_ppm.is_some_and(|ppm| ppm > 1_000_000) || risk.threshold_ppm > 1_000_000 {
            return Err(InvalidInput::new(field("p_sellable_ppm"), "probabilities are at most 1000000 ppm"));
        }
        if risk.model_version.len() > GATE_NAME_BYTES_MAX {
            return Err(InvalidInput::new(field("model_version"), format!("longer than {GATE_NAME_BYTES_MAX} bytes")));
        }
        for (name, list) in [("refused_by", &risk.refused_by), ("degraded", &risk.degraded)] {
            if list.len() > GATE_NAMES_MAX || list.iter().any(|entry| entry.len() > GATE_NAME_BYTES_MAX) {
                return Err(InvalidInput::new(field(name), format!("at most {GATE_NAMES_MAX} names of at most {GATE_NAME_BYTES_MAX} bytes")));
            }
        }
    }
    Ok(())
}

fn check_lines(lines: &[Line], limits: &InputLimits) -> Result<(), InvalidInput> {
    if lines.is_empty() {
        return Err(InvalidInput::new("lines", "must not be empty"));
    }
    if lines.len() > limits.lines_max {
        return Err(InvalidInput::new("lines", format!("has {} lines, more than {}", lines.len(), limits.lines_max)));
    }
    for (i, line) in lines.iter().enumerate() {
        check_token(&format!("lines[{i}].sku"), &line.sku, limits.sku_bytes_max)?;
        check_token(&format!("lines[{i}].location"), &line.location, limits.location_bytes_max)?;
        check_range(&format!("lines[{i}].quantity"), line.quantity, 1, limits.line_quantity_max)?;
    }
    Ok(())
}

fn check_adjustment(adjustment: &Adjustment, limits: &InputLimits) -> Result<(), InvalidInput> {
    check_token("event_id", &adjustment.event_id, limits.id_bytes_max)?;
    check_token("sku", &adjustment.sku, limits.sku_bytes_max)?;
    check_token("location", &adjustment.location, limits.location_bytes_max)?;
    let quantity_min = match adjustment.kind {
        // Absolute settings: zero is a real value (counted empty, no buffer).
        AdjustmentKind::Count | AdjustmentKind::SafetyStock => 0,
        AdjustmentKind::Receipt | AdjustmentKind::Return | AdjustmentKind::Damage | AdjustmentKind::Shrink | AdjustmentKind::Hold | AdjustmentKind::Unhold => 1,
    };
    check_range("quantity", adjustment.quantity, quantity_min, limits.adjust_quantity_max)?;
    check_text("reason", &adjustment.reason, limits.reason_bytes_max)?;
    check_token("source", &adjustment.source, limits.source_bytes_max)?;
    if adjustment.source.contains('/') {
        // The audit reference is `source/event_id`; keep it unambiguous.
        return Err(InvalidInput::new("source", "must not contain '/'"));
    }
    if adjustment.source_seq == 0 {
        return Err(InvalidInput::new("source_seq", "must be at least 1"));
    }
    Ok(())
}

/// An identifier-like value: non-empty, bounded, no whitespace or control
/// characters.
pub fn check_token(field: &str, value: &str, bytes_max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    check_length(field, value, bytes_max)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidInput::new(field, "must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Free text: may be empty, bounded, no control characters.
fn check_text(field: &str, value: &str, bytes_max: usize) -> Result<(), InvalidInput> {
    check_length(field, value, bytes_max)?;
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::new(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_length(field: &str, value: &str, bytes_max: usize) -> Result<(), InvalidInput> {
    if value.len() > bytes_max {
        return Err(InvalidInput::new(field, format!("is {} bytes, more than {bytes_max}", value.len())));
    }
    Ok(())
}

fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), InvalidInput> {
    if value < min || value > max {
        return Err(InvalidInput::new(field, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, location: &str, quantity: u64) -> Line {
        Line { sku: sku.to_owned(), location: location.to_owned(), quantity }
    }

    fn reserve(id: &str, lines: Vec<Line>, ttl_ms: u64) -> Command {
        Command::Reserve { reservation_id: id.to_owned(), lines, ttl_ms }
    }

    #[test]
    fn a_gate_verdict_must_match_the_lines_and_stay_bounded() {
        let verdict = crate::model::LineRisk {
            p_sellable_ppm: Some(950_000),
            threshold_ppm: 900_000,
            model_version: "v1".to_owned(),
            refused_by: Vec::new(),
            degraded: Vec::new(),
        };
        let gated = |verdicts: Vec<crate::model::LineRisk>| Command::ReserveGated {
            reservation_id: "r1".to_owned(),
            lines: vec![line("sku-1", "dc-1", 1), line("sku-1", "dc-2", 1)],
            ttl_ms: 60_000,
            gate: RiskGate { lines: verdicts },
        };
        assert_eq!(refused_field(&gated(vec![verdict.clone(), verdict.clone()])), None);
        assert_eq!(refused_field(&gated(vec![verdict.clone()])).as_deref(), Some("risk_gate.lines"));
        let mut odd = verdict.clone();
        odd.p_sellable_ppm = Some(1_000_001);
        assert_eq!(refused_field(&gated(vec![verdict.clone(), odd])).as_deref(), Some("risk_gate.lines[1].p_sellable_ppm"));
        let mut long = verdict.clone();
        long.refused_by = vec!["X".repeat(65)];
        assert_eq!(refused_field(&gated(vec![long, verdict])).as_deref(), Some("risk_gate.lines[0].refused_by"));
    }

    fn adjustment(kind: AdjustmentKind, quantity: u64) -> Adjustment {
        Adjustment {
            event_id: "wms-evt-1".to_owned(),
            sku: "sku-1".to_owned(),
            location: "dc-1".to_owned(),
            kind,
            quantity,
            reason: "cycle count, aisle 4".to_owned(),
            source: "wms".to_owned(),
            source_seq: 1,
            observed_at_ms: None,
        }
    }

    /// The field a command is refused for, or `None` if it is accepted.
    fn refused_field(command: &Command) -> Option<String> {
        validate_command(command, &InputLimits::default()).err().map(|invalid| invalid.field)
    }

    fn refused_adjustment(edit: impl FnOnce(&mut Adjustment)) -> Option<String> {
        let mut adjustment = adjustment(AdjustmentKind::Receipt, 5);
        edit(&mut adjustment);
        refused_field(&Command::Adjust(adjustment))
    }

    #[test]
    fn default_limits_are_consistent() {
        assert_eq!(InputLimits::default().validate(), Ok(()));
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let defaults = InputLimits::default();
        let broken = [
            InputLimits { lines_max: 0, ..defaults.clone() },
            InputLimits { reason_bytes_max: 0, ..defaults.clone() },
            InputLimits { ttl_ms_default: 500, ..defaults.clone() },
            InputLimits { ttl_ms_default: 100_000_000, ..defaults.clone() },
            InputLimits { ttl_ms_min: 10_000, ttl_ms_max: 5_000, ..defaults.clone() },
            InputLimits { adjust_quantity_max: u64::MAX, ..defaults.clone() },
            InputLimits { line_quantity_max: u64::MAX / 2, ..defaults.clone() },
        ];
        for limits in broken {
            assert!(limits.validate().is_err(), "{limits:?}");
        }
    }

    /// Deserialises limits from a map of config keys (no format crate needed).
    fn limits_from_keys(pairs: Vec<(&'static str, u64)>) -> Result<InputLimits, String> {
        use serde::de::value::Error;
        use serde::de::value::MapDeserializer;
        InputLimits::deserialize(MapDeserializer::<_, Error>::new(pairs.into_iter())).map_err(|error| error.to_string())
    }

    #[test]
    fn input_limits_use_kebab_case_keys_and_refuse_unknown_ones() {
        let keys = vec![
            ("id-bytes-max", 100),
            ("sku-bytes-max", 64),
            ("location-bytes-max", 64),
            ("lines-max", 8),
            ("line-quantity-max", 10),
            ("adjust-quantity-max", 1_000),
            ("ttl-ms-min", 1_000),
            ("ttl-ms-max", 60_000),
            ("ttl-ms-default", 5_000),
            ("reason-bytes-max", 256),
            ("source-bytes-max", 64),
        ];
        let limits = limits_from_keys(keys.clone()).expect("kebab-case keys parse");
        assert_eq!((limits.id_bytes_max, limits.lines_max, limits.ttl_ms_default), (100, 8, 5_000));

        let mut unknown = keys.clone();
        unknown.push(("ttl-ms-maximum", 1));
        assert!(limits_from_keys(unknown).expect_err("unknown key").contains("ttl-ms-maximum"));
        let mut snake_case = keys;
        snake_case[0].0 = "id_bytes_max";
        assert!(limits_from_keys(snake_case).is_err());
    }

    #[test]
    fn effective_ttl_substitutes_the_default_for_zero() {
        let limits = InputLimits::default();
        assert_eq!(limits.effective_ttl_ms(0), 30_000);
        assert_eq!(limits.effective_ttl_ms(5_000), 5_000);
    }

    #[test]
    fn well_formed_commands_are_accepted() {
        let cart = vec![line("sku-1", "dc-1", 1), line("sku-1", "dc-1", 1_000_000)];
        assert_eq!(refused_field(&reserve("order-42", cart.clone(), 1_000)), None);
        assert_eq!(refused_field(&reserve("order-42", cart, 86_400_000)), None);
        let max_lines = vec![line("sku-1", "dc-1", 1); 64];
        assert_eq!(refused_field(&reserve("order-42", max_lines, 30_000)), None);
        assert_eq!(refused_field(&reserve(&"x".repeat(128), vec![line("s", "l", 1)], 30_000)), None);
        for command in [
            Command::Commit { reservation_id: "order-42".into() },
            Command::Release { reservation_id: "order-42".into() },
            Command::Fulfill { reservation_id: "order-42".into() },
            Command::Cancel { reservation_id: "order-42".into() },
        ] {
            assert_eq!(refused_field(&command), None);
        }
        for kind in AdjustmentKind::ALL {
            let command = Command::Adjust(adjustment(kind, 1_000_000_000));
            assert_eq!(refused_field(&command), None, "{kind:?}");
        }
        assert_eq!(refused_adjustment(|a| a.reason.clear()), None, "a reason may be empty");
    }

    #[test]
    fn reserve_fields_are_named_as_in_the_api() {
        let ok_lines = || vec![line("sku-1", "dc-1", 1), line("sku-2", "dc-1", 2), line("sku-3", "dc-2", 3)];
        let cases: Vec<(Command, &str)> = vec![
            (reserve("", ok_lines(), 30_000), "reservation_id"),
            (reserve(&"x".repeat(129), ok_lines(), 30_000), "reservation_id"),
            (reserve("order 42", ok_lines(), 30_000), "reservation_id"),
            (reserve("order\u{7}42", ok_lines(), 30_000), "reservation_id"),
            (reserve("order-42", Vec::new(), 30_000), "lines"),
            (reserve("order-42", vec![line("sku-1", "dc-1", 1); 65], 30_000), "lines"),
            (reserve("order-42", vec![line("a", "dc-1", 1), line("b", "dc-1", 1), line("", "dc-1", 1)], 30_000), "lines[2].sku"),
            (reserve("order-42", vec![line(&"s".repeat(65), "dc-1", 1)], 30_000), "lines[0].sku"),
            (reserve("order-42", vec![line("sku-1", "dc\t1", 1)], 30_000), "lines[0].location"),
            (reserve("order-42", vec![line("sku-1", &"l".repeat(65), 1)], 30_000), "lines[0].location"),
            (reserve("order-42", vec![line("sku-1", "dc-1", 0)], 30_000), "lines[0].quantity"),
            (reserve("order-42", vec![line("sku-1", "dc-1", 1), line("sku-1", "dc-1", 1_000_001)], 30_000), "lines[1].quantity"),
            (reserve("order-42", ok_lines(), 0), "ttl_ms"),
            (reserve("order-42", ok_lines(), 999), "ttl_ms"),
            (reserve("order-42", ok_lines(), 86_400_001), "ttl_ms"),
            (Command::Commit { reservation_id: String::new() }, "reservation_id"),
            (Command::Release { reservation_id: "a b".into() }, "reservation_id"),
            (Command::Fulfill { reservation_id: "x".repeat(129) }, "reservation_id"),
            (Command::Cancel { reservation_id: "\n".into() }, "reservation_id"),
        ];
        for (command, field) in cases {
            assert_eq!(refused_field(&command).as_deref(), Some(field), "{command:?}");
        }
    }

    #[test]
    fn adjustment_fields_are_named_as_in_the_api() {
        let cases: Vec<(Option<String>, &str)> = vec![
            (refused_adjustment(|a| a.event_id.clear()), "event_id"),
            (refused_adjustment(|a| a.event_id = "e".repeat(129)), "event_id"),
            (refused_adjustment(|a| a.sku = "sku 1".into()), "sku"),
            (refused_adjustment(|a| a.sku = "s".repeat(65)), "sku"),
            (refused_adjustment(|a| a.location.clear()), "location"),
            (refused_adjustment(|a| a.quantity = 0), "quantity"),
            (refused_adjustment(|a| a.quantity = 1_000_000_001), "quantity"),
            (refused_adjustment(|a| a.reason = "r".repeat(257)), "reason"),
            (refused_adjustment(|a| a.reason = "line one\nline two".into()), "reason"),
            (refused_adjustment(|a| a.source.clear()), "source"),
            (refused_adjustment(|a| a.source = "w".repeat(65)), "source"),
            (refused_adjustment(|a| a.source = "wms/dc-1".into()), "source"),
            (refused_adjustment(|a| a.source_seq = 0), "source_seq"),
        ];
        for (refused, field) in cases {
            assert_eq!(refused.as_deref(), Some(field));
        }
    }

    #[test]
    fn zero_quantity_only_for_absolute_kinds() {
        for kind in AdjustmentKind::ALL {
            let refused = refused_field(&Command::Adjust(adjustment(kind, 0)));
            let absolute = matches!(kind, AdjustmentKind::Count | AdjustmentKind::SafetyStock);
            assert_eq!(refused.is_none(), absolute, "{kind:?}");
            if !absolute {
                assert_eq!(refused.as_deref(), Some("quantity"));
            }
        }
    }

    #[test]
    fn error_message_names_the_field() {
        let invalid = validate_command(&reserve("order-42", Vec::new(), 30_000), &InputLimits::default()).expect_err("empty cart is refused");
        assert_eq!(invalid.to_string(), "invalid lines: must not be empty");
    }
}
