"""Pre-signed URLs for the ``object`` transport, made with the path's Airflow connection: the pods get URLs
that expire with the run, never the connection's credentials.

``s3://`` (AWS S3, MinIO, SeaweedFS and other S3-compatible stores; ``aws_default`` falls back to the AWS
SDK's own variables, ``AWS_ENDPOINT_URL`` included) through the amazon provider, ``gs://`` through the google
provider (V4 signed URLs need a service-account key in the connection). Other schemes are refused with an
error that names the ``log`` transport.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from llm_etl_provider.exceptions import StagingError

Method = Literal["GET", "PUT"]
MAX_EXPIRY_SECONDS = 7 * 24 * 3600  # SigV4 and GCS V4 signatures live at most 7 days
DEFAULT_PORTS = {"http": 80, "https": 443}


class ObjectStoreSigner:
    """Signs URLs for the objects of one store (a scheme and a connection)."""

    def sign(self, bucket: str, key: str, method: Method, expires: int) -> str:
        raise NotImplementedError


class S3Signer(ObjectStoreSigner):
    def __init__(self, conn_id: str | None) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.client: Any = S3Hook(aws_conn_id=conn_id).get_conn()

    def sign(self, bucket: str, key: str, method: Method, expires: int) -> str:
        operation = "get_object" if method == "GET" else "put_object"
        return str(
            self.client.generate_presigned_url(
                operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires, HttpMethod=method
            )
        )


class GcsSigner(ObjectStoreSigner):
    def __init__(self, conn_id: str | None) -> None:
        try:
            from airflow.providers.google.cloud.hooks.gcs import GCSHook  # type: ignore[import-not-found]
        except ImportError:
            raise StagingError(
                "gs:// with the object transport needs apache-airflow-providers-google; or use transport=log"
            ) from None
        self.client: Any = GCSHook(gcp_conn_id=conn_id or "google_cloud_default").get_conn()

    def sign(self, bucket: str, key: str, method: Method, expires: int) -> str:
        blob = self.client.bucket(bucket).blob(key)
        return str(
            blob.generate_signed_url(
                version="v4", expiration=datetime.timedelta(seconds=expires), method=method
            )
        )


def signer_for(path: Any) -> ObjectStoreSigner:
    """The signer of an ObjectStoragePath's store; StagingError for a scheme that has none."""
    protocol = str(getattr(path, "protocol", "") or "file")
    if protocol in ("s3", "s3a"):
        try:
            return S3Signer(path.conn_id)
        except ImportError:
            raise StagingError(
                "s3:// with the object transport needs apache-airflow-providers-amazon "
                "(pip install 'llm-etl-provider[amazon]'); or use transport=log"
            ) from None
    if protocol in ("gs", "gcs"):
        return GcsSigner(path.conn_id)
    raise StagingError(
        f"the object transport reads and writes through pre-signed URLs, which {protocol}:// cannot give "
        f"({path}): put the input and the output on s3:// or gs://, or use transport=log"
    )


def expiry_seconds(run_deadline_seconds: float) -> int:
    """The URLs' lifetime: the run's deadline, but no more than a signature allows (7 days)."""
    return int(min(run_deadline_seconds, MAX_EXPIRY_SECONDS))


def url_egress(url: str, cidrs: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Where a pod must be able to connect to use ``url``: ``cidrs`` if given (a store whose addresses rotate,
    such as AWS S3's, needs its published ranges or a VPC endpoint), else the URL's host as resolved now (a
    NetworkPolicy allows IP blocks only), each with the URL's port."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 443)
    if cidrs:
        return [(str(ipaddress.ip_network(cidr, strict=False)), port) for cidr in cidrs]
    host = parts.hostname or ""
    try:
        return [(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise StagingError(f"cannot resolve the object store's host {host}: {exc}") from None
    return [(address, port) for address in sorted({str(info[4][0]) for info in found})]
