"""Experiment trackers through accelerate: TrainConfig.report_to, its deprecated alias
``tensorboard``, missing packages, real TensorBoard files and (when installed) a local MLflow store.

W&B and trackio are never started here (they would reach the network); their names are only
validated, and a missing package is simulated by hiding the module from the import system.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings

import pytest

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, frame_config
from frame_peft.training import TrainConfig, Trainer
from frame_peft.training.logging import RunLogger
from frame_peft.training.trackers import REPORT_TO_NAMES

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None
    or importlib.util.find_spec("accelerate") is None,
    reason="the tensorboard and accelerate packages are not installed",
)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=4, lr=1e-2,
        order_lr=1e-2, progress=False, log_every=1, resume=None, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def frame_model():
    model = tiny_llama()
    fp.inject(model, frame_config())
    return model


# -- config ------------------------------------------------------------------------------------


def test_report_to_is_normalised(tmp_path):
    assert config(tmp_path).report_to is None
    assert config(tmp_path, report_to="tensorboard").report_to == ["tensorboard"]
    assert config(tmp_path, report_to="none").report_to == []
    assert config(tmp_path, report_to=["none"]).report_to == []
    assert config(tmp_path, report_to=("mlflow", "wandb", "mlflow")).report_to == [
        "mlflow",
        "wandb",
    ]


@pytest.mark.parametrize(
    "value, match",
    [
        (["tensorbord"], r"unknown tracker\(s\) \['tensorbord'\]; allowed: \['tensorboard'"),
        ("comet_ml", r"allowed: \['tensorboard', 'wandb', 'mlflow', 'trackio', 'none'\]"),
        (["none", "wandb"], "'none' cannot be combined"),
        (True, "must be None, a tracker name or a list"),
        ([1], "must be None, a tracker name or a list"),
    ],
)
def test_report_to_refuses_bad_names(tmp_path, value, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, report_to=value)
    assert set(REPORT_TO_NAMES) == {"tensorboard", "wandb", "mlflow", "trackio", "none"}


def test_tensorboard_flag_is_a_deprecated_alias(tmp_path):
    with pytest.warns(DeprecationWarning, match="tensorboard=False is report_to='none'"):
        off = config(tmp_path, tensorboard=False)
    assert off.report_to == [] and off.tensorboard is None
    with pytest.warns(DeprecationWarning, match="tensorboard is deprecated"):
        on = config(tmp_path, tensorboard=True)
    assert on.report_to is None and on.tensorboard is None
    with pytest.raises(ValueError, match="set report_to only"):
        config(tmp_path, tensorboard=False, report_to=["mlflow"])
    with pytest.raises(ValueError, match="tensorboard must be True, False or None"):
        config(tmp_path, tensorboard="yes")


def test_configs_saved_before_report_to_load_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = config(tmp_path, report_to="none").to_dict()
        assert TrainConfig.from_dict(new).report_to == []
        legacy = {k: v for k, v in new.items() if k != "report_to"}
        assert TrainConfig.from_dict({**legacy, "tensorboard": False}).report_to == []
        assert TrainConfig.from_dict({**legacy, "tensorboard": True}).report_to is None


# -- missing packages --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_a_requested_tracker_that_is_not_installed_fails_before_training(
    tmp_path, monkeypatch, name
):
    monkeypatch.setitem(sys.modules, name, None)  # find_spec and import now fail
    trainer = Trainer(frame_model(), RandomTokens(8), config(tmp_path, report_to=[name]))
    with pytest.raises(
        ImportError, match=rf"needs the package\(s\) \['{name}'\].*pip install {name}"
    ):
        trainer.train()
    assert not (tmp_path / "run" / "log.jsonl").exists()
    # every rank raises alike (ranks > 0 build a disabled logger), so none waits for the others
    with pytest.raises(ImportError, match=f"pip install {name}"):
        RunLogger(tmp_path / "other", 2, enabled=False, report_to=[name])


def test_missing_tensorboard_named_explicitly_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        RunLogger(tmp_path, 2, progress=False, report_to=["tensorboard"])


# -- TensorBoard -------------------------------------------------------------------------------


@needs_tensorboard
def test_tensorboard_gets_the_config_and_every_numeric_key(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, report_to="tensorboard", max_grad_norm=math.inf)
    logger = RunLogger(
        cfg.output_dir, 2, progress=False, report_to=cfg.report_to, config=cfg.to_dict()
    )
    for step, loss in ((1, 2.5), (2, float("nan"))):
        record = {"step": step, "loss": loss, "lr": 1e-3 * step, "grad_norm_main": 0.5,
                  "aux/balance": 0.1, "orders/mean": 1.5, "eval/acc": 0.25, "ok": True,
                  "note": "text"}  # fmt: skip
        logger.log(record)
    logger.close()
    assert logger.trackers == []  # finished
    logger.close()  # a second close is harmless
    tb = tmp_path / "run" / "tensorboard"
    events = list(tb.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {
        "train/loss",
        "train/lr",
        "train/grad_norm_main",
        "aux/balance",
        "orders/mean",
        "eval/acc",
    }  # fmt: skip  (no bools, no strings, no step)
    assert [(e.step, e.value) for e in acc.Scalars("train/lr")] == [
        (1, pytest.approx(1e-3)),
        (2, pytest.approx(2e-3)),
    ]
    assert math.isnan(acc.Scalars("train/loss")[1].value)  # divergence stays visible
    hparams = list(tb.glob("*/hparams.yml"))
    assert len(hparams) == 1
    text = hparams[0].read_text()
    assert "report_to: tensorboard" in text and "max_grad_norm: inf" in text
    assert "tensorboard: " not in text.replace("report_to: tensorboard", "")


@needs_tensorboard
def test_only_the_main_process_writes(tmp_path):
    logger = RunLogger(tmp_path / "run", 2, enabled=False, report_to=["tensorboard"], config={})
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert logger.trackers == [] and not (tmp_path / "run").exists()


@needs_tensorboard
def test_default_reports_to_tensorboard_and_none_writes_no_events(tmp_path):
    Trainer(frame_model(), RandomTokens(8), config(tmp_path)).train()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    Trainer(frame_model(), RandomTokens(8), config(tmp_path / "b", report_to="none")).train()
    assert (tmp_path / "b" / "run" / "log.jsonl").is_file()
    assert not (tmp_path / "b" / "run" / "tensorboard").exists()


# -- MLflow (local file store) -----------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="the mlflow package is not installed"
)
def test_mlflow_local_store(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.x: file store opt-in
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "frame-peft-test")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    cfg = config(tmp_path, report_to="mlflow", max_steps=3, log_every=1)
    Trainer(frame_model(), RandomTokens(16), cfg).train()
    assert mlflow.active_run() is None  # finished at the end of train()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("frame-peft-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lr"] == "0.01" and run.data.params["report_to"] == "mlflow"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert {"orders/mean", "train/grad_norm_main", "train/lr"} <= set(run.data.metrics)
