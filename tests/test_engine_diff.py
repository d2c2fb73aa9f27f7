"""Diff says what Update does (issue 23), under the real engine: the plain `pulumi` CLI and Pulumi's
Python language host on the repository's own program (tests/pulumi_cli.py), on the embedded servers.

One embedded stack is deployed once for the module. TABLE lists, for each stack setting a user can
change, the kind the engine's preview must show on each lockstep resource (its per-property
`detailedDiff`: update / replace; absent = none) and, for updates, what must really have happened
after the `up`. The updates and the no-changes go into ONE preview and ONE up, the replaces into a
second preview, the refusals into a third; every property the engine reports changed must be
explained by the table. Then `pulumi import` of an index and of the cutover, and a replace that
would delete a kept index, on the same stack.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from lockstep import config, runtime
from lockstep.ops import endpoints
from tests.conftest import stack_values
from tests.pulumi_cli import CliFailed, UserStack

SIZE = 40
# The stack's derived store ("{unique}" is the stack's own name, filled in when written).
STORE = {"name": "related", "kind": "related-documents", "table": "{unique}-related", "writerGuard": "verify"}
pytestmark = pytest.mark.timeout(1500)

# The resources of the deployed stack, by the short names the table uses.
INDICES = ("lockstep-index-v1", "lockstep-index-v2")
SLOTS = ("lockstep-blue-endpoint", "lockstep-green-endpoint")
ARTIFACTS = ("lockstep-artifacts-v1", "lockstep-artifacts-v2")
BUCKET, CORPUS = "lockstep-artifacts-bucket", "lockstep-artifacts-corpus"
CUTOVER, CHECK = "lockstep-cutover", "lockstep-check"
REPAIR, TABLE_ = "lockstep-repair-related", "lockstep-derived-related"
CHECK_TYPE = "lockstep:index:Check"
# Every cutover moves the pointer (switchedAt): the check's triggers change with it.
CUTOVER_FOLLOWS = {(CHECK, "triggers"): "update"}


@dataclass
class Deployed:
    cli: UserStack
    unique: str
    values: dict

    def with_changes(self, *rows: Row) -> dict:
        values = json.loads(json.dumps(self.values))
        for row in rows:
            merge(values, json.loads(json.dumps(row.change).replace("{unique}", self.unique)))
        return values


@dataclass
class Row:
    """One input change: the stack config it sets, the kind per (resource, property path), and for
    an update, the probe that shows it really happened (after the `up`)."""

    change: dict
    kinds: dict[tuple[str, str], str]
    probe: Callable[[Deployed, dict], None] | None = None
    said: str = ""  # a refusal: what its one line must say
    after_check: bool = False  # the effect shows once the Check has run (the module's last up)
    name: str = field(default="")

    def __post_init__(self) -> None:
        self.name = self.name or ".".join(leaf_path(self.change))


def leaf_path(change: dict) -> list[str]:
    key, value = next(iter(change.items()))
    return [key, *leaf_path(value)] if isinstance(value, dict) else [key]


def merge(values: dict, change: dict) -> None:
    """`change` into `values`, leaf by leaf (a list of objects item by item: `derived[0].k`)."""
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            merge(values[key], value)
        elif isinstance(value, list) and isinstance(values.get(key), list) and len(value) == len(values[key]):
            for have, more in zip(values[key], value, strict=True):
                merge(have, more)
        else:
            values[key] = value


def each(resources, path: str, kind: str) -> dict[tuple[str, str], str]:
    return {(resource, path): kind for resource in resources}


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deployed(the_engine, servers, tmp_path_factory, catalog, opensearch):
    """The stack, deployed once: v1 live in blue, v2 in green, a derived store."""
    directory = tmp_path_factory.mktemp("diff")
    before = os.environ.get("LOCKSTEP_HOME")
    os.environ["LOCKSTEP_HOME"] = str(directory / "home")
    unique = f"d{os.urandom(5).hex()}"
    stacks = directory / "stacks"
    stacks.mkdir()
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, stacks / config.CATALOG_FILE)
    values = stack_values(unique, corpus={"size": SIZE}, derived=[{**STORE, "table": f"{unique}-related"}])
    cli = UserStack(the_engine, unique, stacks)
    cli.init(values)
    cli.up()
    yield Deployed(cli, unique, values)
    settings = config.settings_from_config(unique, values, catalog)
    endpoints.stop_local_slots(settings)
    for slot in runtime.endpoint_processes():
        slot.stop()
    opensearch.indices.delete(index=f"{unique}-*", params={"expand_wildcards": "all"})
    if before is None:
        os.environ.pop("LOCKSTEP_HOME", None)
    else:
        os.environ["LOCKSTEP_HOME"] = before


def preview_kinds(cli: UserStack, values: dict) -> dict[tuple[str, str], str]:
    """{(resource, property path): kind} of `pulumi preview --json` for these config values."""
    kept = yaml_text(cli)
    cli.write_config(values)
    try:
        proc = cli.run("preview", "--json", *cli.config)
    finally:
        cli.config_file.write_text(kept)
    found: dict[tuple[str, str], str] = {}
    for step in json.loads(proc.stdout).get("steps", []):
        name = step["urn"].rsplit("::", 1)[-1]
        for path, diff in (step.get("detailedDiff") or {}).items():
            found[(name, path)] = {"update-replace": "replace"}.get(diff["kind"], diff["kind"])
    return found


def yaml_text(cli: UserStack) -> str:
    return cli.config_file.read_text()


# ------------------------------------------------------------------------------------ the table
# Who takes which setting (components/providers/*: SETTINGS): every resource takes the placement
# settings it needs; the Check and the DerivedRepair take every setting.
EVERY = (CHECK, REPAIR)
PLACED = (*INDICES, CUTOVER, *EVERY)
LEAVES = (BUCKET, CORPUS, *ARTIFACTS, *SLOTS, TABLE_)


def replicas_applied(deployed: Deployed, opensearch) -> None:
    for version in ("v1", "v2"):
        name = f"{deployed.unique}-{version}"
        got = opensearch.indices.get_settings(index=name, name="index.number_of_replicas")
        assert got[name]["settings"]["index"]["number_of_replicas"] == "1", name


def recorded(resource: str, path: str, value):
    def probe(deployed: Deployed, opensearch) -> None:
        (inputs,) = [r["inputs"] for r in deployed.cli.resources() if r["urn"].endswith(f"::{resource}")]
        for key in path.split("."):
            inputs = inputs[key]
        assert inputs == value, (resource, path, inputs)

    return probe


def check_rerun_with_k(deployed: Deployed, opensearch) -> None:
    record = deployed.cli.outputs()["checkRecord"]
    assert json.loads(record)["passed"] and "recall@5 " in record, record


def slots_restarted_with_the_batch_limit(deployed: Deployed, opensearch) -> None:
    settings = config.settings_from_config(deployed.unique, deployed.values, config.load_catalog())
    for slot in ("blue", "green"):
        running = endpoints.local_slot(settings, slot)
        assert running is not None and running.describe()["max_batch"] == 128, slot


# Changes whose kind is update (with the effect it must have had) or none: one preview, one up.
UPDATES = [
    Row(
        {"opensearch": {"replicas": 1}},
        each(PLACED, "opensearch.replicas", "update"),
        replicas_applied,  # put-settings on the existing indices, no rebuild
    ),
    Row(
        {"backfill": {"batchSize": 128}},
        each(PLACED, "backfill.batchSize", "update"),
        recorded(INDICES[0], "backfill.batchSize", 128),  # what the next catch-up batches by
    ),
    Row({"check": {"k": 5}}, each(EVERY, "check.k", "update"), check_rerun_with_k, after_check=True),
    Row(
        {"endpoints": {"maxBatch": 128}},
        each((*SLOTS, CUTOVER, *EVERY), "endpoints.maxBatch", "update"),
        slots_restarted_with_the_batch_limit,
    ),
    Row(
        {"derived": [{"writeRate": 500}]},
        {
            **each((CUTOVER, *EVERY), "derived[0].writeRate", "update"),
            (REPAIR, "store.writeRate"): "update",  # not the table's: a repair setting
        },
        recorded(REPAIR, "store.writeRate", 500),
        name="derived[0].writeRate",
    ),
    # A default written out is no change anywhere.
    Row({"opensearch": {"hnswM": 16}}, {}),
    Row({"corpus": {"key": "corpus/docs.jsonl"}}, {}),
    Row({"check": {"recallFloor": 0.8}}, {}),
    Row({"endpoints": {"instanceCount": 1}}, {}),
]

# Changes that need a new resource: replace on the resource that owns the thing, update elsewhere.
REPLACES = [
    Row(
        {"opensearch": {"shards": 2}},
        {**each(INDICES, "opensearch.shards", "replace"), **each((CUTOVER, *EVERY), "opensearch.shards", "update")},
    ),
    Row(
        {"opensearch": {"efConstruction": 64}},
        {
            **each(INDICES, "opensearch.efConstruction", "replace"),
            **each((CUTOVER, *EVERY), "opensearch.efConstruction", "update"),
        },
    ),
    Row(
        {"opensearch": {"indexPrefix": "renamed"}},
        {
            **each(PLACED, "opensearch.indexPrefix", "update"),
            **each(INDICES, "index", "replace"),
            (CUTOVER, "index"): "update",
            (CUTOVER, "alias"): "update",
        },
        name="opensearch.indexPrefix",
    ),
    Row(
        {"artifacts": {"bucket": "renamed-artifacts"}},
        {
            **each((*PLACED, *LEAVES), "artifacts.bucket", "update"),
            **each((BUCKET, *ARTIFACTS), "bucket", "replace"),
        },
    ),
    Row(
        {"corpus": {"bucket": "renamed-corpus"}},
        {**each((*PLACED, *LEAVES), "corpus.bucket", "update"), (CORPUS, "uri"): "replace"},
    ),
    Row(
        {"pointerParameter": "renamed"},
        {**each(PLACED, "pointerParameter", "update"), (CUTOVER, "pointer"): "replace"},
    ),
    Row(
        {"namePrefix": "renamed"},
        {
            **each((*PLACED, *LEAVES), "namePrefix", "update"),
            **each(SLOTS, "name", "replace"),
            (CUTOVER, "endpoint"): "update",
        },
    ),
    Row(
        {"derived": [{"table": "{unique}-renamed"}]},
        {
            **each((CUTOVER, *EVERY), "derived[0].table", "update"),
            (REPAIR, "store.table"): "update",
            (REPAIR, "table"): "update",
            (TABLE_, "store.table"): "update",
            (TABLE_, "name"): "replace",
        },
        name="derived[0].table",
    ),
]

# Changes refused in `check`, in one line naming the input and the fix.
REFUSED = [
    Row({"corpus": {"size": SIZE + 5}}, {}, said="corpus.size: the corpus at s3://"),
]


def expected(rows: list[Row]) -> dict[tuple[str, str], str]:
    return {key: kind for row in rows for key, kind in row.kinds.items()}


def explained(found: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """What the engine reported, without the Check's triggers (they follow every cutover and every
    redeployed live slot: what is live changed, so the check runs again)."""
    return {key: kind for key, kind in found.items() if not (key[0] == CHECK and key[1].startswith("triggers"))}


def test_every_update_and_no_change_in_the_table_is_what_the_preview_says_and_the_up_does(deployed, opensearch):
    values = deployed.with_changes(*UPDATES)
    found = explained(preview_kinds(deployed.cli, values))
    assert found == expected(UPDATES), json.dumps(sorted(set(found.items()) ^ set(expected(UPDATES).items())))

    # Every resource but the Check: one replica on the one embedded node leaves the index yellow,
    # which the check rightly refuses; the check runs after the replicas are back to 0 (the last test).
    deployed.cli.write_config(values)
    targets = [
        r["urn"] for r in deployed.cli.resources() if r["type"].startswith("lockstep:") and r["type"] != CHECK_TYPE
    ]
    deployed.cli.up(*(flag for urn in targets for flag in ("--target", urn)))
    deployed.values = values
    for row in UPDATES:
        if row.probe is not None and not row.after_check:
            row.probe(deployed, opensearch)


# ------------------------------------------------------------------------------------- import


# What `pulumi import` names, and what its one line must say `pulumi up` does instead.
IMPORTS = [
    ("lockstep:index:Index", "{unique}-v1", "the index {id} already there is adopted as it is"),
    ("lockstep:index:Cutover", "/{unique}/live", "the cutover takes over the pointer {id}"),
]


def test_pulumi_import_of_an_index_or_the_cutover_refuses_in_one_line_naming_the_adoption(deployed, tmp_path):
    ids = [name.replace("{unique}", deployed.unique) for _, name, _ in IMPORTS]
    spec = tmp_path / "imports.json"
    resources = [
        {"type": token, "name": f"imported-{i}", "id": id_}
        for i, ((token, _, _), id_) in enumerate(zip(IMPORTS, ids, strict=True))
    ]
    spec.write_text(json.dumps({"resources": resources}))
    before = [r["urn"] for r in deployed.cli.resources()]
    with pytest.raises(CliFailed) as failed:
        deployed.cli.run("import", "--file", str(spec), "--yes", "--generate-code=false", *deployed.cli.config)
    for (token, _, what), id_ in zip(IMPORTS, ids, strict=True):
        said = [line for line in failed.value.lines if f"{token} {id_} cannot be imported" in line]
        assert said and all(what.format(id=id_) in line for line in said), failed.value.lines
    assert "Traceback" not in failed.value.proc.stdout + failed.value.proc.stderr
    assert [r["urn"] for r in deployed.cli.resources()] == before


# ------------------------------------------------------------------------ replacing a kept index


def test_a_replace_that_would_delete_a_kept_index_fails_loudly_and_the_state_stays(deployed, opensearch):
    """opensearch.hnswM is a new mapping: the same-named index would be deleted and rebuilt. Both
    indices are kept (v1 live, v2 the standby): the delete fails, the engine keeps the resources."""
    before = {r["urn"]: r.get("id") for r in deployed.cli.resources()}
    deployed.cli.write_config(deployed.with_changes(Row({"opensearch": {"hnswM": 24, "replicas": 0}}, {})))
    with pytest.raises(CliFailed) as failed:
        deployed.cli.up()
    refused = [line for line in failed.value.lines if "refusing to delete index" in line]
    assert refused, failed.value.lines
    for line in refused:
        assert "it is the live pin" in line or "it serves the green slot" in line, line
        assert "put the change back" in line and "\n" not in line, line
    assert {r["urn"]: r.get("id") for r in deployed.cli.resources()} == before
    for version in ("v1", "v2"):
        assert opensearch.count(index=f"{deployed.unique}-{version}")["count"] == SIZE

    # Put back (replicas back to 0 too: the one node can hold no replica): the next up works, and
    # the check runs (with the table's check.k).
    deployed.values = deployed.with_changes(Row({"opensearch": {"replicas": 0}}, {}))
    deployed.cli.write_config(deployed.values)
    deployed.cli.up()
    for row in UPDATES:
        if row.probe is not None and row.after_check:
            row.probe(deployed, opensearch)


# ------------------------------------------------------------------- replaces and refusals


def test_every_replace_in_the_table_is_what_the_preview_says(deployed):
    found = explained(preview_kinds(deployed.cli, deployed.with_changes(*REPLACES)))
    assert found == expected(REPLACES), json.dumps(sorted(set(found.items()) ^ set(expected(REPLACES).items())))


@pytest.mark.parametrize("row", REFUSED, ids=lambda row: row.name)
def test_a_change_that_would_do_nothing_is_refused_in_check_in_one_line(deployed, row):
    with pytest.raises(CliFailed) as failed:
        preview_kinds(deployed.cli, deployed.with_changes(row))
    (line,) = [line for line in failed.value.lines if row.said in line]
    assert row.name in line, line
