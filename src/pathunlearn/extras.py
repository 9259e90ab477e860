"""The optional engines (``pip install 'pathunlearn[EXTRA]'``): Ray, MLflow, W&B, TensorBoard.

None of them is a dependency of the package and none is imported until a run asks for it, so
``import pathunlearn.cli`` and ``pathunlearn --help`` stay light. Asking for one that is not
installed is one line naming the config key and the install command.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from pathunlearn.errors import UserError


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken sys.modules entry
        return False


def missing_line(module: str, key: str, extra: str) -> str:
    """The one line for a missing engine."""
    return (f"{key}: needs the `{module}` package, which is not installed: "
            f"pip install 'pathunlearn[{extra}]'")


def require(module: str, key: str, extra: str) -> ModuleType:
    """``import module``, or a UserError naming ``key`` and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(missing_line(module, key, extra)) from None
