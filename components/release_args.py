"""The inputs of `lockstep:index:ModelRelease`, typed for the schema analyzer of
`pulumi.provider.experimental` (TypedDicts, one docstring per property).

They mirror lockstep.config's pydantic models field for field (tests/test_plugin.py holds the two
together); the component validates what arrives with those models, so a program in any language
gets the CLI's rules and the CLI's one-line messages.

Every property that decides which resources exist (versions, slots, catalog, derived stores) or a
name computed when the program runs is a plain value: the schema marks it `plain` and a TypeScript
compiler rejects an Output there. Where things are and how they are checked (the bucket, the
OpenSearch endpoint, the image, the check's thresholds, …) are `pulumi.Input`s: a program may pass
outputs of its own resources (components/deferred.py lists them). The OpenSearch password, the
region and the AWS profile of lockstep's clients are not args: they are the lockstep provider's
configuration (`lockstep:opensearchPassword`, a secret; `lockstep:region`; `lockstep:awsProfile`).

No `from __future__ import annotations` here: the analyzer reads the annotations as real types.
"""

from typing import NotRequired, TypedDict

import pulumi


class VersionRecallFloor(TypedDict):
    """A version's recall@k floor per golden set: a regression of that model fails the check."""

    easy: NotRequired[float]
    """Floor on the easy golden set, 0-1."""
    hard: NotRequired[float]
    """Floor on the hard golden set, 0-1."""


class CatalogVersion(TypedDict):
    """One immutable model version of the catalog (stacks/catalog.yaml's `versions.<name>`)."""

    artifact_sha256: str
    """sha256 of the version's model.tar.gz (64 lowercase hex characters); the artifact's S3 key is content-addressed by it."""
    dimension: int
    """Length of the vectors this version produces; the version's k-NN index is created with it."""
    space_type: str
    """Vector space of the k-NN index: l2, cosinesimil, innerproduct, l1 or linf (the engine must support it)."""
    model: NotRequired[str]
    """Folder of this version's artifact key (models/<model>/<version>/<sha256>/model.tar.gz); default: the catalog's model."""
    family: NotRequired[str]
    """Model family that loads the artifact (hashgram, sentence-transformers, …; default: the catalog's model)."""
    recall_floor: NotRequired[VersionRecallFloor]
    """Recall floors this version must keep in the check, per golden set."""
    description: NotRequired[str]
    """Free text for people (what changed in this version)."""


class ReleaseCatalog(TypedDict):
    """The catalog of model versions every stack chooses from (the content of stacks/catalog.yaml)."""

    model: str
    """Model family name; part of every artifact key (models/<model>/<version>/<sha256>/model.tar.gz)."""
    versions: dict[str, CatalogVersion]
    """Versions by name (e.g. v1): letters, digits, '.', '_' or '-'; floating tags such as latest are refused."""


class SlotVersions(TypedDict):
    """Which version runs in each blue/green endpoint slot; the pin is one of them, the other is the warm standby."""

    blue: NotRequired[str]
    """Version served by the blue slot's endpoint (empty: no blue endpoint)."""
    green: NotRequired[str]
    """Version served by the green slot's endpoint (empty: no green endpoint)."""


class ArtifactBucket(TypedDict):
    """Where the model artifacts live."""

    bucket: pulumi.Input[str]
    """Name of the private, versioned, encrypted S3 bucket the component creates for the artifacts."""


class OpenSearchIndexes(TypedDict):
    """The OpenSearch cluster holding one k-NN index per kept version, and the live alias."""

    url: NotRequired[pulumi.Input[str]]
    """Endpoint of the cluster, e.g. https://search-…es.amazonaws.com: required when endpoints.backend is sagemaker, unless domainName names the domain; a local release uses the embedded node (OPENSEARCH_URL)."""
    engine: NotRequired[str]
    """k-NN engine: lucene (default), faiss or nmslib."""
    index_prefix: NotRequired[str]
    """Index names are <indexPrefix>-<version> (default docs); lowercase letters, digits, '-', '_' or '.'."""
    alias: NotRequired[str]
    """Name of the live alias (default: the index prefix)."""
    auth: NotRequired[pulumi.Input[str]]
    """How lockstep authenticates: none (default), basic (with opensearchPassword) or sigv4."""
    username: NotRequired[pulumi.Input[str]]
    """User name for basic authentication."""
    region: NotRequired[pulumi.Input[str]]
    """AWS region used to sign sigv4 requests."""
    domain_name: NotRequired[pulumi.Input[str]]
    """Name of the Amazon OpenSearch Service domain, when the cluster is one: without a url, lockstep uses the domain's endpoint (DescribeDomain)."""
    shards: NotRequired[pulumi.Input[int]]
    """Primary shards per version index (default 1)."""
    replicas: NotRequired[pulumi.Input[int]]
    """Replicas per version index (default 0)."""
    hnsw_m: NotRequired[pulumi.Input[int]]
    """HNSW graph degree m, 2-100 (default 16)."""
    ef_construction: NotRequired[pulumi.Input[int]]
    """HNSW ef_construction, at least 2 (default 128)."""


