"""bin/study: grids from a gin spec, aggregation, skip/resume, and the smoke study end to end."""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import gin
import matplotlib.axes
import numpy as np
import pytest

from tfgan_eff import study
from tfgan_eff.io import write_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "studies", "smoke.gin")


def _row(method, seed, step, fid, **kw):
  return {"grid": "g", "data": "k100", "method": method, "seed": seed,
          "cell": f"g-{method}-k100-s{seed}", "step": step, "kimg": step * 0.032, "fid": fid,
          "kid": fid / 1000, **kw}


def test_aggregate_mean_std_and_best_step():
  rows = []
  # seed 0 is best at step 200 (FID 10), seed 1 at step 300 (FID 20), seed 2 at 100 (30).
  for seed, curve in enumerate([[40, 10, 15], [50, 30, 20], [30, 35, 60]]):
    for i, fid in enumerate(curve):
      rows.append(_row("none", seed, 100 * (i + 1), fid, gap_train_heldout=0.1 * seed))
  agg = study.aggregate(rows)[("g", "k100", "none")]
  assert agg["seeds"] == [0, 1, 2]
  assert agg["best_fid"]["mean"] == pytest.approx(20.0)
  assert agg["best_fid"]["std"] == pytest.approx(10.0)  # sample std of 10, 20, 30
  assert (agg["best_fid"]["min"], agg["best_fid"]["max"]) == (10.0, 30.0)
  assert agg["best_kimg"]["mean"] == pytest.approx((200 + 300 + 100) / 3 * 0.032)
  assert agg["final_fid"]["mean"] == pytest.approx((15 + 20 + 60) / 3)
  assert agg["best_kid"]["mean"] == pytest.approx(0.020)
  assert agg["final_gap_train_heldout"]["mean"] == pytest.approx(0.1)


def test_aggregate_round_trips_through_csv(tmp_path):
  rows = [_row("none", s, st, 50.0 - st / 10 + s, in_class_rate=st / 400 + s / 10,
               real_in_class_rate=0.99) for s in range(2) for st in (100, 200)]
  rows += [_row("aug", s, st, 20.0 + s, class_consistency=0.8 + 0.1 * s,
                label_accuracy_unlabelled=0.9) for s in range(2) for st in (100, 200)]
  path = str(tmp_path / "study.csv")
  study.write_csv(path, rows)
  back = study.read_csv(path)
  assert study.aggregate(back) == study.aggregate(rows)
  agg = study.aggregate(back)
  assert agg[("g", "k100", "aug")]["final_class_consistency"]["mean"] == pytest.approx(0.85)
  grid = study.Grid(name="g", gin_files=["x.gin"], methods={"none": [], "aug": []},
                    data={"k100": []})
  md = study.markdown(agg, [grid])
  assert "| aug | 85.0 ± 7.1% | 90.0 ± 0.0% |" in md and "| none |" in md
  # In-class share at the best-FID step (200: 50% and 60%) and at the last one.
  assert "| none | 55.0 ± 7.1% | 55.0 ± 7.1% [99.0 ± 0.0%] |" in md
  assert "| aug | –" not in md
  c = study.compare(agg[("g", "k100", "aug")], agg[("g", "k100", "none")])
  assert c["better"] and c["separated"]
  assert c["ratio"] == pytest.approx(20.5 / 30.5)
  # Overlapping seed ranges are not "separated".
  rows2 = rows + [_row("aug", 2, st, 40.0) for st in (100, 200)]
  rows2 += [_row("none", 2, st, 25.0) for st in (100, 200)]
  agg2 = study.aggregate(rows2)
  c2 = study.compare(agg2[("g", "k100", "aug")], agg2[("g", "k100", "none")])
  assert c2["separated"] is False
  # One seed against three: no spread to compare, whatever the distance.
  one = study.aggregate([r for r in rows if r["method"] == "none" or r["seed"] == 0] +
                        [_row("none", 2, st, 25.0) for st in (100, 200)])
  c1 = study.compare(one[("g", "k100", "aug")], one[("g", "k100", "none")])
  assert c1["separated"] is None and c1["outside"]
  grid.comparisons = [["aug", "none"]]
  md1 = study.markdown(one, [grid])
  assert "no spread to compare (it lies outside the other side's range)" in md1
  assert "seed ranges overlap" not in md1


def test_markdown_small_fids_keep_two_decimals():
  # MNIST-scale FIDs (2.40, 2.42 against 2.44, 2.46): one decimal would print "2.4 ± 0.0"
  # on both sides and hide the spread and the difference.
  rows = [_row("none", s, 100, fid) for s, fid in enumerate([2.44, 2.46])]
  rows += [_row("aug", s, 100, fid) for s, fid in enumerate([2.40, 2.42])]
  rows += [_row("big", s, 100, fid) for s, fid in enumerate([48.04, 30.0])]
  rows += [_row("tight", s, 100, fid) for s, fid in enumerate([2.444, 2.451])]
  rows += [_row("same", s, 100, fid) for s, fid in enumerate([2.5, 2.5])]
  grid = study.Grid(name="g", gin_files=["x.gin"],
                    methods={"none": [], "aug": [], "big": [], "tight": [], "same": []},
                    data={"k100": []}, comparisons=[["aug", "none"]])
  md = study.markdown(study.aggregate(rows), [grid])
  assert "| aug | 2 | 100 | 2.41 ± 0.01 | 0.98× | yes |" in md
  assert "| big | 2 | 100 | 39.0 ± 12.8 |" in md
  assert "| tight | 2 | 100 | 2.45 ± 0.005 |" in md  # a spread below the last decimal shows
  assert "| same | 2 | 100 | 2.50 ± 0.00 |" in md
  assert "best FID 2.41 ± 0.01 vs 2.45 ± 0.01 (0.98×, -0.04)" in md


