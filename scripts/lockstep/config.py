"""Typed, validated configuration: the catalog of model versions and one stack's settings.

The same pydantic models validate the stack YAML files (for the CLI) and the values the Pulumi
program reads with `pulumi.Config("lockstep")`, so both report the same errors in the same words.
Keys are camelCase on the wire (Pulumi convention) and snake_case in Python.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from ruamel.yaml import YAML, YAMLError

from lockstep.errors import ConfigError

PROJECT = "lockstep"
STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
CATALOG_FILE = "catalog.yaml"
# A stack's validated settings and catalog as JSON, for commands run where no stack file exists
# (the Pulumi program's post-deploy check, in any repository that uses the package).
SETTINGS_VARIABLE = "LOCKSTEP_STACK_SETTINGS"

# k-NN limits and spaces per engine (OpenSearch 2.19 k-NN docs: "Methods and engines").
ENGINE_MAX_DIMENSION = {"lucene": 16_000, "faiss": 16_000, "nmslib": 16_000}
ENGINE_SPACES = {
    "lucene": {"l2", "cosinesimil", "innerproduct"},
    "faiss": {"l2", "innerproduct", "cosinesimil"},
    "nmslib": {"l2", "cosinesimil", "innerproduct", "l1", "linf"},
}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
FLOATING_TAGS = {"latest", "stable", "current", "live", "head", "main"}
# Stack settings that are secrets: only ever in a stack file as `{secure: ...}` (Pulumi-encrypted).
SECRET_KEYS = {"opensearchPassword"}
# OpenSearch index names: lowercase, no \ / * ? " < > | space , #, not starting with - _ +.
INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,200}$")
# An SSM parameter name: a path from the root (/a/b) or a plain name; aws* and ssm* are reserved.
SSM_PARAMETER_NAME = re.compile(r"^(/[A-Za-z0-9_.-]+)+$|^[A-Za-z0-9_.-]+$")


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- catalog


class RecallFloor(Model):
    """A version's recall@k floor per golden set (lockstep.ops.corpus.SETS), chosen from what the
    version measured on the embedded corpus: a regression of that model fails the check."""

    easy: float | None = Field(default=None, ge=0, le=1)
    hard: float | None = Field(default=None, ge=0, le=1)


class CatalogEntry(Model):
    """One model version: what its artifact is and what its index must look like."""

    version: str
    model: str
    # The model family that loads the artifact (lockstep.models); a catalog may change family
    # between versions. Absent: the catalog's `model` (catalogs written before families: hashgram).
    family: str
    artifact_sha256: str
    dimension: int
    space_type: Literal["l2", "cosinesimil", "innerproduct", "l1", "linf"]
    description: str = ""
    recall_floor: RecallFloor = RecallFloor()

    @model_validator(mode="before")
    @classmethod
    def _family(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("family") and data.get("model"):
            data = {**data, "family": data["model"]}
        return data

    @field_validator("family")
    @classmethod
    def _family_name(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9_.-]{0,62}$", value):
            raise ValueError("must be a model family name such as hashgram or sentence-transformers")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (e.g. v3)")
        if value.lower() in FLOATING_TAGS:
            raise ValueError("is a floating tag; pin an immutable version such as v3")
        return value

    @field_validator("artifact_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not SHA256.match(value):
            raise ValueError("must be 64 lowercase hex characters (the artifact's sha256)")
        return value

    @field_validator("dimension")
    @classmethod
    def _dimension(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @property
    def artifact_key(self) -> str:
        """Content-addressed, so SageMaker's ModelDataUrl (which cannot pin a versionId) is immutable."""
        return f"models/{self.model}/{self.version}/{self.artifact_sha256}/model.tar.gz"


