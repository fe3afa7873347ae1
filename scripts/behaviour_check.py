"""Behaviour check of a code change: train the same short runs with two checkouts, compare checkpoints and step logs.

For one checkout (a folder with ``icpo_core``), ``run`` makes fresh project folders under OUT and runs that
checkout's own CLI in them (``python -m icpo_core.cli``, PYTHONPATH=<checkout>, cwd=<project>): ``base-model``,
``prepare-train`` and ``prepare-demos`` once, then ``train --run R --seed 0 --no-progress`` for every run R and
rollout backend. It records the md5 of the step-2 checkpoint's weights file (``model_world_size_1_rank_0.pt`` or,
where that version saves a final checkpoint in the Hugging Face layout, ``huggingface/*.safetensors``) and keeps
the step log ``metrics/steps_<run>_s0.jsonl``. ``compare`` prints the md5 table and every step-log key that
differs between two ``run`` outputs (wall-clock keys left out).

The params of each project are the checkout's own params.yaml with the overrides below (a key that checkout's
params.yaml does not have is left out and named in the results: its params validation rejects unknown keys):
seeds [0], 2 steps, a checkpoint at step 2, 2 prompts per optimizer step, 20 training / demo / eval problems per
level, same-generator demos, and ``train.rollout_backend`` per backend.

    nice -n 19 python scripts/behaviour_check.py run --checkout ../before --out bc/before
    nice -n 19 python scripts/behaviour_check.py run --checkout ../after --out bc/after
    python scripts/behaviour_check.py compare bc/before bc/after [--json diff.json]

``--runs`` and ``--backends`` pick a subset (default: grpo icpo luffy, hf vllm); ``--python`` the interpreter
(default: this one). A rerun of ``run`` into the same OUT reuses the prepared data and finished trainings.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

RUNS = ["grpo", "icpo", "luffy"]
BACKENDS = ["hf", "vllm"]
SEED = 0
STEP = 2

# (dotted key, value): applied where the checkout's params.yaml has the key
OVERRIDES: list[tuple[str, Any]] = [
    ("seeds", [SEED]),
    ("train.steps", STEP),
    ("train.save_freq", STEP),
    ("train.ppo_mini_batch_prompts", 2),
    ("data.synthetic.train_per_level", 20),
    ("data.synthetic.demos_per_level", 20),
    ("data.synthetic.eval_per_level", 20),
    ("data.synthetic.demo_style", "same"),
]

# step-log keys that measure wall-clock time, not behaviour
WALL_CLOCK_KEYS = {"perf/step_time_s", "perf/tokens_per_s", "compute/wall_time_s"}
WALL_CLOCK_PREFIXES = ("timing/",)

FALLBACK_TEXT = "generating with transformers (hf) instead"


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> bool:
    """Set ``a.b.c`` in ``tree`` if every part of the path already exists; False if it does not."""
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            return False
        node = node[part]
    if last not in node:
        return False
    node[last] = value
    return True


def project_params(checkout: Path, backend: str) -> tuple[dict[str, Any], list[str], list[str]]:
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params = copy.deepcopy(params)
    applied, skipped = [], []
    for key, value in [*OVERRIDES, ("train.rollout_backend", backend)]:
        (applied if set_key(params, key, value) else skipped).append(key)
    return params, applied, skipped


def cli(python: str, checkout: Path, project: Path, args: list[str], log: Path) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)
    env.pop("MLFLOW_TRACKING_URI", None)  # each project's own sqlite store
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    cmd = [python, "-m", "icpo_core.cli", *args]
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=project, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{' '.join(args)} in {project} failed (rc {rc}): see {log}")
    return time.time() - t0


def weights_file(step_dir: Path) -> Path:
    for pattern in ("**/model_world_size_1_rank_0.pt", "**/huggingface/*.safetensors"):
        found = sorted(step_dir.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            sys.exit(f"{step_dir}: several weight files {found}: extend weights_file")
    sys.exit(f"{step_dir}: no weights file")


def git_head(checkout: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def do_run(a: argparse.Namespace) -> None:
    checkout, out = a.checkout.resolve(), a.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    results.update({"commit": git_head(checkout), "step": STEP, "seed": SEED})
    results.setdefault("trainings", {})

    def save() -> None:
        res_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")

    # the base model and the data, once (the prepare stages do not read the rollout backend)
    prep = out / "prepared"
    if not (prep / "done").exists():
        shutil.rmtree(prep, ignore_errors=True)
        prep.mkdir(parents=True)
        params, applied, skipped = project_params(checkout, "hf")
        (prep / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ("base-model", "prepare-train", "prepare-demos"):
            s = cli(a.python, checkout, prep, [stage], logs / f"{stage}.log")
            print(f"{stage}: {s:.0f} s", flush=True)
        (prep / "done").write_text("")
    inputs = ["models/base/model.safetensors", "data/train.parquet", "data/demos.parquet"]
    results["inputs_md5"] = {p: md5(prep / p) for p in inputs}
    save()

    for backend in a.backends:
        project = out / backend
        params, applied, skipped = project_params(checkout, backend)
        results["overrides_applied"], results["overrides_skipped"] = applied, skipped
        for sub in ("models", "data", "metrics"):
            if not (project / sub).exists():
                shutil.copytree(prep / sub, project / sub)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for run in a.runs:
            key = f"{run}/{backend}"
            inst = f"{run}_s{SEED}"
            step_dir = project / "runs" / inst / "checkpoints" / f"global_step_{STEP}"
            if key in results["trainings"] and step_dir.exists():
                print(f"{key}: done before", flush=True)
                continue
            shutil.rmtree(project / "runs" / inst, ignore_errors=True)
            (project / "metrics" / f"steps_{inst}.jsonl").unlink(missing_ok=True)
            log = logs / f"train_{run}_{backend}.log"
            s = cli(
                a.python,
                checkout,
                project,
                ["train", "--run", run, "--seed", str(SEED), "--no-progress"],
                log,
            )
            wf = weights_file(step_dir)
            steps = [
                json.loads(line)
                for line in (project / "metrics" / f"steps_{inst}.jsonl").read_text().splitlines()
            ]
            results["trainings"][key] = {
                "weights": str(wf.relative_to(step_dir)),
                "md5": md5(wf),
                "steps": steps,
                "vllm_fell_back_to_hf": FALLBACK_TEXT in log.read_text(),
                "wall_s": round(s),
            }
            save()
            print(f"{key}: {results['trainings'][key]['md5']} ({s:.0f} s)", flush=True)


def wall_clock(key: str) -> bool:
    return key in WALL_CLOCK_KEYS or key.startswith(WALL_CLOCK_PREFIXES)


def do_compare(a: argparse.Namespace) -> None:
    before = json.loads((a.before / "results.json").read_text())
    after = json.loads((a.after / "results.json").read_text())
    print(f"before {before['commit']}, after {after['commit']}")
    print(
        f"overrides skipped: before {before.get('overrides_skipped')}, after {after.get('overrides_skipped')}"
    )
    for p, h in before["inputs_md5"].items():
        h2 = after["inputs_md5"].get(p)
        print(f"input {p}: {'same' if h == h2 else 'DIFFERS'} ({h} / {h2})")
    print("\n| run | rollouts | md5 before | md5 after | equal |\n|---|---|---|---|---|")
    diffs: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(set(before["trainings"]) | set(after["trainings"])):
        b, f = before["trainings"].get(key), after["trainings"].get(key)
        run, backend = key.split("/")
        mb, ma = (b or {}).get("md5"), (f or {}).get("md5")
        print(f"| {run} | {backend} | `{mb}` | `{ma}` | {'yes' if mb and mb == ma else 'NO'} |")
        for t, name in ((b, "before"), (f, "after")):
            if t and t.get("vllm_fell_back_to_hf"):
                print(f"  warning: {key} {name}: vLLM fell back to hf")
        if not (b and f):
            continue
        rows = []
        sb, sa = {r["step"]: r for r in b["steps"]}, {r["step"]: r for r in f["steps"]}
        for step in sorted(set(sb) | set(sa)):
            rb, ra = sb.get(step, {}), sa.get(step, {})
            for k in sorted(set(rb) | set(ra)):
                if wall_clock(k) or rb.get(k, "<absent>") == ra.get(k, "<absent>"):
                    continue
                rows.append(
                    {"step": step, "key": k, "before": rb.get(k, "<absent>"), "after": ra.get(k, "<absent>")}
                )
        diffs[key] = rows
    print("\nStep-log keys that differ (wall-clock keys left out):")
    for key, rows in diffs.items():
        print(f"\n{key}: {len(rows)} differing values" if rows else f"\n{key}: identical")
        for r in rows:
            print(f"  step {r['step']} {r['key']}: {r['before']} -> {r['after']}")
    if a.json:
        a.json.write_text(json.dumps(diffs, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the runs with one checkout")
    r.add_argument("--checkout", type=Path, required=True, help="code checkout (folder with icpo_core)")
    r.add_argument(
        "--out", type=Path, required=True, help="output folder (project folders, logs, results.json)"
    )
    r.add_argument("--runs", nargs="+", default=RUNS)
    r.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    r.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    c = sub.add_parser("compare", help="compare two run outputs")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--json", type=Path, default=None, help="write the differing values here")
    a = p.parse_args()
    do_run(a) if a.cmd == "run" else do_compare(a)


if __name__ == "__main__":
    main()
