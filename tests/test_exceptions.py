import math

import numpy as np
import pytest

from m3rcr_xr.exceptions import (
    UsageError,
    check_integer,
    check_positive,
    command_line_names,
)


def test_check_integer_takes_integers_of_any_kind():
    assert check_integer("batch_size", 3) == 3
    value = check_integer("tile", np.int64(32))
    assert value == 32 and type(value) is int
    assert check_integer("overlap", 0, minimum=0) == 0
    assert check_integer("size", 16384, maximum=16384) == 16384


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "batch_size=0: must be an integer >= 1$"),
        (-1, "batch_size=-1: must be an integer >= 1$"),
        (True, "batch_size=True: must be an integer >= 1, not bool"),
        (2.0, "batch_size=2.0: must be an integer >= 1, not float"),
        ("2", "batch_size='2': must be an integer >= 1, not str"),
        (None, "batch_size=None: must be an integer >= 1, not NoneType"),
    ],
)
def test_check_integer_refuses(value, match):
    with pytest.raises(UsageError, match=match):
        check_integer("batch_size", value)


def test_check_integer_names_flags_on_the_command_line():
    with command_line_names(), pytest.raises(UsageError, match="^--size 0: .* from 1 to 8$"):
        check_integer("size", 0, maximum=8)


@pytest.mark.parametrize("value", [0, -1e-4, math.nan, math.inf, True, "1e-4", None])
def test_check_positive_refuses(value):
    with pytest.raises(UsageError, match="lr=.*: must be a finite number > 0"):
        check_positive("lr", value)


def test_check_positive_takes_numbers():
    assert check_positive("lr", 1e-4) == 1e-4
    assert check_positive("lr", np.float32(0.5)) == 0.5
    assert type(check_positive("lr", 2)) is float
