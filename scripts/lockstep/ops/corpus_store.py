"""The corpus in S3: the documents and the golden queries as JSONL, the corpus' identity (ETag)
and its earlier versions in the versioned bucket, and the generated default corpus cached on disk.
The document format itself is `lockstep.ops.corpus`; the bucket's posture is `artifacts.ensure_bucket`.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError

from lockstep import runtime
from lockstep.config import StackSettings
from lockstep.errors import UsageError
from lockstep.ops import corpus
from lockstep.ops.artifacts import ensure_bucket, is_missing, s3_endpoint
from lockstep.ops.clients import reaching
from lockstep.ops.corpus import Document


def corpus_uri(settings: StackSettings) -> str:
    return settings.corpus.uri


def golden_uri(settings: StackSettings) -> str:
    return f"s3://{settings.corpus.bucket}/{settings.corpus.golden_key}"


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise


def _default_documents(size: int) -> list[Document]:
    """The stdlib corpus of `size` documents, cached on disk: generating it takes seconds."""
    cache = runtime.home() / f"corpus-r{corpus.REVISION}-{size}.jsonl"
    if cache.exists():
        return corpus.parse_documents(cache.read_bytes(), str(cache))
    documents = corpus.stdlib_documents(size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_bytes(corpus.documents_jsonl(documents))
    partial.replace(cache)
    return documents


@dataclass(frozen=True)
class FoundCorpus:
    """The corpus and golden objects as one pair of HEADs found them (reads only)."""

    ref: CorpusRef | None  # None: no corpus object
    has_golden: bool


def find_corpus(s3, settings: StackSettings) -> FoundCorpus:
    with ThreadPoolExecutor(1) as pool:
        has_golden = pool.submit(_exists, s3, settings.corpus.bucket, settings.corpus.golden_key)
        ref = corpus_ref(s3, settings)
        with reaching("S3", s3_endpoint(s3)):
            return FoundCorpus(ref, has_golden.result())


@dataclass(frozen=True)
class SeededCorpus:
    """What ensure_corpus leaves: the corpus object's identity, and what it uploaded to get there."""

    ref: CorpusRef
    uploaded: list[str]


def ensure_corpus(
    s3, settings: StackSettings, documents: list[Document] | None = None, found: FoundCorpus | None = None
) -> SeededCorpus:
    """Ensure the corpus bucket and upload the corpus and golden JSONL when missing.

    `found`: what the caller's `find_corpus` read beside other work; then a bucket holding both
    objects is left alone here (the caller reads its posture too, `artifacts.posture_drift`), and
    a bucket missing either object is ensured before the upload."""
    bucket = settings.corpus.bucket
    if found is None:
        with ThreadPoolExecutor(1) as pool:
            asserted = pool.submit(ensure_bucket, s3, bucket)  # beside the HEADs
            found = find_corpus(s3, settings)
            asserted.result()
    elif found.ref is None or not found.has_golden:
        ensure_bucket(s3, bucket)
    uploaded, ref = [], found.ref
    with reaching("S3", s3_endpoint(s3)):
        if ref is None:
            documents = documents if documents is not None else _default_documents(settings.corpus.size)
            ref = write_corpus(s3, settings, documents)
            uploaded.append(corpus_uri(settings))
        if not found.has_golden:
            documents = documents if documents is not None else read_corpus(s3, settings)
            s3.put_object(
                Bucket=bucket,
                Key=settings.corpus.golden_key,
                Body=corpus.to_jsonl(corpus.golden_queries(documents)),
                ContentType="application/x-ndjson",
            )
            uploaded.append(golden_uri(settings))
    return SeededCorpus(ref, uploaded)


def _read(s3, bucket: str, key: str, uri: str) -> bytes:
    with reaching("S3", s3_endpoint(s3)):
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if is_missing(exc):
                raise UsageError(
                    f"corpus {uri} not found; run `lockstep apply` (seeds the embedded corpus) or upload it"
                ) from None
            raise


def read_corpus(s3, settings: StackSettings) -> list[Document]:
    uri = corpus_uri(settings)
    return corpus.parse_documents(_read(s3, settings.corpus.bucket, settings.corpus.key, uri), uri)


def read_golden(s3, settings: StackSettings) -> list[dict]:
    uri = golden_uri(settings)
    return corpus.parse_golden(_read(s3, settings.corpus.bucket, settings.corpus.golden_key, uri), uri)


