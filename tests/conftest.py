"""Shared fixtures. Tests run offline and never change the working directory."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A `tiny` synthetic MicroLens dataset root, generated once per test session.

    Read-only by convention: a test that breaks files works on `tiny_copy` instead.
    """
    from mmembed.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(root, scale="tiny", seed=0, progress=False)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may modify or break."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for modules of tiny tensors: faster and steadier on a
    shared 2-core machine. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
