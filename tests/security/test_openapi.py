"""`/openapi.json` describes the API, and a live service keeps to it (schemathesis).

Schemathesis generates requests for every operation from the document (a fixed number
per operation, so the run stays within seconds), with real tokens given as examples so
that it gets past the 404 of an unknown token; every answer must be documented (status,
headers, JSON schema) and none may be a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings

from support.service import ServiceProcess
from tidings.webpush import VapidKey, encrypt, public_key_bytes
from tidings.webpush.links import link_target

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 50

# No 5xx, and every answer as documented. Not `positive_data_acceptance`: OpenAPI cannot
# say "Content-Encoding is required when there is a body" or "the body must be an
# aes128gcm record", so schema-valid pushes are rightly refused with 400.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.allow_header_conformance,
]


def _example_tokens(url: str) -> dict[str, str]:
    """Real tokens of a live subscription, set, receipt subscription and message."""
    from cryptography.hazmat.primitives.asymmetric import ec

    with httpx.Client(base_url=url, timeout=10) as client:
        created = client.post("/subscribe")
        link = created.headers["link"]
        push_url = link_target(link, "urn:ietf:params:push") or ""
        set_url = link_target(link, "urn:ietf:params:push:set") or ""
        key = ec.generate_private_key(ec.SECP256R1())
        body = encrypt(b"example", public_key_bytes(key.public_key()), b"0123456789abcdef")
        pushed = client.post(
            push_url,
            content=body,
            headers={"ttl": "600", "content-encoding": "aes128gcm", "prefer": "respond-async"},
        )
        receipt_url = link_target(pushed.headers["link"], "urn:ietf:params:push:receipt") or ""
    return {
        "/push/{token}": push_url.rsplit("/", 1)[-1],
        "/m/{token}": pushed.headers["location"].rsplit("/", 1)[-1],
        "/s/{token}": created.headers["location"].rsplit("/", 1)[-1],
        "/set/{token}": set_url.rsplit("/", 1)[-1],
        "/r/{token}": receipt_url.rsplit("/", 1)[-1],
    }


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess(Path(tmp_path_factory.mktemp("openapi")))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api_schema(live_service: ServiceProcess) -> Any:
    document = httpx.get(live_service.url + "/openapi.json").json()
    for path, token in _example_tokens(live_service.url).items():
        for parameter in document["paths"][path]["parameters"]:
            parameter["examples"] = {"live": {"value": token}}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=live_service.url)
    return schema


def test_the_live_api_keeps_to_its_description(api_schema: Any) -> None:
    # Driven by hand rather than by schemathesis' pytest plugin, which does not load
    # under the pytest used here; the generation and the checks are the same.
    from hypothesis import given

    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        )
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_openapi_document_is_served(live_service: ServiceProcess) -> None:
    response = httpx.get(live_service.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"  # a public document
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": live_service.url}]
    assert {"/push/{token}", "/m/{token}", "/subscribe", "/health"} <= set(document["paths"])


def test_vapid_key_example_is_an_uncompressed_point() -> None:
    # The subscribe body's `vapid` is what `tidings keys generate` prints.
    key = VapidKey.generate()
    assert len(public_key_bytes(key.private_key.public_key())) == 65
