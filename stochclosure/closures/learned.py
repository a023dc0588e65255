"""Learned closure laws: a deterministic network and a heteroscedastic Gaussian.

Both wrap a *backbone*: any registered score operator (e.g. the FNO of ``stochclosure-neuralop``
with its conditioning encoder, ``{"type": "fno", "encoder": {"type": "field"}, ...}``) used as a
regression network. It is evaluated on a zero sample at one fixed diffusion time ``t_eval``, so
its output is a learned function of the encoded condition only (for the preconditioned FNO, a
fixed multiple of its raw network). The backbone is built with the output channels the law
needs (``C`` for :class:`DeterministicClosure`, ``2C`` for :class:`GaussianClosure`).

Like :class:`~stochclosure.ClosureModel`, the laws work in *normalised* units, per-channel
``x = (U - mean) / std`` with the statistics in the buffers ``target_mean`` / ``target_std``
(the :class:`~stochclosure.training.Trainer` fills them at the start of a fresh run), and return
closures in physical units.

* ``deterministic``: a Dirac law at the network output ``mu(y)``, trained by mean squared error.
* ``gaussian``: ``U = mu(y) + sigma(y) * colour(z)`` with ``z ~ N(0, I)``; mean and
  log-variance heads share the backbone. ``colour`` is the identity (``noise="white"``) or a
  stationary spectral colouring with a per-channel isotropic power spectrum fitted on the
  training residuals (``noise="coloured"``, :meth:`GaussianClosure.fit_spectrum`), scaled to unit
  pointwise variance so ``sigma`` keeps its meaning. Trained by the Gaussian negative
  log-likelihood or by the closed-form CRPS of a Gaussian (Gneiting & Raftery 2007),
  ``CRPS(N(mu, sigma^2), x) = sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``,
  ``z = (x - mu) / sigma``, both averaged over every pixel and channel in normalised units.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import Conditioning, check_finite
from ..config import Configurable
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error
from ..registry import get, resolve
from .base import AbstractClosureLaw, LikelihoodUnavailable, NormalisedTarget, TimeMemory, _grid

__all__ = ["LearnedClosureLaw", "DeterministicClosure", "GaussianClosure", "GAUSSIAN_LOSSES", "NOISES",
           "gaussian_crps", "gaussian_nll", "isotropic_spectrum", "colour_noise"]

GAUSSIAN_LOSSES = ("nll", "crps")
NOISES = ("white", "coloured")
_NORMALISATION = ("target_mean", "target_std")


def gaussian_nll(x: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """Pointwise negative log-density of ``N(mu, exp(log_var))`` at ``x`` (same shapes)."""
    return 0.5 * (log_var + (x - mu) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi))


def gaussian_crps(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Pointwise closed-form CRPS of ``N(mu, sigma^2)`` at ``x`` (Gneiting & Raftery 2007, eq. 21).

    ``sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with ``z = (x - mu) / sigma``; all
    arguments broadcast together.
    """
    z = (x - mu) / sigma
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def _wavenumbers(grid: Sequence[int], device: Any = None) -> Tensor:
    """Integer radial wavenumber ``round(|k|)`` of every mode of the full FFT of ``grid``, shape ``grid``."""
    axes = [torch.fft.fftfreq(n, d=1.0 / n, device=device) for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(m.double() ** 2 for m in mesh)).round().long()


def isotropic_spectrum(r: Tensor, bins: int) -> Tensor:
    """Per-channel isotropic power spectrum of fields ``r`` ``(N, C, *grid)``, shape ``(C, bins)``.

    The mean of ``|FFT(r)|^2`` (orthonormal) over members and the modes of each integer radial
    wavenumber ``k = round(|k|)``; bins beyond the grid's largest ``k`` repeat the last filled one,
    and modes beyond ``bins - 1`` fall into the last bin.
    """
    grid = tuple(r.shape[2:])
    power = (torch.fft.fftn(r.double(), dim=tuple(range(2, r.dim())), norm="ortho").abs() ** 2).mean(0)
    k = _wavenumbers(grid, r.device).clamp_max(bins - 1).reshape(-1)
    flat = power.reshape(power.shape[0], -1)
    total = torch.zeros(flat.shape[0], bins, dtype=flat.dtype, device=r.device).index_add_(1, k, flat)
    count = torch.zeros(bins, dtype=flat.dtype, device=r.device).index_add_(0, k, torch.ones_like(k, dtype=flat.dtype))
    spec = total / count.clamp_min(1)
    last = int(k.max())
    spec[:, last + 1:] = spec[:, last:last + 1]
    return spec.float()


