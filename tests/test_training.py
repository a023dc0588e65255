"""The Trainer: normalisation, time range, schedule, non-finite stop, exact resume after a kill."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import stochclosure as sc
from stochclosure.checkpoint import load_model
from stochclosure.data import TensorClosureDataset
from stochclosure.testing import assert_close
from stochclosure.training.trainer import Trainer, default_t_range

pytest.importorskip("stochclosure_neuralop")

# Shared by this process and the subprocess that gets killed: same data, same model.
SETUP = textwrap.dedent('''
    import torch, time
    import stochclosure as sc
    from stochclosure.data import TensorClosureDataset

    def build(delay=0.0):
        g = torch.Generator().manual_seed(7)
        y = torch.randn(48, 1, 16, 16, generator=g)
        u = 2.0 + 0.5 * torch.roll(y, 1, dims=-1) + 0.3 * torch.randn(48, 1, 16, 16, generator=g)

        class Slow(TensorClosureDataset):
            def __getitem__(self, i):
                time.sleep(delay)
                return super().__getitem__(i)

        torch.manual_seed(0)
        model = sc.ClosureModel("ve_exp", {"type": "fno", "encoder": "field", "width": 8, "modes": 4, "layers": 2,
                                           "embed_dim": 16}, {"type": "truncated_karras_em"})
        return model, Slow(u, fields=y)

    KW = dict(batch_size=8, max_steps=30, lr=2e-3, warmup_steps=3, checkpoint_every=10, val_every=10,
              progress=False, seed=5)
''')
_ns: dict = {}
exec(SETUP, _ns)  # noqa: S102 - our own code, shared with the subprocess below
build, KW = _ns["build"], _ns["KW"]


def test_normalisation_time_range_schedule_and_history(tmp_path):
    model, data = build()
    val = TensorClosureDataset(data.tensors["target"][:16], fields=data.tensors["fields"][:16])
    tr = Trainer(model, data, val, **{**KW, "max_steps": 12, "schedule": "step", "step_size": 5, "gamma": 0.5},
                 checkpoint_dir=tmp_path)
    # the default sampler is the research code's truncated start: train on its range only
    assert tr.t_range == default_t_range(model) == (1e-3, 0.1)
    assert [tr.lr_at(s) for s in (0, 2, 3, 5, 10)] == pytest.approx([2e-3 / 3, 2e-3, 2e-3, 1e-3, 5e-4])
    res = tr.fit()
    u = data.tensors["target"]
    assert_close(model.target_mean, u.mean().reshape(1), rtol=1e-5, what="target_mean")
    assert_close(model.target_std, u.std(unbiased=False).reshape(1), rtol=1e-5, what="target_std")
    assert res.steps == 12 and [h["step"] for h in res.history] == [10, 12]
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in res.history)
    # the checkpoint holds the normalisation and, loaded with EMA weights, equals the returned model
    loaded = load_model(res.checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000010", "step-00000012"]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    model, data = build()

    class Poisoned(type(data)):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            if tr.step >= 15:  # from step 15 on the data blow the loss up
                item = {**item, "target": item["target"] * 1e30}
            return item

    bad = Poisoned(data.tensors["target"], fields=data.tensors["fields"])
    tr = Trainer(model, bad, **{**KW, "checkpoint_every": 5}, checkpoint_dir=tmp_path, normalise_targets=False)
    with pytest.raises(sc.NonFiniteError, match=r"'loss'.*at step 15.*last good checkpoint .*step-00000015"):
        tr.fit()
    assert (tmp_path / "latest").read_text() == "step-00000015"
    good = load_model(tmp_path / "step-00000015")
    assert all(bool(torch.isfinite(v).all()) for v in good.state_dict().values())


def _final_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _real(x):
    """Complex spectral weights as (..., 2) real tensors, so both parts are compared."""
    return torch.view_as_real(x) if x.is_complex() else x


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    model, data = build()
    ref = Trainer(model, data, **KW, checkpoint_dir=tmp_path / "ref").fit()
    want = _final_state(model)

    model, data = build()
    stop = {"at": 25}

    class Interrupt(type(data)):
        def __getitem__(self, i):
            if tr.step == stop["at"]:
                raise KeyboardInterrupt
            return super().__getitem__(i)

    tr = Trainer(model, Interrupt(data.tensors["target"], fields=data.tensors["fields"]), **KW,
                 checkpoint_dir=tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    assert (tmp_path / "run" / "latest").read_text() == "step-00000020"
    model2, data2 = build()
    with torch.no_grad():  # a different starting point: everything must come from the checkpoint
        for p in model2.parameters():
            p.add_(1.0)
    res = Trainer(model2, data2, **KW, checkpoint_dir=tmp_path / "run").fit(resume=True)
    assert res.resumed_from == 20 and res.steps == 30
    for k, v in want.items():
        assert_close(_real(model2.state_dict()[k]), _real(v), rtol=1e-6, what=k)
    assert res.history == ref.history


def test_killed_process_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a training process after its first checkpoint, resume here, compare."""
    script = SETUP + textwrap.dedent(f'''
        from stochclosure.training.trainer import Trainer
        model, data = build(delay=0.01)
        Trainer(model, data, **KW, checkpoint_dir={str(tmp_path / "run")!r}).fit()
    ''')
    # the same thread count as this process: the resumed run continues the killed one's arithmetic
    threads = os.environ.get("STOCHCLOSURE_TEST_THREADS", "1")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": threads})
    try:
        deadline = time.monotonic() + 120
        latest = tmp_path / "run" / "latest"
        while time.monotonic() < deadline and not latest.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert latest.exists(), "the training process wrote no checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = int(latest.read_text().split("-")[1])
    assert step < KW["max_steps"], "killed too late to test resuming"

    model, data = build()
    res = Trainer(model, data, **KW, checkpoint_dir=tmp_path / "run").fit(resume=True)
    assert res.resumed_from == step
    model_ref, data_ref = build()
    Trainer(model_ref, data_ref, **KW, checkpoint_dir=tmp_path / "ref").fit()
    for k, v in model_ref.state_dict().items():
        assert_close(_real(model.state_dict()[k]), _real(v), rtol=1e-6, what=k)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    model, data = build()
    Trainer(model, data, **{**KW, "max_steps": 10}, checkpoint_dir=tmp_path).fit()
    other = sc.ClosureModel("ve_exp", {"type": "fno", "encoder": "field", "width": 12, "modes": 4, "layers": 2,
                                       "embed_dim": 16}, {"type": "truncated_karras_em"})
    with pytest.raises(sc.CheckpointError, match="a checkpoint of this model"):
        Trainer(other, data, **KW, checkpoint_dir=tmp_path).fit(resume=True)


