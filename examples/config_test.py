"""examples/config.py: ml_collections config files and --config.x.y overrides next to flat
flags, with the real ml_collections; and its wiring in the ImageNet and VAE examples."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

ml_collections = pytest.importorskip("ml_collections", reason="in the examples extra")
from examples import config as config_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CONFIG_FILE = '''
import ml_collections

def get_config():
    config = ml_collections.ConfigDict()
    config.learning_rate = 0.1
    config.model = ml_collections.ConfigDict()
    config.model.latents = 20
    config.model.name = "mlp"
    config.data = ml_collections.ConfigDict()
    config.data.dataset = "a"
    return config
'''


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(CONFIG_FILE)
    return path


def parse(config_file, *args, extra=None):
    """Defines flat flags like an example's, plus --config; parses ``args``."""
    fv = flags.FlagValues()
    flags.DEFINE_float("learning_rate", 1e-3, "h", flag_values=fv)
    flags.DEFINE_integer("latents", 8, "h", flag_values=fv)
    flags.DEFINE_string("arch", "cnn", "h", flag_values=fv)
    flags.DEFINE_enum("dataset", "a", ["a", "b"], "h", flag_values=fv)
    for name in extra or []:
        flags.DEFINE_string(name, None, "h", flag_values=fv)
    argv = ["prog", *args]
    config_lib.flags_parser("unused", default=str(config_file), flag_values=fv)(argv)
    return fv


def test_config_file_and_nested_overrides_set_the_flat_flags(config_file):
    fv = parse(config_file, "--config.model.latents=32", "--config.data.dataset=b")
    config = config_lib.apply_config(fv, renames={"model.name": "arch"})
    assert (fv.learning_rate, fv.latents, fv.dataset, fv.arch) == (0.1, 32, "b", "mlp")
    assert config.model.latents == 32 and isinstance(config, ml_collections.ConfigDict)
    assert not fv["latents"].present  # the example's own "was it given" checks are unchanged


def test_a_flat_flag_given_on_the_command_line_wins_over_the_config(config_file):
    fv = parse(config_file, "--latents=16", "--learning_rate=0.5")
    config_lib.apply_config(fv, renames={"model.name": "arch"})
    assert (fv.latents, fv.learning_rate, fv.arch) == (16, 0.5, "mlp")


def test_the_same_setting_both_ways_is_an_error(config_file):
    fv = parse(config_file, "--config.model.latents=32", "--latents=16")
    with pytest.raises(config_lib.ConfigFlagError,
                       match=r"--config.model.latents=32 and --latents=16 set the same thing"):
        config_lib.apply_config(fv, renames={"model.name": "arch"})


