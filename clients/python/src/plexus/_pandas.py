"""pandas, imported on first use: ``import plexus`` and a first count need no pandas.

pandas takes most of a second to import; a script that only counts, or a
benchmark of the time to a first answer, should not pay for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class _Lazy(ModuleType):
    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module("pandas")
        return getattr(module, name)


if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
else:
    pd = _Lazy("pandas")

__all__ = ["pd"]
