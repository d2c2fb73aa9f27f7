"""Clients for the servers, built from the environment (never from config or resource inputs).

`OPENSEARCH_URL` / `AWS_ENDPOINT_URL` win; otherwise the embedded environment started by
`lockstep services up` is used (embedded stacks only); otherwise real AWS and the stack's
OpenSearch URL (or, without one, the endpoint of its `domainName`, as Amazon OpenSearch Service
describes it). Credentials come from one place, `Credentials` (`configure`: the provider's
configuration; the CLI's defaults otherwise): region, profile, an assumed role, and the OpenSearch
password (else `LOCKSTEP_OPENSEARCH_PASSWORD`). Every AWS client and the SigV4 signer (`es` for
Amazon OpenSearch Service, `aoss` for Serverless) come from `session()`, which honours them.

Every server is identified before the first request made to it (once per process and address):
OpenSearch must say it is OpenSearch and have the k-NN plugin; an AWS endpoint override must
answer STS GetCallerIdentity as AWS does. Anything else is one line naming the variable, what
answered and the fix (exit 2), before lockstep has read or written anything there.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    UnknownRegionError,
)
from botocore.parsers import ResponseParserError
from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import ConnectionTimeout, TransportError

from lockstep import services
from lockstep.config import OpenSearchSettings, StackSettings
from lockstep.errors import Unreachable, UsageError

PASSWORD_VARIABLE = "LOCKSTEP_OPENSEARCH_PASSWORD"
# AWS error codes that mean "your credentials were refused"; "403"/"Forbidden": a HEAD request's
# refusal has no body to name the reason.
CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "AccessDenied",
    "AccessDeniedException",  # DynamoDB, SSM, SageMaker: the credentials lack a permission
    "ExpiredToken",
    "InvalidClientTokenId",
    "403",
    "Forbidden",
}

# boto3's chain found no (or half a) credential: no retry helps, and the fix is configuration.
NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError)


def missing_credentials(what: str) -> UsageError:
    return UsageError(
        f"{what}: no AWS credentials on this machine; set aws:profile (`pulumi config set aws:profile NAME`), "
        "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


@dataclass(frozen=True)
class Credentials:
    """How lockstep authenticates, set once per process (the provider's Configure)."""

    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    opensearch_password: str | None = None


_credentials = Credentials()


def configure(credentials: Credentials) -> None:
    """Use `credentials` for every client built from now on (clients built before are dropped)."""
    global _credentials
    _credentials = credentials
    _session_client.cache_clear()
    _base_session.cache_clear()
    _domain_url.cache_clear()


def current() -> Credentials:
    return _credentials


def _env(name: str, embedded: bool = True) -> str | None:
    """An explicit environment variable, else (for embedded stacks) the running embedded server."""
    return os.environ.get(name) or (services.environment().get(name) if embedded else None)


def _opensearch_source(settings: OpenSearchSettings | None = None) -> tuple[str, str]:
    """(url, where it came from): OPENSEARCH_URL wins over the stack's opensearch.url, then the embedded node."""
    if os.environ.get("OPENSEARCH_URL"):
        return os.environ["OPENSEARCH_URL"], "OPENSEARCH_URL"
    if settings and settings.url:
        return settings.url, "the stack's opensearch.url"
    if settings and settings.domain_name:
        where = settings.region or region()
        return _domain_url(settings.domain_name, where), f"the OpenSearch Service domain {settings.domain_name}"
    url = _env("OPENSEARCH_URL")
    if not url:
        raise Unreachable("OpenSearch is not configured: run `lockstep services up` or set OPENSEARCH_URL")
    return url, "the embedded OpenSearch (`lockstep services up`)"


@lru_cache(maxsize=8)
def _domain_url(domain: str, region_name: str) -> str:
    """The domain's endpoint (public, else its VPC endpoint) as DescribeDomain reports it, once per process."""
    client = aws("opensearch", region_name, embedded=False)
    try:
        with reaching("AWS (OpenSearch Service)", aws_endpoint(False) or f"AWS {region_name}"):
            status = client.describe_domain(DomainName=domain)["DomainStatus"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise UsageError(
            f"opensearch.domainName: no OpenSearch Service domain {domain} in {region_name} ({code}); "
            "fix the name or region, or set opensearch.url"
        ) from None
    endpoint = status.get("Endpoint") or (status.get("Endpoints") or {}).get("vpc")
    if not endpoint:
        raise Unreachable(
            f"OpenSearch Service domain {domain} in {region_name} has no endpoint yet; wait until it is active, "
            "or set opensearch.url"
        )
    return f"https://{endpoint}"


def _require_url(url: str, source: str) -> str:
    """A malformed address (no scheme, no host) is bad input, not a server to try."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} is {redact(url)!r}, not an http(s) URL; set it to http://host:port or https://host")
    return url.rstrip("/")


def opensearch_url(settings: OpenSearchSettings | None = None) -> str:
    return _require_url(*_opensearch_source(settings))


def opensearch(settings: OpenSearchSettings | None = None, timeout: float = 30) -> OpenSearch:
    settings = settings or OpenSearchSettings()
    url = opensearch_url(settings)
    auth: AWSV4SignerAuth | tuple[str, str] | None = None
    if settings.auth == "sigv4" and not os.environ.get("OPENSEARCH_URL"):
        credentials = session(None, settings.region).get_credentials()
        if credentials is None:
            raise Unreachable(
                f"cannot sign requests to {url}: opensearch.auth is sigv4 but no AWS credentials were found; configure the AWS credential chain"
            )
        auth = AWSV4SignerAuth(credentials, settings.region or region(), sigv4_service(url))
    elif settings.auth == "basic":
        password = _credentials.opensearch_password or os.environ.get(PASSWORD_VARIABLE)
        if not settings.username or not password:
            raise UsageError(
                "opensearch.auth is basic: set opensearch.username in the stack and the secret "
                f"`lockstep:opensearchPassword` (the provider's configuration; {PASSWORD_VARIABLE} for the CLI)"
            )
        auth = (settings.username, password)
    client = OpenSearch(
        hosts=[url],
        http_auth=auth,
        connection_class=RequestsHttpConnection,
        timeout=timeout,
        max_retries=3,
        retry_on_timeout=True,
        retry_on_status=(502, 503, 504),
        http_compress=False,
    )
    if url not in _IDENTIFIED:
        _identify_first(client, url, _opensearch_source(settings)[1])
    return client


# Addresses whose server answered as it should, in this process (one round trip per address).
_IDENTIFIED: set[str] = set()
KNN_PLUGIN = "opensearch-knn"


def _identify_first(client: OpenSearch, url: str, source: str) -> None:
    """Identify the server on the client's first request, then get out of the way."""
    transport = client.transport
    send = transport.perform_request

    def first(*args, **kwargs):
        if url not in _IDENTIFIED:
            identify_opensearch(client, url, source)
        transport.perform_request = send  # type: ignore[method-assign]
        return send(*args, **kwargs)

    transport.perform_request = first  # type: ignore[method-assign]


def _answer(status: int, headers, body: bytes | str) -> str:
    """What a server answered, in a few words: status, content type, server, start of the body."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    kind = (headers or {}).get("Content-Type") or (headers or {}).get("content-type") or "no content type"
    server = (headers or {}).get("Server") or (headers or {}).get("server")
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    snippet = " ".join((title.group(1) if title else text).split())[:60]
    return f"HTTP {status} {kind}" + (f" from {server}" if server else "") + (f": {snippet!r}" if snippet else "")


def identify_opensearch(client: OpenSearch, url: str, source: str) -> None:
    """The root answer names the OpenSearch distribution and version, and the k-NN plugin is
    installed; otherwise one line (exit 2). 401/403 and transport failures raise as any request
    does, so `reaching` names them ("refused our credentials", "unreachable")."""
    connection = client.transport.get_connection()
    not_auth = [code for code in range(300, 600) if code not in (401, 403)]
    status, headers, body = connection.perform_request("GET", "/", ignore=not_auth)
    fix = f"point {source.split(' (')[0]} at an OpenSearch 2.x node with the k-NN plugin"
    try:
        root = json.loads(body) if status == 200 else None
    except ValueError:
        root = None
    version = root.get("version") if isinstance(root, dict) else None
    if not isinstance(version, dict) or version.get("distribution") != "opensearch":
        seen = (
            f"{version.get('distribution') or 'elasticsearch'} {version.get('number')}"
            if isinstance(version, dict)
            else _answer(status, headers, body)
        )
        raise UsageError(f"{source} ({redact(url)}) is not OpenSearch: it answered {seen}; {fix}")
    status, headers, body = connection.perform_request(
        "GET", "/_cat/plugins", params={"format": "json"}, ignore=not_auth
    )
    try:
        plugins = {p.get("component") for p in json.loads(body)} if status == 200 else set()
    except (ValueError, AttributeError, TypeError):
        plugins = set()
    if KNN_PLUGIN not in plugins:
        raise UsageError(
            f"{source} ({redact(url)}) is OpenSearch {version.get('number')} without the k-NN plugin "
            f"({KNN_PLUGIN}); install it there or {fix}"
        )
    _IDENTIFIED.add(url)


def _aws_source() -> str:
    return "AWS_ENDPOINT_URL" if os.environ.get("AWS_ENDPOINT_URL") else "the embedded moto server's AWS_ENDPOINT_URL"


def aws_endpoint(embedded: bool = True) -> str | None:
    endpoint = _env("AWS_ENDPOINT_URL", embedded)
    return _require_url(endpoint, _aws_source()) if endpoint else None


def sigv4_service(url: str) -> str:
    """`aoss` for Amazon OpenSearch Serverless collections (*.aoss.amazonaws.com), else `es`."""
    host = urlsplit(url).hostname or ""
    return "aoss" if host.endswith(".aoss.amazonaws.com") else "es"


def region(explicit: str | None = None) -> str:
    return explicit or _credentials.region or _env("AWS_REGION") or _env("AWS_DEFAULT_REGION") or "us-east-1"


@lru_cache(maxsize=16)
def partition(region_name: str) -> str:
    """The ARN partition of a region (`aws`, `aws-cn`, `aws-us-gov`, `aws-iso`, ...), from botocore's
    endpoint data; `aws` for a region botocore does not know (a policy for a new commercial region)."""
    try:
        return botocore.session.get_session().get_partition_for_region(region_name)
    except UnknownRegionError:
        return "aws"


@lru_cache(maxsize=8)
def _base_session(profile: str | None, role_arn: str | None, region_name: str) -> boto3.session.Session:
    """The profile's (or boto3's chain's) session; with a role, one whose credentials are the role's,
    refreshed by botocore before they expire (an update longer than a role session keeps working)."""
    try:
        base = boto3.session.Session(profile_name=profile, region_name=region_name)
    except ProfileNotFound:
        raise UsageError(
            f"AWS profile {profile!r} is not in this machine's AWS config; fix aws:profile "
            f"(`pulumi config set aws:profile NAME`) or create it (`aws configure --profile {profile}`)"
        ) from None
    if not role_arn:
        return base
    from botocore.credentials import DeferredRefreshableCredentials
    from botocore.session import get_session

    sts = base.client("sts", region_name=region_name)

    def refresh() -> dict:
        got = sts.assume_role(RoleArn=role_arn, RoleSessionName="lockstep")["Credentials"]
        return {
            "access_key": got["AccessKeyId"],
            "secret_key": got["SecretAccessKey"],
            "token": got["SessionToken"],
            "expiry_time": got["Expiration"].isoformat(),
        }

    core = get_session()
    core._credentials = DeferredRefreshableCredentials(refresh, "assume-role")  # noqa: SLF001 - botocore's documented pattern
    core.set_config_variable("region", region_name)
    return boto3.session.Session(botocore_session=core)


def session(endpoint: str | None, region_name: str | None = None, profile: str | None = None) -> boto3.session.Session:
    """The one AWS session factory. Real AWS: the configured profile (else the stack's `aws:profile`,
    else boto3's chain), and the configured role assumed on top. An endpoint override (an emulator)
    wins, with test credentials unless the environment has some."""
    if endpoint:
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            return boto3.session.Session()
        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return _base_session(_credentials.profile or profile, _credentials.role_arn, region(region_name))


@lru_cache(maxsize=32)
def _session_client(
    service: str, region: str, endpoint: str | None, key: str | None, profile: str | None = None, validate: bool = True
):
    client = session(endpoint, region, profile).client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        config=BotoConfig(
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            parameter_validation=validate,
        ),
    )
    if endpoint:  # an override: identify what answers there before the first call (real AWS is AWS)
        source = _aws_source()

        def before_call(**_):
            if (endpoint, key) not in _IDENTIFIED_AWS:
                identify_aws(endpoint, region, source)
                _IDENTIFIED_AWS.add((endpoint, key))

        client.meta.events.register("before-call", before_call)
    return client


_IDENTIFIED_AWS: set[tuple[str, str | None]] = set()


def identify_aws(endpoint: str, region: str, source: str) -> None:
    """STS GetCallerIdentity must answer as AWS does (an account and an ARN); otherwise one line
    (exit 2). An unreachable endpoint or refused credentials raise as any call does, so `reaching`
    names them the way it names every other AWS failure."""
    sts = session(endpoint).client(
        "sts",
        region_name=region,
        endpoint_url=endpoint,
        config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=15),
    )
    raw: dict = {}
    sts.meta.events.register("before-parse", lambda response_dict, **_: raw.update(response_dict))
    seen = ""
    try:
        answer = sts.get_caller_identity()
        if answer.get("Account") and answer.get("Arn"):
            return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in CREDENTIAL_CODES:
            raise
        seen = f"{exc.response.get('Error', {}).get('Code')}"
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError):
        raise
    except (BotoCoreError, ResponseParserError) as exc:
        seen = type(exc).__name__
    if raw:
        seen = _answer(raw.get("status_code", 0), raw.get("headers"), raw.get("body", b""))
    raise UsageError(
        f"{source} ({redact(endpoint)}) is not an AWS API: STS GetCallerIdentity was answered with {seen or 'no identity'}; "
        f"point {source.split()[-1]} at AWS or an AWS emulator (`lockstep services up` starts moto), or unset it"
    )


def aws(
    service: str,
    region_name: str | None = None,
    embedded: bool = True,
    profile: str | None = None,
    validate: bool = True,
):
    """`validate=False` skips botocore's client-side check of every parameter: for requests that
    code builds (the service still validates them), where that check is a hot loop's CPU."""
    where = region(region_name)
    return _session_client(
        service, where, aws_endpoint(embedded), os.environ.get("AWS_ACCESS_KEY_ID"), profile, validate
    )


def aws_for(settings: StackSettings, service: str, validate: bool = True):
    """A client for the stack, in its region and AWS profile: an AWS stack never falls back to the
    embedded moto server."""
    return aws(service, settings.region, embedded=settings.embedded, profile=settings.aws_profile, validate=validate)


def redact(url: str) -> str:
    """A URL fit for a message or a log: credentials in it (`https://user:pass@host`) are hidden."""
    return re.sub(r"(//)[^/@]*@", r"\1***@", url)


def reaching_aws(settings: StackSettings, service: str | None = None):
    """`reaching` for the stack's AWS: a failure names the address its clients use (`aws_for`:
    the embedded moto only for an embedded stack), never a moto that happens to be running."""
    return reaching(f"AWS ({service})" if service else "AWS", aws_endpoint(settings.embedded) or "AWS")


@contextmanager
def reaching(what: str, where: str):
    """Turn transport failures into one `Unreachable` line naming the server and its address.

    An OpenSearch failure inside an AWS context (`with reaching("OpenSearch", …), reaching("AWS", …)`)
    passes through to the OpenSearch context, so the line names the server that failed."""
    opensearch_context = what.startswith("OpenSearch")
    where = redact(where)
    try:
        yield
    except (OSConnectionError, ConnectionTimeout) as exc:
        if not opensearch_context:
            raise
        raise Unreachable(
            f"{what} at {where} is unreachable ({type(exc).__name__}); run `lockstep services up` or fix the URL"
        ) from None
    except EndpointConnectionError as exc:
        if opensearch_context:  # an SSM/S3 call made while talking to OpenSearch: name AWS, not OpenSearch
            what, where = "AWS", exc.kwargs.get("endpoint_url") or "AWS"
        raise Unreachable(
            f"{what} at {where} is unreachable; run `lockstep services up` or fix AWS_ENDPOINT_URL"
        ) from None
    except TransportError as exc:
        if not opensearch_context:
            raise
        if exc.status_code in (401, 403):
            raise UsageError(
                f"{what} at {where} refused our credentials (HTTP {exc.status_code}); check the OpenSearch user/password or IAM role"
            ) from None
        raise
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, said = error.get("Code", ""), " ".join(str(error.get("Message") or "").split())[:300]
        if code in CREDENTIAL_CODES:
            raise UsageError(
                f"{what} at {where} refused our credentials ({code}{': ' + said if said else ''}); "
                "check the AWS credentials and their permissions (docs/iam.md)"
            ) from None
        raise
    except NO_CREDENTIALS:
        raise missing_credentials(f"{what} at {where}") from None
    except BotoCoreError as exc:
        raise Unreachable(f"{what} at {where} failed: {exc}") from None
