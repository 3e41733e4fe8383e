"""Checks of the committed availability model (models/v1) and of the training
helpers. Fast: no training, only the artefacts and small synthetic inputs.

STOCKD_MODEL_DIR points the artefact checks at another model directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import calibration
import card
import contract
import evaluate

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("STOCKD_MODEL_DIR", REPO / "models" / "v1"))
CARD = Path(os.environ.get("STOCKD_MODEL_CARD", MODEL_DIR.parent / "MODEL_CARD.md"))

REQUIRED_METRICS = [
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
    "onnx_parity_max_abs",
    "threshold_checkout",
    "cost_ratio",
    "oversell_rate_model",
    "false_negative_rate_model",
    "oversell_rate_baseline",
    "false_negative_rate_baseline",
    "oversell_rate_served",
    "false_negative_rate_served",
    "fallback_roc_auc",
    "fallback_brier",
    "fallback_ece",
    "by_seller_type",
    "by_feed_lag",
]
GROUP_KEYS = [
    "rows",
    "positives",
    "roc_auc",
    "oversell_rate_model",
    "false_negative_rate_model",
    "oversell_rate_baseline",
    "false_negative_rate_baseline",
]


def read_json(name: str):
    return json.loads((MODEL_DIR / name).read_text())


@pytest.fixture(scope="module")
def spec() -> contract.Contract:
    return contract.load()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_json("manifest.json")


@pytest.fixture(scope="module")
def metrics() -> dict:
    return read_json("metrics.json")


@pytest.fixture(scope="module")
def golden() -> dict:
    return read_json("golden.json")


@pytest.fixture(scope="module")
def golden_x(golden) -> np.ndarray:
    return np.array([row["features"] for row in golden["rows"]], dtype=np.float32)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_p1(manifest: dict, which: str, x: np.ndarray) -> np.ndarray:
    entry = manifest[which]
    (probabilities,) = session(MODEL_DIR / entry["file"]).run([entry["output"]], {entry["input"]: x})
    assert probabilities.shape == (x.shape[0], 2)
    assert probabilities.dtype == np.float32
    return probabilities[:, 1].astype(np.float64)


def platt(p: float, a: float, b: float) -> float:
    """The serving formula, written out once more independently of calibration.py."""
    p = min(max(p, 1e-7), 1.0 - 1e-7)
    z = math.log(p / (1.0 - p))
    return 1.0 / (1.0 + math.exp(-(a * z + b)))


# --- manifest ---------------------------------------------------------------


def test_manifest_names_the_contract_features_and_files(manifest, spec):
    assert manifest["features"] == list(spec.names), "retrain: features.rs and the manifest disagree"
    assert isinstance(manifest["version"], str) and manifest["version"] == MODEL_DIR.name
    assert isinstance(manifest["created_at"], str) and manifest["created_at"].endswith("Z")
    for which, kind in (("primary", "lightgbm"), ("fallback", "logistic-regression")):
        entry = manifest[which]
        assert entry["kind"] == kind
        assert entry["input"] == "input" and entry["output"] == "probabilities"
        assert entry["calibration"]["method"] == "platt"
        assert all(isinstance(entry["calibration"][k], float) and math.isfinite(entry["calibration"][k]) for k in "ab")
        assert entry["calibration"]["a"] > 0, "a calibration that reverses the ranking"
    training = manifest["training"]
    for key, kind in (("simulator_version", str), ("seed", int), ("rows", int), ("params", dict), ("lightgbm", str), ("onnxruntime", str)):
        assert isinstance(training[key], kind), key
    assert training["onnxruntime"] == "1.32.0", "the server loads onnxruntime 1.32.0"


@pytest.mark.parametrize("section", ["primary", "fallback", "golden", "reference_bins", "metrics"])
def test_manifest_sha256_matches_the_file(manifest, section):
    entry = manifest[section]
    path = MODEL_DIR / entry["file"]
    assert path.is_file(), path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{path} changed after the manifest"


def test_artefacts_stay_small():
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024, f"{MODEL_DIR} holds {total} bytes"


# --- ONNX graphs --------------------------------------------------------------


@pytest.mark.parametrize("which", ["primary", "fallback"])
def test_onnx_input_and_output_are_the_served_ones(manifest, which):
    import onnx

    model = onnx.load(str(MODEL_DIR / manifest[which]["file"]))
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    assert graph_input.name == "input"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_input.type.tensor_type.shape.dim
    assert len(dims) == 2 and not dims[0].HasField("dim_value") and dims[1].dim_value == len(manifest["features"])
    outputs = {o.name: o for o in model.graph.output}
    assert "probabilities" in outputs
    assert outputs["probabilities"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "ZipMap" not in {node.op_type for node in model.graph.node}


def test_primary_onnx_matches_the_lightgbm_booster(manifest, golden_x):
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(MODEL_DIR / "lightgbm.txt"))
    assert booster.num_feature() == len(manifest["features"])
    reference = booster.predict(golden_x.astype(np.float64))
    served = onnx_p1(manifest, "primary", golden_x)
    worst = float(np.max(np.abs(reference - served)))
    assert worst <= 1e-5, f"ONNX vs LightGBM: max |diff| {worst:.3g}"


@pytest.mark.parametrize("which", ["primary", "fallback"])
def test_onnx_reproduces_the_golden_raw_values(manifest, golden, golden_x, which):
    expected = np.array([row[f"{which}_raw"] for row in golden["rows"]])
    served = onnx_p1(manifest, which, golden_x)
    worst = float(np.max(np.abs(expected - served)))
    assert worst <= 1e-6, f"{which}: ONNX vs golden raw: max |diff| {worst:.3g}"


def test_primary_and_fallback_rank_alike_on_golden_rows(manifest, golden_x):
    primary = onnx_p1(manifest, "primary", golden_x)
    fallback = onnx_p1(manifest, "fallback", golden_x)
    assert np.corrcoef(primary, fallback)[0, 1] > 0.3, "the fallback does not track the primary"


# --- golden vectors -------------------------------------------------------------


def test_golden_calibrated_values_follow_the_formula(manifest, golden):
    for which in ("primary", "fallback"):
        a, b = manifest[which]["calibration"]["a"], manifest[which]["calibration"]["b"]
        for i, row in enumerate(golden["rows"]):
            expected = platt(row[f"{which}_raw"], a, b)
            assert abs(row[f"{which}_calibrated"] - expected) <= 1e-12, (which, i)
            assert 0.0 <= row[f"{which}_calibrated"] <= 1.0


def test_golden_rows_cover_test_rows_and_edge_cases(golden, golden_x, spec):
    rows = golden["rows"]
    assert 50 <= len(rows) <= 100
    assert golden_x.shape == (len(rows), spec.count)
    lo = np.array([r[0] for r in spec.ranges], np.float32)
    hi = np.array([r[1] for r in spec.ranges], np.float32)
    assert np.all(golden_x >= lo) and np.all(golden_x <= hi), "golden features outside the documented ranges"
    assert any(np.array_equal(x, lo) for x in golden_x), "no all-min row"
    assert any(np.array_equal(x, hi) for x in golden_x), "no all-max row"
    for row in rows:
        assert set(row) == {"features", "primary_raw", "primary_calibrated", "fallback_raw", "fallback_calibrated"}
        # float32 values, so the server reads exactly the tensor that was scored
        assert all(float(np.float32(v)) == v for v in row["features"])
        assert float(np.float32(row["primary_raw"])) == row["primary_raw"]
    raw = np.array([row["primary_raw"] for row in rows])
    assert raw.min() < 0.5 < raw.max(), "golden rows should exercise both answers"


# --- metrics and thresholds -------------------------------------------------------


def test_metrics_have_every_required_key(metrics):
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    assert not missing, missing
    for key in REQUIRED_METRICS[:13]:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert set(metrics["by_seller_type"]) == {"first-party", "third-party"}
    assert set(metrics["by_feed_lag"]) == {"<=1", "1-3", ">3"}
    for groups in (metrics["by_seller_type"], metrics["by_feed_lag"]):
        for name, group in groups.items():
            assert all(k in group for k in GROUP_KEYS), name
    assert sum(g["rows"] for g in metrics["by_seller_type"].values()) == metrics["rows"]
    assert sum(g["rows"] for g in metrics["by_feed_lag"].values()) == metrics["rows"]


def test_metrics_are_sane(metrics):
    assert 0.5 < metrics["roc_auc"] <= 1.0
    assert 0.0 <= metrics["brier"] < 0.25
    assert 0.0 <= metrics["ece"] <= 0.05, "the calibrated primary is not calibrated"
    assert metrics["onnx_parity_max_abs"] <= 1e-5
    assert metrics["fallback_onnx_parity_max_abs"] <= 1e-5
    assert metrics["roc_auc"] >= metrics["fallback_roc_auc"] - 0.01
    # served = rule AND model: never more oversell, never fewer false negatives
    assert metrics["oversell_rate_served"] <= min(metrics["oversell_rate_model"], metrics["oversell_rate_baseline"])
    assert metrics["false_negative_rate_served"] >= max(metrics["false_negative_rate_model"], metrics["false_negative_rate_baseline"])


def test_model_alone_refuses_no_more_sellable_requests_than_the_rule(metrics):
    assert metrics["evaluated_on"] == "test"
    assert metrics["false_negative_rate_model"] <= metrics["false_negative_rate_baseline"], (
        metrics["false_negative_rate_model"],
        metrics["false_negative_rate_baseline"],
    )


@pytest.mark.xfail(
    strict=True,
    reason="not met on sim-1 rows: see 'Thresholds and the cost behind them' in models/MODEL_CARD.md; "
    "remove this mark once a retrained model meets it (strict: it then fails until removed)",
)
def test_model_alone_oversells_at_most_half_as_often_as_the_rule(metrics):
    assert metrics["evaluated_on"] == "test"
    assert metrics["oversell_rate_model"] <= 0.5 * metrics["oversell_rate_baseline"], (
        metrics["oversell_rate_model"],
        metrics["oversell_rate_baseline"],
    )


def test_done_criterion_record_matches_the_rates(metrics):
    done = metrics["done_criterion"]
    assert done["false_negative_rate_model_le_baseline"] == (
        metrics["false_negative_rate_model"] <= metrics["false_negative_rate_baseline"]
    )
    assert done["oversell_rate_model_le_half_baseline"] == (
        metrics["oversell_rate_model"] <= 0.5 * metrics["oversell_rate_baseline"]
    )


def test_thresholds_agree_between_manifest_and_metrics(manifest, metrics):
    thresholds = manifest["thresholds"]
    t = thresholds["checkout"]
    assert 0.0 < t < 1.0
    assert t == metrics["serving"]["threshold"]
    assert thresholds["cost_ratio"] == metrics["serving"]["cost_ratio"]
    assert math.isclose(thresholds["cost_ratio"], t / (1.0 - t), rel_tol=1e-9)
    assert t > thresholds["product_page"], "checkout is stricter than a product page"
    c = metrics["threshold_checkout"]
    assert math.isclose(metrics["cost_ratio"], c / (1.0 - c), rel_tol=1e-12)
    assert 0.0 < thresholds["product_page"] < 1.0


# --- reference bins ------------------------------------------------------------------


def check_bins(bins: dict, name: str) -> None:
    edges, fractions = bins["edges"], bins["fractions"]
    assert len(fractions) == len(edges) + 1, name
    assert all(b > a for a, b in zip(edges, edges[1:])), f"{name}: edges not strictly increasing"
    assert all(f >= 0.0 for f in fractions), name
    assert math.isclose(sum(fractions), 1.0, abs_tol=1e-9), name
    assert len(edges) <= 9, name


def test_reference_bins_are_well_formed(spec):
    bins = read_json("reference_bins.json")
    assert list(bins["features"]) == list(spec.names)
    for name, (lo, hi) in zip(spec.names, spec.ranges):
        check_bins(bins["features"][name], name)
        assert all(lo <= e <= hi for e in bins["features"][name]["edges"]), name
    check_bins(bins["score"], "score")
    assert len(bins["score"]["edges"]) >= 3, "the score should spread over several deciles"
    assert all(0.0 <= e <= 1.0 for e in bins["score"]["edges"])


# --- the model card --------------------------------------------------------------------


def test_model_card_matches_the_artefacts(manifest, metrics):
    expected = card.render(manifest, metrics, card.relative_dir(MODEL_DIR, CARD))
    assert CARD.read_text() == expected, "MODEL_CARD.md is stale: run models/train/card.py models/v1"


# --- helpers (synthetic inputs) ---------------------------------------------------------


def test_contract_parses_features_rs(spec):
    assert spec.count == 20 and len(spec.ranges) == 20
    assert spec.names[0] == "quantity"
    assert spec.ranges[spec.names.index("scan_age_s")] == (0.0, 30 * 24 * 3600.0)


def test_platt_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, 200_000)
    truth = calibration.apply(p, 0.7, -0.4)
    y = (rng.uniform(size=p.size) < truth).astype(np.int64)
    a, b = calibration.fit(p, y)
    assert abs(a - 0.7) < 0.03 and abs(b + 0.4) < 0.03, (a, b)
    assert calibration.apply(np.array([0.0, 1.0]), a, b).tolist() == [platt(0.0, a, b), platt(1.0, a, b)]


def test_checkout_threshold_is_the_highest_allowed():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0, 1, 0, 1, 1, 0])
    assert evaluate.checkout_threshold(p, y, 0) == 0.2
    assert evaluate.checkout_threshold(p, y, 1) == 0.4
    assert evaluate.checkout_threshold(p, y, 3) == 1.0
    for k in range(3):
        t = evaluate.checkout_threshold(p, y, k)
        assert np.sum((p < t) & (y == 1)) <= k
        assert np.sum((p < np.nextafter(t, 2.0)) & (y == 1)) > k


def test_rates_and_ece_on_a_small_example():
    y = np.array([1, 1, 0, 0])
    oversell, fn = evaluate.rates(np.array([1, 0, 1, 0], bool), y)
    assert oversell == 0.25 and fn == 0.5
    assert evaluate.ece(np.array([1, 0]), np.array([0.75, 0.25])) == pytest.approx(0.25)


def test_reference_bins_use_searchsorted_left():
    bins = evaluate.reference_bins(np.arange(100, dtype=np.float64))
    assert bins["edges"] == [float(v) for v in range(9, 90, 10)]
    assert bins["fractions"] == [0.1] * 10
    binary = evaluate.reference_bins(np.array([0.0] * 70 + [1.0] * 30))
    assert binary == {"edges": [0.0, 1.0], "fractions": [0.7, 0.3, 0.0]}
