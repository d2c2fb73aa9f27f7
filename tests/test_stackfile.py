"""`lockstep pin` edits only the pin/slot lines, keeps comments, and refuses bad pins untouched."""

import difflib
import os
import shutil
import subprocess
import sys

import pytest

from lockstep import config, publish, stackfile
from lockstep.errors import ConfigError


@pytest.fixture
def stacks(tmp_path):
    target = tmp_path / "stacks"
    shutil.copytree(config.STACKS_DIR, target)
    return target


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_pin_to_the_standby_is_a_flip_that_changes_one_line(stacks):
    path = stacks / "Pulumi.dev.yaml"
    before = path.read_text()
    change = stackfile.set_pin("dev", "v1", stacks)
    assert change.kind == "flip" and change.slot == "blue" and change.evicted is None
    assert changed_lines(before, path.read_text()) == ["-  lockstep:pin: v2", "+  lockstep:pin: v1"]
    assert "# Versions whose indices stay warm" in path.read_text()


def test_pin_to_a_version_in_neither_slot_takes_the_non_live_slot(stacks):
    path = stacks / "Pulumi.dev.yaml"  # pin v2 (green), blue v1
    before = path.read_text()
    change = stackfile.set_pin("dev", "v3", stacks)
    assert (change.kind, change.slot, change.evicted) == ("deploy", "blue", "v1")
    assert change.summary().endswith("; v1 left the blue slot (retain keeps its index)")  # dev retains v1
    assert sorted(changed_lines(before, path.read_text())) == sorted(
        ["-  lockstep:pin: v2", "+  lockstep:pin: v3", "-    blue: v1", "+    blue: v3"]
    )
    settings = config.load_stack("dev", stacks)
    assert (settings.pin, settings.slots.blue, settings.slots.green) == ("v3", "v3", "v2")


def test_pin_to_the_current_pin_writes_nothing(stacks):
    path = stacks / "Pulumi.dev.yaml"
    mtime = path.stat().st_mtime_ns
    assert stackfile.set_pin("dev", "v2", stacks).kind == "none"
    assert path.stat().st_mtime_ns == mtime


def test_unknown_version_is_refused_and_nothing_changes(stacks):
    before = {p.name: p.read_bytes() for p in stacks.iterdir()}
    with pytest.raises(ConfigError, match="'v9' is not in the catalog"):
        stackfile.set_pin("dev", "v9", stacks)
    env = {**os.environ, "LOCKSTEP_STACKS_DIR": str(stacks)}
    result = subprocess.run(
        [sys.executable, "-m", "lockstep.cli", "pin", "--stack", "dev", "v9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "v9" in result.stderr
    assert {p.name: p.read_bytes() for p in stacks.iterdir()} == before


COMPACT = """\
# dev, edited by hand and by `lockstep pin`
---
config:
    aws:region: eu-west-1
    lockstep:region: eu-west-1
    lockstep:pin: v2  # what serves
    lockstep:slots:
        blue: v1
        green: v2
    lockstep:retain:
    {dash}- v1
    lockstep:artifacts:
        bucket: acme-lockstep-dev-artifacts
    lockstep:opensearch:
        url: https://search-acme-dev-docs.eu-west-1.es.amazonaws.com
        auth: sigv4
        region: eu-west-1
        indexPrefix: docs
    lockstep:corpus:
        bucket: acme-lockstep-dev-corpus
    lockstep:endpoints:
        backend: sagemaker
        imageUri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/lockstep-serve:0.1.0
"""


@pytest.mark.parametrize("dash", ["", "  "], ids=["dash-at-key-column", "dash-indented"])
def test_a_pin_change_keeps_the_files_own_layout(stacks, dash):
    """A team's stack file in its own style (an opening comment and `---`, four-space mappings, a
    block sequence's `-` at its key's column or indented): the diff is the pin line, nothing else."""
    path = stacks / "Pulumi.dev.yaml"
    before = COMPACT.format(dash=dash)
    path.write_text(before)
    settings = config.load_stack("dev", stacks)
    assert (settings.pin, settings.retain) == ("v2", ("v1",))

    stackfile.set_pin("dev", "v1", stacks)

    assert changed_lines(before, path.read_text()) == [
        "-    lockstep:pin: v2  # what serves",
        "+    lockstep:pin: v1  # what serves",
    ]


def test_publishing_a_version_keeps_the_catalogs_own_layout(stacks):
    """The catalog in a team's style (an opening comment and `---`, four-space mappings): adding a
    version adds its lines and changes none of the others."""
    path = stacks / config.CATALOG_FILE
    lines = path.read_text().splitlines()
    before = "\n".join(["# our catalog", "---", *(line.replace("  ", "    ") for line in lines)]) + "\n"
    path.write_text(before)
    fields = {"family": "hashgram", "artifactSha256": "a" * 64, "dimension": 8, "spaceType": "l2"}

    after = publish.catalog_with(stacks, "v9", fields)

    added = changed_lines(before, after)
    assert all(line.startswith("+") for line in added), added
    assert added[0] == "+    v9:" and "+        dimension: 8" in added