def test_score_images_scores_real_images_like_samples():
  # The floors of experiments/study_floors.py: the reference's own images score far below
  # noise, the same images score the same, and the result has study.csv's keys.
  ev = study.load_spec(SMOKE).evaluation
  images = ev.reference.images
  pick = np.random.default_rng(0).integers(0, len(images), ev.num_samples)
  real = ev.score_images(images[pick])
  assert set(real) == {"fid", "kid"} and real == ev.score_images(images[pick])
  noise = np.random.default_rng(1).integers(0, 256, images[pick].shape, dtype=np.uint8)
  assert ev.score_images(noise)["fid"] > 10 * real["fid"] + 10


def test_grid_cells_and_names():
  gin.clear_config()
  g = study.Grid(name="sg", gin_files=["gin/x.gin"], bindings=["A = 1"],
                 methods={"none": [], "aug": ["GAN.augment = @DiffAugment()"]},
                 data={"k100": ["NUM_IMAGES = 100"]}, seeds=[0, 5])
  cells = g.cells(extra=["M = 'p'"])
  assert [c.name for c in cells] == ["sg-none-k100-s0", "sg-aug-k100-s0", "sg-none-k100-s5",
                                     "sg-aug-k100-s5"]
  assert cells[3].bindings == ("M = 'p'", "A = 1", "NUM_IMAGES = 100",
                               "GAN.augment = @DiffAugment()", "SEED = 5", "GAN.seed = %SEED")
  with pytest.raises(ValueError, match="letters, digits"):
    study.Grid(name="a b", gin_files=[], methods={"x": []})
  with pytest.raises(ValueError, match="not one of its methods"):
    study.Grid(name="a", gin_files=[], methods={"x": []}, baseline="y")
  # data_methods: the k1000 size runs only "none"; k100 runs both.
  g2 = study.Grid(name="sg", gin_files=[], methods={"none": [], "aug": []},
                  data={"k100": [], "k1000": []}, data_methods={"k1000": ["none"]})
  assert [c.name for c in g2.cells()] == ["sg-none-k100-s0", "sg-aug-k100-s0",
                                          "sg-none-k1000-s0"]
  with pytest.raises(ValueError, match="data_methods"):
    study.Grid(name="a", gin_files=[], methods={"x": []}, data={"k1": []},
               data_methods={"k1": ["y"]})
  # method_seeds: a third seed of "aug" only, at every data size (over data_seeds too), after
  # every method's first seeds; the other cells keep their names and bindings.
  g3 = study.Grid(name="sg", gin_files=[], methods={"none": [], "aug": ["A = 2"]},
                  data={"k100": [], "k1000": []}, seeds=[0, 1], data_seeds={"k1000": [0]},
                  method_seeds={"aug": [0, 1, 2]})
  assert [c.name for c in g3.cells()] == [
      "sg-none-k100-s0", "sg-aug-k100-s0", "sg-none-k100-s1", "sg-aug-k100-s1",
      "sg-aug-k100-s2", "sg-none-k1000-s0", "sg-aug-k1000-s0", "sg-aug-k1000-s1",
      "sg-aug-k1000-s2"]
  assert g3.cells()[4].bindings == ("A = 2", "SEED = 2", "GAN.seed = %SEED")
  for bad, match in (({"y": [3]}, "method_seeds names"), ({"none": [1, 1]}, "distinct")):
    with pytest.raises(ValueError, match=match):
      study.Grid(name="a", gin_files=[], methods={"none": []}, method_seeds=bad)


def test_changed_spec_is_refused_before_any_work(tmp_path):
  g = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []})
  cell = g.cells()[0]
  assert study.cell_status(str(tmp_path), cell) == "new"
  d = study.cell_dir(str(tmp_path), cell)
  os.makedirs(d)
  with open(os.path.join(d, "cell.json"), "w") as f:
    json.dump({"spec": cell.spec(), "status": "done"}, f)
  assert study.cell_status(str(tmp_path), cell) == "done"
  changed = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": ["A = 2"]}).cells()[0]
  with pytest.raises(ValueError, match="other settings"):
    study.cell_status(str(tmp_path), changed)


def test_a_longer_horizon_continues_a_finished_cell(tmp_path):
  def cell(steps, *extra):
    return study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": list(extra)},
                      bindings=[f"Trainer.train_steps = {steps}"]).cells()[0]

  d = study.cell_dir(str(tmp_path), cell(100))
  os.makedirs(d)
  with open(os.path.join(d, "cell.json"), "w") as f:
    json.dump({"spec": cell(100).spec(), "status": "done"}, f)
  assert study.cell_status(str(tmp_path), cell(100)) == "done"
  assert study.cell_status(str(tmp_path), cell(200)) == "partial"  # trains on to 200
  for other in (cell(50), cell(200, "A = 2")):  # shorter, or longer and otherwise changed
    with pytest.raises(ValueError, match="other settings"):
      study.cell_status(str(tmp_path), other)


def test_a_cell_without_checkpoints_sets_its_old_rows_aside_when_it_retrains(tmp_path,
                                                                             monkeypatch):
  c = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []},
                 bindings=["Trainer.train_steps = 100"]).cells()[0]
  d = study.cell_dir(str(tmp_path), c)
  os.makedirs(d)
  with open(os.path.join(d, "cell.json"), "w") as f:  # unfinished, moved without weights
    json.dump({"spec": c.spec(), "status": "training"}, f)
  with open(os.path.join(d, study.EVAL_FILE), "w") as f:
    f.write(json.dumps({"step": 50, "fid": 1.0}) + "\n")

  class Trained:  # stands for bin/train, which would start again from step 0
    def __init__(self, *args, **kwargs):
      assert not os.path.exists(os.path.join(d, study.EVAL_FILE))

    def wait(self):
      return 0

  monkeypatch.setattr(study.subprocess, "Popen", Trained)
  study.train_cell(str(tmp_path), c)
  assert os.path.exists(os.path.join(d, study.EVAL_FILE + ".before-restart"))
  assert study.cell_status(str(tmp_path), c) == "done"


