"""`lockstep drill`: the whole rollback story on the embedded default, with real servers.

Acts: deploy v1; upgrade to v2 with dual writes; the naive rollback (endpoint back to v1, index
left on v2, documents still arriving) that the check catches; the lockstep rollback (plan, pin,
apply); rollback to a version whose index was dropped; then the real model: upgrade to v4
(all-MiniLM-L6-v2, another family and dimension), its naive rollback, its lockstep rollback. Each
act runs the same commands a person would (`pin`, `plan`, `apply`, `check`) on a scratch stack,
and the drill ends with a table and an HTML timeline of recall (both golden sets) across the acts
and what each re-embed cost.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from opensearchpy.exceptions import RequestError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from lockstep import config, models, orchestrator, reader, report, services, stackfile
from lockstep.errors import IntegrityError
from lockstep.models import builds
from lockstep.ops import check, clients, corpus, corpus_store, derived, endpoints
from lockstep.ops.check import CheckRecord  # by name: the method Drill.check shadows the module in the class body
from lockstep.ops.corpus import Document, stdlib_documents
from lockstep.plan import TIMED

STACK = "drill"
ARRIVALS = 20  # documents that arrive during each of acts 2 and 3
REAL_MODEL = "v4"  # the catalog's real model (sentence-transformers); acts 6a-6c


@dataclass
class Act:
    number: str
    title: str
    action: str
    seconds: float = 0.0
    embedded: int = 0
    check_passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    # recall@k per golden set (corpus.SETS) through the alias; empty when queries fail.
    recall: dict[str, float] = field(default_factory=dict)
    probe: dict = field(default_factory=dict)
    # What the act's re-embedding cost: {version, family, docs, seconds, docs_per_s}; {} when none.
    reembed: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    # Related-document lists after the act: records by version, agreement with a fresh computation.
    related: dict = field(default_factory=dict)
    # The plan's ETA beside what each data-sized step took: {kind, version, estimate, actual} (seconds).
    timings: list[dict] = field(default_factory=list)
    started_at: float = 0.0

    def timed(self) -> str:
        """Estimate vs actual over the act's timed steps: '~2.1s / 3.4s', 'unknown / 3.4s' or ''."""
        if not self.timings:
            return ""
        estimates = [t["estimate"] for t in self.timings]
        estimate = "unknown" if None in estimates else f"~{sum(estimates):.1f}s"
        return f"{estimate} / {sum(t['actual'] for t in self.timings):.1f}s"


@dataclass
class DrillReport:
    stack_dir: str
    docs: int
    acts: list[Act] = field(default_factory=list)
    html: str = ""

    @property
    def expected_outcomes(self) -> bool:
        """Every act's check passed, except the naive rollback's, which must fail."""
        return all(
            (act.check_passed is False) if act.action == "naive rollback" else bool(act.check_passed)
            for act in self.acts
        )


