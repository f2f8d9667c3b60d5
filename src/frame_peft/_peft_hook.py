"""Register frame-peft's PEFT method when PEFT is imported, without importing PEFT ourselves.

Importing PEFT costs about two seconds, which ``import frame_peft`` should not pay when PEFT is
never used. If PEFT is already imported, :func:`install` registers at once; otherwise it puts a
finder on ``sys.meta_path`` that, the first time ``peft`` is imported, lets the normal import run
and then calls :func:`frame_peft.peft_method.register`. Either way, after ``import frame_peft``
PEFT's ``get_peft_model`` / ``PeftModel.from_pretrained`` / transformers' ``load_adapter`` know
``FRAME_PEFT``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any


def _register() -> None:
    from . import peft_method

    peft_method.register()


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of every spec found for ``peft`` (availability checks such as
    transformers' ``is_peft_available`` ask for specs they never execute), and leaves
    ``sys.meta_path`` once one of them has run and registered."""

    _searching = False

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != "peft" or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(name)  # the normal finders (we answer None now)
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def install() -> None:
    """Register now if PEFT is imported, else when it is (once)."""
    if "peft" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterPeftImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())
