"""The corpus: real text already on the machine (Python standard library docstrings) as JSONL.

Documents are `{"id", "text", "updated_at"}`; `content_sha256` is derived from the text, so a
changed document is found by comparing hashes, never timestamps.

Two golden query sets, both a docstring's first sentence as the query:
- `easy`: the document is the whole docstring, so the query's words are in it (nearly lexical:
  hashed n-grams and a transformer both find it, R@10 ~0.95-0.99);
- `hard`: the document is the docstring *without* its first sentence (id `<id>~body`), so the
  query must be matched by meaning (what separates a real model from hashed n-grams).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lockstep.errors import UsageError

EPOCH = "2026-01-01T00:00:00Z"
# Bumped whenever stdlib_documents() yields other texts (on-disk corpus caches are keyed by it).
REVISION = 2
SETS = ("easy", "hard")
BODY = "~body"  # id suffix of a document that is a docstring without its first sentence
BODY_EVERY = 4  # every 4th docstring (with a body long enough) is stored without its first sentence


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    updated_at: str = EPOCH

    @property
    def content_sha256(self) -> str:
        return content_sha256(self.text)


def content_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            text = ast.get_docstring(node)
            name = module if isinstance(node, ast.Module) else f"{module}.{node.name}:{node.lineno}"
            if text:
                yield name, text


@cache
def _docstrings_of_stdlib() -> tuple[tuple[str, str], ...]:
    """(id, text) of every usable standard-library docstring, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts)
        for name, text in _docstrings(path, module):
            text = text.strip()
            if len(text) < 120 or text in seen or len(first_sentence(text)) < 30:
                continue
            seen.add(text)
            found.append((re.sub(r"[^A-Za-z0-9._:-]", "_", name), text[:4000]))
    return tuple(found)


def stdlib_documents(size: int) -> list[Document]:
    """`size` distinct docstrings of the standard library, in a stable order (a document's text
    never depends on `size`). Every BODY_EVERY-th one is stored without its first sentence: the
    `hard` golden set's answers.

    Past the ~2,800 docstrings there are, documents are joined variants of them (for benchmarks
    at 10k-100k documents): distinct ids and texts, the same kind of language."""
    documents: list[Document] = []
    for position, (doc_id, text) in enumerate(_docstrings_of_stdlib()):
        if len(documents) >= size:
            return documents
        rest = body(text)
        if position % BODY_EVERY == BODY_EVERY - 1 and len(rest) >= 80:
            documents.append(Document(id=doc_id + BODY, text=rest))
        else:
            documents.append(Document(id=doc_id, text=text))
    whole = [d for d in documents if not d.id.endswith(BODY)]
    for n in range(size - len(documents)):
        # Each extra document joins the bodies (all but the first sentence) of two whole docstrings:
        # new text that never repeats an original's first sentence nor a `hard` answer's text, so
        # both golden sets keep meaning the same thing at any size.
        first = whole[n % len(whole)]
        second = whole[(n % len(whole) + 1 + n // len(whole)) % len(whole)]
        documents.append(Document(id=f"{first.id}+{second.id}", text=f"{body(second.text)}\n\n{body(first.text)}"))
    return documents


def body(text: str) -> str:
    """The text without its first sentence."""
    head = first_sentence(text)
    flat = " ".join(text.split())
    return flat[len(head) :].strip() if flat.startswith(head) else flat


def first_sentence(text: str) -> str:
    line = " ".join(text.split("\n\n", 1)[0].split())
    return re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]


def golden_queries(documents: list[Document], count: int = 40) -> list[dict]:
    """Up to `count` queries per set, spread over the original documents: `{"query", "expected",
    "set"}`; a `hard` query is the first sentence its document was stored without."""
    originals = {doc_id: text for doc_id, text in _docstrings_of_stdlib()}
    pool: dict[str, list[tuple[str, str]]] = {name: [] for name in SETS}
    for d in documents:
        if "+" in d.id:
            continue
        if d.id.endswith(BODY) and d.id.removesuffix(BODY) in originals:
            pool["hard"].append((d.id, first_sentence(originals[d.id.removesuffix(BODY)])))
        elif not d.id.endswith(BODY):
            pool["easy"].append((d.id, first_sentence(d.text)))
    queries = []
    for name in SETS:
        step = max(1, len(pool[name]) // count)
        queries += [{"query": q, "expected": [i], "set": name} for i, q in pool[name][::step][:count]]
    return queries


def golden_set(query: dict) -> str:
    """The set a golden query belongs to (files written before there were two: `easy`)."""
    return str(query.get("set", "easy"))


def to_jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def documents_jsonl(documents: Iterable[Document]) -> bytes:
    return to_jsonl({"id": d.id, "text": d.text, "updated_at": d.updated_at} for d in documents)


def parse_documents(data: bytes, source: str) -> list[Document]:
    """Parse corpus JSONL; every defect is a one-line error naming the source and the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 at byte {exc.start}; re-export the corpus as UTF-8") from None
    documents: list[Document] = []
    ids: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc = Document(id=str(row["id"]), text=str(row["text"]), updated_at=str(row.get("updated_at", EPOCH)))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(
                f"{source}: line {number} is not a JSON object with `id` and `text`; fix that line"
            ) from None
        if doc.id in ids:
            raise UsageError(f"{source}: line {number}: duplicate id {doc.id!r}; ids must be unique")
        ids.add(doc.id)
        documents.append(doc)
    if not documents:
        raise UsageError(f"{source}: the corpus is empty; upload documents (`lockstep corpus seed`)")
    return documents


def parse_golden(data: bytes, source: str) -> list[dict]:
    try:
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{source}: not JSONL of {{query, expected}}; regenerate it") from None
    if not rows:
        raise UsageError(f"{source}: no golden queries; write at least one {{query, expected}} line")
    for number, row in enumerate(rows, 1):
        if not _golden_row(row):
            raise UsageError(
                f"{source}: query {number} is not {{query: text, expected: [ids], set: {'|'.join(SETS)} (optional)}}; "
                "fix or regenerate the golden set"
            )
    return rows


def _golden_row(row) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("query"), str)
        and isinstance(row.get("expected"), list)
        and bool(row["expected"])
        and all(isinstance(i, str) for i in row["expected"])
        and row.get("set", "easy") in SETS
    )
