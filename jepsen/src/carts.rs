//! The checker of the cart workload: carts of several SKUs in several shard
//! groups must be all or nothing, and units conserved, judged from the
//! history alone.
//!
//! After the heal, the final lookups give each cart's state and the final
//! strong reads each SKU's quantities. Then, for every SKU whose carts all
//! have a final state:
//! - `committed` is the sum of that SKU's quantities over committed carts and
//!   `reserved` over pending ones. A cart with one line committed and another
//!   freed (the partial cart) breaks this on one of its SKUs;
//! - `on_hand` lies between the acknowledged receipts and those plus the
//!   receipts of unknown outcome, and `reserved + committed <= on_hand` (no
//!   oversell).
//!
//! And per cart, from the acknowledgements:
//! - an acknowledged commit ends committed; an acknowledged release ends
//!   released;
//! - an acknowledged reservation (outcome ok) is found at the end;
//! - a refused reservation (insufficient stock) whose id was never retried
//!   holds nothing: it is not found at the end.

use std::collections::BTreeMap;

use serde_json::json;
use serde_json::Value;

use crate::checks::CheckResult;
use crate::checks::Validity;
use crate::history::Kind;
use crate::history::Operation;

/// A cart's lines, from its reserve invocations (retries repeat them).
fn lines_of(op: &Operation) -> Vec<(String, u64)> {
    op.arg("lines")
        .and_then(Value::as_array)
        .map(|lines| lines.iter().filter_map(|l| Some((l.get(0)?.as_str()?.to_owned(), l.get(1)?.as_u64()?))).collect())
        .unwrap_or_default()
}

fn id_of(op: &Operation) -> Option<&str> {
    op.arg("id").and_then(Value::as_str)
}

fn acked(op: &Operation) -> bool {
    op.kind() == Kind::Ok && op.result("outcome").and_then(Value::as_str) == Some("ok")
}

/// A cart's final state: a lookup's state, or `none` when not found.
fn final_state(op: &Operation) -> Option<String> {
    if op.kind() != Kind::Ok {
        return None;
    }
    match op.result("outcome").and_then(Value::as_str) {
        Some("not_found") => Some("none".to_owned()),
        _ => op.result("state").and_then(Value::as_str).map(str::to_owned),
    }
}

/// The verdicts of a cart workload run: all-or-nothing with conservation
/// (`crate::carts`) and availability. The per-SKU checkers judge one-line
/// reservations and do not apply to carts.
pub fn check_cart_run(ops: &[Operation]) -> (bool, Value) {
    let results = [("all_or_nothing", all_or_nothing(ops)), ("availability", crate::checks::availability(ops))];
    let valid = results.iter().all(|(_, r)| r.valid != Validity::Invalid);
    let mut map = serde_json::Map::new();
    for (name, result) in results {
        map.insert(name.to_owned(), serde_json::to_value(result).unwrap_or(Value::Null));
    }
    map.insert("stats".to_owned(), crate::checks::stats(ops));
    (valid, Value::Object(map))
}

