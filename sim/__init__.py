"""SimPy world: replicas, pools, metrics and the scenario runner."""
