"""The MLflow pyfunc of a TSA model artifact, logged as MLflow "models from code".

``tsa_lib.tracking`` logs this file as the model's code and the safetensors artifact folder
as its artifact ``tsa_artifact``; nothing is pickled.  Loading the model
(``mlflow.pyfunc.load_model("models:/tsa_two_seq@champion")``) runs this file, which
imports the installed ``tsa_lib``, and ``load_context`` reads the artifact with
``load_artifact`` (safetensors weights, JSON configs and encoders).

``predict`` takes a pandas DataFrame with the examples columns ``UDF_COLUMNS`` (the
``examples`` table's columns, as the scoring UDF) and returns P(fraud) per row.  Without
those names (``mlflow.pyfunc.spark_udf`` on a model without signature names columns
"0".."8") exactly nine columns are taken in ``UDF_COLUMNS`` order.
"""

from __future__ import annotations

from typing import Any, Optional

import mlflow
import numpy as np
import pandas as pd

from tsa_lib.tracking import ARTIFACT_KEY

DEFAULT_BATCH_SIZE = 1024


class TsaPyfunc(mlflow.pyfunc.PythonModel):
    """P(fraud) of examples-shaped rows with the model of the ``tsa_artifact`` folder."""

    def load_context(self, context: Any) -> None:
        import torch

        from tsa_lib.training.artifact import load_artifact

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = load_artifact(context.artifacts[ARTIFACT_KEY], device=device)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None
                ) -> np.ndarray:
        from tsa_lib.scoring.predict import predict_scores
        from tsa_lib.scoring.udf import UDF_COLUMNS, UdfInputError, to_model_batch

        if not isinstance(model_input, pd.DataFrame):
            raise UdfInputError(f"the TSA pyfunc takes a pandas DataFrame with columns {list(UDF_COLUMNS)}, "
                                f"got {type(model_input).__name__}")
        names = [str(c) for c in model_input.columns]
        if all(c in names for c in UDF_COLUMNS):
            cols = tuple(model_input[c] for c in UDF_COLUMNS)
        elif len(names) == len(UDF_COLUMNS):
            cols = tuple(model_input.iloc[:, i] for i in range(len(UDF_COLUMNS)))
        else:
            raise UdfInputError(f"the TSA pyfunc needs columns {list(UDF_COLUMNS)}; missing "
                                f"{[c for c in UDF_COLUMNS if c not in names]} (got {names})")
        batch_size = int((params or {}).get("batch_size") or DEFAULT_BATCH_SIZE)
        return predict_scores(self.loaded, to_model_batch(cols, self.loaded.encoders), batch_size)


mlflow.models.set_model(TsaPyfunc())
