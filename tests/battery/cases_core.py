"""Rows of the bad-input battery: sampling, components, rollouts, training, HDF5, checkpoints, configs, CLI."""

from __future__ import annotations

import pickle

import torch

from stochclosure import errors as E
from stochclosure._types import Conditioning

from .base import (
    BadInput,
    Payload,
    cli_train,
    delete,
    foreign_h5,
    gen_cli,
    h5_dataset,
    load,
    nan_pixel,
    other_version,
    rollout,
    sample,
    set_attr,
    trainer,
    truncated,
)

_PICKLE_TAG = "data: !!python/object/apply:os.system ['touch UNPICKLED']\n"

C = BadInput
CASES: list[BadInput] = [
    # -- ClosureModel.sample / Conditioning ----------------------------------------------------------------
    C("nan_pixel", "ClosureModel.sample", "one NaN pixel in cond.fields", E.NonFiniteError, "cond.fields", nan_pixel),
    C("inf_obs", "ClosureModel.sample", "an inf in cond.obs_values", E.NonFiniteError, "cond.obs_values",
      lambda c: sample(c, c.cond(obs_values=torch.full((2, 1, 16), float("inf"))))),
    C("nan_points", "ClosureModel.sample", "a NaN coordinate in cond.obs_points", E.NonFiniteError,
      "cond.obs_points", lambda c: sample(c, c.cond(obs_points=torch.full((16, 2), float("nan"))))),
    C("wrong_rank", "ClosureModel.sample", "cond.fields of rank 2 (16, 16)", E.ShapeError, "cond.fields",
      lambda c: sample(c, Conditioning(fields=torch.randn(16, 16)))),
    C("batch_mismatch", "ClosureModel.sample", "fields batch 2, obs_values batch 3", E.ShapeError, "cond",
      lambda c: sample(c, c.cond(obs_values=torch.randn(3, 1, 16)))),
    C("empty_batch", "ClosureModel.sample", "a condition with batch 0", E.ShapeError, "cond.fields",
      lambda c: sample(c, c.cond(b=0))),
    C("resolution_mismatch", "ClosureModel.sample", "condition on 16^2, sample grid 32^2", E.ShapeError,
      "cond.fields", lambda c: sample(c, c.cond(), grid=(32, 32))),
    C("channels_last", "ClosureModel.sample", "cond.fields laid out (B, H, W, C)", E.ShapeError, "cond.fields",
      lambda c: sample(c, c.cond(fields=torch.randn(2, 16, 16, 1)))),
    C("int_dtype", "ClosureModel.sample", "int64 cond.fields", E.DTypeError, "cond.fields",
      lambda c: sample(c, c.cond(fields=torch.zeros(2, 1, 16, 16, dtype=torch.long)))),
    C("mixed_dtype", "ClosureModel.sample", "float64 fields with float32 obs_values", E.DTypeError, "cond",
      lambda c: sample(c, c.cond(fields=torch.randn(2, 1, 16, 16, dtype=torch.float64)))),
    C("other_device", "ClosureModel.sample", "condition on device 'meta', model on cpu", E.DeviceError, "cond",
      lambda c: sample(c, Conditioning(fields=torch.empty(2, 1, 16, 16, device="meta")))),
    C("points_outside", "ClosureModel.sample", "a sparse point at x = 1.0 (outside [0, 1))", E.ShapeError,
      "cond.obs_points", lambda c: sample(c, c.cond(obs_points=torch.full((16, 2), 0.5).index_fill(0, torch.tensor(
          [3]), 1.0) + torch.arange(16)[:, None] * 1e-3))),
    C("points_duplicated", "ClosureModel.sample", "the same sparse point twice", E.ShapeError, "cond.obs_points",
      lambda c: sample(c, c.cond(obs_points=torch.cat([torch.rand(15, 2), torch.rand(15, 2)[:1] * 0 + 0.25])
                                  .index_copy(0, torch.tensor([0]), torch.tensor([[0.25, 0.25]]))))),
    C("values_without_points", "ClosureModel.sample", "obs_values without obs_points", E.ShapeError,
      "cond.obs_points", lambda c: sample(c, Conditioning(fields=torch.randn(2, 1, 16, 16),
                                                            obs_values=torch.randn(2, 1, 16)))),
    C("zero_samples", "ClosureModel.sample", "n=0 samples", E.ConfigError, "'n'", lambda c: sample(c, c.cond(), n=0)),
    C("negative_steps", "ClosureModel.sample", "steps=-1", E.ConfigError, "steps",
      lambda c: sample(c, c.cond(), steps=-1)),
    C("zero_steps", "ClosureModel.sample", "steps=0", E.ConfigError, "steps", lambda c: sample(c, c.cond(), steps=0)),
    # -- score operator and encoders --------------------------------------------------------------------------
    C("fno_channels", "FNOScore.forward", "x with 3 channels for a 1-channel operator", E.ShapeError, "'x'",
      lambda c: c.fno(torch.randn(2, 3, 16, 16), torch.full((2,), 0.5), c.cond())),
    C("fno_time_batch", "FNOScore.forward", "t of batch 3 for x of batch 2", E.ShapeError, "'t'",
      lambda c: c.fno(torch.randn(2, 1, 16, 16), torch.full((3,), 0.5), c.cond())),
    C("grid_below_modes", "FNOScore.forward", "a 4^2 grid for modes=4 (needs 7 points per axis)",
      E.ResolutionWarning, "'x'", lambda c: c.fno(torch.randn(2, 1, 4, 4), torch.full((2,), 0.5), c.cond(n=4))),
    C("encoder_channels", "FieldEncoder", "2-channel fields for a 1-channel encoder", E.ShapeError, "cond.fields",
      lambda c: c.fno.encoder(Conditioning(fields=torch.randn(2, 2, 16, 16)), (16, 16))),
    C("encoder_grid_dims", "SparseInterpEncoder", "a 1-D target grid for 2-D points", E.ShapeError, "grid",
      lambda c: __import__("stochclosure").resolve("encoder", "sparse_interp")(c.cond(), (16,))),
    # -- components --------------------------------------------------------------------------------------------
    C("unknown_sde", "ClosureModel", "sde 'vpp'", E.UnknownPluginError, "'vpp'",
      lambda c: __import__("stochclosure").ClosureModel("vpp", "gaussian")),
    C("unknown_sampler", "ClosureModel.sample", "sampler 'fast'", E.UnknownPluginError, "'fast'",
      lambda c: sample(c, c.cond(), sampler="fast")),
    C("unknown_spec_key", "resolve", "sampler spec key 'stepz'", E.ConfigError, "sampler.stepz",
      lambda c: __import__("stochclosure").resolve("sampler", {"type": "euler_maruyama", "stepz": 3})),
    C("sde_mismatch", "ClosureModel", "a score built for 've' in a 'vp' model", E.IncompatibleComponentsError,
      "SDE", lambda c: __import__("stochclosure").ClosureModel("vp", {"type": "gaussian", "sde": "ve"})),
    # -- rollouts ------------------------------------------------------------------------------------------------
    C("rollout_negative_steps", "rollout", "n_steps=-1", E.ConfigError, "n_steps",
      lambda c: rollout(c, torch.randn(1, 16, 16), -1)),
    C("empty_ensemble", "rollout", "members=0", E.ConfigError, "members",
      lambda c: rollout(c, torch.randn(1, 16, 16), members=0)),
    C("rollout_nan_pixel", "rollout", "one NaN pixel in state0", E.NonFiniteError, "state0",
      lambda c: rollout(c, torch.randn(1, 16, 16).index_fill(2, torch.tensor([5]), float("nan")))),
    C("non_square_grid", "rollout (navier_stokes_2d)", "a 16x24 state for the square 16^2 solver", E.ShapeError,
      "state", lambda c: rollout(c, torch.randn(1, 16, 24))),
    C("state_resolution", "rollout (navier_stokes_2d)", "a 32^2 state for the 16^2 solver", E.ShapeError, "state",
      lambda c: rollout(c, torch.randn(1, 32, 32))),
    C("state_channels_last", "rollout", "state0 laid out (H, W, C)", E.ShapeError, "state0",
      lambda c: rollout(c, torch.randn(16, 16, 1))),
    C("empty_cases", "rollout", "state0 with 0 cases", E.ShapeError, "state0",
      lambda c: rollout(c, torch.randn(0, 1, 16, 16))),
    C("resample_zero", "rollout", "resample_every=0", E.ConfigError, "resample_every",
      lambda c: rollout(c, torch.randn(1, 16, 16), resample_every=0)),
    C("unkeyed_resume", "resumable_ensemble", "keyed=False (no per-member streams)", E.ConfigError, "keyed",
      lambda c: __import__("stochclosure.rollouts", fromlist=["x"]).resumable_ensemble(
          c.ns(), None, torch.randn(1, 16, 16), 1, 2, seed=0, checkpoint=c.folder / "r.ckpt", keyed=False)),
    # -- training ------------------------------------------------------------------------------------------------
    C("train_batch_zero", "Trainer", "batch_size=0", E.ConfigError, "batch_size", lambda c: trainer(c, batch_size=0)),
    C("train_lr_string", "Trainer", "lr='fast'", E.ConfigError, "'lr'", lambda c: trainer(c, lr="fast")),
    C("train_nan_target", "Trainer.fit", "a NaN pixel in the training targets", E.NonFiniteError, "target",
      lambda c: trainer(c, torch.randn(4, 1, 16, 16).index_fill(3, torch.tensor([2]), float("nan")),
                         normalise_targets=False)),
    C("train_empty", "Trainer", "an empty training set", E.ConfigError, "train_data",
      lambda c: trainer(c, empty=True)),
    # -- HDF5 datasets -------------------------------------------------------------------------------------------
    C("h5_missing_file", "ClosureH5Dataset", "a path with no file", E.DatasetError, "path",
      lambda c: h5_dataset(c.folder / "nope.h5")),
    C("h5_foreign", "ClosureH5Dataset", "an HDF5 file not written by stochclosure", E.DatasetError, "path",
      lambda c: h5_dataset(foreign_h5(c))),
    C("h5_other_system", "ClosureH5Dataset", "a navier_stokes_2d file read as lorenz96", E.DatasetError, "system",
      lambda c: h5_dataset(c.dataset, system="lorenz96")),
    C("h5_missing_dataset", "ClosureH5Dataset", "the file lacks res_16/H", E.DatasetError, "res_16/H",
      lambda c: h5_dataset(c.h5("nodata.h5", delete("res_16/H")))),
    C("h5_pickled_attribute", "ClosureH5Dataset", "a pickle payload in the 'closures' attribute", E.DatasetError,
      "closures", lambda c: h5_dataset(c.h5("evil.h5", set_attr("closures", __import__("numpy").void(
          pickle.dumps(Payload(str(c.marker)))))))),
    C("h5_unknown_closure", "ClosureH5Dataset", "closure 'U' not in the file", E.DatasetError, "closure",
      lambda c: h5_dataset(c.dataset, closure="U")),
    # -- checkpoints -------------------------------------------------------------------------------------------
    C("ckpt_garbage", "load_model", "a file that is not a checkpoint", E.CheckpointError, "garbage.safetensors",
      lambda c: load(c.path("garbage.safetensors", b"\x00not a checkpoint" * 8))),
    C("ckpt_truncated", "load_model", "half of a checkpoint file", E.CheckpointError, "truncated.safetensors",
      lambda c: load(truncated(c))),
    C("ckpt_other_version", "load_model", "format_version + 1", E.CheckpointError, "config.json",
      lambda c: load(other_version(c))),
    C("ckpt_pickle", "load_model", "a pickle whose __reduce__ writes a file", E.CheckpointError, "evil.pt",
      lambda c: load(c.path("evil.pt", pickle.dumps(Payload(str(c.marker)))))),
    C("ckpt_empty_dir", "load_model", "a folder without config.json", E.CheckpointError, "path",
      lambda c: (c.folder / "emptydir").mkdir(exist_ok=True) or load(c.folder / "emptydir")),
    # -- configuration files (API) ---------------------------------------------------------------------------
    C("train_unknown_key", "load_train_config", "data.resolutoin (typo)", E.ConfigError, "data.resolutoin",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("typo", **{"data.resolutoin": 16}))),
    C("train_wrong_type", "load_train_config", "data.history: 'two'", E.ConfigError, "data.history",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("type", **{"data.history": "two"}))),
    C("train_path_escape", "load_train_config", "out: ../../escaped (leaves the config's folder)", E.ConfigError,
      "out", lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("escape", out="../../escaped"))),
    C("yaml_python_tag", "load_train_config", "a !!python/object/apply tag", E.ConfigError, "--config",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.path("tag.yaml", _PICKLE_TAG))),
    C("generate_unknown_key", "generate.load_config", "trajectorys (typo)", E.ConfigError, "config.trajectorys",
      lambda c: __import__("stochclosure.data.generate", fromlist=["x"]).load_config(
          c.path("g1.yaml", "trajectorys: 3\n"))),
    C("generate_wrong_type", "generate.load_config", "resolutions: 32 (not a list)", E.ConfigError,
      "config.resolutions", lambda c: __import__("stochclosure.data.generate", fromlist=["x"]).load_config(
          c.path("g2.yaml", "resolutions: 32\n"))),
    C("rollout_unknown_key", "load_rollout_config", "member: 4 (typo)", E.ConfigError, "member",
      lambda c: __import__("stochclosure.rollout_cli", fromlist=["x"]).load_rollout_config(
          c.rollout_config("r1", member=4))),
    # -- command line ----------------------------------------------------------------------------------------
    C("cli_generate_unknown_key", "stochclosure generate", "trajectorys: 3", E.ConfigError, "config.trajectorys",
      lambda c: gen_cli(c, "cg1.yaml", "trajectorys: 3\n"), cli=True),
    C("cli_generate_unknown_system", "stochclosure generate", "--system nss", E.UnknownPluginError, "'nss'",
      lambda c: gen_cli(c, "cg2.yaml", "{}\n", system="nss"), cli=True),
    C("cli_generate_system_key", "stochclosure generate", "system: {n: 8} for lorenz96", E.ConfigError,
      "config.system.n", lambda c: gen_cli(c, "cg3.yaml", "system: {n: 8}\n"), cli=True),
    C("cli_train_missing_config", "stochclosure train", "--config of a missing file", E.ConfigError, "--config",
      lambda c: ["train", "--config", str(c.folder / "missing.yaml")], cli=True),
    C("cli_train_wrong_type", "stochclosure train", "seed: 'zero'", E.ConfigError, "seed",
      lambda c: cli_train(c, "ct1", seed="zero"), cli=True),
    C("cli_train_trainer_key", "stochclosure train", "trainer.max_step (typo)", E.ConfigError, "trainer.max_step",
      lambda c: cli_train(c, "ct2", trainer={"max_step": 3}), cli=True),
    C("cli_train_missing_h5", "stochclosure train", "data.path of a missing file", E.DatasetError, "path",
      lambda c: cli_train(c, "ct3", **{"data.path": str(c.folder / "none.h5")}), cli=True),
    C("cli_train_python_tag", "stochclosure train", "a !!python/object/apply tag", E.ConfigError, "--config",
      lambda c: ["train", "--config", str(c.path("ctag.yaml", _PICKLE_TAG))], cli=True),
    C("cli_rollout_bad_checkpoint", "stochclosure rollout", "model: a file that is not a checkpoint",
      E.CheckpointError, "junk.safetensors",
      lambda c: ["rollout", "--config", str(c.rollout_config(
          "cr1", model=str(c.path("junk.safetensors", b"junk" * 20)))), "--no-progress"], cli=True),
    C("cli_rollout_negative_steps", "stochclosure rollout", "n_steps: -1", E.ConfigError, "n_steps",
      lambda c: ["rollout", "--config", str(c.rollout_config("cr2", n_steps=-1)), "--no-progress"], cli=True),
    C("cli_rollout_zero_members", "stochclosure rollout", "members: 0", E.ConfigError, "members",
      lambda c: ["rollout", "--config", str(c.rollout_config("cr3", members=0)), "--no-progress"], cli=True),
]


