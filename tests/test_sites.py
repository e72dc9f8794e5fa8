"""Sites: positions of any integer type are stored as Python ints; bad positions are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causalmad as cm


@pytest.mark.parametrize("positions", [(np.int64(1),), [np.int32(1)], np.int64(1), (1,), 1, torch.tensor(1)])
def test_integer_positions_of_any_type_are_stored_as_python_ints(positions):
    site = cm.Site("h", positions=positions)
    assert site.positions == (1,) and all(type(p) is int for p in site.positions)
    assert site.key == cm.Site("h", positions=(1,)).key == "h[pos 1]"


@pytest.mark.parametrize("positions", [(), (1.0,), (1, "2"), (np.float64(1),)])
def test_positions_that_are_not_integers_are_refused(positions):
    with pytest.raises(cm.SiteError, match="non-empty tuple of ints"):
        cm.Site("h", positions=positions)


def test_numpy_positions_index_like_python_ones():
    x = torch.zeros(2, 5)
    idx = cm.Site("h", positions=(np.int64(-1), np.int64(0))).position_index(x)
    assert idx.tolist() == [[4, 0], [4, 0]]
