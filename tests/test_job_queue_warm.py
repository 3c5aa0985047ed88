"""An API process imports what sending a job needs when it starts, not under its first
upload's feet (the imports held the interpreter for 0.3-0.5 s while /predict threads waited)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import ROOT, tabserve_env


def test_create_app_imports_the_broker_transport_and_the_result_backend(base_settings):
    script = ("import sys; from api import create_app; create_app(); "
              "print(sorted(m for m in ('kombu.transport.redis', 'celery.backends.redis') "
              "if m in sys.modules))")
    env = tabserve_env(base_settings.as_env(), {"PYTHONPATH": os.environ.get("PYTHONPATH", "")
                                                or str(ROOT)})
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == \
        "['celery.backends.redis', 'kombu.transport.redis']"
