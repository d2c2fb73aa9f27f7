"""Promotion of a verified pin from one stack to the next (dev → staging → prod).

The evidence is the source stack's latest check record: it must be for the version and the
artifact sha256 the catalog names (as the live pointer does), it must have passed, and it must
have begun after the source's last cutover (a check that read anything before the pointer last
moved proves nothing about what is live now).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockstep import config, stackfile
from lockstep.errors import LockstepError, UsageError
from lockstep.ops import check, clients, live_state


class PromotionRefused(LockstepError):
    """The evidence does not allow the promotion (exit 1: nothing was changed)."""


@dataclass
class Promotion:
    source: str
    target: str
    version: str
    record: check.CheckRecord
    change: stackfile.PinChange

    @property
    def title(self) -> str:
        return f"Promote {self.version} from {self.source} to {self.target}"

    @property
    def body(self) -> str:
        r = self.record
        rows = "\n".join(
            f"| {'✓' if c.passed else ('!' if c.severity == 'warn' else '✗')} | {c.name} | {c.observed} |"
            for c in r.checks
        )
        return (
            f"{self.change.summary()}\n\n"
            f"Evidence: the latest check of **{self.source}** passed for `{r.pin}` "
            f"(artifact `{r.artifact_sha256[:12]}…`, finished {r.finished_at}, lockstep {r.tool_version}).\n\n"
            f"| | check | observed |\n|---|---|---|\n{rows}\n\n"
            f"Before merging, review `lockstep plan --stack {self.target}` (posted by the preview workflow)."
        )


def verified_versions(settings: config.StackSettings, catalog: config.Catalog) -> list[str]:
    """Every version this stack ever proved consistent with the bytes the catalog names for it: the
    pins of its passing check records (s3://<artifacts>/checks/<stack>/), so a stack promoted from
    it may stay on, or return to, a version it has since moved past."""
    return sorted(passed_newest_first(settings, catalog))


def passed_newest_first(
    settings: config.StackSettings, catalog: config.Catalog, *, newest_only: bool = False
) -> list[str]:
    """The pins of the stack's passing check records, the most recently verified first. A record
    counts only for the artifact the catalog names for its pin now (a version whose sha256 was
    edited since was never checked with those bytes). Each pin's records are read newest first
    until one passed; with `newest_only` a pin's newest record decides alone (autoRevert does not
    flip back to a version whose last check failed)."""
    shas = {entry.version: entry.artifact_sha256 for entry in catalog.versions}
    s3 = clients.aws_for(settings, "s3")
    prefix = f"{check.RECORD_PREFIX}/{settings.stack}/"
    verified: list[str] = []
    decided: set[str] = set()
    with clients.reaching_aws(settings, "S3"):
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.artifacts.bucket, Prefix=prefix)
            keys = sorted(item["Key"] for page in pages for item in page.get("Contents", []))
        except s3.exceptions.NoSuchBucket:
            return []
        for key in reversed(keys):  # newest first (keys are timestamped)
            pin = key.removeprefix(prefix).removesuffix(".json").partition("-")[2]
            if not pin or pin in decided or pin not in shas:  # latest.json has no pin in its name
                continue
            body = s3.get_object(Bucket=settings.artifacts.bucket, Key=key)["Body"].read()
            record = check.CheckRecord.parse(body, f"s3://{settings.artifacts.bucket}/{key}")
            if record.pin != pin:
                continue
            proved = record.passed and record.artifact_sha256 == shas[pin]
            if proved:
                verified.append(pin)
            if proved or newest_only:
                decided.add(pin)
    return verified


def _require_same_artifact(
    source: str, version: str, catalogued: str, record: check.CheckRecord, pointer: live_state.Pointer
) -> None:
    """The evidence is about the bytes the catalog names now: a catalog entry whose sha256 changed
    since (a rebuilt artifact) was never checked, wherever it was deployed."""
    for what, sha256 in (("latest check", record.artifact_sha256), ("live pointer", pointer.artifact_sha256)):
        if sha256 != catalogued:
            raise PromotionRefused(
                f"{source}'s {what} is about {version} with artifact sha256 {sha256[:12]}…, the catalog's {version} is "
                f"{catalogued[:12]}…; deploy the catalog's {version} to {source} and run `lockstep check --stack {source}`"
            )


def promote(source: str, target: str, version: str | None = None, stacks_dir: Path = config.STACKS_DIR) -> Promotion:
    catalog = config.load_catalog(stacks_dir)
    origin = config.load_stack(source, stacks_dir, catalog)
    destination = config.load_stack(target, stacks_dir, catalog)
    version = version or origin.pin
    entry = catalog.get(version)
    if destination.promoted_from and destination.promoted_from != source:
        raise UsageError(
            f"{target} is promoted from {destination.promoted_from} (lockstep:promotedFrom), not {source}; use --from {destination.promoted_from}"
        )
    record = check.latest(origin)
    if record is None:
        raise PromotionRefused(
            f"{source} has no check record; run `lockstep check --stack {source}` after deploying {version}"
        )
    if record.pin != version:
        raise PromotionRefused(
            f"{source}'s latest check is for {record.pin}, not {version}; deploy and check {version} in {source} first"
        )
    if not record.passed:
        failed = ", ".join(c.name for c in record.failures)
        raise PromotionRefused(
            f"{source}'s latest check of {version} failed ({failed}); fix {source} and re-run `lockstep check --stack {source}`"
        )
    ssm = clients.aws_for(origin, "ssm")
    with clients.reaching_aws(origin, "SSM"):
        pointer = live_state.read_pointer(ssm, origin.pointer_name)
    if pointer is None or pointer.version != version:
        live = pointer.version if pointer else "nothing"
        raise PromotionRefused(f"{source} serves {live}, not {version}; the evidence must be about what is live")
    _require_same_artifact(source, version, entry.artifact_sha256, record, pointer)
    if not pointer.switched_at:
        raise UsageError(
            f"{source}'s live pointer {origin.pointer_name} has no switched_at, so no check can be shown to be newer "
            "than its last cutover; a cutover rewrites it (`pulumi up --replace` of the stack's Cutover resource)"
        )
    if record.started_at < pointer.switched_at:  # what it read may be from before the cutover
        raise PromotionRefused(
            f"{source}'s check record (started {record.started_at}) is older than its last cutover "
            f"({pointer.switched_at}); run `lockstep check --stack {source}` again"
        )
    change = stackfile.set_pin(target, version, stacks_dir)
    return Promotion(source, target, version, record, change)
