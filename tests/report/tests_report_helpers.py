"""Helpers of the report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def make_params(**sections: Any):
    """The repository's params.yaml with ``sections`` deep-merged over it, validated."""
    from icpo_core.config import deep_merge, parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse_params(deep_merge(raw, sections))
