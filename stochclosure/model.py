"""``ClosureModel``: SDE + score operator + default sampler (+ target normalisation), one object.

A closure model draws closure terms ``U ~ p(U | y)`` on the condition's grid. The score operator
works in *normalised* units (per-channel ``(U - mean) / std``); :meth:`ClosureModel.sample` maps
samples back to physical units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._memory import check_allocation
from ._types import Conditioning, _map_tensors
from .closures.base import AbstractClosureLaw, NormalisedTarget
from .errors import (
    ConfigError,
    DeviceError,
    DTypeError,
    IncompatibleComponentsError,
    NonFiniteError,
    ShapeError,
    format_error,
)
from .registry import resolve
from .samplers.base import AbstractSampler, Callback, NoiseSource, check_steps
from .scores.base import bind_score
from .sdes.base import AbstractSDE
from .training.losses import dsm_loss

__all__ = ["ClosureModel"]


class ClosureModel(NormalisedTarget, AbstractClosureLaw):
    """A conditional generative model of a closure term (the diffusion closure law).

    As a :class:`~stochclosure.closures.AbstractClosureLaw` its latent is the sampler's
    standard-normal starting noise ``(C, *grid)``: :meth:`draw` starts the sampler at
    ``latent * prior_std`` (the prior std at the sampler's first time), so a deterministic
    sampler (probability-flow ODE, DPM-Solver++) makes the draw a function of ``(y, latent)``.

    Dtypes: the score network runs in the dtype of the model's parameters; a condition in
    another floating dtype (e.g. a float64 state with a float32 model) is cast to it for the
    score, and samples come back in the ``dtype`` asked of :meth:`sample` (default: ``x_init``'s
    dtype when given, else float32).

    Args:
        sde: Forward SDE (name, spec dict or instance).
        score: Score operator (name, spec dict or instance); ``forward(x, t, cond)``.
        sampler: Default sampler (name, spec dict or instance).
        channels: Channels of the closure term.
        target_mean: Per-channel mean used to normalise the target, ``(channels,)``.
        target_std: Per-channel std used to normalise the target, ``(channels,)``.

    Example:
        >>> import torch, stochclosure as sc
        >>> m = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0},
        ...                     {"type": "euler_maruyama", "steps": 20})
        >>> u = m.sample(sc.Conditioning(), n=4, grid=(8, 8), generator=torch.Generator().manual_seed(0))
        >>> tuple(u.shape)  # (n, batch, C, *grid); an empty condition counts as batch 1
        (4, 1, 1, 8, 8)
    """

    memory = "none"

    def __init__(self, sde: Any, score: Any, sampler: Any = "euler_maruyama", channels: int = 1,
                 target_mean: Tensor | None = None, target_std: Tensor | None = None) -> None:
        super().__init__()
        self.sde: AbstractSDE = resolve("sde", sde)
        self.score = resolve("score_operator", score)
        self.sampler: AbstractSampler = resolve("sampler", sampler)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(format_error("channels", "a positive integer", repr(channels)))
        self.channels = channels
        score_sde = getattr(self.score, "sde", None)
        if score_sde is not None and score_sde.spec() != self.sde.spec():
            raise IncompatibleComponentsError(
                f"the score operator was built for SDE {score_sde.spec()} but the model uses {self.sde.spec()}; "
                "fix: pass the same SDE to both")
        mean = torch.zeros(channels) if target_mean is None else torch.as_tensor(target_mean, dtype=torch.float32)
        std = torch.ones(channels) if target_std is None else torch.as_tensor(target_std, dtype=torch.float32)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ShapeError(format_error("target_mean/target_std", f"shape ({channels},)",
                                          f"{tuple(mean.shape)} and {tuple(std.shape)}"))
        _check_normalisation(mean, std)
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_std", std)
        self._probed_events: set[tuple[int, ...]] = set()

    def _resolve_sampler(self, sampler: Any) -> AbstractSampler:
        return self.sampler if sampler is None else resolve("sampler", sampler)

    # -- the closure-law interface -------------------------------------------------------------
    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, *grid)``: the sampler's starting noise of one element."""
        return (self.channels, *tuple(grid))

    @property
    def nfe_per_draw(self) -> float:
        """Score evaluations of one draw with the default sampler."""
        return float(self.sampler.nfe())

    def prior_std(self, sampler: Any = None, steps: int | None = None) -> float:
        """Std of the sampler's starting law at its first time (scales a standard-normal latent).

        Raises:
            IncompatibleComponentsError: a sampler without a time grid (the start cannot be set).
        """
        s = self._resolve_sampler(sampler)
        if not hasattr(s, "time_grid") or not hasattr(s, "data_std"):
            raise IncompatibleComponentsError(
                f"controlling the starting noise needs a grid sampler (with time_grid and data_std), got "
                f"{type(s).__name__}; fix: subclass stochclosure.samplers.GridSampler (or use a built-in "
                f"sampler), or drop seeds/frozen_seed/init_noise: in rollout/ensemble pass keyed=False (per-member "
                f"seeds), no deterministic= and no NoiseAR1 policy")
        t0 = float(s.time_grid(self.sde, s.steps if steps is None else steps)[0])
        return float(self.sde.prior_std(torch.full((1,), t0, dtype=torch.float64), s.data_std)[0])

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """One draw per element with the sampler started at ``latent * prior_std``.

        Args:
            cond: Condition, batch ``B``.
            latent: ``(B, C, *grid)`` standard normal (``None``: a fresh prior draw).
            grid: Spatial shape (default: the condition's grid).
            generator: Noise of a stochastic sampler's steps.

        Returns:
            ``(B, C, *grid)`` closures in physical units.
        """
        x_init = None if latent is None else latent * self.prior_std()
        dtype = torch.float32 if latent is None else latent.dtype
        return self.sample(cond, n=1, generator=generator, grid=grid, x_init=x_init, dtype=dtype)[0]


    @torch.no_grad()
    def sample(self, cond: Conditioning | None, n: int = 1, *, sampler: Any = None,
               steps: int | None = None, generator: torch.Generator | None = None, noise: NoiseSource | None = None,
               callback: Callback | None = None, grid: tuple[int, ...] | None = None,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               x_init: Tensor | None = None) -> Tensor:
        """Draw closure terms ``U ~ p(U | cond)`` in one batched solve.

        Args:
            cond: Condition with batch ``B`` (``None`` or empty for unconditional models).
            n: Samples per condition (the sample axis is always there, also for ``n = 1``).
            sampler: Override of the default sampler (name, spec or instance).
            steps: Override of the sampler's step count.
            generator: Seeds the draw; the same seed gives the same samples.
            noise: Noise source for stochastic samplers.
            callback: Called after every sampler step.
            grid: Spatial shape; defaults to the condition's grid.
            dtype: Sample dtype (default: the dtype of ``x_init`` when given, else float32).
            device: Sample device (defaults to the condition's).
            x_init: The sampler's starting point in normalised units, ``(n, B, C, *grid)`` (or
                flattened ``(n * B, C, *grid)``) instead of a prior draw; lets callers control
                (e.g. correlate in time) the initial noise. Must be finite.

        Returns:
            ``(n, B, C, *grid)``; ``B = 1`` for a condition without batched tensors.

        Raises:
            NonFiniteError: a non-finite ``x_init`` or target normalisation.
        """
        cond = Conditioning() if cond is None else cond
        check_steps(n, "n")
        if steps is not None:
            check_steps(steps)
        sizes = {v.shape[0] for v in (cond.fields, cond.history, cond.obs_values, cond.features) if v is not None}
        if 0 in sizes or len(sizes) > 1:
            cond.validate()  # raises, naming the empty tensor or the disagreeing batch sizes
        b = cond.batch_size or 1
        grid = tuple(grid) if grid is not None else cond.spatial_shape
        if grid is None:
            raise ShapeError(format_error("grid", "a spatial shape (the condition has no fields)", "None",
                                          "pass grid=(n, n)"))
        if device is None:
            for v in (cond.fields, cond.history, cond.obs_values, cond.features):
                if v is not None:
                    device = v.device
                    break
        own = self.target_mean.device
        if device is not None and torch.device(device) != own:
            raise DeviceError(format_error("cond", f"tensors on the model's device {own}", f"device {device}",
                                           f"move the condition with cond.to('{own}') or the model with "
                                           f"model.to('{device}')"))
        _check_normalisation(self.target_mean, self.target_std)
        if dtype is None:
            dtype = x_init.dtype if isinstance(x_init, Tensor) else torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DTypeError(format_error("dtype", "a floating dtype (torch.float32 or torch.float64)", repr(dtype),
                                          "pass dtype=torch.float32"))
        net_dtype = next((p.dtype for p in self.score.parameters() if p.is_floating_point()), None)
        cond = cond if net_dtype is None else _cast_floating(cond, net_dtype)
        k = n
        event = (self.channels, *grid)
        check_allocation("n", (k * b, *event), dtype, device, copies=2, value=n,
                         fix="draw fewer samples per call (several calls, or a smaller batch of conditions)")
        cond_rep = cond.index(torch.arange(k * b) % b) if cond.batch_size else cond
        # The condition is checked on every call (streamed measurements may carry a NaN); the score
        # operator is probed once per event shape (validate at composition, then trust).
        probe = event not in self._probed_events
        score_fn = bind_score(self.score, cond_rep if cond.batch_size else None, event_shape=event, batch=k * b,
                              probe=probe)
        self._probed_events.add(event)
        if net_dtype is not None and net_dtype != dtype:  # e.g. a float64 rollout with a float32 network
            score_fn = _in_dtype(score_fn, net_dtype)
        if x_init is not None:
            want = (k, b, *event)
            if tuple(x_init.shape) not in (want, (k * b, *event)):
                raise ShapeError(format_error("x_init", f"shape {want}", f"shape {tuple(x_init.shape)}"))
            if not bool(torch.isfinite(x_init).all()):
                raise NonFiniteError(format_error("x_init", "a finite starting point", "NaN or infinite values",
                                                  "check the latent / warm start it was built from"))
            x_init = x_init.reshape(k * b, *event)
        x = self._resolve_sampler(sampler).sample(score_fn, self.sde, (k * b, *event), steps=steps, generator=generator,
                                                  noise=noise, callback=callback, dtype=dtype, device=device,
                                                  x_init=x_init)
        u = self.denormalise(x)
        return u.reshape(k, b, *event)

    # -- checkpoints (stochclosure.checkpoint) ---------------------------------------------------
    # Checkpoint I/O is the layer above the model (it builds models), so these two conveniences
    # import it when called: the one deliberate upward call, which keeps the module graph acyclic.
    def save(self, path: Any, **kwargs: Any) -> Any:
        """Save to a checkpoint directory or ``.safetensors`` file (see :func:`stochclosure.checkpoint.save_model`)."""
        from .checkpoint import save_model

        return save_model(self, path, **kwargs)

    @classmethod
    def load(cls, path: Any, **kwargs: Any) -> ClosureModel:
        """Rebuild a model from a checkpoint (see :func:`stochclosure.checkpoint.load_model`)."""
        from .checkpoint import load_model

        return load_model(path, **kwargs)

    # -- training (stochclosure.training) -------------------------------------------------------------
    def loss(self, cond: Conditioning | None, u: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Denoising score matching loss of targets ``u`` ``(B, C, *grid)`` in physical units, a scalar.

        The same loss the :class:`~stochclosure.training.Trainer` minimises with its defaults: the
        score's own ``loss_weighting`` (else ``"sigma2"``), uniform times in the range the default
        sampler visits (see :func:`stochclosure.training.losses.dsm_loss`); every closure law has a
        ``loss(cond, u)``.
        """
        s = self.sampler
        t_min, t_max = getattr(s, "t_end", None), getattr(s, "t_start", None)
        t_range = (self.sde.eps if t_min is None else float(t_min), self.sde.T if t_max is None else float(t_max))
        c = None if cond is None or cond.is_empty() else cond
        return dsm_loss(self.score, self.sde, self.normalise(u), c, t_range=t_range,
                        weighting=getattr(self.score, "loss_weighting", "sigma2"), generator=generator)

def _check_normalisation(mean: Tensor, std: Tensor) -> None:
    if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()):
        raise NonFiniteError(format_error("target_mean/target_std", "finite normalisation statistics",
                                          f"mean {mean.tolist()}, std {std.tolist()}",
                                          "recompute them from the training targets"))
    if not bool((std > 0).all()):
        raise ConfigError(format_error("target_std", "positive values", str(std.tolist())))


def _cast_floating(cond: Conditioning, dtype: torch.dtype) -> Conditioning:
    """The condition with its floating tensors in ``dtype`` (the score network's) when they are wider."""
    got = {v.dtype for v in (cond.fields, cond.history, cond.obs_values, cond.features)
           if v is not None and v.is_floating_point()}
    # only a uniformly wider condition (float64 for a float32 network) is cast; mixed or half-precision
    # conditions are left to the condition's validation, which names them
    if len(got) != 1 or next(iter(got)).itemsize <= torch.empty((), dtype=dtype).element_size():
        return cond
    return _map_tensors(cond, lambda k, v: v if k == "obs_points" or not v.is_floating_point() else v.to(dtype))


def _in_dtype(score_fn: Any, dtype: torch.dtype) -> Any:
    """``score_fn`` evaluated in ``dtype`` (the network's), its output cast back to the input's dtype."""
    def fn(x: Tensor, t: Tensor) -> Tensor:
        return score_fn(x.to(dtype), t.to(dtype)).to(x.dtype)

    return fn
