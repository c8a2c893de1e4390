"""Policy-seam records that several test files build the same way."""

from __future__ import annotations

from fleettwin.models.snapshot import Job


def running_training_job(
    gpus: int, *, remaining_gpu_s: float, last_checkpoint_s: float, restore_s: float, max_gpus: int = 8
) -> Job:
    """Training job ``t1`` of pool ``train``, running on ``gpus`` GPUs (2 to ``max_gpus`` allowed) since t=0.

    What a test of lending or preemption varies is named; the rest is the same in all of them."""
    return Job(
        id="t1",
        pool="train",
        tier="training",
        state="running",
        gpus=gpus,
        min_gpus=2,
        max_gpus=max_gpus,
        remaining_gpu_s=remaining_gpu_s,
        started_s=0.0,
        last_checkpoint_s=last_checkpoint_s,
        restore_s=restore_s,
    )


def operational_job(
    min_gpus: int, max_gpus: int, *, remaining_gpu_s: float, deadline_s: float, restore_s: float = 0.0
) -> Job:
    """Operational job ``b1`` of pool ``ops``, queued, to finish ``remaining_gpu_s`` by ``deadline_s``."""
    return Job(
        id="b1",
        pool="ops",
        tier="operational",
        min_gpus=min_gpus,
        max_gpus=max_gpus,
        remaining_gpu_s=remaining_gpu_s,
        deadline_s=deadline_s,
        restore_s=restore_s,
    )
