"""Value checks on tensors that never stall an accelerator.

On CPU a check reads the flag and raises a ``ValueError`` (a host read costs nothing there). On
an accelerator it becomes ``torch._assert_async``: the kernel fails later without the host ever
waiting for the device. Under ``torch.compile`` tracing it is skipped (eager calls check).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_all(ok: torch.Tensor, message: str | Callable[[], str]) -> None:
    """Raise ``ValueError(message)`` unless every element of the bool tensor ``ok`` is true.

    ``message`` may be a callable, called only on failure (it may read tensors to the host).
    """
    if torch.compiler.is_compiling():
        return
    ok = ok.all()
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message() if callable(message) else message)
    else:
        torch._assert_async(ok, message if isinstance(message, str) else "invalid tensor value")
