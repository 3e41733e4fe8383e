"""The feature contract, read from its one definition: models/src/features.rs.

The Rust crate is the source of truth for the feature names (tensor column
order), their documented ranges, and the freshness SLAs. This module parses
those constants so training, the tests and the model card cannot drift from
what the server computes.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FEATURES_RS = REPO / "models" / "src" / "features.rs"

# Known direction of P(label=1) in each feature, all else equal:
# -1 decreasing, +1 increasing, 0 unconstrained. Every feature of the
# contract must be listed here (checked by `load`).
#
# Only arithmetic consequences of the label are constrained: more units asked
# for, fewer recorded, or more demand per recorded unit can only lower the
# chance that the true stock covers the request. The freshness and accuracy
# signals (scan_age_s, count_age_s, feed_lag_ratio, replica_staleness_s,
# count_correction_rate, short, demand_spike) say how far the record may be
# from the truth, in either direction: on the training rows they lower
# P(sellable) where the record says yes and raise it where the record says no
# (a receipt not yet applied, a count not yet taken), so a global monotone
# direction would be wrong for them.
MONOTONE: dict[str, int] = {
    "quantity": -1,
    "atp": +1,
    "qty_atp_ratio": -1,
    "velocity_1m": 0,
    "velocity_15m": 0,
    "velocity_1h": 0,
    "demand_spike": 0,
    "velocity_to_atp": -1,
    "scan_age_s": 0,
    "count_age_s": 0,
    "feed_lag_ratio": 0,
    "replica_staleness_s": 0,
    "cancel_rate": 0,
    "return_rate": 0,
    "count_correction_rate": 0,
    "third_party": 0,
    "hour_of_day": 0,
    "day_of_week": 0,
    "promo": 0,
    "short": 0,
}

# One line of meaning per feature, for the model card (kept next to the
# directions so both are reviewed together).
MEANING: dict[str, str] = {
    "quantity": "units requested",
    "atp": "units available to promise (recorded)",
    "qty_atp_ratio": "quantity / max(atp, 1)",
    "velocity_1m": "reserved units, decayed with a 1 min half-life",
    "velocity_15m": "reserved units, decayed with a 15 min half-life",
    "velocity_1h": "reserved units, decayed with a 1 h half-life",
    "demand_spike": "velocity_1m * 60 / max(velocity_1h, 1); about 1 at a steady rate",
    "velocity_to_atp": "velocity_15m / max(atp, 1)",
    "scan_age_s": "seconds since the last feed event (30 days if never)",
    "count_age_s": "seconds since the last full cycle count (30 days if never)",
    "feed_lag_ratio": "feed lag / the location's freshness SLA",
    "replica_staleness_s": "staleness bound of the read, seconds",
    "cancel_rate": "smoothed cancelled / committed units",
    "return_rate": "smoothed returned / committed units",
    "count_correction_rate": "smoothed |count correction| / counted units",
    "third_party": "1 for a third-party seller location",
    "hour_of_day": "UTC hour of the request",
    "day_of_week": "0 = Monday, UTC",
    "promo": "1 while the SKU is on promotion",
    "short": "1 when on_hand < reserved + committed",
}


@dataclass(frozen=True)
class Contract:
    names: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    constants: dict[str, float]

    @property
    def count(self) -> int:
        return len(self.names)

    def monotone(self) -> list[int]:
        return [MONOTONE[n] for n in self.names]


_BINOPS = {ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub, ast.Div: operator.truediv}


def _eval(expr: str, constants: dict[str, float]) -> float:
    """Evaluates a constant Rust expression made of float literals, names of
    earlier constants and + - * /."""
    expr = re.sub(r"(?<=[0-9.])_?(f32|f64|u64|usize)\b", "", expr.strip())

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        raise ValueError(f"cannot evaluate {expr!r} from features.rs")

    return walk(ast.parse(expr, mode="eval"))


def _block(source: str, name: str) -> str:
    match = re.search(rf"pub const {name}\s*:[^=]*=\s*\[(.*?)\];", source, re.S)
    if not match:
        raise ValueError(f"features.rs has no `{name}` array")
    return re.sub(r"//[^\n]*", "", match.group(1))


def load(path: Path = FEATURES_RS) -> Contract:
    source = path.read_text()
    constants: dict[str, float] = {}
    for match in re.finditer(r"pub const ([A-Z0-9_]+)\s*:\s*(f32|f64|u64|usize)\s*=\s*([^;\[]+);", source):
        constants[match.group(1)] = _eval(match.group(3), constants)
    names = tuple(re.findall(r'"([a-z0-9_]+)"', _block(source, "FEATURE_NAMES")))
    pairs = re.findall(r"\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)", _block(source, "FEATURE_RANGES"))
    ranges = tuple((_eval(lo, constants), _eval(hi, constants)) for lo, hi in pairs)
    count = int(constants.get("FEATURE_COUNT", len(names)))
    if len(names) != count or len(ranges) != count:
        raise ValueError(f"features.rs: {len(names)} names, {len(ranges)} ranges, FEATURE_COUNT {count}")
    if len(set(names)) != count:
        raise ValueError("features.rs: feature names are not unique")
    missing = [n for n in names if n not in MONOTONE or n not in MEANING]
    if missing:
        raise ValueError(f"contract.py does not know the direction or meaning of {missing}")
    for name, (lo, hi) in zip(names, ranges):
        if not lo < hi:
            raise ValueError(f"features.rs: empty range for {name}")
    return Contract(names=names, ranges=ranges, constants=constants)