class Catalog(Model):
    model: str
    versions: tuple[CatalogEntry, ...]

    @model_validator(mode="before")
    @classmethod
    def _inline_versions(cls, data: Any) -> Any:
        """Accept `versions: {v1: {...}}` (the file form) as well as a list."""
        if isinstance(data, dict) and isinstance(data.get("versions"), dict):
            model = data.get("model")
            data = dict(data)
            for name, fields in data["versions"].items():
                if fields is not None and not isinstance(fields, dict):
                    raise ValueError(
                        f"versions.{name} is {fields!r}; give it its fields (artifactSha256, dimension, ...) as a mapping"
                    )
            data["versions"] = [
                {"version": name, "model": model, **(fields or {})} for name, fields in data["versions"].items()
            ]
        return data

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        seen: dict[str, str] = {}  # lowercased: an index name is the version in lowercase
        for entry in self.versions:
            first = seen.get(entry.version.lower())
            if first == entry.version:
                raise ValueError(f"version {entry.version!r} is listed twice; keep one entry")
            if first is not None:
                raise ValueError(
                    f"versions {first!r} and {entry.version!r} differ only in case and would share one index "
                    "(index names are lowercase); rename one"
                )
            seen[entry.version.lower()] = entry.version
        return self

    def __contains__(self, version: str) -> bool:
        return any(e.version == version for e in self.versions)

    def get(self, version: str) -> CatalogEntry:
        for entry in self.versions:
            if entry.version == version:
                return entry
        raise ConfigError(f"version {version!r} is not in the catalog; use one of {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [e.version for e in self.versions]


# ------------------------------------------------------------------------------------ stack parts


class Slots(Model):
    """The two endpoint slots. A first deploy may fill one; the other is then empty (no standby)."""

    blue: str | None = None
    green: str | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Slots:
        if self.blue is None and self.green is None:
            raise ValueError("name a version in at least one slot (blue or green)")
        if self.blue == self.green:
            raise ValueError(f"blue and green both name {self.blue!r}; the standby slot needs another version")
        return self

    def slot_of(self, version: str) -> str | None:
        return "blue" if self.blue == version else "green" if self.green == version else None

    def as_dict(self) -> dict[str, str | None]:
        return {"blue": self.blue, "green": self.green}

    @property
    def filled(self) -> dict[str, str]:
        return {slot: version for slot, version in self.as_dict().items() if version}


class OpenSearchSettings(Model):
    # None: take OPENSEARCH_URL from the environment (the embedded default sets it).
    url: str | None = None
    engine: Literal["lucene", "faiss", "nmslib"] = "lucene"
    index_prefix: str = "docs"
    alias: str | None = None
    auth: Literal["none", "basic", "sigv4"] = "none"
    username: str | None = None
    region: str | None = None
    # Amazon OpenSearch Service domain (AWS stacks): without a url, its endpoint is looked up by name
    # (DescribeDomain, lockstep.ops.clients), by the provider and the CLI alike.
    domain_name: str | None = None
    shards: int = Field(default=1, ge=1)
    replicas: int = Field(default=0, ge=0)
    hnsw_m: int = Field(default=16, ge=2, le=100)
    ef_construction: int = Field(default=128, ge=2)

    @field_validator("index_prefix", "alias")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (not INDEX_NAME.match(value) or value in {".", ".."}):
            raise ValueError(
                "is not a valid OpenSearch index name: use lowercase letters, digits, '-', '_' "
                "or '.', not starting with '-', '_' or '+'"
            )
        return value

    @model_validator(mode="after")
    def _alias_is_no_index_name(self) -> OpenSearchSettings:
        if self.alias and self.alias.startswith(f"{self.index_prefix}-"):
            raise ValueError(
                f"alias {self.alias!r} has the form of a version's index name ({self.index_prefix}-<version>); "
                f"choose an alias that does not start with {self.index_prefix}-"
            )
        return self

    @property
    def alias_name(self) -> str:
        return self.alias or self.index_prefix

    def index_name(self, version: str) -> str:
        return f"{self.index_prefix}-{version.lower()}"


class ArtifactSettings(Model):
    bucket: str

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", value):
            raise ValueError("is not a valid S3 bucket name (3-63 lowercase letters, digits, '-', '.')")
        return value


class CorpusSettings(Model):
    bucket: str
    key: str = "corpus/docs.jsonl"
    golden_key: str = "corpus/golden.jsonl"
    # How many documents the embedded default generates (stdlib docstrings).
    size: int = Field(default=2000, ge=1)

    @property
    def uri(self) -> str:
        """Where the corpus is; an index's `_meta.corpus` records the one it was built from."""
        return f"s3://{self.bucket}/{self.key}"


# SageMaker's limit for the traffic wait interval and for the old fleet's termination wait.
MAX_WAIT_SECONDS = 3600
# The aws provider waits at most this long for an endpoint to be InService after a create or an
# update (a constant in its code: no custom timeout lengthens it), so a blue/green deployment must fit.
PROVIDER_ENDPOINT_WAIT_SECONDS = 3600
# What lockstep allows for SageMaker to provision the new fleet before traffic starts shifting.
PROVISIONING_SECONDS = 900


class RollbackAlarms(Model):
    """The CloudWatch alarms lockstep declares per endpoint; SageMaker rolls an update back on them."""

    max_5xx_errors: int = Field(default=5, ge=0, alias="max5xxErrors")
    max_latency_ms: int = Field(default=1000, ge=1)
    period_seconds: int = Field(default=60, ge=10)
    evaluation_periods: int = Field(default=2, ge=1)


class DeploymentSettings(Model):
    """SageMaker endpoint deployment_config: blue/green traffic routing and auto-rollback."""

    traffic_routing: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    canary_percent: int = Field(default=10, ge=1, le=100)
    wait_seconds: int = Field(default=300, ge=0, le=MAX_WAIT_SECONDS)
    termination_wait_seconds: int = Field(default=300, ge=0, le=MAX_WAIT_SECONDS)
    alarms: RollbackAlarms = RollbackAlarms()
    # Further alarms (declared elsewhere) that roll an update back, besides lockstep's own.
    rollback_alarms: tuple[str, ...] = ()

    @property
    def shifts(self) -> int:
        """Traffic shifts of one deployment, each followed by a wait (the baking period)."""
        if self.traffic_routing == "LINEAR":
            return -(-100 // self.canary_percent)
        return 2 if self.traffic_routing == "CANARY" else 1

    @property
    def seconds(self) -> int:
        """Longest time a blue/green update keeps the endpoint Updating: provisioning, the waits
        after each shift, and the old fleet's termination wait."""
        return PROVISIONING_SECONDS + self.shifts * self.wait_seconds + self.termination_wait_seconds


class EndpointSettings(Model):
    backend: Literal["local", "sagemaker"] = "local"
    image_uri: str | None = None
    instance_type: str = "ml.m5.large"
    instance_count: int = Field(default=1, ge=1)
    max_batch: int = Field(default=256, ge=1)
    deployment: DeploymentSettings = DeploymentSettings()

    @model_validator(mode="after")
    def _image(self) -> EndpointSettings:
        if self.backend == "sagemaker" and not self.image_uri:
            raise ValueError("imageUri is required when backend is 'sagemaker' (the serving image in ECR)")
        return self

    @model_validator(mode="after")
    def _deployment(self) -> EndpointSettings:
        """What SageMaker or the aws provider would refuse only in the middle of `pulumi up`."""
        deployment, routing = self.deployment, self.deployment.traffic_routing
        if routing != "ALL_AT_ONCE" and self.instance_count < 2:
            raise ValueError(
                f"deployment.trafficRouting: {routing} shifts part of the fleet, which one instance cannot be "
                "split into; set instanceCount to 2 or more, or trafficRouting to ALL_AT_ONCE"
            )
        low = 10 if routing == "LINEAR" else 1
        if routing != "ALL_AT_ONCE" and not low <= deployment.canary_percent <= 50:
            raise ValueError(
                f"deployment.canaryPercent: SageMaker takes {low}-50 percent of the fleet per {routing} step "
                f"(got {deployment.canary_percent}); set it in that range"
            )
        if deployment.seconds > PROVIDER_ENDPOINT_WAIT_SECONDS:
            raise ValueError(
                f"deployment: an update can take {deployment.seconds} s ({PROVISIONING_SECONDS} s provisioning + "
                f"{deployment.shifts} x waitSeconds + terminationWaitSeconds), longer than the aws provider's "
                f"fixed {PROVIDER_ENDPOINT_WAIT_SECONDS} s wait for the endpoint; lower waitSeconds or "
                "terminationWaitSeconds"
            )
        return self


class CheckSettings(Model):
    recall_floor: float = Field(default=0.8, ge=0, le=1)
    k: int = Field(default=10, ge=1, le=100)
    probe_sample: int = Field(default=64, ge=1)
    probe_min_cosine: float = Field(default=0.999, ge=-1, le=1)
    stale_sample: int = Field(default=200, ge=0)

    def recall_floors(self, entry: CatalogEntry) -> dict[str, float]:
        """The floor per golden set for `entry`: the catalog version's, and for `easy` the higher
        of it and recallFloor (a stack may demand more of a version, never less)."""
        floors = entry.recall_floor.model_dump(exclude_none=True)
        floors["easy"] = max(self.recall_floor, floors.get("easy", 0.0))
        return floors


class BackfillSettings(Model):
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int = Field(default=2, ge=1)
    batch_size: int = Field(default=256, ge=1)


DERIVED_KINDS = ("related-documents",)
# DynamoDB table names: 3-255 letters, digits, '_', '-', '.'.
TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


class DerivedStore(Model):
    """Records a model version decided and stored elsewhere, each stamped with the version that
    wrote it, so a rollback can count them and repair (`recompute`) or `quarantine` them."""

    name: str
    kind: str
    table: str
    repair: Literal["recompute", "quarantine"] = "recompute"
    # related-documents: how many neighbours each document's list holds.
    k: int = Field(default=5, ge=1, le=100)
    # Items per second a repair (or a related-documents job) writes: spares the table's capacity.
    write_rate: float = Field(default=100, gt=0)
    # How lockstep.derived guards a write against the table's fence: `transaction` (the check and
    # the write in one TransactWriteItems: atomic, for AWS) or `verify` (BatchWriteItem, then one
    # consistent read of the fence, undoing the batch if it moved: for the embedded moto, where
    # transactions are slow). The atomic one is the default: the window is opted into, not given.
    writer_guard: Literal["transaction", "verify"] = "transaction"

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in DERIVED_KINDS:
            raise ValueError(f"is not a derived store kind lockstep knows; use one of {', '.join(DERIVED_KINDS)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not VERSION.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (e.g. related)")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not TABLE_NAME.match(value):
            raise ValueError("is not a valid DynamoDB table name (3-255 letters, digits, '_', '-', '.')")
        return value


class StackSettings(Model):
    """What one stack wants: the live pin, the two slots, what to retain, and where things live."""

    stack: str
    pin: str
    slots: Slots
    retain: tuple[str, ...] = ()
    promoted_from: str | None = None
    region: str = "us-east-1"
    # The AWS profile the providers' boto3 sessions use (the stack's `aws:profile`); None: boto3's chain.
    aws_profile: str | None = None
    artifacts: ArtifactSettings
    opensearch: OpenSearchSettings = OpenSearchSettings()
    corpus: CorpusSettings
    endpoints: EndpointSettings = EndpointSettings()
    check: CheckSettings = CheckSettings()
    backfill: BackfillSettings = BackfillSettings()
    pointer_parameter: str | None = None
    # First part of every fixed name (endpoints, live pointer), so two projects with the same stack
    # names never share one; default: the Pulumi project's name.
    name_prefix: str = PROJECT
    derived: tuple[DerivedStore, ...] = ()
    # When the post-deploy check fails, `lockstep apply`/`lockstep up` flip back to the last version whose check passed.
    auto_revert: bool = False

    @field_validator("pointer_parameter")
    @classmethod
    def _ssm_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not SSM_PARAMETER_NAME.match(value) or value.lstrip("/").lower().startswith(("aws", "ssm"))
        ):
            raise ValueError(
                "is not an SSM parameter name: letters, digits, '_', '.', '-', as a path from the root "
                "(/team/stack/live) or a plain name, not beginning with aws or ssm"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _one_region(cls, data: Any) -> Any:
        """The region signs OpenSearch requests too, unless opensearch.region names another one."""
        if isinstance(data, dict) and isinstance(data.get("opensearch"), dict) and data.get("region"):
            search = data["opensearch"]
            if search.get("auth") == "sigv4" and not search.get("region"):
                data = {**data, "opensearch": {**search, "region": data["region"]}}
        return data

    @field_validator("name_prefix")
    @classmethod
    def _name_prefix(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,29}$", value):
            raise ValueError("must be 1-30 lowercase letters, digits or '-' (it starts endpoint names)")
        return value

    @model_validator(mode="after")
    def _cross_fields(self, info: ValidationInfo) -> StackSettings:
        names = [store.name for store in self.derived]
        if len(set(names)) != len(names):
            raise ValueError(f"derived: store names must be unique (got {', '.join(names)})")
        if self.slots.slot_of(self.pin) is None:
            raise ValueError(
                f"pin: {self.pin!r} is in neither slot (blue={self.slots.blue!r}, "
                f"green={self.slots.green!r}); run `lockstep pin` or put it in a slot"
            )
        catalog: Catalog | None = (info.context or {}).get("catalog")
        if catalog is None:
            return self
        for field, versions in (
            ("pin", [self.pin]),
            ("slots", list(self.slots.filled.values())),
            ("retain", list(self.retain)),
        ):
            for version in versions:
                if version not in catalog:
                    raise ValueError(
                        f"{field}: version {version!r} is not in the catalog; use one of {', '.join(catalog.names)}"
                    )
        spaces = ENGINE_SPACES[self.opensearch.engine]
        limit = ENGINE_MAX_DIMENSION[self.opensearch.engine]
        for version in self.versions:
            entry = catalog.get(version)
            if entry.space_type not in spaces:
                raise ValueError(
                    f"opensearch.engine: {self.opensearch.engine!r} does not support space "
                    f"{entry.space_type!r} of {version}; use one of {', '.join(sorted(spaces))}"
                )
            if entry.dimension > limit:
                raise ValueError(
                    f"dimension: {entry.dimension} of {version} exceeds the {self.opensearch.engine} "
                    f"engine's limit of {limit}"
                )
        return self

    @property
    def versions(self) -> list[str]:
        """pin ∪ slots ∪ retain, in that order, without repeats: the versions whose state is kept."""
        ordered = [self.pin, *self.slots.filled.values(), *self.retain]
        return list(dict.fromkeys(ordered))

    @property
    def live_slot(self) -> str:
        return self.slots.slot_of(self.pin) or ""

    @property
    def standby_slot(self) -> str:
        return "green" if self.live_slot == "blue" else "blue"

    @property
    def standby(self) -> str | None:
        """The warm standby version (None when only the live slot is filled)."""
        return getattr(self.slots, self.standby_slot)

    @property
    def embedded(self) -> bool:
        """Driven by `lockstep apply` on the embedded servers (not by `pulumi up` on AWS)."""
        return self.endpoints.backend == "local"

    def with_pin(self, version: str) -> StackSettings:
        """The settings `lockstep pin VERSION` would write: VERSION live, placed in the non-live
        slot when it is in neither (what was there leaves the slots)."""
        slots = self.slots.as_dict()
        if self.slots.slot_of(version) is None:
            slots[self.standby_slot] = version
        return self.model_copy(update={"pin": version, "slots": Slots(**slots)})

    @property
    def pointer_name(self) -> str:
        return self.pointer_parameter or f"/{self.name_prefix}/{self.stack}/live"

    @property
    def cluster(self) -> str:
        """The OpenSearch cluster as the stack file names it, without a request: tells apart stacks
        that would share indices (the same cluster and indexPrefix)."""
        search = self.opensearch
        if search.url:
            return search.url.rstrip("/").lower()
        if search.domain_name:
            return f"domain {search.domain_name} in {search.region or self.region}"
        return "the OPENSEARCH_URL cluster"


# ------------------------------------------------------------------------------------ loading


def describe_validation_error(error: ValidationError) -> str:
    """The first problem as `field: message (got value)`, one line."""
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "__root__")
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    if first["type"] == "missing":
        message = "is required"
    elif first["type"] == "extra_forbidden":
        message = "is not a known setting; check its spelling"
    return f"{loc}: {message}{shown}" if loc else f"{message}{shown}"


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path}: file not found; create it or pass another --stack")
    try:
        return YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def load_catalog(stacks_dir: Path = STACKS_DIR) -> Catalog:
    path = stacks_dir / CATALOG_FILE
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `model` and `versions`")
    return validate_catalog(data, f"{path}: ")


