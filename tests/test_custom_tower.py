"""Your own user tower (model.user_tower._target_): it trains under the same DP-SGD, budget and
MLflow run, takes the fused or the per-sample route by its layers, carries its code to export and
serving, and is refused before anything is reserved when DP-SGD cannot train it."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lookalike.data.features import OOV_INDEX, CategoricalFeature, FeatureSpec, MultiCategoricalFeature, NumericFeature
from lookalike.errors import LookalikeError
from lookalike.export.app import CONFIG_DIR
from lookalike.export.app import run as export
from lookalike.model.bundle import load_bundle, save_bundle
from lookalike.model.config import ModelConfig
from lookalike.model.towers import TwoTower
from lookalike.privacy.ledger import Ledger
from lookalike.runtime.tracking import download_bundle, resolve_tracking_uri
from lookalike.training.train import run
from tests.conftest import untouched

ROOT = Path(__file__).resolve().parents[1]
DCN = "examples.dcn_tower.CrossTower"


def logged_run(cfg):
    client = MlflowClient(resolve_tracking_uri(str(cfg.mlflow.tracking_uri)))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])
    return logged


def users(demo_dir: Path, n: int = 8):
    return ds.dataset(demo_dir / "publisher", partitioning="hive").head(n).to_pandas()


@pytest.mark.slow  # among the longest tests: make test runs it, make test-fast skips it
def test_the_dcn_tower_trains_fused_carries_its_code_exports_and_serves(cfg_factory, demo_dir, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lookalike")
    # small_seed_users far above the demo's seed: the rule would replace the built-in tower, not this one
    cfg = cfg_factory(f"model.user_tower._target_={DCN}", "+model.user_tower.cross_layers=3", "trainer.epochs=1", "model.small_seed_users=100000")
    run(cfg)
    logged = logged_run(cfg)
    p, t = logged.data.params, logged.data.tags
    assert p["privacy.grad_sample_mode_used"] == "fused"  # every trainable layer is nn.Linear or nn.Embedding
    assert p["model.user_tower._target_"] == DCN and p["model.user_tower.cross_layers"] == "3"
    assert p["model.input_projection_used"] == "null" and "model.user_tower is set: the rule does not apply" in caplog.text
    assert "DP-SGD per-example gradients: fused" in caplog.text
    entry = Ledger(cfg.ledger.path).entry(int(t["ledger.entry_id"]))
    assert entry["status"] == "spent" and 0 < entry["spent_epsilon"] <= entry["reserved_epsilon"]

    # The bundle records the tower and its arguments; the MLflow model carries the package's code.
    bundle = download_bundle(t["lookalike.model_uri"])
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["model"]["user_tower"] == {"_target_": DCN, "cross_layers": 3}
    assert (bundle.parent.parent / "code" / "examples" / "dcn_tower.py").read_text() == (ROOT / "examples" / "dcn_tower.py").read_text()

    # lookalike-export's code path, with the repository off sys.path and the module forgotten:
    # the tower comes from the code the model carries.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)
    target = tmp_path / "segments"
    overrides = [
        f"paths.output_dir={tmp_path / 'out'}",
        f"data.publisher_path={demo_dir / 'publisher'}",
        f"data.seed_path={demo_dir / 'seed.jsonl'}",
        f"export.model={logged.info.run_id}",
        f"export.output_dir={target}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export(compose(config_name="export", overrides=overrides))
    loaded = Path(str(sys.modules["examples.dcn_tower"].__file__))
    assert loaded.parts[-3:] == ("code", "examples", "dcn_tower.py") and not loaded.is_relative_to(ROOT)  # the model's copy
    rows = pq.read_table(target / "audience=luxury").to_pylist()
    scores = np.array([r["score"] for r in rows])
    assert len(rows) > 100 and np.isfinite(scores).all() and scores.std() > 0

    # MLflow serving in a fresh process, outside the repository, with only the package on the path.
    script = (
        "import json, sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
        "m = mlflow.pyfunc.load_model(sys.argv[2]); print(json.dumps(m.predict(pd.read_pickle(sys.argv[3])).to_numpy().tolist()))"
    )
    # users the export put in the segment, so the served and exported scores can be compared
    in_segment = pa.array([r["user_id"] for r in rows[:8]])
    sample = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table(filter=pc.field("user_id").isin(in_segment)).to_pandas()
    sample.to_pickle(tmp_path / "users.pkl")
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-c", script, resolve_tracking_uri(str(cfg.mlflow.tracking_uri)), t["lookalike.model_uri"], str(tmp_path / "users.pkl")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = np.array(json.loads(proc.stdout.splitlines()[-1]))
    assert served.shape == (8, 2) and np.isfinite(served).all() and ((served > 0) & (served < 1)).all()
    assert len(np.unique(served.round(6))) > 2  # users score differently
    # the export scored the same model: a user in the segment gets the served score
    by_id = {r["user_id"]: r["score"] for r in rows}
    assert all(math.isclose(served[i, 0], by_id[uid], rel_tol=1e-5) for i, uid in enumerate(sample["user_id"]))


def test_a_layer_the_fused_clipping_does_not_cover_takes_the_per_sample_route(cfg_factory, demo_dir, caplog):
    caplog.set_level(logging.INFO, logger="lookalike")
    cfg = cfg_factory("model.user_tower._target_=tests.towers.GainCrossTower", "trainer.epochs=1")
    run(cfg)
    logged = logged_run(cfg)
    assert logged.data.params["privacy.grad_sample_mode_used"] == "hooks"
    assert "DP-SGD per-example gradients: hooks (layer 'user_tower.gain' (Gain) is not one the fused clipping covers)" in caplog.text
    model = mlflow.pyfunc.load_model(logged.data.tags["lookalike.model_uri"])
    scores = model.predict(users(demo_dir)).to_numpy()
    assert np.isfinite(scores).all() and scores.std() > 0
    # the raw parameters trained (DP-SGD noise alone moves them off their start)
    weights = model.unwrap_python_model().model.user_tower.gain
    assert not np.allclose(weights.scale.detach().numpy(), 1.0) and not np.allclose(weights.shift.detach().numpy(), 0.0)


REFUSALS = {
    "batch norm": (
        ["model.user_tower._target_=tests.towers.BatchNormTower"],
        r"config 'model.user_tower': layer 'user_tower.norm' \(BatchNorm1d\) is not compatible with DP-SGD: .*use LayerNorm or GroupNorm",
    ),
    "batch mixing by hand": (
        ["model.user_tower._target_=tests.towers.CenteredTower"],
        "config 'model.user_tower': one user's embedding depends on the other users",
    ),
    "wrong width": (
        ["model.user_tower._target_=tests.towers.WideTower"],
        r"forward returned \[3, 9\] for 3 users: it must return \[batch, model.output_dim\] = \[3, 8\]",
    ),
    "weight outside its forward": (
        ["model.user_tower._target_=tests.towers.OutsideTower"],
        "config 'model.user_tower': weight 'user_tower.gain.scale' gets no per-example gradient from Opacus",
    ),
    "missing module": (
        ["model.user_tower._target_=my_towers.CrossTower"],
        r"config 'model.user_tower': 'my_towers.CrossTower' cannot be built \(.*No module named 'my_towers'",
    ),
    "bad argument": ([f"model.user_tower._target_={DCN}", "+model.user_tower.depth=3"], "config 'model.user_tower': .*unexpected keyword argument 'depth'"),
    "blocklisted target": (
        ["model.user_tower._target_=os.system"],
        r"config 'model.user_tower': 'os.system' cannot be built \(Target 'os.system' is blocklisted",
    ),
    "not a dotted path": (["model.user_tower._target_=CrossTower"], "config 'model.user_tower._target_': 'CrossTower' is not a dotted path"),
    "package's argument": (
        [f"model.user_tower._target_={DCN}", "+model.user_tower.output_dim=4"],
        "config 'model.user_tower.output_dim': is given by the package",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_tower_dp_sgd_cannot_train_is_refused_before_anything_is_reserved(case, cfg_factory, tmp_path):
    overrides, message = REFUSALS[case]
    out = tmp_path / "out"
    cfg = cfg_factory(*overrides, "trainer.epochs=1", out=out)
    with pytest.raises(LookalikeError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    untouched(out, cfg.ledger.path)  # no ledger charge, no MLflow run, no output


def test_a_model_whose_tower_module_is_missing_names_it_in_one_line(tmp_path):
    spec = FeatureSpec(
        "user_id",
        [NumericFeature("age", 40.0, 10.0, False)],
        [CategoricalFeature("device", ["ios", "web"])],
        [MultiCategoricalFeature("interests", ["a", "b", "c"], 4)],
    )
    model = TwoTower(spec, 2, ModelConfig(output_dim=6, user_tower={"_target_": DCN, "cross_layers": 2})).eval()
    folder = save_bundle(tmp_path / "bundle", model, spec, ["luxury", "sports"])
    inputs = [torch.tensor([[0.5], [-1.0]]), torch.tensor([[2], [OOV_INDEX]]), torch.tensor([[2, 3, 0, 0], [4, 0, 0, 0]])]
    loaded, _, meta = load_bundle(folder)
    assert torch.equal(loaded(*inputs), model(*inputs)) and meta["model"]["user_tower"]["cross_layers"] == 2
    meta["model"]["user_tower"]["_target_"] = "gone_towers.dcn.CrossTower"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        LookalikeError, match=r"needs module 'gone_towers.dcn' for its user tower \(gone_towers.dcn.CrossTower\), which cannot be imported"
    ) as err:
        load_bundle(folder)
    assert "\n" not in str(err.value) and "No module named 'gone_towers'" in str(err.value)
