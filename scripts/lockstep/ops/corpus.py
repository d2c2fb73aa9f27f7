"""The corpus: real text already on the machine (Python standard library docstrings) as JSONL.

Documents are `{"id", "text", "updated_at"}`; `content_sha256` is derived from the text, so a
changed document is found by comparing hashes, never timestamps. Golden queries are each
document's first sentence with the document as the expected answer.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lockstep.errors import UsageError

EPOCH = "2026-01-01T00:00:00Z"


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


def stdlib_documents(size: int) -> list[Document]:
    """`size` distinct docstrings of the standard library, in a stable order.

    Past the ~2,800 docstrings there are, documents are numbered variants of them (for
    benchmarks at 10k-100k documents): distinct ids and texts, the same kind of language."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    documents: list[Document] = []
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
            documents.append(Document(id=re.sub(r"[^A-Za-z0-9._:-]", "_", name), text=text[:4000]))
            if len(documents) >= size:
                return documents
    distinct = list(documents)
    for n in range(size - len(distinct)):
        # Each extra document joins the bodies (all but the first sentence) of two docstrings:
        # new text that never repeats an original's first sentence, which is what the golden
        # queries ask for, so the recall probe keeps meaning the same thing at any size.
        first = distinct[n % len(distinct)]
        second = distinct[(n % len(distinct) + 1 + n // len(distinct)) % len(distinct)]
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
    """Every n-th original document's first sentence, expected to retrieve that document."""
    originals = [d for d in documents if "+" not in d.id]
    step = max(1, len(originals) // count)
    picked = originals[::step][:count]
    return [{"query": first_sentence(d.text), "expected": [d.id]} for d in picked]


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
    return rows
