"""Edits of stacks/Pulumi.<stack>.yaml that keep comments and layout (ruamel round trip).

A change is validated as a whole (the same pydantic rules) before the file is replaced
atomically, so a refused change leaves the file byte-for-byte as it was.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML

from lockstep import config
from lockstep.errors import ConfigError


@dataclass
class PinChange:
    stack: str
    previous_pin: str
    pin: str
    slot: str
    placed: bool  # VERSION was in neither slot and now fills the standby slot
    evicted: str | None  # the version that left that slot to make room, if any
    path: Path
    retained: bool = False  # the evicted version is in retain: its index stays

    @property
    def kind(self) -> str:
        if self.previous_pin == self.pin:
            return "none"
        return "deploy" if self.placed else "flip"

    def summary(self) -> str:
        if self.kind == "none":
            return f"{self.stack}: pin is already {self.pin} ({self.slot} slot); nothing changed"
        line = f"{self.stack}: pin {self.previous_pin} → {self.pin} ({self.slot} slot, {self.kind})"
        if self.evicted:
            keeps = "retain keeps its index" if self.retained else "add it to retain to keep its index"
            line += f"; {self.evicted} left the {self.slot} slot ({keeps})"
        return line


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def set_pin(stack: str, version: str, stacks_dir: Path = config.STACKS_DIR) -> PinChange:
    """Pin VERSION; when it is in neither slot, place it in the slot that is not live."""
    catalog = config.load_catalog(stacks_dir)
    current = config.load_stack(stack, stacks_dir, catalog)
    path = config.stack_path(stack, stacks_dir)
    if version not in catalog:
        raise ConfigError(f"{path}: version {version!r} is not in the catalog; use one of {', '.join(catalog.names)}")
    yaml = _yaml()
    document = yaml.load(path.read_text(encoding="utf-8"))
    values = document["config"]
    target = current.with_pin(version)
    slot = target.live_slot
    placed = current.slots.slot_of(version) is None
    evicted = getattr(current.slots, slot) if placed else None
    if placed:
        values.setdefault(f"{config.PROJECT}:slots", {})[slot] = version
    values[f"{config.PROJECT}:pin"] = version
    change = PinChange(stack, current.pin, version, slot, placed, evicted, path, evicted in current.retain)
    if change.kind != "none":
        write_validated(path, document, stack, stacks_dir, catalog)
    return change


def write_validated(path: Path, document, stack: str, stacks_dir: Path, catalog: config.Catalog) -> None:
    """Validate the edited document like `load_stack` would, then replace the file atomically."""
    buffer = io.StringIO()
    _yaml().dump(document, buffer)
    text = buffer.getvalue()
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch)
        (trial / config.CATALOG_FILE).write_text((stacks_dir / config.CATALOG_FILE).read_text())
        (trial / path.name).write_text(text)
        try:
            config.load_stack(stack, trial, catalog)
        except (ConfigError, ValidationError) as exc:
            raise ConfigError(
                f"{path}: the change would make the stack invalid: {str(exc).split(': ', 1)[-1]}"
            ) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # mkstemp makes it 600: keep the file's own mode
    os.replace(tmp, path)


def write_stack(stacks_dir: Path, stack: str, values: dict, comment: str = "") -> Path:
    """Write a new Pulumi.<stack>.yaml (with the catalog beside it) from `lockstep:` values."""
    stacks_dir.mkdir(parents=True, exist_ok=True)
    catalog = stacks_dir / config.CATALOG_FILE
    if not catalog.exists():
        catalog.write_text((config.STACKS_DIR / config.CATALOG_FILE).read_text())
    body = {"config": {(k if ":" in k else f"{config.PROJECT}:{k}"): v for k, v in values.items()}}
    path = config.stack_path(stack, stacks_dir)
    with path.open("w", encoding="utf-8") as handle:
        if comment:
            handle.write(f"# {comment}\n")
        _yaml().dump(body, handle)
    return path
