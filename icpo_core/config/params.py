"""Typed experiment parameters: ``params.yaml`` validated before any heavy import or download.

``load_params()`` reads ``params.yaml``, deep-merges the active profile over the base sections, validates the
result with pydantic (unknown keys are errors) and returns a frozen :class:`Params`. Every failure is raised as
:class:`ParamsError`, whose message names the key path, the bad value and what is allowed; the CLI turns it
into exit code 2.

Types are strict where YAML could smuggle nonsense in: a bool is not an int (``steps: true``), ``"8"`` is not
an int, ``1`` is not a bool; a float accepts ints and the string form YAML 1.1 gives ``1e-6``. Every profile is
validated (not only the active one), so a typo in a profile fails on the first ``icpo validate``.

The typed defaults are params.yaml's embedded sections, value for value (``tests/test_config.py`` checks that
``Params()`` equals the repository's params.yaml, profiles aside): a params file that leaves a key out, or code
that builds ``AlgorithmParams()`` / ``Params()``, gets the embedded default, never a third configuration.

This module imports only pydantic and yaml, so validation is instant.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from icpo_core.algorithm import variants
from icpo_core.config.sections import (
    AlgorithmParams,
    DataParams,
    ModelParams,
    TrainParams,
    _is_active,
)
from icpo_core.config.study import (
    BenchParams,
    RegimeParams,
    ReportParams,
    StudyParams,
    TrackingParams,
    _check_seeds,
)
from icpo_core.config.types import (
    _NAME_PATTERN,
    PARAMS_FILE,
    SEED_MAX,
    Name,
    NonEmptyStr,
    ParamsError,
    Seed,
    _Section,
)

# ---------------------------------------------------------------------------------------------------- root

# params.yaml `runs` (its comments say what each run is)
DEFAULT_RUNS: dict[str, dict[str, Any]] = {
    "grpo": {"n_off": 0},
    "icpo": {},
    "icpo_no_demos": {"off_policy": "ief_no_demos"},
    "grpo_compute_matched": {"n_off": 0, "n_on": 12},
    "icpo_rs": {"reward_shaping": True},
    "icpo_no_errs": {"errs": False},
    "icpo_released": {
        "errs": False,
        "demo_format": "released",
        "reward_shaping": True,
        "off_policy": "ief_no_demos",
        "released_constant_bonus": True,
        "released_entropy_bonus": 0.001,
        "released_loss_agg": True,
    },
    # the released code's GRPO (stock verl 0.5): its loss averaging; no entropy bonus, no demos (n_off 0)
    "grpo_released": {"n_off": 0, "released_loss_agg": True},
    "luffy": {
        "n_off": 1,
        "off_policy": "expert_trace",
        "errs": False,
        "norm_adv_by_std": False,
        "clip_on_policy": False,
    },
    "grpo_shuffled_reward": {"n_off": 0, "reward": "shuffled"},
    "grpo_random_reward": {"n_off": 0, "reward": "random"},
    "grpo_format_reward": {"n_off": 0, "reward": "format"},
}


class Params(_Section):
    profile: NonEmptyStr = "embedded"
    seed: int = Field(
        default=0, ge=0, le=SEED_MAX
    )  # data: synthetic problems and splits, fixed across the study
    # training seeds of the study: data order, demo draws, sampling, new weights
    seeds: list[Seed] = [0, 1, 2, 3]
    study: StudyParams = StudyParams()
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    algorithm: AlgorithmParams = AlgorithmParams()
    train: TrainParams = TrainParams()
    runs: dict[Name, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_RUNS))
    bench: BenchParams = BenchParams()
    regime: RegimeParams = RegimeParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    profiles: dict[Name, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check_runs(self, info: ValidationInfo) -> Params:
        # Root-level messages name their own key paths (see _format_validation).
        for name, overrides in self.runs.items():
            if name == "base":
                raise ValueError("runs.base: 'base' is reserved for the untrained base model; rename the run")
            try:
                algo = AlgorithmParams.model_validate({**self.algorithm.model_dump(), **overrides})
            except ValidationError as e:
                raise ValueError(_format_validation(e, prefix=f"runs.{name}")) from None
            if (
                self.train.engine == "verl"
                and algo.demo_format == "released"
                and variants.off_policy_source(algo).with_demos
            ):
                raise ValueError(
                    f"runs.{name}.demo_format: 'released' is a raw prompt string without chat template, which "
                    "verl's agent loop cannot send (it chat-templates raw_prompt); use chat_turns or inline with "
                    "train.engine: verl, or the local engine"
                )
        if "runs" in self.study.model_fields_set and not self.study.runs:
            raise ValueError(
                "study.runs: at least one run of `runs` (dvc.yaml trains each at every seed) (got [])"
            )
        if self.regime.run not in self.runs and "run" in self.regime.model_fields_set:
            raise ValueError(
                f"regime.run names '{self.regime.run}', which is not in runs: {sorted(self.runs)}"
            )
        for key, names in (("study.runs", self.study.runs), ("study.ablations", self.study.ablations)):
            for name in names:
                if name not in self.runs:
                    raise ValueError(f"{key} names '{name}', which is not in runs: {sorted(self.runs)}")
        overlap = set(self.study.runs) & set(self.study.ablations)
        # an inactive profile that sets its own study.runs meets the top-level ablations of another study (the
        # README's `-S 'study.ablations=[icpo_rs]'` beside the paper profiles' icpo_rs): only the study DVC
        # expands, the active profile's, must list each run once
        if overlap and _is_active(info):
            raise ValueError(f"study.ablations repeats study.runs {sorted(overlap)}: list each run once")
        for i, name in enumerate(self.report.runs):
            if name != "base" and name not in self.runs:
                raise ValueError(
                    f"report.runs[{i}]: 'base' or a name from runs {sorted(self.runs)} (got {name!r})"
                )
        if self.report.baseline is not None and self.report.baseline not in self.runs:
            if "baseline" in self.report.model_fields_set:
                raise ValueError(
                    f"report.baseline: a name from runs {sorted(self.runs)} (got {self.report.baseline!r})"
                )
            # the default names a run this file does not define: no baseline comparisons
            object.__setattr__(self, "report", self.report.model_copy(update={"baseline": None}))
        for i, pair in enumerate(self.study.primary.comparisons if self.study.primary else []):
            for name in pair:
                if name not in self.study.runs:
                    raise ValueError(
                        f"study.primary.comparisons[{i}]: {name!r} is not in study.runs {self.study.runs} (a "
                        "primary comparison needs both runs at every seed of `seeds`; add it there or change the "
                        "comparison, or set study.primary: null)"
                    )
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        return _check_seeds(v)

    def with_seed(self, seed: int) -> Params:
        """These params with the training seed ``seed`` (one instance of the study)."""
        if not 0 <= seed <= SEED_MAX:
            raise ParamsError(f"--seed: must be an integer in 0 .. {SEED_MAX} (got {seed})")
        return self.model_copy(update={"seed": seed})

    @property
    def train_prompt_suffix(self) -> str:
        """The suffix the training prompts carry (IEF demo problems get the same one): ``data.synthetic``'s for
        the synthetic set, else ``data.train``'s."""
        if self.data.train.source == "synthetic":
            return self.data.synthetic.prompt_suffix
        return self.data.train.prompt_suffix

    def run_algorithm(self, run: str) -> AlgorithmParams:
        """The algorithm params of one run: ``algorithm`` with ``runs.<run>`` applied."""
        if run not in self.runs:
            raise ParamsError(f"unknown run '{run}': params.yaml runs has {sorted(self.runs)}")
        return AlgorithmParams.model_validate({**self.algorithm.model_dump(), **self.runs[run]})


