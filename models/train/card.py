"""Renders models/MODEL_CARD.md from a model directory's manifest.json and
metrics.json, so the card's numbers are always those of the artefacts.

    .venv/bin/python models/train/card.py models/v1      # rewrite models/MODEL_CARD.md
    .venv/bin/python models/train/card.py models/v1 --check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contract  # noqa: E402

CRITERIA = {
    "false_negative_rate_model_le_baseline": "the model alone refuses more sellable requests than the rule",
    "oversell_rate_model_le_half_baseline": "model-alone oversell is above half of the rule's",
}
DIRECTION = {-1: "decreasing", 0: "free", 1: "increasing"}


def relative_dir(model_dir: Path, card_path: Path) -> str:
    return Path(os.path.relpath(model_dir.resolve(), card_path.resolve().parent)).as_posix()


def num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def bound(value: float) -> str:
    if value == int(value) and abs(value) < 1e5:
        return str(int(value))
    return f"{value:.4g}"


def seen(value: float) -> str:
    return bound(value) if value == int(value) else f"{value:.3g}"


def when(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(params: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, name + ".")
        elif isinstance(value, list):
            out.append((name, ", ".join(str(v) for v in value)))
        else:
            out.append((name, str(value)))
    return out


def group_table(groups: dict, label: str) -> str:
    rows = []
    for name, g in groups.items():
        rows.append(
            [
                f"`{name}`",
                num(g["rows"]),
                num(g["positives"]),
                num(g.get("roc_auc")),
                pct(g.get("oversell_rate_model")),
                pct(g.get("oversell_rate_baseline")),
                pct(g.get("oversell_rate_served")),
                pct(g.get("false_negative_rate_model")),
                pct(g.get("false_negative_rate_baseline")),
                pct(g.get("false_negative_rate_served")),
            ]
        )
    return table(
        [label, "rows", "sellable", "ROC AUC", "oversell model", "oversell rule", "oversell served",
         "FN model", "FN rule", "FN served"],
        rows,
    )


def unused_note(unused: dict) -> str:
    if not unused:
        return ""
    items = "; ".join(f"`{name}`: {why}" for name, why in unused.items())
    return (
        f"\n**Not used** by this model (held at 0 while fitting, so its value has no effect on the output): {items}. "
        "The column stays in the input tensor; a retrained model on rows that cover the whole cycle uses it.\n"
    )


def calibration_note(m: dict) -> str:
    if m["ece"] <= m["ece_uncalibrated"]:
        return ""
    cal_split = m["split"]["calibration"]
    cal_fn = m["operating_point_chosen_on_calibration"]["calibration"]["false_negative_rate_baseline"]
    return f"""
**Platt scaling makes the held-out rows less calibrated, not more** (ECE {num(m["ece"])} against
{num(m["ece_uncalibrated"])} uncalibrated): the calibration split is another regime of the simulated run
({pct(cal_split["positives"] / cal_split["rows"])} sellable, rule false negatives {pct(cal_fn)}) than the held-out rows
({pct(m["positive_rate"])} sellable, {pct(m["false_negative_rate_baseline"])}). The parameters are kept as fitted,
since choosing them on the held-out rows would leave nothing to check them on.
"""


def criterion_notes(m: dict) -> str:
    """What the acceptance criterion is, and the diagnostics behind the result."""
    chosen = m["operating_point_chosen_on_calibration"]
    cal, out = chosen["calibration"], chosen["test"]
    rule = m["by_rule"]
    return f"""The acceptance criterion, on the held-out rows: the model alone refuses no more sellable requests
