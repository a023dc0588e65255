"""Small pyro Messengers that make common rollout variations one line.

Each is a context manager and a decorator, composes with pyro's own handlers and, like them,
acts on everything run inside it::

    with sc.rollout.resample_every(5), sc.rollout.deterministic_closure(k=8):
        result = sc.rollout.ensemble(system, model, v0, 100, members=16)

Option handlers (:func:`resample_every`, :func:`hold_between`, :func:`no_closure`,
:func:`perturb_initial`) override the matching :func:`~stochclosure.rollout.rollout` argument;
the innermost handler wins. :func:`deterministic_closure` rewrites the closure sites' laws.
"""

from __future__ import annotations

from typing import Any

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message, effectful

from ..distributions import ClosureDistribution
from ..errors import ConfigError, format_error

__all__ = ["RolloutOptions", "DeterministicClosure", "rollout_option", "resample_every", "hold_between", "no_closure",
           "perturb_initial", "deterministic_closure"]


@effectful(type="rollout_option")
def rollout_option(key: str, default: Any) -> Any:
    """The value of rollout option ``key``: ``default`` unless an enclosing handler overrides it."""
    return default


class RolloutOptions(Messenger):
    """Override rollout options (``resample_every``, ``between``, ``closure``, ``init_perturbation``).

    Args:
        **options: Option values by name.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def _pyro_rollout_option(self, msg: Message) -> None:
        key = msg["args"][0]
        if key in self.options:
            msg["value"] = self.options[key]
            msg["done"] = True
            msg["stop"] = True


class DeterministicClosure(Messenger):
    """Make every closure site a deterministic function of its condition.

    Each closure is the mean of ``k`` draws made with the *same* noise for all batch members
    (a generator seeded with ``seed``), so equal conditions give equal closures; ``k = 1`` is a
    single frozen draw, large ``k`` approaches the conditional mean ``E[U | y]``.

    Args:
        k: Draws averaged.
        seed: Seed of the frozen noise.
    """

    def __init__(self, k: int = 1, seed: int = 0) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(format_error("k", "a positive integer", repr(k)))
        self.k, self.seed = k, int(seed)

    def _pyro_sample(self, msg: Message) -> None:
        fn = msg["fn"]
        if msg["infer"].get("closure") and isinstance(fn, ClosureDistribution) and not msg["is_observed"]:
            msg["fn"] = fn.with_options(frozen_seed=self.seed, average=self.k, seeds=None, init_noise=None)


def resample_every(n: int) -> RolloutOptions:
    """Draw a fresh closure every ``n`` solver steps (what happens in between: ``between``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(format_error("n", "a positive integer", repr(n)))
    return RolloutOptions(resample_every=n)


def hold_between(policy: Any) -> RolloutOptions:
    """Use ``policy`` (``Hold()``, ``ClosureAR1(...)``, ``NoiseAR1(...)``) between fresh draws."""
    return RolloutOptions(between=policy)


def no_closure() -> RolloutOptions:
    """Run the reduced solver without any closure term (the no-closure baseline)."""
    return RolloutOptions(closure=False)


def perturb_initial(std: float) -> RolloutOptions:
    """Add ``std`` times standard-normal noise to every member's initial state."""
    return RolloutOptions(init_perturbation=float(std))


def deterministic_closure(k: int = 1, seed: int = 0) -> DeterministicClosure:
    """Handler form of :class:`DeterministicClosure`."""
    return DeterministicClosure(k, seed)
