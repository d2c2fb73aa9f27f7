"""What every lockstep custom resource shares inside the provider process (pulumi-resource-lockstep).

A handler sees plain Python values: the provider unwraps the engine's PropertyValues (secrets
included) before calling it and wraps the outputs again, marking SECRET_KEYS secret. Handlers
call lockstep.ops only; they hold no clients: every call builds its own from the environment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lockstep.config import CatalogEntry, StackSettings, describe_validation_error
from lockstep.errors import Unreachable
from lockstep.ops import clients

PASSWORD = "opensearchPassword"
# Inputs kept secret in the state (the engine encrypts them) and never echoed in a message.
SECRET_KEYS = frozenset({PASSWORD})
# StackSettings requires a pin and two slots; resources that must not change on a flip (indices,
# slots) never read them. Naming no real version keeps drop_index's guard to what is recorded.
DETACHED = {"pin": "(detached)", "slots": {"blue": "(detached)", "green": "(detached-standby)"}}


class UnknownValue:
    """An input the engine does not know yet (a preview of an output of another resource)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = UnknownValue()


def has_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(item) for item in value.values())
    if isinstance(value, list):
        return any(has_unknown(item) for item in value)
    return False


@dataclass
class Diff:
    changes: bool
    replaces: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    delete_before_replace: bool = False


@dataclass
class Property:
    """One schema property: `type` a JSON schema type or "any"; inputs are required unless optional."""

    description: str
    type: str = "string"
    optional: bool = False
    output_only: bool = False


class Handler:
    """One custom resource type. Subclasses set TOKEN, DESCRIPTION and PROPERTIES."""

    TOKEN = ""
    DESCRIPTION = ""
    PROPERTIES: dict[str, Property] = {}
    # Inputs whose change replaces the resource.
    REPLACE_ON: tuple[str, ...] = ()
    # Outputs the handler observes; never compared as inputs.
    OBSERVED: frozenset[str] = frozenset()

    def check(self, news: dict) -> list[tuple[str, str]]:
        return []

    def input_keys(self, news: dict) -> list[str]:
        return sorted(key for key in news if key not in self.OBSERVED)

    def diff(self, olds: dict, news: dict) -> Diff:
        changed = [key for key in self.input_keys(news) if olds.get(key) != news.get(key) or has_unknown(news.get(key))]
        replaces = [key for key in self.REPLACE_ON if key in changed]
        return Diff(bool(changed), replaces, changed)

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        return id_, state

    def update(self, urn: str, id_: str, olds: dict, news: dict) -> dict:
        return self.create(urn, news)[1]

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        """Default: the resource leaves the state, the data stays. Returns what to tell the user."""
        return None


# ------------------------------------------------------------------------------ validated inputs


def failures(props: dict, *builders) -> list[tuple[str, str]]:
    """(property, reason) for each input that its pydantic model refuses; unknown inputs pass."""
    found = []
    for name, build in builders:
        if has_unknown(props.get(name)):
            continue
        try:
            build(props)
        except ValidationError as exc:
            found.append((name, describe_validation_error(exc)))
        except (KeyError, TypeError, AttributeError):
            found.append((name, "is missing or not an object"))
    return found


def entry_of(props: dict) -> CatalogEntry:
    return CatalogEntry.model_validate(props["entry"])


def settings_of(props: dict) -> StackSettings:
    return StackSettings.model_validate(props["settings"])


def detached_settings(props: dict) -> StackSettings:
    return StackSettings.model_validate({**props["settings"], **DETACHED})


def dump(model) -> dict:
    return model.model_dump(by_alias=True, mode="json")


def opensearch_where(settings: StackSettings) -> str:
    try:
        return clients.opensearch_url(settings.opensearch)
    except Unreachable:  # only used in messages; building the client raises the real error
        return "(unconfigured)"


# ------------------------------------------------------------------------------- credentials


# lockstep.ops reads the OpenSearch password from the process environment; the provider sets it
# from the resource's secret input for the duration of one operation. Operations are serialized:
# two resources' passwords never meet in the environment.
_operation = threading.Lock()


@contextmanager
def credentials(props: dict) -> Iterator[None]:
    with _operation:
        password = props.get(PASSWORD)
        before = os.environ.get(clients.PASSWORD_VARIABLE)
        if isinstance(password, str) and password:
            os.environ[clients.PASSWORD_VARIABLE] = password
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(clients.PASSWORD_VARIABLE, None)
            else:
                os.environ[clients.PASSWORD_VARIABLE] = before