class CorpusLocation(TypedDict):
    """The documents every version's index is built from, and the golden queries of the recall probe."""

    bucket: pulumi.Input[str]
    """S3 bucket holding the corpus."""
    key: NotRequired[pulumi.Input[str]]
    """Key of the corpus JSONL (default corpus/docs.jsonl)."""
    golden_key: NotRequired[pulumi.Input[str]]
    """Key of the golden queries JSONL (default corpus/golden.jsonl)."""
    size: NotRequired[pulumi.Input[int]]
    """Number of documents the embedded default generates (ignored on AWS; default 2000)."""


class RollbackAlarmThresholds(TypedDict):
    """Thresholds of the CloudWatch alarms the component declares per endpoint; SageMaker rolls an update back when one fires."""

    max_5xx_errors: NotRequired[int]
    """Invocation5XXErrors (sum per period) above which the update rolls back (default 5)."""
    max_latency_ms: NotRequired[int]
    """Average ModelLatency in milliseconds above which the update rolls back (default 1000)."""
    period_seconds: NotRequired[int]
    """Seconds per evaluated period, at least 10 (default 60)."""
    evaluation_periods: NotRequired[int]
    """Periods over the threshold before the alarm fires (default 2)."""


class BlueGreenDeployment(TypedDict):
    """SageMaker's blue/green update policy for a slot's endpoint, with alarm-driven auto-rollback."""

    traffic_routing: NotRequired[str]
    """ALL_AT_ONCE (default), CANARY or LINEAR."""
    canary_percent: NotRequired[int]
    """Capacity percent of the canary or of each linear step: 1-50 for CANARY, 10-50 for LINEAR (default 10); both need instanceCount 2 or more."""
    wait_seconds: NotRequired[int]
    """Seconds between traffic shifts, at most 3600 (default 300); the whole update must fit the aws provider's 3600 s endpoint wait."""
    termination_wait_seconds: NotRequired[int]
    """Seconds the old fleet is kept after the shift, at most 3600 (default 300)."""
    alarms: NotRequired[RollbackAlarmThresholds]
    """Thresholds of the rollback alarms the component declares (5xx errors and model latency)."""
    rollback_alarms: NotRequired[list[str]]
    """Further CloudWatch alarm names (declared elsewhere) that roll the endpoint update back; editing this list replaces the endpoints."""


class SageMakerEndpoints(TypedDict):
    """One SageMaker endpoint per slot, serving the slot's version."""

    image_uri: NotRequired[pulumi.Input[str]]
    """ECR image of the serving container (<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag]): required when backend is sagemaker."""
    backend: NotRequired[str]
    """sagemaker (the default here): SageMaker endpoints declared with pulumi-aws; local: the embedded default's slot processes, run by lockstep's provider."""
    instance_type: NotRequired[pulumi.Input[str]]
    """Instance type of each endpoint (default ml.m5.large)."""
    instance_count: NotRequired[pulumi.Input[int]]
    """Instances per endpoint (default 1)."""
    max_batch: NotRequired[pulumi.Input[int]]
    """Largest batch of texts sent in one invocation (default 256)."""
    deployment: NotRequired[BlueGreenDeployment]
    """Blue/green traffic shifting and auto-rollback of an endpoint update."""


