"""Where code lives: the interpreter's libraries, perfkit, its pytest plugin, loaded packages.

The SQL tracker (a statement's call site), the profile on failure (the test's own functions)
and the event-loop watch (the blocking line) each look for "the first frame that is the
user's own"; they share these directories.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig

PERFKIT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
PLUGIN_DIR = os.path.join(os.path.dirname(PERFKIT_DIR.rstrip(os.sep)), "pytest_perfkit") + os.sep


@functools.lru_cache(maxsize=1)
def install_roots() -> tuple[str, ...]:
    """The standard library and site-packages directories (``stdlib``, ``platstdlib``,
    ``purelib``, ``platlib``); cached: ``sysconfig.get_paths()`` costs ~0.1 ms a call."""
    paths = sysconfig.get_paths()
    return (paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"])


def loaded_dirs(*names: str) -> tuple[str, ...]:
    """The package directories of those of ``names`` already imported."""
    found = []
    for name in names:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            found.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(found)


def short_path(path: str, root: str = "") -> str:
    """``path`` as a reader wants it: relative to ``root`` (the project) when under it, else
    from the standard library's or site-packages' directory (``json/encoder.py``)."""
    if root and path.startswith(root + os.sep):
        return path[len(root) + 1:]
    stdlib = install_roots()[0]
    if path.startswith(stdlib + os.sep):
        return path[len(stdlib) + 1:]
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    return path
