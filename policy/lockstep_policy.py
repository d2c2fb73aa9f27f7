"""CrossGuard rules for production stacks: everything derived from a model version names it exactly.

A floating tag (`latest`, `stable`, …) or a missing sha256 in prod means nobody can say which
artifact built an index or serves an endpoint — and a rollback then has nothing to return to.
The rules read what components/ declares:

- lockstep's `Index` and `Cutover` resources carry the catalog entry's fields as typed inputs
  (`version`, `artifactSha256`, `dimension`, …: one fact each, camelCase);
- SageMaker `Model`, `EndpointConfiguration` and `Endpoint` carry the `lockstep:version` tag; the
  model's `modelDataUrl` is the content-addressed key `models/<model>/<version>/<sha256>/model.tar.gz`.

Which stacks are production comes from the URN (`urn:pulumi:<stack>::…`) matched against the
policy's `stacks` setting (a regular expression, default `prod`, `production`, `prod-eu`, …).
The validate functions take duck-typed arguments (`resource_type`, `props`, `urn`, `get_config()`),
so tests call them directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pulumi_policy import EnforcementLevel, PolicyConfigSchema, ResourceValidationPolicy

from lockstep import config
from lockstep.errors import ConfigError

INDEX_TYPE = "lockstep:index:Index"
CUTOVER_TYPE = "lockstep:index:Cutover"
SAGEMAKER_MODEL_TYPE = "aws:sagemaker/model:Model"
SAGEMAKER_ENDPOINT_TYPES = (
    "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
    "aws:sagemaker/endpoint:Endpoint",
)
VERSION_TAG = "lockstep:version"
# Optional on endpoints (they carry no artifact URL); when absent the catalog supplies the sha256.
SHA_TAG = "lockstep:artifactSha256"
ARTIFACT_URL = re.compile(
    r"^s3://(?P<bucket>[^/]+)/models/(?P<model>[^/]+)/(?P<version>[^/]+)/(?P<sha>[^/]+)/model\.tar\.gz$"
)
DEFAULT_PROD_STACKS = r"prod(uction)?([-_.].+)?"

CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "stacks": {
            "type": "string",
            "description": "Regular expression (full match) of the stack names the rule applies to.",
        },
        "stacksDir": {
            "type": "string",
            "description": "Directory holding catalog.yaml (default: the project's stacks/).",
        },
    }
)

Report = Callable[..., None]


# ------------------------------------------------------------------------------------ scope


def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` → `<stack>`."""
    head = urn.split("::", 1)[0]
    return head.removeprefix("urn:pulumi:") if head.startswith("urn:pulumi:") else ""


def applies_to(args) -> bool:
    pattern = (args.get_config() or {}).get("stacks") or DEFAULT_PROD_STACKS
    return re.fullmatch(pattern, stack_of(args.urn)) is not None


@lru_cache(maxsize=8)
def _catalog(stacks_dir: str) -> config.Catalog:
    return config.load_catalog(Path(stacks_dir))


def catalog_for(args) -> config.Catalog | None:
    """The shared catalog, to compare versions and sha256s with.

    None when the pack runs away from the project (no default catalog file); a configured
    `stacksDir` without one, or a catalog that does not validate, raises ConfigError."""
    configured = (args.get_config() or {}).get("stacksDir")
    if not configured and not (config.STACKS_DIR / config.CATALOG_FILE).exists():
        return None
    return _catalog(str(configured or config.STACKS_DIR))


# ------------------------------------------------------------------------------------ checks


def version_problem(version: Any, where: str) -> str | None:
    if not isinstance(version, str) or not version:
        return f"{where}: no model version; name an immutable catalog version (e.g. v3)"
    if version.lower() in config.FLOATING_TAGS:
        return f"{where}: {version!r} is a floating tag; pin an immutable catalog version (e.g. v3)"
    if not config.VERSION.match(version):
        return f"{where}: {version!r} is not a catalog version name (letters, digits, '.', '_', '-')"
    return None


def sha_problem(sha: Any, where: str) -> str | None:
    if not isinstance(sha, str) or not config.SHA256.match(sha):
        return f"{where}: {sha!r} is not an artifact sha256 (64 lowercase hex characters)"
    return None


def catalog_problem(catalog: config.Catalog | None, version: str, sha: str, where: str) -> str | None:
    if catalog is None:
        return None
    if version not in catalog:
        return f"{where}: version {version!r} is not in the catalog; use one of {', '.join(catalog.names)}"
    expected = catalog.get(version).artifact_sha256
    if sha != expected:
        return f"{where}: sha256 {sha[:12]}… differs from the catalog's {expected[:12]}… for {version}; a version is immutable"
    return None


