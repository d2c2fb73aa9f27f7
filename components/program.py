"""The Pulumi program's body: stack config -> validated settings -> one ModelRelease (or nothing)."""

from __future__ import annotations

import json
import types
from typing import Any, Union, get_args, get_origin

import pulumi
from pydantic import ValidationError

from components.model_release import ModelRelease, release_args
from lockstep.config import (
    Catalog,
    StackSettings,
    describe_validation_error,
    load_catalog,
    one_region,
    settings_from_config,
)
from lockstep.errors import LockstepError

NAMESPACE = "lockstep"
PASSWORD_KEY = "opensearchPassword"


def _is_text(annotation: Any) -> bool:
    """str or str | None: stored as a plain config string, not JSON."""
    if get_origin(annotation) in (Union, types.UnionType):
        return all(arg in (str, type(None)) for arg in get_args(annotation))
    return annotation is str


def read_values(config: pulumi.Config) -> dict[str, Any]:
    """Every `lockstep:<key>` StackSettings knows, by its camelCase name; `aws:region` as the region fallback,
    `aws:profile` as the providers' AWS profile."""
    values: dict[str, Any] = {}
    for name, field in StackSettings.model_fields.items():
        if name == "stack":
            continue
        key = field.alias or name
        try:
            value = config.get(key) if _is_text(field.annotation) else config.get_object(key)
        except pulumi.ConfigTypeError:
            raise pulumi.RunError(
                f"{NAMESPACE}:{key}: is not valid YAML/JSON structure; write it as a mapping or list"
            ) from None
        if value is not None:
            values[key] = value
    if region := pulumi.Config("aws").get("region"):
        values["region"] = one_region(values.get("region"), region)
    if profile := pulumi.Config("aws").get("profile"):
        values["awsProfile"] = profile
    return values


def load_settings(stack: str, config: pulumi.Config) -> tuple[StackSettings, Catalog]:
    """Validated settings and the catalog, or a RunError whose one line names the bad key."""
    try:
        catalog = load_catalog()
        return settings_from_config(stack, read_values(config), catalog), catalog
    except ValidationError as exc:
        raise pulumi.RunError(f"{NAMESPACE}:{describe_validation_error(exc)}") from None
    except LockstepError as exc:
        raise pulumi.RunError(str(exc)) from None


def main() -> ModelRelease:
    """`pulumi up`: the stack's config (stacks/Pulumi.<stack>.yaml) -> the release."""
    config = pulumi.Config(NAMESPACE)
    settings, catalog = load_settings(pulumi.get_stack(), config)
    require_secret_password(config, settings)
    return declare(settings, catalog)


def require_secret_password(config: pulumi.Config, settings: StackSettings) -> None:
    """The password is the lockstep provider's configuration (this very key, read by its Configure),
    never a resource input: required for basic auth, and only ever a secret (the engine stores the
    default provider's configuration in the state)."""
    key = f"{NAMESPACE}:{PASSWORD_KEY}"
    fix = f"run `pulumi config set --secret {key} <password>`"
    if config.get(PASSWORD_KEY) is None:
        if settings.opensearch.auth == "basic":
            raise pulumi.RunError(f"{key}: is required when opensearch.auth is basic; {fix}")
    elif not pulumi.runtime.is_config_secret(key):
        raise pulumi.RunError(f"{key}: is stored in plain text in the stack config; {fix}")


def declare(settings: StackSettings, catalog: Catalog) -> ModelRelease:
    """One ModelRelease and the stack outputs; an embedded stack's leaves are lockstep's own
    resources.

    A promoted stack's gate is the component's (model_release.require_promotable): it reads the
    source stack's `verifiedVersions` and this stack's `slots`, the outputs exported here."""
    release = _release(settings, catalog)
    pulumi.export("pin", release.pin)
    pulumi.export("liveEndpoint", release.live_endpoint)
    pulumi.export("liveIndex", release.live_index)
    pulumi.export("slots", release.slots)
    pulumi.export("retainedIndices", release.retained_indices)
    pulumi.export("checkRecord", release.check_record)
    pulumi.export(
        "verifiedVersions",
        pulumi.Output.all(release.check_record, release.check.verified).apply(
            lambda got: sorted(set(verified_versions(got[0])) | set(got[1] or []))
        ),
    )
    return release


def _release(settings: StackSettings, catalog: Catalog) -> ModelRelease:
    try:
        return ModelRelease(NAMESPACE, release_args(settings, catalog))
    except LockstepError as exc:
        raise pulumi.RunError(str(exc)) from None


def verified_versions(check_record: str | None) -> list[str]:
    """The version the last check proved consistent: its pin, when it passed (the Check resource's
    `verified` output adds every version the stack's earlier check records proved)."""
    try:
        record = json.loads(check_record or "")
    except ValueError:
        return []
    return [record["pin"]] if isinstance(record, dict) and record.get("passed") and record.get("pin") else []
