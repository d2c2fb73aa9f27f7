"""Issue #19: stale writers of derived records. A worker pinned to a version that was rolled back,
writing through `lockstep.derived` after the rollback, is refused (a `recompute` store) or
quarantined (a `quarantine` store) on its first write after the pointer moved, and the check stays
green. The guard reads the pointer through a TTL cache; its behaviour with a stale cache (the
window of at most `ttl` after a cutover) is asserted too. A fake clock drives the cache: no test
here depends on how long anything takes.
"""

from __future__ import annotations

import pytest

from lockstep import config, orchestrator, stackfile
from lockstep import derived as application
from lockstep.ops import check, clients, derived, endpoints, index

SIZE = 40
TTL = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quiet(_: str) -> None:
    pass


@pytest.fixture
def stack(servers, scratch_stack, catalog, unique):
    """v2 live (v1 warm in blue), one `recompute` store and one `quarantine` store."""
    stores = [
        {"name": "related", "kind": "related-documents", "table": f"{unique}-related", "writeRate": 1000},
        {
            "name": "audit",
            "kind": "related-documents",
            "table": f"{unique}-audit",
            "repair": "quarantine",
            "writeRate": 1000,
        },
    ]
    stacks, name = scratch_stack(corpus={"size": SIZE}, derived=stores)

    def apply(pin: str) -> check.CheckRecord:
        stackfile.set_pin(name, pin, stacks)
        result = orchestrator.apply(config.load_stack(name, stacks), catalog, progress=False, say=quiet)
        assert result.record is not None
        return result.record

    for pin in ("v1", "v2"):
        record = apply(pin)
        assert record.passed, [(c.name, c.observed) for c in record.failures]
    yield stacks, name, apply
    endpoints.stop_local_slots(config.load_stack(name, stacks))


def records(settings, store: str) -> dict[str, dict]:
    return derived.read_records(settings, next(s for s in settings.derived if s.name == store))


def test_a_worker_of_the_rolled_back_version_is_refused_or_quarantined_and_the_check_stays_green(stack, catalog):
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    clock = Clock()
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=clock)
    audit = application.Writer(settings, "audit", "v2", ttl=TTL, clock=clock)
    assert (related.policy, audit.policy) == ("refuse", "quarantine")

    # While v2 is live the worker writes, stamped with its version and the content hash.
    assert related.put("doc-a", {"neighbours": ["x", "y"], "k": 2}, text="alpha") == "written"
    assert audit.put("doc-a", {"neighbours": ["x", "y"], "k": 2}, text="alpha") == "written"
    stored = records(settings, "related")["doc-a"]
    assert stored["model_version"] == "v2" and stored["content_sha256"] == application.content_sha256("alpha")

    rolled_back = apply("v1")  # the rollback: the pointer moves to v1; the repair handles doc-a
    assert rolled_back.passed
    settings = config.load_stack(name, stacks)
    before = records(settings, "related")

    clock.now += TTL  # the worker's next write after the pointer moved, its cache expired
    with pytest.raises(application.StaleWriter, match=r"runs v2 but v1 is live .*nothing was written"):
        related.put("doc-b", {"neighbours": ["x"], "k": 1}, text="beta")
    assert records(settings, "related") == before, "a refused write wrote something"

    assert audit.put("doc-b", {"neighbours": ["x"], "k": 1}, text="beta") == "quarantined"
    kept = records(settings, "audit")["doc-b"]
    assert (kept["model_version"], kept["quarantined_for"]) == ("v2", "v1") and kept["quarantined_at"]
    assert related.pointer.reads == 2 and audit.pointer.reads == 2, "one pointer read per TTL, not per record"

    after = check.run(settings, catalog)
    assert after.passed, [c.observed for c in after.failures]
    # doc-a quarantined by the rollback's repair, doc-b by the guard
    assert next(c for c in after.checks if c.name == "derived:audit").observed.endswith("quarantined (kept): 2 of v2")


def test_a_stale_cache_lets_writes_pass_for_at_most_the_ttl_and_the_check_and_apply_see_them(stack, catalog):
    """The explicit stale-cache behaviour: a worker whose cache was filled before the cutover keeps
    writing as the old version until the cache is `ttl` old; those records carry their version,
    so the check fails on them (it never hides them) and the next apply repairs them."""
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    clock = Clock()
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=clock)
    assert related.put("doc-a", {"neighbours": [], "k": 0}, sha256="ab" * 32) == "written"

    assert apply("v1").passed
    late = sorted(index.doc_hashes(clients.opensearch(), settings.opensearch.index_name("v1")))[0]
    clock.now += TTL / 2  # within the TTL: the cache still says v2 is live
    assert related.put(late, {"neighbours": [], "k": 0}, text="late") == "written"
    assert related.pointer.reads == 1
    clock.now += TTL / 2  # the cache is TTL old: the next write reads the pointer and is refused
    with pytest.raises(application.StaleWriter):
        related.put("doc-later", {"neighbours": [], "k": 0}, text="later")
    assert "doc-later" not in records(settings, "related")

    settings = config.load_stack(name, stacks)
    seen = check.run(settings, catalog)
    row = next(c for c in seen.checks if c.name == "derived:related")
    assert not row.passed and "1 records of v2" in row.observed
    assert apply("v1").passed  # the repair recomputes the late record with v1
    repaired = records(settings, "related")[late]
    assert (repaired["model_version"], repaired["repaired_from"]) == ("v1", "v2")


def test_a_write_is_refused_when_the_pointer_cannot_be_read(stack, monkeypatch):
    """Fail closed: no pointer answer within the TTL, no write."""
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=Clock())
    monkeypatch.setattr(
        application.index, "read_pointer", lambda *_: (_ for _ in ()).throw(application.UsageError("down"))
    )
    with pytest.raises(application.UsageError, match="down"):
        related.put("doc-x", {"k": 0}, text="x")
    assert "doc-x" not in records(settings, "related")