than the rule (false-negative rate ≤ the rule's) **and** oversells at most half as often as the rule.

The acceptance operating point is chosen on the held-out rows, because that is where the criterion defines the
operating point; its numbers above are therefore slightly optimistic. The out-of-sample check is the same
rule applied on the calibration split, then scored on the held-out rows:

{table(["threshold chosen on", "scored on", "threshold", "oversell model", "oversell rule", "FN model", "FN rule"], [
    ["held-out rows (acceptance point)", "held-out rows", f"{m['threshold_checkout']:.4f}", pct(m["oversell_rate_model"]),
     pct(m["oversell_rate_baseline"]), pct(m["false_negative_rate_model"]), pct(m["false_negative_rate_baseline"])],
    ["calibration split", "calibration split", f"{chosen['threshold']:.4f}", pct(cal["oversell_rate_model"]),
     pct(cal["oversell_rate_baseline"]), pct(cal["false_negative_rate_model"]), pct(cal["false_negative_rate_baseline"])],
    ["calibration split", "held-out rows", f"{chosen['threshold']:.4f}", pct(out["oversell_rate_model"]),
     pct(out["oversell_rate_baseline"]), pct(out["false_negative_rate_model"]), pct(out["false_negative_rate_baseline"])],
])}

Alone, the model matches the rule's false negatives only by promising some of the requests the rule refuses,
and it must refuse most of the rule's oversells without losing more sellable requests than it wins back:

{table(["held-out rows where the rule", "rows", "sellable share", "ROC AUC of the model"], [
    [name, num(g["rows"]), pct(g["positive_rate"]), num(g["roc_auc"])] for name, g in rule.items()
])}"""


def render(manifest: dict, metrics: dict, model_dir: str, spec: contract.Contract | None = None) -> str:
    spec = spec or contract.load()
    m = metrics
    t = manifest["training"]
    split = m["split"]
    version = manifest["version"]
    pm = m["primary_model"]
    pcal = manifest["primary"]["calibration"]
    fcal = manifest["fallback"]["calibration"]
    th = manifest["thresholds"]
    done = m["done_criterion"]
    ranges = dict(zip(spec.names, spec.ranges))

    feature_rows = [
        [f"{i}", f"`{name}`", contract.MEANING[name], f"[{bound(ranges[name][0])}, {bound(ranges[name][1])}]",
         "[{}, {}]".format(*(seen(v) for v in m["feature_ranges_train"][name])),
         "not used" if name in pm.get("unused_features", {}) else DIRECTION[pm["monotone_constraints"][name]]]
        for i, name in enumerate(manifest["features"])
    ]
    split_rows = [
        [name, num(s["rows"]), num(s["positives"]), pct(s["positives"] / s["rows"]), when(s["t_ms_first"]), when(s["t_ms_last"])]
        for name, s in split.items()
    ]
    decision_rows = [
        ["model alone (p ≥ acceptance point)", pct(m["oversell_rate_model"]), pct(m["false_negative_rate_model"])],
        ["rule-only baseline (recorded ATP ≥ quantity)", pct(m["oversell_rate_baseline"]), pct(m["false_negative_rate_baseline"])],
        ["rule AND model at the acceptance point", pct(m["oversell_rate_served"]), pct(m["false_negative_rate_served"])],
        [f"served: rule AND p ≥ {m['serving']['threshold']:.2f} (C = {m['serving']['cost_ratio']:g})",
         pct(m["serving"]["oversell_rate_served"]), pct(m["serving"]["false_negative_rate_served"])],
    ]
    ratio = (m["oversell_rate_model"] / m["oversell_rate_baseline"]) if m["oversell_rate_baseline"] else None
    verdict = (
        "Both parts of the acceptance criterion hold on the held-out rows."
        if all(done.values())
        else "**The acceptance criterion does not hold on the held-out rows**: "
        + "; ".join(CRITERIA.get(k, k) for k, v in done.items() if not v)
        + "."
    )

    return f"""# Availability risk model {version}: model card

<!-- Rendered by models/train/card.py from {model_dir}/manifest.json and
{model_dir}/metrics.json; `make model` rewrites it. -->

The availability risk model estimates, for one checkout or product-page
request, the probability that the requested units can really be fulfilled:
that the physical stock covers them even though the recorded
available-to-promise (ATP) may be wrong (late or lost feed events, undetected
shrink, stale replicas). stockd serves it next to the rule "recorded ATP ≥
quantity" and uses it only to make answers more conservative.

- Version `{version}`, created {manifest["created_at"]}; artefacts in `{model_dir}/` (`manifest.json` lists them
  with their SHA-256).
- Primary: LightGBM `{t["lightgbm"]}`, served as ONNX (`{manifest["primary"]["file"]}`) with onnxruntime
  `{t["onnxruntime"]}`. Fallback: logistic regression (`{manifest["fallback"]["file"]}`).
- Input `{manifest["primary"]["input"]}`: float32 `[N, {len(manifest["features"])}]` in the order below; output
  `{manifest["primary"]["output"]}`: `[N, 2]`, column 1 = P(label = 1).

## Data

**All rows are simulated.** They come from `stockd-sim` (`{t["simulator_version"]}`, seed {t["seed"]}), which drives
the real inventory state machine with a marketplace's streams (orders, feed scans that arrive late, twice,
out of order or never, undetected shrink, cycle counts, cancellations, returns, promotions, feed-lag and
replica-lag episodes, third-party off-platform sales) beside a hidden true stock, and writes one row per
availability question with the features the server would compute at that moment, after a 48 h warm-up.

