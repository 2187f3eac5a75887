"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_plan(monkeypatch):
    """Blocks of ~40 elements and waves of ~300: tensors are cut into many blocks, waves hold several tensors."""
    from descent.kernels import multi

    monkeypatch.setattr(multi, "BLOCK", 40)
    monkeypatch.setattr(multi, "WAVE", 300)
    multi.plan.cache_clear()
    yield
    multi.plan.cache_clear()
