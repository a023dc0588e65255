"""Rows of the bad-input battery: input guards of the public API and commands (precision, generators, seeds, memory).

Cases of the hostile-user list that other areas already cover are named in :data:`COVERED_ELSEWHERE`
(each name is a row of another ``cases_*`` module; ``tests/test_input_guards.py`` checks that they
exist and that their entry points match), so the report lists every case once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stochclosure import errors as E
from stochclosure._types import Conditioning

from .base import BadInput, Context, gen_cli, sample

C = BadInput
_HUGE = 10**12  # members / samples no machine holds: 10**12 states of 16^2 float32 are 1 PB
_NO_DEVICE = "cuda:99"  # missing on a CPU-only torch and on any machine with fewer than 100 GPUs

COVERED_ELSEWHERE: dict[str, str] = {
    "int8 checkpoint weights load and give NaN samples": "ckpt_int8_weights",
    "NaN normalisation statistics in a checkpoint": "ckpt_nan_mean",
    "inf normalisation statistics in a checkpoint": "ckpt_inf_std",
    "a weight file linked to a file outside the checkpoint folder": "ckpt_link_outside",
    "an SDE swapped for another in config.json": "ckpt_swapped_sde",
    "HDF5 split labels out of range": "h5_split_out_of_range",
    "HDF5 split array of the wrong length": "h5_split_wrong_length",
    "HDF5 target dataset shorter than the state": "h5_target_shorter",
    "deeply nested JSON in a checkpoint": "ckpt_deep_json",
    "deeply nested JSON in an HDF5 attribute": "h5_deep_json",
    "normalisation values that are strings (checkpoint)": "ckpt_string_std",
    "normalisation values that are null (checkpoint)": "ckpt_null_mean",
    "normalisation values that are strings (HDF5)": "h5_string_statistics",
    "a missing obs_points dataset": "h5_missing_obs_points",
    "fewer state trajectories than targets": "h5_fewer_states",
    "empty closures": "gen_empty_closures",
    "empty resolutions": "gen_empty_resolutions",
    "a negative seed (Trainer)": "runs_seed_negative",
    "--device on a torch without that device (train)": "cli_train_device_missing",
    "stochclosure demo --horizon 0": "cli_demo_horizon_zero",
    "distill with non-numeric levels": "cli_distill_levels_text",
    "train with a seed above 2**64": "cli_train_seed_too_large",
    "distill --config data.path escaping the config's folder": "cli_distill_path_escape",
}
"""Case of the hostile-user list -> the row (in another module) that covers it."""


def _half(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"fields": torch.randn(2, 1, 16, 16, generator=g).to(dtype),
            "obs_values": torch.randn(2, 1, 16, generator=g).to(dtype)}


def _fno_model(c: Context) -> Any:
    from stochclosure.model import ClosureModel

    return ClosureModel("vp", c.fno, {"type": "euler_maruyama", "steps": 2})


def _half_dataset(c: Context) -> Any:
    from stochclosure.data import TensorClosureDataset

    return TensorClosureDataset(torch.randn(4, 1, 16, 16), fields=torch.randn(4, 1, 16, 16).half())


def _system(name: str, **kw: Any) -> Any:
    from stochclosure.registry import resolve

    return resolve("system", {"type": name, **kw})


def _sampler_check(seed: Any) -> Any:
    from stochclosure.sampler_check import run_sampler_check

    return run_sampler_check(n=4, batch=2, seed=seed)


def _demo(c: Context, name: str, **kw: Any) -> Any:
    from stochclosure.demo import run_demo

    return run_demo(c.folder / name, progress=False, **kw)


def _rank_histogram(generator: Any) -> Any:
    from stochclosure.metrics import rank_histogram

    return rank_histogram(torch.zeros(4, 3), torch.zeros(3), generator=generator)


def _rollout_cli(c: Context, name: str, **changes: Any) -> list[str]:
    return ["rollout", "--config", str(c.rollout_config(name, **changes)), "--no-progress"]


L96 = "system: {K: 8, J: 16}\ntrajectories: 2\nbatch_size: 1\nrecords: 2\nspinup_steps: 2\nobs_grid: 4\n"
_L96_HUGE = L96.replace("trajectories: 2", f"trajectories: {2**31 - 1}").replace("batch_size: 1", f"batch_size: {2**31 - 1}")


def _api_ensemble_huge(c: Context) -> Any:
    import stochclosure as sc
    from stochclosure.systems.linear import LinearRelaxation

    system = LinearRelaxation(n=8)
    return sc.ensemble(system, None, torch.zeros(1, 8, 8), 4, members=_HUGE)


def _api_sample_huge(c: Context) -> Any:
    import stochclosure as sc

    model = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, {"type": "euler_maruyama", "steps": 2})
    return model.sample(sc.Conditioning(), n=_HUGE, grid=(64, 64))


def _generate_huge(c: Context, name: str) -> Any:
    from stochclosure.data.generate import generate, load_config

    return generate("lorenz96", load_config(c.path(name + ".yaml", _L96_HUGE)), c.folder / name, progress=False)

CASES: list[BadInput] = [
    # -- half-precision conditions ---------------------------------------------------------------------------------
    C("guards_fp16_condition", "ClosureModel.sample", "float16 cond.fields and cond.obs_values", E.DTypeError,
      "cond.fields", lambda c: sample(c, c.cond(**_half(torch.float16)))),
    C("guards_bf16_condition_fno", "ClosureModel.sample (FNO score)", "bfloat16 cond.fields and cond.obs_values",
      E.DTypeError, "cond.fields", lambda c: _fno_model(c).sample(c.cond(**_half(torch.bfloat16)))),
    C("guards_fp16_score_forward", "FNOScore.forward", "a float16 condition", E.DTypeError, "cond.fields",
      lambda c: c.fno(torch.randn(2, 1, 16, 16), torch.full((2,), 0.5), c.cond(**_half(torch.float16)))),
    C("guards_fp16_field_encoder", "FieldEncoder", "float16 cond.fields", E.DTypeError, "cond.fields",
      lambda c: c.fno.encoder(Conditioning(fields=torch.randn(2, 1, 16, 16).half()), (16, 16))),
    C("guards_bf16_sparse_encoder", "SparseInterpEncoder", "bfloat16 cond.obs_values", E.DTypeError,
      "cond.obs_values", lambda c: __import__("stochclosure").resolve("encoder", "sparse_interp")(
          c.cond(obs_values=torch.randn(2, 1, 16).bfloat16()), (16, 16))),
    C("guards_fp16_training_data", "TensorClosureDataset", "float16 conditioning fields", E.DTypeError,
      "cond.fields", _half_dataset),
    # -- generators ------------------------------------------------------------------------------------------------
    C("guards_generator_int", "ClosureModel.sample", "generator=42 (a seed, not a torch.Generator)",
      E.ConfigError, "'generator'", lambda c: sample(c, c.cond(), generator=42)),
    C("guards_generator_numpy", "ClosureModel.sample", "generator=numpy.random.default_rng(0)", E.ConfigError,
      "'generator'", lambda c: sample(c, c.cond(), generator=np.random.default_rng(0))),
    C("guards_generator_ns_initial", "NavierStokes2D.initial_state", "generator=0", E.ConfigError, "'generator'",
      lambda c: c.ns().initial_state(2, generator=0)),
    C("guards_generator_l96_initial", "Lorenz96.initial_state", "generator='seed'", E.ConfigError, "'generator'",
      lambda c: _system("lorenz96").initial_state(2, generator="seed")),
    C("guards_generator_linear_initial", "LinearRelaxation.initial_state", "generator=3", E.ConfigError,
      "'generator'", lambda c: _system("linear_relaxation", n=16).initial_state(2, generator=3)),
    C("guards_generator_rank_histogram", "metrics.rank_histogram", "generator=1", E.ConfigError, "'generator'",
      lambda c: _rank_histogram(1)),
    C("guards_generator_augment", "D4Augment.draw", "generator=0", E.ConfigError, "'generator'",
      lambda c: __import__("stochclosure.data.augment", fromlist=["x"]).D4Augment().draw(4, generator=0)),
    # -- seeds -----------------------------------------------------------------------------------------------------
    C("guards_sampler_check_seed_negative", "run_sampler_check", "seed=-1 (torch would alias it to 2**64-1)",
      E.ConfigError, "'--seed'", lambda c: _sampler_check(-1)),
    C("guards_cli_samplers_seed_negative", "stochclosure samplers", "--seed -1", E.ConfigError, "'--seed'",
      lambda c: ["samplers", "--seed", "-1"], cli=True),
    C("guards_generate_seed_negative", "generate.load_config", "seed: -1", E.ConfigError, "config.seed",
      lambda c: __import__("stochclosure.data.generate", fromlist=["x"]).load_config(
          c.path("gs-1.yaml", "seed: -1\n"))),
    C("guards_cli_rollout_seed_2_32", "stochclosure rollout", "seed: 2**32 (ensemble seeds also seed NumPy)",
      E.ConfigError, "'seed'", lambda c: _rollout_cli(c, "grs", seed=2**32), cli=True),
    C("guards_demo_seed_2_32", "run_demo", "seed=2**32 (it seeds the ensemble)", E.ConfigError, "'seed'",
      lambda c: _demo(c, "gds", seed=2**32)),
    C("guards_cli_demo_seed_2_32", "stochclosure demo", "--seed 4294967296", E.ConfigError, "'--seed'",
      lambda c: ["demo", "--seed", str(2**32), "--out", str(c.folder / "gcds")], cli=True),
    # -- sizes too large for memory --------------------------------------------------------------------------------
    C("guards_cli_rollout_members_huge", "stochclosure rollout", "members: 10**12 (about 1 PB of states)",
      E.ResourceError, "'members'", lambda c: _rollout_cli(c, "grm", members=_HUGE), cli=True),
    C("guards_cli_rollout_steps_huge", "stochclosure rollout", "n_steps: 10**12, every step recorded",
      E.ResourceError, "'n_steps'", lambda c: _rollout_cli(c, "grn", n_steps=_HUGE), cli=True),
    C("guards_ensemble_members_huge", "ensemble", "members=10**12 from Python", E.ResourceError, "'members'",
      _api_ensemble_huge),
    C("guards_sample_n_huge", "ClosureModel.sample", "n=10**12 draws of a 64x64 field", E.ResourceError, "'n'",
      _api_sample_huge),
    C("guards_sample_integer_dtype", "ClosureModel.sample", "dtype=torch.int64", E.DTypeError, "'dtype'",
      lambda c: __import__("stochclosure").ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}).sample(
          Conditioning(), n=1, grid=(8, 8), dtype=torch.int64)),
    C("guards_demo_members_huge", "run_demo", "members=10**12", E.ResourceError, "'members'",
      lambda c: _demo(c, "gdm", members=_HUGE)),
    C("guards_cli_demo_members_huge", "stochclosure demo", "--members 10**12", E.ResourceError, "'members'",
      lambda c: ["demo", "--members", str(_HUGE), "--out", str(c.folder / "gcdm")], cli=True),
    C("guards_generate_batch_huge", "generate", "trajectories = batch_size = 2**31 - 1 (one record of them: 512 GiB)",
      E.ResourceError, "config.batch_size", lambda c: _generate_huge(c, "ggh.h5")),
    C("guards_cli_generate_batch_huge", "stochclosure generate", "trajectories = batch_size = 2**31 - 1",
      E.ResourceError, "config.batch_size", lambda c: gen_cli(c, "cggh.yaml", _L96_HUGE), cli=True),
    # -- devices ---------------------------------------------------------------------------------------------------
    C("guards_cli_distill_device_missing", "stochclosure distill", f"--device {_NO_DEVICE}", E.DeviceError,
      "'--device'", lambda c: ["distill", "--config", str(c.folder / "any.yaml"), "--device", _NO_DEVICE], cli=True),
    C("guards_cli_generate_device_missing", "stochclosure generate", f"device: {_NO_DEVICE}", E.ConfigError,
      "config.device", lambda c: gen_cli(c, "ggd.yaml", L96 + f"device: '{_NO_DEVICE}'\n"), cli=True),
]
