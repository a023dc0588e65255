"""Training a :class:`~stochclosure.ClosureModel` by denoising score matching, or any closure law by its own loss.

The :class:`Trainer` runs Adam with a learning-rate schedule (warm-up, then constant, cosine or
step decay), gradient clipping, an exponential moving average (EMA) of the weights, a validation
loss (with the EMA weights and fixed noise, so values are comparable across steps), per-channel
normalisation of the targets (stored in the model's ``target_mean`` / ``target_std`` buffers),
seeded data order and noise, a tqdm progress bar, and checkpoints from which a killed run resumes
*exactly*: the data order is a function of ``(seed, epoch)``, and weights, EMA, optimizer state,
step and random-generator states are all saved (safetensors + JSON, see
:mod:`stochclosure.checkpoint`).

Diffusion times for training default to the range the model's default sampler visits
(``[t_end, t_start]`` of a grid sampler), so no training is spent on noise levels the sampler
never sees.

Any ``torch.utils.data.Dataset`` following the item protocol of :mod:`stochclosure.data.base`
works; batches are built with its ``collate`` method when it has one, else with
:func:`~stochclosure.data.base.collate_closure` and its ``obs_points``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._io import preflight_output
from ._types import Conditioning, check_finite
from .checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    is_diffusion_model,
    load_tensors,
    model_config,
    read_config,
    write_checkpoint_dir,
)
from .config import check_device, check_number, check_seed, derive_seed
from .data.augment import resolve_augment
from .data.base import collate_closure
from .errors import CheckpointError, ConfigError, NonFiniteError, format_error
from .losses import WEIGHTINGS, check_time_law, dsm_loss, sample_times
from .model import ClosureModel
from .runs import (
    LATEST,
    check_resume_config,
    check_run_folder,
    config_changes,
    latest_checkpoint,
    record_changes,
    run_lock,
)

__all__ = ["Trainer", "TrainResult", "EMA", "default_t_range", "target_statistics", "SCHEDULES",
           "check_trainer_options", "power_ema_exponent"]

SCHEDULES = ("constant", "cosine", "step")
OPTIM_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


def check_trainer_options(options: Mapping[str, Any], where: str = "") -> None:
    """Check :class:`Trainer` options before any work (the constructor and the command line call it).

    Only the keys present are checked, so the command line can check a ``trainer:`` block before
    it opens the data. Rules: sizes are positive integers; ``lr > 0``; ``0 <= min_lr_ratio <= 1``;
    ``0 < gamma <= 1`` (a decay); ``0 <= warmup_steps <= max_steps``, an integer;
    ``weight_decay >= 0``; ``grad_clip`` ``None`` or ``>= 0``; ``0 <= ema_decay < 1``;
    ``0 < ema_rel_std < 0.28`` or ``None``; ``val_draws >= 0``; a known ``time_law`` and ``augment``; ``t_range``
    two numbers ``0 < t_min < t_max``; ``seed`` in ``[0, 2**64)``; ``device`` available here.

    Args:
        options: Keyword arguments of :class:`Trainer`.
        where: Prefix of the names in messages (``"trainer."`` for a YAML block).

    Raises:
        ConfigError: a value of the wrong type or out of range, naming it.
        DeviceError: a device that does not exist here.
    """
    o = options

    def name(key: str) -> str:
        return where + key

    for key in ("batch_size", "max_steps", "checkpoint_every", "keep_checkpoints", "val_every", "step_size"):
        if key in o:
            check_number(o[key], name(key), integer=True, minimum=1)
    if o.get("val_batches") is not None:
        check_number(o["val_batches"], name("val_batches"), integer=True, minimum=1, fix="null for the whole set")
    if "lr" in o:
        check_number(o["lr"], name("lr"), minimum=0, open_min=True)
    if "min_lr_ratio" in o:
        check_number(o["min_lr_ratio"], name("min_lr_ratio"), minimum=0, maximum=1,
                     fix="the cosine schedule ends at lr * min_lr_ratio; a negative value would be gradient ascent")
    if "gamma" in o:
        check_number(o["gamma"], name("gamma"), minimum=0, maximum=1, open_min=True,
                     fix="the step schedule multiplies lr by gamma every step_size steps (0.5 halves it)")
    if "warmup_steps" in o:
        top = o.get("max_steps") if isinstance(o.get("max_steps"), int) else None
        check_number(o["warmup_steps"], name("warmup_steps"), integer=True, minimum=0, maximum=top,
                     fix="a warm-up of at most max_steps steps (0: none)")
    if "weight_decay" in o:
        check_number(o["weight_decay"], name("weight_decay"), minimum=0)
    if o.get("grad_clip") is not None:
        check_number(o["grad_clip"], name("grad_clip"), minimum=0, fix="null or 0 disables clipping")
    if "ema_decay" in o:
        check_number(o["ema_decay"], name("ema_decay"), minimum=0, maximum=1, open_max=True,
                     fix="0 disables the average; 0.999 is usual")
    if "schedule" in o and o["schedule"] not in SCHEDULES:
        raise ConfigError(format_error(name("schedule"), f"one of {list(SCHEDULES)}", repr(o["schedule"])))
    if isinstance(o.get("weighting"), str) and o["weighting"] not in (*WEIGHTINGS, "auto"):
        raise ConfigError(format_error(name("weighting"), f"'auto', one of {sorted(WEIGHTINGS)} or a callable",
                                       repr(o["weighting"])))
    if o.get("t_range") is not None:
        tr = o["t_range"]
        if isinstance(tr, (str, bytes)) or not isinstance(tr, Sequence) or len(tr) != 2:
            raise ConfigError(format_error(name("t_range"), "two diffusion times [t_min, t_max]", repr(tr)))
        lo = check_number(tr[0], name("t_range"), minimum=0, open_min=True)
        hi = check_number(tr[1], name("t_range"), minimum=0)
        if not lo < hi:
            raise ConfigError(format_error(name("t_range"), "t_min < t_max", repr(list(tr))))
    if o.get("ema_rel_std") is not None:
        check_number(o["ema_rel_std"], name("ema_rel_std"), minimum=0, maximum=0.28, open_min=True, open_max=True,
                     fix="the averaging window as a fraction of the run, e.g. 0.05 or 0.1 (null: ema_decay)")
    if "val_draws" in o:
        check_number(o["val_draws"], name("val_draws"), integer=True, minimum=0,
                     fix="closure draws per validation item for the R^2/CRPS/spread-skill scores (0: none)")
    if "time_law" in o:
        try:
            check_time_law(o["time_law"])
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("'time_law", f"'{name('time_law')}", 1)) from None
    if o.get("augment") is not None:
        try:
            resolve_augment(o["augment"])
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("'augment", f"'{name('augment')}", 1)) from None
    if "seed" in o:
        check_seed(o["seed"], name("seed"))
    if "device" in o and not isinstance(o["device"], torch.device):
        check_device(o["device"], name("device"))


def _check_law_options(model: Any, t_range: Any, weighting: Any, time_law: Any) -> None:
    """A closure law other than the diffusion model: it trains by its own ``loss(cond, u)``.

    Raises:
        ConfigError: the law has no ``loss`` method, or diffusion-only options are set
            (``t_range``, ``time_law``, ``weighting``).
    """
    if not callable(getattr(model, "loss", None)):
        raise ConfigError(format_error("model", "a ClosureModel or a closure law with a loss(cond, u) method",
                                       type(model).__name__, "add loss(cond, u) -> scalar to the law"))
    for key, value, default in (("t_range", t_range, None), ("weighting", weighting, "auto"),
                                ("time_law", check_time_law(time_law), {"type": "uniform"})):
        if value != default:
            raise ConfigError(format_error(key, f"the default for {type(model).__name__} (a diffusion-only option)",
                                           repr(value), f"remove {key}: the law trains by its own loss"))


def _join_process_group(device: str | torch.device) -> tuple[int, int, str | torch.device]:
    """``(world size, rank, device)``; joins the process group when launched by torchrun."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, device
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_world_size(), dist.get_rank(), device