class Drill:
    def __init__(self, docs: int, out_dir: Path, console: Console, progress: bool = True, engine: str = "local"):
        self.console = console
        self.progress = progress
        self.engine = engine  # backfill.engine of the scratch stack: local, or ray (a local Ray runtime)
        self.run_id = uuid.uuid4().hex[:8]
        # Named per run: two drills at once (a demo beside a test run) never share slot processes.
        self.stack = f"{STACK}-{self.run_id}"
        self.root = out_dir / f"drill-{datetime.now(UTC):%Y%m%d-%H%M%S}-{self.run_id}"
        self.stacks = self.root / "stacks"
        self.docs = docs
        self.report = DrillReport(str(self.stacks), docs)
        self.began = time.monotonic()
        self.probe_query: dict | None = None
        extra = stdlib_documents(docs + 2 * ARRIVALS)
        self.arrivals = [extra[docs : docs + ARRIVALS], extra[docs + ARRIVALS :]]

    # ------------------------------------------------------------------ the scratch stack

    def write_stack(self) -> None:
        name = f"drill-{self.run_id}"
        stackfile.write_stack(
            self.stacks,
            self.stack,
            {
                "aws:region": services.REGION,
                "pin": "v1",
                "slots": {"blue": "v1"},
                "retain": [],
                "artifacts": {"bucket": f"lockstep-{name}-artifacts"},
                "opensearch": {"engine": "lucene", "indexPrefix": name},
                "corpus": {"bucket": f"lockstep-{name}-corpus", "size": self.docs},
                "endpoints": {"backend": "local"},
                "check": {"k": 10},
                "pointerParameter": f"/lockstep/{name}/live",
                "backfill": {"engine": self.engine},
                "derived": [
                    {
                        "name": "related",
                        "kind": "related-documents",
                        "table": f"lockstep-{name}-related",
                        "repair": "recompute",
                        "writeRate": 2000,
                        "writerGuard": "verify",  # the embedded moto: transactions are too slow
                    }
                ],
            },
            comment="Scratch stack written by `lockstep drill`.",
        )

    def settings(self) -> config.StackSettings:
        return config.load_stack(self.stack, self.stacks)

    @property
    def catalog(self) -> config.Catalog:
        return config.load_catalog(self.stacks)

    # ------------------------------------------------------------------ helpers

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def begin(self, number: str, title: str, action: str) -> Act:
        act = Act(number, title, action, started_at=time.monotonic() - self.began)
        self.console.rule(f"[bold]Act {number}: {title}")
        self.report.acts.append(act)
        return act

    def pin(self, version: str) -> None:
        change = stackfile.set_pin(self.stack, version, self.stacks)
        self.say(f"$ lockstep pin --stack {self.stack} {version}\n  {change.summary()}")

    def apply(self, act: Act, before_cutover=None) -> None:
        settings = self.settings()
        self.say(f"$ lockstep apply --stack {self.stack}")
        result = orchestrator.apply(
            settings, self.catalog, progress=self.progress, say=self.say, before_cutover=before_cutover
        )
        act.embedded += result.embedded
        self.record_timings(act, result)
        embedding = [s for s in result.steps if s.step.kind in ("provision", "catch_up")]
        if result.embedded and embedding:
            entry = self.catalog.get(embedding[0].step.version)
            seconds = sum(s.seconds for s in embedding)
            act.reembed = {
                "version": entry.version,
                "family": entry.family,
                "docs": result.embedded,
                "seconds": round(seconds, 2),
                "docs_per_s": round(result.embedded / max(seconds, 1e-9), 1),
            }
            self.say(
                f"  re-embedded {result.embedded} documents with {entry.version} ({entry.family}) in {seconds:.1f}s: "
                f"{act.reembed['docs_per_s']:,.1f} docs/s"
            )
        self.record_check(act, result.record)

    def record_timings(self, act: Act, result: orchestrator.ApplyResult) -> None:
        """The plan's ETA (from rates earlier runs measured, else a first plan's calibration, else unknown)
        beside what the step took."""
        for done in (r for r in result.steps if r.step.kind in TIMED):
            eta = done.step.eta_seconds
            act.timings.append(
                {
                    "kind": done.step.kind,
                    "version": done.step.version,
                    "estimate": eta,
                    "estimated": done.step.eta_estimated,
                    "actual": round(done.seconds, 2),
                }
            )
            estimate = "unknown (never measured)" if eta is None else f"~{eta:g}s"
            estimate += " (calibration, not measured yet)" if done.step.eta_estimated else ""
            self.say(f"  {done.step.kind} {done.step.version}: estimated {estimate}, took {done.seconds:.1f}s")

    def check(self, act: Act) -> None:
        self.say(f"$ lockstep check --stack {self.stack}")
        record = check.run(self.settings(), self.catalog)
        check.store(record, self.settings())
        self.record_check(act, record)

    def record_check(self, act: Act, record: CheckRecord | None) -> None:
        if record is None:
            act.check_passed = False
            return
        report.print_check(record, self.console)
        act.check_passed = record.passed
        act.failures = [c.name for c in record.failures]

    def arrive(self, documents: list[Document]) -> None:
        """New documents land in the corpus (the source of truth) first."""
        settings = self.settings()
        s3 = clients.aws_for(settings, "s3")
        current = corpus_store.read_corpus(s3, settings)
        corpus_store.write_corpus(s3, settings, current + documents)

    def measure(self, act: Act) -> None:
        """Recall of both golden sets and the answer to one probe query that a person can read, as
        an application's reader gets them (`lockstep.reader`: the pointer's endpoint encodes, the
        pointer's index answers). A reader's refusal (the endpoint serves another artifact than the
        pointer names) or a query OpenSearch refuses is the observation."""
        settings = self.settings()
        s3 = clients.aws_for(settings, "s3")
        golden = corpus_store.read_golden(s3, settings)
        live = reader.Reader(settings, ttl=0)
        if self.probe_query is None:
            self.probe_query = self.pick_probe(s3, settings, [g for g in golden if corpus.golden_set(g) == "easy"])
        query = self.probe_query
        try:
            act.recall = check.recall_by_set(live, golden, settings.check.k)
            top = [hit["_id"] for hit in live.search(query["query"], k=3).hits]
        except (RequestError, reader.PointerUnreadable, reader.StaleReading, IntegrityError) as exc:
            refused = not isinstance(exc, RequestError)
            info = None if refused else getattr(exc, "info", None)
            reason = info.get("error", {}).get("reason", exc) if isinstance(info, dict) else exc
            act.probe = {"query": query["query"], "expected": query["expected"][0], "top3": [], "right": False}
            act.probe["error"] = " ".join(str(reason).split())[:160]
            outcome = "the reader refuses" if refused else "the query fails"
            self.say(f"probe query “{query['query'][:70]}” → [red]{outcome}[/]: {act.probe['error']}")
            return
        act.probe = {
            "query": query["query"],
            "expected": query["expected"][0],
            "top3": top,
            "right": top[:1] == query["expected"][:1],
        }
        verdict = "[green]right[/]" if act.probe["right"] else "[red]WRONG[/]"
        self.say(
            f"probe query “{query['query'][:70]}” → {', '.join(top)}  {verdict} (expected {query['expected'][0]} first)"
            f"\nrecall@{settings.check.k}: {recall_text(act.recall)}"
        )

    def pick_probe(self, s3, settings: config.StackSettings, golden: list[dict]) -> dict:
        """A golden query every hashgram version answers right on its own index, so a wrong
        answer in the drill can only come from a mismatch of endpoint and index. (The real model
        is left out: ranking the corpus with it costs as much as its own act; it answers the
        easy set at recall@10 1.0.)"""
        documents = corpus_store.read_corpus(s3, settings)
        ids = [d.id for d in documents]
        ranked = []
        for entry in self.catalog.versions:
            if entry.version == REAL_MODEL:
                continue
            embedder = models.load_artifact(builds.build(entry), entry.artifact_sha256, entry.family, entry.version)
            vectors = embedder.encode([d.text for d in documents])
            queries = embedder.encode([g["query"] for g in golden])
            ranked.append((queries @ vectors.T).argmax(axis=1))
        for position, query in enumerate(golden):
            if all(ids[best[position]] == query["expected"][0] for best in ranked):
                return query
        return golden[0]

    def related_job(self, version: str) -> None:
        """What the application does while `version` is live: write every document's related list,
        through the application's guarded writer (lockstep.derived), as an application would."""
        from lockstep import derived as application

        written = application.write_related(self.settings(), version, progress=self.progress).written
        self.say(f"  the related-documents job writes {written} lists computed on {version}'s index, stamped {version}")

    def inspect_related(self, act: Act, answering: str) -> None:
        """The stored related-document lists against what `answering` (the version now serving
        queries) computes on its own index: how many neighbours agree, and one example."""
        settings = self.settings()
        store = settings.derived[0]
        records = derived.read_records(settings, store)
        client = clients.opensearch(settings.opensearch)
        found = derived.related(client, settings.opensearch.index_name(answering), list(records), store.k)
        fresh = {i: related for i, related in found.items() if related is not None}
        shared = [
            len(set(r["neighbours"]) & set(fresh[i].neighbours)) / store.k for i, r in records.items() if fresh.get(i)
        ]
        by_version: dict[str, int] = {}
        for record in records.values():
            by_version[record["model_version"]] = by_version.get(record["model_version"], 0) + 1
        example = next(i for i in sorted(records) if fresh.get(i))
        act.related = {
            "records_by_version": by_version,
            "answering": answering,
            "agreement": round(sum(shared) / max(len(shared), 1), 3),
            "example": {
                "doc": example,
                "stored": records[example]["neighbours"],
                "fresh": list(fresh[example].neighbours),
            },
        }
        verdict = "[green]right[/]" if act.related["agreement"] == 1 else "[red]STALE[/]"
        self.say(
            f"related-document lists in {store.table}: {', '.join(f'{n} by {v}' for v, n in by_version.items())}; "
            f"{act.related['agreement']:.0%} of their neighbours are what {answering} finds  {verdict}"
            f"\n  e.g. {example}: stored {', '.join(records[example]['neighbours'][:3])}… — "
            f"{answering} says {', '.join(fresh[example].neighbours[:3])}…"
        )

    def plan(self, act: Act, version: str) -> None:
        """`lockstep plan --to VERSION`, printed and kept in the act."""
        target = self.settings().with_pin(version)
        self.say(f"$ lockstep plan --stack {self.stack} --to {version}")
        _, planned = orchestrator.plan_for(target, self.catalog)
        self.console.print(report.plan_markdown(planned), markup=False, highlight=False)
        act.plan = planned.to_dict()

    def finish(self, act: Act) -> None:
        act.seconds = time.monotonic() - self.began - act.started_at

    # ------------------------------------------------------------------ the acts

    def run(self) -> DrillReport:
        self.write_stack()
        self.say(
            f"scratch stack: {self.stacks / f'Pulumi.{self.stack}.yaml'}  ({self.docs} documents of stdlib docstrings)"
        )

        act = self.begin("1", "deploy v1", "provision")
        self.apply(act)
        self.related_job("v1")
        self.measure(act)
        self.finish(act)

        act = self.begin("2", "upgrade to v2, dual write", "provision")
        self.pin("v2")
        arrivals = self.arrivals[0]

        def dual_write(settings: config.StackSettings) -> None:
            self.arrive(arrivals)
            written = orchestrator.dual_write(settings, self.catalog, arrivals)
            self.say(
                f"  dual write: {len(arrivals)} new documents → {', '.join(f'{k} ({v})' for k, v in written.items())}"
            )

        self.apply(act, before_cutover=dual_write)
        self.related_job("v2")
        self.measure(act)
        self.finish(act)

        act = self.begin("3", "naive rollback: endpoint v1, index v2", "naive rollback")
        settings = self.settings()
        v1 = self.catalog.get("v1")
        self.say(
            f"redeploy the live {settings.live_slot} endpoint with v1's artifact; the alias stays on "
            f"{settings.opensearch.index_name('v2')}; new documents keep arriving through the endpoint"
        )
        endpoints.deploy_local_slot(settings, settings.live_slot, v1)
        self.arrive(self.arrivals[1])
        orchestrator.naive_write(settings, self.arrivals[1])
        self.check(act)
        self.measure(act)
        self.inspect_related(act, "v1")
        self.finish(act)

        act = self.begin("4", "lockstep rollback to v1", "reattach")
        self.plan(act, "v1")
        self.pin("v1")
        self.apply(act)
        self.measure(act)
        self.inspect_related(act, "v1")
        self.finish(act)

        act = self.begin("5a", "move on to v3 (v2 index dropped)", "provision")
        self.pin("v3")
        self.apply(act)
        self.measure(act)
        self.finish(act)

        act = self.begin("5b", "roll back to v2 (index was dropped)", "provision")
        self.pin("v2")
        self.apply(act)
        self.measure(act)
        self.finish(act)

        self.real_model_acts()
        return self.report

    def real_model_acts(self) -> None:
        """The upgrade users fear most: another family and another dimension (v2 → v4), its naive
        rollback (loud this time: the query vectors do not fit the index) and the lockstep one."""
        real = self.catalog.get(REAL_MODEL)
        act = self.begin("6a", f"upgrade to {REAL_MODEL}: {real.family}, dimension {real.dimension}", "provision")
        self.pin(REAL_MODEL)
        self.apply(act)
        self.measure(act)
        self.finish(act)

        act = self.begin("6b", f"naive rollback: endpoint v2, index {REAL_MODEL}", "naive rollback")
        settings = self.settings()
        self.say(
            f"redeploy the live {settings.live_slot} endpoint with v2's artifact (dimension "
            f"{self.catalog.get('v2').dimension}); the alias stays on {settings.opensearch.index_name(REAL_MODEL)} "
            f"(dimension {real.dimension})"
        )
        endpoints.deploy_local_slot(settings, settings.live_slot, self.catalog.get("v2"))
        self.check(act)
        self.measure(act)
        self.finish(act)

        act = self.begin("6c", "lockstep rollback to v2", "reattach")
        self.plan(act, "v2")
        self.pin("v2")
        self.apply(act)
        self.measure(act)
        self.finish(act)