def test_status_reads_each_cells_state_step_speed_and_scores(tmp_path):
  spec = tmp_path / "spec.gin"
  spec.write_text("Study.grids = [@g/Grid()]\n"
                  "g/Grid.name = 'sg'\n"
                  "g/Grid.gin_files = ['gin/x.gin']\n"
                  "g/Grid.bindings = ['Trainer.train_steps = 100']\n"
                  "g/Grid.methods = {'none': [], 'aug': ['A = 1'], 'odd': ['B = 1']}\n"
                  "g/Grid.seeds = [0, 1]\n")
  out = str(tmp_path / "out")
  cells = {c.name: c for c in study.load_spec(str(spec)).cells}

  def make(name, status, spec=None, ckpts=(), log=None, fids=()):
    d = study.cell_dir(out, cells[name])
    os.makedirs(os.path.join(d, "checkpoints"))
    with open(os.path.join(d, "cell.json"), "w") as f:
      json.dump({"spec": spec or cells[name].spec(), "status": status, "seconds": 12.0}, f)
    for s in ckpts:
      open(os.path.join(d, "checkpoints", f"ckpt-{s}.index"), "w").close()
    if log:
      with open(os.path.join(d, "train.log"), "w") as f:
        f.write(log)
    with open(os.path.join(d, study.EVAL_FILE), "w") as f:
      for step, fid in fids:
        f.write(json.dumps({"step": step, "fid": fid}) + "\n")

  make("sg-none-all-s0", "done", ckpts=(50, 100), fids=((50, 9.0), (100, 7.5)))
  make("sg-aug-all-s0", "training", ckpts=(25, 40),
       log="I trainer.py] step 20/100 | 64.0 img/s | 0.500 s/step | ETA 00:00:40 | d_loss 1\n"
           "I trainer.py] step 40/100 | 32.0 img/s | 1.000 s/step | ETA 00:01:00 | d_loss 1\n"
           "train: Interrupted by SIGTERM at step 40\n", fids=((25, 30.0),))
  make("sg-odd-all-s0", "done", spec={"other": 1})
  rows = {r["cell"]: r for r in study.status(str(spec), out)}
  assert list(rows) == list(cells)  # the spec's order
  done, part, odd, new = (rows["sg-none-all-s0"], rows["sg-aug-all-s0"], rows["sg-odd-all-s0"],
                          rows["sg-none-all-s1"])
  assert (done["state"], done["step"], done["left"], done["scored"], done["best_fid"]) == (
      "done", 100, 0.0, 2, 7.5)
  assert (part["state"], part["step"], part["horizon"], part["s_per_step"]) == (
      "partial", 40, 100, 1.0)
  assert part["left"] == 60.0 and part["best_fid"] == 30.0 and part["trained_seconds"] == 12.0
  assert odd["state"] == "mismatch"
  assert (new["state"], new["step"], new["left"], new["best_fid"]) == ("new", 0, None, None)
  text = study.format_status(list(rows.values()))
  assert "1 done, 1 partial, 3 new, 1 mismatch of 6 cells" in text
  assert "need 1m00s of cell time" in text
  assert len(study.status(str(spec), out, only="aug")) == 2
  with pytest.raises(ValueError, match="No cell"):
    study.status(str(spec), out, only="nothing")


def test_weights_dir_keeps_the_weights_outside_the_cell_and_resumes_from_them(tmp_path,
                                                                           monkeypatch):
  c = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []},
                 bindings=["Trainer.train_steps = 100"]).cells()[0]
  out, weights = str(tmp_path / "study"), str(tmp_path / "scratch")
  d = study.cell_dir(out, c)
  seen = []

  class Trained:  # stands for bin/train: it saves a checkpoint into <model_dir>/checkpoints
    def __init__(self, cmd, **kwargs):
      model_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--model_dir="))
      seen.append(sorted(os.listdir(os.path.join(model_dir, "checkpoints"))))
      with open(os.path.join(model_dir, "checkpoints", f"ckpt-{len(seen)}.index"), "w"):
        pass

    def wait(self):
      return 0

  monkeypatch.setattr(study.subprocess, "Popen", Trained)
  study.train_cell(out, c, weights_dir=weights)
  for name in study.WEIGHT_DIRS:
    assert os.path.islink(os.path.join(d, name))
    assert os.path.isdir(os.path.join(weights, c.name, name))
  assert os.listdir(os.path.join(weights, c.name, "checkpoints")) == ["ckpt-1.index"]
  # A new checkout of the results (the links lost) finds the weights again and resumes.
  for name in study.WEIGHT_DIRS:
    os.remove(os.path.join(d, name))
  study.train_cell(out, c, weights_dir=weights)
  assert seen == [[], ["ckpt-1.index"]]
  assert sorted(study._checkpoint_steps(d)) == [1, 2]  # pylint: disable=protected-access
  # A cell started with its weights inside keeps them there.
  c2 = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"old": []}).cells()[0]
  os.makedirs(os.path.join(study.cell_dir(out, c2), "checkpoints"))
  study.train_cell(out, c2, weights_dir=weights)
  assert not os.path.islink(os.path.join(study.cell_dir(out, c2), "checkpoints"))
  assert os.listdir(os.path.join(study.cell_dir(out, c2), "checkpoints")) == ["ckpt-3.index"]


