"""MLflow pyfunc model (logged "from code"), so a logged model loads with
``mlflow.pyfunc.load_model`` and scores a DataFrame of publisher features
(one column per feature, as in the publisher table) -> one probability column per audience."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from lookalike.data.encode import encode
from lookalike.model.bundle import load_bundle


class LookalikeScorer(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.spec, self.meta = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        table = pa.Table.from_pandas(model_input, preserve_index=False)
        with torch.no_grad():
            scores = torch.sigmoid(self.model(*encode(table, self.spec).tensors())).numpy()
        return pd.DataFrame(scores, columns=self.meta["audiences"], index=model_input.index)


set_model(LookalikeScorer())
