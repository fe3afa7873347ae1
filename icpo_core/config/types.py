"""The building blocks of the typed params: strict YAML scalars, names, seeds, the error type, the section base."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

PARAMS_FILE = "params.yaml"
SEED_MAX = 2**32 - 1  # numpy.random.seed / RandomState refuse seeds outside 0 .. 2**32 - 1
# Names that become DVC stage keys (train@<run>), folders and MLflow tags.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_FLOAT_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ParamsError(ValueError):
    """A params.yaml problem, with a message a user can act on."""


def _yaml_float(v: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: accept a plain decimal / exponent string as a number."""
    if isinstance(v, str) and _FLOAT_STRING.match(v.strip()):
        return float(v)
    return v


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):  # True == 1 would match Literal[1]
        raise ValueError("must be a level 0, 1, 2 or 3, not true/false")
    return v


# A finite number: int or float (not bool, not nan/inf), or the string YAML makes of ``1e-6``.
Float = Annotated[float, BeforeValidator(_yaml_float)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Level = Annotated[Literal[0, 1, 2, 3], BeforeValidator(_not_bool)]


class _Section(BaseModel):
    # strict: no bool -> int, "8" -> int, 1 -> bool or 1 -> "1" coercion (nested sections still take mappings)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
