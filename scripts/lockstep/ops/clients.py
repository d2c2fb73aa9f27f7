"""Clients for the servers, built from the environment (never from config or resource inputs).

`OPENSEARCH_URL` / `AWS_ENDPOINT_URL` win; otherwise the embedded environment started by
`lockstep services up` is used; otherwise real AWS (boto3's own credential chain) and the stack's
OpenSearch URL. Credentials: SigV4 from boto3's chain for Amazon OpenSearch, or basic auth with
the password from `LOCKSTEP_OPENSEARCH_PASSWORD` (set from a Pulumi secret).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import lru_cache

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import ConnectionTimeout, TransportError

from lockstep import services
from lockstep.config import OpenSearchSettings, StackSettings
from lockstep.errors import Unreachable, UsageError

PASSWORD_VARIABLE = "LOCKSTEP_OPENSEARCH_PASSWORD"


def _env(name: str, embedded: bool = True) -> str | None:
    """An explicit environment variable, else (for embedded stacks) the running embedded server."""
    return os.environ.get(name) or (services.environment().get(name) if embedded else None)


def opensearch_url(settings: OpenSearchSettings | None = None) -> str:
    explicit = settings.url if settings else None
    url = os.environ.get("OPENSEARCH_URL") or explicit or _env("OPENSEARCH_URL")
    if not url:
        raise Unreachable("OpenSearch is not configured: run `lockstep services up` or set OPENSEARCH_URL")
    return url.rstrip("/")


def opensearch(settings: OpenSearchSettings | None = None, timeout: float = 30) -> OpenSearch:
    settings = settings or OpenSearchSettings()
    url = opensearch_url(settings)
    auth = None
    if settings.auth == "sigv4" and not os.environ.get("OPENSEARCH_URL"):
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise Unreachable(
                f"cannot sign requests to {url}: opensearch.auth is sigv4 but no AWS credentials were found; configure the AWS credential chain"
            )
        auth = AWSV4SignerAuth(credentials, settings.region or "us-east-1", "es")
    elif settings.auth == "basic":
        password = os.environ.get(PASSWORD_VARIABLE)
        if not settings.username or not password:
            raise UsageError(
                f"opensearch.auth is basic: set opensearch.username in the stack and {PASSWORD_VARIABLE} "
                "from the Pulumi secret `lockstep:opensearchPassword`"
            )
        auth = (settings.username, password)
    return OpenSearch(
        hosts=[url],
        http_auth=auth,
        connection_class=RequestsHttpConnection,
        timeout=timeout,
        max_retries=3,
        retry_on_timeout=True,
        retry_on_status=(502, 503, 504),
        http_compress=False,
    )


def aws_endpoint(embedded: bool = True) -> str | None:
    return _env("AWS_ENDPOINT_URL", embedded)


@lru_cache(maxsize=32)
def _session_client(service: str, region: str, endpoint: str | None, key: str | None):
    kwargs = {}
    if endpoint and not os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.session.Session(**kwargs).client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        config=BotoConfig(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def aws(service: str, region: str | None = None, embedded: bool = True):
    region = region or _env("AWS_DEFAULT_REGION") or "us-east-1"
    return _session_client(service, region, aws_endpoint(embedded), os.environ.get("AWS_ACCESS_KEY_ID"))


def aws_for(settings: StackSettings, service: str):
    """A client for the stack: an AWS stack never falls back to the embedded moto server."""
    return aws(service, settings.region, embedded=settings.embedded)


def redact(url: str) -> str:
    """A URL fit for a message or a log: credentials in it (`https://user:pass@host`) are hidden."""
    return re.sub(r"(//)[^/@]*@", r"\1***@", url)


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
        code = exc.response.get("Error", {}).get("Code", "")
        # "403"/"Forbidden": a HEAD request's refusal has no body to name the reason.
        if code in {
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
            "AccessDenied",
            "ExpiredToken",
            "InvalidClientTokenId",
            "403",
            "Forbidden",
        }:
            raise UsageError(f"{what} at {where} refused our credentials ({code}); check the AWS credentials") from None
        raise
    except BotoCoreError as exc:
        raise Unreachable(f"{what} at {where} failed: {exc}") from None
