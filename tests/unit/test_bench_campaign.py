"""The campaign workload's pure parts: its size, its segment filter (valid
in the customers service's filter language, and matching what it should),
and the peak memory it reads from /proc."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from bench.workloads.loyalty_campaign import (
    DEFAULT_MEMBERS,
    RUN_DEFAULT_EVENTS,
    members_for,
    peak_rss_mib,
    segment_filter,
)
from services.customers import segments


def test_the_runs_default_size_means_the_workloads_default() -> None:
    assert members_for(RUN_DEFAULT_EVENTS) == DEFAULT_MEMBERS
    assert members_for(1_000_000) == 1_000_000
    assert members_for(2_000) == 2_000


def test_the_filter_is_the_band_and_the_discounts_consent() -> None:
    node = segment_filter("bench-large")
    segments.validate(node)
    now = datetime.now(UTC)

    def customer(band: str, consent: bool) -> dict[str, object]:
        return {"profile.socio_economic_band": band, "consent.promotional_offers": consent}

    assert segments.matches(node, customer("bench-large", True), now)
    assert not segments.matches(node, customer("bench-small", True), now)
    assert not segments.matches(node, customer("bench-large", False), now)


def test_peak_memory_is_read_from_proc() -> None:
    peak = peak_rss_mib(os.getpid())
    assert peak is not None and peak > 1
    assert peak_rss_mib(2**22 + 12345) is None  # no such process
