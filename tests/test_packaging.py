"""The wheel that clusters run carries what a job needs: the model presets as package data, and
paths that never point into the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tsa_lib.config import PROJECT_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), str(PROJECT_ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("tsa_lib-*.whl")
    return whl


def test_wheel_carries_the_presets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("tiny", "small", "seed"):
        assert f"tsa_lib/models/presets/{preset}.yaml" in names
    assert "tsa_lib/registry/models_table.py" in names and "tsa_lib/py.typed" in names


def test_presets_load_from_the_zipped_wheel_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """As on an executor or a cluster driver: tsa_lib imported from the wheel itself (zipimport),
    the working directory elsewhere, no checkout on the path."""
    code = ("import json, tsa_lib\n"
            "from tsa_lib.models.config import available_presets, load_model_preset\n"
            "from tsa_lib.config import StorageConfig\n"
            "cfg = load_model_preset('seed')\n"
            "print(json.dumps({'file': tsa_lib.__file__, 'presets': available_presets(), 'dim': cfg.dim_embed,\n"
            "                  'artifacts': str(StorageConfig().artifacts_path())}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TSA_HOME")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(wheel)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(wheel)) and out["presets"] == ["seed", "small", "tiny"] and out["dim"] == 128
    # relative storage paths resolve against the working directory, never inside the package
    assert out["artifacts"] == str(tmp_path.resolve() / "warehouse" / "artifacts")