def validate_catalog(data: Any, where: str) -> Catalog:
    """`Catalog.model_validate`, an error named by field after `where` (`stacks/catalog.yaml: `, or
    `lockstep:catalog.` for the component's input): a version of the `versions` map by its name,
    not by its position in the list the model turns it into."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        names = data.get("versions") if isinstance(data, dict) else None
        position = loc[1] if len(loc) >= 2 and loc[0] == "versions" else None
        if isinstance(position, int) and isinstance(names, dict) and position < len(names):
            rest = ".".join(str(p) for p in loc[2:])
            detail = describe_validation_error(exc).split(": ", 1)[-1]
            raise ConfigError(f"{where}versions.{list(names)[position]}.{rest}: {detail}") from None
        raise ConfigError(f"{where}{describe_validation_error(exc)}") from None


def settings_from_environment(stack: str) -> tuple[StackSettings, Catalog] | None:
    """The settings the Pulumi program handed over in SETTINGS_VARIABLE, validated again."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        return None
    try:
        document = json.loads(text)
        catalog = Catalog.model_validate(document["catalog"])
        settings = settings_from_config(stack, {k: v for k, v in document["settings"].items() if k != "stack"}, catalog)
    except (ValueError, KeyError, TypeError) as exc:
        detail = describe_validation_error(exc) if isinstance(exc, ValidationError) else type(exc).__name__
        raise ConfigError(
            f"{SETTINGS_VARIABLE}: not the settings of a lockstep stack ({detail}); unset it to use stacks/"
        ) from None
    if document["settings"].get("stack") not in (None, stack):
        raise ConfigError(
            f"{SETTINGS_VARIABLE}: holds stack {document['settings'].get('stack')!r}, not {stack!r}; unset it or pass --stack {document['settings'].get('stack')}"
        )
    return settings, catalog


