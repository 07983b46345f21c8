import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests use tiny tensors; on a shared 2-core machine OpenMP threads spin against
    each other and make every small op milliseconds slower. One thread is faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
