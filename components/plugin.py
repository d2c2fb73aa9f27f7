"""The lockstep plugin: the `ModelRelease` component and lockstep's custom resources, for any language.

The engine starts `components/pulumi-resource-lockstep` (the repository's .venv python running
`main()`), or the Python language host runs components/__main__.py (next to PulumiPlugin.yaml):
both serve the same provider (components/providers/provider.py). The component's schema is
inferred from ModelRelease's type annotations (components/release_args.py); the custom resources'
(Index, Cutover, DerivedRepair, Check and the embedded leaves) come from their handlers.

`python -m components.plugin --schema [FILE]` prints (or writes) the schema the host serves; the
checked-in schema.json is that output (`make schema`), and tests/test_plugin.py fails when they differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pulumi
from pulumi.provider.experimental.component import ComponentProvider

from components.model_release import ModelRelease
from components.package import PACKAGE, package_version
from components.providers.provider import package_schema, serve

# The public components. ArtifactStore and EndpointSlot are parts of a ModelRelease, not a product.
COMPONENTS: list[type[pulumi.ComponentResource]] = [ModelRelease]


def build_provider() -> ComponentProvider:
    """What component_provider_host constructs (same arguments), for tools and tests."""
    return ComponentProvider(COMPONENTS, PACKAGE, None, package_version())


def schema() -> dict:
    return package_schema(json.loads(build_provider().schema or "{}"))


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    serve(sys.argv[1:], package_version(), build_provider())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--schema"]:
        target = sys.argv[2] if len(sys.argv) > 2 else None
        if target:
            Path(target).write_text(schema_text(), encoding="utf-8")
        else:
            sys.stdout.write(schema_text())
    else:
        main()
