import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("LAB_WORKERS", "1")  # `lab eval` in one process (test_distributed launches two itself)
if "LAB_CACHE" not in os.environ:  # the evaluation cache of one test session, never the user's
    import tempfile

    os.environ["LAB_CACHE"] = tempfile.mkdtemp(prefix="lab-test-cache-")

import torch  # noqa: E402

torch.set_num_threads(1)  # 2 threads were 10-100x slower on the shared 2-core CI machine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only on the lab's development machines)")
    return SHARED
