"""The drill (what `make demo` runs), small: each act's check outcome is asserted for real."""

import json

from rich.console import Console

from lockstep import drill


def test_drill_tells_the_story_with_real_check_outcomes(servers, tmp_path):
    console = Console(file=open(tmp_path / "drill.log", "w"), width=120)
    result = drill.run(docs=150, out_dir=tmp_path, keep=False, progress=False, console=console)
    outcomes = {act.number: act.check_passed for act in result.acts}
    assert outcomes == {"1": True, "2": True, "3": False, "4": True, "5a": True, "5b": True}
    naive = next(a for a in result.acts if a.number == "3")
    # Same dimension, other space: the probes see it, and so do the stamps the naive writer left.
    assert {"reembed-probe", "recall", "endpoint-artifact"} <= set(naive.failures)
    assert naive.probe["right"] is False
    # The related-document lists v2's job wrote are still there, pointing at v2's neighbours.
    lists = 150 + drill.ARRIVALS
    assert naive.related["records_by_version"] == {"v2": lists}
    assert naive.related["agreement"] < 0.5 and naive.related["example"]["stored"] != naive.related["example"]["fresh"]
    rollback = next(a for a in result.acts if a.number == "4")
    assert rollback.probe["right"] is True and rollback.recall >= 0.7
    # v1 misses the documents that arrived during the naive rollback; v2 holds them, embedded by v1.
    assert rollback.plan == {
        "index_action": "reattach",
        "docs_to_embed": 2 * drill.ARRIVALS,
        "endpoint_action": "deploy",
        "reversible": True,
        "derived": {"related": {"records_by_version": {"v2": lists}, "action": "recompute"}},
    }
    # The rollback repaired them: every list is v1's, and equals what v1 computes afresh.
    assert rollback.related["records_by_version"] == {"v1": lists} and rollback.related["agreement"] == 1.0
    rebuilt = next(a for a in result.acts if a.number == "5b")
    assert rebuilt.embedded >= 150 + 2 * drill.ARRIVALS
    report = tmp_path.glob("drill-*/report.html")
    html = next(report).read_text()
    assert "<svg" in html and "naive rollback" in html
    records = json.loads(next(tmp_path.glob("drill-*/report.json")).read_text())
    assert [r["number"] for r in records] == ["1", "2", "3", "4", "5a", "5b"]
