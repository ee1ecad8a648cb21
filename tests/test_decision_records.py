"""A pass's decisions, its proposed starts and its reasons to wait write their fields with a hand-written
``__init__``: it must take every field of the dataclass, in order, with the same defaults."""

import dataclasses
import inspect

import pytest

from policies.admission import Wait
from policies.snapshot import Decisions, Proposal
from tools.models import PendingReason

REQUIRED = {
    Decisions: {"starts": (), "waiting": {}},
    Proposal: {"job_id": 1, "gpus": (("n1", 0),)},
    Wait: {"reason": PendingReason.RESOURCES, "message": "m"},
}
CLASSES = list(REQUIRED)


@pytest.mark.parametrize("cls", CLASSES)
def test_init_takes_every_field_in_order(cls):
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES)
def test_defaults_are_the_fields_defaults_and_factories_are_not_shared(cls):
    made, other = cls(**REQUIRED[cls]), cls(**REQUIRED[cls])
    for f in dataclasses.fields(cls):
        value = getattr(made, f.name)
        if f.name in REQUIRED[cls]:
            assert value == REQUIRED[cls][f.name]
        elif f.default_factory is not dataclasses.MISSING:
            assert value == f.default_factory() and value is not getattr(other, f.name)
        else:
            assert value == f.default
    first = next(iter(REQUIRED[cls]))
    changed = {"starts": (Proposal(2, ()),), "job_id": 2, "reason": PendingReason.PRIORITY}[first]
    assert made == other and dataclasses.replace(made, **{first: changed}) != made
    assert list(made.__dict__) == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES)
def test_still_frozen_and_hashable_alike(cls):
    made = cls(**REQUIRED[cls])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(next(iter(REQUIRED[cls])), 3.0)
    if cls is not Decisions:  # (its waiting reasons are a mapping)
        assert hash(made) == hash(cls(**REQUIRED[cls]))
