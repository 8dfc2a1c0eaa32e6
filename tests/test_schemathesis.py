"""schemathesis against the public API's own OpenAPI schema (`/api/v1/*`, `/healthz`), over real
HTTP to a live server on SQLite: valid and invalid generated requests never get a 5xx, and every
response conforms to the schema (status code documented, content type, headers, body)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, negative_data_rejection, response_headers_conformance, response_schema_conformance,
    status_code_conformance,
)

from app.bot import Bot
from app.services import build_services
from app.settings import Settings
from tests.conftest import LiveServer

PUBLIC = r"^/(api/v1/|healthz$)"
CONFORMS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
            response_schema_conformance]
# per operation and mode: enough to find a 500, short enough for every test run (raise it for a deeper run)
EXAMPLES = int(os.environ.get("VSSBOT_SCHEMATHESIS_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bot: Bot) -> Iterator[LiveServer]:
    """One live server for the module, rate limits off (otherwise most cases would just be 429s)."""
    db = Path(tmp_path_factory.mktemp("schemathesis")) / "vssbot.db"
    services = build_services(Settings(database_url=f"sqlite:///{db}", rate_per_minute=0, rate_per_address_minute=0),
                              bot=bot)
    with LiveServer(services) as live:
        yield live
    services.close()


def operations(server: LiveServer) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json").include(path_regex=PUBLIC)
    found = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in found} == {
        ("POST", "/api/v1/ask"), ("POST", "/api/v1/feedback"), ("GET", "/healthz")}
    return found


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_public_api_never_fails_and_conforms_to_its_schema(server: LiveServer, mode: GenerationMode) -> None:
    checks = CONFORMS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    for operation in operations(server):
        if mode is GenerationMode.NEGATIVE and operation.path == "/healthz":
            continue  # no parameters, no body: nothing to make invalid


        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            case = data.draw(operation.as_strategy(generation_mode=mode))
            case.call_and_validate(base_url=server.url, checks=checks)

        run()
