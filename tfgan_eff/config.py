"""gin helpers: the one configuration system of tfgan_eff."""

import os

import gin


def configurable(cls_or_fn):
  """Registers a class or function with gin under its own name.

  Keras 3 layers cannot take `@gin.configurable` directly (Keras inspects `__init__`'s
  argument spec in `__new__`), so classes are registered as external configurables, which
  gin wraps in a subclass of the same name.
  """
  module = cls_or_fn.__module__.split(".")[-1]
  return gin.external_configurable(cls_or_fn, name=cls_or_fn.__name__, module=module)


def parse(gin_files=(), gin_params=(), finalize=True):
  """Parses gin files and bindings; unknown names fail with one clear message."""
  for path in gin_files:
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"gin file '{path}' does not exist. Pass an existing file to --gin_file "
          f"(the configs shipped with tfgan_eff are in its gin/ folder).")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                        finalize_config=finalize)
  except (ValueError, KeyError, gin.config.GinParseError if hasattr(gin.config, "GinParseError") else SyntaxError) as e:
    raise ValueError(
        f"Bad gin configuration: {e}\nCheck the spelling of the parameter against the "
        f"configurables listed in docs/configuration.md, or run with a shipped gin/ file.") from e
