"""Two golden query sets that tell models apart, and recall floors per catalog version and set.

`easy`: a docstring's first sentence retrieves the docstring (nearly lexical). `hard`: the same
sentence retrieves the docstring stored *without* it, so only meaning can find it. The check's
recall probe measures both through the live alias against the pin's floors.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from lockstep import config, models, orchestrator
from lockstep.errors import ConfigError
from lockstep.models import builds
from lockstep.ops import check, clients, corpus, corpus_store, endpoints


def flat(text: str) -> str:
    return " ".join(text.split())


def test_hard_answers_lack_the_sentence_their_query_asks():
    documents = corpus.stdlib_documents(400)
    by_id = {d.id: d for d in documents}
    golden = corpus.golden_queries(documents)
    sets = {name: [g for g in golden if g["set"] == name] for name in corpus.SETS}
    assert len(sets["easy"]) == len(sets["hard"]) == 40
    for query in sets["easy"]:
        assert query["query"] in flat(by_id[query["expected"][0]].text)
    for query in sets["hard"]:
        [answer] = query["expected"]
        assert answer.endswith(corpus.BODY) and query["query"] not in flat(by_id[answer].text)
        assert len(by_id[answer].text) >= 80
    # No query is asked twice, and no document answers two queries.
    assert len({g["query"] for g in golden}) == len({g["expected"][0] for g in golden}) == 80


def test_a_documents_text_does_not_depend_on_the_corpus_size():
    assert corpus.stdlib_documents(60) == corpus.stdlib_documents(400)[:60]


def test_scaled_documents_are_joined_from_whole_docstrings_only():
    """Past the stdlib's docstrings the corpus joins bodies of two whole docstrings, never a
    `hard` answer's docstring: the hard set keeps its meaning at 100k documents."""
    everything = corpus.stdlib_documents(len(corpus._docstrings_of_stdlib()) + 300)
    whole = {d.id for d in everything if "+" not in d.id and not d.id.endswith(corpus.BODY)}
    extras = [d for d in everything if "+" in d.id]
    assert len(extras) == 300 and len(whole) < len(everything) - 300
    assert all(set(d.id.split("+")) <= whole for d in extras)


def test_old_golden_files_are_the_easy_set():
    assert corpus.golden_set({"query": "q", "expected": ["a"]}) == "easy"
    assert corpus.golden_set({"query": "q", "expected": ["a"], "set": "hard"}) == "hard"


def brute_force_recall(entry: config.CatalogEntry, documents: list[corpus.Document], k: int = 10) -> dict:
    """recall@k per golden set with exact nearest neighbours (no OpenSearch): the model alone."""
    embedder = models.load_artifact(builds.build(entry), entry.artifact_sha256, entry.family, entry.version)
    golden = corpus.golden_queries(documents)
    vectors = embedder.encode([d.text for d in documents])
    queries = embedder.encode([g["query"] for g in golden])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    top = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    found: dict[str, list[bool]] = {}
    for query, row in zip(golden, top):
        found.setdefault(query["set"], []).append(query["expected"][0] in {documents[j].id for j in row})
    return {name: sum(hits) / len(hits) for name, hits in found.items()}


def test_the_hard_set_tells_minilm_from_hashgram(catalog):
    """Both models pass the easy set; on the hard one MiniLM clears its own floor, hashgram does not."""
    documents = corpus.stdlib_documents(200)
    minilm = brute_force_recall(catalog.get("v4"), documents)
    hashgram = brute_force_recall(catalog.get("v1"), documents)
    floors = config.CheckSettings().recall_floors
    assert minilm["easy"] >= floors(catalog.get("v4"))["easy"] and hashgram["easy"] >= 0.8
    assert minilm["hard"] >= floors(catalog.get("v4"))["hard"]
    assert floors(catalog.get("v1"))["hard"] <= hashgram["hard"] < floors(catalog.get("v4"))["hard"]
    assert minilm["hard"] - hashgram["hard"] >= 0.2


# ------------------------------------------------------------------------------ floors (config)


