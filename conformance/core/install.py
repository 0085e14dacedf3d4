"""Install commands that work for how bnconform itself was installed.

The catalogue states each adapter's install command for the package (`pip install "bnconform[torch]"`). From a
checkout (an editable install, or the repository on sys.path) that name resolves nowhere: the extra must be
installed from the checkout, `pip install -e ".[torch]"` (run in the repository root; the path is spelt out
when the current directory is elsewhere). Imports no framework.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PACKAGE = re.compile(r'pip install "bnconform\[([^\]]+)\]"')


def from_checkout() -> bool:
    """bnconform runs from a source tree (its pyproject.toml next to the package), not from an installed wheel."""
    return (ROOT / "pyproject.toml").is_file() and (ROOT / "conformance").is_dir()


def hint(command: str) -> str:
    """`command` with every `pip install "bnconform[X]"` made valid for this installation."""
    if not from_checkout():
        return command
    here = Path.cwd().resolve() == ROOT
    target = "." if here else os.path.relpath(ROOT) if not os.path.isabs(os.path.relpath(ROOT)) else str(ROOT)
    return _PACKAGE.sub(lambda m: f'pip install -e "{target}[{m.group(1)}]"', command)
