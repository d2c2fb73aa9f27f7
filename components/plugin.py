"""The lockstep component package: hosts `lockstep:index:ModelRelease` for programs in any language.

The Pulumi language host runs components/__main__.py (next to components/PulumiPlugin.yaml), which
calls `main()`: `component_provider_host` infers the package schema from ModelRelease's type
annotations (components/release_args.py) and serves `construct` over gRPC to the engine.

`python -m components.plugin --schema [FILE]` prints (or writes) the schema the host serves; the
checked-in schema.json is that output (`make schema`), and tests/test_plugin.py fails when they differ.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

from pulumi.provider.experimental import component_provider_host
from pulumi.provider.experimental.component import ComponentProvider

from components.model_release import ModelRelease

PACKAGE = "lockstep"
# The public components. ArtifactStore and EndpointSlot are parts of a ModelRelease, not a product.
COMPONENTS = [ModelRelease]


def package_version() -> str:
    """The version of the installed `lockstep` distribution (pyproject.toml), also the schema's."""
    return importlib.metadata.version(PACKAGE)


def build_provider() -> ComponentProvider:
    """What component_provider_host constructs (same arguments), for tools and tests."""
    return ComponentProvider(COMPONENTS, PACKAGE, None, package_version())


def schema() -> dict:
    return json.loads(build_provider().schema or "{}")


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    component_provider_host(COMPONENTS, PACKAGE, version=package_version())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--schema"]:
        target = sys.argv[2] if len(sys.argv) > 2 else None
        if target:
            Path(target).write_text(schema_text(), encoding="utf-8")
        else:
            sys.stdout.write(schema_text())
    else:
        main()
