#!/usr/bin/env bash
# Mutation testing (`make mutate`): mutmut 3.8.1 over open_clip_patch/{losses,state,schedules}.py
# against the fast float64 tests named in tools/mutmut.cfg; lists every surviving mutant and the
# score. Not part of `make test` (about 10 minutes on 2 cores).
#   make mutate                      # PYTHON=.venv/bin/python, 2 workers
#   MUTATE_JOBS=8 make mutate
# Runs in build/mutate/ (a copy of the overlay and tests), so mutants/ never touches the tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"   # absolute: we cd below
MUTMUT="$(dirname "$PYTHON")/mutmut"
if ! "$PYTHON" -c "import mutmut" 2>/dev/null; then
    # a tool, not a dependency of the project: installed into the venv on first use
    "$PYTHON" -m pip install -q "mutmut==3.8.1"
fi
rm -rf build/mutate
mkdir -p build/mutate
cp -r open_clip_patch tests build/mutate/
cp tools/mutmut.cfg build/mutate/setup.cfg
find build/mutate -name __pycache__ -prune -exec rm -rf {} +
cd build/mutate
OMP_NUM_THREADS=1 "$MUTMUT" run --max-children "${MUTATE_JOBS:-2}" > run.log 2>&1 || {
    tail -c 3000 run.log; exit 1; }
"$MUTMUT" results --all true > results.txt
echo "surviving mutants (inspect one with: cd build/mutate && $MUTMUT show NAME):"
grep -E ": (survived|timeout|no tests)" results.txt || echo "  none"
"$PYTHON" - results.txt <<'PY'
import collections, sys
counts = collections.Counter(line.rsplit(": ", 1)[1].strip()
                             for line in open(sys.argv[1]) if ": " in line)
scored = counts["killed"] + counts["survived"] + counts["timeout"]
print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
print(f"mutation score: {counts['killed']}/{scored} killed = {counts['killed'] / max(scored, 1):.1%}"
      f" (mutants no selected test reaches: {counts['no tests']})")
PY