def _cell_with_checkpoints(tmp_path, steps):
  """A cell folder with (empty) checkpoints at `steps`, one every step up to the last."""
  c = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []}).cells()[0]
  d = study.cell_dir(str(tmp_path), c)
  os.makedirs(os.path.join(d, "checkpoints"))
  for step in steps:
    open(os.path.join(d, "checkpoints", f"ckpt-{step}.index"), "w").close()
  with open(os.path.join(d, "config.gin"), "w") as f:
    f.write(f"Trainer.checkpoint_every = 1\nTrainer.train_steps = {max(steps)}\n")
  return c, d


class _Scorer:
  """Base of the stand-ins for `study._CellEvaluation`: a cell without a class subset."""

  def __init__(self, ev, model_dir):
    del ev, model_dir

  def supplement(self, step, path):
    del step, path
    return {"in_class_rate": None}


def _recording_scorer(monkeypatch):
  """Puts a stand-in scorer in place that records the checkpoints it scores; -> that list."""
  calls = []

  class Scorer(_Scorer):

    def score(self, step, path):
      calls.append(os.path.basename(path))
      return {"step": step}

    def write_grid(self, path, name=study.GRID_FILE):
      del path, name

  monkeypatch.setattr(study, "_CellEvaluation", Scorer)
  return calls


