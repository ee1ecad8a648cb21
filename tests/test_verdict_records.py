"""The validator's verdict and each accepted start write their fields with a hand-written ``__init__``:
it must take every field of the dataclass, in order, and leave it frozen and comparable as before."""

import dataclasses
import inspect

import pytest

from policies.snapshot import Proposal
from policies.validator import Accepted, Verdict
from tools.models import Allocation

ALLOCATION = Allocation(node="n1", gpus=(0,))
REQUIRED = {
    Accepted: {"proposal": Proposal(1, (("n1", 0),)), "allocation": ALLOCATION},
    Verdict: {"accepted": (), "rejected": ()},
}
OTHER = {"proposal": Proposal(2, (("n1", 1),)), "accepted": (Accepted(Proposal(1, (("n1", 0),)), ALLOCATION),)}
CLASSES = list(REQUIRED)


@pytest.mark.parametrize("cls", CLASSES)
def test_init_takes_every_field_in_order(cls):
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES)
def test_fields_as_given_equal_and_replaced_alike(cls):
    made, other = cls(**REQUIRED[cls]), cls(**REQUIRED[cls])
    assert all(getattr(made, name) is value for name, value in REQUIRED[cls].items())
    assert list(made.__dict__) == [f.name for f in dataclasses.fields(cls)]
    first = next(iter(REQUIRED[cls]))
    assert made == other and dataclasses.replace(made, **{first: OTHER[first]}) != made


@pytest.mark.parametrize("cls", CLASSES)
def test_still_frozen_and_hashable_alike(cls):
    made = cls(**REQUIRED[cls])
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(next(iter(REQUIRED[cls])), None)
    assert hash(made) == hash(cls(**REQUIRED[cls]))
