"""`lockstep:index:Check`: the post-deploy consistency check as a resource of the release.

Its create and update run lockstep.ops.check in-process (the same checks as `lockstep check`),
store the record where `lockstep promote` reads it, and fail the update when the system is
inconsistent (exit 1) or could not be checked (exit 2). Its inputs include the cutover's
`switchedAt`, so every cutover re-runs it.

Its read (`pulumi refresh`, `preview --refresh`) re-runs the check and stores nothing (a refresh
only reads: a read-only principal can run it): data drift (a contaminated index, a missing
document) shows as drift of `passed`/`failed`, and a Check whose refreshed state failed diffs as an
update, so `up --refresh` re-runs it, stores that record and fails naming the failed checks. A plain
`up` with no change reads nothing and stays a no-op.
"""

from __future__ import annotations

import json

from components.providers.base import (
    EVERY_SETTING,
    STATE_VERSION,
    STATE_VERSION_KEY,
    Diff,
    Handler,
    Property,
    catalog_of,
    failures,
)
from lockstep import promote
from lockstep.errors import LockstepError
from lockstep.ops import check


class CheckFailed(LockstepError):
    """The deployment is not consistent, or could not be checked: the update fails."""


class CheckHandler(Handler):
    TOKEN = "lockstep:index:Check"
    DESCRIPTION = (
        "The post-deploy consistency check (alias, index _meta, foreign versions, document count, pointer, "
        "artifact, endpoint, re-embed and recall probes, derived records). Its create/update fail the deployment "
        "on an inconsistent or uncheckable system; the record, the pin and the failed checks are its outputs."
    )
    SETTINGS = EVERY_SETTING
    OWN = {
        "catalog": Property("The catalog.", spec={"$ref": "#/types/lockstep:index:Catalog"}),
        "triggers": Property("What is live (a change re-runs the check).", "array"),
        "record": Property("The check's result record (JSON), what `lockstep promote` reads.", output_only=True),
        "passed": Property("Whether every check passed.", "boolean", output_only=True),
        "failed": Property("Names of the failed checks.", "array", output_only=True),
        "verified": Property(
            "Every version this stack's check records show verified: what a stack promoted from it may run.",
            "array",
            output_only=True,
        ),
    }
    OBSERVED = frozenset({"record", "passed", "failed"})

    def check(self, olds: dict, news: dict) -> list[tuple[str, str]]:
        return super().check(olds, news) + failures(news, ("catalog", catalog_of))

    def diff(self, olds: dict, news: dict) -> Diff:
        diff = super().diff(olds, news)
        if not diff.changes and olds.get("passed") is False:  # a refresh found the system inconsistent
            diff.changes, diff.diffs, diff.detailed = True, ["passed"], {"passed": False}
        return diff

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        """The check again, on what is live now; its record is not stored (the update that follows
        a failed refresh stores its own)."""
        settings, catalog = self.settings_of(state), catalog_of(state)
        outcome = check.evaluate(settings, catalog, keep=False)
        if outcome.record is None:
            raise CheckFailed(f"could not check stack {settings.stack} (exit {outcome.exit_code}): {outcome.reason}")
        record = outcome.record
        observed = {
            "record": json.dumps(record.to_dict(), sort_keys=True),
            "passed": record.passed,
            "failed": [c.name for c in record.failures],
        }
        return id_, {**state, **observed}

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings, catalog = self.settings_of(news), catalog_of(news)
        outcome = check.evaluate(settings, catalog)  # stores the record (not when uncheckable)
        verified = promote.verified_versions(settings, catalog) if outcome.exit_code == 0 else []
        if outcome.record is None or outcome.exit_code == 2:  # 2 with a record: it passed, and was not stored
            raise CheckFailed(f"could not check stack {settings.stack} (exit {outcome.exit_code}): {outcome.reason}")
        record = outcome.record
        failed = [c.name for c in record.failures]
        if outcome.exit_code != 0:
            fixes = "; ".join(dict.fromkeys(c.fix for c in record.failures if c.fix))
            raise CheckFailed(
                f"stack {settings.stack} is inconsistent after the deploy of {settings.pin} (exit {outcome.exit_code}): "
                f"failed checks {', '.join(failed)}" + (f"; {fixes}" if fixes else "")
            )
        outputs = {
            "record": json.dumps(record.to_dict(), sort_keys=True),
            "passed": record.passed,
            "failed": failed,
            "verified": verified,
            STATE_VERSION_KEY: STATE_VERSION,
        }
        return f"{settings.stack}:{settings.pin}", {**news, **outputs}
