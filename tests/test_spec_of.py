"""The door makes a submission's spec from its already validated request without validating every field
again (tools/door/jobs.py ``spec_of``); the spec must be the one full validation makes."""

import pytest
from pydantic import ValidationError

from tools.door.jobs import spec_of
from tools.models import IdempotencyKey, JobRequest, JobSpec

KEY = IdempotencyKey(scope="alice", key="k", fingerprint="f")


def _validated(request: JobRequest, owner: str, begin_at: float | None, key: IdempotencyKey | None) -> JobSpec:
    """What the door made before: the request's dump validated again with what the door adds."""
    given = request.model_dump(include=set(JobRequest.model_fields) - {"begin_at"})
    if request.interactive:
        given["max_retries"] = 0
    return JobSpec(user=owner, begin_at=begin_at, idempotency=key, **given)


@pytest.mark.parametrize("fields, begin_at, key", [
    ({}, None, None),
    ({"name": "n", "env": {"A": "1"}, "est_duration_s": 60, "time_limit_s": 120.0, "after": [1, 2],
      "after_any": [3], "preemptible": True, "cwd": "/tmp", "allow_idle": True}, None, None),
    ({"array": "0-3%2", "priority": 9, "notify": "off", "notify_on": ["end"], "max_retries": 4}, 50, KEY),
    ({"interactive": True, "max_retries": 3, "begin_at": "+1h"}, 3650.0, None),
    ({"name": None, "notify_on": None, "est_duration_s": None}, None, KEY),
])
def test_the_spec_is_the_one_full_validation_makes(fields, begin_at, key):
    request = JobRequest(command="python train.py", gpu_count=2, **fields)
    made, validated = spec_of(request, "alice", begin_at, key), _validated(request, "alice", begin_at, key)
    assert made == validated and made.model_dump() == validated.model_dump()
    assert list(made.__dict__) == list(validated.__dict__)  # the same order, so the same JSON
    assert made.model_dump_json() == validated.model_dump_json()
    assert made.model_fields_set == validated.model_fields_set
    assert all(type(made.__dict__[k]) is type(v) for k, v in validated.__dict__.items())
    assert JobSpec.model_validate(made.model_dump()) == made


def test_the_spec_has_its_own_env():
    request = JobRequest(command="true", gpu_count=1, env={"A": "1"})
    spec = spec_of(request, "alice", None, None)
    assert spec.env == {"A": "1"} and spec.env is not request.env


def test_a_request_that_says_more_gives_only_the_spec_s_fields():
    class Body(JobRequest):  # a REST body names the owner beside the request
        user: str | None = None

    spec = spec_of(Body(command="true", gpu_count=1, user="bob"), "alice", None, None)
    assert spec.user == "alice" and set(spec.__dict__) == set(JobSpec.model_fields)


@pytest.mark.parametrize("owner", ["", "a b", "alice\n", "x" * 65, "al/ice", "é"])
def test_a_bad_owner_is_refused_naming_user(owner):
    with pytest.raises(ValidationError) as refused:
        spec_of(JobRequest(command="true", gpu_count=1), owner, None, None)
    assert [e["loc"] for e in refused.value.errors()] == [("user",)]


@pytest.mark.parametrize("owner", ["a", "alice.b-c_d@lab", "x" * 64, "0"])
def test_every_name_full_validation_takes_is_taken(owner):
    request = JobRequest(command="true", gpu_count=1)
    assert spec_of(request, owner, None, None) == _validated(request, owner, None, None)
