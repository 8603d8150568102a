"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI spec; none may get a 5xx.

Driven through hypothesis directly (one bounded, derandomized run per operation) rather than through
schemathesis' pytest plugin, whose fixture loader does not work with pytest 9.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from libs.common.broker import PaperBroker
from libs.common.settings import Settings
from services.api.app import create_app
from tests.api.conftest import profile_ok

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


def test_no_request_the_spec_allows_gets_a_5xx(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(
            update={
                "broker": "paper",
                "api_allowed_hosts": ["testserver"],  # schemathesis' Host
                "credentials_key": SecretStr("fuzz-credentials-key"),
            }
        ),
        broker=PaperBroker(),
        http=httpx.AsyncClient(transport=httpx.MockTransport(profile_ok)),
    )
    try:
        _fuzz(schemathesis.openapi.from_asgi("/openapi.json", app))
    finally:
        shutdown_lifespans()  # schemathesis keeps the app (and its heartbeat) alive until exit otherwise


def _fuzz(schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12  # + alerts/test, DELETE positions/{symbol}, auth/token, auth/notifier
    seen: dict[str, set[int]] = {}

    for operation in operations:
        strategy = st.one_of(operation.as_strategy(), operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        @given(case=strategy)
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call()
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance, status_code_conformance]
            )

        run()

    assert set(seen) == {op.label for op in operations}
    assert all(code < 500 for codes in seen.values() for code in codes), seen
