"""Trains the availability risk model from simulator rows and writes its
artefacts (ONNX models, calibration, thresholds, golden vectors, drift
reference, metrics, manifest, model card).

    .venv/bin/python models/train/train.py --rows data/sim/rows.csv --out models/v1 --version v1

Everything is deterministic for a given rows.csv: the split is by time, the
learners are seeded and single-threaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration  # noqa: E402
import card  # noqa: E402
import contract  # noqa: E402
import evaluate  # noqa: E402

SEED = 7
SPLIT = (0.6, 0.2, 0.2)  # train, calibration, test; by t_ms
PARITY_TOLERANCE = 1e-5
GOLDEN_SAMPLED = 56
PRODUCT_PAGE_THRESHOLD = 0.5  # Bayes threshold for equal oversell and lost-sale costs
# Served checkout threshold: an oversell (cancelled order, apology, support
# contact, lost trust) is taken to cost 9 times the margin of a lost sale, so
# promising pays when p > C / (1 + C) = 0.9 for a calibrated p.
SERVING_COST_RATIO = 9.0
TRADEOFF_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # reported, not served
SELLER_TYPES = ("first-party", "third-party")
ONNX_INPUT = "input"
ONNX_OUTPUT = "probabilities"

LIGHTGBM_PARAMS = {
    "objective": "binary",
    "n_estimators": 200,  # upper bound; early stopping on the calibration split picks the count
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 100,
    "reg_lambda": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "monotone_constraints_method": "intermediate",
    "deterministic": True,
    "force_col_wise": True,
    "n_jobs": 1,
    "random_state": SEED,
    "verbose": -1,
}
EARLY_STOPPING_ROUNDS = 20


class Refused(Exception):
    """The input does not satisfy the contract; nothing is written."""


def log(message: str) -> None:
    print(f"train: {message}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------
# Input


def load_rows(rows_path: Path, spec: contract.Contract) -> pd.DataFrame:
    expected = ["t_ms", "sku", "location", "seller_type", *spec.names, "rule_promise", "label"]
    with rows_path.open() as f:
        header = f.readline().rstrip("\r\n").split(",")
    if header != expected:
        missing = [c for c in expected if c not in header]
        extra = [c for c in header if c not in expected]
        raise Refused(
            f"{rows_path}: header does not match the feature contract of models/src/features.rs "
            f"(missing {missing}, unexpected {extra}, or another order)\n"
            f"  expected: {','.join(expected)}\n  found:    {','.join(header)}"
        )
    dtypes = {"t_ms": np.int64, "sku": str, "location": str, "seller_type": str, "rule_promise": np.int64, "label": np.int64}
    dtypes.update({name: np.float64 for name in spec.names})
    df = pd.read_csv(rows_path, dtype=dtypes, keep_default_na=False, na_values=[])
    if df.empty:
        raise Refused(f"{rows_path}: no rows")
    bad_seller = sorted(set(df["seller_type"]) - set(SELLER_TYPES))
    if bad_seller:
        raise Refused(f"{rows_path}: unknown seller_type values {bad_seller}")
    for column in ("rule_promise", "label"):
        if not df[column].isin([0, 1]).all():
            raise Refused(f"{rows_path}: {column} must be 0 or 1")
    features = df[list(spec.names)].to_numpy(np.float64)
    if not np.isfinite(features).all():
        raise Refused(f"{rows_path}: non-finite feature values")
    # The server feeds float32: train and evaluate on exactly those values.
    features32 = features.astype(np.float32)
    for i, (name, (lo, hi)) in enumerate(zip(spec.names, spec.ranges)):
        column = features32[:, i]
        if column.min() < np.float32(lo) or column.max() > np.float32(hi):
            raise Refused(
                f"{rows_path}: {name} outside its documented range [{lo}, {hi}]: "
                f"min {column.min()}, max {column.max()}"
            )
    third = (df["seller_type"] == "third-party").to_numpy()
    if "third_party" in spec.names:
        flag = features32[:, spec.names.index("third_party")] == 1.0
        if not np.array_equal(flag, third):
            raise Refused(f"{rows_path}: third_party disagrees with seller_type in {int(np.sum(flag != third))} rows")
    df[list(spec.names)] = features32.astype(np.float64)
    return df


def load_meta(meta_path: Path, rows: int) -> dict:
    if not meta_path.exists():
        raise Refused(f"{meta_path}: missing (the simulator writes it next to rows.csv)")
    meta = json.loads(meta_path.read_text())
    for key, kind in (("simulator_version", str), ("seed", int), ("params", dict), ("rows", int)):
        if not isinstance(meta.get(key), kind):
            raise Refused(f"{meta_path}: `{key}` missing or not a {kind.__name__}")
    if meta["rows"] != rows:
        raise Refused(f"{meta_path}: says {meta['rows']} rows, the CSV has {rows}")
    return meta


def time_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """First 60% of the rows in time, next 20%, last 20%; rows that share a
    t_ms never straddle two splits."""
    df = df.sort_values("t_ms", kind="mergesort").reset_index(drop=True)
    t = df["t_ms"].to_numpy()
    n = len(df)
    cut1 = int(np.searchsorted(t, t[int(n * SPLIT[0])], side="left"))
    cut2 = int(np.searchsorted(t, t[int(n * (SPLIT[0] + SPLIT[1]))], side="left"))
    parts = df.iloc[:cut1], df.iloc[cut1:cut2], df.iloc[cut2:]
    for name, part in zip(("train", "calibration", "test"), parts):
        if len(part) == 0 or not evaluate.both_classes(part["label"].to_numpy()):
            raise Refused(f"the {name} split has {len(part)} rows and needs both labels")
    return parts


# ---------------------------------------------------------------------------
# Models and ONNX


def rename_output(model, old: str, new: str) -> None:
    graph = model.graph
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for output in graph.output:
        if output.name == old:
            output.name = new


def finish_onnx(model, names: tuple[str, ...], version: str, kind: str):
    import onnx

    outputs = [o.name for o in model.graph.output]
    probability = [o for o in outputs if "prob" in o]
    if len(probability) != 1:
        raise RuntimeError(f"cannot find the probability output among {outputs}")
    if probability[0] != ONNX_OUTPUT:
        rename_output(model, probability[0], ONNX_OUTPUT)
    if [i.name for i in model.graph.input] != [ONNX_INPUT]:
        raise RuntimeError(f"unexpected inputs {[i.name for i in model.graph.input]}")
    model.producer_name = "stockd-models-train"
    model.producer_version = version
    model.doc_string = f"stockd availability risk model {version} ({kind}); P(sellable) in column 1 of {ONNX_OUTPUT}"
    del model.metadata_props[:]
    for key, value in (("features", ",".join(names)), ("version", version), ("kind", kind)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(x, dtype=np.float32)})
    if probabilities.shape != (x.shape[0], 2) or probabilities.dtype != np.float32:
        raise RuntimeError(f"{path}: {ONNX_OUTPUT} has shape {probabilities.shape} and type {probabilities.dtype}")
    return probabilities[:, 1].astype(np.float64)


def train_primary(x_train, y_train, x_cal, y_cal, monotone):
    import lightgbm as lgb

    params = dict(LIGHTGBM_PARAMS, monotone_constraints=monotone)
    probe = lgb.LGBMClassifier(**params)
    probe.fit(
        x_train,
        y_train,
        eval_X=(x_cal,),
        eval_y=(y_cal,),
        eval_metric="binary_logloss",
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    trees = int(probe.best_iteration_ or params["n_estimators"])
    # Refit with exactly that many trees so the booster file, the ONNX graph
    # and predict_proba all hold the same ensemble.
    params["n_estimators"] = max(trees, 1)
    model = lgb.LGBMClassifier(**params)
    model.fit(x_train, y_train)
    return model, params


def float32_floor(value: float) -> float:
    """The largest float32 not above `value`, as a float."""
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    return float(f)


def snap_thresholds(booster):
    """The same ensemble with every split threshold t replaced by the largest
    float32 t' <= t.

    LightGBM compares in float64 (x <= t) against thresholds that lie between
    two observed values; ONNX's TreeEnsemble compares float32 values against
    float32 thresholds, so a threshold rounded to the nearest float32 can land
    on an observed value and send it the other way. For every float32 x,
    x <= t if and only if x <= t', so the snapped booster makes the same
    decisions as the original on every model input, and its thresholds
    survive the float32 conversion exactly.
    """
    import lightgbm as lgb

    lines = []
    for line in booster.model_to_string().split("\n"):
        if line.startswith("tree_sizes="):
            continue  # byte offsets of the trees; recomputed on reload
        if line.startswith("decision_type="):
            if any(int(d) & 1 for d in line.split("=", 1)[1].split()):
                raise RuntimeError("categorical splits are not expected in this model")
        if line.startswith("threshold="):
            values = [float32_floor(float(v)) for v in line.split("=", 1)[1].split()]
            line = "threshold=" + " ".join(repr(v) for v in values)
        lines.append(line)
    return lgb.Booster(model_str="\n".join(lines))


def export_primary(booster, count: int, path: Path, version: str, names) -> None:
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_lightgbm(
        booster,
        name="stockd_availability_risk",
        initial_types=[(ONNX_INPUT, FloatTensorType([None, count]))],
        zipmap=False,
        target_opset=15,
    )
    onnx.save(finish_onnx(onnx_model, names, version, "lightgbm"), str(path))


def train_fallback(x_train, y_train):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=1.0, solver="lbfgs", max_iter=5000, tol=1e-8, random_state=SEED)),
        ]
    )
    pipeline.fit(x_train, y_train)
    return pipeline


def export_fallback(pipeline, count: int, path: Path, version: str, names) -> None:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(
        pipeline,
        name="stockd_availability_risk_fallback",
        initial_types=[(ONNX_INPUT, FloatTensorType([None, count]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx.save(finish_onnx(onnx_model, names, version, "logistic-regression"), str(path))


def parity(reference: np.ndarray, onnx_values: np.ndarray, what: str) -> float:
    worst = float(np.max(np.abs(reference - onnx_values)))
    if not worst <= PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX parity failed for {what}: max |onnx - reference| = {worst:.3g} > {PARITY_TOLERANCE}")
    return worst


# ---------------------------------------------------------------------------
# Artefacts


def edge_rows(spec: contract.Contract) -> list[np.ndarray]:
    lo = np.array([r[0] for r in spec.ranges], np.float32)
    hi = np.array([r[1] for r in spec.ranges], np.float32)
    index = {name: i for i, name in enumerate(spec.names)}
    rows = [lo.copy(), hi.copy(), ((lo.astype(np.float64) + hi) / 2).astype(np.float32)]
    # plenty of stock, nothing stale: the easiest yes
    easy = lo.copy()
    if "atp" in index:
        easy[index["atp"]] = hi[index["atp"]]
    rows.append(easy)
    # everything requested, nothing recorded: the easiest no
    hard = lo.copy()
    if "quantity" in index:
        hard[index["quantity"]] = hi[index["quantity"]]
    if "qty_atp_ratio" in index:
        hard[index["qty_atp_ratio"]] = hi[index["qty_atp_ratio"]]
    rows.append(hard)
    # a position whose feed and count were never seen
    never = lo.copy()
    for name in ("scan_age_s", "count_age_s"):
        if name in index:
            never[index[name]] = hi[index[name]]
    for name in ("quantity", "atp"):
        if name in index:
            never[index[name]] = 1.0
    if "qty_atp_ratio" in index:
        never[index["qty_atp_ratio"]] = 1.0
    rows.append(never)
    return rows


def golden_rows(spec, x_test, primary_path, fallback_path, primary_cal, fallback_cal):
    rng = np.random.default_rng(SEED)
    picked = np.sort(rng.choice(x_test.shape[0], size=min(GOLDEN_SAMPLED, x_test.shape[0]), replace=False))
    x = np.vstack([x_test[picked].astype(np.float32), *edge_rows(spec)]).astype(np.float32)
    primary_raw = onnx_probabilities(primary_path, x)
    fallback_raw = onnx_probabilities(fallback_path, x)
    rows = []
    for i in range(x.shape[0]):
        rows.append(
            {
                "features": [float(v) for v in x[i]],
                "primary_raw": float(primary_raw[i]),
                "primary_calibrated": float(calibration.apply(primary_raw[i : i + 1], *primary_cal)[0]),
                "fallback_raw": float(fallback_raw[i]),
                "fallback_calibrated": float(calibration.apply(fallback_raw[i : i + 1], *fallback_cal)[0]),
            }
        )
    return {"rows": rows}


def plot_reliability(path: Path, y, raw, cal, fallback_cal, version: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6.5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for values, label, style in (
        (raw, "primary, uncalibrated", dict(color="tab:orange", marker="s")),
        (cal, "primary, calibrated (Platt)", dict(color="tab:blue", marker="o")),
        (fallback_cal, "fallback, calibrated (Platt)", dict(color="tab:green", marker="^", alpha=0.6)),
    ):
        r = evaluate.reliability(y, values)
        points = [(m, o) for m, o in zip(r["mean_predicted"], r["observed_rate"]) if m is not None]
        top.plot([m for m, _ in points], [o for _, o in points], linewidth=1.5, markersize=4, label=label, **style)
    top.set_ylabel("observed rate of label = 1 (sellable)")
    top.set_title(f"Reliability on the held-out test split, model {version}")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(cal, bins=np.linspace(0, 1, 21), color="tab:blue", alpha=0.7)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability of label = 1")
    bottom.set_ylabel("rows")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def unused_features(names: list[str], x_train: np.ndarray) -> dict[str, str]:
    """Calendar features whose training values miss part of their cycle: a
    weekday effect learned from Monday to Friday of one simulated week is
    confounded with the run's own trend and says nothing about the weekend."""
    unused = {}
    for name, cycle in (("day_of_week", 7), ("hour_of_day", 24)):
        if name in names:
            seen = sorted({int(v) for v in x_train[:, names.index(name)]})
            if len(seen) < cycle:
                unused[name] = f"the training rows cover {len(seen)} of its {cycle} values ({seen[0]}-{seen[-1]})"
    return unused