def test_floors_are_per_version_and_set_and_a_stack_only_raises_them(catalog):
    default = config.CheckSettings()
    assert default.recall_floors(catalog.get("v4")) == {"easy": 0.9, "hard": 0.5}
    assert default.recall_floors(catalog.get("v1")) == {"easy": 0.8, "hard": 0.1}
    lower = config.CheckSettings.model_validate({"recallFloor": 0.6})
    assert lower.recall_floors(catalog.get("v4"))["easy"] == 0.9
    assert lower.recall_floors(catalog.get("v1"))["easy"] == 0.6
    higher = config.CheckSettings.model_validate({"recallFloor": 0.95})
    assert higher.recall_floors(catalog.get("v4")) == {"easy": 0.95, "hard": 0.5}


@pytest.mark.parametrize(
    ("floor", "named"),
    [({"hard": 1.5}, "versions.v1.recallFloor.hard"), ({"medium": 0.5}, "versions.v1.recallFloor.medium")],
)
def test_a_bad_catalog_floor_is_named_by_field(tmp_path, floor, named):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    text = (config.STACKS_DIR / config.CATALOG_FILE).read_text()
    old = "    recallFloor: {hard: 0.1}\n"
    (stacks / config.CATALOG_FILE).write_text(text.replace(old, f"    recallFloor: {json.dumps(floor)}\n", 1))
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config.load_catalog(stacks)


# ----------------------------------------------------------------- the check's probe (real servers)


@pytest.fixture(scope="module")
def deployed(servers, catalog):
    """A v1 stack of 200 documents deployed on the real servers (both golden sets uploaded)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    settings = config.settings_from_config(
        name,
        {
            "pin": "v1",
            "slots": {"blue": "v1"},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "corpus": {"bucket": f"{name}-corpus", "size": 200},
            "opensearch": {"indexPrefix": name},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{name}/live",
        },
        catalog,
    )
    result = orchestrator.apply(settings, catalog, progress=False, say=lambda _: None)
    assert result.record is not None and result.record.passed
    yield settings
    endpoints.stop_local_slots(settings)
    clients.opensearch().indices.delete(index=f"{name}-*", params={"ignore_unavailable": "true"})


def recall_check(record: check.CheckRecord) -> check.Check:
    return next(c for c in record.checks if c.name == "recall")


def with_floor(catalog: config.Catalog, version: str, floor: dict) -> config.Catalog:
    data = catalog.model_dump(by_alias=True)
    for entry in data["versions"]:
        if entry["version"] == version:
            entry["recallFloor"] = floor
    return config.Catalog.model_validate(data)


def test_the_probe_measures_both_sets_against_the_versions_floors(deployed, catalog):
    result = recall_check(check.run(deployed, catalog, seed=3))
    assert result.passed, result.observed
    assert result.expected == "hard ≥ 0.10, easy ≥ 0.80"
    hard, easy = (float(part.split()[-1]) for part in result.observed.removeprefix("recall@10 ").split(", "))
    assert easy >= 0.8 and 0.1 <= hard < 0.6


def test_a_version_floor_above_what_the_index_answers_fails_recall(deployed, catalog):
    """The same index and endpoint, judged by a catalog whose v1 promises MiniLM's hard recall."""
    strict = with_floor(catalog, "v1", {"hard": 0.9})
    record = check.run(deployed, strict, seed=3)
    assert {c.name for c in record.failures} == {"recall"}
    assert recall_check(record).expected == "hard ≥ 0.90, easy ≥ 0.80"


def test_a_golden_file_without_sets_is_checked_as_the_easy_set(deployed, catalog, s3):
    bucket, key = deployed.corpus.bucket, deployed.corpus.golden_key
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    easy_only = [
        {"query": g["query"], "expected": g["expected"]}
        for g in map(json.loads, original.decode().splitlines())
        if g["set"] == "easy"
    ]
    s3.put_object(Bucket=bucket, Key=key, Body=corpus.to_jsonl(easy_only))
    try:
        # A hard floor nothing could reach: it is not checked when the file has no hard set.
        result = recall_check(check.run(deployed, with_floor(catalog, "v1", {"hard": 1.0}), seed=3))
        assert result.passed and result.expected == "easy ≥ 0.80"
        assert result.observed.startswith("recall@10 easy ")
        assert result.observed.endswith("; not checked: hard (the golden set has no such queries)")
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    assert corpus_store.read_golden(s3, deployed) == [json.loads(line) for line in original.decode().splitlines()]