def test_a_config_field_without_a_flag_is_an_error(config_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fv = parse("my_config.py")  # a relative path: the message shows it resolved
    with pytest.raises(config_lib.ConfigFlagError) as info:
        config_lib.apply_config(fv)  # no rename: model.name would set --name
    message = str(info.value)
    assert "config field model.name has no flag --name" in message
    assert f"(resolved: {tmp_path / 'my_config.py'})" in message


def test_a_config_value_the_flag_refuses(config_file):
    fv = parse(config_file, "--config.data.dataset=c")
    with pytest.raises(config_lib.ConfigFlagError,
                       match=r"--config.data.dataset='c' is not a valid --dataset"):
        config_lib.apply_config(fv, renames={"model.name": "arch"})


@pytest.mark.parametrize("args, message", [
    (["--config.model.latents=abc"], "Error: flag --config.model.latents=abc: invalid literal"),
    (["--config.model.nope=1"], "Error: an override names a field the config does not have"),
    (["--latents=x"], "Error: flag --latents=x: invalid literal"),
])
def test_bad_overrides_are_one_error_line_and_exit_2(config_file, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        parse(config_file, *args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_a_missing_config_file_is_an_error_naming_it(config_file, tmp_path):
    fv = parse(config_file, f"--config={tmp_path / 'nowhere.py'}")
    with pytest.raises(config_lib.ConfigFlagError, match="cannot load the config file .*"
                       "nowhere.py.*No such file"):
        config_lib.apply_config(fv)


def test_without_a_default_config_the_flat_flags_are_unchanged(config_file, tmp_path):
    fv = flags.FlagValues()
    flags.DEFINE_integer("latents", 8, "h", flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-3, "h", flag_values=fv)
    flags.DEFINE_string("arch", "cnn", "h", flag_values=fv)
    flags.DEFINE_enum("dataset", "a", ["a", "b"], "h", flag_values=fv)
    example = str(tmp_path / "train.py")  # no configs/default.py next to it
    config_lib.flags_parser(example, flag_values=fv)(["prog", "--latents=3"])
    assert config_lib.apply_config(fv) is None and fv.latents == 3
    fv2 = flags.FlagValues()
    flags.DEFINE_integer("latents", 8, "h", flag_values=fv2)
    flags.DEFINE_float("learning_rate", 1e-3, "h", flag_values=fv2)
    flags.DEFINE_string("arch", "cnn", "h", flag_values=fv2)
    flags.DEFINE_enum("dataset", "a", ["a", "b"], "h", flag_values=fv2)
    config_lib.flags_parser(example, flag_values=fv2)(
        ["prog", f"--config={config_file}", "--config.model.latents=5"])
    config_lib.apply_config(fv2, renames={"model.name": "arch"})
    assert (fv2.latents, fv2.learning_rate) == (5, 0.1)


# -- the examples -------------------------------------------------------------------------------


def run(example, *args, timeout=240):
    return subprocess.run([sys.executable, str(REPO / "examples" / example / "train.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def flag_defaults(example):
    """The example's flat flags' defaults (its flags are defined in a fresh process)."""
    code = (f"import json, sys; from absl import flags; from examples.{example} import train; "
            f"d = getattr(train, 'define_flags', getattr(train, '_define_flags', None)); "
            f"d and d(); "
            f"flags.FLAGS(['x']); print(json.dumps(flags.FLAGS.flag_values_dict()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("example, renames", [("vae", {}), ("imagenet", {"model.name": "model"}),
                                               ("mnist", {}), ("segmentation", {}),
                                               ("lm1b", {}), ("gan", {})])
def test_default_config_files_equal_the_flag_defaults(example, renames):
    spec = REPO / "examples" / example / "configs" / "default.py"
    namespace: dict = {}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    defaults = flag_defaults(example)
    for path, value in config_lib.leaves(namespace["get_config"]()):
        name = renames.get(path, path.rsplit(".", 1)[-1])
        assert defaults[name] == value, (example, path)
        assert type(defaults[name]) is type(value), (example, path)


def test_imagenet_takes_nested_overrides_and_refuses_conflicts(tmp_path):
    # The override reaches the flat flag: check_config names --num_filters.
    out = run("imagenet", "--config.model.num_filters=0", f"--output_dir={tmp_path}")
    assert out.returncode == 2 and "Error: --num_filters=0: expected a whole number" in out.stderr
    out = run("imagenet", "--config.model.name=resnet18", "--model=resnet34",
              f"--output_dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert ("Error: --config.model.name='resnet18' and --model='resnet34' set the same thing"
            in out.stderr) and "Traceback" not in out.stderr


def test_vae_takes_a_config_file_with_overrides(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text((REPO / "examples/vae/configs/default.py").read_text())
    out = run("vae", f"--config={config}", "--config.data.dataset=mnist",
              f"--data_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'o'}")
    assert out.returncode == 2 and "Error: mnist not found" in out.stderr, out.stderr[-2000:]
    out = run("vae", "--config.model.latents=4", "--latents=5", f"--output_dir={tmp_path}")
    assert out.returncode == 2 and "set the same thing" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_dataclass_of_imagenet_lists_every_config_leaf():
    from examples.imagenet import train

    fields = {f.name for f in dataclasses.fields(train.Config)} | {"num_steps"}
    spec = REPO / "examples/imagenet/configs/default.py"
    namespace: dict = {}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    leaves = {p.rsplit(".", 1)[-1] for p, _ in config_lib.leaves(namespace["get_config"]())}
    assert (leaves - {"name"}) <= fields


def test_mnist_takes_nested_overrides_and_refuses_conflicts(tmp_path):
    out = run("mnist", "--config.optimizer.learning_rate=0", f"--output_dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Error: --learning_rate=0.0: expected a number > 0." in out.stderr
    out = run("mnist", "--config.num_epochs=2", "--num_epochs=3", f"--output_dir={tmp_path}")
    assert out.returncode == 2 and "set the same thing" in out.stderr
    assert "Traceback" not in out.stderr