- **Label**: 1 if the requested units could really be fulfilled when the buyer reaches the reservation, a think
  time (mean 45 s) after the question (the hidden true stock then covers the units already promised plus the
  requested quantity), else 0. Other buyers, abandoned carts, receipts and off-platform sales act in between.
- **Rule baseline** (`rule_promise`): 1 if the recorded ATP ≥ quantity, the answer stockd gives without a model.
- **Split by time** (`t_ms`): first 60% of the rows train, the next 20% calibrate (Platt parameters, early
  stopping, checkout threshold), the last 20% are held out; every metric below is on the held-out rows.

{table(["split", "rows", "sellable", "sellable share", "first row (UTC)", "last row (UTC)"], split_rows)}

Simulator parameters (`rows.meta.json`, {num(t["rows"])} rows):

{table(["parameter", "value"], [[f"`{k}`", f"`{v}`"] for k, v in flatten(t["params"])])}

## Features

The contract is `models/src/features.rs`: the simulator and the server compute the features with the same
function, clamp them into these documented ranges, and refuse a model whose manifest lists other names.
"Direction" is the monotone constraint of the primary model on P(sellable).

{table(["#", "feature", "meaning", "range", "seen in training", "direction"], feature_rows)}

Only arithmetic consequences of the label are constrained: asking for more units, recording fewer, or more
demand per recorded unit can only lower the chance that the true stock covers a request. The freshness and
accuracy signals (scan and count age, feed lag, replica staleness, count corrections, `short`, demand spikes)
measure how far the record may be from the truth in either direction: on the training rows they lower
P(sellable) where the rule promises and raise it where the rule refuses (a receipt not yet applied, a count
not yet taken), so they are left free.
{unused_note(pm.get("unused_features", {}))}
## Models

- **Primary**: LightGBM binary classifier, {pm["trees"]} trees (early stopping on the calibration split's log
  loss, at most {pm["max_trees"]}), {pm["num_leaves"]} leaves, learning rate {pm["learning_rate"]},
  min {pm["min_child_samples"]} rows per leaf, L2 {pm["reg_lambda"]}, monotone constraints
  ({pm["monotone_constraints_method"]}) as in the table above. Seeded, single-threaded, deterministic.
  `lightgbm.txt` is the same booster in LightGBM's text format, for parity checks.
- **Fallback**: scikit-learn `StandardScaler` + `LogisticRegression` (C = {m["fallback_model"]["C"]}), for when the
  primary cannot be used. Smaller and less sharp (metrics below).
