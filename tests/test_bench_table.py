"""bench/versus_kannel.py's table: every row of issue 21 in its order, ratios as the
median of per-round ratios, the SMSC-latency row as a share of its bound, CPU kept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import versus_kannel


def run(rate: float, cpu: dict[str, float], *, complete: bool = True) -> dict[str, Any]:
    return {
        "rate": rate,
        "http_rate": rate,
        "accepted_rate": rate * 1.1,
        "complete": complete,
        "cpu_pct": cpu,
        "rss_mb": 70.0,
        "foreign_cpu_pct": 5.0,
    }


def three(rates: list[float], cpu: dict[str, float]) -> list[dict[str, Any]]:
    return [run(r, cpu) for r in rates]


def test_every_row_in_the_issue_order_with_per_round_ratios() -> None:
    kannel = {"bearerbox": 80.0, "smsbox": 10.0, "sink_self": 20.0}
    router = {"router": 60.0, "router.1": 30.0, "redis": 50.0, "sink_self": 5.0}
    runs = {
        "kannel-drain": three([20_000, 10_000, 30_000], kannel),
        "router-drain": three([10_000, 10_000, 10_000], router),
        "router-drain2": three([20_000, 20_000, 20_000], router),
        "kannel-live": three([10_000, 10_000, 10_000], kannel),
        "router-live": three([5_000, 15_000, 10_000], router),
        "router-http": three([5_000, 5_000, 5_000], router),
        "kannel-latency5": three([8_000, 8_000, 8_000], kannel),
        "router-latency5": three([10_000, 11_000, 12_000], router),
        "pump-w1": three([10_000, 10_000, 10_000], {"pump": 90.0}),
        "router-sync": three([2_000, 4_000, 3_000], router),
        "router-dlr": three([5_000, 5_000, 5_000], router),
    }
    runs["router-dlr"][1]["complete"] = False
    args = argparse.Namespace(concurrency=50, api_workers=None)
    table = {}
    for row in versus_kannel.rows_of(args):
        entry = versus_kannel.summarise(row, runs)
        assert entry is not None
        table[row.case] = entry
    assert list(table) == ["drain", "drain2", "live", "latency5", "sync", "dlr", "http"]
    # the median of the per-round ratios: drain 0.5, 1.0, 0.333 -> 0.5; live 0.5, 1.5, 1.0
    assert table["drain"]["ratio"] == 0.5
    assert table["drain2"]["ratio"] == 1.0
    assert table["live"]["ratio"] == 1.0
    assert table["latency5"]["router_of_bound_pct"] == 55.0  # 11,000 of 20,000
    assert table["dlr"]["ratio"] == 0.5  # against the router's own drain
    assert not table["dlr"]["complete"] and table["dlr"]["incomplete_runs"] == 1
    assert table["http"]["reference_rate"] == 11_000  # accepted rates on both sides
    assert table["http"]["e2e_ratio"] == 0.5
    # every router process summed; Redis and Kannel's processes kept; the sink's own not
    assert table["drain"]["router_cpu_pct"] == {"redis": 50.0, "router": 90.0}
    assert table["drain"]["reference_cpu_pct"] == {"bearerbox": 80.0, "smsbox": 10.0}
    text = versus_kannel.markdown(table)
    lines = text.splitlines()
    assert lines[0].startswith("| case | Kannel / reference | sms-router | ratio | goal |")
    assert len(lines) == 2 + 7
    assert "55 % of bound" in text and "1 run(s) incomplete" in text


def test_a_row_not_run_is_left_out() -> None:
    args = argparse.Namespace(concurrency=50, api_workers=None)
    rows = {row.case: row for row in versus_kannel.rows_of(args)}
    assert versus_kannel.summarise(rows["sync"], {"router-sync": [run(1.0, {})]}) is None
