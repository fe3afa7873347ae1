"""Shared test setup. Keep it small: fixtures used by one area live in that area's conftest.py.

Prefect is isolated here, before any test module imports it: its home, database, memo store and result storage
go to a throw-away folder (never ~/.prefect), telemetry is off (Prefect's and DVC's: the machines are offline),
and the ephemeral API server gets time to start on a busy 2-core machine.
"""

from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="icpo-test-prefect-")
for _key, _value in {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_MEMO_STORE_PATH": os.path.join(_PREFECT_HOME, "memo_store.toml"),
    "PREFECT_LOCAL_STORAGE_PATH": os.path.join(_PREFECT_HOME, "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ[_key] = _value
os.environ.pop("PREFECT_API_URL", None)  # never talk to a developer's running server from the tests