def recall_text(recall: dict[str, float]) -> str:
    """`easy 0.95 · hard 0.30`, or that the queries failed."""
    return " · ".join(f"{name} {recall[name]:.2f}" for name in corpus.SETS if name in recall) or "queries fail"


def cost_text(reembed: dict) -> str:
    """What an act's re-embed cost: `2040 docs, 51.0s, 40.0 docs/s (sentence-transformers)`."""
    if not reembed:
        return "0"
    return (
        f"{reembed['docs']} docs, {reembed['seconds']:.1f}s, {reembed['docs_per_s']:,.1f} docs/s ({reembed['family']})"
    )


def cost_by_family(result: DrillReport) -> dict[str, float]:
    """Re-embed docs/s per model family over the drill's acts (all documents / all seconds)."""
    docs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for act in result.acts:
        if act.reembed:
            family = act.reembed["family"]
            docs[family] = docs.get(family, 0) + act.reembed["docs"]
            seconds[family] = seconds.get(family, 0) + act.reembed["seconds"]
    return {family: docs[family] / max(seconds[family], 1e-9) for family in docs}


def summary_table(result: DrillReport) -> Table:
    table = Table(title="lockstep drill", title_justify="left")
    for column in ("act", "what", "action", "time", "ETA / took", "re-embedded", "check", "recall@k", "probe"):
        table.add_column(column)
    for act in result.acts:
        verdict = (
            "—"
            if act.check_passed is None
            else ("[green]✓[/]" if act.check_passed else "[red]✗[/] " + ", ".join(act.failures))
        )
        probe = "" if not act.probe else ("[green]right[/]" if act.probe.get("right") else "[red]wrong[/]")
        table.add_row(
            act.number,
            act.title,
            act.action,
            f"{act.seconds:.1f}s",
            act.timed(),
            cost_text(act.reembed),
            verdict,
            recall_text(act.recall),
            probe,
        )
    rates = cost_by_family(result)
    if rates:
        table.caption = "re-embed: " + ", ".join(f"{family} {rate:,.1f} docs/s" for family, rate in rates.items())
    return table


