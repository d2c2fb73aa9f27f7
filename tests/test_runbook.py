"""docs/runbook.md, executed: every ```bash block, in order, on a scratch embedded stack.

The runbook's commands read `$STACK` and `$VERSION`; this test sets them per section (the versions
below are the scenario: v3 live with v1 in standby, then (a) back to the standby v1, (b) to v2 whose
index was dropped, (c) a broken stack repaired — the alias moved to the same-dimension v1 index, the
case that errors nowhere — (d) a pin to v3 whose apply died half-way, (e) an emergency flip back to
the standby v2, (f) related-document lists a v3 job wrote after that rollback). Before (c), (d) and
(f) the test causes the incident the section handles. Lines marked `# requires: pulumi` are skipped (no Pulumi CLI here); every other
line must be a `lockstep` command that exists with the options it uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lockstep import config, stackfile
from lockstep.ops import artifacts, clients, corpus_store, derived, endpoints, index, live_state, reembed
from tests.test_workflows import VENV_BIN, check_call, lockstep_calls

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = ROOT / "docs" / "runbook.md"
PULUMI_ONLY = "# requires: pulumi"
EXPECT = re.compile(r"^# expect exit (\d+)$")
CORPUS = 150
VERSIONS = {"a": "v1", "b": "v2", "c": "v2", "d": "v3", "e": "v2", "f": "v2"}
SECTIONS = ("a", "b", "c", "d", "e", "f")


@dataclass
class Block:
    section: str | None  # the letter of "## (x) …", None before the first lettered section
    number: int  # position within its section
    code: str
    expected_exit: int

    @property
    def runnable(self) -> str:
        return "\n".join(line for line in self.code.splitlines() if PULUMI_ONLY not in line)


def read_blocks(text: str) -> list[Block]:
    found: list[Block] = []
    section: str | None = None
    counts: dict[str | None, int] = {}
    for match in re.finditer(r"^## (?:\((?P<letter>[a-f])\) )?[^\n]*$|^```bash\n(?P<code>.*?)^```", text, re.M | re.S):
        if match["code"] is None:
            section = match["letter"]
            continue
        code = match["code"]
        first = code.splitlines()[0] if code.strip() else ""
        expected = EXPECT.match(first)
        found.append(Block(section, counts.get(section, 0), code, int(expected[1]) if expected else 0))
        counts[section] = counts.get(section, 0) + 1
    return found


BLOCKS = read_blocks(RUNBOOK.read_text())


# ------------------------------------------------------------------------ the page itself


def test_the_runbook_has_the_five_sections_each_with_commands():
    assert {b.section for b in BLOCKS} == {None, *SECTIONS}
    assert [b.expected_exit for b in BLOCKS].count(1) >= 1, "the failed-check section shows a failing check"
    for letter in ("a", "b", "d", "e"):
        assert any(PULUMI_ONLY in b.code for b in BLOCKS if b.section == letter), f"({letter}) names the pulumi path"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.section or 'pre'}-{b.number}")
def test_every_step_is_a_real_lockstep_command_or_a_marked_pulumi_line(block):
    for line in block.code.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if PULUMI_ONLY in line:
            assert line.startswith("pulumi "), line
            continue
        (call,) = lockstep_calls(line)
        assert line.startswith("lockstep "), line
        check_call(call)
    assert "$STACK" in block.code


def test_each_failing_block_fails_only_on_its_last_command():
    """With `set -e` a block stops at its first failure: an expected failure must be the last line."""
    for block in BLOCKS:
        if block.expected_exit:
            commands = [line for line in block.runnable.splitlines() if line.strip() and not line.startswith("#")]
            assert len(commands) == 1, block.code


# ------------------------------------------------------------------------ the page, executed


# What the runbook tells the reader to look for, per (section, block): the output must show it.
def promised_output(stack: str) -> dict[tuple[str | None, int], list[str]]:
    return {
        ("a", 0): ["index | **reattach**", "endpoints | **flip**", "yes — instant flip back"],
        ("b", 0): ["index | **provision**", f"{CORPUS} documents to embed", "(measured rate)", "drop index `v3`"],
        ("c", 0): ["INCONSISTENT", "foreign-versions", "reembed-probe", f"{stack}-v1"],
        ("d", 0): ["catch up index `v3`", f"alias {stack}: {stack}-v2 -> {stack}-v3"],
        ("e", 0): [f"{stack}: ok (pin v3, slots blue=v3 green=v2)"],
        ("f", 0): ["INCONSISTENT", "derived:related", f"{CORPUS} records of v3"],
        ("f", 1): ['"action": "recompute"', f"related: {CORPUS} recomputed with v2"],
    }


def write_stack(stacks: Path, stack: str) -> None:
    stacks.mkdir(parents=True)
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, stacks / config.CATALOG_FILE)
    body = {
        "config": {
            "aws:region": "us-east-1",
            "lockstep:pin": "v1",
            "lockstep:slots": {"blue": "v1", "green": "v2"},
            "lockstep:retain": [],
            "lockstep:artifacts": {"bucket": f"{stack}-artifacts"},
            "lockstep:opensearch": {"engine": "lucene", "indexPrefix": stack},
            "lockstep:corpus": {"bucket": f"{stack}-corpus", "size": CORPUS},
            "lockstep:endpoints": {"backend": "local"},
            "lockstep:check": {"recallFloor": 0.7, "k": 10},
            "lockstep:pointerParameter": f"/{stack}/live",
            "lockstep:derived": [
                {"name": "related", "kind": "related-documents", "table": f"{stack}-related", "writeRate": 2000}
            ],
        }
    }
    with (stacks / f"Pulumi.{stack}.yaml").open("w") as handle:
        handle.write("# Scratch stack written by tests/test_runbook.py.\n")
        YAML().dump(body, handle)


class Scratch:
    def __init__(self, stacks: Path, stack: str):
        self.stacks, self.stack = stacks, stack

    @property
    def settings(self) -> config.StackSettings:
        return config.load_stack(self.stack, self.stacks)

    def env(self, version: str | None) -> dict[str, str]:
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "STACK": self.stack,
            "LOCKSTEP_STACKS_DIR": str(self.stacks),
            "COLUMNS": "200",
        }
        env.pop("VERSION", None)
        if version:
            env["VERSION"] = version
        return env

    def run(self, script: str, version: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=self.env(version),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def alias_targets(self) -> list[str]:
        return live_state.alias_targets(
            clients.opensearch(self.settings.opensearch), self.settings.opensearch.alias_name
        )

    def break_it(self) -> None:
        """Before (c): someone points the alias at the v1 index by hand, and a writer stamps a few
        documents of the pin's index with another model_version."""
        settings = self.settings
        client = clients.opensearch(settings.opensearch)
        live, other = settings.opensearch.index_name(settings.pin), settings.opensearch.index_name("v1")
        client.indices.update_aliases(
            body={
                "actions": [
                    {"remove": {"index": live, "alias": settings.opensearch.alias_name}},
                    {"add": {"index": other, "alias": settings.opensearch.alias_name}},
                ]
            }
        )
        hits = client.search(index=live, body={"size": 5, "_source": False, "query": {"match_all": {}}})["hits"]["hits"]
        for hit in hits:
            client.update(index=live, id=hit["_id"], body={"doc": {"model_version": "v1"}})
        client.indices.refresh(index=live)

    def die_half_way(self) -> None:
        """Before (d): `lockstep pin v3` and an apply killed during the provision of v3's index —
        what a killed bulk load leaves: half the corpus written, refresh still disabled, no cutover."""
        stackfile.set_pin(self.stack, "v3", self.stacks)
        settings = self.settings
        entry = config.load_catalog(self.stacks).get("v3")
        client = clients.opensearch(settings.opensearch)
        name = settings.opensearch.index_name("v3")
        assert index.read_meta(client, name) is None, "(b) dropped v3's index"
        s3 = clients.aws("s3", settings.region)
        documents = corpus_store.read_corpus(s3, settings)
        embedder = artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
        index.ensure_index(client, settings, entry)
        index.set_bulk_mode(client, name, True, settings)
        reembed.write(
            client,
            reembed.index_actions(documents[: len(documents) // 2], embedder, name, settings.backfill.batch_size),
        )

    def stale_related(self) -> None:
        """Before (f): after the flip back to v2, a job still running with v3 writes every
        document's related-documents list, stamped v3."""
        assert derived.write_related(self.settings, "v3") == CORPUS

    def clean_up(self) -> None:
        settings = self.settings
        endpoints.stop_local_slots(settings)
        client = clients.opensearch(settings.opensearch)
        for version in ("v1", "v2", "v3"):
            client.indices.delete(index=settings.opensearch.index_name(version), ignore_unavailable=True)
        for store in settings.derived:
            clients.aws("dynamodb", settings.region).delete_table(TableName=store.table)


@pytest.fixture
def scratch(servers, unique, tmp_path):
    """A scratch embedded stack with v3 live and v1 warm in the standby slot; v2 was deployed
    before, so its artifact is published, but its index was dropped when v3 replaced it."""
    stacks = tmp_path / "stacks"
    write_stack(stacks, unique)
    stack = Scratch(stacks, unique)
    try:
        for script in (
            'lockstep apply --stack "$STACK" --quiet',
            'lockstep pin --stack "$STACK" v3',
            'lockstep apply --stack "$STACK" --quiet',
        ):
            result = stack.run(script)
            assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
        yield stack
    finally:
        stack.clean_up()


def test_the_runbook_runs_top_to_bottom_on_the_embedded_default(scratch):
    stack = scratch.stack
    promised = promised_output(stack)
    entered: set[str | None] = set()
    for block in BLOCKS:
        if block.section not in entered:
            entered.add(block.section)
            if block.section == "c":
                scratch.break_it()
            if block.section == "f":
                scratch.stale_related()
            if block.section == "d":
                scratch.die_half_way()
                assert scratch.alias_targets() == [f"{stack}-v2"], "a half-finished apply leaves the alias alone"
        result = scratch.run(block.runnable, VERSIONS.get(block.section or ""))
        where = f"section ({block.section}) block {block.number}:\n{block.code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        assert result.returncode == block.expected_exit, where
        for text in promised.get((block.section, block.number), []):
            assert text in result.stdout, f"missing {text!r} in {where}"
        if block.section == "a" and block.number == 1:
            assert scratch.settings.pin == "v1" and scratch.alias_targets() == [f"{stack}-v1"]

    settings = scratch.settings
    assert (settings.pin, settings.slots.as_dict()) == ("v2", {"blue": "v3", "green": "v2"})
    assert scratch.alias_targets() == [f"{stack}-v2"]
    pointer = live_state.read_pointer(clients.aws("ssm", settings.region), settings.pointer_name)
    assert (pointer.version, pointer.index) == ("v2", f"{stack}-v2")
    client = clients.opensearch(settings.opensearch)
    v3 = f"{stack}-v3"
    assert client.count(index=v3)["count"] == CORPUS, "the re-run completed the half-built index without duplicates"
    refresh = client.indices.get_settings(index=v3)[v3]["settings"]["index"].get("refresh_interval")
    assert refresh != "-1", "the re-run switched refresh back on"