def pinned_problems(version: Any, sha: Any, where: str, catalog: config.Catalog | None) -> list[str]:
    """Explicit, immutable version; a real sha256; and both agree with the catalog."""
    problems = [
        p for p in (version_problem(version, f"{where} version"), sha_problem(sha, f"{where} artifact sha256")) if p
    ]
    if not problems:
        problems += filter(None, [catalog_problem(catalog, version, sha, where)])
    return problems


def _get(props: Mapping[str, Any], *path: str) -> Any:
    value: Any = props
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


# ------------------------------------------------------------------------------------ validate


def production_rule(*resource_types: str):
    """A validate function for `resource_types` in production stacks: the rule returns its problems.

    A catalog that cannot be read is itself a violation: an unverifiable prod deploy must not pass."""

    def wrap(rule: Callable[[Mapping[str, Any], config.Catalog | None], list[str]]):
        def validate(args, report_violation: Report) -> None:
            if args.resource_type not in resource_types or not applies_to(args):
                return
            try:
                problems = rule(args.props, catalog_for(args))
            except ConfigError as exc:
                problems = [f"catalog: {exc}"]
            for problem in problems:
                report_violation(problem)

        validate.__doc__ = rule.__doc__
        validate.__name__ = rule.__name__
        return validate

    return wrap


@production_rule(INDEX_TYPE, CUTOVER_TYPE)
def validate_index(props: Mapping[str, Any], catalog: config.Catalog | None) -> list[str]:
    """Index and Cutover: `version` and `artifactSha256` name one catalog version."""
    return pinned_problems(_get(props, "version"), _get(props, "artifactSha256"), "inputs", catalog)


def model_data_urls(props: Mapping[str, Any]) -> list[Any]:
    containers = [_get(props, "primaryContainer"), *(_get(props, "containers") or [])]
    return [_get(c, "modelDataUrl") for c in containers if isinstance(c, Mapping)]


@production_rule(SAGEMAKER_MODEL_TYPE)
def validate_sagemaker_model(props: Mapping[str, Any], catalog: config.Catalog | None) -> list[str]:
    """Model: `lockstep:version` tag, a content-addressed modelDataUrl of that version, sha as in the catalog."""
    version = _get(props, "tags", VERSION_TAG)
    problem = version_problem(version, f"tags.{VERSION_TAG}")
    if problem:
        return [problem]
    urls = model_data_urls(props)
    if not urls:
        return ["primaryContainer.modelDataUrl: missing; the model must load a catalog artifact"]
    problems = []
    for url in urls:
        match = ARTIFACT_URL.match(url) if isinstance(url, str) else None
        if not match:
            problems.append(
                f"modelDataUrl: {url!r} is not content-addressed "
                "(s3://<bucket>/models/<model>/<version>/<sha256>/model.tar.gz)"
            )
        elif match["version"] != version:
            problems.append(f"modelDataUrl: version {match['version']!r} differs from tags.{VERSION_TAG} {version!r}")
        else:
            problems += pinned_problems(version, match["sha"], "modelDataUrl", catalog)
            declared = _get(props, "primaryContainer", "environment", "LOCKSTEP_ARTIFACT_SHA256")
            if declared is not None and declared != match["sha"]:
                problems.append(
                    f"environment.LOCKSTEP_ARTIFACT_SHA256: {declared!r} differs from the modelDataUrl's sha256"
                )
    return problems


@production_rule(*SAGEMAKER_ENDPOINT_TYPES)
def validate_sagemaker_endpoint(props: Mapping[str, Any], catalog: config.Catalog | None) -> list[str]:
    """EndpointConfiguration and Endpoint: `lockstep:version` tag; sha from `lockstep:artifactSha256` or the catalog."""
    version = _get(props, "tags", VERSION_TAG)
    problem = version_problem(version, f"tags.{VERSION_TAG}")
    if problem:
        return [problem]
    sha = _get(props, "tags", SHA_TAG)
    if sha is None:
        if catalog is None or version not in catalog:
            return [
                f"tags.{SHA_TAG}: missing, and the catalog does not know {version!r}; "
                "tag the artifact's sha256 or add the version to the catalog"
            ]
        sha = catalog.get(version).artifact_sha256
    return pinned_problems(version, sha, "tags", catalog)


POLICIES = [
    ResourceValidationPolicy(
        name="lockstep-index-pinned-version",
        description="Prod OpenSearch indices and the cutover name an immutable catalog version and its artifact sha256.",
        validate=validate_index,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=CONFIG_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="lockstep-model-content-addressed",
        description="Prod SageMaker models load a content-addressed artifact of the version they are tagged with.",
        validate=validate_sagemaker_model,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=CONFIG_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="lockstep-endpoint-pinned-version",
        description="Prod SageMaker endpoints and endpoint configurations are tagged with an immutable catalog version.",
        validate=validate_sagemaker_endpoint,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=CONFIG_SCHEMA,
    ),
]
