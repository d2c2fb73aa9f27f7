"""The drill (what `make demo` runs), small: each act's check outcome is asserted for real."""

import json

import pytest
from rich.console import Console

from lockstep import drill


@pytest.fixture(scope="module")
def drilled(servers, tmp_path_factory):
    """One small drill (150 documents) for the module: (its report, its output directory)."""
    out = tmp_path_factory.mktemp("drill")
    with open(out / "drill.log", "w") as log:
        result = drill.run(docs=150, out_dir=out, keep=False, progress=False, console=Console(file=log, width=140))
    return result, out


def test_drill_tells_the_story_with_real_check_outcomes(drilled):
    result, tmp_path = drilled
    outcomes = {act.number: act.check_passed for act in result.acts}
    assert outcomes == {
        "1": True,
        "2": True,
        "3": False,
        "4": True,
        "5a": True,
        "5b": True,
        "6a": True,
        "6b": False,
        "6c": True,
    }
    naive = next(a for a in result.acts if a.number == "3")
    # Same dimension, other space: the probes see it, and so do the stamps the naive writer left.
    assert {"reembed-probe", "recall", "endpoint-artifact"} <= set(naive.failures)
    assert naive.probe["right"] is False
    # The related-document lists v2's job wrote are still there, pointing at v2's neighbours.
    lists = 150 + drill.ARRIVALS
    assert naive.related["records_by_version"] == {"v2": lists}
    assert naive.related["agreement"] < 0.5 and naive.related["example"]["stored"] != naive.related["example"]["fresh"]
    rollback = next(a for a in result.acts if a.number == "4")
    assert rollback.probe["right"] is True and rollback.recall["easy"] >= 0.8 and rollback.recall["hard"] >= 0.1
    # v1 misses the documents that arrived during the naive rollback; v2 holds them, embedded by v1.
    plan = rollback.plan  # the plan's JSON, as `lockstep plan --format json` prints it
    assert (plan["index_action"], plan["docs_to_embed"], plan["endpoint_action"], plan["reversible"]) == (
        "reattach",
        2 * drill.ARRIVALS,
        "deploy",
        True,
    )
    assert [(d["store"], d["records_by_version"], d["action"]) for d in plan["derived"]] == [
        ("related", {"v2": lists}, "recompute")
    ]
    # Each data-sized step's ETA (a rate an earlier run measured, or unknown) beside what it took.
    assert {t["kind"] for t in rollback.timings} == {"catch_up", "repair_derived"}
    assert all(t["actual"] > 0 and (t["estimate"] is None or t["estimate"] >= 0) for t in rollback.timings)
    # The rollback repaired them: every list is v1's, and equals what v1 computes afresh.
    assert rollback.related["records_by_version"] == {"v1": lists} and rollback.related["agreement"] == 1.0
    rebuilt = next(a for a in result.acts if a.number == "5b")
    assert rebuilt.embedded >= 150 + 2 * drill.ARRIVALS
    assert rebuilt.reembed["family"] == "hashgram" and rebuilt.reembed["docs"] == rebuilt.embedded


def test_drill_real_model_acts(drilled):
    """Act 6: v2 → v4 (sentence-transformers, dimension 384) re-embeds the corpus with the real
    model; the naive rollback (endpoint v2, index v4) is caught; the lockstep rollback reattaches
    v2's retained index without re-embedding it. Recall of both golden sets is kept per act."""
    result, tmp_path = drilled
    acts = {act.number: act for act in result.acts}
    upgrade, naive, back, hashgram = acts["6a"], acts["6b"], acts["6c"], acts["5b"]
    assert result.expected_outcomes
    docs = 150 + 2 * drill.ARRIVALS
    assert upgrade.check_passed and upgrade.embedded == docs
    assert upgrade.reembed["family"] == "sentence-transformers" and upgrade.reembed["docs"] == docs
    assert upgrade.reembed["docs_per_s"] < hashgram.reembed["docs_per_s"]
    # The real model clears its own floors, and the hard set is where it beats hashgram.
    assert upgrade.recall["easy"] >= 0.9 and upgrade.recall["hard"] >= 0.5
    assert upgrade.recall["hard"] > hashgram.recall["hard"] + 0.15
    # Another dimension: the naive rollback is loud — the queries fail and the check names why.
    assert naive.check_passed is False
    assert {"reembed-probe", "recall", "endpoint-artifact"} <= set(naive.failures)
    assert naive.recall == {} and naive.probe["right"] is False and naive.probe["error"]
    # The lockstep rollback: v2's index was kept (standby slot), so nothing is re-embedded.
    assert back.plan["index_action"] == "reattach" and back.plan["docs_to_embed"] == 0
    assert back.check_passed and back.embedded == 0 and back.reembed == {}
    assert back.probe["right"] is True and back.recall["easy"] >= 0.8
    assert abs(back.recall["hard"] - hashgram.recall["hard"]) < 1e-9
    html = next(tmp_path.glob("drill-*/report.html")).read_text()
    assert "sentence-transformers" in html and "hard" in html and "docs/s" in html
    records = json.loads(next(tmp_path.glob("drill-*/report.json")).read_text())
    assert [r["number"] for r in records][-3:] == ["6a", "6b", "6c"]
    assert records[-3]["recall"].keys() == {"easy", "hard"}
    report = tmp_path.glob("drill-*/report.html")
    html = next(report).read_text()
    assert "<svg" in html and "naive rollback" in html
    records = json.loads(next(tmp_path.glob("drill-*/report.json")).read_text())
    assert [r["number"] for r in records] == ["1", "2", "3", "4", "5a", "5b", "6a", "6b", "6c"]