- Both are exported without ZipMap; calibration is **not** in the graphs. ONNX parity with the learners on the
  held-out rows: primary max |Δp| = {m["onnx_parity_max_abs"]:.1e}, fallback {m["fallback_onnx_parity_max_abs"]:.1e}
  (training fails above 1e-5). `golden.json` holds {{features, raw and calibrated outputs}} of both models for
  sampled held-out rows and edge cases (all-min, all-max, …), for parity checks of any runtime that serves them.

## Calibration

Platt scaling, fitted by maximum likelihood on the calibration split, from the ONNX probability exactly as the
server computes it (float32 output read as float64):

```
z     = ln(p / (1 - p))      with p clamped to [1e-7, 1 - 1e-7]
p_cal = 1 / (1 + exp(-(a * z + b)))
```

| model | a | b |
|---|---|---|
| primary | {pcal["a"]:.6f} | {pcal["b"]:.6f} |
| fallback | {fcal["a"]:.6f} | {fcal["b"]:.6f} |

## Metrics (held-out rows)

{table(["model", "ROC AUC", "PR AUC", "Brier", "ECE (10 bins)"], [
    ["primary, calibrated", num(m["roc_auc"]), num(m["pr_auc"]), num(m["brier"]), num(m["ece"])],
    ["primary, uncalibrated", num(m["roc_auc"]), num(m["pr_auc"]), num(m["brier_uncalibrated"]), num(m["ece_uncalibrated"])],
    ["fallback, calibrated", num(m["fallback_roc_auc"]), num(m["fallback_pr_auc"]), num(m["fallback_brier"]), num(m["fallback_ece"])],
])}

{num(m["rows"])} held-out rows, {pct(m["positive_rate"])} sellable. PR AUC is the average precision for the
sellable class.
{calibration_note(m)}
## Thresholds and the cost behind them

- **Served checkout threshold {th["checkout"]:.4f}**, from the cost ratio **C = {th["cost_ratio"]:g}**: an
  oversell (a cancelled order, an apology, a support contact, lost trust) is taken to cost {th["cost_ratio"]:g}
  times the margin of a lost sale. For a calibrated probability the Bayes-optimal threshold for
  C = cost(oversell) / cost(lost sale) is C / (1 + C). At it, the served policy (rule and model) oversells
  {pct(m["serving"]["oversell_rate_served"])} of the held-out rows and refuses
  {pct(m["serving"]["false_negative_rate_served"])} of the sellable ones (rule alone: {pct(m["oversell_rate_baseline"])}
  and {pct(m["false_negative_rate_baseline"])}). A node can override C with `[availability] checkout-cost-ratio`.
- **Acceptance operating point {m["threshold_checkout"]:.6f}**: the highest threshold on the calibrated primary
  probability whose false-negative rate (sellable requests refused) does not exceed the rule-only baseline's on
  the held-out rows (the out-of-sample check is below); it implies C = t / (1 − t) = {m["cost_ratio"]:.4f}. The
  model-alone metrics in `metrics.json` (`oversell_rate_model`, `false_negative_rate_model`) are taken here.
- **Product-page threshold {th["product_page"]}**: the Bayes threshold for equal costs (C = 1). A product page
  commits no units, so showing an item as available when it is not and hiding one that is are weighted
  alike; the checkout, which does commit units, carries the asymmetric cost above.
- **Low-stock band**: a calibrated probability between the two thresholds.

{table(["policy", "oversell rate (of rows)", "false-negative rate (of sellable)"], decision_rows)}

Model-alone oversell is {pct(ratio) if ratio is not None else "n/a"} of the baseline's. {verdict}

{criterion_notes(m)}

Other thresholds on the held-out rows (for choosing another cost ratio; the rule alone is
{pct(m["oversell_rate_baseline"])} oversell, {pct(m["false_negative_rate_baseline"])} false negatives):

