"""The adapter for a plain nn.Module: a model with nothing to hook is refused up front."""

from __future__ import annotations

import pytest
from torch import nn

import causalmad as cm


def test_a_model_without_submodules_is_refused_with_one_clear_error():
    with pytest.raises(cm.InputError, match=r"Linear\) has no submodule to hook.*nn\.Sequential\(model\)"):
        cm.ModuleAdapter(nn.Linear(4, 2))
    with pytest.raises(cm.InputError, match="no submodule to hook"):
        cm.adapt(nn.Linear(4, 2))  # before any final_hook() IndexError


def test_an_empty_hooks_list_is_refused():
    with pytest.raises(cm.InputError, match="hooks is an empty list"):
        cm.ModuleAdapter(nn.Sequential(nn.Linear(4, 2)), hooks=[])


def test_a_single_layer_wrapped_in_a_sequential_adapts():
    adapter = cm.adapt(nn.Sequential(nn.Linear(4, 2)))
    assert adapter.final_hook() == "0" and [h.name for h in adapter.candidate_hooks()] == ["0"]
