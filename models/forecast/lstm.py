"""A small LSTM forecaster (torch, CPU, deterministic under a seed), in the ``lstm`` extra.

Design, chosen so that a few seconds of CPU per fit are enough:

- Direct multi-horizon: one pass predicts all ``horizon`` buckets (no error feedback through recursion).
- Residual on a baseline: the network reads the last ``window`` buckets (log1p counts, standardised,
  with a gap flag and the phase of the day) *and* the seasonal-naive values for the target buckets, and
  outputs corrections to the seasonal-naive values (``anchor: season``) or to the last value
  (``anchor: last``). Its last layer starts at zero, so an untrained network *is* that baseline and
  training can only move it where the data says so.
- Quantiles from the model: heads for the mean (squared error) and p10/p50/p90 (pinball loss), then a
  split-conformal shift per step on the most recent ``val_fraction`` of windows, which the network never
  trains on (they also pick the epoch to keep).

torch is imported only inside ``fit``; creating ``lstm`` without torch installed is a clear error.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import numpy as np

from fleettwin.models.errors import FleettwinError
from fleettwin.models.forecast.base import FORECASTERS, Forecast, Forecaster, ForecasterParams
from fleettwin.models.forecast.series import fill_gaps

INSTALL_HINT = "install the lstm extra: pip install 'fleettwin[lstm]' torch==2.13.0"
LEVELS = (0.1, 0.5, 0.9)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@FORECASTERS.register("lstm")
class LSTMForecaster(Forecaster):
    """LSTM over a recent window plus seasonal-naive inputs; direct multi-step mean and quantile heads."""

    class Params(ForecasterParams):
        period: str | None = "1d"
        """Season whose naive values are inputs (null: the last value is the base)."""
        window: str = "6h"
        """Input sequence length."""
        horizon: str = "4h"
        """Buckets predicted in one pass; longer predictions recurse on the p50."""
        hidden: int = 32
        epochs: int = 30
        batch_size: int = 64
        lr: float = 3e-3
        val_fraction: float = 0.15
        seed: int = 0
        anchor: Literal["season", "last"] = "season"
        """What the network corrects: the seasonal-naive values, or the last value (series without a
        season)."""
        max_history: str | None = "14d"
        refit_every: str | None = "1d"

    def __init__(self, params: ForecasterParams | None = None, **deps: Any):
        if not torch_available():
            raise FleettwinError(f"forecaster 'lstm' needs torch, which is not installed; {INSTALL_HINT}")
        super().__init__(params, **deps)

    # ---- features ---------------------------------------------------------------------------------------
    def _scaled(self, y: np.ndarray) -> np.ndarray:
        return (np.log1p(y) - self.mu_) / self.sd_

    def _features(self, s: np.ndarray, gap: np.ndarray, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sequence features (N, window, 4) and static features (N, horizon + 1) for the given origins."""
        L, m = self.window_, self.period_
        steps = np.arange(-L + 1, 1)
        idx = origins[:, None] + steps[None, :]
        phase = 2 * np.pi * (idx + self.offset_) / (m or 1)
        seq = np.stack([s[idx], gap[idx], np.sin(phase) * bool(m), np.cos(phase) * bool(m)], axis=-1)
        return seq.astype(np.float32), self._base(s, origins).astype(np.float32)

    def _base(self, s: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Seasonal-naive values for the horizon (or the last value), plus the last value."""
        H, m = self.horizon_, self.period_
        j = np.arange(1, H + 1)
        if m:
            lag = np.ceil(j / m).astype(np.int64) * m
            base = s[origins[:, None] + j[None, :] - lag[None, :]]
        else:
            base = np.repeat(s[origins][:, None], H, axis=1)
        return np.hstack([base, s[origins][:, None]])

    # ---- fit ------------------------------------------------------------------------------------------
    def _fit(self, y: np.ndarray) -> None:
        import torch  # lazy: the lstm extra

        p = self.params
        self.window_, self.horizon_ = self.buckets(p.window), self.buckets(p.horizon)
        self.period_ = self.buckets(p.period) if p.period else 0
        first = max(self.window_, self.period_) - 1  # earliest origin with a full window and a season behind
        n_origins = len(y) - self.horizon_ - first
        if self.period_ and n_origins < 50:
            self.note(
                f"history of {len(y)} buckets is too short for seasonal LSTM inputs; using the last value"
            )
            self.period_, first = 0, self.window_ - 1
            n_origins = len(y) - self.horizon_ - first
        if n_origins < 50:
            self._use_fallback(
                y, f"history of {len(y)} buckets gives {max(n_origins, 0)} training windows (< 50)"
            )
            return
        observed = np.log1p(y[~np.isnan(y)])
        self.mu_, self.sd_ = float(observed.mean()), float(max(observed.std(), 1e-3))
        gap = np.isnan(y).astype(float)
        if gap.any():
            self.note(f"{int(gap.sum())} gap buckets: seasonal fill as inputs (flagged), masked as targets")
        s = self._scaled(fill_gaps(y, self.period_ or None))
        origins = np.arange(first, len(y) - self.horizon_)
        seq, base = self._features(s, gap, origins)
        tgt_idx = origins[:, None] + np.arange(1, self.horizon_ + 1)[None, :]
        target = np.where(gap[tgt_idx] > 0, np.nan, s[tgt_idx]).astype(np.float32)

        n_val = max(int(len(origins) * p.val_fraction), 10)
        n_train = len(origins) - n_val - self.horizon_  # train targets end before validation origins start
        if n_train < 30:
            self._use_fallback(y, f"only {max(n_train, 0)} LSTM training windows after the validation split")
            return
        torch.manual_seed(p.seed)
        torch.set_num_threads(1)
        self.net_ = _build_net(torch, self.horizon_, p.hidden, last_anchor=p.anchor == "last")
        tensors = [torch.from_numpy(a) for a in (seq, base, target)]
        train = [t[:n_train] for t in tensors]
        val = [t[-n_val:] for t in tensors]
        self._train(torch, train, val)
        self._calibrate(torch, val)

    def _train(self, torch: Any, train: list, val: list) -> None:
        p = self.params
        opt = torch.optim.Adam(self.net_.parameters(), lr=p.lr)
        gen = torch.Generator().manual_seed(p.seed)
        best, best_state = float("inf"), None
        n = len(train[0])
        for _ in range(p.epochs):
            self.net_.train()
            for batch in torch.randperm(n, generator=gen).split(p.batch_size):
                loss = _loss(torch, self.net_(train[0][batch], train[1][batch]), train[2][batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.net_.eval()
            with torch.no_grad():
                val_loss = float(_loss(torch, self.net_(val[0], val[1]), val[2]))
            if val_loss < best:
                best, best_state = val_loss, {k: v.clone() for k, v in self.net_.state_dict().items()}
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()

    def _calibrate(self, torch: Any, val: list) -> None:
        """Per-step conformal shifts so p10/p90 cover their level on held-out recent windows."""
        with torch.no_grad():
            out = self.net_(val[0], val[1]).numpy()
        target = val[2].numpy()
        self.shift_ = np.zeros((2, self.horizon_))
        for i, (k, level) in enumerate(((1, 0.1), (3, 0.9))):
            err = target - out[:, k, :]
            for j in range(self.horizon_):
                e = err[:, j][np.isfinite(err[:, j])]
                if e.size >= 10:
                    self.shift_[i, j] = np.quantile(e, level)
        # Robust (MAD) variance of the mean head's errors, for the log-normal mean: one outlier window
        # (an unmasked outage) must not inflate every later forecast's mean.
        resid = target - out[:, 0, :]
        mad = np.nanmedian(np.abs(resid - np.nanmedian(resid, axis=0)), axis=0)
        self.resid_var_ = np.nan_to_num((1.4826 * mad) ** 2, nan=0.0)

    # ---- predict --------------------------------------------------------------------------------------
    def _predict(self, h: int) -> Forecast:
        import torch

        y = self.y_
        gap = np.isnan(y).astype(float)
        s = self._scaled(fill_gaps(y, self.period_ or None))
        chunks = []
        while sum(c.shape[1] for c in chunks) < h:
            seq, base = self._features(s, gap, np.array([len(s) - 1]))
            with torch.no_grad():
                out = self.net_(torch.from_numpy(seq), torch.from_numpy(base)).numpy()[0]
            out[1] += self.shift_[0]
            out[3] += self.shift_[1]
            chunks.append(out)
            s = np.concatenate([s, out[2]])  # recurse on the median beyond the trained horizon
            gap = np.concatenate([gap, np.zeros(self.horizon_)])
        out = np.hstack(chunks)[:, :h]
        notes = (
            () if h <= self.horizon_ else (f"beyond {self.horizon_} buckets the LSTM recurses on its p50",)
        )
        back = lambda z: np.expm1(np.minimum(z * self.sd_ + self.mu_, 50.0))  # noqa: E731
        var = np.resize(self.resid_var_, h) * self.sd_**2
        mean = np.expm1(np.minimum(out[0] * self.sd_ + self.mu_ + var / 2, 50.0))
        return Forecast(
            mean=mean, p10=back(out[1]), p50=back(out[2]), p90=back(out[3]), model=self.alias, notes=notes
        )

    def _update(self, new: np.ndarray) -> None:
        """Keep the weights; the next prediction reads the new buckets in its input window."""


def _build_net(torch: Any, horizon: int, hidden: int, *, last_anchor: bool = False) -> Any:
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, hidden, batch_first=True)
            self.mlp = nn.Sequential(
                nn.Linear(hidden + horizon + 1, 64), nn.ReLU(), nn.Linear(64, 4 * horizon)
            )
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

        def forward(self, seq: Any, base: Any) -> Any:
            _, (h_n, _) = self.lstm(seq)
            d = self.mlp(torch.cat([h_n[-1], base], dim=1)).view(-1, 4, horizon)
            anchor = base[:, horizon:].expand(-1, horizon) if last_anchor else base[:, :horizon]
            p50 = anchor + d[:, 2]
            sp = nn.functional.softplus
            spread = 0.1  # softplus(0) * spread: the untrained band is about +-7% around seasonal naive
            return torch.stack(
                [anchor + d[:, 0], p50 - spread * sp(d[:, 1]), p50, p50 + spread * sp(d[:, 3])], 1
            )

    return Net()


def _loss(torch: Any, out: Any, target: Any) -> Any:
    """Squared error of the mean head plus pinball losses of the quantile heads, over observed targets."""
    ok = torch.isfinite(target)
    t = torch.where(ok, target, torch.zeros_like(target))
    w = ok.float()
    total = ((out[:, 0] - t) ** 2 * w).sum()
    for k, q in zip((1, 2, 3), LEVELS, strict=True):
        e = t - out[:, k]
        total = total + (torch.maximum(q * e, (q - 1) * e) * w).sum()
    return total / w.sum().clamp(min=1.0)
