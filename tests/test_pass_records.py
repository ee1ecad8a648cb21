"""The records a pass makes many of (its snapshot, decisions, proposed starts, reasons to wait, the
validator's verdict and each accepted start, its report) write their fields with a hand-written
``__init__``, in one go: it must take every field of the dataclass, in order, with the same defaults,
and leave the record frozen, comparable and hashable as the generated one would."""

import dataclasses
import inspect

import pytest

from policies.admission import Wait
from policies.snapshot import Decisions, Proposal, Snapshot
from policies.validator import Accepted, Verdict
from tools.models import Allocation, PendingReason
from tools.orchestrator import TickReport

ALLOCATION = Allocation(node="n1", gpus=(0,))
ACCEPTED = Accepted(Proposal(1, (("n1", 0),)), ALLOCATION)
# Each record's required fields, and another value for the first of them.
REQUIRED = {
    Snapshot: ({"now": 1.0, "nodes": (), "jobs": ()}, 2.0),
    TickReport: ({"time": 1.0, "duration_s": 0.0, "policy": "p"}, 2.0),
    Decisions: ({"starts": (), "waiting": {}}, (Proposal(2, ()),)),
    Proposal: ({"job_id": 1, "gpus": (("n1", 0),)}, 2),
    Wait: ({"reason": PendingReason.RESOURCES, "message": "m"}, PendingReason.PRIORITY),
    Accepted: ({"proposal": Proposal(1, (("n1", 0),)), "allocation": ALLOCATION}, Proposal(2, (("n1", 1),))),
    Verdict: ({"accepted": (), "rejected": ()}, (ACCEPTED,)),
}
HASHABLE = (Proposal, Wait, Accepted, Verdict)  # (the others hold mappings)
CLASSES = list(REQUIRED)


@pytest.mark.parametrize("cls", CLASSES)
def test_init_takes_every_field_in_order(cls):
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES)
def test_fields_as_given_or_their_defaults_and_factories_are_not_shared(cls):
    required, other_first = REQUIRED[cls]
    made, other = cls(**required), cls(**required)
    for f in dataclasses.fields(cls):
        value = getattr(made, f.name)
        if f.name in required:
            assert value is required[f.name]
        elif f.default_factory is not dataclasses.MISSING:
            assert value == f.default_factory() and value is not getattr(other, f.name)
        else:
            assert value == f.default
    assert list(made.__dict__) == [f.name for f in dataclasses.fields(cls)]
    first = next(iter(required))
    assert made == other and dataclasses.replace(made, **{first: other_first}) != made


@pytest.mark.parametrize("cls", CLASSES)
def test_still_frozen_and_hashable_alike(cls):
    required, _ = REQUIRED[cls]
    made = cls(**required)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(next(iter(required)), 3.0)
    if cls in HASHABLE:
        assert hash(made) == hash(cls(**required))
