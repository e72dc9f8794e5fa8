"""The accelerator simulated on the CPU follows CUDA's rules, and finds what CUDA found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis
from torch import nn

import causalmad as cm
from causalmad.simulated_device import DEVICE, OnDevice, simulated_device


def test_host_and_device_tensors_mix_only_where_cuda_lets_them():
    with simulated_device() as traffic:
        a = torch.arange(6.0).to(DEVICE)
        assert isinstance(a, OnDevice) and a.device == DEVICE
        assert traffic.to_device == 1
        with pytest.raises(RuntimeError, match="same device"):
            a + torch.ones(6)
        with pytest.raises(RuntimeError, match="same device"):
            torch.ones(6)[torch.as_tensor([0, 1], device=DEVICE)]  # device indices into a host tensor
        # a host scalar, host indices into a device tensor (a copy), a Python list as indices
        copies = traffic.to_device
        np.testing.assert_array_equal((a * torch.tensor(2.0)).cpu(), [0, 2, 4, 6, 8, 10])
        np.testing.assert_array_equal(a[torch.tensor([1, 3])].cpu(), [1, 3])
        np.testing.assert_array_equal(a[[4, 5]].cpu(), [4, 5])
        assert traffic.to_device == copies + 2  # the two index copies
        b = torch.zeros(3, device=DEVICE)
        b[[0, 2]] = torch.ones(2, device=DEVICE)
        b.add_(1)
        assert b.tolist() == [2.0, 1.0, 2.0] and float(b.sum()) == 5.0
        assert traffic.reads == 1 and traffic.to_host >= 3
        host = torch.zeros(3)
        host.copy_(b)  # a device-to-host copy into a host tensor stays on the host
        assert type(host) is torch.Tensor and host.tolist() == [2.0, 1.0, 2.0]
        assert torch.tensor([1, 2], device=DEVICE).device == DEVICE  # built on the host, copied over
        syncs = traffic.syncs
        assert syncs == traffic.to_device + traffic.to_host + traffic.reads
        with pytest.raises(RuntimeError, match="numpy"):
            a.numpy()
    assert (
        torch.tensor is not None and torch.tensor([1]).device.type == "cpu"
    )  # the builders are PyTorch's again
    # a kept device tensor stays checked after the block
    with pytest.raises(RuntimeError, match="same device"):
        a + torch.ones(6)


class HostReadoff(nn.Module):
    """The planted model's readoff as it was before a GPU run found it building its
    constant on the host (fixed in tests/conftest.py at 250c3b5)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = torch.arange(23, dtype=h.dtype)
        return -4.0 * (h[:, :1] + 5 * h[:, 2:3] - k) ** 2


def test_the_simulation_finds_the_host_tensor_a_gpu_found():
    def fit(model: nn.Module) -> cm.ScrubbingDetector:
        return cm.ScrubbingDetector(
            model, hypothesis=sum_hypothesis(), resamples=2, n_pairs=32, random_state=0
        ).fit(planted_data(200, 0, 0))

    def planted() -> nn.Module:
        model = PlantedSum()
        model.head = HostReadoff()
        return model

    fit(planted())  # fine on the CPU
    with simulated_device(), pytest.raises(RuntimeError, match="same device"):
        fit(planted().to(DEVICE))


def test_a_positions_function_reads_the_hosts_copy_of_the_inputs(tiny_bridge):
    """A site's positions function sees host rows, not device rows (each value it read
    from a device row would make the host wait)."""
    import copy

    from causalmad.interventions import Patch, capture, run_patched

    x = torch.randint(0, 12, (16, 11), generator=torch.Generator().manual_seed(0))
    site = cm.Site("blocks.0.hook_resid_pre", positions=lambda ex: [int(ex[0]) % 11])
    expected = capture(cm.adapt(tiny_bridge), x, [site])[0]
    with simulated_device() as traffic:
        adapter = cm.adapt(copy.deepcopy(tiny_bridge).to(DEVICE))
        traffic.clear()
        got = capture(adapter, x, [site])[0]
        run_patched(adapter, x, [Patch(site, got.to(DEVICE))])
    assert traffic.reads == 0
    torch.testing.assert_close(got, expected)
