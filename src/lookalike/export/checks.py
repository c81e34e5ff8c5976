"""Export's data check, before any work: the model's fit to the publisher table (the settings are
checked by their dataclasses, export/config.py)."""

from __future__ import annotations

import pyarrow as pa

from lookalike.data.features import FeatureSpec, is_list, is_number
from lookalike.errors import DataError


def check_model_fits_publisher(spec: FeatureSpec, schema: pa.Schema, path: str, model_uri: str) -> None:
    """The publisher table must have every column the model was trained on, with a usable type."""
    for name in spec.columns:
        if name not in schema.names:
            raise DataError(
                f"publisher data '{path}' has no column '{name}', which model '{model_uri}' was trained on: "
                "export with the publisher table the model was trained on"
            )
    for feature in spec.numeric:
        t = schema.field(feature.name).type
        if not is_number(t):
            raise DataError(f"publisher data '{path}': column '{feature.name}' has type {t} but model '{model_uri}' reads it as numeric")
    for multi in spec.multi_categorical:
        t = schema.field(multi.name).type
        if not is_list(t):
            raise DataError(f"publisher data '{path}': column '{multi.name}' has type {t} but model '{model_uri}' reads it as a list")
    for cat in spec.categorical:
        t = schema.field(cat.name).type
        if is_list(t) or pa.types.is_struct(t):
            raise DataError(f"publisher data '{path}': column '{cat.name}' has type {t} but model '{model_uri}' reads it as categorical")