def _scored_cell(tmp_path, rows):
  """A finished cell with checkpoints 1 and 2, these evaluation rows on file, its grid and
  its best grid (of step 2); -> (cell, its folder)."""
  c, d = _cell_with_checkpoints(tmp_path, (1, 2))
  with open(os.path.join(d, study.EVAL_FILE), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  open(os.path.join(d, study.GRID_FILE), "w").close()
  with open(os.path.join(d, study.BEST_GRID_META), "w") as f:
    f.write('{"step": 2}\n')
  return c, d


def test_rows_scored_before_a_column_existed_get_it_from_their_checkpoints(tmp_path,
                                                                           monkeypatch):
  # in_class_rate came after these rows were scored: each step lacking it is computed once
  # from its checkpoint (a step on file twice too), the rest of the row kept; rows of another
  # protocol or without a checkpoint stay as they are; then there is nothing more to do.
  old = [{"protocol": "p", "step": 1, "fid": 9.0}, {"protocol": "p", "step": 2, "fid": 8.0},
         {"protocol": "p", "step": 1, "fid": 9.0}, {"protocol": "q", "step": 2, "fid": 7.0},
         {"protocol": "p", "step": 3, "fid": 6.0}]  # step 3's checkpoint was deleted
  c, d = _scored_cell(tmp_path, old)
  calls = []

  class Scorer(_Scorer):
    def score(self, step, path):
      raise AssertionError("nothing to rescore")

    def supplement(self, step, path):
      calls.append(os.path.basename(path))
      return {"in_class_rate": step / 10, "real_in_class_rate": 0.99}

  monkeypatch.setattr(study, "_CellEvaluation", Scorer)
  ev = types.SimpleNamespace(protocol="p", every=1, orientation=None)
  rows = study.evaluate_cell(ev, str(tmp_path), c)
  assert calls == ["ckpt-1", "ckpt-2"]
  assert sorted((r["step"], r["fid"], r["in_class_rate"]) for r in rows) == [
      (1, 9.0, 0.1), (2, 8.0, 0.2)]
  with open(os.path.join(d, study.EVAL_FILE)) as f:
    on_file = [json.loads(line) for line in f]
  assert [r.get("in_class_rate") for r in on_file] == [0.1, 0.2, 0.1, None, None]
  assert on_file[3] == old[3] and on_file[4] == old[4]
  calls.clear()
  assert len(study.evaluate_cell(ev, str(tmp_path), c)) == 2 and not calls
  # A report-only pass (score=False) computes nothing.
  with open(os.path.join(d, study.EVAL_FILE), "a") as f:
    f.write(json.dumps({"protocol": "p", "step": 2, "fid": 8.0}) + "\n")
  shutil.rmtree(os.path.join(d, "checkpoints"))
  os.makedirs(os.path.join(d, "checkpoints"))
  open(os.path.join(d, "checkpoints", "ckpt-2.index"), "w").close()
  with open(os.path.join(d, "config.gin"), "w") as f:
    f.write("Trainer.checkpoint_every = 2\nTrainer.train_steps = 2\n")
  assert study.evaluate_cell(ev, str(tmp_path), c, score=False)[0]["in_class_rate"] == 0.2
  assert not calls


def test_the_orientation_check_scores_new_rows_and_fills_in_rows_scored_before_it(tmp_path,
                                                                                 monkeypatch):
  # Rows scored before the check was switched on lack `upright`: while it is off they are
  # complete; switched on, each gets it from its checkpoint, once.
  c, _ = _scored_cell(tmp_path, [{"protocol": "p", "step": s, "fid": 9.0 - s,
                                   "in_class_rate": None} for s in (1, 2)])
  calls = []

  class Scorer(_Scorer):
    def score(self, step, path):
      raise AssertionError("nothing to rescore")

    def supplement(self, step, path):
      calls.append(step)
      return {"in_class_rate": None, "upright": 0.5 + step / 10, "real_upright": 0.9}

  monkeypatch.setattr(study, "_CellEvaluation", Scorer)
  off = types.SimpleNamespace(protocol="p", every=1, orientation=None)
  assert [r.get("upright") for r in study.evaluate_cell(off, str(tmp_path), c)] == [None, None]
  assert not calls
  on = types.SimpleNamespace(protocol="p", every=1, orientation="dihedral")
  rows = study.evaluate_cell(on, str(tmp_path), c)
  assert calls == [1, 2] and [r["upright"] for r in rows] == [0.6, 0.7]
  assert len(study.evaluate_cell(on, str(tmp_path), c)) == 2 and calls == [1, 2]
  # The summary and the table: the final checkpoint's ratio to the reals'.
  summary = study.per_cell_summary([{**r, "grid": "g"} for r in rows])
  assert summary["final_upright_ratio"] == pytest.approx(0.7 / 0.9)


def test_markdown_upright_column_says_how_many_seeds_have_it():
  rows = [_row("none", 0, 100, 20.0, upright=0.45, real_upright=0.9),
          _row("none", 1, 100, 22.0, upright=0.81, real_upright=0.9),
          _row("none", 2, 100, 24.0),  # scored before the check, weights gone
          _row("aug", 0, 100, 10.0)]
  grid = study.Grid(name="g", gin_files=["x.gin"], methods={"none": [], "aug": []},
                    data={"k100": []})
  md = study.markdown(study.aggregate(rows), [grid])
  line = next(x for x in md.splitlines() if x.startswith("| none |"))
  assert "| 0.70 ± 0.28 (2 of 3 seeds) |" in line
  line = next(x for x in md.splitlines() if x.startswith("| aug |"))
  assert line.count("| – |") >= 2  # no ratio (and no leak figures) without the check
  with pytest.raises(ValueError, match="orientation must be None or one of"):
    study.StudyEval(feature_extractor="digits", orientation="flips")


def test_a_rescore_fills_in_missing_steps_and_draws_the_grid_from_the_last_checkpoint(
    tmp_path, monkeypatch):
  # A cell scored every 2nd checkpoint, then every one: only the missing steps are scored,
  # and its grid is of its last checkpoint, not of the last one scored. Another process
  # scoring the same cell meanwhile (it writes step 3 while this one scores step 1) is not
  # repeated, and a step written twice counts once.
  c, d = _cell_with_checkpoints(tmp_path, (1, 2, 3, 4))
  with open(os.path.join(d, study.EVAL_FILE), "w") as f:
    for step in (2, 4, 2):
      f.write(json.dumps({"cell": c.name, "protocol": "p", "step": step}) + "\n")
  open(os.path.join(d, study.GRID_FILE), "w").close()
  calls = []

  class Scorer(_Scorer):  # stands for the real one, which restores each checkpoint it is given

    def score(self, step, path):
      calls.append(("score", os.path.basename(path)))
      if step == 1:  # the other process
        with open(os.path.join(d, study.EVAL_FILE), "a") as f:
          f.write(json.dumps({"cell": c.name, "protocol": "p", "step": 3}) + "\n")
      return {"step": step}

    def write_grid(self, path, name=study.GRID_FILE):
      calls.append(("grid", os.path.basename(path)))
      assert name == study.GRID_FILE  # no FID in these rows: no best grid

  monkeypatch.setattr(study, "_CellEvaluation", Scorer)
  ev = types.SimpleNamespace(protocol="p", every=1, orientation=None)
  rows = study.evaluate_cell(ev, str(tmp_path), c)
  assert calls == [("score", "ckpt-1"), ("grid", "ckpt-4")]
  assert sorted(r["step"] for r in rows) == [1, 2, 3, 4]
  calls.clear()  # all scored and a grid on file: nothing to do
  assert len(study.evaluate_cell(ev, str(tmp_path), c)) == 4 and not calls


def test_a_grids_eval_every_overrides_the_studys(tmp_path, monkeypatch):
  # StudyEval.every = 2 scores checkpoints 2 and 4 of 1..4; a grid with eval_every = 1 scores
  # all four of its cells' checkpoints, with the same protocol; a bad value is refused.
  calls = _recording_scorer(monkeypatch)
  ev = types.SimpleNamespace(protocol="p", every=2, orientation=None)
  c, _ = _cell_with_checkpoints(tmp_path / "a", (1, 2, 3, 4))
  assert c.eval_every is None
  assert [r["step"] for r in study.evaluate_cell(ev, str(tmp_path / "a"), c)] == [2, 4]
  assert calls == ["ckpt-2", "ckpt-4"]
  calls.clear()
  fine = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []},
                    eval_every=1).cells()[0]
  assert fine.eval_every == 1 and fine.name == c.name and fine.spec() == c.spec()
  _cell_with_checkpoints(tmp_path / "b", (1, 2, 3, 4))
  assert [r["step"] for r in study.evaluate_cell(ev, str(tmp_path / "b"), fine)] == [1, 2, 3, 4]
  assert calls == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="eval_every"):
      study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"none": []}, eval_every=bad)


def test_two_processes_take_turns_scoring_a_cells_checkpoint(tmp_path, monkeypatch):
  # Another process holds the cell's scoring lock while it scores step 1: this one waits
  # instead of scoring step 1 at the same time, then finds it on file and scores only step 2.
  import fcntl  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  c, d = _cell_with_checkpoints(tmp_path, (1, 2))
  calls = _recording_scorer(monkeypatch)
  ev = types.SimpleNamespace(protocol="p", every=1, orientation=None)
  other = open(os.path.join(d, "checkpoints", study.SCORING_LOCK), "a")  # its own open file
  fcntl.flock(other, fcntl.LOCK_EX)
  result = []
  t = threading.Thread(target=lambda: result.append(study.evaluate_cell(ev, str(tmp_path), c)))
  t.start()
  time.sleep(0.5)
  assert not calls and t.is_alive()  # waiting for the other process
  with open(os.path.join(d, study.EVAL_FILE), "a") as f:
    f.write(json.dumps({"cell": c.name, "protocol": "p", "step": 1}) + "\n")
  fcntl.flock(other, fcntl.LOCK_UN)
  other.close()
  t.join(10)
  assert calls == ["ckpt-2"]
  assert sorted(r["step"] for r in result[0]) == [1, 2]
  with open(os.path.join(d, study.EVAL_FILE)) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]


