"""Garbage-collection tuning of service processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from crm_runtime.service import tune_gc
from crm_runtime.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_the_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    older = gc.get_threshold()[1:]
    tune_gc(Settings().gc_gen0_threshold)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (20000, *older)


@pytest.mark.usefixtures("restored_gc")
def test_zero_keeps_pythons_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_GC_GEN0_THRESHOLD", "0")
    before = gc.get_threshold()
    tune_gc(Settings().gc_gen0_threshold)
    assert gc.get_threshold() == before


def test_a_negative_threshold_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_GC_GEN0_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="gc_gen0_threshold"):
        Settings()
