"""Edits of stacks/Pulumi.<stack>.yaml that keep comments and layout (ruamel round trip, in the
file's own indentation, its opening `---` kept).

A change is validated as a whole (the same pydantic rules) before the file is replaced
atomically, so a refused change leaves the file byte-for-byte as it was.
"""

from __future__ import annotations

import io
import os
import re
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


_BLOCK_KEY = re.compile(r"^( *)[^\s#-].*:\s*(#.*)?$")  # `key:` with its value on the next lines
_SEQUENCE_ITEM = re.compile(r"^( *)- ")


def _yaml(text: str = "") -> YAML:
    """A round trip that writes `text`'s own layout back (ruamel re-indents to one style): its
    mapping indent and where a block sequence's `-` sits under its key (at the key's column or
    indented), so a pin change is a one-line diff in the team's style. Defaults: this repository's."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(**_indentation(text))
    return yaml


def _indentation(text: str) -> dict[str, int]:
    found = {"mapping": 2, "sequence": 4, "offset": 2}
    parent: int | None = None  # the column of the `key:` just above, when it opens a block
    seen: set[str] = set()
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        column = len(line) - len(line.lstrip(" "))
        item = _SEQUENCE_ITEM.match(line)
        if parent is not None and item and "sequence" not in seen:
            offset = len(item.group(1)) - parent
            if offset >= 0:
                found.update(sequence=offset + 2, offset=offset)
                seen.add("sequence")
        elif parent is not None and not item and column > parent and "mapping" not in seen:
            found["mapping"] = column - parent
            seen.add("mapping")
        parent = column if _BLOCK_KEY.match(line) else None
    return found


class RoundTrip:
    """A YAML file (a stack file, the catalog) loaded to be edited in place and written back with
    its comments, quotes and layout."""

    def __init__(self, text: str):
        self.preamble, body = _split_preamble(text)
        self.yaml = _yaml(body)
        self.document = self.yaml.load(body)

    def text(self) -> str:
        buffer = io.StringIO()
        self.yaml.dump(self.document, buffer)
        return self.preamble + buffer.getvalue()


def _split_preamble(text: str) -> tuple[str, str]:
    """(the comments and `---` that open the file, the rest): ruamel drops a `---` and the
    comments above it, so they are kept as text and written back as they were."""
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "---" or stripped.startswith("--- #"):
            return "".join(lines[: number + 1]), "".join(lines[number + 1 :])
        if stripped and not stripped.startswith("#"):
            break
    return "", text


def set_pin(stack: str, version: str, stacks_dir: Path = config.STACKS_DIR) -> PinChange:
    """Pin VERSION; when it is in neither slot, place it in the slot that is not live."""
    catalog = config.load_catalog(stacks_dir)
    current = config.load_stack(stack, stacks_dir, catalog)
    path = config.stack_path(stack, stacks_dir)
    if version not in catalog:
        raise ConfigError(f"{path}: version {version!r} is not in the catalog; use one of {', '.join(catalog.names)}")
    edit = RoundTrip(path.read_text(encoding="utf-8"))
    document = edit.document
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
        write_validated(path, edit.text(), stack, stacks_dir, catalog)
    return change


def write_validated(path: Path, text: str, stack: str, stacks_dir: Path, catalog: config.Catalog) -> None:
    """Validate the edited file like `load_stack` would, then replace the file atomically."""
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
    replace_text(path, text)


def replace_text(path: Path, text: str) -> None:
    """Replace an existing file's text atomically (a temporary file of its own beside it, then a
    rename), keeping the file's mode: a reader sees the old text or the new, never half."""
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