/// The cart workload's verdict: all-or-nothing and conservation.
pub fn all_or_nothing(ops: &[Operation]) -> CheckResult {
    let mut carts: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    let mut finals: BTreeMap<&str, String> = BTreeMap::new();
    let mut reads: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    let mut errors = Vec::new();
    for op in ops {
        match (op.f.as_str(), id_of(op)) {
            ("cart", Some(id)) => {
                carts.entry(id).or_insert_with(|| lines_of(op));
            }
            ("cart-lookup", Some(id)) if op.is_final() => {
                if let Some(state) = final_state(op) {
                    finals.insert(id, state);
                }
            }
            ("read", _) if op.is_final() && op.kind() == Kind::Ok => {
                let q = |name| op.result(name).and_then(Value::as_u64).unwrap_or(0);
                if let Some(sku) = op.sku() {
                    reads.insert(sku, (q("on_hand"), q("reserved"), q("committed")));
                }
            }
            _ => {}
        }
    }
    check_acknowledgements(ops, &finals, &mut errors);
    let received = received(ops);
    let checked = check_positions(&carts, &finals, &(reads, received), &mut errors);
    let valid = if !errors.is_empty() {
        Validity::Invalid
    } else if checked == 0 {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let mut states: BTreeMap<&str, u64> = BTreeMap::new();
    for state in finals.values() {
        *states.entry(state.as_str()).or_default() += 1;
    }
    CheckResult { valid, errors, details: json!({ "carts": carts.len(), "final_states": states, "skus_checked": checked }) }
}

/// Acknowledged commits, releases and reservations against the final states.
fn check_acknowledgements(ops: &[Operation], finals: &BTreeMap<&str, String>, errors: &mut Vec<String>) {
    for op in ops.iter().filter(|op| acked(op) && !op.is_final()) {
        let Some(id) = id_of(op) else { continue };
        let Some(state) = finals.get(id) else { continue };
        let broken = match op.f.as_str() {
            "cart-commit" => state != "committed",
            "cart-release" => state != "released",
            "cart" => state == "none",
            _ => false,
        };
        if broken {
            errors.push(format!("cart {id}: {} acknowledged at index {}, but its final state is {state}", op.f, op.invoke.index));
        }
    }
}

/// Per SKU: units of acknowledged receipts, and of receipts whose outcome
/// is unknown.
fn received(ops: &[Operation]) -> BTreeMap<&str, (u64, u64)> {
    let mut received: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.f == "receipt") {
        let (Some(sku), Some(qty)) = (op.sku(), op.arg("qty").and_then(Value::as_u64)) else { continue };
        let entry = received.entry(sku).or_default();
        match op.kind() {
            Kind::Ok if acked(op) => entry.0 += qty,
            Kind::Info => entry.1 += qty,
            _ => {}
        }
    }
    received
}

/// Final reads per SKU (on hand, reserved, committed), and units received.
type Finals<'a> = (BTreeMap<&'a str, (u64, u64, u64)>, BTreeMap<&'a str, (u64, u64)>);

/// Per SKU: the final quantities against the final cart states. Returns how
/// many SKUs could be checked (every cart on them has a final state).
fn check_positions(carts: &BTreeMap<&str, Vec<(String, u64)>>, finals: &BTreeMap<&str, String>, (reads, received): &Finals, errors: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for (sku, &(on_hand, reserved, committed)) in reads {
        if reserved + committed > on_hand {
            errors.push(format!("sku {sku}: reserved {reserved} + committed {committed} > on_hand {on_hand}"));
        }
        let (acked_units, unknown_units) = received.get(sku).copied().unwrap_or_default();
        if on_hand < acked_units || on_hand > acked_units + unknown_units {
            errors.push(format!("sku {sku}: on_hand {on_hand}, but receipts say {acked_units} to {}", acked_units + unknown_units));
        }
        let on_sku: Vec<(&str, u64)> = carts.iter().filter_map(|(id, lines)| lines.iter().find(|(s, _)| s == sku).map(|(_, q)| (*id, *q))).collect();
        if on_sku.iter().any(|(id, _)| !finals.contains_key(id)) {
            continue;
        }
        checked += 1;
        let sum = |state: &str| on_sku.iter().filter(|(id, _)| finals.get(id).is_some_and(|s| s == state)).map(|(_, q)| q).sum::<u64>();
        let (want_reserved, want_committed) = (sum("pending"), sum("committed"));
        if (reserved, committed) != (want_reserved, want_committed) {
            let partial: Vec<String> = on_sku.iter().map(|(id, q)| format!("{id}:{q}:{}", finals[id])).collect();
            errors.push(format!(
                "sku {sku}: reserved {reserved} committed {committed}, but the final cart states say {want_reserved} and {want_committed} (carts {})",
                partial.join(" ")
            ));
        }
    }
    checked
}
