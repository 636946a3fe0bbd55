"""Config files with nested overrides for the examples, next to their flat flags.

Flax's own examples take an ``ml_collections`` config file and ``--config.x.y=value``
overrides. The flaxen examples keep their flat flags (``--learning_rate=0.01``) and accept
both; each example wires this in with two lines::

    app.run(main, flags_parser=config_lib.flags_parser(__file__))  # defines --config, parses
    config_lib.apply_config()                    # first in main(): config -> the flat flags

``--config`` defaults to the example's ``configs/default.py``, whose values equal the flat
flags' defaults. Each leaf of the config sets the flat flag named like the leaf's last part
(``config.model.latents`` sets ``--latents``), so the rest of the example keeps reading its
flags as before. Who wins, from strongest to weakest:

1. a flat flag given on the command line (``--latents=32``);
2. an override on the command line (``--config.model.latents=32``) or the config file;
3. the flat flag's default.

Giving the same setting both ways (``--config.model.latents=8 --latents=16``) is an error,
and so is a config leaf with no flat flag of its name.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

from flaxen.errors import FlaxenError


class ConfigFlagError(FlaxenError):
    """A config file, or an override, that the example's flat flags cannot take."""


def define_config_flag(example_file: str, *, flag_values: flags.FlagValues = flags.FLAGS,
                       default: str | None = None, argv: list[str] | None = None) -> None:
    """Defines ``--config`` (a config file) and its ``--config.x.y=value`` overrides.

    Args:
      example_file: the example's ``train.py`` (``__file__``); the default config is
        ``configs/default.py`` next to it if there is one, else none (then
        ``--config.x=value`` needs ``--config=FILE`` too).
      flag_values: where to define the flag (absl's global ``FLAGS`` by default).
      default: another default config file.
      argv: the command line to find ``--config.x`` overrides in (``sys.argv`` by default;
        ml_collections registers one flag per override when ``--config`` is defined).
    """
    path: str | None = default or os.path.join(
        os.path.dirname(os.path.abspath(example_file)), "configs", "default.py")
    if default is None and not os.path.isfile(str(path)):
        path = None  # no default config: --config=FILE (and its overrides) is optional
    config_flags.DEFINE_config_file(
        "config", path, "An ml_collections config file (a get_config() function); override "
        "one field with --config.x.y=value. A flat flag given on the command line wins over "
        "the config; giving one setting both ways is an error.", flag_values=flag_values,
        sys_argv=argv)


def flags_parser(example_file: str, *, default: str | None = None,
                 flag_values: flags.FlagValues = flags.FLAGS) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``app.run``: defines ``--config`` (see
    :func:`define_config_flag`), then parses the command line.

    A bad flag, config file or override is one ``Error:`` line and exit status 2.
    """
    def parse(argv: list[str]) -> list[str]:
        with warnings.catch_warnings():
            # ml_collections loads config files with importlib's deprecated load_module().
            warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
            return _parse(argv)

    def _parse(argv: list[str]) -> list[str]:
        try:
            define_config_flag(example_file, flag_values=flag_values, default=default,
                               argv=argv)
        except (AttributeError, KeyError) as e:
            # ml_collections reads the default config, and applies the overrides, here.
            given = [a.split("=")[0] for a in argv if a.startswith(("--config.", "-config."))]
            fail(f"an override names a field the config does not have ({e}; given: "
                 f"{', '.join(given)}).")
        except (ValueError, TypeError, OSError) as e:
            fail(f"the config and its --config.x=value overrides: {e}")
        try:
            return flag_values(argv)
        except (flags.Error, ValueError, TypeError, AttributeError, KeyError, OSError) as e:
            fail(f"{e} (see --helpfull)")
        raise AssertionError("unreachable")

    return parse


def fail(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf of a nested mapping (a ``ConfigDict``)."""
    for key, value in tree.items():
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_config(flag_values: flags.FlagValues = flags.FLAGS,
                 renames: Mapping[str, str] | None = None) -> Any:
    """Sets each flat flag not given on the command line from the parsed ``--config``.

    Args:
      flag_values: the parsed flags (absl's global ``FLAGS`` by default).
      renames: ``{config path: flag name}`` where the flag is not named like the leaf.

    Returns:
      The config (a ``ConfigDict``), for logging or saving; None when there is none (no
      ``--config`` and no default config file).

    Raises:
      ConfigFlagError: one setting given both as ``--config.x`` and as ``--x``; a config
        leaf with no flag of its name; a value the flag cannot take.
    """
    holder = flag_values["config"]
    if holder.value is None:  # no --config and no default config file
        return None
    source = config_flags.get_config_filename(holder)
    try:  # a file that failed to load raises on first use
        config: Any = holder.value
        overrides = config_flags.get_override_values(holder)
        items = list(leaves(config))
    except OSError as e:
        raise ConfigFlagError(f"cannot load the config file {source!r} (resolved: "
                              f"{os.path.abspath(source)}): "
                              f"{str(e).splitlines()[-1].strip()}") from e
    renames = renames or {}
    seen: dict[str, str] = {}
    for path, value in items:
        name = renames.get(path, path.rsplit(".", 1)[-1])
        if name not in flag_values:
            raise ConfigFlagError(f"{source} (resolved: {os.path.abspath(source)}): config "
                                  f"field {path} has no flag --{name}; remove it from the "
                                  "config, or rename it to one of the example's flags.")
        if name in seen:
            raise ConfigFlagError(f"{source}: config fields {seen[name]} and {path} both set "
                                  f"--{name}; keep one.")
        seen[name] = path
        flag = flag_values[name]
        if flag.present:  # given on the command line: it wins, unless also overridden
            if path in overrides:
                raise ConfigFlagError(
                    f"--config.{path}={overrides[path]!r} and --{name}={flag.value!r} set the "
                    f"same thing; give one of them.")
            continue
        try:
            flag.value = None if value is None else flag.parser.parse(value)
        except (flags.Error, ValueError, TypeError) as e:
            given = f"--config.{path}" if path in overrides else f"{path} in {source}"
            raise ConfigFlagError(f"{given}={value!r} is not a valid --{name}: {e}") from e
    return config