def colour_noise(z: Tensor, spectrum: Tensor) -> Tensor:
    """Stationary Gaussian field of unit pointwise variance with the isotropic spectrum ``spectrum``.

    Args:
        z: ``(B, C, *grid)`` white standard-normal noise.
        spectrum: ``(C, bins)`` non-negative power per integer radial wavenumber.

    Returns:
        ``(B, C, *grid)``: ``IFFT(sqrt(S(|k|)) FFT(z))`` divided by the pointwise std
        ``sqrt(mean_k S(|k|))``; differentiable in ``z``.
    """
    grid = tuple(z.shape[2:])
    dims = tuple(range(2, z.dim()))
    k = _wavenumbers(grid, z.device).clamp_max(spectrum.shape[1] - 1)
    s = spectrum.to(z.dtype)[:, k]  # (C, *grid)
    s = s / s.reshape(s.shape[0], -1).mean(1).clamp_min(1e-30).view(-1, *([1] * len(grid)))
    half = s[..., : grid[-1] // 2 + 1]  # S(|k|) is even, so the rfft half-spectrum holds it
    return torch.fft.irfftn(torch.fft.rfftn(z, dim=dims, norm="ortho") * half.sqrt(), s=grid, dim=dims, norm="ortho")


class LearnedClosureLaw(Configurable, NormalisedTarget, AbstractClosureLaw):
    """Base of closure laws whose parameters are a backbone network, with target normalisation.

    Subclasses set :attr:`heads` (output channels per closure channel) and implement
    :meth:`loss`, :meth:`draw` and :meth:`latent_shape`.

    Args:
        backbone: A score-operator spec or instance (``{"type": "fno", "encoder": ..., ...}``)
            built with ``heads * channels`` channels (a spec without ``channels`` gets them).
        channels: Channels ``C`` of the closure.
        target_mean: Per-channel mean of the targets, ``(C,)`` (default 0).
        target_std: Per-channel std of the targets, ``(C,)`` (default 1).
        t_eval: Diffusion time the backbone is evaluated at (default: half its SDE's horizon).
        inputs: Closure laws (specs or instances, e.g. a physics closure) whose :meth:`mean`,
            in physical units, is appended to ``cond.fields`` as extra channels before the
            backbone sees the condition (its encoder must take ``C_f + sum C_i`` field channels).
    """

    component_kind: ClassVar[str] = "closure"
    heads: ClassVar[int] = 1
    reparameterised: ClassVar[bool] = True
    memory: ClassVar[TimeMemory] = "none"

    def __init__(self, backbone: Any, channels: int = 1, target_mean: Tensor | None = None,
                 target_std: Tensor | None = None, t_eval: float | None = None, inputs: Sequence[Any] = ()) -> None:
        AbstractClosureLaw.__init__(self)
        self.inputs = torch.nn.ModuleList(_input_laws(inputs))
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(format_error("channels", "a positive integer", repr(channels)))
        self.channels = channels
        self.backbone = _build_backbone(backbone, self.heads * channels)
        sde = getattr(self.backbone, "sde", None)
        self.t_eval = float(t_eval) if t_eval is not None else (0.5 * float(sde.T) if sde is not None else 0.5)
        if not math.isfinite(self.t_eval) or self.t_eval <= 0:
            raise ConfigError(format_error("t_eval", "a positive diffusion time", repr(t_eval)))
        mean = torch.zeros(channels) if target_mean is None else torch.as_tensor(target_mean, dtype=torch.float32)
        std = torch.ones(channels) if target_std is None else torch.as_tensor(target_std, dtype=torch.float32)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ShapeError(format_error("target_mean/target_std", f"shape ({channels},)",
                                          f"{tuple(mean.shape)} and {tuple(std.shape)}"))
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and bool((std > 0).all())):
            raise ConfigError(format_error("target_mean/target_std", "finite values, a positive std",
                                           f"{mean.tolist()} and {std.tolist()}"))
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_std", std)

    def spec(self) -> dict[str, Any]:
        """``{"type": name, **config}`` without the normalisation (stored with the weights)."""
        out = super().spec()
        for key in _NORMALISATION:
            out.pop(key, None)
        out["backbone"] = self.backbone.spec() if hasattr(self.backbone, "spec") else out.get("backbone")
        if "inputs" in out:
            out["inputs"] = [law.spec() for law in self.inputs]
        return out

    @property
    def nfe_per_draw(self) -> float:
        """One backbone evaluation per draw."""
        return 1.0

    # -- the network ----------------------------------------------------------------------------------
    def network(self, cond: Conditioning | None, grid: tuple[int, ...], batch: int) -> Tensor:
        """Raw backbone output ``(B, heads * C, *grid)`` for the condition (normalised units)."""
        p = next(self.backbone.parameters(), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = p.device if p is not None else self.target_mean.device
        x = torch.zeros((batch, self.heads * self.channels, *grid), dtype=dtype, device=device)
        t = torch.full((batch,), self.t_eval, dtype=dtype, device=device)
        c = None if cond is None or cond.is_empty() else self._with_inputs(cond, grid)
        out = self.backbone(x, t, c)
        if tuple(out.shape) != tuple(x.shape):
            raise ShapeError(format_error("backbone output", f"shape {tuple(x.shape)}", f"shape {tuple(out.shape)}"))
        return out

    def _with_inputs(self, cond: Conditioning, grid: tuple[int, ...]) -> Conditioning:
        """``cond`` with the :attr:`inputs` laws' means appended to its fields (channels)."""
        if not len(self.inputs):
            return cond
        if cond.fields is None:
            raise ShapeError(format_error("cond.fields", "coarse fields (the input closures are appended to them)",
                                          "None", "pass Conditioning(fields=...) or drop inputs"))
        extra = [law.mean(cond, grid=grid).to(cond.fields) for law in self.inputs]
        return dataclasses.replace(cond, fields=torch.cat([cond.fields, *extra], dim=1))

    def _prepare(self, cond: Conditioning | None, grid: tuple[int, ...] | None, latent: Tensor | None = None
                 ) -> tuple[Conditioning | None, tuple[int, ...], int]:
        """``(condition or None, grid, batch)``; an empty condition takes the latent's batch (else 1)."""
        cond = Conditioning() if cond is None else cond
        g = _grid(cond, grid)
        batch = cond.batch_size or (latent.shape[0] if latent is not None and latent.dim() > 0 else 1)
        return (None if cond.is_empty() else cond.validate(spatial=g)), g, batch

    def _check_target(self, cond: Conditioning | None, u: Tensor) -> tuple[Conditioning | None, Tensor]:
        check_finite("u", u)
        if u.dim() < 2 or u.shape[1] != self.channels:
            raise ShapeError(format_error("u", f"(B, {self.channels}, *grid) closure targets",
                                          f"shape {tuple(u.shape)}", "build the law with channels= of the data"))
        cond = Conditioning() if cond is None else cond
        if cond.batch_size not in (None, u.shape[0]):
            raise ShapeError(format_error("cond", f"batch size {u.shape[0]} (the targets')", f"{cond.batch_size}"))
        return (None if cond.is_empty() else cond.validate(spatial=tuple(u.shape[2:]))), u

    def loss(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """Training loss of targets ``u`` ``(B, C, *grid)`` in physical units given ``cond``; a scalar."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(cond, u)")


def _input_laws(inputs: Any) -> list[Any]:
    """Resolve the ``inputs`` closure laws; each must have a closed-form :meth:`mean` and a spec."""
    if isinstance(inputs, (str, dict)) or not isinstance(inputs, Sequence):
        raise ConfigError(format_error("inputs", "a list of closure laws (names, specs or instances)", repr(inputs),
                                       "wrap a single law in a list"))
    laws = [resolve("closure", spec) for spec in inputs]
    for law in laws:
        if not callable(getattr(law, "spec", None)):
            raise ConfigError(format_error("inputs", "closure laws with a spec() (Configurable laws)",
                                           type(law).__name__, "build the input law on stochclosure.config.Configurable"))
    return laws


def _build_backbone(spec: Any, out_channels: int) -> Any:
    """Resolve the backbone score operator with ``out_channels`` channels (checked when given)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, dict):
        spec = dict(spec)
        if "channels" in spec and spec["channels"] != out_channels:
            raise ConfigError(format_error("backbone.channels", f"{out_channels} (output channels of the law)",
                                           repr(spec["channels"]), "leave backbone.channels out: the law sets it"))
        cls = get("score_operator", spec["type"]) if isinstance(spec.get("type"), str) else None
        if cls is not None and "channels" in inspect.signature(cls).parameters:
            spec["channels"] = out_channels
    net = resolve("score_operator", spec)
    have = getattr(net, "channels", out_channels)
    if have != out_channels:
        raise ConfigError(format_error("backbone.channels", f"{out_channels} (output channels of the law)",
                                       repr(have), "build the backbone with channels=heads * channels"))
    return net


class DeterministicClosure(LearnedClosureLaw):
    """A Dirac law at a learned function of the condition, ``U = mu(y)``, trained by mean squared error.

    Args: as :class:`LearnedClosureLaw`.

    Example:
        >>> import torch, stochclosure as sc
        >>> law = DeterministicClosure({"type": "gaussian", "sde": "vp", "std": 1.0})
        >>> tuple(law.sample(sc.Conditioning(), n=2, grid=(8, 8)).shape)
        (2, 1, 1, 8, 8)
    """

    heads: ClassVar[int] = 1

    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``()``: a Dirac law has no latent."""
        return ()

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """The network output in physical units, ``(B, C, *grid)`` (``latent`` is ignored)."""
        return self.mean(cond, grid=grid)

    def sample(self, cond: Conditioning, n: int = 1, *, generator: torch.Generator | None = None,
               grid: tuple[int, ...] | None = None) -> Tensor:
        """``n`` copies of :meth:`mean` (a Dirac law), ``(n, B, C, *grid)``, from one network evaluation."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ShapeError(format_error("n", "a positive integer (draws per condition)", repr(n)))
        mu = self.mean(cond, grid=grid)
        return mu.unsqueeze(0).repeat(n, *([1] * mu.dim()))

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """``mu(y)`` in physical units, ``(B, C, *grid)``."""
        c, g, b = self._prepare(cond, grid)
        return self.denormalise(self.network(c, g, b))

    def loss(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """Mean squared error in normalised units of targets ``u`` ``(B, C, *grid)``."""
        c, u = self._check_target(cond, u)
        x = self.normalise(u)
        return ((self.network(c, tuple(u.shape[2:]), u.shape[0]).to(x) - x) ** 2).mean()


class GaussianClosure(LearnedClosureLaw):
    """Heteroscedastic Gaussian law ``U = mu(y) + sigma(y) * colour(z)``, mean and log-variance heads.

    The backbone has ``2C`` output channels: the first ``C`` are the mean, the last ``C`` the
    log-variance (normalised units), clamped to ``log_var_range`` so that a draw never
    overflows or collapses; a non-finite log-variance raises :class:`~stochclosure.errors.NonFiniteError`.
    A post-hoc spread factor (:meth:`set_spread`, the ``spread`` buffer, 1 unless set) multiplies
    ``sigma`` in draws, :meth:`std` and :meth:`log_prob`.

    Args:
        backbone: Score-operator spec or instance (see :class:`LearnedClosureLaw`), ``2C`` channels.
        channels: Channels ``C`` of the closure.
        loss: ``"nll"`` (Gaussian negative log-likelihood) or ``"crps"`` (closed-form CRPS).
        noise: ``"white"`` (independent pixels) or ``"coloured"`` (stationary colouring by the
            ``spectrum`` buffer, fitted by :meth:`fit_spectrum`; white until fitted).
        spectrum_bins: Radial wavenumber bins of the ``spectrum`` buffer ``(C, spectrum_bins)``.
        log_var_range: ``(min, max)`` of the log-variance in normalised units.
        target_mean: Per-channel mean of the targets.
        target_std: Per-channel std of the targets.
        t_eval: Diffusion time the backbone is evaluated at.
        inputs: Closure laws whose means are extra condition channels (see :class:`LearnedClosureLaw`).

    Shapes:
        ``draw`` and ``mean``: ``(B, C, *grid)``; latent ``(B, C, *grid)``; ``log_prob``: ``(..., B)``.
    """

    heads: ClassVar[int] = 2

    def __init__(self, backbone: Any, channels: int = 1, loss: str = "nll", noise: str = "white",
                 spectrum_bins: int = 64, log_var_range: Sequence[float] = (-14.0, 8.0),
                 target_mean: Tensor | None = None, target_std: Tensor | None = None,
                 t_eval: float | None = None, inputs: Sequence[Any] = ()) -> None:
        if loss not in GAUSSIAN_LOSSES:
            raise ConfigError(format_error("loss", f"one of {list(GAUSSIAN_LOSSES)}", repr(loss),
                                           "'nll' for the likelihood, 'crps' for the proper score"))
        if noise not in NOISES:
            raise ConfigError(format_error("noise", f"one of {list(NOISES)}", repr(noise)))
        if isinstance(spectrum_bins, bool) or not isinstance(spectrum_bins, int) or spectrum_bins < 2:
            raise ConfigError(format_error("spectrum_bins", "an integer >= 2", repr(spectrum_bins)))
        lo, hi = _check_range(log_var_range)
        super().__init__(backbone, channels, target_mean, target_std, t_eval, inputs)
        self.loss_name, self.noise, self.log_var_range = loss, noise, (lo, hi)
        self.register_buffer("spectrum", torch.ones(channels, spectrum_bins))
        self.register_buffer("spread", torch.ones(()))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # laws saved before the spread factor existed load with a factor of 1 (their behaviour then)
        state_dict.setdefault(prefix + "spread", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_spread(self, factor: float) -> GaussianClosure:
        """Scale the law's spread by ``factor`` after training (post-hoc calibration); the mean is kept.

        Draws become ``mu + factor * sigma * colour(z)``; :meth:`std` and :meth:`log_prob` follow, the
        training loss does not (it fits the heads). The factor is a buffer, saved with the weights.
        Fit it on validation data, e.g. so that the spread-skill of validation rollouts is 1.

        Args:
            factor: A finite number > 0 (1: the law as trained).

        Returns:
            The law itself.

        Raises:
            ConfigError: ``factor`` is not a finite positive number.
        """
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or factor <= 0:
            raise ConfigError(format_error("factor", "a finite number > 0 (1: the spread as trained)", repr(factor),
                                           "fit it on validation data, e.g. spread-skill of rollouts = 1"))
        self.spread.fill_(float(factor))
        return self

    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, *grid)``: one standard-normal value per pixel and channel."""
        return (self.channels, *grid)

    def heads_of(self, cond: Conditioning | None, grid: tuple[int, ...], batch: int) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` in normalised units, each ``(B, C, *grid)``, the log-variance clamped.

        Raises:
            NonFiniteError: the network gives a NaN or infinite log-variance or mean.
        """
        out = self.network(cond, grid, batch)
        mu, log_var = out[:, : self.channels], out[:, self.channels:]
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(format_error("log-variance/mean heads", "finite network outputs",
                                              "NaN or infinite values", "check the condition and the weights"))
        return mu, log_var.clamp(*self.log_var_range)

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """``denormalise(mu + sigma * colour(latent))``, ``(B, C, *grid)``; a ``None`` latent is drawn."""
        c, g, b = self._prepare(cond, grid, latent)
        mu, log_var = self.heads_of(c, g, b)
        if latent is None:
            latent = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        if tuple(latent.shape) != tuple(mu.shape):
            raise ShapeError(format_error("latent", f"shape {tuple(mu.shape)}", f"shape {tuple(latent.shape)}"))
        eps = colour_noise(latent.to(mu), self.spectrum) if self.noise == "coloured" else latent.to(mu)
        return self.denormalise(mu + self.spread.to(mu) * torch.exp(0.5 * log_var) * eps)

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """``E[U | y] = mu(y)`` in physical units, ``(B, C, *grid)``."""
        c, g, b = self._prepare(cond, grid)
        return self.denormalise(self.heads_of(c, g, b)[0])

    def std(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """Pointwise standard deviation of ``U | y`` in physical units, ``(B, C, *grid)``."""
        c, g, b = self._prepare(cond, grid)
        log_var = self.heads_of(c, g, b)[1]
        sd = self.spread.to(log_var) * torch.exp(0.5 * log_var)
        return sd * self.target_std.view(1, self.channels, *([1] * len(g))).to(sd)

    def log_prob(self, u: Tensor, cond: Conditioning) -> Tensor:
        """``log p(u | y)`` of physical ``u`` ``(..., B, C, *grid)``, ``(..., B)`` (white noise only)."""
        if self.noise != "white":
            raise LikelihoodUnavailable(format_error(
                "log_prob", "a white-noise Gaussian law", "noise='coloured'",
                "score draws with stochclosure.metrics (CRPS, energy score) instead"))
        cond = Conditioning() if cond is None else cond
        rank = len(cond.spatial_shape) if cond.spatial_shape is not None else u.dim() - 2
        if u.dim() < rank + 2 or u.shape[u.dim() - rank - 1] != self.channels:
            raise ShapeError(format_error("u", f"(..., B, {self.channels}, *grid) closures", f"shape {tuple(u.shape)}"))
        grid = tuple(u.shape[u.dim() - rank:])
        c, g, b = self._prepare(cond, grid)
        mu, log_var = self.heads_of(c, g, b)
        std = self.target_std.view(self.channels, *([1] * rank)).to(u)
        x = (u - self.target_mean.view(self.channels, *([1] * rank)).to(u)) / std
        lp = -gaussian_nll(x, mu.to(x), log_var.to(x) + 2 * torch.log(self.spread.to(x)))
        jacobian = math.prod(grid) * float(torch.log(self.target_std.double()).sum())
        return lp.flatten(start_dim=u.dim() - rank - 1).sum(-1) - jacobian

    def loss(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """Mean pointwise Gaussian NLL or CRPS in normalised units of targets ``u`` ``(B, C, *grid)``."""
        c, u = self._check_target(cond, u)
        x = self.normalise(u)
        mu, log_var = self.heads_of(c, tuple(u.shape[2:]), u.shape[0])
        mu, log_var = mu.to(x), log_var.to(x)
        if self.loss_name == "nll":
            return gaussian_nll(x, mu, log_var).mean()
        return gaussian_crps(x, mu, torch.exp(0.5 * log_var)).mean()

    @torch.no_grad()
    def fit_spectrum(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """Fit the ``spectrum`` buffer on the standardised residuals ``(x - mu) / sigma`` of ``(cond, u)``.

        Args:
            cond: Conditions, batch ``N``.
            u: ``(N, C, *grid)`` closure targets in physical units.

        Returns:
            The fitted ``(C, spectrum_bins)`` spectrum (also stored in the buffer).
        """
        c, u = self._check_target(cond, u)
        x = self.normalise(u)
        mu, log_var = self.heads_of(c, tuple(u.shape[2:]), u.shape[0])
        r = (x - mu.to(x)) * torch.exp(-0.5 * log_var.to(x))
        spec = isotropic_spectrum(r, self.spectrum.shape[1])
        self.spectrum.copy_(spec.to(self.spectrum))
        return self.spectrum.clone()


def _check_range(value: Any) -> tuple[float, float]:
    """``log_var_range``: two finite numbers ``min < max``."""
    ok = isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or not value[0] < value[1]:
        raise ConfigError(format_error("log_var_range", "two finite numbers [min, max] with min < max",
                                       repr(value), "e.g. [-14, 8] (normalised units)"))
    return float(value[0]), float(value[1])
