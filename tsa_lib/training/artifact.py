"""The model artifact: a versioned folder that loads without unpickling anything.

    <artifacts>/models/<model_name>/<version>/
        model.safetensors     weights (safetensors)
        model_config.json     ModelConfig (validated again on load)
        encoders.json         the encoders the examples were built with
        metrics.json          train/validation loss, ROC AUC, AP, recall at 1% FPR per epoch
        manifest.json         format, versions, data table + Delta version, windows, code commit, suite config
    <artifacts>/models/<model_name>/LATEST   -> the newest version's folder name
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from tsa_lib.config import PROJECT_ROOT
from tsa_lib.errors import ArtifactError
from tsa_lib.features.encoders import Encoders, encoders_from_json
from tsa_lib.models.config import DataSizes, ModelConfig, model_config_from_dict
from tsa_lib.models.factory import build_model

log = logging.getLogger(__name__)

FORMAT = "tsa-model/1"
FILES = ("model.safetensors", "model_config.json", "encoders.json", "metrics.json", "manifest.json")



@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    config: ModelConfig
    encoders: Encoders
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def name(self) -> str:
        return str(self.manifest["model_name"])


def code_commit() -> str:
    """The code's git commit (or $TSA_CODE_COMMIT, or 'unknown' outside a checkout)."""
    if os.environ.get("TSA_CODE_COMMIT"):
        return os.environ["TSA_CODE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_model_version(now: Optional[dt.datetime] = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return "v" + now.strftime("%Y%m%dT%H%M%S")


def save_artifact(folder: Path, model: torch.nn.Module, cfg: ModelConfig, enc: Encoders,
                  metrics: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Write the artifact folder atomically (a temp folder renamed into place) and update LATEST."""
    from safetensors.torch import save_model

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "model_config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    (tmp / "encoders.json").write_text(json.dumps(enc.to_json(), indent=1, sort_keys=True))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
    (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, **manifest}, indent=1, sort_keys=True,
                                                  default=str))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    (folder.parent / "LATEST").write_text(folder.name + "\n")
    log.info("saved model artifact %s", folder)
    return folder


def artifact_of_run_date(models_folder: str | Path, run_date: dt.date) -> Path:
    """The newest complete artifact in ``models_folder`` trained for ``run_date`` (manifest ``run_date``)."""
    folder = Path(models_folder)
    found = []
    for man in sorted(folder.glob("*/manifest.json")) if folder.is_dir() else []:
        try:
            data = json.loads(man.read_text())
        except json.JSONDecodeError:
            continue
        if data.get("run_date") == run_date.isoformat() and all((man.parent / f).is_file() for f in FILES):
            found.append(man.parent)
    if not found:
        raise ArtifactError(f"no model artifact trained for run date {run_date} in {str(folder)!r}: run "
                            f"jobs/train.py --run-date {run_date} first")
    return found[-1]


def resolve_artifact(path: str | Path) -> Path:
    """An artifact folder, or a model folder holding LATEST."""
    p = Path(path)
    if (p / "LATEST").is_file() and not (p / "manifest.json").is_file():
        p = p / (p / "LATEST").read_text().strip()
    if not p.is_dir():
        raise ArtifactError(f"model artifact {str(p)!r} does not exist: train one with jobs/train.py")
    missing = [f for f in FILES if not (p / f).is_file()]
    if missing:
        raise ArtifactError(f"model artifact {str(p)!r} is incomplete: missing {missing}")
    return p


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load weights (safetensors) + configs (JSON): nothing is unpickled."""
    from safetensors.torch import load_model

    p = resolve_artifact(path)
    try:
        manifest = json.loads((p / "manifest.json").read_text())
        cfg = model_config_from_dict(json.loads((p / "model_config.json").read_text()))
        enc = encoders_from_json(json.loads((p / "encoders.json").read_text()), where=str(p / "encoders.json"))
        metrics = json.loads((p / "metrics.json").read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"model artifact {str(p)!r}: a JSON file is corrupt: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"model artifact {str(p)!r}: format {manifest.get('format')!r} is not {FORMAT!r}")
    check_compatible(cfg, enc, str(p))
    model = build_model(cfg)
    weights = p / "model.safetensors"
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (RuntimeError, OSError) as e:
        raise ArtifactError(f"model artifact {str(p)!r}: weights do not match the model config: {e}") from e
    except Exception as e:   # safetensors' own error for a truncated or corrupt file
        raise ArtifactError(f"model artifact {str(p)!r}: {str(weights)!r} is not a readable safetensors file "
                            f"({type(e).__name__}: {e})") from e
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"model artifact {str(p)!r}: tensor {name!r} holds "
                                f"{int((~torch.isfinite(t)).sum())} non-finite value(s); refusing to score with it")
    model.eval()
    return LoadedModel(model=model.to(device), config=cfg, encoders=enc, manifest=manifest, metrics=metrics, path=p)


def check_compatible(cfg: ModelConfig, enc: Encoders, where: str) -> None:
    """The model's input sizes must be what the encoders produce."""
    have, want = dataclasses.asdict(cfg.sizes()), dataclasses.asdict(DataSizes.of(enc))
    bad = {k: (have[k], v) for k, v in want.items() if have[k] != v}
    if bad:
        raise ArtifactError(f"{where}: model config and encoders disagree: "
                            + ", ".join(f"{k} model={a} encoders={b}" for k, (a, b) in bad.items()))
