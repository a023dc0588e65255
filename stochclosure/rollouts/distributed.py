"""Ensembles sharded across processes with ``torch.distributed`` and gathered on every rank.

``torchrun --standalone --nproc_per_node N script.py`` where the script calls
:func:`distributed_ensemble`: rank ``r`` runs a contiguous slice of the members and the states
(and closures) are all-gathered, so every rank returns the whole ensemble.

The members are the ones a single-process ``ensemble(..., seed=seed)`` runs: the member keys
(site ``member_seed``) are drawn for the whole ensemble exactly as that call draws them, each rank
conditions its slice on its keys, and every later draw of a member comes from generators keyed by
its key (``keyed=True``). Members therefore agree with the single-process run up to float
rounding of batched kernels (a different batch size may change the last bits).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pyro import poutine
from torch import Tensor

from ..errors import ConfigError, format_error
from .core import ensemble, rollout
from .result import RolloutResult

__all__ = ["distributed_ensemble", "member_slice"]


def member_slice(members: int, world: int, rank: int) -> tuple[int, int]:
    """``(lo, hi)``: the members of ``rank`` when ``members`` are split as evenly as possible."""
    base, extra = divmod(members, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _gather_members(x: Tensor, axis: int, sizes: list[int]) -> Tensor:
    """All-gather ``x`` along ``axis`` where rank ``r`` holds ``sizes[r]`` entries (padded to the max)."""
    import torch.distributed as dist

    most = max(sizes)
    pad = list(x.shape)
    pad[axis] = most - x.shape[axis]
    padded = torch.cat([x, x.new_zeros(pad)], axis).contiguous() if pad[axis] else x.contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(axis, 0, n) for p, n in zip(parts, sizes)], axis)


def distributed_ensemble(system: Any, closure: Any, state0: Tensor, n_steps: int, members: int, *, seed: int,
                         **kwargs: Any) -> RolloutResult:
    """:func:`~stochclosure.rollouts.ensemble` with the members sharded across ``torch.distributed`` ranks.

    Joins the process group from the ``torchrun`` environment when it is not initialised yet
    (gloo on CPU, NCCL for CUDA states); in a single process it is :func:`ensemble`.

    Args:
        system: The reduced solver.
        closure: The closure (see :func:`~stochclosure.rollouts.rollout`).
        state0: ``(C, *spatial)`` or ``(B, C, *spatial)`` initial state(s).
        n_steps: Solver steps.
        members: Ensemble size (at least the number of ranks).
        seed: Seeds the ensemble; the same seed gives the members of ``ensemble(..., seed=seed)``.
        **kwargs: Other :func:`~stochclosure.rollouts.rollout` arguments (``keyed`` must stay True).

    Returns:
        The whole ensemble on every rank (``trace`` is ``None``: each rank traced only its slice);
        ``step_seconds`` are the slowest rank's.

    Raises:
        ConfigError: ``keyed=False``, fewer members than ranks, or a missing seed.
    """
    import torch.distributed as dist

    if not kwargs.get("keyed", True):
        raise ConfigError(format_error("keyed", "True for a sharded ensemble", "False",
                                       "keyed per-member streams make a member independent of its shard"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(format_error("seed", "an integer (every rank must draw the same member keys)", repr(seed)))
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if state0.is_cuda else "gloo")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ensemble(system, closure, state0, n_steps, members, seed=seed, **kwargs)
    world, rank = dist.get_world_size(), dist.get_rank()
    if isinstance(members, bool) or not isinstance(members, int) or members < world:
        raise ConfigError(format_error("members", f"an integer >= the {world} ranks", repr(members),
                                       "run fewer processes or more members"))
    site = kwargs.get("prefix", "") + "member_seed"
    # the keys ensemble(seed=seed) draws: the same program, zero steps
    keys = poutine.trace(poutine.seed(rollout, rng_seed=seed)).get_trace(
        system, closure, state0, 0, members=members, **kwargs).nodes[site]["value"]
    lo, hi = member_slice(members, world, rank)
    part = poutine.seed(poutine.condition(rollout, data={site: keys[lo:hi]}), rng_seed=seed)(
        system, closure, state0, n_steps, members=hi - lo, **kwargs)
    sizes = [b - a for a, b in (member_slice(members, world, r) for r in range(world))]
    axis = part.axis(part.member_dim)  # the member axis of states; closures lack the time axis
    states = _gather_members(part.states, axis, sizes)
    closures: dict[int, Tensor] = {}
    if part.closures:
        steps = sorted(part.closures)
        stacked = _gather_members(torch.stack([part.closures[s] for s in steps]), axis, sizes)
        closures = dict(zip(steps, stacked.unbind(0)))
    seconds = part.step_seconds.clone()
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    nonfinite_step, finite = _gather_nonfinite(part, axis - 1, sizes)
    return RolloutResult(states=states, times=part.times, steps=part.steps, step_seconds=seconds,
                         batch_dims=part.batch_dims, event_dims=part.event_dims, member_dim=part.member_dim,
                         closures=closures, trace=None, nonfinite_step=nonfinite_step, finite_members=finite)


def _gather_nonfinite(part: RolloutResult, axis: int, sizes: list[int]) -> tuple[int | None, Tensor | None]:
    """The earliest non-finite step over the ranks and the whole ensemble's finite mask (``on_nonfinite='mark'``)."""
    import torch.distributed as dist

    none = 2**62
    step = torch.tensor([none if part.nonfinite_step is None else part.nonfinite_step], dtype=torch.int64,
                        device=part.states.device)
    dist.all_reduce(step, op=dist.ReduceOp.MIN)
    if int(step[0]) == none:
        return None, None
    batch = tuple(part.states.shape[1:1 + len(part.batch_dims)])
    mine = torch.ones(batch, dtype=torch.bool) if part.finite_members is None else part.finite_members
    return int(step[0]), _gather_members(mine.to(torch.uint8).to(part.states.device), axis, sizes).bool()