def test_bad_arguments_raise_config_errors():
    model, data = build()
    with pytest.raises(sc.ConfigError, match="schedule"):
        Trainer(model, data, schedule="linear")
    with pytest.raises(sc.ConfigError, match="batch_size"):
        Trainer(model, data, batch_size=0)
    with pytest.raises(sc.ConfigError, match="ema_decay"):
        Trainer(model, data, ema_decay=1.0)


def test_ema_averages_every_parameter_including_complex_spectral_weights():
    from stochclosure.training.trainer import EMA

    op = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "width": 8, "modes": 4, "layers": 2,
                                       "encoder": "field"})
    names = {k for k, _ in op.named_parameters()}
    assert any(p.is_complex() for p in op.parameters()), "the FNO has complex spectral weights"
    ema = EMA(op, decay=0.5)
    assert set(ema.shadow) == names
    with torch.no_grad():
        for p in op.parameters():
            p.add_(1.0)
    ema.update(op, step=10**6)  # decay 0.5: every average moves half way
    for k, p in op.named_parameters():
        assert_close(_real(ema.shadow[k]), _real(p.detach() - 0.5), rtol=1e-6, what=k)


def test_augmented_lognormal_power_ema_run_resumes_exactly_and_reports_draw_scores(tmp_path):
    """The new options keep the resume guarantee; validation scores closure draws, not only the loss."""
    opts = dict(KW, max_steps=20, schedule="constant", augment="d4", time_law={"type": "lognormal"}, ema_rel_std=0.1,
                val_draws=3, val_batches=1)
    model, data = build()
    ref = Trainer(model, data, data, **opts, checkpoint_dir=tmp_path / "ref").fit()
    want = _final_state(model)
    row = ref.history[-1]
    for key in ("val_r2", "val_crps", "val_energy", "val_spread_skill", "val_coverage"):
        assert key in row and math.isfinite(row[key]), key
    assert 0 <= row["val_coverage"] <= 1 and row["val_crps"] > 0
    model, data = build()
    tr = Trainer(model, data, data, **dict(opts, max_steps=10), checkpoint_dir=tmp_path / "run")
    tr.fit()
    model2, data2 = build()
    res = Trainer(model2, data2, data2, **opts, checkpoint_dir=tmp_path / "run").fit(resume=True)
    assert res.resumed_from == 10
    got = _final_state(model2)
    for k in want:
        assert_close(_real(got[k]), _real(want[k]), rtol=1e-6, what=k)


def test_augmentation_changes_the_batches_and_the_draws_do_not_depend_on_the_data():
    model, data = build()
    a = Trainer(model, data, **dict(KW, max_steps=5), augment="d4")
    b = Trainer(build()[0], data, **dict(KW, max_steps=5))
    ea = a.augment.draw(8, torch.Generator().manual_seed(0))
    assert len(set(ea)) > 1 and b.augment is None
    with pytest.raises(sc.ConfigError, match="augment"):
        Trainer(model, data, **KW, augment="d8")
    with pytest.raises(sc.ConfigError, match="time_law"):
        Trainer(model, data, **KW, time_law="edm")
    with pytest.raises(sc.ConfigError, match="ema_rel_std"):
        Trainer(model, data, **KW, ema_rel_std=0.5)


def test_power_ema_averages_a_fixed_fraction_of_the_run():
    """The power profile's averaging window is rel_std of the run: its weights have std rel_std * t."""
    from stochclosure.training.trainer import EMA, power_ema_exponent

    gamma = power_ema_exponent(0.1)
    ema = EMA(torch.nn.Linear(1, 1), rel_std=0.1)
    for t in (100, 1000):
        w = torch.ones(t, dtype=torch.float64)  # weight of step tau in the average after t steps
        for tau in range(1, t + 1):
            d = ema.decay_at(tau)
            w[:tau - 1] *= d
            w[tau - 1] = 1 - d
        tau = torch.arange(1, t + 1, dtype=torch.float64)
        assert abs(float(w.sum()) - 1) < 1e-9  # the weights of an average sum to one
        std = float(((w * tau**2).sum() - (w * tau).sum() ** 2).sqrt())
        assert abs(std / t - 0.1) < 0.01, (t, std / t, gamma)
