"""The LM example's large-model flags: checks, mesh, placement, and a short sharded,
scanned training run against the replicated, unscanned one."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from examples.lm1b import large_model, models
from flaxen import parallel


def _args(**kw):
    base = dict(large_model.DEFAULTS, num_heads=8, batch_size=16)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("kw, message", [
    (dict(sharding="zero"), "--sharding='zero': expected one of replicated"),
    (dict(mesh_model=3), "--mesh_model=3: expected a divisor of the 8 devices"),
    (dict(sharding="tensor_parallel", mesh_model=8, num_heads=4),
     "splits the 4 heads over --mesh_model=8"),
    (dict(remat=True), "--remat needs --scan_layers"),
    (dict(batch_size=12), "--batch_size=12 must be a multiple of the 8 devices"),
])
def test_bad_combinations_name_the_flag(kw, message):
    with pytest.raises(large_model.LargeModelFlagError, match=message.replace("(", r"\(")
                       .replace("[", r"\[")):
        large_model.check(_args(**kw))


def test_mesh_and_placement_follow_the_flags():
    assert large_model.mesh(_args()) is parallel.default_mesh()
    args = _args(sharding="tensor_parallel", mesh_model=4)
    mesh = large_model.mesh(args)
    assert dict(mesh.shape) == {"batch": 2, "model": 4}
    assert large_model.config_options(_args(scan_layers=True, remat=True)) == {
        "scan_layers": True, "remat": True}
    config = models.LMConfig(vocab_size=32, emb_dim=32, num_heads=8, num_layers=2,
                             mlp_dim=64, max_len=8, scan_layers=True)
    module = models.TransformerLM.partial(config=config)
    _, params = module.init_by_shape(jax.random.PRNGKey(0), [((1, 8), np.int32)])
    from flaxen import nn, optim

    opt = optim.Adam(1e-3).create(nn.Model(module, params))
    placed = large_model.place(opt, args, mesh)
    kernel = placed.target.params["blocks"]["attention"]["query"]["kernel"]  # [2, 32, 8, 4]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "model", None)
    fsdp = _args(sharding="fully_sharded")
    placed = large_model.place(opt, fsdp, large_model.mesh(fsdp))
    assert placed.target.params["embed"]["embedding"].sharding.spec[0] == "batch"


def _train(tmp_path, name: str, **kw) -> dict:
    from examples.lm1b import train

    text = tmp_path / "text.txt"
    if not text.exists():
        rng = np.random.default_rng(0)
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]
        text.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(500)),
                        encoding="utf-8")
    args = train.TrainArgs(
        output_dir=str(tmp_path / name), text_file=str(text), emb_dim=32, num_heads=4,
        num_layers=2, context=16, batch_size=8, num_train_steps=6, learning_rate=1e-2,
        warmup_steps=2, eval_every=1000, eval_batch_size=16, eval_batches=2, log_every=3,
        checkpoint_every=6, sample_length=4, progress=False, plot=False, scan_layers=True,
        **kw)
    train.check_args(args)
    return train.train_and_evaluate(args)


def test_sharded_scanned_training_runs_like_replicated(tmp_path):
    """Same flags but the layout: the same losses (and a sample through the decode loop)."""
    from flaxen.training import checkpoints

    want = _train(tmp_path, "replicated")
    for name, kw in (("fsdp", dict(sharding="fully_sharded", remat=True)),
                     ("tp", dict(sharding="tensor_parallel", mesh_model=2))):
        got = _train(tmp_path, name, **kw)
        for key in ("train_loss", "eval_loss"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=f"{name} {key}")
        assert len(got["sample"]) > 0
        saved = checkpoints.restore_checkpoint(tmp_path / name / "checkpoints", None)
        assert saved["target"]["params"]["blocks"]["mlp"]["Dense_0"]["kernel"].shape == (
            2, 32, 128)
