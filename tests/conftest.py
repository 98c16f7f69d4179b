import matplotlib
import pytest
import torch

matplotlib.use("Agg")
# Test problems are tiny: intra-op threads only add synchronisation cost (badly so on a busy
# machine), and one thread makes in-process runs do the same arithmetic as one-thread dask workers.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (small matrices gain nothing from threads, and lose a lot on
    a shared machine); the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
