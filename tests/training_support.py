"""Shared pytest fixture for the training tests."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the module with one torch thread, then restore the previous setting.

    The fits here are small, so one thread is as fast as two on an idle machine, and on a machine
    whose cores are busy with other work, two OpenMP threads waiting on each other make every small
    torch op 10-100x slower (measured: ridge fit 0.9 s with one thread, 30 s with two).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