def write_html(result: DrillReport, path: Path) -> None:
    """A self-contained page: the act table, an SVG timeline of recall (one line per golden set)
    across the acts, and what each re-embed cost."""
    width, height, pad = 760, 260, 50
    colours = {"easy": "#1565c0", "hard": "#8e24aa"}
    total = max(sum(a.seconds for a in result.acts), 1e-6)
    x: float = pad
    points: list[tuple[str, float, float, Act, float]] = []
    bars: list[str] = []
    for act in result.acts:
        w = max((width - 2 * pad) * act.seconds / total, 4)
        colour = "#2e7d32" if act.check_passed else "#c62828"
        bars.append(
            f'<rect x="{x:.1f}" y="{height - pad + 8}" width="{w:.1f}" height="14" fill="{colour}"><title>Act {act.number}: {act.seconds:.1f}s</title></rect>'
            f'<text x="{x + w / 2:.1f}" y="{height - pad + 38}" font-size="11" text-anchor="middle">{act.number}</text>'
        )
        for name, value in act.recall.items():
            points.append((name, x + w, height - pad - value * (height - 2 * pad), act, value))
        if not act.recall:  # the queries failed: recall is nothing
            points += [(name, x + w, height - pad, act, 0.0) for name in corpus.SETS]
        x += w
    lines = "".join(
        f'<polyline points="{" ".join(f"{px:.1f},{py:.1f}" for n, px, py, _, _ in points if n == name)}" '
        f'fill="none" stroke="{colour}" stroke-width="2"/>'
        f'<text x="{width - pad + 4}" y="{pad + 14 * position:.1f}" font-size="11" fill="{colour}">{name}</text>'
        for position, (name, colour) in enumerate(colours.items())
    )
    dots = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{"#2e7d32" if a.check_passed else "#c62828"}" stroke="{colours.get(name, "#333")}">'
        f"<title>Act {a.number}: {name} recall {value:.2f}</title></circle>"
        f'<text x="{px:.1f}" y="{py - 8:.1f}" font-size="10" text-anchor="middle" fill="{colours.get(name, "#333")}">{value:.2f}</text>'
        for name, px, py, a, value in points
    )
    svg = (
        f'<svg width="{width}" height="{height + 20}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="8" y="{pad + 4}" font-size="11">1.0</text><text x="8" y="{height - pad + 4}" font-size="11">0.0</text>'
        f"{lines}{dots}{''.join(bars)}"
        f'<text x="{width / 2}" y="{height + 14}" font-size="11" text-anchor="middle">acts on a time axis (bar width = duration; green = check passed)</text></svg>'
    )
    rows = "".join(
        f"<tr><td>{a.number}</td><td>{a.title}</td><td>{a.action}</td><td>{a.seconds:.1f}s</td><td>{a.timed()}</td><td>{cost_text(a.reembed)}</td>"
        f"<td class={'ok' if a.check_passed else 'bad'}>{'✓' if a.check_passed else '✗ ' + ', '.join(a.failures)}</td>"
        f"<td>{recall_text(a.recall) if a.probe else ''}</td>"
        f"<td>{'' if not a.probe else ('right' if a.probe.get('right') else 'wrong: ' + (a.probe.get('error') or ', '.join(a.probe.get('top3', []))))}</td></tr>"
        for a in result.acts
    )
    rates = cost_by_family(result)
    costs = "".join(f"<tr><td>{family}</td><td>{rate:,.1f} docs/s</td></tr>" for family, rate in rates.items())
    page = f"""<!doctype html><meta charset="utf-8"><title>lockstep drill</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}}
.ok{{color:#2e7d32}}.bad{{color:#c62828}}</style>
<h1>lockstep drill</h1><p>{result.docs} documents · stack files in <code>{result.stack_dir}</code></p>
<h2>Recall of the golden queries across the acts</h2>
<p><b>easy</b>: a docstring's first sentence retrieves the docstring; <b>hard</b>: it retrieves the docstring
stored without that sentence (only meaning finds it). The check holds each set to the live version's floor.</p>{svg}
<h2>Acts</h2><table><tr><th>act</th><th>what</th><th>action</th><th>time</th><th>ETA / took</th><th>re-embed cost</th><th>check</th><th>recall@k</th><th>probe query</th></tr>{rows}</table>
<h2>Re-embedding rate by model family</h2><table><tr><th>family</th><th>documents per second (embed + write)</th></tr>{costs}</table>"""
    path.write_text(page, encoding="utf-8")


def run(
    docs: int, out_dir: Path, keep: bool, progress: bool = True, console: Console | None = None, engine: str = "local"
) -> DrillReport:
    # In a log (not a terminal) rich would wrap the tables at 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 140)
    states = services.up()
    started = [s.name for s in states if s.source == "started"]
    if started:
        console.print(f"started {', '.join(started)} for the drill")
    drill = Drill(docs, out_dir, console, progress, engine)
    try:
        result = drill.run()
    finally:
        if not keep:
            try:
                endpoints.stop_local_slots(drill.settings())
            finally:  # the services it started stop even when the slots could not be listed
                if started:
                    services.down(started)
    console.print(summary_table(result))
    html = drill.root / "report.html"
    write_html(result, html)
    (drill.root / "report.json").write_text(json.dumps([asdict(a) for a in result.acts], indent=2))
    result.html = str(html)
    console.print(
        Panel(
            f"report: {html}\nrecord: {drill.root / 'report.json'}"
            + ("\nenvironment left up (--keep): `lockstep services status`" if keep else "")
        )
    )
    return result