# ---------------------------------------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _got(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(parts: tuple[Any, ...]) -> str:
    """``("train", "verl", "val_files", 0)`` -> ``train.verl.val_files[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# pydantic's wording -> ours: "Input should be ..." reads as "must be ..."
_MESSAGES = {
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_too_short": "must be a non-empty string",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "extra_forbidden": "unknown key (check the spelling; see params.yaml for the allowed keys)",
}


def _loc(e: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(p for p in e["loc"] if not str(p).startswith("function-"))


def _format_error(e: Mapping[str, Any], prefix: str = "") -> str:
    """``key.path: what is allowed (got value)`` for one pydantic error."""
    parts = _loc(e)
    is_key = bool(parts) and parts[-1] == "[key]"  # a mapping key (not its value) is wrong: name the mapping
    parts = parts[:-2] if is_key else parts
    key = ".".join(p for p in (prefix, _key_path(parts)) if p)
    kind = e["type"]
    msg = _MESSAGES.get(kind, e["msg"].removeprefix("Value error, "))
    if msg.startswith("Input should"):
        msg = "must" + msg.removeprefix("Input should")
    if kind == "string_pattern_mismatch":
        msg = "must be a name of letters, digits, '_', '.' or '-' (starting with a letter or digit)"
    if is_key:
        msg = f"keys {msg}"
    if not parts and kind == "value_error":
        return f"{prefix}: {msg}" if prefix else msg  # root validators name their own key paths
    model_check = kind == "value_error" and isinstance(e.get("input"), dict)  # its message has the values
    if "input" in e and kind != "extra_forbidden" and not model_check:
        msg = f"{msg} (got {_got(e['input'])})"
    return f"{key or '<root>'}: {msg}"


def _format_validation(err: ValidationError, prefix: str = "") -> str:
    """One line for all errors: ``key.path: what is allowed (got value)``, joined by ``; ``."""
    return "; ".join(_format_error(e, prefix) for e in err.errors())


def _profiles(raw: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The active profile's name and every profile's overrides, with their shapes checked."""
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ParamsError(f"profiles: must be a mapping of profile name -> overrides (got {_got(profiles)})")
    for name, overrides in profiles.items():
        if not isinstance(name, str) or not re.match(_NAME_PATTERN, name):
            raise ParamsError(
                f"profiles: profile names must be names of letters, digits, '_', '.' or '-' (got {_got(name)})"
            )
        if not isinstance(overrides, dict):
            raise ParamsError(
                f"profiles.{name}: must be a mapping of overrides ({{}} for none) (got {_got(overrides)})"
            )
        if "profiles" in overrides or "profile" in overrides:
            raise ParamsError(f"profiles.{name}: a profile cannot set 'profile' or 'profiles'")
    allowed = sorted({*profiles, "embedded"})
    name = raw.get("profile", "embedded")
    if not isinstance(name, str):
        raise ParamsError(f"profile: must be a profile name, one of {allowed} (got {_got(name)})")
    if name not in allowed:
        raise ParamsError(f"profile: unknown profile; must be one of {allowed} (got {name!r})")
    return name, profiles


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply the active profile (``raw['profile']``) over the base sections; raises :class:`ParamsError`."""
    name, profiles = _profiles(raw)
    return deep_merge(raw, profiles.get(name, {}))


def _in_overrides(overrides: Mapping[str, Any], parts: tuple[Any, ...]) -> bool:
    node: Any = overrides
    for p in parts:
        if isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
            continue
        if not isinstance(node, Mapping) or p not in node:
            return False
        node = node[p]
    return True


_ROOT_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*(?:\[\d+\])*): ")


def _root_message_key(e: Mapping[str, Any]) -> str | None:
    """The key path a root validator's message starts with (``study.runs: ...``), else None."""
    if e["type"] != "value_error":
        return None
    m = _ROOT_KEY.match(e["msg"].removeprefix("Value error, "))
    return m.group(1) if m else None