def stack_path(stack: str, stacks_dir: Path = STACKS_DIR) -> Path:
    return stacks_dir / f"Pulumi.{stack}.yaml"


def settings_from_config(stack: str, values: dict[str, Any], catalog: Catalog) -> StackSettings:
    """Validate `lockstep:*` values (already without the prefix) plus `aws:region`."""
    data = {"stack": stack, **values}
    return StackSettings.model_validate(data, context={"catalog": catalog})


def load_stack(stack: str, stacks_dir: Path = STACKS_DIR, catalog: Catalog | None = None) -> StackSettings:
    catalog = catalog or load_catalog(stacks_dir)
    path = stack_path(stack, stacks_dir)
    return settings_from_document(stack, read_yaml(path), catalog, str(path))


def settings_from_yaml_text(stack: str, text: str, catalog: Catalog, source: str) -> StackSettings:
    """A stack file's content from elsewhere (e.g. `git show base:stacks/…`)."""
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError:
        raise ConfigError(f"{source}: not valid YAML; fix the syntax") from None
    return settings_from_document(stack, data, catalog, source)


def one_region(region: Any, aws_region: Any, source: str = "the stack config") -> Any:
    """lockstep:region (lockstep's provider) and aws:region (the aws provider) name one region."""
    if region is not None and region != aws_region:
        raise ConfigError(
            f"{source}: lockstep:region is {region!r} but aws:region is {aws_region!r}; make them equal "
            "(lockstep's provider must work where the aws provider deploys)"
        )
    return aws_region


def settings_from_document(stack: str, data: Any, catalog: Catalog, path: str) -> StackSettings:
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a top-level `config:` mapping of `lockstep:<key>` settings")
    values: dict[str, Any] = {}
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        encrypted = isinstance(value, dict) and "secure" in value
        if namespace == PROJECT and name in SECRET_KEYS and not encrypted:
            # Never echo the value: it is a secret sitting in plain text in a committed file.
            raise ConfigError(
                f"{path}: lockstep:{name} is stored in plain text; remove that line and run "
                f"`pulumi config set --secret lockstep:{name}` (it is stored encrypted)"
            )
        if namespace == PROJECT and not encrypted:
            values[name] = value
    if (aws_region := config.get("aws:region")) is not None:
        values["region"] = one_region(values.get("region"), aws_region, path)
    if (aws_profile := config.get("aws:profile")) is not None:
        values["awsProfile"] = aws_profile
    try:
        return settings_from_config(stack, values, catalog)
    except ValidationError as exc:
        raise ConfigError(f"{path}: lockstep:{describe_validation_error(exc)}") from None
