"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), l_inf, score-based.

Needs only the model's logits, never a gradient, so gradient masking cannot fool it. Written from the
paper's description:

* start from vertical stripes: each column of each channel moves by ``+eps`` or ``-eps``;
* each query changes one random square window of side ``s`` (``s^2 ~ p * H * W`` pixels) to a new
  random corner of the eps-ball (one sign per channel over the window), and keeps the change only if
  the margin ``z_y - max_{j != y} z_j`` goes down;
* ``p`` starts at ``p_init`` and halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
  queries (the schedule is written for 10,000 queries and rescaled to ``n_queries``);
* a sample stops as soon as it is misclassified.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register
from .base import Attack
from .losses import margin

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, n_queries: int) -> float:
    """Fraction of pixels the window covers at ``query`` (the paper's piecewise-constant schedule)."""
    scaled = int(query / n_queries * 10000)
    halvings = sum(scaled > t for t in _P_HALVINGS)
    return p_init / 2**halvings


@register("attack", "square")
class Square(Attack):
    """Square Attack, l_inf, untargeted, margin loss; all forward passes run under ``torch.no_grad``.

    Options: ``eps``, ``n_queries`` (model queries per sample and restart, default 5000), ``p_init``
    (initial window fraction, 0.8 as in AutoAttack), ``restarts``, ``seed``.
    """

    threat = "score-based"

    def __init__(
        self,
        eps: float | str = 8 / 255,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=restarts, loss="cw", grad_mode=None, seed=seed)
        if int(n_queries) < 1:
            raise ValueError(f"n_queries must be >= 1, got {n_queries!r}")
        if not 0 < float(p_init) <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)

    @torch.no_grad()
    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        x_best = (x + eps * self._signs((n, c, 1, w), x, generator)).clamp(0, 1)
        # The quantity to push below 0: z_y - max_{j != y} z_j.
        m_best = -margin(model(x_best), y)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        for query in range(1, self.n_queries):
            active = (m_best > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            k = active.numel()
            xa, ba = x[active], x_best[active]
            p = square_fraction(self.p_init, query, self.n_queries)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1) if min(h, w) > 1 else 1
            top = torch.randint(0, h - side + 1, (k, 1, 1), generator=generator, device=x.device)
            left = torch.randint(0, w - side + 1, (k, 1, 1), generator=generator, device=x.device)
            window = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).unsqueeze(1)
            delta = ba - xa
            new_delta = torch.where(window, eps * self._signs((k, c, 1, 1), x, generator), delta)
            # Redraw windows whose new signs equal the current ones (a wasted query), a few times.
            for _ in range(8):
                candidate = (xa + new_delta).clamp(0, 1)
                same = ((candidate - ba).abs() * window).flatten(1).amax(1) < 1e-7
                if not same.any():
                    break
                redraw = eps * self._signs((k, c, 1, 1), x, generator)
                new_delta = torch.where(window & same.view(k, 1, 1, 1), redraw, new_delta)
            candidate = (xa + new_delta).clamp(0, 1)
            m_new = -margin(model(candidate), y[active])
            better = m_new < m_best[active]
            x_best[active[better]] = candidate[better]
            m_best[active[better]] = m_new[better]
        return x_best