def _key_parts(key: str) -> tuple[Any, ...]:
    """``study.primary.comparisons[0]`` -> ``("study", "primary", "comparisons", 0)``."""
    out: list[Any] = []
    for part in key.split("."):
        name, *idx = part.replace("]", "").split("[")
        out += [name, *(int(i) for i in idx)]
    return tuple(out)


def _validate_profile(raw: dict[str, Any], name: str, overrides: dict[str, Any], active: bool) -> Params:
    """Validate the base sections with profile ``name`` applied.

    A bad value the profile sets is reported as ``profiles.<name>.<key path>``; so is a cross-field check that
    fails in a section an inactive profile touches (the base sections pass alone). Other errors keep their plain
    key path, noting the profile."""
    merged = deep_merge({**raw, "profile": name}, overrides)

    def set_by_profile(parts: tuple[Any, ...]) -> bool:
        return bool(parts) and (
            _in_overrides(overrides, parts) or (not active and _in_overrides(overrides, parts[:1]))
        )

    try:
        return Params.model_validate(merged, context={"check_paths": active})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            parts = tuple(p for p in _loc(e) if p != "[key]")
            root_key = _root_message_key(e) if not parts else None
            if set_by_profile(parts):
                lines.append(_format_error(e, prefix=f"profiles.{name}"))
            elif root_key and set_by_profile(_key_parts(root_key)):
                # a cross-field check names its own key path: one the profile sets is the profile's
                lines.append(f"profiles.{name}.{_format_error(e)}")
            elif overrides:
                lines.append(f"with profile {name!r}: {_format_error(e)}")
            else:
                lines.append(_format_error(e))
        raise ParamsError("; ".join(lines)) from None


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping: the active profile (returned) and every other profile."""
    try:
        if not isinstance(raw, dict):
            raise ParamsError(f"top level must be a mapping (got {_got(raw)})")
        for key in raw:
            if not isinstance(key, str):
                raise ParamsError(f"{_got(key)}: keys must be strings (got {_got(key)})")
        active, profiles = _profiles(raw)
        params = _validate_profile(raw, active, profiles.get(active, {}), active=True)
        for name in sorted({*profiles, "embedded"} - {active}):
            _validate_profile(raw, name, profiles.get(name, {}), active=False)
    except ParamsError as e:
        raise ParamsError(f"{source}: {e}") from None
    return params


def read_raw(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """``params.yaml`` as loaded, before any profile is applied; raises :class:`ParamsError`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ParamsError(f"{path}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: cannot be read: {e}") from None
    return {} if raw is None else raw


def apply_sets(raw: Any, sets: list[str] | None, source: str = PARAMS_FILE) -> Any:
    """``raw`` with ``KEY=VALUE`` overrides applied (``icpo -S train.device=cpu``, as ``dvc exp run -S`` writes
    them into params.yaml): the dotted key is set in the base sections (a profile still deep-merges over it), the
    value read as YAML. Raises :class:`ParamsError` for a malformed entry."""
    if not sets:
        return raw
    out = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    for entry in sets:
        key, eq, text = entry.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or ".." in key or key.strip(".") != key:
            raise ParamsError(
                f"{source}: -S {entry!r}: expected KEY=VALUE with a dotted key, e.g. train.device=cpu"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ParamsError(f"{source}: -S {entry!r}: the value is not valid YAML") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def load_params(path: str | Path = PARAMS_FILE, sets: list[str] | None = None) -> Params:
    """Read, resolve and validate ``params.yaml`` (``sets``: :func:`apply_sets` overrides first); raises
    :class:`ParamsError` on any problem."""
    return parse_params(apply_sets(read_raw(path), sets, str(path)), source=str(path))