def write_corpus(s3, settings: StackSettings, documents: list[Document]) -> CorpusRef:
    """Replace the corpus JSONL (the golden set is left as is); return the new object's identity.
    The document count rides along as object metadata, so a plan can size work without reading."""
    with reaching("S3", s3_endpoint(s3)):
        response = s3.put_object(
            Bucket=settings.corpus.bucket,
            Key=settings.corpus.key,
            Body=corpus.documents_jsonl(documents),
            ContentType="application/x-ndjson",
            Metadata={"documents": str(len(documents))},
        )
    return CorpusRef(response["ETag"].strip('"'), len(documents))


@dataclass(frozen=True)
class CorpusRef:
    """Which corpus this is (ETag: changes with the bytes) and how many documents it holds."""

    etag: str
    documents: int | None


def corpus_ref(s3, settings: StackSettings) -> CorpusRef | None:
    """The corpus object's identity from one HEAD request (None when there is no corpus)."""
    with reaching("S3", s3_endpoint(s3)):
        try:
            head = s3.head_object(Bucket=settings.corpus.bucket, Key=settings.corpus.key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
    count = head.get("Metadata", {}).get("documents")
    return CorpusRef(head["ETag"].strip('"'), int(count) if count and count.isdigit() else None)


# A line as lockstep writes it (keys sorted): the id comes first, so lines can be found by id
# without parsing every document.
_LINE_ID = re.compile(rb'^\{"id": "((?:[^"\\]|\\.)*)"', re.MULTILINE)


class CorpusIndex:
    """The corpus as bytes with its lines indexed by id: counting and sampling without parsing
    100k documents (the check needs the count and the hashes of a few)."""

    def __init__(self, data: bytes, uri: str):
        self.data, self.uri = data, uri
        lines = sum(1 for line in data.splitlines() if line.strip())
        self._starts: dict[str, int] | None = {
            json.loads(b'"' + m.group(1) + b'"'): m.start() for m in _LINE_ID.finditer(data)
        }
        if len(self._starts) != lines:  # not lockstep's layout, or duplicate ids: parse it all
            self._starts = None
            self._documents = {d.id: d for d in corpus.parse_documents(data, uri)}

    @property
    def count(self) -> int:
        return len(self._starts) if self._starts is not None else len(self._documents)

    def lines(self) -> dict[str, bytes] | None:
        """{id: the document's raw line}, or None when the file is not in lockstep's layout."""
        if self._starts is None:
            return None
        out = {}
        for doc_id, start in self._starts.items():
            end = self.data.find(b"\n", start)
            out[doc_id] = self.data[start : end if end >= 0 else None]
        return out

    def changes_since(self, older: CorpusIndex) -> tuple[list[str], list[str], list[str]] | None:
        """(new, changed, gone) ids between two versions of the corpus, by comparing raw lines:
        no document is parsed. None when either file is not in lockstep's layout."""
        now, before = self.lines(), older.lines()
        if now is None or before is None:
            return None
        new = [i for i in now if i not in before]
        changed = [i for i, line in now.items() if i in before and before[i] != line]
        gone = [i for i in before if i not in now]
        return new, changed, gone

    def content_sha256(self, ids: list[str]) -> dict[str, str]:
        if self._starts is None:
            return {i: self._documents[i].content_sha256 for i in ids if i in self._documents}
        found = {}
        for doc_id in ids:
            start = self._starts.get(doc_id)
            if start is not None:
                end = self.data.find(b"\n", start)
                row = json.loads(self.data[start : end if end >= 0 else None])
                found[doc_id] = corpus.content_sha256(str(row["text"]))
        return found


def corpus_index(s3, settings: StackSettings, version_id: str | None = None) -> CorpusIndex:
    """The corpus (or one earlier version of it, in the versioned bucket) indexed by id."""
    uri = corpus_uri(settings)
    if version_id is None:
        return CorpusIndex(_read(s3, settings.corpus.bucket, settings.corpus.key, uri), uri)
    with reaching("S3", s3_endpoint(s3)):
        body = s3.get_object(Bucket=settings.corpus.bucket, Key=settings.corpus.key, VersionId=version_id)[
            "Body"
        ].read()
    return CorpusIndex(body, f"{uri}?versionId={version_id}")


def corpus_version_with_etag(s3, settings: StackSettings, etag: str) -> str | None:
    """The VersionId of the corpus version whose ETag is `etag` (what an index was synced with)."""
    with reaching("S3", s3_endpoint(s3)):
        pages = s3.get_paginator("list_object_versions").paginate(
            Bucket=settings.corpus.bucket, Prefix=settings.corpus.key
        )
        for page in pages:
            for version in page.get("Versions", []):
                if version["Key"] == settings.corpus.key and version["ETag"].strip('"') == etag:
                    return version["VersionId"]
    return None
