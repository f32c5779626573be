"""Import an asset builder from tools/ (plain scripts, not a package) for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """The module tools/NAME.py, imported once under the name tools.NAME."""
    module_name = f"tools.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = TOOLS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the asset builders live in tools/ (see tools/*.py)")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
