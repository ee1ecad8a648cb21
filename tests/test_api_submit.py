"""``POST /queue/submit`` takes a short way for a JSON body (no parameter resolution by FastAPI) and
FastAPI's way for anything else: both give the same answers, and every refusal is FastAPI's 422 naming
the field."""

from __future__ import annotations

import fastapi.routing
import pytest

FAST = {"Content-Type": "application/json"}
FASTAPIS = {"Content-Type": "application/json; charset=utf-8"}  # JSON too, but not the short way's


@pytest.fixture
def resolutions(monkeypatch) -> list[str]:
    """The paths of the requests FastAPI resolved the parameters of."""
    seen: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counting(*, request, **kw):
        seen.append(request.url.path)
        return await solve(request=request, **kw)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return seen


def post(api, body: str, headers: dict[str, str | bytes]):
    return api.http.post("/queue/submit", content=body.encode(), headers=headers)


BODY = '{"user": "alice", "command": "true", "gpu_count": 1, "priority": 7}'


def test_a_json_submission_takes_the_short_way_and_answers_as_fastapi_does(api, resolutions):
    fast = post(api, BODY, FAST)
    assert resolutions == []
    slow = post(api, BODY, FASTAPIS)
    assert resolutions == ["/queue/submit"]
    assert (fast.status_code, slow.status_code) == (201, 201)
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert fast.json() == {"job_id": 1, "status": "queued", "position": 1, "not_before": None}
    assert slow.json() == {**fast.json(), "job_id": 2, "position": 2}


def test_an_array_and_a_retry_answer_alike_both_ways(api, resolutions):
    array = '{"user": "alice", "command": "true", "gpu_count": 1, "array": "0-2"}'
    fast, slow = post(api, array, FAST).json(), post(api, array, FASTAPIS).json()
    assert (fast["tasks"], slow["tasks"]) == (3, 3) and (fast["array_id"], slow["array_id"]) == (1, 4)
    first = post(api, BODY, {**FAST, "Idempotency-Key": "k-1"})
    for headers in (FAST, FASTAPIS):
        again = post(api, BODY, {**headers, "Idempotency-Key": "k-1"})
        assert (again.status_code, again.json(), again.headers.get("idempotent-replayed")) == (
            201, first.json(), "true")
    assert "idempotent-replayed" not in first.headers


@pytest.mark.parametrize("body, headers, field", [
    ('{"user": "alice", "command": "true", "gpu_count": 0}', FAST, "gpu_count"),
    ('{"user": "alice", "command": "true", "gpu_count": 1, "colour": "red"}', FAST, "colour"),
    ('{"user": "alice", "gpu_count": 1}', FAST, "command"),
    ('{"user": "alice", "command": "true", "gpu_count": 1', FAST, "body"),
    (BODY, {**FAST, "Idempotency-Key": "caf\u00e9".encode()}, "Idempotency-Key"),
    (BODY, {**FAST, "Idempotency-Key": "k" * 256}, "Idempotency-Key"),
])
def test_every_refusal_is_fastapis_422_naming_the_field(api, body, headers, field):
    answer = post(api, body, headers)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"]
    assert answer.json()["errors"]  # pydantic's list too, as FastAPI answers it
    assert not any(api.service.store.count_by_status().values())  # and nothing was stored


def test_a_refusal_of_the_door_names_the_field_on_the_short_way(api, resolutions):
    answer = post(api, '{"user": "alice", "command": "true", "gpu_count": 1, "cwd": "relative/dir"}', FAST)
    assert answer.status_code == 422 and "cwd" in answer.json()["detail"]
    assert resolutions == []
