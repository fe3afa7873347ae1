#!/usr/bin/env bash
# The first run on a GPU node: GRPO and ICPO for a few verl steps on the embedded default (SmolLM2-135M, the
# synthetic data; nothing from the hub), then merge, bench and report through the project's DVC stages, and
# one PASS/FAIL line per check. About 10 minutes on one GPU.
#
#   make setup-gpu && scripts/gpu_smoke.sh                       # on the GPU node (SDPA; flash-attn is opt-in:
#                                                                 # make setup-gpu FLASH_ATTN=1 compiles it)
#   scripts/gpu_smoke.sh --cpu                                    # the same checks on a CPU machine (verl on
#                                                                 # CPU: slower, 2 steps; what CI's e2e test runs)
#
# It works in a scratch folder (default .gpu_smoke/, or SMOKE_DIR=...): a copy of dvc.yaml and params.yaml with
# the smoke settings merged over the embedded profile, its own DVC workspace and MLflow store, so the project's
# own outputs are not touched. Exit code: 0 when every check passed, 1 otherwise.
set -uo pipefail

MODE=gpu
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; shift; fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/.venv/bin}"
WORK="${SMOKE_DIR:-$ROOT/.gpu_smoke}"
LIMIT_S="${SMOKE_TIMEOUT_S:-1500}"

rm -rf "$WORK" && mkdir -p "$WORK/icpo_core/bench" || exit 1
cp "$ROOT/dvc.yaml" "$WORK/" && cp "$ROOT/icpo_core/bench/benchmarks.yaml" "$WORK/icpo_core/bench/"

# params.yaml of the smoke: the project's, with these settings deep-merged over it
"$BIN/python" - "$ROOT/params.yaml" "$WORK/params.yaml" "$MODE" <<'PY' || exit 1
import sys

import yaml

from icpo_core.config import deep_merge, parse_params

src, dst, mode = sys.argv[1:]
gpu = mode == "gpu"
smoke = {
    "seeds": [0],
    "study": {"runs": ["grpo", "icpo"], "ablations": [], "primary": None},
    "data": {"synthetic": {"train_per_level": 32, "demos_per_level": 16, "eval_per_level": 16}},
    "train": {
        "engine": "verl",
        "device": "cuda" if gpu else "cpu",
        "steps": 4 if gpu else 2,
        "save_freq": 2 if gpu else 1,
        "prompts_per_step": 4 if gpu else 2,
        "ppo_mini_batch_prompts": 4 if gpu else 2,
        "max_response_length": 128 if gpu else 16,
        "verl": {
            "n_gpus_per_node": 1,
            "gpu_memory_utilization": 0.5,
            "val_benchmarks": [],
            "ppo_micro_batch_size_per_gpu": 8 if gpu else 4,
            "log_prob_micro_batch_size_per_gpu": 8 if gpu else 4,
        },
    },
    "algorithm": {"n_on": 4, "n_off": 1},
    "bench": {"backend": "vllm" if gpu else "hf", "max_tokens": 64 if gpu else 16},
    "tracking": {"experiment": "icpo-gpu-smoke"},
}
raw = deep_merge(yaml.safe_load(open(src)), smoke)
parse_params(raw, dst)  # the smoke's settings are valid params, or one clear error here
yaml.safe_dump(raw, open(dst, "w"), sort_keys=False)
print(f"smoke params: {dst} ({mode})")
PY

cd "$WORK" || exit 1
export PATH="$BIN:$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$BIN/dvc" init --no-scm -q && "$BIN/dvc" config core.analytics false
START=$(date +%s)
timeout "$LIMIT_S" "$BIN/dvc" repro > dvc.log 2>&1
RC=$?
echo "dvc repro: exit $RC after $(( $(date +%s) - START )) s (log: $WORK/dvc.log)"

"$BIN/python" - "$RC" <<'PY'
import json
import sys
from pathlib import Path

import yaml

rc = int(sys.argv[1])
p = yaml.safe_load(open("params.yaml"))
steps = list(range(1, p["train"]["steps"] + 1))
failed = 0


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  (' + detail + ')' if detail and not ok else ''}")


def steps_of(instance):
    f = Path(f"metrics/steps_{instance}.jsonl")
    return [json.loads(x)["step"] for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


check("dvc repro of the whole smoke study", rc == 0, f"exit {rc}; tail of dvc.log below")
for run in ("grpo", "icpo"):
    inst = f"{run}_s0"
    got = steps_of(inst)
    check(f"{inst}: every step once through RayPPOTrainer.fit", got == steps, f"steps {got}, want {steps}")
    tracker = Path(f"runs/{inst}/checkpoints/latest_checkpointed_iteration.txt")
    last = tracker.read_text().strip() if tracker.is_file() else None
    check(f"{inst}: verl checkpoint of the last step", last == str(steps[-1]), f"latest {last}")
    rows = [json.loads(x) for x in Path(f"metrics/steps_{inst}.jsonl").read_text().splitlines()] if got else []
    ief = [r.get("icpo/ief_generated", 0) for r in rows]
    want_ief = (lambda n: n > 0) if run == "icpo" else (lambda n: n == 0)
    check(f"{inst}: IEF rollouts ({'some' if run == 'icpo' else 'none'})", bool(rows) and all(map(want_ief, ief)),
          f"icpo/ief_generated {ief}")
    finite = bool(rows) and all(r.get("actor/pg_loss") == r.get("actor/pg_loss") for r in rows)
    check(f"{inst}: finite actor loss", finite)
    check(f"{inst}: merged model", Path(f"runs/{inst}/merged/config.json").is_file())
    bench = Path(f"metrics/bench_{inst}.json")
    check(f"{inst}: bench metrics", bench.is_file() and bool(json.loads(bench.read_text()).get("benchmarks")))
check("report", Path("reports/report.md").is_file())
if failed:
    log = Path("dvc.log").read_text() if Path("dvc.log").is_file() else ""
    print("---- last lines of dvc.log ----\n" + "\n".join(log.splitlines()[-40:]))
print(f"{'ALL PASSED' if not failed else f'{failed} FAILED'}")
sys.exit(1 if failed else 0)
PY
