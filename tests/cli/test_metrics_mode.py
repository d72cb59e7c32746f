"""prometheus_client stays in its single-process mode although Feast's import asks for the multi-process one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from churnops.processes import single_process_metrics

TWO_REGISTRIES = """
from churnops.processes import single_process_metrics
single_process_metrics()
import feast  # sets PROMETHEUS_MULTIPROC_DIR to a directory of its own
from prometheus_client import CollectorRegistry, Counter
a, b = CollectorRegistry(), CollectorRegistry()
Counter("x", "x", registry=a).inc(5)
Counter("x", "x", registry=b)
print(b.get_sample_value("x_total"))
"""


def test_two_registries_do_not_share_values_after_feast_is_imported(tmp_path: Path) -> None:
    inherited = tmp_path / "feast_metrics_parent"  # what a parent process that imported Feast passes on
    inherited.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(inherited)}
    out = subprocess.run([sys.executable, "-c", TWO_REGISTRIES], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0.0"  # in the multi-process mode the second registry would show the first one's 5
    assert list(inherited.iterdir()) == []  # nothing was written into the inherited directory


def test_a_directory_the_user_chose_is_kept(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "gunicorn-metrics"), "prometheus_multiproc_dir": "/tmp/feast_metrics_abc"}
    single_process_metrics(env)
    assert env == {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "gunicorn-metrics")}
