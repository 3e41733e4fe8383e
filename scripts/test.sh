#!/usr/bin/env bash
# The read-only gate: formatting, lints, every test; ends with one summary
# line "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
# .venv first: the model tests load libonnxruntime.so from it.
scripts/setup-venv.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: every test binary runs even when one fails.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) sum += $(i-1) } END { print sum + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) sum += $(i-1) } END { print sum + 0 }' "$log")
# A test binary killed by a signal (an abort, also at exit after its tests
# passed) may print no failing test: name it and count it as a failure.
crashed=$(grep -E "process didn.t exit successfully: .*signal" "$log" | sed -E 's/.*successfully: `([^` ]*).*\((signal[^)]*)\).*/\1 (\2)/' || true)
if [ -n "$crashed" ]; then
  echo "tests: these test binaries were killed by a signal:"
  echo "$crashed"
  failed=$((failed + $(printf '%s\n' "$crashed" | wc -l)))
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "tests: cargo test exited $status with no failing test reported (see the log above)"
  failed=1
fi

# The availability model's Python tests (committed artefacts in models/v1).
pylog="$(mktemp)"
trap 'rm -f "$log" "$pylog"' EXIT
py_status=0
PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest models/train -q -p no:cacheprovider 2>&1 | tee "$pylog" || py_status=$?
# pytest's closing line, e.g. "1 failed, 25 passed, 2 warnings in 5.60s"
read -r py_passed py_failed < <(awk '/[0-9]+ (passed|failed|errors?)/ && / in [0-9.]+s/ { line = $0 }
  END { p = 0; f = 0; n = split(line, w, /[ ,=]+/)
        for (i = 2; i <= n; i++) { if (w[i] == "passed") p = w[i-1]; if (w[i] ~ /^(failed|errors?)$/) f += w[i-1] }
        print p + 0, f + 0 }' "$pylog")
passed=$((passed + ${py_passed:-0}))
failed=$((failed + py_failed))
if [ "$py_status" -ne 0 ]; then
  status=1
  if [ "$py_failed" -eq 0 ]; then failed=$((failed + 1)); fi
fi
# Fault injection against real nodes (jepsen/), through mTLS: a few short
# seeded runs, then the planted bugs, which the checkers must catch (exit 1).
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
jepsen_store="$(mktemp -d)"
# The binaries `cargo test` built for the integration tests (same features:
# `cargo build --bins` alone resolves dev-dependency features apart and
# rebuilds RocksDB once more, about 11 minutes cold); a no-op when they are
# up to date.
cargo test --workspace --no-run --quiet
jepsen="$target_dir/debug/stockd-jepsen"
if "$jepsen" test --quick --store "$jepsen_store/quick"; then
  passed=$((passed + 1))
else
  echo "jepsen: the quick runs found a violation or could not run (store: $jepsen_store/quick)"
  failed=$((failed + 1))
fi
for bug in lost-ack peer-invalid-after-apply partial-cart split-drops-reservations split-drops-homes merge-without-freeze move-skips-history; do
  bug_status=0
  "$jepsen" test --quick --bug "$bug" --store "$jepsen_store/bug-$bug" >"$jepsen_store/bug-$bug.log" 2>&1 || bug_status=$?
  if [ "$bug_status" -eq 1 ]; then
    echo "jepsen: the planted $bug bug was caught (exit 1), as it must be"
    passed=$((passed + 1))
  else
    echo "jepsen: the planted $bug bug was NOT caught (exit $bug_status); log: $jepsen_store/bug-$bug.log"
    failed=$((failed + 1))
  fi
done
echo
echo "tests: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
  exit 1
fi
