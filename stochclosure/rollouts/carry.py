"""``RolloutCarry``: everything the rollout loop carries from one solver step to the next.

One typed object instead of loose dicts: :func:`~stochclosure.rollouts.rollout` builds it,
passes it to ``on_step`` after every step and continues from one (``start=``);
:mod:`stochclosure.rollouts.resume` serialises and deserialises it in one place.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from torch import Tensor

__all__ = ["PolicyState", "RolloutCarry"]


@dataclass
class PolicyState:
    """The state of a between-draw policy.

    Attributes:
        held: The closure drawn last ``(*batch, C, *grid)`` (``None`` before the first draw).
        memory: The policy's own tensors by name (``"e"``: the AR(1) closure perturbation,
            ``"z"``: the AR(1) latent); a value may be ``None`` before it is first set.
    """

    held: Tensor | None = None
    memory: dict[str, Tensor | None] = field(default_factory=dict)


@dataclass
class RolloutCarry:
    """What one solver step hands the next.

    Attributes:
        step: Solver steps done.
        state: ``(*batch, C, *spatial)`` current state.
        past: Earlier states kept for the condition (oldest first, at most ``history``).
        policy: The between-draw policy's state.
        records: Recorded states so far, each ``(*batch, C, *spatial)``.
        rec_steps: Solver step of each record.
        closures: Closure terms drawn so far, ``{step: (*batch, C, *grid)}``.
        seconds: Wall-clock seconds of each step so far.
        finite: ``(*batch)`` bool, members still finite (``on_nonfinite="mark"``), or ``None``.
        nonfinite_step: First step after which some member was non-finite, or ``None``.
    """

    step: int
    state: Tensor
    past: deque[Tensor] = field(default_factory=deque)
    policy: PolicyState = field(default_factory=PolicyState)
    records: list[Tensor] = field(default_factory=list)
    rec_steps: list[int] = field(default_factory=list)
    closures: dict[int, Tensor] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    finite: Tensor | None = None
    nonfinite_step: int | None = None

    @classmethod
    def initial(cls, state: Tensor, step: int = 0) -> RolloutCarry:
        """The carry at ``step`` with ``state`` recorded and nothing drawn yet."""
        return cls(step=step, state=state, records=[state], rec_steps=[step])

    def continued(self, state: Tensor) -> RolloutCarry:
        """This carry with ``state`` replaced (e.g. by an analysis) and the records restarted there.

        The policy state and history go on, so a closure's memory in time survives the change.
        """
        return replace(self, state=state, past=deque(self.past), records=[state], rec_steps=[self.step],
                       closures={}, seconds=[])
