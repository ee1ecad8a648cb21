"""A pass's snapshot and report write their fields with a hand-written ``__init__``: it must take every
field of the dataclass, in order, with the same defaults."""

import dataclasses
import inspect

import pytest

from policies.snapshot import Snapshot
from tools.orchestrator import TickReport

REQUIRED = {
    Snapshot: {"now": 1.0, "nodes": (), "jobs": ()},
    TickReport: {"time": 1.0, "duration_s": 0.0, "policy": "p"},
}


@pytest.mark.parametrize("cls", [Snapshot, TickReport])
def test_init_takes_every_field_in_order(cls):
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", [Snapshot, TickReport])
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
    assert made == other and dataclasses.replace(made, **{next(iter(REQUIRED[cls])): 2.0}) != made


@pytest.mark.parametrize("cls", [Snapshot, TickReport])
def test_still_frozen(cls):
    made = cls(**REQUIRED[cls])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(next(iter(REQUIRED[cls])), 3.0)
