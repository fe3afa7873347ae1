"""One flow at a time drives DVC in a checkout: a second one waits for the first to finish."""

from __future__ import annotations

import threading
import time

from filelock import FileLock
from prefect.logging import disable_run_logger

from tasks.dvc_tasks import project_lock, stage_task


def test_second_holder_waits_until_the_first_releases(tmp_path):
    other_flow = FileLock(str(tmp_path / ".dvc" / "tmp" / "prefect-flow.lock"))
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    other_flow.acquire()
    entered: list[float] = []

    def second() -> None:
        with disable_run_logger(), project_lock(tmp_path, poll_s=0.1):
            entered.append(time.monotonic())

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.6)
    assert not entered  # still waiting
    released = time.monotonic()
    other_flow.release()
    t.join(timeout=10)
    assert entered and entered[0] >= released


def test_retries_and_tags_by_stage_kind():
    download = stage_task("prepare_train", retries=2, backoff_s=5)
    assert download.retries == 2 and download.retry_delay_seconds == [5, 10]
    assert {"dvc", "download"} <= set(download.tags)
    train = stage_task("train@icpo")
    assert train.retries == 0 and "gpu" in train.tags
    assert stage_task("merge@icpo").tags == {"dvc"}
