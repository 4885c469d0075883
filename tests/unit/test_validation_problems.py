"""errors.validation_problems: what every boundary says of a value pydantic refused."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from tether.errors import validation_problems


class Inner(BaseModel):
    count: int


class Outer(BaseModel):
    name: str
    inner: Inner


def _refused(value: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(value)
    return caught.value


def test_every_problem_is_named_by_its_dotted_field() -> None:
    problems = validation_problems(_refused({"inner": {"count": "many"}}))
    assert problems.split("; ") == [
        "name: Field required",
        "inner.count: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_a_problem_of_the_whole_value_is_named_as_the_caller_says() -> None:
    refused = _refused([1, 2])
    assert validation_problems(refused).startswith("<root>: ")
    assert validation_problems(refused, whole="(message)").startswith("(message): ")
