"""Hides what a GPU training node lacks (Spark, Delta Lake for Spark, MLflow) from ``SMOKE=1 bash
bench/gpu_check.sh``, so that an import a bench or the training job would fail on there fails here too."""

import importlib.abc
import sys

_ABSENT = ("pyspark", "py4j", "delta", "mlflow")


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        top = name.split(".")[0]
        if top in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden, as on a GPU node)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
