"""bench/soak.py's RSS figures: which sample is the warm-up, and the growth after it.

The soak itself runs on demand (bench/README.md); this checks only the arithmetic its verdict rests on. The bench
scripts import each other as top-level modules, so bench/ goes on sys.path for the import, as when they run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("soak")


MB = 1024  # kB

# (samples as (elapsed s, delivered, RSS kB), warm-up, expected figures)
CASES: list[tuple[list[tuple[float, int, int]], int, dict[str, Any]]] = [
    # the first sample at or past the warm-up is the base; the start-up peak before it does not count
    ([(5, 50, 120 * MB), (10, 100, 100 * MB), (15, 150, 108 * MB), (20, 200, 104 * MB)], 100,
     {"warmup_at_s": 10, "warmup_delivered": 100, "rss_warmup_mb": 100, "rss_peak_after_warmup_mb": 108,
      "rss_end_mb": 104, "growth_pct": 8.0}),
    # a warm-up between samples: the next sample
    ([(5, 90, 100 * MB), (10, 130, 80 * MB), (15, 170, 100 * MB)], 100,
     {"warmup_at_s": 10, "warmup_delivered": 130, "rss_warmup_mb": 80, "rss_peak_after_warmup_mb": 100,
      "rss_end_mb": 100, "growth_pct": 25.0}),
    # memory that only shrinks after warm-up grows by 0
    ([(5, 100, 100 * MB), (10, 200, 90 * MB)], 100,
     {"warmup_at_s": 5, "rss_warmup_mb": 100, "rss_peak_after_warmup_mb": 100, "rss_end_mb": 90,
      "growth_pct": 0.0}),
    # warm-up 0: the first sample
    ([(5, 0, 50 * MB), (10, 10, 55 * MB)], 0, {"warmup_at_s": 5, "rss_warmup_mb": 50, "growth_pct": 10.0}),
    # no sample reached the warm-up: no growth figure, the end still shown
    ([(5, 10, 100 * MB), (10, 20, 110 * MB)], 100,
     {"warmup_at_s": None, "rss_warmup_mb": None, "rss_peak_after_warmup_mb": None, "rss_end_mb": 110,
      "growth_pct": None}),
    # no samples at all (the pipeline died at once)
    ([], 100, {"warmup_at_s": None, "rss_end_mb": None, "growth_pct": None}),
]


@pytest.mark.parametrize(("samples", "warmup", "expected"), CASES)
def test_rss_figures_take_the_first_sample_past_warm_up_as_the_base(
        soak: ModuleType, samples: list[tuple[float, int, int]], warmup: int, expected: dict[str, Any]) -> None:
    figures = soak.rss_figures([soak.Sample(*sample) for sample in samples], warmup)
    assert {key: figures[key] for key in expected} == pytest.approx(expected)
