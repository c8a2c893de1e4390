"""One training or operational job: elastic GPUs, progress, checkpoints, and what a preemption costs.

All arithmetic is in closed form over the job's current *run* (the stretch since it last started on a set of
GPUs), so the state can be read at any time without events:

- a run starts at ``run_start_s`` with ``gpus`` GPUs and first spends ``restore_s`` loading its checkpoint (or
  inputs): GPUs held, nothing computed;
- then it computes at ``rate(g) = min_gpus * (g / min_gpus) ** scaling`` work units (GPU-seconds at the
  reference size, linear up to ``min_gpus``) per second, and checkpoints every ``checkpoint_s`` seconds of
  compute: the checkpoint at ``compute_start + k * checkpoint_s`` saves the work done by then;
- stopping the run (a preemption, or a resize, which restarts it) keeps only the last checkpoint's work: the
  progress since then is lost, and the next run pays ``restore_s`` again.

Hand-checked in ``tests/sim/test_jobs.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleettwin.models.snapshot import Job, JobTier


@dataclass(slots=True)
class Run:
    """One closed or open run of a job, kept so results can be read at any time (e.g. the end of the run,
    when the simulation has gone a little further)."""

    start_s: float
    gpus: int
    base_gpu_s: float  # work done when it started
    end_s: float | None = None
    saved_gpu_s: float = 0.0  # work kept when it ended (= done, when it finished the job)


@dataclass(eq=False)
class SimJob:
    id: str
    pool: str
    tier: JobTier
    min_gpus: int
    max_gpus: int
    work_gpu_s: float
    submitted_s: float
    checkpoint_s: float
    restore_s: float
    deadline_s: float | None = None
    scaling: float = 1.0
    priority: int = 0
    stream: str = ""
    # ---- state ---------------------------------------------------------------------------------------
    gpus: int = 0  # GPUs of the current run; 0 while queued
    run_start_s: float | None = None
    run_base_gpu_s: float = 0.0  # work done when the current run started (= the checkpoint it resumed from)
    started_s: float | None = None  # first start
    finished_s: float | None = None
    lost_work_gpu_s: float = 0.0  # work units thrown away by preemptions
    preemptions: int = 0
    wake_token: int = 0  # only the wake-up scheduled last is acted on
    wake_at: float | None = None
    runs: list[Run] = field(default_factory=list)

    # ---- rates and times -----------------------------------------------------------------------------
    def rate(self, gpus: int | None = None) -> float:
        """Work units per second on ``gpus`` GPUs (default the current run's)."""
        g = self.gpus if gpus is None else gpus
        if g <= 0:
            return 0.0
        return self.min_gpus * (g / self.min_gpus) ** self.scaling

    @property
    def running(self) -> bool:
        return self.run_start_s is not None

    @property
    def done(self) -> bool:
        return self.finished_s is not None

    @property
    def compute_start_s(self) -> float:
        assert self.run_start_s is not None
        return self.run_start_s + self.restore_s

    def finish_time(self) -> float:
        """When the current run completes the job."""
        return self.compute_start_s + (self.work_gpu_s - self.run_base_gpu_s) / self.rate()

    def _computed_s(self, now: float) -> float:
        """Seconds of compute in the current run by ``now``."""
        return max(0.0, min(now, self.finish_time()) - self.compute_start_s)

    def done_gpu_s(self, now: float) -> float:
        """Work done by ``now`` (saved or not)."""
        if not self.running:
            return self.work_gpu_s if self.done else self.run_base_gpu_s
        return min(self.work_gpu_s, self.run_base_gpu_s + self.rate() * self._computed_s(now))

    def last_checkpoint_s(self, now: float) -> float | None:
        """Time of the last checkpoint of the current run; the run's compute start while there is none yet (a
        run resumes from a checkpoint, so nothing before that can be lost)."""
        if not self.running:
            return None
        computed = self._computed_s(now)
        return self.compute_start_s + math.floor(computed / self.checkpoint_s + 1e-12) * self.checkpoint_s

    def saved_gpu_s(self, now: float) -> float:
        """Work kept by the last checkpoint (what a restart resumes from)."""
        if not self.running:
            return self.done_gpu_s(now)
        ckpt = self.last_checkpoint_s(now)
        assert ckpt is not None
        return self.run_base_gpu_s + self.rate() * max(0.0, ckpt - self.compute_start_s)

    def remaining_gpu_s(self, now: float) -> float:
        return max(0.0, self.work_gpu_s - self.done_gpu_s(now))

    def next_checkpoint_s(self, now: float) -> float:
        """The first checkpoint of the current run strictly after ``now`` (may lie after the finish)."""
        ckpt = self.last_checkpoint_s(now)
        assert ckpt is not None
        return max(ckpt + self.checkpoint_s, self.compute_start_s + self.checkpoint_s)

    # ---- transitions ---------------------------------------------------------------------------------
    def start(self, now: float, gpus: int) -> None:
        assert not self.running and not self.done and self.min_gpus <= gpus <= self.max_gpus, (self.id, gpus)
        self.gpus, self.run_start_s = gpus, now
        if self.started_s is None:
            self.started_s = now
        self.wake_token += 1
        self.runs.append(Run(start_s=now, gpus=gpus, base_gpu_s=self.run_base_gpu_s))

    def stop(self, now: float) -> float:
        """End the current run at ``now`` (preempted or resized): keep the last checkpoint, count the loss.
        Returns the work units lost."""
        assert self.running and self.run_start_s is not None
        saved = self.saved_gpu_s(now)
        lost = self.done_gpu_s(now) - saved
        self.lost_work_gpu_s += lost
        self.runs[-1].end_s, self.runs[-1].saved_gpu_s = now, saved
        self.run_base_gpu_s = saved
        self.gpus, self.run_start_s, self.wake_at = 0, None, None
        self.preemptions += 1
        self.wake_token += 1
        return lost

    def finish(self, now: float) -> None:
        assert self.running
        self.runs[-1].end_s, self.runs[-1].saved_gpu_s = now, self.work_gpu_s
        self.run_base_gpu_s = self.work_gpu_s
        self.gpus, self.run_start_s, self.finished_s, self.wake_at = 0, None, now, None
        self.wake_token += 1

    # ---- results at a given time (from the runs) -----------------------------------------------------
    def at(self, t: float) -> dict[str, float]:
        """Work done, work lost, GPU-seconds computing and restoring, all as of time ``t``."""
        done = lost = busy = restoring = 0.0  # done: 0 until the first run starts
        for run in self.runs:
            if run.start_s >= t:
                break
            end = min(run.end_s if run.end_s is not None else t, t)
            rate = self.rate(run.gpus)
            compute0 = run.start_s + self.restore_s
            computed = max(0.0, end - compute0)
            restoring += run.gpus * (min(end, compute0) - run.start_s)
            busy += run.gpus * computed
            done = run.base_gpu_s + rate * computed
            if run.end_s is not None and run.end_s <= t:
                lost += done - run.saved_gpu_s
                done = run.saved_gpu_s
        return {"done": min(done, self.work_gpu_s), "lost": lost, "busy": busy, "restoring": restoring}

    # ---- outcomes ------------------------------------------------------------------------------------
    def missed(self, now: float) -> bool | None:
        """Whether the deadline was missed (``None``: no deadline, or it has not passed and the job runs
        on)."""
        if self.deadline_s is None:
            return None
        if self.done:
            assert self.finished_s is not None
            return self.finished_s > self.deadline_s + 1e-9
        return True if now > self.deadline_s else None

    def snapshot(self, now: float) -> Job:
        """The seam's view of this job."""
        return Job(
            id=self.id,
            pool=self.pool,
            tier=self.tier,
            state="running" if self.running else "queued",
            gpus=self.gpus,
            min_gpus=self.min_gpus,
            max_gpus=self.max_gpus,
            remaining_gpu_s=self.remaining_gpu_s(now),
            submitted_s=self.submitted_s,
            started_s=self.run_start_s if self.running else self.started_s,
            deadline_s=self.deadline_s,
            last_checkpoint_s=self.last_checkpoint_s(now),
            restore_s=self.restore_s,
            priority=self.priority,
        )
