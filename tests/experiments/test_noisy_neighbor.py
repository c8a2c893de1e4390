"""The noisy-neighbor experiment: its set-ups switch exactly the isolation they name, and (slow) a scaled-down
run writes the promised columns with the expected ordering of the quiet tenants' latency."""

from __future__ import annotations

import pytest

from fleettwin.experiments import noisy_neighbor as nn


def test_setups_switch_only_the_isolation_they_name():
    base = nn.load_base()
    by_label = {s.label: nn.setup_scenario(base, s, seed=3, scale=0.5) for s in nn.SETUPS}
    none, both = by_label["no isolation"], by_label["quotas + wfq"]
    assert (
        none.pools[0].engine.waiting_policy.name == "fcfs"
        and both.pools[0].engine.waiting_policy.name == "wfq"
    )
    assert all(m.quotas.model_dump(exclude_none=True) == {} for m in none.tenants.members)
    caps = by_label["wfq + slot caps"].tenants.members[0].quotas
    assert caps.gpu_share is not None and caps.requests_per_s is None
    assert both.tenants.gateway is not None and by_label["quotas + wfq, no gateway"].tenants.gateway is None
    assert none.seed == 3 and none.workload.params["components"][0]["params"]["duration_s"] == 600.0
    assert nn.burst_window(base, 0.5) == ("A", 150.0, 240.0)
    assert (
        base["workload"]["params"]["components"][0]["params"]["duration_s"] == 1200.0
    )  # the base is not changed


@pytest.mark.slow
def test_a_scaled_down_run_has_the_promised_columns_and_wfq_protects_the_quiet_tenants(tmp_path, monkeypatch):
    monkeypatch.setattr(nn, "QUICK_SCALE", 0.25)
    res = nn.run(tmp_path, quick=True)
    df = res.results
    for col in (
        "setup",
        "tenant",
        "p95_ttft_s",
        "p95_e2e_s",
        "slo_attainment",
        "rejected",
        "throughput_rps",
        "gpu_util",
    ):
        assert col in df.columns
    row = df.set_index(["setup", "tenant"])
    assert row.loc[("wfq only", "B"), "p95_ttft_s"] < row.loc[("no isolation", "B"), "p95_ttft_s"]
    assert (
        row.loc[("quotas only", "A"), "rejected_by_quota"]
        > 0
        == row.loc[("wfq only", "A"), "rejected_by_quota"]
    )
    assert row.loc[("quotas only", "all"), "gpu_util"] < row.loc[("wfq only", "all"), "gpu_util"]
    assert "## Against the seed paper" in res.report_md
