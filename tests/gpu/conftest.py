"""The checks that need CUDA GPUs: ``python -m pytest tests/gpu -rs`` on a GPU machine.

Every test here carries the ``gpu`` marker. Without CUDA each is reported as skipped with the reason, so the CPU test
run (``bash .ci/run``) collects them and stays green.
"""
import os

import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _why_not():
    if not torch.cuda.is_available():
        return f"needs CUDA: torch {torch.__version__} sees no CUDA device here"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not()
    for item in items:
        if not str(item.path).startswith(_HERE + os.sep):
            continue
        item.add_marker(pytest.mark.gpu)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
