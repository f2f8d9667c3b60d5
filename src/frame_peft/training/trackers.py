"""Experiment trackers of a :class:`frame_peft.training.Trainer` run, through ``accelerate``.

``TrainConfig.report_to`` names the trackers (:data:`TRACKERS`); this module validates the names,
checks that their packages are installed, and drives ``accelerate.tracking``'s tracker classes
directly (our loop has no ``Accelerator``). Trackers are built on rank 0 only and with
``main_process_only = False`` on the instance, so accelerate never creates a ``PartialState``
(which would look at the launcher's environment and process group on its own, pick a device and
set thread counts: global state that a later ``Accelerator(cpu=True)`` in the same process could
not change). accelerate's own debug logging inside the trackers refuses to run without that state,
so every tracker call goes through :func:`_calls` which, only while no ``PartialState`` exists,
routes ``accelerate.tracking``'s logger to the plain ``logging`` logger of the same name.

* ``tensorboard``: ``<output_dir>/tensorboard/`` (``accelerate.tracking.TensorBoardTracker``).
* ``wandb``: project ``$WANDB_PROJECT`` (default ``frame-peft``), run name = the output
  directory's name; everything else (entity, mode, offline) from wandb's own environment variables.
* ``mlflow``: experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``frame-peft``), run name = the
  output directory's name, tracking URI from ``$MLFLOW_TRACKING_URI`` (mlflow's default otherwise).
* ``trackio``: project ``$TRACKIO_PROJECT`` (default ``frame-peft``), run name as above.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO_NAMES = (*TRACKERS, "none")
# pip package of each tracker (accelerate itself is needed by all of them).
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}
DEFAULT_PROJECT = "frame-peft"


def normalize_report_to(value: Any) -> list[str] | None:
    """Validate ``TrainConfig.report_to`` and return it as a list without duplicates.

    ``None`` (the default: TensorBoard when installed) stays ``None``; a single name may be given
    as a string; ``"none"`` (alone) means no tracker, i.e. ``[]``.
    """
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            "TrainConfig.report_to must be None, a tracker name or a list of names from "
            f"{list(REPORT_TO_NAMES)}, got {value!r}"
        )
    unknown = [n for n in names if n not in REPORT_TO_NAMES]
    if unknown:
        raise ValueError(
            f"TrainConfig.report_to: unknown tracker(s) {unknown}; allowed: {list(REPORT_TO_NAMES)}"
        )
    if "none" in names:
        if len(set(names)) > 1:
            raise ValueError(
                "TrainConfig.report_to: 'none' cannot be combined with other trackers, got "
                f"{value!r}"
            )
        return []
    return list(dict.fromkeys(names))


def _importable(name: str) -> bool:
    if name == "tensorboard":  # what TensorBoardTracker imports (a real import: cheap and exact)
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            return False
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(names: Iterable[str]) -> list[str]:
    """The pip packages that trackers ``names`` need and that are not importable."""
    missing = [] if _importable("accelerate") else ["accelerate"]
    return missing + [PACKAGES[n] for n in names if not _importable(n)]


def resolve_report_to(report_to: list[str] | None) -> tuple[list[str], str | None]:
    """The trackers to use and, for the default (``None``), a warning when TensorBoard is missing.

    An explicit list whose packages are missing raises ``ImportError`` naming them; the default
    falls back to ``log.jsonl`` only, with the returned warning (printed once by the caller).
    """
    if report_to is None:
        missing = missing_packages(["tensorboard"])
        if missing:
            return [], (
                f"TensorBoard logging (the default of TrainConfig.report_to) needs the "
                f"{' and '.join(missing)} package(s), which are not installed "
                f"(pip install {' '.join(missing)}); writing log.jsonl only. Set report_to='none' "
                "to silence this."
            )
        return ["tensorboard"], None
    missing = missing_packages(report_to)
    if missing:
        raise ImportError(
            f"TrainConfig.report_to={report_to} needs the package(s) {missing}, which are not "
            f"installed: pip install {' '.join(missing)} (or drop the tracker from report_to)"
        )
    return list(report_to), None


class _PlainLogger(logging.LoggerAdapter):
    """accelerate's ``MultiProcessAdapter`` API (``warning_once``) on a plain logger."""

    @functools.lru_cache(None)  # noqa: B019 - one instance per call site, like accelerate's
    def warning_once(self, *args: Any, **kwargs: Any) -> None:
        self.warning(*args, **kwargs)


@contextlib.contextmanager
def _calls() -> Iterator[None]:
    """Run tracker methods without an accelerate ``PartialState`` (see the module docstring)."""
    import accelerate.tracking
    from accelerate.state import PartialState

    if PartialState._shared_state:  # the user has an Accelerator: its logger works as is
        yield
        return
    original = accelerate.tracking.logger
    accelerate.tracking.logger = _PlainLogger(logging.getLogger("accelerate.tracking"), {})
    try:
        yield
    finally:
        accelerate.tracking.logger = original


def call_all(trackers: list[Any], method: str, *args: Any, **kwargs: Any) -> None:
    """Call ``tracker.<method>(*args, **kwargs)`` on every tracker."""
    if not trackers:
        return  # without trackers accelerate need not be installed
    with _calls():
        for tracker in trackers:
            getattr(tracker, method)(*args, **kwargs)


def build_trackers(names: list[str], output_dir: Path) -> list[Any]:
    """Create and start accelerate trackers ``names`` for a run writing into ``output_dir``."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

    run_name = output_dir.resolve().name
    trackers: list[Any] = []
    for name in names:
        if name == "tensorboard":
            tracker = TensorBoardTracker("tensorboard", output_dir)  # -> output_dir/tensorboard
        elif name == "wandb":
            project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
            tracker = WandBTracker(project, name=run_name)
        elif name == "mlflow":
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
            tracker = MLflowTracker(experiment_name=experiment, run_name=run_name)
        elif name == "trackio":
            project = os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT)
            tracker = TrackioTracker(project, name=run_name)
        else:  # normalize_report_to already refused it
            raise ValueError(f"unknown tracker {name!r}; allowed: {list(TRACKERS)}")
        tracker.main_process_only = False  # we only build trackers on rank 0: no PartialState
        try:
            with _calls():
                tracker.start()
        except BaseException:
            finish_trackers(trackers)
            raise
        trackers.append(tracker)
    return trackers


def config_params(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """``config`` as flat hyperparameters every tracker accepts (bool/int/float/str): ``None``
    and non-finite numbers become strings, lists are joined with commas."""
    params: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value) or "[]"
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            value = str(value)
        if not isinstance(value, bool | int | float | str):
            value = str(value)
        params[key] = value
    return params


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a ``log.jsonl`` record, tagged ``train/<key>`` (keys that
    already have a ``/``, such as ``eval/...``, ``aux/...``, ``orders/...``, keep theirs)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key if "/" in key else f"train/{key}"] = value
    return out


def finish_trackers(trackers: list[Any]) -> None:
    """Finish every tracker (each one even if another fails; the first error is re-raised)."""
    error: BaseException | None = None
    for tracker in trackers:
        try:
            with _calls():
                tracker.finish()
        except Exception as exc:  # finish the others, then report the first error
            error = error or exc
    trackers.clear()
    if error is not None:
        raise error
