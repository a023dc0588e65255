"""A conditional FNO score operator built from neuraloperator 2.0 parts.

The network sees the scaled noisy sample, the encoded condition and periodic grid coordinates,
lifts them with a :class:`neuralop.layers.channel_mlp.ChannelMLP`, runs ``layers`` Fourier blocks
(:class:`neuralop.layers.fno_block.FNOBlocks`) and projects back with another ``ChannelMLP``.

Per-sample noise-level conditioning: neuraloperator's AdaIN normalisation takes one embedding
for the whole batch, which is wrong for diffusion training (every member has its own ``t``).
Here a Gaussian-Fourier embedding of ``log(sigma_t / alpha_t)`` goes through a small MLP and,
after every Fourier block ``i``, modulates the hidden state per sample and per channel
(FiLM: ``h <- h * (1 + scale_i) + shift_i``).

Preconditioning (behind the score boundary, samplers never see it). With ``s = sigma_t /
alpha_t`` and ``x~ = x / alpha_t = x_0 + s z``:

* ``"edm"`` (default, Karras et al. 2022): the denoiser ``D = c_skip x~ + c_out F(c_in x~, s)``
  with ``c_in = 1/sqrt(s^2 + d^2)``, ``c_skip = d^2 / (s^2 + d^2)``, ``c_out = s d / sqrt(s^2 +
  d^2)`` (``d = data_std``) and ``score = (D - x~) / (alpha_t s^2)``; the network's regression
  target has unit variance at every noise level;
* ``"noise"``: ``F`` predicts the unit noise ``z`` from ``c_in x~`` and ``score = -F / sigma_t``.

:meth:`FNOScore.loss_weighting` is the DSM weight ``lambda(t)`` that turns the denoising score
matching loss into an unweighted regression on ``F`` for either choice.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from neuralop.layers.channel_mlp import ChannelMLP
from neuralop.layers.fno_block import FNOBlocks
from torch import Tensor, nn

from stochclosure._types import Conditioning, check_tensor
from stochclosure.errors import ConfigError, ResolutionWarning, ShapeError, format_error
from stochclosure.fft import spectral_resample
from stochclosure.registry import resolve
from stochclosure.scores.base import AbstractScoreOperator
from stochclosure.sdes.base import AbstractSDE, expand_as_batch

__all__ = ["FNOScore", "GaussianFourierEmbedding", "periodic_coordinates", "contract_dense_bmm",
           "use_bmm_contraction"]

_PRECONDITIONINGS = ("edm", "noise")
_COORDS = ("sincos", "none")
_CONTRACTIONS = ("bmm", "einsum")


def contract_dense_bmm(x: Tensor, weight: Any, separable: bool = False) -> Tensor:
    """Dense spectral contraction ``out[b, o, *k] = sum_i x[b, i, *k] w[i, o, *k]`` as one batched matmul.

    The same contraction as neuraloperator's ``_contract_dense`` (``einsum("bixy,ioxy->boxy")``) with
    the retained modes as the batch of a ``torch.bmm``: ``(M, B, I) @ (M, I, O)``. On CPUs the einsum
    path (through tensorly / opt_einsum) is several times slower (``benchmarks/cpu_speed.py``).

    Args:
        x: ``(B, I, *modes)`` complex Fourier coefficients.
        weight: ``(I, O, *modes)`` complex weights (a tensor or a tltorch ``DenseTensor``).
        separable: Must be ``False`` (separable weights keep neuraloperator's path).

    Returns:
        ``(B, O, *modes)``.
    """
    if separable:
        raise ConfigError(format_error("separable", "False for the bmm contraction", "True"))
    if not torch.is_tensor(weight):
        weight = weight.to_tensor()
    b, i = x.shape[:2]
    o, modes = weight.shape[1], tuple(x.shape[2:])
    m = math.prod(modes)
    # contiguous operands: CPU complex bmm on strided views is about 2x slower than the copies cost
    xm = x.reshape(b, i, m).permute(2, 0, 1).contiguous()
    wm = weight.reshape(i, o, m).permute(2, 0, 1).contiguous()
    return torch.bmm(xm, wm).permute(1, 2, 0).reshape(b, o, *modes)


def use_bmm_contraction(blocks: nn.Module) -> int:
    """Switch every dense, non-separable ``SpectralConv`` in ``blocks`` to :func:`contract_dense_bmm`.

    Weights and state dicts are untouched; other convolutions (factorised, separable) keep their
    own contraction. Returns the number of convolutions switched.
    """
    count = 0
    for conv in getattr(blocks, "convs", []):
        dense = getattr(conv, "factorization", None) is None and not getattr(conv, "separable", True)
        if dense and hasattr(conv, "_contract"):
            conv._contract = contract_dense_bmm
            count += 1
    return count


def periodic_coordinates(grid: tuple[int, ...], dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> Tensor:
    """``sin`` and ``cos`` of ``2 pi x`` for the periodic grid points ``x_i = i / n``.

    Args:
        grid: Spatial shape ``(n,)`` or ``(ny, nx)``.
        dtype: Output dtype.
        device: Output device.

    Returns:
        ``(2 * len(grid), *grid)``: ``[sin x_1, cos x_1, sin x_2, cos x_2, ...]``, continuous
        across the periodic boundary (the end point ``x = 1`` is never a grid point).
    """
    axes = [torch.arange(n, dtype=torch.float64, device=device) / n for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    chans = []
    for m in mesh:
        chans += [torch.sin(2 * math.pi * m), torch.cos(2 * math.pi * m)]
    return torch.stack(chans).to(dtype)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar per sample (Tancik et al. 2020; Song et al. 2021).

    The frequencies are fixed (a buffer drawn from a seeded generator), so the same
    configuration always gives the same embedding.

    Args:
        dim: Embedding size (even).
        scale: Std of the random frequencies.
        seed: Seed of the frequencies.
    """

    def __init__(self, dim: int = 64, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, v: Tensor) -> Tensor:
        """Embed ``v`` ``(batch,)`` into ``(batch, dim)``."""
        arg = 2 * math.pi * v[:, None] * self.freqs[None, :].to(v.dtype)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(format_error(name, f"an integer >= {minimum}", repr(value)))
    return value


class FNOScore(AbstractScoreOperator):
    """Conditional score ``s(x, t, cond)`` with an FNO backbone (neuraloperator 2.0 parts).

    Args:
        sde: Forward SDE (name, spec or instance); must be the closure model's SDE.
        channels: Channels ``C`` of the sample ``x``.
        encoder: Conditioning encoder (name, ``{"type": ...}`` spec or instance) turning the
            condition into fields on ``x``'s grid; ``None`` for an unconditional operator.
        spatial_dims: 1 (rings) or 2 (tori).
        width: Hidden channels of the Fourier blocks.
        modes: Fourier modes kept per dimension: wavenumbers ``|k_i| < modes``.
        layers: Number of Fourier blocks.
        lifting_ratio: Hidden size of the lifting MLP, as a multiple of ``width``.
        projection_ratio: Hidden size of the projection MLP, as a multiple of ``width``.
        embed_dim: Size of the Gaussian-Fourier noise-level embedding.
        embed_scale: Std of its random frequencies (applied to ``log(sigma_t / alpha_t)``). Low
            frequencies (about one period per unit of log-sigma) make the network a smooth function
            of the noise level, which probability-flow and SDE samplers integrate across.
        coords: ``"sincos"`` adds ``sin/cos(2 pi i / n)`` coordinate channels, ``"none"`` adds none.
        preconditioning: ``"edm"`` or ``"noise"`` (see the module docstring).
        data_std: Std of the (normalised) data assumed by the preconditioning.
        reference_grid: The grid the network was trained on, for resolution transfer of the
            *noise level*. Discrete white noise of pixel std ``sigma`` on an ``N``-point grid puts
            variance ``sigma^2 / N`` on each Fourier coefficient (forward normalisation), so the
            modes a coarse grid holds are less noisy on a finer grid at the same ``t``: the
            statistics of those modes on grid ``N`` at noise ``sigma`` are exactly those of the
            reference grid at ``sigma * sqrt(N_ref / N)``. With ``reference_grid`` set, inputs on
            other grids are spectrally resampled to it, denoised there at that equivalent noise
            level and resampled back (modes beyond the reference grid are denoised to zero), so
            the score transfers exactly for laws band-limited to the reference grid. ``None``
            (default) runs the network on the input's grid as is.

    Shapes:
        ``x``: ``(B, C, *grid)``; ``t``: ``(B,)``; ``cond``: batch ``B`` or 1; output like ``x``.
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)
    resolution_invariant: ClassVar[bool] = True
    conditional: ClassVar[bool] = True

    def __init__(self, sde: Any = "ve_exp", channels: int = 1, encoder: Any = None, spatial_dims: int = 2,
                 width: int = 20, modes: int = 8, layers: int = 4, lifting_ratio: float = 2.0,
                 projection_ratio: float = 2.0, embed_dim: int = 64, embed_scale: float = 1.0,
                 coords: str = "sincos", preconditioning: str = "edm", data_std: float = 1.0,
                 reference_grid: tuple[int, ...] | None = None, contraction: str = "bmm") -> None:
        super().__init__()
        self.sde: AbstractSDE = resolve("sde", sde)
        self.channels = _positive_int("channels", channels)
        if spatial_dims not in (1, 2):
            raise ConfigError(format_error("spatial_dims", "1 or 2", repr(spatial_dims)))
        self.n_dim = int(spatial_dims)
        self.width = _positive_int("width", width)
        self.modes = _positive_int("modes", modes)
        self.layers = _positive_int("layers", layers)
        if embed_dim < 2 or embed_dim % 2:
            raise ConfigError(format_error("embed_dim", "an even integer >= 2", repr(embed_dim)))
        if coords not in _COORDS:
            raise ConfigError(format_error("coords", f"one of {list(_COORDS)}", repr(coords)))
        if preconditioning not in _PRECONDITIONINGS:
            raise ConfigError(format_error("preconditioning", f"one of {list(_PRECONDITIONINGS)}",
                                           repr(preconditioning)))
        if not data_std > 0:
            raise ConfigError(format_error("data_std", "a positive float", repr(data_std)))
        if contraction not in _CONTRACTIONS:
            raise ConfigError(format_error("contraction", f"one of {list(_CONTRACTIONS)}", repr(contraction)))
        self.coords, self.preconditioning, self.data_std = coords, preconditioning, float(data_std)
        if reference_grid is not None:
            reference_grid = tuple(int(g) for g in reference_grid)
            if len(reference_grid) != self.n_dim or min(reference_grid) < 2 * modes - 1:
                raise ConfigError(format_error("reference_grid", f"{self.n_dim} sizes of at least {2 * modes - 1}",
                                               repr(reference_grid)))
        self.reference_grid = reference_grid
        self.encoder = None if encoder is None else resolve("encoder", encoder)
        if self.encoder is not None and self.n_dim not in getattr(self.encoder, "spatial_dims", (1, 2)):
            raise ConfigError(format_error("encoder", f"an encoder supporting {self.n_dim}-D grids",
                                           f"{type(self.encoder).__name__} (spatial_dims "
                                           f"{self.encoder.spatial_dims})"))
        self.cond_channels = 0 if self.encoder is None else int(self.encoder.out_channels)
        n_coords = 2 * self.n_dim if coords == "sincos" else 0
        in_ch = self.channels + self.cond_channels + n_coords

        self.lifting = ChannelMLP(in_channels=in_ch, out_channels=width, hidden_channels=int(lifting_ratio * width),
                                  n_layers=2, n_dim=self.n_dim)
        # odd n_modes => neuraloperator keeps |k| <= modes - 1 symmetrically on every axis
        self.blocks = FNOBlocks(width, width, n_modes=[2 * self.modes - 1] * self.n_dim, n_layers=self.layers)
        self.contraction = contraction
        if contraction == "bmm":
            use_bmm_contraction(self.blocks)
        self.projection = ChannelMLP(in_channels=width, out_channels=self.channels,
                                     hidden_channels=int(projection_ratio * width), n_layers=2, n_dim=self.n_dim)
        self.embedding = GaussianFourierEmbedding(embed_dim, embed_scale)
        hidden = 4 * width
        self.noise_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.film = nn.Linear(hidden, 2 * width * self.layers)
        self._coord_cache: dict[tuple[Any, ...], Tensor] = {}
        self._warned_grids: set[tuple[int, ...]] = set()
        nn.init.zeros_(self.film.weight)  # FiLM starts as the identity
        nn.init.zeros_(self.film.bias)

    # -- preconditioning ----------------------------------------------------------------------
    def _scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha, sigma = self.sde.marginal_coefficients(t)
        return alpha.to(like.dtype), sigma.to(like.dtype), (sigma / alpha).to(like.dtype)

    def loss_weighting(self, alpha: Tensor, sigma: Tensor, g: Tensor) -> Tensor:
        """DSM weight ``lambda(t)`` making the loss a unit-weighted regression on the network output.

        Args:
            alpha: ``(B,)`` signal scale ``alpha_t``.
            sigma: ``(B,)`` noise std ``sigma_t``.
            g: ``(B,)`` diffusion coefficient (unused).

        Returns:
            ``(B,)`` weights for :func:`stochclosure.losses.dsm_loss` (``weighting=``).
        """
        if self.preconditioning == "noise":
            return sigma**2
        s2, d2 = (sigma / alpha) ** 2, self.data_std**2
        return sigma**2 * (s2 + d2) / d2

    # -- network ----------------------------------------------------------------------------------
    def network(self, x_in: Tensor, log_s: Tensor, cond_fields: Tensor | None) -> Tensor:
        """The raw backbone ``F``.

        Args:
            x_in: ``(B, C, *grid)`` preconditioned input ``c_in x / alpha_t``.
            log_s: ``(B,)`` noise level ``log(sigma_t / alpha_t)``.
            cond_fields: ``(B, cond_channels, *grid)`` encoded condition, or ``None``.

        Returns:
            ``(B, C, *grid)``.
        """
        b, grid = x_in.shape[0], tuple(x_in.shape[2:])
        parts = [x_in]
        if cond_fields is not None:
            parts.append(cond_fields.to(x_in.dtype))
        if self.coords == "sincos":
            key = (grid, x_in.dtype, x_in.device)
            xy = self._coord_cache.get(key)
            if xy is None:
                xy = self._coord_cache[key] = periodic_coordinates(grid, dtype=x_in.dtype, device=x_in.device)
            parts.append(xy.unsqueeze(0).expand(b, *xy.shape))
        h = self.lifting(torch.cat(parts, dim=1))
        film = self.film(self.noise_mlp(self.embedding(log_s)))
        film = film.view(b, self.layers, 2, self.width, *([1] * self.n_dim))
        for i in range(self.layers):
            h = self.blocks(h, index=i)
            h = torch.addcmul(film[:, i, 1], h, 1.0 + film[:, i, 0])  # FiLM: h * (1 + scale) + shift
        return self.projection(h)

    def _check(self, x: Tensor, t: Tensor, cond: Conditioning | None) -> None:
        check_tensor("x", x, rank=2 + self.n_dim, finite=False)
        if x.shape[1] != self.channels:
            raise ShapeError(format_error("x", f"{self.channels} channels (FNOScore(channels=...))",
                                          f"shape {tuple(x.shape)}", "build the operator with the target's channels"))
        check_tensor("t", t, rank=1, batch=x.shape[0], finite=False)
        if min(x.shape[2:]) < 2 * self.modes - 1 and tuple(x.shape[2:]) not in self._warned_grids:
            # it runs (the Fourier layers keep the modes the grid holds) but the upper weights go unused
            self._warned_grids.add(tuple(x.shape[2:]))
            warnings.warn(format_error("x", f"at least {2 * self.modes - 1} points per axis for modes={self.modes}",
                                       f"grid {tuple(x.shape[2:])}, which holds only |k| <= {(min(x.shape[2:]) - 1) // 2}",
                                       "use a finer grid or fewer modes; the unused modes' weights are ignored"),
                          ResolutionWarning, stacklevel=3)
        if self.encoder is not None and (cond is None or cond.is_empty()):
            raise ShapeError(format_error("cond", f"a Conditioning for the encoder {type(self.encoder).__name__}",
                                          "None", "pass the condition, or build FNOScore(encoder=None)"))

    def supported_spatial_dims(self) -> tuple[int, ...]:
        """The one spatial rank this network was built for (``spatial_dims`` at construction)."""
        return (self.n_dim,)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        """Score of the noised conditional law.

        Args:
            x: ``(B, C, *grid)`` noisy sample.
            t: ``(B,)`` diffusion times.
            cond: Condition with batch ``B`` or 1 (ignored when ``encoder`` is ``None``).

        Returns:
            ``(B, C, *grid)``.
        """
        self._check(x, t, cond)
        grid = tuple(x.shape[2:])
        enc = None
        if self.encoder is not None:
            assert cond is not None
            enc = self.encoder(cond, grid)
            if enc.shape[0] == 1 and x.shape[0] > 1:
                enc = enc.expand(x.shape[0], *enc.shape[1:])
            if enc.shape[0] != x.shape[0]:
                raise ShapeError(format_error("cond", f"batch size {x.shape[0]} (or 1)",
                                              f"batch size {enc.shape[0]}"))
        alpha, sigma, s = self._scales(t, x)
        a, sg, sb = (expand_as_batch(v, x) for v in (alpha, sigma, s))
        xs = x / a
        d2 = self.data_std**2
        if self.reference_grid is not None and grid != self.reference_grid:
            return self._forward_on_reference(xs, s, a, sb, cond)
        c_in = torch.rsqrt(sb**2 + d2)
        f = self.network(xs * c_in, torch.log(s), enc)
        if self.preconditioning == "noise":
            return -f / sg
        # (D - x~) / (alpha s^2) with D = c_skip x~ + c_out F, written without cancellation
        return (-xs / (sb**2 + d2) + self.data_std * f / (sb * torch.sqrt(sb**2 + d2))) / a

    def _forward_on_reference(self, xs: Tensor, s: Tensor, a: Tensor, sb: Tensor, cond: Conditioning | None
                              ) -> Tensor:
        ref = self.reference_grid
        assert ref is not None
        ratio = math.sqrt(math.prod(ref) / math.prod(xs.shape[2:]))
        s_ref = s * ratio
        sr = expand_as_batch(s_ref, xs)
        x_ref = spectral_resample(xs, ref)
        enc = None
        if self.encoder is not None:
            assert cond is not None
            enc = self.encoder(cond, ref)
            if enc.shape[0] == 1 and xs.shape[0] > 1:
                enc = enc.expand(xs.shape[0], *enc.shape[1:])
        d2 = self.data_std**2
        f = self.network(x_ref * torch.rsqrt(sr**2 + d2), torch.log(s_ref), enc)
        if self.preconditioning == "noise":
            den = x_ref - sr * f
        else:
            den = d2 / (sr**2 + d2) * x_ref + self.data_std * sr * torch.rsqrt(sr**2 + d2) * f  # c_skip x + c_out F
        den = spectral_resample(den, tuple(xs.shape[2:]))
        return (den - xs) / (a * sb**2)

    # -- contract-suite hooks -------------------------------------------------------------------
    @classmethod
    def example(cls) -> FNOScore:
        return cls("ve_exp", channels=1, encoder={"type": "field", "channels": 1}, width=8, modes=4, layers=2,
                   embed_dim=16)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        grid = (16,) * self.n_dim
        x = torch.randn(batch, self.channels, *grid, generator=generator)
        t = self.sde.eps + (self.sde.T - self.sde.eps) * torch.rand(batch, generator=generator)
        cond = None
        if self.encoder is not None:
            cond = self.encoder.example_condition(batch, generator)
            if cond.fields is not None and cond.fields.dim() - 2 != self.n_dim:
                cond = Conditioning(fields=torch.randn(batch, cond.fields.shape[1], *grid, generator=generator))
        return x, t, cond