{table(["threshold", "cost ratio", "oversell model", "FN model", "oversell served", "FN served"], [
    [f"{row['threshold']:.2f}", f"{row['threshold'] / (1 - row['threshold']):.3f}", pct(row["oversell_rate_model"]),
     pct(row["false_negative_rate_model"]), pct(row["oversell_rate_served"]), pct(row["false_negative_rate_served"])]
    for row in m["tradeoff"]
])}

### Model alone vs what is served

The operating point above is the model deciding alone. stockd does not serve that: it promises only when the
rule **and** the model agree (`rule_promise == 1 and p ≥ threshold`). The model can therefore only make an
answer more conservative, never promise units the record does not show: the served oversell rate is at most
both the rule's and the model's, and the served false-negative rate is at least both (a sellable request the
rule refuses stays refused even when the model is confident; on these rows that is the rule's
{pct(m["false_negative_rate_baseline"])}).

## Breakdowns (held-out rows)

By seller type:

{group_table(m["by_seller_type"], "seller type")}

By feed lag (`feed_lag_ratio`: feed lag / the location's freshness SLA):

{group_table(m["by_feed_lag"], "feed lag")}

## Reliability

![Reliability diagram]({model_dir}/reliability.png)

Observed rate of sellable requests against the predicted probability, in 10 equal-width bins, on the held-out
rows: calibrated and uncalibrated primary, calibrated fallback, and the diagonal. The lower panel is the
histogram of calibrated scores (log scale).

## Limitations

- Trained and evaluated on simulated rows only ({t["simulator_version"]}, one seed): the metrics say how well the
  model recovers this simulator's mechanisms of record drift, not a real marketplace's. The simulator's
  parameters (shrink, feed delays, lag episodes, third-party reliability, …) are guesses; retrain and
  re-check calibration on real outcomes before relying on the numbers.
- The held-out rows are the last 20% of one simulated run of {num(t["params"].get("hours"))} hours: a short window,
  with positions and sellers shared with training. Drift is watched against `reference_bins.json` (deciles of
  each feature and of the calibrated score on the training split).
- The checkout threshold is tied to the rule's false-negative rate on the calibration split; if the rule's
  behaviour changes (e.g. safety stock policy), the threshold must be chosen again.
- The training rows cover a small part of the documented ranges (see "seen in training"): beyond what it has
  seen, a tree model extrapolates flat (the monotone features stay monotone). Feature values outside the
  documented ranges are clamped before scoring and reported as degraded.
- Breakdown groups with few rows (see the tables) have wide uncertainty; an AUC is "n/a" when a group holds a
  single label.

## Reproduce

```sh
make model
```

sets up `.venv` (`scripts/setup-venv.sh`, exact versions from `models/train/requirements.txt`), builds and runs
`stockd-sim --seed {t["seed"]}` into `data/sim/`, and runs
`.venv/bin/python models/train/train.py --rows data/sim/rows.csv --out models/{version} --version {version}`, which
rewrites `models/{version}/` and this card. Training is deterministic; only `created_at` in the manifest changes between
runs. The tests (`.venv/bin/python -m pytest models/train -q`, part of `make test`) check the committed
artefacts: ONNX vs the LightGBM booster, golden vectors, calibration formula, hashes, metrics and the
acceptance criterion.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the model card from a model directory.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--card", type=Path, help="default: MODEL_CARD.md beside the model directory")
    parser.add_argument("--check", action="store_true", help="exit 1 if the card differs from the rendering")
    args = parser.parse_args(argv)
    card_path = args.card or args.model_dir.parent / "MODEL_CARD.md"
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    metrics = json.loads((args.model_dir / "metrics.json").read_text())
    text = render(manifest, metrics, relative_dir(args.model_dir, card_path))
    if args.check:
        if not card_path.exists() or card_path.read_text() != text:
            print(f"{card_path} is out of date: run card.py {args.model_dir}", file=sys.stderr)
            return 1
        return 0
    card_path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
