"""One spelling of a parameter path, whichever part of flaxen prints or stores it.

One small model is taken through the parts that name its parameters: a stored-shape
mismatch, a missing state entry, ``nn.summary``, a checkpoint restore that does not fit,
a state dict that does not fit, a batch that does not split, and the golden layout file.
Every path they print must be spelled by ``traverse_util.path_to_str``:
``params/Dense_3/kernel``, ``state/BatchNorm_1/mean`` (a module alone: ``Dense_3``), never
``CNN/Dense_3/kernel``, ``/Dense_3/kernel``, ``['Dense_3']['kernel']`` or
``state//BatchNorm_1/mean``. Regenerate the golden file after a deliberate change with
``FLAXEN_UPDATE_GOLDEN=1``.
"""

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import errors, nn, parallel, serialization
from flaxen.training import checkpoints
from flaxen.traverse_util import path_to_str
from tests.nn.modules_for_tests import Scale

GOLDEN = pathlib.Path(__file__).parent / "golden" / "path_spelling_cnn.json"
MODULES = ("Conv_0", "BatchNorm_1", "Scale_2", "Dense_3")
X = jnp.ones((2, 5, 5, 1))


class CNN(nn.Module):
    def apply(self, x, features=4, train=True):
        x = nn.Conv(x, features=features, kernel_size=(3, 3))
        x = nn.BatchNorm(x, use_running_average=not train)
        x = Scale(x)  # a core self.param: a stored-shape mismatch is a ParamShapeError
        return nn.Dense(x.reshape((x.shape[0], -1)), features=2)


def _layout(params, state):
    tree = {"params": params, "state": state}
    return {path_to_str(p): f"{v.dtype}{list(v.shape)}"
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _message(fn, error):
    with pytest.raises(error) as info:
        fn()
    return str(info.value)


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    """``{part: text it printed}`` for one CNN, and the CNN's layout."""
    _, params, state = CNN.init_with_state(jax.random.PRNGKey(0), X)
    layout = _layout(params, state)
    out = {}

    bad = jax.tree.map(lambda v: v, params)
    bad["Scale_2"]["scale"] = jnp.ones((3,))
    out["ParamShapeError"] = _message(
        lambda: CNN.call_with_state(bad, state, X), errors.ParamShapeError)
    out["StateEntryMissingError"] = _message(
        lambda: CNN.call_with_state(params, nn.Collection({"/Other_0": {}}), X, train=False,
                                    _mutable=False), errors.StateEntryMissingError)
    out["summary"] = nn.summary(CNN, [(X.shape, jnp.float32)])

    ckpt = tmp_path_factory.mktemp("ckpt")
    checkpoints.save_checkpoint(ckpt, {"params": params, "state": state}, step=1)
    _, params3, state3 = CNN.init_with_state(jax.random.PRNGKey(0), X, features=3)
    out["restore_checkpoint"] = _message(
        lambda: checkpoints.restore_checkpoint(ckpt, {"params": params3, "state": state3}),
        errors.CheckpointMismatchError)
    _, report = checkpoints.restore_checkpoint(
        ckpt, {"params": params3, "state": state3}, strict=False)
    out["RestoreReport"] = "\n".join(report.missing + report.unexpected + report.restored
                                     + tuple(p for p, _ in report.mismatched))

    model = nn.Model(CNN, params)
    sd = serialization.to_state_dict(model)
    del sd["params"]["Dense_3"]["bias"]
    out["from_state_dict"] = _message(lambda: serialization.from_state_dict(model, sd),
                                      errors.SerializationError)
    out["shard_batch"] = _message(
        lambda: parallel.shard_batch({"params": {"Dense_3": {"kernel": np.ones((3, 2))}}}),
        errors.BatchShardingError)

    if os.environ.get("FLAXEN_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    out["golden file"] = GOLDEN.read_text()
    return out, layout


def _paths_in(text):
    """Every word of ``text`` that names one of the CNN's modules, quotes stripped."""
    names = "|".join(MODULES)
    return [w.strip("\"'`.,:;()") for w in re.findall(
        rf"[\w/\[\]'\".]*(?:{names})[\w/\[\]'\".]*", text)]


def _spelled_right(word, layout):
    """A module (``Dense_3``), an entry of the layout (``params/Dense_3/kernel``), a
    prefix of one (``params/Dense_3``), or an entry under a checkpoint's prefix."""
    if word in MODULES:
        return True
    full = {p for path in layout for p in _prefixes(path)}
    return word in full or any(word.endswith("/" + p) and "//" not in word for p in full)


def _prefixes(path):
    keys = path.split("/")
    return ["/".join(keys[:i]) for i in range(2, len(keys) + 1)]


def test_every_part_prints_the_same_spelling(printed):
    out, layout = printed
    assert "params/Dense_3/kernel" in layout and "state/BatchNorm_1/mean" in layout
    for part, text in out.items():
        words = _paths_in(text)
        assert words, f"{part} printed no path of the model:\n{text}"
        wrong = [w for w in words if not _spelled_right(w, layout)]
        assert not wrong, f"{part} spells paths otherwise: {wrong}\n{text}"


def test_each_part_names_the_parameter_it_is_about(printed):
    out, _ = printed
    assert '"params/Scale_2/scale"' in out["ParamShapeError"]
    assert 'Module "BatchNorm_1"' in out["StateEntryMissingError"]
    for path in ("params/Conv_0/kernel", "params/Scale_2/scale", "params/Dense_3/kernel"):
        assert path in out["summary"]
    for path in ("params/Dense_3/kernel", "state/BatchNorm_1/mean"):
        assert path in out["restore_checkpoint"] and path in out["RestoreReport"]
    assert '"params/Dense_3"' in out["from_state_dict"]
    assert '"params/Dense_3/kernel"' in out["shard_batch"]


def test_golden_layout_is_current(printed):
    out, layout = printed
    assert json.loads(out["golden file"]) == layout


def test_every_golden_layout_file_uses_the_spelling():
    files = sorted((pathlib.Path(__file__).parents[1] / "nn" / "golden").glob("*.json"))
    files.append(GOLDEN)
    assert len(files) > 10
    for f in files:
        for path in json.loads(f.read_text()):
            assert re.fullmatch(r"(params|state)(/\w+)+", path), f"{f.name}: {path!r}"