class ConsistencyCheck(TypedDict):
    """Thresholds of the consistency check that runs after every cutover and fails the deployment."""

    recall_floor: NotRequired[pulumi.Input[float]]
    """Minimum recall@k of the golden queries through the live alias, 0-1 (default 0.8)."""
    k: NotRequired[pulumi.Input[int]]
    """k of the recall probe, 1-100 (default 10)."""
    probe_sample: NotRequired[pulumi.Input[int]]
    """Stored vectors re-embedded by the live endpoint (default 64)."""
    probe_min_cosine: NotRequired[pulumi.Input[float]]
    """Minimum cosine between a stored vector and its re-embedding (default 0.999)."""
    stale_sample: NotRequired[pulumi.Input[int]]
    """Documents whose content hash is compared with the corpus (default 200)."""


class BackfillEngine(TypedDict):
    """How a version's index is (re-)embedded."""

    engine: NotRequired[pulumi.Input[str]]
    """local (default, in-process) or ray (a Ray Data pipeline)."""
    address: NotRequired[pulumi.Input[str]]
    """Ray cluster address when engine is ray (default: a local Ray runtime)."""
    workers: NotRequired[pulumi.Input[int]]
    """Embedding workers (default 2)."""
    batch_size: NotRequired[pulumi.Input[int]]
    """Documents per embedding batch (default 256)."""


class DerivedRecordStore(TypedDict):
    """A table of records a model version decided (e.g. related-document lists), each stamped with the version that wrote it."""

    name: str
    """Store name, used by the plan and the check (letters, digits, '.', '_' or '-')."""
    kind: str
    """What the records are: related-documents (each document's top-k neighbours on the version's index)."""
    table: str
    """Name of the DynamoDB table the component creates (encrypted, point-in-time recovery on, indexed by model_version)."""
    repair: NotRequired[str]
    """What a rollback does to records another version wrote: recompute (default, rewrite with the pin) or quarantine (mark and keep)."""
    k: NotRequired[int]
    """Neighbours per related-documents list (default 5)."""
    write_rate: NotRequired[float]
    """Items per second a repair writes (default 100): spares the table's capacity."""
    writer_guard: NotRequired[str]
    """How lockstep.derived guards a write: transaction (default; atomic, for AWS) or verify (write, then read the fence and undo if it moved; for the embedded moto)."""


class ModelReleaseArgs(TypedDict):
    """The inputs of a ModelRelease: a stack's `lockstep:*` settings plus the catalog."""

    pin: str
    """The live version: the live alias, the live pointer and the check follow it. It must be in one of the slots; changing it between the two slot versions is a flip."""
    slots: SlotVersions
    """Versions of the blue and green endpoint slots."""
    catalog: ReleaseCatalog
    """The catalog of immutable model versions (artifact sha256, dimension, vector space)."""
    artifacts: ArtifactBucket
    """The artifact bucket."""
    opensearch: OpenSearchIndexes
    """The OpenSearch cluster and index settings."""
    corpus: CorpusLocation
    """The corpus the indices are built from."""
    endpoints: SageMakerEndpoints
    """The SageMaker endpoints of the two slots."""
    retain: NotRequired[list[str]]
    """Versions whose index (and artifact) stay warm for an instant rollback, besides the slots."""
    check: NotRequired[ConsistencyCheck]
    """Thresholds of the post-deploy consistency check."""
    backfill: NotRequired[BackfillEngine]
    """How indices are (re-)embedded."""
    region: NotRequired[str]
    """AWS region of the deployment (default: the program's aws:region, else us-east-1); lockstep's provider configuration (lockstep:region) must name the same."""
    stack: NotRequired[str]
    """Name under which endpoints, the live pointer and the check are named (default: the Pulumi stack's name)."""
    pointer_parameter: NotRequired[str]
    """SSM parameter of the live pointer (default /<namePrefix>/<stack>/live)."""
    name_prefix: NotRequired[str]
    """First part of the endpoint names (<namePrefix>-<stack>-<slot>) and of the live pointer (default: the Pulumi project's name)."""
    auto_revert: NotRequired[bool]
    """`lockstep apply` and `lockstep up` (not a plain `pulumi up`): flip back to the last version whose check passed when the post-deploy check fails."""
    promoted_from: NotRequired[str]
    """Stack this pin was promoted from (recorded only)."""
    derived: NotRequired[list[DerivedRecordStore]]
    """Derived-record stores: a rollback counts, then recomputes or quarantines what other versions wrote."""
