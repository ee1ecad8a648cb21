"""The OpenAPI schema says what the API does: a bounded schemathesis run over ``/openapi.json`` against
the app on a loopback server (fixed seed), valid and invalid requests for every operation. No answer
is a 5xx; every answer's status, content type, headers and body are the ones the schema documents; and
every request the schema rules out is refused with a 4xx."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis import checks as common_checks
from schemathesis.specs.openapi import checks as openapi_checks

from agent.llm import ModelReply
from tests.test_api_limits import Served

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation and mode: ~1,500 requests, well under a minute on two cores
CHECKS = [
    common_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,  # what the schema rules out gets a 4xx
]



class Noted:
    """A model that answers every chat with one word (so ``/chat`` answers instead of a 503)."""

    name = "noted"

    def complete(self, messages, tools, timeout_s) -> ModelReply:
        return ModelReply(content="noted", prompt_tokens=1, completion_tokens=1)


@pytest.fixture
def schema_api(make_api):
    api = make_api(model=Noted())
    api.submit_ok()  # something for the ids to find
    with Served(api.http.app) as served:
        yield api, f"http://127.0.0.1:{served.port}"


def test_the_schema_documents_errors_as_they_are_sent(api):
    schema = api.http.get("/openapi.json").json()
    answer = schema["components"]["schemas"]["ErrorAnswer"]
    assert answer["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code in ("422", "4XX", "503"):
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorAnswer", (method, path, code)
    submit = schema["components"]["schemas"]["SubmitBody"]["properties"]
    assert (submit["gpu_count"]["minimum"], submit["gpu_count"]["maximum"]) == (1, 4096)
    assert (submit["priority"]["minimum"], submit["priority"]["maximum"]) == (1, 10)
    priority = schema["components"]["schemas"]["PriorityRequest"]["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (1, 10)


def test_a_bounded_schemathesis_run_finds_no_5xx_and_no_answer_the_schema_does_not_describe(schema_api):
    api, url = schema_api
    schema = schemathesis.openapi.from_dict(api.http.get("/openapi.json").json())
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(base_url=url)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # no invalid request exists for an operation without parameters
                pass
            except BaseException as exc:  # noqa: BLE001 - schemathesis reports a group of check failures
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    assert sum(statuses.values()) > 500
    assert not [code for code in statuses if code >= 500], statuses