def split_info(part: pd.DataFrame) -> dict:
    y = part["label"].to_numpy()
    return {
        "rows": int(len(part)),
        "positives": int(y.sum()),
        "t_ms_first": int(part["t_ms"].iloc[0]),
        "t_ms_last": int(part["t_ms"].iloc[-1]),
    }


def model_entry(out: Path, file: str, kind: str, platt: tuple) -> dict:
    """The manifest entry of one ONNX model and its Platt calibration."""
    return {
        "file": file,
        "sha256": sha256(out / file),
        "kind": kind,
        "input": ONNX_INPUT,
        "output": ONNX_OUTPUT,
        "calibration": {"method": "platt", "a": platt[0], "b": platt[1]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="simulator rows.csv")
    parser.add_argument("--meta", type=Path, help="simulator rows.meta.json (default: next to --rows)")
    parser.add_argument("--out", type=Path, required=True, help="artefact directory, e.g. models/v1")
    parser.add_argument("--version", required=True, help="model version, e.g. v1")
    parser.add_argument("--card", type=Path, help="model card to write (default: MODEL_CARD.md beside --out)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    spec = contract.load()
    try:
        df = load_rows(args.rows, spec)
        meta = load_meta(args.meta or args.rows.with_name(args.rows.stem + ".meta.json"), len(df))
        train, cal, test = time_split(df)
    except Refused as refused:
        print(f"train: refused: {refused}", file=sys.stderr)
        return 2
    names = list(spec.names)
    log(f"{len(df)} rows from {meta['simulator_version']} seed {meta['seed']}: "
        f"train {len(train)}, calibration {len(cal)}, test {len(test)}")

    def xy(part):
        return part[names].to_numpy(np.float32), part["label"].to_numpy(np.int64)

    x_train, y_train = xy(train)
    x_cal, y_cal = xy(cal)
    x_test, y_test = xy(test)
    rule_test = test["rule_promise"].to_numpy(np.int64)
    rule_cal = cal["rule_promise"].to_numpy(np.int64)

    # Features the training rows cannot teach are held at 0 while fitting, so
    # neither model splits on or weighs them and any served value is ignored.
    unused = unused_features(names, x_train)
    x_fit = x_train.copy()
    for name in unused:
        x_fit[:, names.index(name)] = 0.0
    if unused:
        log("not used by this model: " + "; ".join(f"{k} ({v})" for k, v in unused.items()))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    import lightgbm
    import onnxruntime

    # Primary: LightGBM with monotone constraints.
    primary, primary_params = train_primary(x_fit.astype(np.float64), y_train, x_cal.astype(np.float64), y_cal, spec.monotone())
    booster = snap_thresholds(primary.booster_)
    for x in (x_train, x_cal, x_test):
        x64 = x.astype(np.float64)
        if not np.array_equal(booster.predict(x64), primary.predict_proba(x64)[:, 1]):
            raise RuntimeError("snapping the thresholds to float32 changed a prediction")
    booster.save_model(str(out / "lightgbm.txt"))
    export_primary(booster, spec.count, out / "model.onnx", args.version, spec.names)
    log(f"primary: {primary_params['n_estimators']} trees, exported to ONNX")

    # Fallback: standardised logistic regression.
    fallback = train_fallback(x_fit.astype(np.float64), y_train)
    export_fallback(fallback, spec.count, out / "fallback.onnx", args.version, spec.names)

    # Parity of the ONNX graphs with the learners they came from.
    raw = {}
    for split_name, x in (("train", x_train), ("calibration", x_cal), ("test", x_test)):
        raw[("primary", split_name)] = onnx_probabilities(out / "model.onnx", x)
        raw[("fallback", split_name)] = onnx_probabilities(out / "fallback.onnx", x)
    for split_name, x in (("train", x_train), ("calibration", x_cal)):
        parity(booster.predict(x.astype(np.float64)), raw[("primary", split_name)], f"the LightGBM model ({split_name})")
        parity(fallback.predict_proba(x.astype(np.float64))[:, 1], raw[("fallback", split_name)], f"the fallback ({split_name})")
    parity_primary = parity(booster.predict(x_test.astype(np.float64)), raw[("primary", "test")], "the LightGBM model")
    parity_fallback = parity(fallback.predict_proba(x_test.astype(np.float64))[:, 1], raw[("fallback", "test")], "the fallback")
    log(f"ONNX parity (every split within {PARITY_TOLERANCE}), test split: primary {parity_primary:.2e}, fallback {parity_fallback:.2e}")

    # Calibration on the calibration split, from the ONNX outputs the server sees.
    primary_cal = calibration.fit(raw[("primary", "calibration")], y_cal)
    fallback_cal = calibration.fit(raw[("fallback", "calibration")], y_cal)
    p_cal = {s: calibration.apply(raw[("primary", s)], *primary_cal) for s in ("train", "calibration", "test")}
    f_cal = calibration.apply(raw[("fallback", "test")], *fallback_cal)

    # Checkout operating point, as the acceptance criterion defines it on the
    # held-out rows: the highest threshold whose false negatives do not exceed
    # the rule-only baseline's there. The same rule applied on the calibration
    # split gives the out-of-sample check reported beside it.
    p_test = p_cal["test"]
    threshold = evaluate.checkout_threshold(p_test, y_test, int(np.sum((rule_test == 0) & (y_test == 1))))
    threshold_cal = evaluate.checkout_threshold(p_cal["calibration"], y_cal, int(np.sum((rule_cal == 0) & (y_cal == 1))))
    if not 0.0 < threshold < 1.0:
        raise RuntimeError(f"degenerate checkout threshold {threshold}")
    cost_ratio = threshold / (1.0 - threshold)
    serving_threshold = SERVING_COST_RATIO / (1.0 + SERVING_COST_RATIO)

    metrics: dict = {
        "version": args.version,
        "split": {"train": split_info(train), "calibration": split_info(cal), "test": split_info(test)},
        "evaluated_on": "test",
        "rows": int(len(test)),
        "positives": int(y_test.sum()),
        "positive_rate": float(y_test.mean()),
        "roc_auc": evaluate.roc_auc(y_test, p_test),
        "pr_auc": evaluate.pr_auc(y_test, p_test),
        "brier": evaluate.brier(y_test, p_test),
        "ece": evaluate.ece(y_test, p_test),
        "brier_uncalibrated": evaluate.brier(y_test, raw[("primary", "test")]),
        "ece_uncalibrated": evaluate.ece(y_test, raw[("primary", "test")]),
        "onnx_parity_max_abs": parity_primary,
        "threshold_checkout": threshold,
        "threshold_selected_on": "test",
        "threshold_product_page": PRODUCT_PAGE_THRESHOLD,
        "cost_ratio": cost_ratio,
        "primary_model": {
            "trees": int(primary_params["n_estimators"]),
            "num_leaves": primary_params["num_leaves"],
            "learning_rate": primary_params["learning_rate"],
            "min_child_samples": primary_params["min_child_samples"],
            "reg_lambda": primary_params["reg_lambda"],
            "monotone_constraints": dict(zip(names, spec.monotone())),
            "monotone_constraints_method": primary_params["monotone_constraints_method"],
            "early_stopping_rounds": EARLY_STOPPING_ROUNDS,
            "max_trees": LIGHTGBM_PARAMS["n_estimators"],
            "unused_features": unused,
        },
        "fallback_model": {"scaler": "standard", "C": 1.0, "solver": "lbfgs"},
    }
    metrics.update(evaluate.decision_metrics(y_test, p_test, rule_test, threshold))
    metrics.update(
        {
            "fallback_roc_auc": evaluate.roc_auc(y_test, f_cal),
            "fallback_pr_auc": evaluate.pr_auc(y_test, f_cal),
            "fallback_brier": evaluate.brier(y_test, f_cal),
            "fallback_ece": evaluate.ece(y_test, f_cal),
            "fallback_onnx_parity_max_abs": parity_fallback,
        }
    )
    seller = test["seller_type"].to_numpy()
    metrics["by_seller_type"] = {
        s: evaluate.group_metrics(y_test[seller == s], p_test[seller == s], rule_test[seller == s], threshold)
        for s in SELLER_TYPES
    }
    lag = x_test[:, names.index("feed_lag_ratio")].astype(np.float64)
    metrics["by_feed_lag"] = {
        bucket: evaluate.group_metrics(y_test[mask], p_test[mask], rule_test[mask], threshold)
        for bucket, mask in evaluate.lag_bucket_masks(lag).items()
    }
    metrics["reliability"] = {
        "calibrated": evaluate.reliability(y_test, p_test),
        "uncalibrated": evaluate.reliability(y_test, raw[("primary", "test")]),
    }
    # The same rule applied where the threshold was chosen, and the threshold
    # the held-out rows themselves would have picked: diagnostics of drift
    # between the splits, never served.
    def model_and_rule(point: dict) -> dict:
        return {k: v for k, v in point.items() if not k.endswith("_served")}

    metrics["serving"] = {
        "threshold": serving_threshold,
        "cost_ratio": SERVING_COST_RATIO,
        **evaluate.decision_metrics(y_test, p_test, rule_test, serving_threshold),
    }
    metrics["operating_point_chosen_on_calibration"] = {
        "threshold": threshold_cal,
        "calibration": model_and_rule(evaluate.decision_metrics(y_cal, p_cal["calibration"], rule_cal, threshold_cal)),
        "test": model_and_rule(evaluate.decision_metrics(y_test, p_test, rule_test, threshold_cal)),
    }
    metrics["tradeoff"] = [
        {"threshold": t, **evaluate.decision_metrics(y_test, p_test, rule_test, t)} for t in TRADEOFF_THRESHOLDS
    ]
    metrics["feature_ranges_train"] = {
        name: [float(x_train[:, i].min()), float(x_train[:, i].max())] for i, name in enumerate(names)
    }
    metrics["by_rule"] = {
        name: {
            "rows": int(np.sum(mask)),
            "positives": int(np.sum(y_test[mask])),
            "positive_rate": float(np.mean(y_test[mask])) if mask.any() else None,
            "roc_auc": evaluate.roc_auc(y_test[mask], p_test[mask]),
        }
        for name, mask in (("promises", rule_test == 1), ("refuses", rule_test == 0))
    }
    metrics["done_criterion"] = {
        "false_negative_rate_model_le_baseline": metrics["false_negative_rate_model"] <= metrics["false_negative_rate_baseline"],
        "oversell_rate_model_le_half_baseline": metrics["oversell_rate_model"] <= 0.5 * metrics["oversell_rate_baseline"],
    }

    write_json(out / "golden.json", golden_rows(spec, x_test, out / "model.onnx", out / "fallback.onnx", primary_cal, fallback_cal))
    bins = {"features": {name: evaluate.reference_bins(x_train[:, i]) for i, name in enumerate(names)},
            "score": evaluate.reference_bins(p_cal["train"])}
    write_json(out / "reference_bins.json", bins)
    write_json(out / "metrics.json", metrics)
    plot_reliability(out / "reliability.png", y_test, raw[("primary", "test")], p_test, f_cal, args.version)

    manifest = {
        "version": args.version,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "features": names,
        "primary": model_entry(out, "model.onnx", "lightgbm", primary_cal),
        "fallback": model_entry(out, "fallback.onnx", "logistic-regression", fallback_cal),
        "golden": {"file": "golden.json", "sha256": sha256(out / "golden.json")},
        "reference_bins": {"file": "reference_bins.json", "sha256": sha256(out / "reference_bins.json")},
        "metrics": {"file": "metrics.json", "sha256": sha256(out / "metrics.json")},
        "thresholds": {"checkout": serving_threshold, "product_page": PRODUCT_PAGE_THRESHOLD, "cost_ratio": SERVING_COST_RATIO},
        "training": {
            "simulator_version": meta["simulator_version"],
            "seed": meta["seed"],
            "rows": int(len(df)),
            "params": meta["params"],
            "lightgbm": lightgbm.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    if manifest["features"] != names:
        raise RuntimeError("manifest features differ from the CSV header")
    write_json(out / "manifest.json", manifest)

    card_path = args.card or out.parent / "MODEL_CARD.md"
    card_path.write_text(card.render(manifest, metrics, card.relative_dir(out, card_path)))

    m = metrics
    print()
    print(f"model {args.version}: {len(df)} simulated rows ({meta['simulator_version']}, seed {meta['seed']}), "
          f"{len(test)} held out, {time.monotonic() - started:.0f}s")
    print(f"  roc_auc {m['roc_auc']:.4f}  pr_auc {m['pr_auc']:.4f}  brier {m['brier']:.4f}  ece {m['ece']:.4f}  "
          f"onnx parity {m['onnx_parity_max_abs']:.1e}")
    print(f"  fallback: roc_auc {m['fallback_roc_auc']:.4f}  brier {m['fallback_brier']:.4f}  ece {m['fallback_ece']:.4f}")
    print(f"  criterion operating point: threshold {threshold:.4f} (implied cost ratio {cost_ratio:.3f}), product page {PRODUCT_PAGE_THRESHOLD}")
    s = metrics["serving"]
    print(f"  served checkout threshold {serving_threshold:.4f} (cost ratio {SERVING_COST_RATIO:g}): oversell served "
          f"{s['oversell_rate_served']:.4%}, false neg served {s['false_negative_rate_served']:.4%}")
    print(f"  oversell  model {m['oversell_rate_model']:.4%}  baseline {m['oversell_rate_baseline']:.4%}  served {m['oversell_rate_served']:.4%}")
    print(f"  false neg model {m['false_negative_rate_model']:.4%}  baseline {m['false_negative_rate_baseline']:.4%}  served {m['false_negative_rate_served']:.4%}")
    c = metrics["operating_point_chosen_on_calibration"]
    print(f"  (threshold chosen on the calibration split instead: {c['threshold']:.4f}; on the held-out rows oversell "
          f"{c['test']['oversell_rate_model']:.4%}, false neg {c['test']['false_negative_rate_model']:.4%})")
    done = metrics["done_criterion"]
    print(f"  done criterion: FN model <= baseline: {done['false_negative_rate_model_le_baseline']}; "
          f"oversell model <= 0.5 x baseline: {done['oversell_rate_model_le_half_baseline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
