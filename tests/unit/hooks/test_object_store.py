from __future__ import annotations

import pytest

from llm_etl_provider.exceptions import StagingError
from llm_etl_provider.hooks.object_store import expiry_seconds, signer_for, url_egress


def test_egress_is_the_url_s_address_and_port_or_the_deployment_s_ranges():
    assert url_egress("http://127.0.0.1:8333/llm-etl/x?X-Amz-Signature=s") == [("127.0.0.1", 8333)]
    assert url_egress("https://[::1]/b/k") == [("::1", 443)]
    assert url_egress("https://bucket.s3.amazonaws.com/k", ["52.216.0.0/15", "3.5.0.1"]) == [
        ("52.216.0.0/15", 443),
        ("3.5.0.1/32", 443),
    ]
    resolved = url_egress("http://localhost:9000/k")  # a host name: its addresses as resolved now
    assert resolved
    assert all(port == 9000 for _, port in resolved)


def test_schemes_without_pre_signed_urls_are_refused_and_urls_live_at_most_7_days():
    from upath import UPath

    with pytest.raises(StagingError, match="or use transport=log"):
        signer_for(UPath("memory://bucket/x"))
    assert expiry_seconds(8 * 24 * 3600) == 7 * 24 * 3600  # what a signature allows
    assert expiry_seconds(3600) == 3600
