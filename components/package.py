"""lockstep's package name and version: the plugin's, its schema's and every resource's it serves.

The version is pyproject.toml's, read from the installed `lockstep` distribution (the repository's
.venv, or the wheel in `make plugin`'s archive). Resources register with it, so the engine runs the
plugin of that version (`pulumi:providers:lockstep::default_<version>`), not whichever is newest.
"""

from __future__ import annotations

import functools
import importlib.metadata

PACKAGE = "lockstep"


@functools.cache
def package_version() -> str:
    return importlib.metadata.version(PACKAGE)
