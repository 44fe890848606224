"""bench/soak.py's RSS figures: the levels at warm-up and at the end, and the growth between them.

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
    # levels are medians over `warmup` events: from the first sample past it, and over the last ones
    ([(5, 50, 120 * MB), (10, 100, 100 * MB), (15, 150, 104 * MB), (20, 200, 108 * MB), (25, 300, 110 * MB),
      (30, 400, 109 * MB)], 100,
     {"warmup_at_s": 10, "warmup_delivered": 100, "rss_warmup_mb": 102, "rss_peak_after_warmup_mb": 110,
      "rss_end_mb": 109.5, "growth_pct": 109.5 * 100 / 102 - 100, "peak_growth_pct": 110 * 100 / 102 - 100}),
    # one sample in a dip is not the level: the median of its window is
    ([(5, 100, 226 * MB), (10, 130, 142 * MB), (15, 160, 230 * MB), (20, 300, 240 * MB), (25, 400, 241 * MB)], 100,
     {"warmup_at_s": 5, "rss_warmup_mb": 226, "rss_end_mb": 240.5, "growth_pct": 240.5 * 100 / 226 - 100}),
    # memory that only shrinks after warm-up has negative growth
    ([(5, 100, 100 * MB), (10, 300, 90 * MB)], 100,
     {"warmup_at_s": 5, "rss_warmup_mb": 100, "rss_peak_after_warmup_mb": 100, "rss_end_mb": 90,
      "growth_pct": -10.0, "peak_growth_pct": 0.0}),
    # warm-up 0: the first sample alone, and the last alone
    ([(5, 0, 50 * MB), (10, 10, 55 * MB)], 0, {"warmup_at_s": 5, "rss_warmup_mb": 50, "rss_end_mb": 55,
                                               "growth_pct": 10.0}),
    # no sample reached the warm-up: no figures
    ([(5, 10, 100 * MB), (10, 20, 110 * MB)], 100,
     {"warmup_at_s": None, "rss_warmup_mb": None, "rss_peak_after_warmup_mb": None, "rss_end_mb": None,
      "growth_pct": None}),
    # no samples at all (the pipeline died at once)
    ([], 100, {"warmup_at_s": None, "rss_end_mb": None, "growth_pct": None}),
]


@pytest.mark.parametrize(("samples", "warmup", "expected"), CASES)
def test_rss_levels_are_medians_from_warm_up_and_at_the_end(
        soak: ModuleType, samples: list[tuple[float, int, int]], warmup: int, expected: dict[str, Any]) -> None:
    figures = soak.rss_figures([soak.Sample(*sample) for sample in samples], warmup)
    assert {key: figures[key] for key in expected} == pytest.approx(expected)
