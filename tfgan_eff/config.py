"""gin helpers: the one configuration system of tfgan_eff."""

import inspect
import os
import re

import gin


def configurable(cls_or_fn):
  """Registers a class or function with gin under its own name.

  Keras 3 layers cannot take `@gin.configurable` directly (Keras inspects `__init__`'s
  argument spec in `__new__`), so classes are registered as external configurables: gin
  wraps a class in a subclass of the same name (with its own metaclass, whose `__call__`
  injects the bindings) that makes instances of the original class. The module's name is
  bound to that wrapper, so `isinstance(x, RotationTerm)` would be False for every
  `RotationTerm`; the wrapper's metaclass is therefore taught to answer `isinstance` and
  `issubclass` as the original class does.
  """
  module = cls_or_fn.__module__.split(".")[-1]
  wrapper = gin.external_configurable(cls_or_fn, name=cls_or_fn.__name__, module=module)
  meta = type(wrapper)
  if inspect.isclass(cls_or_fn) and meta is not type(cls_or_fn):  # gin's own metaclass
    base = type(cls_or_fn)

    def instancecheck(klass, obj):
      return (isinstance(obj, cls_or_fn) if klass is wrapper
              else base.__instancecheck__(klass, obj))

    def subclasscheck(klass, sub):
      return (issubclass(sub, cls_or_fn) if klass is wrapper
              else base.__subclasscheck__(klass, sub))
    meta.__instancecheck__, meta.__subclasscheck__ = instancecheck, subclasscheck
  return wrapper


# The folder holding tfgan_eff/ and gin/: `include 'gin/x.gin'` and `--gin_file=gin/x.gin`
# resolve from the working directory first, then from here.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path):
  """A gin file path as given, or relative to the project root; clear error if neither."""
  if os.path.exists(path):
    return path
  shipped = os.path.join(PROJECT_ROOT, path)
  if not os.path.isabs(path) and os.path.exists(shipped):
    return shipped
  raise FileNotFoundError(
      f"gin file '{path}' does not exist. Pass an existing file to --gin_file (the configs "
      f"shipped with tfgan_eff are in {os.path.join(PROJECT_ROOT, 'gin')}).")


def parse(gin_files=(), gin_params=(), finalize=True):
  """Parses gin files and bindings; unknown names fail with one clear message."""
  files = [resolve(p) for p in gin_files]
  if PROJECT_ROOT not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
    gin.add_config_file_search_path(PROJECT_ROOT)
  try:
    gin.parse_config_files_and_bindings(files, list(gin_params), finalize_config=finalize)
  except (ValueError, KeyError, SyntaxError, IOError) as e:
    missing = re.search(r"No bindings specified for '([^'/]+)/gin\.macro'", str(e))
    if missing:
      name = missing.group(1)
      raise ValueError(
          f"The gin configuration needs a value for {name} (a macro the config uses but "
          f"does not set, e.g. a data folder or a source run). Pass it with "
          f"--gin_param=\"{name}='...'\"; the comment at the top of the gin file says what "
          f"it is.") from None
    raise ValueError(
        f"Bad gin configuration: {e}\nCheck the spelling against the configurables' "
        f"docstrings (e.g. `python -c 'import tfgan_eff.configurables; help(...)'`) or start "
        f"from a shipped gin/ file.") from e
