"""Flow-test fixtures: ONE Prefect test API for the whole session, and throw-away DVC projects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API (SQLite) shared by every flow test: it takes 12-22 s to start on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _commit_all(project: Path, message: str = "update") -> None:
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", message)


@pytest.fixture
def commit_all() -> Callable[..., None]:
    """`git add -A && git commit` in a test project."""
    return _commit_all


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Build a committed git + DVC project: the given dvc.yaml, params.yaml (default: the project's own) and
    extra files (name -> text)."""

    def make(dvc_yaml: str, params_yaml: str | None = None, files: dict[str, str] | None = None) -> Path:
        project = tmp_path / "project"
        project.mkdir()
        _git(project, "init", "-q")
        (project / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
        if params_yaml is None:
            shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
        else:
            (project / "params.yaml").write_text(params_yaml)
        (project / ".gitignore").write_text("/mlflow/\n")
        for name, text in (files or {}).items():
            path = project / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True)
        subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=project, check=True)
        _commit_all(project, "init")
        return project

    return make


def _flow_run_logs(flow_run_id) -> list[str]:
    """Every log message the API stored for a flow run (its task runs included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def _flow_run_artifacts(flow_run_id) -> dict[str, Any]:
    """Artifacts of a flow run, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in arts if a.key}


@pytest.fixture
def flow_logs() -> Callable[..., list[str]]:
    return _flow_run_logs


@pytest.fixture
def flow_artifacts() -> Callable[..., dict[str, Any]]:
    return _flow_run_artifacts