def _global_mean(value: float, world: int, device: torch.device) -> float:
    """Mean of a per-rank scalar over the ranks (the value itself in one process)."""
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / world


def default_t_range(model: ClosureModel) -> tuple[float, float]:
    """``(t_min, t_max)`` visited by the model's default sampler (``[sde.eps, sde.T]`` if unknown)."""
    s = model.sampler
    t_max = getattr(s, "t_start", None)
    t_min = getattr(s, "t_end", None)
    return (model.sde.eps if t_min is None else float(t_min), model.sde.T if t_max is None else float(t_max))


def _collate_for(dataset: Any) -> Callable[[list[dict[str, Tensor]]], tuple[Tensor, Conditioning]]:
    fn = getattr(dataset, "collate", None)
    if callable(fn):
        return fn
    points = getattr(dataset, "obs_points", None)
    return lambda items: collate_closure(items, points)


def target_statistics(dataset: Any, channels: int, batch_size: int = 256,
                      max_items: int = 32768) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the dataset's targets (one streaming pass, float64).

    Datasets larger than ``max_items`` are estimated from ``max_items`` evenly spaced items
    (items are read one by one, and a full pass over a long record set costs minutes while the
    estimate's relative error is below a percent).

    Returns:
        ``(mean, std)``, each ``(channels,)`` float32; std is floored at ``1e-8``.
    """
    collate = _collate_for(dataset)
    n_items = len(dataset)
    if n_items > max_items:
        index = torch.linspace(0, n_items - 1, max_items).round().long().tolist()
    else:
        index = list(range(n_items))
    n, s1, s2 = 0, torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(index), batch_size):
        target, _ = collate([dataset[i] for i in index[start:start + batch_size]])
        if target.shape[1] != channels:
            raise ConfigError(format_error("dataset target", f"{channels} channels (the model's)",
                                           f"shape {tuple(target.shape[1:])} per item",
                                           "build the ClosureModel with channels= matching the data"))
        flat = target.double().transpose(0, 1).reshape(channels, -1)
        n += flat.shape[1]
        s1 += flat.sum(1)
        s2 += (flat**2).sum(1)
    mean = s1 / n
    std = (s2 / n - mean**2).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.float(), std.float()


def power_ema_exponent(rel_std: float) -> float:
    """Exponent ``gamma`` of the power-function EMA profile with relative std ``rel_std`` (Karras et al. 2024).

    The profile averages the weights of step ``tau <= t`` with density ``prop. tau^gamma``, whose std is
    ``rel_std * t``: ``rel_std = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))``, solved by bisection.
    """
    if not 0 < rel_std < 0.28:
        raise ConfigError(format_error("ema_rel_std", "a relative width in (0, 0.28), e.g. 0.05 or 0.1",
                                       repr(rel_std)))

    def width(g: float) -> float:
        return math.sqrt(g + 1) / ((g + 2) * math.sqrt(g + 3))

    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if width(mid) > rel_std else (lo, mid)
    return 0.5 * (lo + hi)


class EMA:
    """Exponential moving average of a module's floating and complex parameters.

    Spectral (Fourier-layer) weights are complex, so both kinds are averaged. Two profiles:

    * ``decay`` (default): ``shadow <- d shadow + (1 - d) param`` with
      ``d = min(decay, (1 + step) / (10 + step))`` (a short warm-up so early averages are not
      dominated by the initialisation). With ``decay = 0.999`` a run of a few hundred steps
      averages only its last ``~step / 9`` steps, and the full decay is reached only after
      thousands of steps.
    * ``rel_std`` (power-function profile, Karras et al. 2024, "Analyzing and improving the training
      dynamics of diffusion models"): ``d = (1 - 1 / step)^(gamma + 1)`` averages every past step with
      weight ``prop. tau^gamma``, a window whose width is a fixed fraction ``rel_std`` of the run
      so far, whatever its length: the right choice for short runs.

    Args:
        module: The module whose ``named_parameters`` are averaged.
        decay: Final decay rate of the default profile.
        rel_std: Relative width of the power-function profile (``None``: the default profile).
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999, rel_std: float | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(format_error("ema_decay", "a float in [0, 1)", repr(decay)))
        self.decay = float(decay)
        self.gamma = None if rel_std is None else power_ema_exponent(float(rel_std))
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters()
                       if p.is_floating_point() or p.is_complex()}

    def decay_at(self, step: int) -> float:
        """The decay ``d`` used by :meth:`update` at ``step`` (1-based: the steps taken so far)."""
        if self.gamma is not None:
            return (1.0 - 1.0 / max(step, 1)) ** (self.gamma + 1.0)
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Fold the current parameters of ``module`` into the average (decay from :meth:`decay_at`)."""
        d = self.decay_at(step)
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averaged weights into ``module``."""
        for k, p in module.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k])

    @torch.no_grad()
    def swap(self, module: torch.nn.Module) -> None:
        """Exchange the module's weights and the averages (call twice to undo)."""
        for k, p in module.named_parameters():
            if k in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[k])
                self.shadow[k].copy_(tmp)


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        steps: Optimisation steps done in total (including those before a resume).
        train_loss: Mean training loss over the last logging window.
        val_loss: Last validation loss (EMA weights), or ``None`` without validation data.
        history: One dict per logging point: ``step``, ``train_loss``, ``lr`` (and ``val_loss``).
        checkpoint: Directory of the final checkpoint, or ``None`` without ``checkpoint_dir``.
        seconds: Wall time of this call.
        resumed_from: Step the run resumed from (0 for a fresh run).
    """

    steps: int
    train_loss: float
    val_loss: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0
    resumed_from: int = 0


class Trainer:
    """Trainer of a :class:`~stochclosure.ClosureModel` (denoising score matching) or any closure law.

    A closure law other than the diffusion model (e.g. the ``gaussian`` and ``deterministic``
    laws of :mod:`stochclosure.closures.learned`, or a user's law) is trained by its own
    ``loss(cond, u) -> scalar`` with every other feature below (schedule, clipping, EMA,
    checkpoints, exact resume, validation scores of its draws); the diffusion-only options
    ``t_range``, ``time_law`` and ``weighting`` are refused for it, and it trains in one process.
    At the last step, a law with a coloured noise model fits it on the training residuals of the
    averaged weights (:meth:`fit_noise`), before the final validation and checkpoint.

    Args:
        model: The model; its score operator's parameters are trained (all parameters of another law).
        train_data: Dataset following the closure item protocol.
        val_data: Optional validation dataset.
        batch_size: Items per step.
        max_steps: Total optimisation steps.
        lr: Peak learning rate of Adam.
        schedule: ``"constant"``, ``"cosine"`` (to ``lr * min_lr_ratio``) or ``"step"`` (times
            ``gamma`` every ``step_size`` steps; the research code halves every 200 epochs).
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate of the cosine schedule, relative to ``lr`` (in ``[0, 1]``).
        step_size: Period of the step schedule.
        gamma: Factor of the step schedule (in ``(0, 1]``).
        weight_decay: Adam's L2 weight decay.
        grad_clip: Max global gradient norm (``None`` or 0 disables clipping).
        ema_decay: EMA decay (0 disables the average; the raw weights are then used).
        ema_rel_std: Width of the power-function EMA profile as a fraction of the run (e.g.
            0.05): an average that works for runs of any length (see :class:`EMA`); ``None``
            uses ``ema_decay``.
        t_range: ``(t_min, t_max)`` of the training times; default: the default sampler's range.
        time_law: Law of the training times in ``t_range`` (``"uniform"`` or ``{"type": "lognormal",
            "p_mean": -1.2, "p_std": 1.2}``, see :mod:`stochclosure.losses`).
        augment: Symmetry augmentation of every training batch (``None``, ``"d4"`` or a
            :class:`~stochclosure.data.augment.D4Augment` / its spec), one random element per item,
            drawn from the noise generator for the global batch (so resumes and data-parallel runs
            see the same elements).
        weighting: DSM weighting: ``"auto"`` uses the score operator's ``loss_weighting`` when it
            has one (preconditioned networks), else ``"sigma2"``; or any ``dsm_loss`` weighting.
        normalise_targets: Compute per-channel target mean/std on the training data at the start
            of a fresh run and store them in the model.
        seed: Seeds the data order and the diffusion noise (an integer in ``[0, 2**64)``).
        checkpoint_dir: The run folder the checkpoints go to (``None``: none are written); see
            :mod:`stochclosure.runs` for its rules (one writer, no overwrite, checked resume).
        checkpoint_every: Steps between checkpoints.
        keep_checkpoints: How many recent checkpoints to keep.
        val_every: Steps between validations (and logging points of the history).
        val_batches: Cap on validation batches (``None``: the whole set).
        val_draws: Closure draws per validation item (0: none): each validation then also scores
            the draws of the EMA model with :func:`stochclosure.metrics.offline_scores` (history keys
            ``val_r2``, ``val_crps``, ``val_spread_skill``, ``val_coverage``), not only the DSM loss.
        progress: Show a tqdm progress bar.
        device: Training device (checked to exist here).

    Every option is checked by :func:`check_trainer_options` before any work. The attribute
    :attr:`run_config` (a dict, empty by default) holds configuration blocks the trainer does not
    know (the command line puts ``data`` and ``seed`` there): it is stored in every checkpoint
    with the trainer's own options and the model's specs, and a resume compares all of them.

    Data-parallel training: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), the
    trainer joins the process group (gloo on CPU, NCCL on GPU, device ``cuda:LOCAL_RANK``), wraps
    the score operator in :class:`~torch.nn.parallel.DistributedDataParallel` and gives rank ``r``
    the ``r``-th slice of each global batch of ``batch_size`` items (``batch_size`` must divide by
    the number of processes), with the diffusion noise of the global batch drawn on every rank
    from the same seeded generator and sliced alike, so the averaged gradient, and therefore every
    step, equals the single-process one up to float rounding. Rank 0 writes the checkpoints.
    """

    def __init__(self, model: ClosureModel, train_data: Any, val_data: Any = None, *, batch_size: int = 32,
                 max_steps: int = 1000, lr: float = 1e-3, schedule: str = "cosine", warmup_steps: int = 0,
                 min_lr_ratio: float = 0.05, step_size: int = 1000, gamma: float = 0.5, weight_decay: float = 0.0,
                 grad_clip: float | None = 1.0, ema_decay: float = 0.999, ema_rel_std: float | None = None,
                 t_range: Sequence[float] | None = None, time_law: Any = "uniform", augment: Any = None,
                 weighting: Any = "auto", normalise_targets: bool = True, seed: int = 0,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500, keep_checkpoints: int = 2,
                 val_every: int = 250, val_batches: int | None = None, val_draws: int = 0, progress: bool = True,
                 device: str | torch.device = "cpu") -> None:
        check_trainer_options(
            {"batch_size": batch_size, "max_steps": max_steps, "lr": lr, "schedule": schedule,
             "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "step_size": step_size, "gamma": gamma,
             "weight_decay": weight_decay, "grad_clip": grad_clip, "ema_decay": ema_decay, "t_range": t_range,
             "weighting": weighting, "seed": seed, "checkpoint_every": checkpoint_every,
             "keep_checkpoints": keep_checkpoints, "val_every": val_every, "val_batches": val_batches,
             "device": device, "ema_rel_std": ema_rel_std, "time_law": time_law, "augment": augment,
             "val_draws": val_draws})
        diffusion = is_diffusion_model(model)
        if not diffusion:
            _check_law_options(model, t_range, weighting, time_law)
        if diffusion and t_range is not None and not float(t_range[1]) <= model.sde.T:
            raise ConfigError(format_error("t_range", f"0 < t_min < t_max <= T={model.sde.T} (the SDE's horizon)",
                                           repr(list(t_range))))
        if len(train_data) < 1:
            raise ConfigError(format_error("train_data", "a dataset with at least one item", "an empty dataset"))
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.batch_size, self.max_steps, self.lr = batch_size, max_steps, float(lr)
        self.schedule, self.warmup_steps, self.min_lr_ratio = schedule, int(warmup_steps), float(min_lr_ratio)
        self.step_size, self.gamma, self.grad_clip = step_size, float(gamma), grad_clip
        self.diffusion = diffusion
        self.t_range = (tuple(float(v) for v in t_range) if t_range is not None else default_t_range(model)) \
            if diffusion else None
        self.time_law = check_time_law(time_law)
        self.augment = resolve_augment(augment)
        self.val_draws = int(val_draws)
        if weighting == "auto" and diffusion:
            weighting = getattr(model.score, "loss_weighting", "sigma2")
        self.weighting = weighting
        self.normalise_targets, self.seed = bool(normalise_targets), int(seed)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if self.checkpoint_dir is not None and not diffusion:
            model_config(model)  # a law that cannot be checkpointed (unregistered) fails before any work
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.val_every, self.val_batches, self.progress = val_every, val_batches, bool(progress)
        self.world, self.rank, device = _join_process_group(device)
        if self.world > 1 and batch_size % self.world:
            raise ConfigError(format_error("batch_size", f"a multiple of the {self.world} processes",
                                           repr(batch_size), "every rank takes an equal slice of the global batch"))
        self.device = torch.device(device)
        self.model.to(self.device)
        trained = model.score if diffusion else model
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.net: Any = trained
        if self.world > 1 and not diffusion:
            raise ConfigError(format_error("WORLD_SIZE", "one process for a closure law other than ClosureModel",
                                           f"{self.world} processes", "train this law in a single process"))
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model.score, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr, weight_decay=weight_decay)
        self.ema = EMA(model, ema_decay, ema_rel_std) if (ema_decay > 0 or ema_rel_std is not None) else None
        self.noise_gen = torch.Generator().manual_seed(self.seed)
        self.run_config: dict[str, Any] = {}
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._window = [0.0, 0]
        self._collate = _collate_for(train_data)
        self.last_checkpoint: Path | None = None
        self.config = {"batch_size": batch_size, "max_steps": max_steps, "lr": lr, "schedule": schedule,
                       "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "step_size": step_size,
                       "gamma": gamma, "weight_decay": weight_decay, "grad_clip": grad_clip, "ema_decay": ema_decay,
                       "t_range": None if self.t_range is None else list(self.t_range), "seed": seed,
                       "weighting": weighting if isinstance(weighting, str) else "auto"}
        # options added later are recorded only when set, so runs from before them resume unchanged
        extra = {"ema_rel_std": ema_rel_std, "time_law": None if self.time_law == {"type": "uniform"} else self.time_law,
                 "augment": None if self.augment is None else self.augment.spec(),
                 "val_draws": self.val_draws or None}
        self.config.update({k: v for k, v in extra.items() if v is not None})

    # -- schedule and data ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate used for optimisation step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "step":
            return self.lr * self.gamma ** (step // self.step_size)
        span = max(1, self.max_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def _steps_per_epoch(self) -> int:
        return max(1, len(self.train_data) // self.batch_size)

    def batch_indices(self, step: int) -> Tensor:
        """Dataset indices of step ``step``: a seeded permutation per epoch, so resuming needs no state."""
        n = len(self.train_data)
        epoch, pos = divmod(step, self._steps_per_epoch())
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch,
                                                                                    scale=1_000_003)))
        b = min(self.batch_size, n)
        return perm[pos * b:(pos + 1) * b]

    def _batch(self, dataset: Any, idx: Sequence[int], collate: Callable[..., Any]) -> tuple[Tensor, Conditioning]:
        target, cond = collate([dataset[int(i)] for i in idx])
        return target.to(self.device), cond.to(self.device)

    def _loss(self, target: Tensor, cond: Conditioning, gen: torch.Generator, net: Any = None,
              shard: tuple[int, int, int] | None = None) -> Tensor:
        # inputs are checked before the network: an FFT would spread one NaN pixel over the sample
        check_finite("target", target)
        cond.validate()
        if not self.diffusion:
            return self.model.loss(None if cond.is_empty() else cond, target)
        x0 = self.model.normalise(target)
        c = None if cond.is_empty() else cond
        t = z = None
        if shard is not None:  # this rank's slice of the noise the single-process run draws for the global batch
            lo, hi, total = shard
            t = sample_times(self.model.sde, total, self.t_range, law=self.time_law, generator=gen, dtype=x0.dtype,
                             device=x0.device)
            z = torch.randn((total, *x0.shape[1:]), generator=gen, dtype=x0.dtype).to(x0.device)
            t, z = t[lo:hi], z[lo:hi]
        return dsm_loss(self.model.score if net is None else net, self.model.sde, x0, c, t_range=self.t_range,
                        weighting=self.weighting, generator=gen, t=t, z=z, time_law=self.time_law)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean DSM loss on the validation set with the EMA weights and fixed noise (seed + 1).

        With ``val_draws > 0`` the same batches are also scored by drawing closures from the EMA
        model (fixed seed): :attr:`last_val_scores` then holds ``val_r2``, ``val_crps``,
        ``val_energy``, ``val_spread_skill`` and ``val_coverage`` (80 % interval).
        """
        self.last_val_scores: dict[str, float] = {}
        if self.val_data is None or len(self.val_data) == 0:
            return None
        collate = _collate_for(self.val_data)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, 1))
        draw_gen = torch.Generator().manual_seed(derive_seed(self.seed, 2))
        was_training = self.model.training
        self.model.eval()
        if self.ema is not None:
            self.ema.swap(self.model)
        draws: list[Tensor] = []
        truths: list[Tensor] = []
        try:
            total, count = 0.0, 0
            for j, start in enumerate(range(0, len(self.val_data), self.batch_size)):
                if self.val_batches is not None and j >= self.val_batches:
                    break
                idx = range(start, min(len(self.val_data), start + self.batch_size))
                target, cond = self._batch(self.val_data, idx, collate)
                total += float(self._loss(target, cond, gen)) * len(idx)
                count += len(idx)
                if self.val_draws:
                    draws.append(self._draws(target, cond, draw_gen))
                    truths.append(target.cpu())
        finally:
            if self.ema is not None:
                self.ema.swap(self.model)
            self.model.train(was_training)
        if draws:
            from .metrics import offline_scores

            scores = offline_scores(torch.cat(draws, 1), torch.cat(truths, 0))
            self.last_val_scores = {f"val_{k}": v for k, v in scores.items()}
        return total / count

    def _draws(self, target: Tensor, cond: Conditioning, gen: torch.Generator) -> Tensor:
        """``val_draws`` closures per validation item, ``(val_draws, B, C, *grid)`` on the CPU."""
        c = None if cond.is_empty() else cond
        grid = tuple(target.shape[2:])
        if self.diffusion:
            return self.model.sample(c, n=self.val_draws, generator=gen, grid=grid, dtype=target.dtype).cpu()
        return self.model.sample(Conditioning() if c is None else c, n=self.val_draws, generator=gen,
                                 grid=grid).to(target.dtype).cpu()

    @torch.no_grad()
    def fit_noise(self, max_items: int = 4096) -> None:
        """Fit a law's noise model on the training residuals of the averaged weights (end of a run).

        Calls ``model.fit_spectrum(cond, u)`` (a :class:`~stochclosure.closures.learned.GaussianClosure`
        with ``noise="coloured"``) on up to ``max_items`` evenly spaced training items; the fitted
        buffer is part of the final checkpoint. Other models are left as they are.
        """
        fit = getattr(self.model, "fit_spectrum", None)
        if self.diffusion or fit is None or getattr(self.model, "noise", None) != "coloured":
            return
        n = len(self.train_data)
        index = torch.linspace(0, n - 1, min(n, max_items)).round().long().tolist()
        target, cond = self._batch(self.train_data, index, self._collate)
        if self.ema is not None:
            self.ema.swap(self.model)
        try:
            fit(None if cond.is_empty() else cond, target)
        finally:
            if self.ema is not None:
                self.ema.swap(self.model)

    # -- checkpoints ------------------------------------------------------------------------------
    def _optimizer_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        sd = self.optimizer.state_dict()
        tensors: dict[str, Tensor] = {}
        scalars: dict[str, Any] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, Tensor):
                    tensors[f"state.{idx}.{k}"] = v
                else:
                    scalars[f"{idx}.{k}"] = v
        return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}

    def save_checkpoint(self) -> Path:
        """Write a training checkpoint ``step-XXXXXXXX`` and point ``latest`` at it (atomically)."""
        from .checkpoint import atomic_write_bytes

        assert self.checkpoint_dir is not None
        opt_tensors, opt_json = self._optimizer_tensors()
        rng = {"noise": self.noise_gen.get_state(), "torch": torch.get_rng_state()}
        files: dict[str, Any] = {MODEL_FILE: self.model.state_dict(), OPTIM_FILE: opt_tensors, RNG_FILE: rng}
        if self.ema is not None:
            files[EMA_FILE] = self.ema.shadow
        trainer_state = {"step": self.step, "history": self.history, "window": self._window, "optimizer": opt_json,
                         "config": self.config, "run": self.run_config}
        name = f"step-{self.step:08d}"
        path = write_checkpoint_dir(self.checkpoint_dir / name, self.model, files, {"trainer": trainer_state})
        atomic_write_bytes(self.checkpoint_dir / LATEST, name.encode())
        self.last_checkpoint = path
        old = sorted(p for p in self.checkpoint_dir.glob("step-*") if p.is_dir() and p.name != name)
        for p in old[:max(0, len(old) - (self.keep_checkpoints - 1))]:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        return path

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest`` points at, or ``None`` when there is none.

        Raises:
            CheckpointError: ``latest`` names anything but a checkpoint inside ``checkpoint_dir``
                (see :func:`stochclosure.runs.latest_checkpoint`).
        """
        if self.checkpoint_dir is None:
            return None
        return latest_checkpoint(self.checkpoint_dir)

    def run_configuration(self) -> dict[str, Any]:
        """The configuration stored in every checkpoint and compared on resume.

        ``{"model": registry specs, "trainer": the trainer's options, **run_config}``, where
        :attr:`run_config` holds the blocks the trainer does not know (the command line records
        ``data`` and ``seed`` there).
        """
        return {"model": model_config(self.model), "trainer": dict(self.config), **self.run_config}

    def check_resume(self, path: str | Path, allow_change: bool = False) -> dict[str, Any]:
        """Compare the configuration stored in checkpoint ``path`` with this trainer's.

        Args:
            path: The checkpoint to resume from.
            allow_change: Accept a changed configuration (recorded in the run folder's history).

        Returns:
            The accepted changes, ``{dotted key: (old, new)}`` (recorded by :meth:`fit` once the
            checkpoint is loaded).

        Raises:
            CheckpointError: a checkpoint of another model (the message lists the differing keys).
            ConfigError: a changed trainer or run configuration without ``allow_change``.
        """
        path = Path(path)
        cfg = read_config(path)
        mine = self.run_configuration()
        if cfg["model"] != mine["model"]:
            diff = config_changes({"model": cfg["model"]}, {"model": mine["model"]})
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(format_error(str(path), f"a checkpoint of this model ({mine['model']})",
                                               f"one of {cfg['model']} (differences: {listed})",
                                               "resume with the configuration the run started with"))
        state = cfg.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(format_error(str(path), "a training checkpoint (with trainer state)",
                                               "a model-only checkpoint", "start a fresh run, or load it with load_model"))
        old = {"model": cfg["model"], "trainer": state.get("config", {}), **(state.get("run") or {})}
        return check_resume_config(path.parent, old, mine, allow_change=allow_change, flag=self._allow_flag)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, EMA, optimizer, step, history and random states from ``path``.

        Raises:
            CheckpointError: unreadable checkpoint, or one written for a different model.
        """
        path = Path(path)
        cfg = read_config(path)
        if cfg["model"] != model_config(self.model):
            raise CheckpointError(format_error(str(path), f"a checkpoint of this model ({model_config(self.model)})",
                                               f"one of {cfg['model']}",
                                               "resume with the configuration the run started with"))
        state = cfg.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(format_error(str(path), "a training checkpoint (with trainer state)",
                                               "a model-only checkpoint", "start a fresh run, or load it with load_model"))
        files = cfg["files"]
        self.model.load_state_dict(load_tensors(path / MODEL_FILE, files.get(MODEL_FILE)))
        if self.ema is not None:
            if EMA_FILE not in files:
                raise CheckpointError(format_error(str(path), "EMA weights (ema_decay > 0)", "none stored"))
            self.ema.shadow = {k: v.to(self.device) for k, v in load_tensors(path / EMA_FILE, files[EMA_FILE]).items()}
        opt_t = load_tensors(path / OPTIM_FILE, files.get(OPTIM_FILE))
        opt_j = state["optimizer"]
        st: dict[int, dict[str, Any]] = {}
        for key, v in opt_t.items():
            _, idx, k = key.split(".", 2)
            st.setdefault(int(idx), {})[k] = v
        for key, v in opt_j["scalars"].items():
            idx, k = key.split(".", 1)
            st.setdefault(int(idx), {})[k] = v
        self.optimizer.load_state_dict({"state": st, "param_groups": opt_j["param_groups"]})
        rng = load_tensors(path / RNG_FILE, files.get(RNG_FILE))
        self.noise_gen.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self._window = list(state["window"])
        self.last_checkpoint = path

    # -- the loop ---------------------------------------------------------------------------------
    _allow_flag = "allow_config_change=True"  # how a caller accepts a change; the command line names its flag

    def fit(self, resume: bool = False, *, allow_config_change: bool = False) -> TrainResult:
        """Train to ``max_steps`` (continuing from the latest checkpoint when ``resume``).

        The checkpoint folder is locked for the whole call (a second process gets an
        :class:`~stochclosure.errors.OutputError` at once), a fresh run refuses a folder that holds
        another run, and a resume compares the stored configuration with this trainer's (see
        :mod:`stochclosure.runs`; ``max_steps`` may grow). After the call the model holds the EMA
        weights (the raw ones stay in the checkpoint).

        Args:
            resume: Continue from the checkpoint ``latest`` names (start fresh when there is none).
            allow_config_change: Resume even if the configuration changed; the changes are
                recorded in ``checkpoint_dir/run-history.jsonl``.

        Raises:
            OutputError: the folder is locked by another process, or holds a run and ``resume`` is false.
            ConfigError: a resume with a changed configuration and ``allow_config_change`` false.
            CheckpointError: a ``latest`` pointing outside the folder, or a checkpoint of another model.
            NonFiniteError: when the loss or the gradient becomes NaN/inf; the last good checkpoint is
                kept untouched.
        """
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            if self.checkpoint_dir is not None:
                preflight_output(self.checkpoint_dir, "checkpoint_dir", is_dir=True)
                if self.rank == 0:
                    stack.enter_context(run_lock(self.checkpoint_dir, "checkpoint_dir"))
                check_run_folder(self.checkpoint_dir, resume, "checkpoint_dir", "fit(resume=True)")
            return self._fit(resume, allow_config_change, t0)

    def _fit(self, resume: bool, allow_config_change: bool, t0: float) -> TrainResult:
        from tqdm.auto import tqdm

        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            changes = self.check_resume(latest, allow_config_change)
            self.load_checkpoint(latest)
            if self.rank == 0:
                record_changes(latest.parent, latest, changes, self.step)
        elif self.normalise_targets and hasattr(self.model, "target_mean"):
            mean, std = target_statistics(self.train_data, self.model.channels)
            self.model.target_mean.copy_(mean)
            self.model.target_std.copy_(std)
        resumed_from = self.step
        self.model.train()
        val = None
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.progress or self.rank > 0, desc="train",
                   leave=False)
        try:
            while self.step < self.max_steps:
                lr = self.lr_at(self.step)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                idx = self.batch_indices(self.step)
                shard = None
                if self.world > 1:
                    per = len(idx) // self.world
                    shard = (self.rank * per, (self.rank + 1) * per, len(idx))
                # elements of the global batch, drawn on every rank alike, then sliced like the items
                elements = self.augment.draw(len(idx), self.noise_gen) if self.augment is not None else None
                if shard is not None:
                    idx = idx[shard[0]:shard[1]]
                    elements = None if elements is None else elements[shard[0]:shard[1]]
                target, cond = self._batch(self.train_data, idx.tolist(), self._collate)
                if self.augment is not None:
                    target, cond = self.augment(target, cond, elements=elements)
                loss = self._loss(target, cond, self.noise_gen, self.net, shard)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DistributedDataParallel averages the gradients over the ranks here
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip else float("inf"))
                loss_value = _global_mean(float(loss.detach()), self.world, self.device)
                if not (math.isfinite(loss_value) and math.isfinite(float(gnorm))):
                    kept = f"the last good checkpoint {self.last_checkpoint} is kept" if self.last_checkpoint \
                        else "no checkpoint was written yet"
                    raise NonFiniteError(format_error(
                        "loss", "a finite training loss and gradient",
                        f"loss {loss_value} and gradient norm {float(gnorm)} at step {self.step} (lr {lr:.3g})",
                        f"lower lr, enable grad_clip or check the data for NaN/inf; {kept}"))
                self.optimizer.step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, self.step)
                if self.step == self.max_steps:
                    self.fit_noise()
                self._window = [self._window[0] + loss_value, self._window[1] + 1]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if self.step % self.val_every == 0 or self.step == self.max_steps:
                    val = self.validate()
                    row = {"step": self.step, "train_loss": self._window[0] / max(1, self._window[1]), "lr": lr}
                    if val is not None:
                        row["val_loss"] = val
                        row.update(self.last_val_scores)
                    self.history.append(row)
                    self._window = [0.0, 0]
                if self.checkpoint_dir is not None and (self.step % self.checkpoint_every == 0
                                                        or self.step == self.max_steps):
                    if self.rank == 0:
                        self.save_checkpoint()
                    else:
                        self.last_checkpoint = self.checkpoint_dir / f"step-{self.step:08d}"
                    if self.world > 1:
                        torch.distributed.barrier()
        finally:
            bar.close()
        if self.ema is not None:
            self.ema.copy_to(self.model)
        self.model.eval()
        last = self.history[-1] if self.history else {"train_loss": float("nan")}
        return TrainResult(steps=self.step, train_loss=float(last["train_loss"]), val_loss=last.get("val_loss", val),
                           history=list(self.history), checkpoint=self.last_checkpoint,
                           seconds=time.perf_counter() - t0, resumed_from=resumed_from)
