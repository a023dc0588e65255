"""A stochclosure sampler that solves the reverse-time SDE (or probability-flow ODE) with torchsde."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torchsde
from torch import Tensor

from stochclosure._types import ScoreFn
from stochclosure.errors import ConfigError, ShapeError, format_error
from stochclosure.samplers.base import AbstractSampler, Callback, NoiseSource, StepInfo, check_steps, check_x_init
from stochclosure.sdes.base import AbstractSDE

from .brownian import MemberBrownian, member_entropies
from .sde import DiagonalReverseTimeSDE, ReverseTimeSDE

__all__ = ["TorchSDESampler", "MethodInfo", "METHODS"]


@dataclass(frozen=True)
class MethodInfo:
    """How a torchsde method is driven for the (additive-noise) reverse SDE.

    Attributes:
        sde_type: Calculus torchsde expects (identical dynamics: the noise is additive).
        module: Reverse-SDE class (``"diagonal"`` noise only where torchsde needs it).
        nfe_per_step: Score evaluations per fixed step (after the drift cache).
        nfe_init: Evaluations before the first step that the steps do not reuse.
        levy_area: Levy-area approximation the Brownian motion must provide.
        strong_order: Strong order for additive noise (torchsde's documentation).
    """

    sde_type: str
    module: type[ReverseTimeSDE]
    nfe_per_step: int
    nfe_init: int
    levy_area: str
    strong_order: float


METHODS: dict[str, MethodInfo] = {
    # Euler-Maruyama; strong order 1 for additive noise.
    "euler": MethodInfo("ito", ReverseTimeSDE, 1, 0, "none", 1.0),
    # Milstein: its correction g dg vanishes for additive noise, so it coincides with Euler.
    "milstein": MethodInfo("ito", ReverseTimeSDE, 1, 0, "none", 1.0),
    # Roessler's SRA1 (additive noise): three drift requests, two distinct states, per step.
    "srk": MethodInfo("ito", ReverseTimeSDE, 2, 0, "space-time", 1.5),
    # Stratonovich Heun and midpoint: two evaluations per step.
    "heun": MethodInfo("stratonovich", ReverseTimeSDE, 2, 0, "none", 1.0),
    "midpoint": MethodInfo("stratonovich", ReverseTimeSDE, 2, 0, "none", 1.0),
    # Reversible Heun: one evaluation per step plus one to start; needs diagonal noise (see the SDE class).
    "reversible_heun": MethodInfo("stratonovich", DiagonalReverseTimeSDE, 1, 1, "none", 1.0),
}


class TorchSDESampler(AbstractSampler):
    """Sample with ``torchsde.sdeint`` on the reverse-time SDE, flattened and in reversed time.

    Fields ``(batch, *event)`` become states ``(batch, prod(event))``; time runs as
    ``s = t_start - t`` from 0 to ``t_start - t_end`` on a uniform grid of ``steps`` steps
    (the core :class:`~stochclosure.samplers.EulerMaruyama` default grid), or adaptively.
    Each member's Brownian motion is its own seeded ``torchsde.BrownianInterval`` whose
    entropy depends only on the generator's draw and the member index, so members are
    reproducible and independent. Setting ``ode=True`` integrates the probability-flow ODE as
    a zero-noise SDE.

    ``callback`` receives one :class:`~stochclosure.samplers.StepInfo` per grid step once the
    solve is done (torchsde has no step hook); with ``adaptive=True`` it is called once, with
    the evaluations actually made.

    Args:
        method: One of ``euler``, ``milstein``, ``srk``, ``heun``, ``midpoint``, ``reversible_heun``.
        steps: Default number of fixed steps.
        t_start: Start time (default ``sde.T``); below ``T`` it is a truncated start.
        t_end: End time (default ``sde.eps``).
        denoise: Finish with Tweedie's denoising step (one more evaluation).
        data_std: Std of the data assumed by the starting law.
        ode: Integrate the probability-flow ODE (no noise).
        adaptive: Adaptive step size (error of one step vs two half steps, torchsde's controller).
        rtol: Relative tolerance of adaptive stepping.
        atol: Absolute tolerance of adaptive stepping.
        dt_min: Smallest adaptive step (in diffusion time).
        adjoint: Use ``torchsde.sdeint_adjoint`` so gradients with respect to ``x_init`` and the
            score's parameters cost O(1) memory in the number of steps.
        adjoint_method: Method of the backward solve (torchsde's default for the method if ``None``).
        per_member_noise: One Brownian interval per member (reproducible whatever the batch);
            ``False`` uses one interval for the batch (faster for thousands of members, the same
            samples only for the same batch size).
    """

    stochastic: ClassVar[bool] = True
    accepts_noise: ClassVar[bool] = False
    default_steps: ClassVar[int] = 1000

    def __init__(self, method: str = "euler", steps: int | None = None, t_start: float | None = None,
                 t_end: float | None = None, denoise: bool = True, data_std: float = 0.0, ode: bool = False,
                 adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3, dt_min: float = 1e-5,
                 adjoint: bool = False, adjoint_method: str | None = None, per_member_noise: bool = True) -> None:
        if method not in METHODS:
            raise ConfigError(format_error("method", f"one of {sorted(METHODS)}", repr(method)))
        self.steps = check_steps(self.default_steps if steps is None else steps)
        if t_start is not None and t_end is not None and not t_start > t_end:
            raise ConfigError(format_error("t_start", f"a time > t_end={t_end}", repr(t_start)))
        for name, val in (("rtol", rtol), ("atol", atol), ("dt_min", dt_min)):
            if not (isinstance(val, (int, float)) and val > 0):
                raise ConfigError(format_error(name, "a positive float", repr(val)))
        if adjoint and method == "srk":
            raise ConfigError(format_error("method", "a method other than 'srk' with adjoint=True",
                                           "'srk'", "torchsde's adjoint cannot run SRK; use 'euler' or 'midpoint'"))
        self.method, self.t_start, self.t_end = method, t_start, t_end
        self.denoise, self.data_std, self.ode = bool(denoise), float(data_std), bool(ode)
        self.adaptive, self.rtol, self.atol, self.dt_min = bool(adaptive), float(rtol), float(atol), float(dt_min)
        self.adjoint, self.adjoint_method, self.per_member_noise = bool(adjoint), adjoint_method, bool(per_member_noise)
        self.last_nfe = 0

    @classmethod
    def example(cls) -> TorchSDESampler:
        """Contract-test instance: 200 Euler steps, one Brownian interval for the (large) test batch."""
        return cls(steps=200, per_member_noise=False)

    @property
    def info(self) -> MethodInfo:
        """The :class:`MethodInfo` of the configured method."""
        return METHODS[self.method]

    def nfe(self, steps: int | None = None) -> int:
        if self.adaptive:
            raise ConfigError(format_error("adaptive", "fixed steps to predict the number of evaluations", "True",
                                           "read sampler.last_nfe after sampling instead"))
        n = self.steps if steps is None else check_steps(steps)
        return self.info.nfe_per_step * n + self.info.nfe_init + int(self.denoise)

    def _times(self, sde: AbstractSDE) -> tuple[float, float]:
        t0 = sde.T if self.t_start is None else self.t_start
        t1 = sde.eps if self.t_end is None else self.t_end
        if not (0 < t1 < t0 <= sde.T + 1e-12):
            raise ConfigError(format_error("t_start/t_end", f"0 < t_end < t_start <= T={sde.T}",
                                           f"t_start={t0}, t_end={t1}"))
        return float(t0), float(t1)

    def reverse_sde(self, score_fn: Any, sde: AbstractSDE, event_shape: tuple[int, ...],
                    cond: Any = None) -> ReverseTimeSDE:
        """The torchsde module this sampler integrates (public, e.g. to call ``torchsde.sdeint`` yourself)."""
        t0, _ = self._times(sde)
        return self.info.module(sde, score_fn, event_shape, cond, t_start=t0, ode=self.ode,
                                sde_type=self.info.sde_type)

    def _brownian(self, batch: int, state: int, span: float, steps: int, seed: int, like: Tensor
                  ) -> torchsde.BaseBrownian:
        dt = None if self.adaptive else span / steps
        if self.per_member_noise:
            return MemberBrownian(0.0, span, state, member_entropies(seed, batch), dtype=like.dtype,
                                  device=like.device, dt=dt, levy_area_approximation=self.info.levy_area)
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=(batch, state), dtype=like.dtype, device=like.device,
                                         entropy=seed, dt=dt, levy_area_approximation=self.info.levy_area)

    def sample(self, score_fn: ScoreFn, sde: AbstractSDE, shape: tuple[int, ...], *, steps: int | None = None,
               generator: torch.Generator | None = None, noise: NoiseSource | None = None,
               callback: Callback | None = None, x_init: Tensor | None = None, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
        if noise is not None:
            raise ConfigError(format_error("noise", "None (torchsde draws its own Brownian motion)",
                                           type(noise).__name__, "seed through generator=..."))
        n = self.steps if steps is None else check_steps(steps)
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or shape[0] < 1 or min(shape) < 1:
            raise ShapeError(format_error("shape", "(batch >= 1, *event) with positive sizes", repr(shape),
                                          "an ensemble needs at least one member"))
        t0, t1 = self._times(sde)
        # The Brownian seed is drawn first, so member i's noise does not depend on the batch size.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        if x_init is None:
            x = sde.prior_sample(shape, t=t0, data_std=self.data_std, generator=generator,
                                 dtype=torch.float32 if dtype is None else dtype, device=device)
        else:
            check_x_init(x_init, shape)
            x = x_init.to(dtype=x_init.dtype if dtype is None else dtype, device=device)  # dtype=None keeps its own
        batch, state, span = shape[0], math.prod(shape[1:]), t0 - t1
        rsde = self.reverse_sde(score_fn, sde, shape[1:])
        bm = self._brownian(batch, state, span, n, seed, x)
        y0 = x.reshape(batch, state)
        # Report every grid point when a callback wants them; otherwise only the end (no stack of states).
        if callback is not None and not self.adaptive:
            ss = torch.linspace(0.0, span, n + 1, dtype=torch.float64)
        else:
            ss = torch.tensor([0.0, span], dtype=torch.float64)
        # A hair above the grid spacing: torchsde clips the last step to ss[-1], so exactly n steps are taken.
        dt = span / n * (1.0 + 1e-9)
        common: dict[str, Any] = dict(bm=bm, method=self.method, dt=dt, adaptive=self.adaptive, rtol=self.rtol,
                                      atol=self.atol, dt_min=self.dt_min)
        if self.adjoint:
            ys = torchsde.sdeint_adjoint(rsde, y0, ss, adjoint_method=self.adjoint_method, **common)
        else:
            ys = torchsde.sdeint(rsde, y0, ss, **common)
        rsde.clear_cache()
        if callback is not None:
            if self.adaptive:
                callback(StepInfo(0, 1, t0, t1, ys[-1].reshape(shape), rsde.nfe))
            else:
                ts = (t0 - ss).tolist()
                for i in range(n):
                    nfe_i = self.info.nfe_init + self.info.nfe_per_step * (i + 1)
                    callback(StepInfo(i, n, ts[i], ts[i + 1], ys[i + 1].reshape(shape), nfe_i))
        x = ys[-1].reshape(shape)
        if self.denoise:
            t_last = torch.full((batch,), t1, dtype=x.dtype, device=x.device)
            x = sde.denoise(x, t_last, rsde.score(x, t_last))
        self.last_nfe = rsde.nfe
        return x
