"""`fleettwin sim run` prints one extra table per feature a scenario uses, and none for a plain scenario."""

from rich.console import Console

from fleettwin.sim.report import feature_tables


def _render(tables) -> str:
    console = Console(record=True, width=200)
    for t in tables:
        console.print(t)
    return console.export_text()


def _lat(p95: float) -> dict:
    return {"p50": p95 / 2, "p95": p95, "p99": p95}


def test_plain_scenario_has_no_feature_tables():
    assert feature_tables({"pools": [], "cost": {}}) == []


def test_each_feature_gets_its_table_with_its_numbers():
    tier = {"gpus_mean": 4.0, "gpu_hours": 2.0, "busy_fraction": 0.5, "cost_usd": 5.5}
    summary = {
        "gpu_util": 0.625,
        "tiers": {"inference": tier, "training": tier, "operational": {**tier, "cost_usd": 1.25}},
        "regions": {
            "router": "content_aware",
            "cross_region_frac": 0.25,
            "rtt_mean_ms": 40.0,
            "prefix_cache": {"prefix_cache_hit_rate": 0.5},
            "per_region": [
                {
                    "name": "eu-west-1",
                    "gpus_mean": 2.0,
                    "origin_requests": 10,
                    "served_requests": 12,
                    "served_from_elsewhere": 3,
                    "e2e_p50_s": 1.0,
                    "e2e_p95_s": 3.0,
                }
            ],
        },
        "retrieval": {
            "router": "routed",
            "queries": 7,
            "p50_s": 0.002,
            "p95_s": 0.009,
            "recall_at_10": 0.9,
            "stores_queried_mean": 1.5,
        },
        "tenants": {
            "A": {
                "requests": {"completed": 3, "total": 4},
                "rejected_by_quota": 1,
                "rejected_by_gateway": 0,
                "latency_s": {"ttft": _lat(0.4), "e2e": _lat(6.0)},
                "slo": {"attainment": 0.75},
            }
        },
    }
    text = _render(tables := feature_tables(summary))
    assert len(tables) == 4
    for expected in (
        "GPU utilisation 62.5 %",
        "1.25",
        "content_aware",
        "25.0 % served in another",
        "hits 50.0 %",
        "eu-west-1",
        "10 / 12",
        "2.00 / 9.00",
        "0.900",
        "3 / 4",
        "1 / 0",
        "75.0 %",
    ):
        assert expected in text, expected
