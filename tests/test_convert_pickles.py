"""The stylegan2-ada network-pickle reader: state dicts and init kwargs come out of the
stored state, the pickled class source is never imported or run, and anything outside a
network pickle's vocabulary is refused. Runs without torch: the pickle here holds numpy
arrays where a real one holds torch tensors, and `require_torch` is stubbed."""

import pickle
import sys
import types

import numpy as np
import pytest

from tfgan_eff.convert import common, pickles

SOURCE = "raise RuntimeError('the pickled source ran')\n"


def _fake_modules(monkeypatch):
  """torch_utils.persistence and dnnlib.util as a writer of such pickles sees them."""
  persistence = types.ModuleType("torch_utils.persistence")
  util = types.ModuleType("dnnlib.util")

  def _reconstruct_persistent_obj(meta):  # what the real reader would call: never here
    raise AssertionError("the reference's reconstruct function was called")

  class EasyDict(dict):
    pass

  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
  persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
  util.EasyDict = EasyDict
  for name, mod in (("torch_utils", types.ModuleType("torch_utils")),
                    ("torch_utils.persistence", persistence),
                    ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
    monkeypatch.setitem(sys.modules, name, mod)
  return persistence, EasyDict


class _Persistent:
  """Pickles as stylegan2-ada's persistent classes do: (reconstruct, (meta,))."""

  def __init__(self, reconstruct, easydict, class_name, state):
    self.args = (reconstruct, easydict, class_name, state)

  def __reduce__(self):
    reconstruct, easydict, class_name, state = self.args
    return reconstruct, (easydict(type="class", version=4, module_src=SOURCE,
                                  class_name=class_name, state=easydict(state)),)


def _module(params=None, buffers=None, modules=None, **extra):
  return {"_parameters": dict(params or {}), "_buffers": dict(buffers or {}),
          "_non_persistent_buffers_set": set(extra.pop("non_persistent", ())),
          "_modules": dict(modules or {}), **extra}


def _write(path, monkeypatch, extra_entry=None):
  persistence, easydict = _fake_modules(monkeypatch)
  rec = persistence._reconstruct_persistent_obj
  fc = _Persistent(rec, easydict, "FullyConnectedLayer",
                   _module({"weight": np.ones([2, 3], np.float32),
                            "bias": np.zeros([2], np.float32)}))
  g_state = _module(buffers={"w_avg": np.arange(2, dtype=np.float32),
                             "tmp": np.zeros(1, np.float32)},
                    modules={"fc0": fc}, non_persistent=("tmp",),
                    _init_kwargs=easydict(z_dim=3, mapping_kwargs=easydict(num_layers=1)))
  data = {"G": _Persistent(rec, easydict, "Generator", g_state),
          "training_set_kwargs": {"path": "x"}}
  if extra_entry is not None:
    data["evil"] = extra_entry
  with open(path, "wb") as f:
    pickle.dump(data, f)


@pytest.fixture
def no_torch(monkeypatch):
  monkeypatch.setattr(pickles, "require_torch",
                      lambda: types.SimpleNamespace(serialization=types.SimpleNamespace()))


def test_state_dict_and_init_kwargs_without_running_the_source(tmp_path, monkeypatch,
                                                               no_torch):
  path = str(tmp_path / "net.pkl")
  _write(path, monkeypatch)
  for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
    monkeypatch.delitem(sys.modules, name)  # the reader must not need them
  nets = pickles.read_network_pickle(path)
  assert list(nets) == ["G"]
  sd, kwargs = nets["G"]
  assert sorted(sd) == ["fc0.bias", "fc0.weight", "w_avg"]  # no non-persistent buffer
  np.testing.assert_array_equal(sd["w_avg"], [0.0, 1.0])
  assert kwargs == {"z_dim": 3, "mapping_kwargs": {"num_layers": 1}}


def test_foreign_globals_are_refused(tmp_path, monkeypatch, no_torch):
  path = str(tmp_path / "evil.pkl")
  _write(path, monkeypatch, extra_entry=types.SimpleNamespace(a=1))  # types.SimpleNamespace
  with pytest.raises(common.ConversionError, match="types.SimpleNamespace"):
    pickles.read_network_pickle(path)

  class Eval:
    def __reduce__(self):
      return eval, ("1 + 1",)

  _write(path, monkeypatch, extra_entry=Eval())
  with pytest.raises(common.ConversionError, match="builtins.eval"):
    pickles.read_network_pickle(path)


def test_not_a_network_pickle(tmp_path, no_torch):
  path = str(tmp_path / "x.pkl")
  with open(path, "wb") as f:
    pickle.dump({"a": 1}, f)
  with pytest.raises(common.ConversionError, match="holds no networks"):
    pickles.read_network_pickle(path)