def test_the_best_checkpoints_grid_is_drawn_once_and_follows_a_new_best(tmp_path,
                                                                         monkeypatch):
  # A cell scored before best grids existed gets one of its best-FID checkpoint (not the
  # last) without rescoring; then nothing more; a continued cell whose new checkpoint is the
  # new best redraws it. The side-by-side figure titles it with its step, FID and copies.
  c, d = _cell_with_checkpoints(tmp_path, (1, 2, 3))
  with open(os.path.join(d, study.EVAL_FILE), "w") as f:
    for step, fid in ((1, 30.0), (2, 10.0), (3, 20.0)):
      f.write(json.dumps({"cell": c.name, "protocol": "p", "step": step, "fid": fid,
                          "memorisation_rate": step / 10}) + "\n")
  open(os.path.join(d, study.GRID_FILE), "w").close()
  calls = []

  class Scorer(_Scorer):

    def score(self, step, path):
      calls.append(("score", os.path.basename(path)))
      return {"step": step, "fid": 5.0, "memorisation_rate": 0.9}

    def write_grid(self, path, name=study.GRID_FILE):
      calls.append((name, os.path.basename(path)))
      write_png(os.path.join(d, name), np.full((8, 8, 1), 200, np.uint8))

  monkeypatch.setattr(study, "_CellEvaluation", Scorer)
  ev = types.SimpleNamespace(protocol="p", every=1, orientation=None)
  assert len(study.evaluate_cell(ev, str(tmp_path), c)) == 3
  assert calls == [(study.BEST_GRID_FILE, "ckpt-2")]
  assert study.best_grid_step(d) == 2
  calls.clear()
  assert len(study.evaluate_cell(ev, str(tmp_path), c)) == 3 and not calls
  # --notrain's report-only pass (score=False) draws nothing either.
  os.remove(os.path.join(d, study.BEST_GRID_META))
  assert len(study.evaluate_cell(ev, str(tmp_path), c, score=False)) == 3 and not calls

  open(os.path.join(d, "checkpoints", "ckpt-4.index"), "w").close()  # continued to step 4
  with open(os.path.join(d, "config.gin"), "w") as f:
    f.write("Trainer.checkpoint_every = 1\nTrainer.train_steps = 4\n")
  assert len(study.evaluate_cell(ev, str(tmp_path), c)) == 4
  assert calls == [("score", "ckpt-4"), (study.GRID_FILE, "ckpt-4"),
                   (study.BEST_GRID_FILE, "ckpt-4")]
  with open(os.path.join(d, study.BEST_GRID_META)) as f:
    assert json.load(f) == {"step": 4, "kimg": None, "fid": 5.0, "memorisation_rate": 0.9}

  spec = types.SimpleNamespace(grids=[study.Grid(name="sg", gin_files=["gin/x.gin"],
                                                 methods={"none": []})])
  titles = []
  monkeypatch.setattr("matplotlib.axes.Axes.set_title",
                      lambda self, t, **kw: titles.append(t))
  assert study.plot_grids(str(tmp_path), spec, str(tmp_path / "best.png"), best=True)
  assert titles == ["none\nstep 4 · FID 5.0 · memo 0.90"]
  # the best grid's gray 200 is in the figure
  drawn = study._pyplot().imread(str(tmp_path / "best.png"))
  assert (np.abs(drawn - 200 / 255) < 1e-6).sum() >= 8 * 8
  # An image without its record (a kill between the two writes) is left out, not a crash.
  os.remove(os.path.join(d, study.BEST_GRID_META))
  assert not study.plot_grids(str(tmp_path), spec, str(tmp_path / "best2.png"), best=True)


def test_figures_are_written_in_the_fewest_channels_that_hold_them_exactly(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  plt = study._pyplot()
  for color, mode in (("gray", "L"), ("red", "RGB")):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1], color=color)
    ref = str(tmp_path / f"{color}_matplotlib.png")
    fig.savefig(ref, dpi=50)
    path = str(tmp_path / f"{color}.png")
    study._save_figure(plt, fig, path, dpi=50)
    with Image.open(path) as im, Image.open(ref) as want:
      assert (im.mode, want.mode) == (mode, "RGBA")
      np.testing.assert_array_equal(np.asarray(im.convert("RGBA")), np.asarray(want))
    assert not os.path.exists(path + ".tmp.png")


def test_side_by_side_grids_keep_each_method_in_its_own_column(tmp_path, monkeypatch):
  # k1 lacks method a (not trained yet): b stays in b's column, under b in k2's row.
  g = study.Grid(name="sg", gin_files=["gin/x.gin"], methods={"a": [], "b": [], "c": []},
                 data={"k1": [], "k2": []})
  for cell in ("sg-b-k1-s0", "sg-a-k2-s0", "sg-b-k2-s0"):
    os.makedirs(tmp_path / "cells" / cell)
    write_png(str(tmp_path / "cells" / cell / study.GRID_FILE), np.zeros((8, 8, 1), np.uint8))
  placed, labels = [], []
  monkeypatch.setattr("matplotlib.axes.Axes.set_title", lambda self, t, **kw: placed.append(
      (self.get_subplotspec().rowspan.start, self.get_subplotspec().colspan.start, t)))
  real_text = matplotlib.axes.Axes.text
  monkeypatch.setattr("matplotlib.axes.Axes.text", lambda self, x, y, t, **kw: (
      labels.append((self.get_subplotspec().rowspan.start, t)), real_text(self, x, y, t, **kw)))
  assert study.plot_grids(str(tmp_path), types.SimpleNamespace(grids=[g]),
                          str(tmp_path / "grids.png"))
  assert placed == [(0, 1, "b"), (1, 0, "a"), (1, 1, "b")]
  assert labels == [(0, "sg · k1"), (1, "sg · k2")]  # on each row's left edge


