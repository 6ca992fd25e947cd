"""Fixtures of the precompute tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    # 2 shared cores: one intra-op thread avoids OpenMP spinning against the other test processes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
