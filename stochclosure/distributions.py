"""Closure laws as pyro distributions.

:class:`ClosureDistribution` turns a :class:`~stochclosure.ClosureModel` and a
:class:`~stochclosure.Conditioning` into a pyro ``TorchDistribution`` whose batch shape comes from
the condition and whose event shape is the closure field ``(C, *grid)``. ``sample()`` runs the
model's sampler once for everything in ``sample_shape + batch_shape`` (one reverse-SDE solve).

Randomness, in order of precedence:

* ``frozen_seed``: every batch element gets the *same* noise from a generator seeded with it, so
  the draw is a deterministic function of the condition (the "deterministic closure").
* ``seeds`` (an integer tensor of ``batch_shape``): element ``j`` draws all its noise from its own
  generator seeded with ``seeds[j]``, so a member's draw does not depend on the batch it sits in
  (a 1-member run reproduces member ``j`` of a 64-member run).
* ``generator``: one generator for the whole batch.
* otherwise a generator seeded from torch's global RNG, so ``pyro.set_rng_seed`` and
  ``pyro.poutine.seed`` make draws reproducible.

``log_prob`` is intractable for a diffusion model and raises :class:`LikelihoodUnavailableError`
unless ``likelihood=ProbabilityFlowLikelihood(...)`` is given; that option integrates the
probability-flow ODE with an exact (autograd, one backward pass per event entry) or Hutchinson
trace of the velocity's Jacobian: exact in the limit of small ODE steps, slow, meant for small
events and for checking models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pyro.distributions as pdist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ._types import Conditioning, _map_tensors
from .errors import IncompatibleComponentsError, ShapeError, StochClosureError, format_error
from .samplers.base import GaussianNoise, NoiseSource
from .scores.base import bind_score

__all__ = [
    "ClosureDistribution",
    "ClosureLawDistribution",
    "KeyedNormal",
    "MemberSeed",
    "ProbabilityFlowLikelihood",
    "LikelihoodUnavailableError",
    "KeyedNoise",
    "SharedNoise",
    "derive_seed",
    "mix_seeds",
    "probability_flow_log_prob",
]

_SEED_MAX = 2**62


class LikelihoodUnavailableError(StochClosureError, NotImplementedError):
    """``log_prob`` of a diffusion closure was asked for without an exact-likelihood option."""


def derive_seed() -> int:
    """A seed drawn from torch's global RNG (so pyro's seeding controls it)."""
    return int(torch.randint(0, _SEED_MAX, (1,)).item())


def mix_seeds(seeds: Tensor, salt: int) -> Tensor:
    """Combine integer seeds with a salt into new, well-spread seeds (SplitMix64 finaliser).

    Args:
        seeds: Integer tensor of any shape.
        salt: An integer naming the use (a site, a step).

    Returns:
        ``int64`` tensor like ``seeds`` with values in ``[0, 2**62)``.
    """
    out = []
    mask = (1 << 64) - 1
    for s in seeds.reshape(-1).tolist():
        z = (int(s) + (salt + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % _SEED_MAX)
    return torch.tensor(out, dtype=torch.int64).reshape(seeds.shape)


def _generators(seeds: Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds.reshape(-1).tolist()]


class KeyedNoise(NoiseSource):
    """Gaussian noise where column ``j`` of a ``(k, N, *event)`` draw comes from generator ``j``.

    Draws are flattened member-major as :meth:`ClosureModel.sample` lays them out: row
    ``i * N + j`` is draw ``i`` of batch element ``j``.

    Args:
        generators: One generator per batch element (``N`` of them).
        k: Draws per element.
    """

    def __init__(self, generators: list[torch.Generator], k: int = 1) -> None:
        self.generators, self.k = generators, k

    def increment(self, t0: float, t1: float, like: Tensor) -> Tensor:
        return abs(t1 - t0) ** 0.5 * self.normal(like)

    def normal(self, like: Tensor) -> Tensor:
        n = len(self.generators)
        event = tuple(like.shape[1:])
        if like.shape[0] != self.k * n:
            raise ShapeError(format_error("like", f"{self.k * n} rows (k={self.k} x {n} generators)",
                                          f"{like.shape[0]} rows"))
        z = torch.stack([torch.randn((self.k, *event), generator=g, dtype=like.dtype) for g in self.generators], 1)
        return z.reshape(like.shape).to(like.device)


class SharedNoise(NoiseSource):
    """Gaussian noise shared by all ``N`` batch elements: ``(k, 1, *event)`` broadcast to ``(k, N, ...)``.

    Args:
        generator: Seeded generator.
        k: Draws per element.
    """

    def __init__(self, generator: torch.Generator, k: int = 1) -> None:
        self.generator, self.k = generator, k

    def increment(self, t0: float, t1: float, like: Tensor) -> Tensor:
        return abs(t1 - t0) ** 0.5 * self.normal(like)

    def normal(self, like: Tensor) -> Tensor:
        n = like.shape[0] // self.k
        z = torch.randn((self.k, 1, *like.shape[1:]), generator=self.generator, dtype=like.dtype)
        return z.expand(self.k, n, *like.shape[1:]).reshape(like.shape).to(like.device)


# -- exact likelihood -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProbabilityFlowLikelihood:
    """Options of the probability-flow ODE log-likelihood.

    ``log p_0(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt`` with ``v = f - g^2 score / 2``,
    integrated forward with the classical Runge–Kutta rule on a uniform grid; ``p_T`` is the
    sampler's starting law ``N(0, prior_std(T, data_std)^2 I)``. The terminal law ignores the
    data mean, so the result carries an error of order ``alpha_T |E x_0|`` (score units): small for
    normalised targets (``ClosureModel`` normalises per channel), ~1e-2 for a VP SDE and
    ``|E x_0| = 1``. The start at ``sde.eps`` instead of 0 adds an error of order
    ``sigma_eps^2 tr(C^-1)``.

    Attributes:
        steps: RK4 steps from ``sde.eps`` to ``sde.T``.
        trace: ``"exact"`` (one backward pass per event entry; slow, for small events) or
            ``"hutchinson"`` (Rademacher probes, unbiased).
        probes: Hutchinson probes per evaluation.
        data_std: Data std assumed by the terminal law (``0`` for VE/VP at ``T``).
        seed: Seed of the Hutchinson probes.
    """

    steps: int = 200
    trace: str = "exact"
    probes: int = 1
    data_std: float = 0.0
    seed: int = 0


def probability_flow_log_prob(score_fn: Any, sde: Any, x0: Tensor, options: ProbabilityFlowLikelihood
                              ) -> Tensor:
    """Log density of ``x0`` under the law of a score function, by the probability-flow ODE.

    Args:
        score_fn: ``score_fn(x, t)`` (differentiable in ``x``).
        sde: The forward SDE.
        x0: ``(batch, *event)`` points, in the score's units.
        options: Steps and trace estimator.

    Returns:
        ``(batch,)`` log densities (float64).
    """
    if options.trace not in ("exact", "hutchinson"):
        raise IncompatibleComponentsError(format_error("likelihood.trace", "'exact' or 'hutchinson'",
                                                       repr(options.trace)))
    x = x0.detach().double()
    b, d = x.shape[0], math.prod(x.shape[1:])
    gen = torch.Generator().manual_seed(options.seed)
    probes = None
    if options.trace == "hutchinson":
        probes = torch.randint(0, 2, (options.probes, *x.shape), generator=gen).double() * 2 - 1

    def rhs(xc: Tensor, t: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xr = xc.detach().requires_grad_(True)
            tb = torch.full((b,), t, dtype=xr.dtype)
            v = sde.probability_flow_drift(xr, tb, score_fn(xr, tb))
            if probes is None:
                flat = v.reshape(b, d)
                div = torch.zeros(b, dtype=xr.dtype)
                for i in range(d):
                    (g,) = torch.autograd.grad(flat[:, i].sum(), xr, retain_graph=i < d - 1)
                    div = div + g.reshape(b, d)[:, i]
            else:
                div = torch.zeros(b, dtype=xr.dtype)
                for j in range(options.probes):
                    (g,) = torch.autograd.grad(v, xr, probes[j], retain_graph=j < options.probes - 1)
                    div = div + (g * probes[j]).reshape(b, d).sum(1)
                div = div / options.probes
        return v.detach(), div.detach()

    ts = torch.linspace(float(sde.eps), float(sde.T), options.steps + 1, dtype=torch.float64).tolist()
    logdet = torch.zeros(b, dtype=torch.float64)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t1 - t0
        k1, d1 = rhs(x, t0)
        k2, d2 = rhs(x + 0.5 * h * k1, t0 + 0.5 * h)
        k3, d3 = rhs(x + 0.5 * h * k2, t0 + 0.5 * h)
        k4, d4 = rhs(x + h * k3, t1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        logdet = logdet + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    std = float(sde.prior_std(torch.full((1,), float(sde.T), dtype=torch.float64), options.data_std)[0])
    log_pt = -0.5 * (x.reshape(b, d) / std).pow(2).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
    return log_pt + logdet


# -- distributions ----------------------------------------------------------------------------------
class MemberSeed(pdist.TorchDistribution):
    """Uniform integer seeds in ``[0, 2**62)``, one per batch element (an ensemble member's key).

    Args:
        batch_shape: Shape of the seed tensor.
    """

    arg_constraints: dict[str, Any] = {}
    support = constraints.nonnegative_integer

    def __init__(self, batch_shape: tuple[int, ...] = (), validate_args: bool | None = None) -> None:
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MemberSeed:
        return MemberSeed(tuple(batch_shape))

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:
        return torch.randint(0, _SEED_MAX, tuple(sample_shape) + tuple(self.batch_shape), dtype=torch.int64)

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.full(value.shape, -math.log(_SEED_MAX), dtype=torch.float64)


class KeyedNormal(pdist.TorchDistribution):
    """Standard normal noise of ``event_shape`` per batch element, keyed by integer seeds.

    Element ``j`` is drawn from a generator seeded with ``mix_seeds(seeds, salt)[j]``, so it does
    not depend on the other elements; ``log_prob`` is the exact standard-normal density.

    Args:
        seeds: Integer tensor of ``batch_shape``.
        salt: Integer naming the use (e.g. a hash of the site name).
        event_shape: Shape of one draw.
    """

    arg_constraints: dict[str, Any] = {}

    def __init__(self, seeds: Tensor, salt: int, event_shape: tuple[int, ...],
                 validate_args: bool | None = None) -> None:
        self.seeds, self.salt = seeds, int(salt)
        super().__init__(seeds.shape, torch.Size(event_shape), validate_args=validate_args)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any, _instance: Any = None) -> KeyedNormal:
        return KeyedNormal(self.seeds.expand(tuple(batch_shape)), self.salt, tuple(self.event_shape))

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:
        k = math.prod(sample_shape)
        gens = _generators(mix_seeds(self.seeds, self.salt))
        z = torch.stack([torch.randn((k, *self.event_shape), generator=g) for g in gens], 1) if gens else \
            torch.zeros((k, 0, *self.event_shape))
        return z.reshape(tuple(sample_shape) + tuple(self.batch_shape) + tuple(self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        n = len(self.event_shape)
        lp = -0.5 * value**2 - 0.5 * math.log(2 * math.pi)
        return lp.sum(tuple(range(-n, 0))) if n else lp


class ClosureDistribution(pdist.TorchDistribution):
    """The law ``p(U | y)`` of a closure model as a pyro distribution.

    Args:
        model: A :class:`~stochclosure.ClosureModel`.
        cond: The condition; its batch size ``N`` must equal ``prod(batch_shape)`` (or be absent
            / 1 to broadcast).
        batch_shape: Batch shape (default ``(N,)``, or ``()`` for an unconditional model).
        grid: Spatial shape of the closure (default: the condition's grid; ``()`` for vector
            events ``(C,)``).
        sampler: Sampler override (name, spec or instance).
        steps: Sampler step override.
        generator: One generator for the whole batch.
        seeds: Integer tensor of ``batch_shape``: per-element noise streams.
        frozen_seed: Same noise for every element: a deterministic map ``y -> U``.
        average: Draws averaged per sample (``average=k`` with ``frozen_seed`` is the
            "mean of k draws" deterministic closure).
        init_noise: Standard-normal starting noise ``batch_shape + event_shape`` of the sampler
            (scaled by the sampler's prior std); used to correlate successive draws in time.
        warm_start: A previous closure ``batch_shape + event_shape`` in physical units: the
            sampler starts at its first time ``t0`` from ``alpha_t0 normalise(warm_start) +
            sigma_t0 z`` (the forward SDE's marginal around it) instead of a prior draw, i.e. an
            SDEdit-style refresh (Meng et al. 2022) of the previous sample. Pair it with a sampler
            whose ``t_start`` is small (see :class:`stochclosure.rollouts.WarmStart`).
        likelihood: :class:`ProbabilityFlowLikelihood` enabling :meth:`log_prob`.
        dtype: Sample dtype.
    """

    arg_constraints: dict[str, Any] = {}
    has_rsample = False

    def __init__(self, model: Any, cond: Conditioning | None = None, *, batch_shape: tuple[int, ...] | None = None,
                 grid: tuple[int, ...] | None = None, sampler: Any = None, steps: int | None = None,
                 generator: torch.Generator | None = None, seeds: Tensor | None = None,
                 frozen_seed: int | None = None, average: int = 1, init_noise: Tensor | None = None,
                 likelihood: ProbabilityFlowLikelihood | None = None, dtype: torch.dtype = torch.float32,
                 validate_args: bool | None = None, warm_start: Tensor | None = None) -> None:
        cond = Conditioning() if cond is None else cond
        n_cond = cond.batch_size
        if batch_shape is None:
            batch_shape = () if n_cond is None else (n_cond,)
        batch_shape = tuple(int(s) for s in batch_shape)
        n = math.prod(batch_shape)
        if n_cond not in (None, 1, n):
            raise ShapeError(format_error("cond", f"batch size {n} = prod(batch_shape={batch_shape}) (or 1)",
                                          f"batch size {n_cond}", "pass batch_shape matching the condition"))
        grid = cond.spatial_shape if grid is None else tuple(grid)
        if grid is None:
            raise ShapeError(format_error("grid", "a spatial shape (the condition has no fields)", "None",
                                          "pass grid=(n, n), or grid=() for vector events"))
        if isinstance(average, bool) or not isinstance(average, int) or average < 1:
            raise ShapeError(format_error("average", "a positive integer", repr(average)))
        event = (int(model.channels), *grid)
        if seeds is not None and tuple(seeds.shape) != batch_shape:
            raise ShapeError(format_error("seeds", f"shape {batch_shape} (the batch shape)", f"shape {tuple(seeds.shape)}"))
        if init_noise is not None and tuple(init_noise.shape) != batch_shape + event:
            raise ShapeError(format_error("init_noise", f"shape {batch_shape + event}",
                                          f"shape {tuple(init_noise.shape)}"))
        self.model, self.cond, self.grid = model, cond, grid
        self.sampler, self.steps, self.generator, self.seeds = sampler, steps, generator, seeds
        self.frozen_seed, self.average, self.init_noise = frozen_seed, average, init_noise
        if warm_start is not None and tuple(warm_start.shape) != batch_shape + event:
            raise ShapeError(format_error("warm_start", f"shape {batch_shape + event}",
                                          f"shape {tuple(warm_start.shape)}"))
        self.likelihood, self.dtype, self.warm_start = likelihood, dtype, warm_start
        super().__init__(torch.Size(batch_shape), torch.Size(event), validate_args=validate_args)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    def _kwargs(self) -> dict[str, Any]:
        return dict(grid=self.grid, sampler=self.sampler, steps=self.steps, generator=self.generator,
                    seeds=self.seeds, frozen_seed=self.frozen_seed, average=self.average, init_noise=self.init_noise,
                    likelihood=self.likelihood, dtype=self.dtype, warm_start=self.warm_start)

    def with_options(self, **changes: Any) -> ClosureDistribution:
        """A copy with some constructor options changed (e.g. the deterministic closure)."""
        kw = self._kwargs()
        kw.update(changes)
        return ClosureDistribution(self.model, self.cond, batch_shape=tuple(self.batch_shape), **kw)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ClosureDistribution:
        new = tuple(int(s) for s in batch_shape)
        if new == tuple(self.batch_shape):
            return self
        old = tuple(self.batch_shape)
        idx = torch.arange(max(math.prod(old), 1)).reshape(old).expand(new).reshape(-1)
        cond = self.cond.index(idx) if self.cond.batch_size not in (None, 1) else self.cond
        kw = self._kwargs()
        if self.seeds is not None:
            kw["seeds"] = self.seeds.expand(new)
        if self.init_noise is not None:
            kw["init_noise"] = self.init_noise.expand(new + tuple(self.event_shape))
        if self.warm_start is not None:
            kw["warm_start"] = self.warm_start.expand(new + tuple(self.event_shape))
        return ClosureDistribution(self.model, cond, batch_shape=new, **kw)

    # -- sampling ------------------------------------------------------------------------------------
    def _start_time(self) -> tuple[float, Any]:
        sampler = self.model._resolve_sampler(self.sampler)
        self.model.prior_std(sampler, self.steps)  # raises for a sampler without a time grid
        steps = sampler.steps if self.steps is None else self.steps
        return float(sampler.time_grid(self.model.sde, steps)[0]), sampler

    def _prior_std(self) -> float:
        return self.model.prior_std(self.sampler, self.steps)

    def _warm_init(self, z0: Tensor) -> Tensor:
        """``alpha_t0 normalise(warm_start) + sigma_t0 z0`` for ``z0`` ``(k, n_b, *event)``."""
        t0, _ = self._start_time()
        alpha, sigma = self.model.sde.marginal_coefficients(torch.full((1,), t0, dtype=torch.float64))
        event = tuple(self.event_shape)
        prev = self.model.normalise(self.warm_start.reshape(-1, *event).to(z0.dtype))
        return float(alpha[0]) * prev.reshape(1, -1, *event) + float(sigma[0]) * z0

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:
        """Draw ``sample_shape + batch_shape + event_shape`` closures in one sampler solve."""
        sample_shape = tuple(sample_shape)
        n_s = math.prod(sample_shape)
        k = n_s * self.average
        n_b = max(math.prod(tuple(self.batch_shape)), 1)
        event = tuple(self.event_shape)
        cond = self.cond
        if cond.batch_size == 1 and n_b > 1:
            cond = cond.expand_batch(n_b)
        rep = 1 if cond.batch_size else n_b  # an empty condition: draw the batch as extra samples
        kw: dict[str, Any] = dict(sampler=self.sampler, steps=self.steps, grid=self.grid, dtype=self.dtype)
        z0 = None
        if self.frozen_seed is not None:
            gen = torch.Generator().manual_seed(int(self.frozen_seed))
            z0 = torch.randn((k, 1, *event), generator=gen).expand(k, n_b, *event)
            kw["noise"] = SharedNoise(gen, k)
        elif self.seeds is not None:
            gens = _generators(self.seeds)
            z0 = torch.stack([torch.randn((k, *event), generator=g) for g in gens], 1)
            kw["noise"] = KeyedNoise(gens, k)
        else:
            gen = self.generator if self.generator is not None else torch.Generator().manual_seed(derive_seed())
            kw["generator"] = gen
            if self.init_noise is not None:
                kw["noise"] = GaussianNoise(gen)
        if self.init_noise is not None:
            if k != 1:
                raise ShapeError(format_error("sample_shape", "() with init_noise (one draw per element)",
                                              f"{sample_shape} x average={self.average}"))
            z0 = self.init_noise.reshape(1, n_b, *event)
        if self.warm_start is not None:
            if k != 1:
                raise ShapeError(format_error("sample_shape", "() with warm_start (one draw per element)",
                                              f"{sample_shape} x average={self.average}"))
            if z0 is None:
                z0 = torch.randn((1, n_b, *event), generator=kw["generator"])
                kw["noise"] = GaussianNoise(kw["generator"])
            x0 = self._warm_init(z0)
            kw["x_init"] = x0.reshape(k * rep if rep > 1 else k, n_b if rep == 1 else 1, *event)
        elif z0 is not None:
            kw["x_init"] = (z0 * self._prior_std()).reshape(k * rep if rep > 1 else k, n_b if rep == 1 else 1, *event)
        u = self.model.sample(cond if cond.batch_size else None, n=k * rep, **kw)
        u = u.reshape(k, n_b, *event)
        if self.average > 1:
            u = u.reshape(n_s, self.average, n_b, *event).mean(1)
        return u.reshape(sample_shape + tuple(self.batch_shape) + event)

    # -- likelihood ----------------------------------------------------------------------------------
    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log density via the probability-flow ODE (needs ``likelihood=``).

        Args:
            value: ``(*sample, *batch_shape, *event_shape)`` closures in physical units.

        Returns:
            ``(*sample, *batch_shape)`` float64 log densities.

        Raises:
            LikelihoodUnavailableError: without the ``likelihood`` option.
        """
        if self.likelihood is None:
            raise LikelihoodUnavailableError(format_error(
                "likelihood", "ProbabilityFlowLikelihood(...) to evaluate log_prob of a diffusion closure",
                "None (the density of a diffusion model is intractable in closed form)",
                "build the distribution with likelihood=ProbabilityFlowLikelihood(trace='exact') (slow, small "
                "events) or score samples with stochclosure.metrics instead"))
        event = tuple(self.event_shape)
        batch = tuple(self.batch_shape)
        ne = len(event)
        if tuple(value.shape[value.dim() - ne:]) != event:
            raise ShapeError(format_error("value", f"(..., {', '.join(map(str, event))})", f"shape {tuple(value.shape)}"))
        lead = tuple(value.shape[:value.dim() - ne])
        full = torch.broadcast_shapes(lead, batch)
        v = value.expand(full + event).reshape(-1, *event)
        n_b = max(math.prod(batch), 1)
        cond = self.cond
        if cond.batch_size:
            if cond.batch_size == 1 and n_b > 1:
                cond = cond.expand_batch(n_b)
            idx = torch.arange(n_b).reshape(batch).expand(full).reshape(-1)
            cond = cond.index(idx)
        m = self.model
        score_fn = bind_score(m.score, cond if cond.batch_size else None, event_shape=event, batch=v.shape[0])
        x = m.normalise(v.double())
        lp = probability_flow_log_prob(lambda xx, tt: score_fn(xx.to(torch.float64), tt), m.sde, x, self.likelihood)
        spatial = math.prod(event[1:])
        lp = lp - spatial * torch.log(m.target_std.double()).sum()
        return lp.reshape(full)


class ClosureLawDistribution(pdist.TorchDistribution):
    """Any :class:`~stochclosure.closures.AbstractClosureLaw` as a pyro distribution.

    A draw is ``law.draw(cond, latent)`` with a standard-normal latent ``batch_shape +
    latent_shape``: given (``latent=``, e.g. an AR(1) in time), drawn per element from
    generators keyed by ``seeds`` (a member's draw does not depend on its ensemble), or from
    ``generator``. Randomness a law consumes inside ``draw`` beyond its latent comes from one
    generator (keyed runs derive it from all the seeds, so only the latent part of a draw is
    independent of the ensemble a member runs in). ``log_prob`` is the law's own (it
    raises where the law has none).

    Args:
        law: The closure law.
        cond: The condition, batch ``N = prod(batch_shape)``.
        batch_shape: Batch shape (default ``(N,)``).
        grid: Spatial shape (default: the condition's grid).
        seeds: Integer tensor of ``batch_shape``: per-element latent streams.
        generator: One generator for the whole batch.
        latent: ``batch_shape + latent_shape`` standard-normal latent of the draw.
        dtype: Sample dtype.
        frozen_seed: Same latents for every element, from a generator seeded with it: a
            deterministic map ``y -> U`` (the "deterministic closure").
        average: With ``frozen_seed``: the mean of ``average`` frozen draws.
    """

    arg_constraints: dict[str, Any] = {}
    has_rsample = False

    def __init__(self, law: Any, cond: Conditioning, *, batch_shape: tuple[int, ...] | None = None,
                 grid: tuple[int, ...] | None = None, seeds: Tensor | None = None,
                 generator: torch.Generator | None = None, latent: Tensor | None = None,
                 dtype: torch.dtype = torch.float32, frozen_seed: int | None = None, average: int = 1,
                 validate_args: bool | None = None) -> None:
        if isinstance(average, bool) or not isinstance(average, int) or average < 1 or \
                (average > 1 and frozen_seed is None):
            raise ShapeError(format_error("average", "a positive integer (> 1 only with frozen_seed)", repr(average)))
        self.frozen_seed, self.average = frozen_seed, average
        n_cond = cond.batch_size
        batch_shape = tuple(int(s) for s in ((() if n_cond is None else (n_cond,)) if batch_shape is None
                                              else batch_shape))
        grid = cond.spatial_shape if grid is None else tuple(grid)
        if grid is None:
            raise ShapeError(format_error("grid", "a spatial shape (the condition has no fields)", "None",
                                          "pass grid=(n, n)"))
        n = math.prod(batch_shape)
        if n_cond not in (None, 1, n):
            raise ShapeError(format_error("cond", f"batch size {n} = prod(batch_shape={batch_shape}) (or 1)",
                                          f"batch size {n_cond}"))
        self.law, self.cond, self.grid, self.seeds, self.generator = law, cond, grid, seeds, generator
        self.latent_event = tuple(law.latent_shape(cond, grid))
        if latent is not None and tuple(latent.shape) != batch_shape + self.latent_event:
            raise ShapeError(format_error("latent", f"shape {batch_shape + self.latent_event}",
                                          f"shape {tuple(latent.shape)}"))
        self.latent, self.dtype = latent, dtype
        super().__init__(torch.Size(batch_shape), torch.Size((int(law.channels), *grid)),
                         validate_args=validate_args)

    @property
    def support(self) -> Any:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def is_dirac(self) -> bool:
        """``True`` for a law without a latent (a deterministic function of the condition)."""
        return not self.latent_event

    def expand(self, batch_shape: Any, _instance: Any = None) -> ClosureLawDistribution:
        new = tuple(int(s) for s in batch_shape)
        if new == tuple(self.batch_shape):
            return self
        old = tuple(self.batch_shape)
        idx = torch.arange(max(math.prod(old), 1)).reshape(old).expand(new).reshape(-1)
        cond = self.cond.index(idx) if self.cond.batch_size not in (None, 1) else self.cond
        return ClosureLawDistribution(
            self.law, cond, batch_shape=new, grid=self.grid, generator=self.generator, dtype=self.dtype,
            frozen_seed=self.frozen_seed, average=self.average,
            seeds=None if self.seeds is None else self.seeds.expand(new),
            latent=None if self.latent is None else self.latent.expand(new + self.latent_event))

    def _latent(self, n_b: int) -> tuple[Tensor | None, torch.Generator]:
        if self.seeds is not None:
            gens = _generators(self.seeds)
            inner = torch.Generator().manual_seed(int(mix_seeds(self.seeds.reshape(-1), n_b).sum()) % _SEED_MAX)
        else:
            gens = []
            inner = self.generator if self.generator is not None else torch.Generator().manual_seed(derive_seed())
        if self.is_dirac:
            return None, inner
        if self.latent is not None:
            return self.latent.reshape(n_b, *self.latent_event).to(self.dtype), inner
        if gens:
            return torch.stack([torch.randn(self.latent_event, generator=g) for g in gens]).to(self.dtype), inner
        return torch.randn((n_b, *self.latent_event), generator=inner).to(self.dtype), inner

    def sample(self, sample_shape: Any = torch.Size()) -> Tensor:
        """One draw per element, ``batch_shape + event_shape`` (``sample_shape`` must be empty).

        A law with floating parameters sees the condition and latent in its parameters' dtype
        (a float64 rollout with a float32 network); the draw comes back in ``dtype``.
        """
        if tuple(sample_shape):
            raise ShapeError(format_error("sample_shape", "() (one draw per element)", repr(tuple(sample_shape))))
        n_b = max(math.prod(tuple(self.batch_shape)), 1)
        cond = self.cond.expand_batch(n_b) if self.cond.batch_size == 1 and n_b > 1 else self.cond
        own = _parameter_dtype(self.law)
        if own is not None:
            cond = _map_tensors(cond, lambda k, v: v if k == "obs_points" or not v.is_floating_point() else v.to(own))
        if self.frozen_seed is not None:
            u = self._frozen(cond, n_b, own)
        else:
            latent, inner = self._latent(n_b)
            latent = latent if latent is None or own is None else latent.to(own)
            u = self.law.draw(cond, latent, grid=self.grid, generator=inner)
        return u.to(self.dtype).reshape(tuple(self.batch_shape) + tuple(self.event_shape))

    def _frozen(self, cond: Conditioning, n_b: int, own: torch.dtype | None = None) -> Tensor:
        """The mean of ``average`` draws whose latents (and inner noise) are the same for every element."""
        gen = torch.Generator().manual_seed(int(self.frozen_seed))  # type: ignore[arg-type]
        total = None
        for _ in range(self.average):
            latent = None
            if not self.is_dirac:
                latent = torch.randn(self.latent_event, generator=gen).to(own or self.dtype).expand(
                    n_b, *self.latent_event)
            u = self.law.draw(cond, latent, grid=self.grid, generator=gen)
            total = u if total is None else total + u
        assert total is not None
        return total / self.average

    def log_prob(self, value: Tensor) -> Tensor:
        """The law's ``log p(U | y)``, ``(..., *batch_shape)`` (raises where the law has none)."""
        batch = tuple(self.batch_shape)
        n_b = max(math.prod(batch), 1)
        lead = tuple(value.shape[:value.dim() - len(self.event_shape)])
        v = value.reshape(-1, n_b, *self.event_shape) if lead else value.reshape(1, n_b, *self.event_shape)
        lp = self.law.log_prob(v, self.cond)
        return lp.reshape(lead if lead else batch)


def _parameter_dtype(law: Any) -> torch.dtype | None:
    """The dtype of a law's first floating parameter (``None`` for a law without any)."""
    params = law.parameters() if hasattr(law, "parameters") else ()
    return next((p.dtype for p in params if p.is_floating_point()), None)