def test_grid_after_trains_prerequisites_first_and_fills_in_the_study_dir(tmp_path,
                                                                         monkeypatch):
  spec = tmp_path / "spec.gin"
  spec.write_text("""
Study.grids = [@src/Grid(), @tgt/Grid()]
src/Grid.name = 'src'
src/Grid.gin_files = ['gin/x.gin']
src/Grid.methods = {'pre': []}
src/Grid.scored = False
tgt/Grid.name = 'tgt'
tgt/Grid.gin_files = ['gin/x.gin']
tgt/Grid.methods = {'a': [], 'b': []}
tgt/Grid.seeds = [0, 1]
tgt/Grid.after = ['src']
tgt/Grid.bindings = ["SOURCE = '{study_dir}/cells/src-pre-all-s0'"]
""")
  out = str(tmp_path / "out")
  launched = []

  class Trained:  # stands for bin/train; records the order and the bindings it got
    def __init__(self, cmd, **kwargs):
      launched.append(cmd)

    def wait(self):
      time.sleep(0.05)
      return 0

  monkeypatch.setattr(study.subprocess, "Popen", Trained)
  with pytest.raises(ValueError, match=r"needs \['src-pre-all-s0'\] trained first"):
    study.run(str(spec), out, jobs=2, evaluate=False, only="tgt")
  assert not launched
  study.run(str(spec), out, jobs=2, evaluate=False)
  names = [next(a for a in c if a.startswith("--model_dir=")).rsplit("/", 1)[1]
           for c in launched]
  assert names[0] == "src-pre-all-s0" and sorted(names[1:]) == [
      "tgt-a-all-s0", "tgt-a-all-s1", "tgt-b-all-s0", "tgt-b-all-s1"]
  assert f"--gin_param=SOURCE = '{os.path.abspath(out)}/cells/src-pre-all-s0'" in launched[1]
  with open(os.path.join(out, "cells", "tgt-a-all-s0", "cell.json")) as f:  # spec: unfilled
    assert "{study_dir}" in json.load(f)["spec"]["bindings"][0]
  gin.clear_config()
  with pytest.raises(ValueError, match="after = \\['tgt'\\] must name grids listed before"):
    study.load_spec(str(spec), ["src/Grid.after = ['tgt']"])
  gin.clear_config()


SPECS = sorted(glob.glob(os.path.join(ROOT, "studies", "*.gin")))
MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")


# The zoom specs: {spec: (data size, checkpoint cadence, {method: horizon})}.
_TRANSFERS = ("finetune", "freezed", "adafm")
ZOOMS = {
    "adafm_mnist_early.gin": ("k10", 10, {**dict.fromkeys(_TRANSFERS, 150), "scratch": 450,
                                          "adafm_faithful": 650}),
    "adafm_mnist_early_k25.gin": ("k25", 15, {**dict.fromkeys(_TRANSFERS, 450),
                                              "scratch": 825, "adafm_faithful": 600}),
}


@pytest.mark.parametrize("spec", [os.path.basename(p) for p in SPECS])
def test_every_spec_parses_and_every_cell_config_builds(spec):
  if "_mnist" in spec and not os.path.exists(MNIST):
    pytest.skip(f"no MNIST at {MNIST}")
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.gan import GAN  # pylint: disable=import-outside-toplevel
  s = study.load_spec(os.path.join(ROOT, "studies", spec))
  assert s.cells and s.evaluation is not None
  names = [c.name for c in s.cells]
  assert len(set(names)) == len(names)
  built = set()
  try:
    for c in s.cells:
      gin.clear_config()
      config.parse(c.gin_files, c.bindings)
      assert gin.query_parameter("%SEED") == c.seed
      if (c.grid, c.method) not in built:  # one GAN per method: the bindings are valid
        built.add((c.grid, c.method))
        assert GAN().terms
  finally:
    gin.clear_config()
  if spec == "augment_mnist.gin":
    # k100: 8 methods x 3 seeds, ada_linear x 5, eight diagnostics x 2 (diffaug_ctc_sepreg,
    # ada_linear_sepreg, ada_linear_sepreg_fresh, ada_linear_insgen, ada_linear_mixbatch,
    # ada_linear_sepr1, ada_linear_seppl, ada_sepreg), ada_linear_insgen_q5 x 1; k1000: 6
    # methods (no ada_linear*, no *_sepreg) x 2 seeds; BigGAN 2 x 3.
    assert len(s.cells) == 8 * 3 + 5 + 8 * 2 + 1 + 6 * 2 + 2 * 3
    assert not [c for c in s.cells if c.data == "k1000" and ("linear" in c.method
                                                             or "sepreg" in c.method)]
    assert sorted(c.seed for c in s.cells if c.method == "ada_linear") == [0, 1, 2, 3, 4]
  if spec in ZOOMS:
    # The main study's cells of one data size with only the horizon, the cadence and the
    # way the source is named changed: what both score at a step is comparable.
    data, every, horizon = ZOOMS[spec]
    gin.clear_config()
    main = {c.name: c for c in study.load_spec(os.path.join(ROOT, "studies", "adafm_mnist.gin"))
            .cells}
    gin.clear_config()
    assert sorted(c.name for c in s.cells) == sorted(n for n, c in main.items()
                                                      if c.data == data)
    changed = ("ADAFM_SOURCE", "AdaFMTransfer.source", "Trainer.train_steps",
               "Trainer.checkpoint_every")
    for c in s.cells:
      m = main[c.name]
      assert c.gin_files == m.gin_files and c.seed == m.seed
      assert ([b for b in c.bindings if not b.startswith(changed)]
              == [b for b in m.bindings if not b.startswith(changed)])
      steps = [b for b in c.bindings if b.startswith("Trainer.train_steps")]
      assert steps[-1] == f"Trainer.train_steps = {horizon[c.method]}"
      assert f"Trainer.checkpoint_every = {every}" in c.bindings


