"""Typed experiment parameters (``params.yaml``): see :mod:`.params` for loading and validation.

The package namespace is the API: every section model, the root :class:`Params`, :func:`load_params`,
:func:`parse_params`, :func:`deep_merge` and :class:`ParamsError`.
"""

from icpo_core.config.params import (  # noqa: F401
    _MESSAGES,
    DEFAULT_RUNS,
    Params,
    _format_error,
    _format_validation,
    _got,
    _in_overrides,
    _key_path,
    _loc,
    _profiles,
    _validate_profile,
    apply_sets,
    deep_merge,
    load_params,
    parse_params,
    read_raw,
    resolve,
)
from icpo_core.config.profiles import (  # noqa: F401
    PAPER_PROFILE_PREFIX,
    STUDY_MATRIX_KEYS,
    dvc_study_problem,
    is_paper_profile,
    study_command,
)
from icpo_core.config.sections import (  # noqa: F401
    LORA_TARGETS,
    AlgorithmParams,
    DataParams,
    DemoDataParams,
    LoraParams,
    ModelParams,
    SyntheticParams,
    TrainDataParams,
    TrainParams,
    TrainVllmParams,
    VerlParams,
    VllmParams,
    _is_active,
    _missing,
    _non_empty_unique,
)
from icpo_core.config.study import (  # noqa: F401
    BenchParams,
    PrimaryParams,
    RegimeParams,
    ReportParams,
    RunPair,
    SamplingOverrides,
    StudyParams,
    TrackingParams,
    _check_seeds,
    _two_runs,
)
from icpo_core.config.types import (  # noqa: F401
    _FLOAT_STRING,
    _NAME_PATTERN,
    PARAMS_FILE,
    SEED_MAX,
    Float,
    Level,
    Name,
    NonEmptyStr,
    ParamsError,
    Seed,
    _not_bool,
    _Section,
    _yaml_float,
)