def _study_cmd(out, *extra):
  return [sys.executable, os.path.join(ROOT, "bin", "study"), f"--spec={SMOKE}",
          f"--out={out}", *extra]


# Slow (~3.5 min on 2 cores: seven processes, three traced trainers, real evaluations); the
# fast suite covers its parts: the runner's resume, skip and prerequisite logic with a stand-in
# for bin/train (above), the trainer's resume (tests/test_training.py, test_reliability.py)
# and the study metrics (tests/test_study_metrics.py).
@pytest.mark.slow
def test_smoke_study_resumes_a_killed_cell_and_skips_finished_ones(tmp_path):
  out = str(tmp_path / "smoke")
  none_dir = os.path.join(out, "cells", "smoke-none-k64-s0")
  # 1. Start the 'none' cell alone and kill the study (and its cell) after its first
  #    checkpoint, as a preempted machine would.
  proc = subprocess.Popen(_study_cmd(out, "--only=none", "--noevaluate"), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(none_dir, "checkpoints", "ckpt-3.index")):
    assert proc.poll() is None, "the study ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  with open(os.path.join(none_dir, "cell.json")) as f:
    assert json.load(f)["status"] == "training"
  # --notrain scores the unfinished cell's checkpoints so far (reported once it finishes).
  r = subprocess.run(_study_cmd(out, "--only=none", "--notrain"), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "unfinished cell smoke-none-k64-s0" in r.stderr
  with open(os.path.join(none_dir, "study_eval.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [3]

  # 2. The whole study: the killed cell resumes at step 3, the other one trains anew.
  r = subprocess.run(_study_cmd(out, "--jobs=2"), cwd=ROOT, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 to train" in r.stderr
  with open(os.path.join(none_dir, "train.log")) as f:
    log = f.read()
  assert "Resumed from" in log and "at step 3" in log
  with open(os.path.join(none_dir, "study_eval.jsonl")) as f:  # step 3 was not scored twice
    assert [json.loads(line)["step"] for line in f] == [3, 6]
  for cell in ("smoke-none-k64-s0", "smoke-diffaug-k64-s0"):
    with open(os.path.join(out, "cells", cell, "cell.json")) as f:
      assert json.load(f)["status"] == "done"
  with open(os.path.join(out, "study.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["method"], int(r["step"])) for r in rows) == [
      ("diffaug", 3), ("diffaug", 6), ("none", 3), ("none", 6)]
  for r in rows:
    assert np.isfinite(float(r["fid"])) and float(r["fid"]) > 0
    assert 0.0 <= float(r["memorisation_rate"]) <= 1.0
    assert r["gap_train_heldout"] != "" and r["gap_real_fake"] != ""
    assert 0.0 < float(r["upright"]) <= 1.0 and 0.0 < float(r["real_upright"]) <= 1.0
    assert float(r["kimg"]) == pytest.approx(int(r["step"]) * 2 * 8 / 1000)  # 2 D steps
  md = open(os.path.join(out, "study.md")).read()
  assert "| none | 1 | 6 |" in md and "| diffaug | 1 | 6 |" in md
  # The orientation probe was trained once, on the reference, and kept with the study.
  assert len(glob.glob(os.path.join(out, "extractor", "orientation-dihedral-*.weights.h5"))) == 1
  for name in ("fid_curves.png", "upright_curves.png", "grids.png", "grids_best.png"):
    assert os.path.getsize(os.path.join(out, name)) > 1000

  # 3. Again: nothing is trained or evaluated twice.
  mtimes = {p: os.path.getmtime(p) for p in
            [os.path.join(out, "cells", c, f) for c in ("smoke-none-k64-s0",
                                                         "smoke-diffaug-k64-s0")
             for f in ("train.log", "study_eval.jsonl", "study_grid.png")]}
  r = subprocess.run(_study_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 done, 0 to train" in r.stderr
  assert {p: os.path.getmtime(p) for p in mtimes} == mtimes

  # 4. As recorded in git: the cells without their weights. Nothing is retrained and the
  #    report is rebuilt from the kept evaluations, the same rows.
  with open(os.path.join(out, "study.csv")) as f:
    before = f.read()
  for c in ("smoke-none-k64-s0", "smoke-diffaug-k64-s0"):
    for sub in ("checkpoints", "train", "best"):
      shutil.rmtree(os.path.join(out, "cells", c, sub), ignore_errors=True)
  os.remove(os.path.join(out, "study.csv"))
  # --only limits the work, not the report: the other finished cell is still in it.
  r = subprocess.run(_study_cmd(out, "--only=none"), cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "1 cells, 1 done, 0 to train" in r.stderr
  with open(os.path.join(out, "study.csv")) as f:
    assert f.read() == before
  assert {p: os.path.getmtime(p) for p in mtimes} == mtimes
  # A sparser evaluation (every 2nd checkpoint) reports only the checkpoints it scores (here
  # the last, step 6), although the cells kept the rows of both checkpoints.
  r = subprocess.run(_study_cmd(out, "--gin_param=StudyEval.every = 2"), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(out, "study.csv")) as f:
    assert sorted((r["method"], int(r["step"])) for r in csv.DictReader(f)) == [
        ("diffaug", 6), ("none", 6)]
