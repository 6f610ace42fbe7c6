"""Studies: a grid of training runs (methods x data sizes x seeds), evaluated alike, tabulated.

A study spec is a gin file (`studies/*.gin`; gin is the one config system):

    Study.grids = [@stylegan2/Grid()]
    Study.evaluation = @StudyEval()
    stylegan2/Grid.gin_files = ['gin/mnist_stylegan2.gin']
    stylegan2/Grid.bindings = ["Trainer.train_steps = 10000", ...]    # every cell
    stylegan2/Grid.methods = {'none': [], 'diffaug': ["GAN.augment = @DiffAugment()", ...]}
    stylegan2/Grid.data = {'k100': ['NUM_IMAGES = 100'], 'k1000': ['NUM_IMAGES = 1000']}
    stylegan2/Grid.seeds = [0, 1, 2]                  # bound as the macro SEED
    stylegan2/Grid.data_seeds = {'k1000': [0, 1]}     # fewer seeds at a costly size
    stylegan2/Grid.data_methods = {'k1000': ['none', 'diffaug']}  # some methods only
    stylegan2/Grid.method_seeds = {'diffaug': [0, 1, 2, 3]}  # more seeds where spreads overlap
    StudyEval.reference = @reference/ImageData()      # the true distribution
    StudyEval.feature_extractor = 'mnist'

Every cell is an ordinary `bin/train` run (subprocess) in `<out>/cells/<grid>-<method>-<data>
-s<seed>`, with the grid's gin files and bindings, then the data's, the method's and the
seed's (`Grid.seed_bindings`, default `GAN.seed = %SEED`). A cell is done when its
`cell.json` says so; a re-run skips done cells and resumes the others from their last
checkpoint (the trainer's own exact resume). Cells keep every checkpoint; the evaluation
scores each (or every `StudyEval.every`-th, or its grid's `Grid.eval_every`-th) one with one
protocol: the same reference set, the same samples (latents fixed by `StudyEval.seed`), the
same extractor. Results per cell are cached in `study_eval.jsonl` under a protocol key, so a
re-run evaluates only what is new.
Moving an unfinished cell to another machine: stop the study (SIGTERM: each cell saves its
step), score its checkpoints so far (`--notrain`), and take the cell folder with its newest
checkpoint (`ckpt-N.*`); it resumes from there and its report keeps the rows scored before.
Without any checkpoint it trains again from step 0 and its old rows are set aside
(`study_eval.jsonl.before-restart`).

`weights_dir` (`bin/study --weights_dir`) keeps the cells' weights apart from their results:
each cell's `checkpoints/`, `best/` and `train/` (TensorBoard) live in `<weights_dir>/<cell>/`
and the cell folder links to them. The study folder then holds only results (small, fit for
git: `docs/studies/`), while the weights sit on a scratch disk that outlives the checkout.

Outputs in `<out>`: `study.csv` (every cell, every evaluated step), `study.md` (per grid, data
and method: mean ± std over seeds of best and final FID/KID, best-FID step, D's logit gaps,
memorisation, leaks, orientation; ratios to the baseline and whether the seed ranges
separate), `fid_curves.png`, `upright_curves.png` (the orientation check over training, with
`StudyEval.orientation`), `grids.png` (each method's last checkpoint) and `grids_best.png` (its
best-FID checkpoint; also each cell's `study_grid_best.png`) with matplotlib
(`pip install -e '.[study]'`).
"""

import contextlib
import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent import futures

import gin
import numpy as np
from absl import logging

from tfgan_eff.config import PROJECT_ROOT, configurable
from tfgan_eff.io import atomic_write, image_grid, write_png

CELL_FILE = "cell.json"
EVAL_FILE = "study_eval.jsonl"
GRID_FILE = "study_grid.png"
# The grid of the cell's best-FID checkpoint, and which step it shows (few-shot cells are
# memorised by their last checkpoint, so the last grid does not show the generator one keeps).
BEST_GRID_FILE = "study_grid_best.png"
BEST_GRID_META = "study_grid_best.json"


def _fmt_duration(seconds):
  if seconds is None or not np.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# -- the spec --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of a study."""
  grid: str
  method: str
  data: str
  seed: int
  gin_files: tuple
  bindings: tuple
  eval_every: int = None  # the grid's StudyEval.every override (None: the study's)

  @property
  def name(self):
    return f"{self.grid}-{self.method}-{self.data}-s{self.seed}"

  def spec(self):
    return {"grid": self.grid, "method": self.method, "data": self.data, "seed": self.seed,
            "gin_files": list(self.gin_files), "bindings": list(self.bindings)}


_NAME = re.compile(r"^[A-Za-z0-9_.+]+$")


@configurable
class Grid:
  """Methods x data sizes x seeds on one backbone.

  Args:
    name: the grid's name (cell names start with it).
    gin_files: the gin files of every cell.
    methods: {method name: [gin bindings]}; only the switch under test should differ.
    data: {data name: [gin bindings]}, e.g. {'k100': ['NUM_IMAGES = 100']}.
    seeds: training seeds, bound as the macro SEED.
    data_seeds: {data name: seeds} for data sizes that use other seeds (e.g. fewer for the
      expensive ones).
    data_methods: {data name: method names} for data sizes that run only some methods (e.g.
      a follow-up ablation at the small size only); other data sizes run every method.
    method_seeds: {method name: seeds} for methods that use other seeds at every data size
      (overrides seeds and data_seeds), e.g. a third seed of two methods whose two-seed
      ranges overlap.
    bindings: gin bindings of every cell (after gin_files, before data and method).
    seed_bindings: what a seed changes (default: `GAN.seed = %SEED`, i.e. initial weights,
      latents and augmentation; the data subset stays fixed).
    baseline: the method the others are compared with in study.md (default: the first).
    comparisons: extra [method, reference method] pairs for study.md (e.g. InsGen on top of
      DiffAugment against DiffAugment alone).
    after: names of grids (listed before this one) whose cells must all be trained before
      this grid's start, e.g. a source model that transfer cells start from. A binding may
      name the study folder as `{study_dir}` (absolute, filled in when a cell is launched):
      `"AdaFMTransfer.source = '{study_dir}/cells/source-digits0to8-all-s0'"`.
    scored: evaluate and report this grid's cells (False: a prerequisite, e.g. the source
      model, trained but not scored).
    eval_every: score every n-th checkpoint of this grid's cells, in place of
      `StudyEval.every` (None: the study's), e.g. 1 for a backbone whose FID turns within a
      few checkpoints. The evaluation protocol (samples, reference, extractor) is the same.
  """

  def __init__(self, name=gin.REQUIRED, gin_files=gin.REQUIRED, methods=gin.REQUIRED,
               data=None, seeds=(0,), bindings=(), seed_bindings=("GAN.seed = %SEED",),
               baseline=None, comparisons=(), data_seeds=None, data_methods=None,
               method_seeds=None, after=(), scored=True, eval_every=None):
    for kind, names in (("grid", [name]), ("method", list(methods)),
                        ("data", list(data or {}))):
      bad = [n for n in names if not _NAME.match(str(n))]
      if bad:
        raise ValueError(f"Study {kind} name(s) {bad} may use only letters, digits and "
                         f"'_.+' (they name folders); rename them in the spec.")
    if not methods:
      raise ValueError(f"Grid '{name}' has no methods; set {name}/Grid.methods.")
    self.name = name
    self.gin_files = tuple(gin_files)
    self.methods = {k: tuple(v) for k, v in methods.items()}
    self.data = {k: tuple(v) for k, v in (data or {"all": ()}).items()}
    self.seeds = tuple(int(s) for s in seeds)
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"Grid '{name}': seeds must be distinct and non-empty, got {seeds}.")
    self.data_seeds = {k: tuple(int(x) for x in v) for k, v in (data_seeds or {}).items()}
    unknown = [k for k in self.data_seeds if k not in self.data]
    if unknown:
      raise ValueError(f"Grid '{name}': data_seeds names {unknown}, not among its data "
                       f"{list(self.data)}.")
    self.data_methods = {k: tuple(v) for k, v in (data_methods or {}).items()}
    unknown = [k for k in self.data_methods if k not in self.data]
    unknown_m = [m for v in self.data_methods.values() for m in v if m not in self.methods]
    if unknown or unknown_m:
      raise ValueError(f"Grid '{name}': data_methods names data {unknown} / methods "
                       f"{unknown_m}, not among its data {list(self.data)} and methods "
                       f"{list(self.methods)}.")
    self.method_seeds = {k: tuple(int(x) for x in v) for k, v in (method_seeds or {}).items()}
    unknown = [k for k in self.method_seeds if k not in self.methods]
    if unknown:
      raise ValueError(f"Grid '{name}': method_seeds names {unknown}, not among its methods "
                       f"{list(self.methods)}.")
    for k, v in [*self.data_seeds.items(), *self.method_seeds.items()]:
      if not v or len(set(v)) != len(v):
        raise ValueError(f"Grid '{name}': the seeds of '{k}' must be distinct and non-empty, "
                         f"got {list(v)}.")
    self.bindings = tuple(bindings)
    self.seed_bindings = tuple(seed_bindings)
    self.baseline = baseline or next(iter(self.methods))
    self.comparisons = [tuple(c) for c in comparisons]
    self.after, self.scored = tuple(after), bool(scored)
    if eval_every is not None and (isinstance(eval_every, bool) or eval_every < 1
                                   or int(eval_every) != eval_every):
      raise ValueError(f"Grid '{name}': eval_every must be a whole number >= 1 (or None for "
                       f"StudyEval.every), got {eval_every!r}.")
    self.eval_every = None if eval_every is None else int(eval_every)
    for m in [self.baseline, *[x for c in self.comparisons for x in c]]:
      if m not in self.methods:
        raise ValueError(f"Grid '{name}': '{m}' (baseline/comparisons) is not one of its "
                         f"methods {list(self.methods)}.")

  def cells(self, extra=()):
    out = []
    # Seed by seed, so that a study stopped early has every method at its first seeds.
    for data, data_b in self.data.items():
      data_seeds = self.data_seeds.get(data, self.seeds)
      extra_seeds = set().union(*self.method_seeds.values()) - set(data_seeds)
      all_seeds = [*data_seeds, *sorted(extra_seeds)]
      for seed in all_seeds:
        for method, method_b in self.methods.items():
          if (method not in self.data_methods.get(data, self.methods)
              or seed not in self.method_seeds.get(method, data_seeds)):
            continue
          out.append(Cell(self.name, method, data, seed, self.gin_files,
                          tuple(extra) + self.bindings + data_b + method_b + (f"SEED = {seed}",) +
                          self.seed_bindings, self.eval_every))
    return out


@configurable
class StudyEval:
  """How every checkpoint of every cell is scored (one protocol for the whole study).

  Args:
    reference: an `ImageData` of the true distribution (e.g. all 10,000 MNIST digits);
      FID/KID are against it. None: against each cell's own training images (the
      low-shot benchmarks' protocol, where the training images are all there is).
    feature_extractor: "mnist", "digits" or "inception" (see tfgan_eff.eval.Evaluator).
      When Inception is requested but unavailable offline, FID/KID are left out with a
      warning and everything else is still measured.
    mnist_path, inception_path, download_inception: passed to the Evaluator.
    metrics: of "fid", "kid" (against the reference).
    num_samples: generated images per evaluation (fixed latents, `seed`).
    every: evaluate every n-th checkpoint (1: all); the last one always.
    num_heldout: reference images outside the training set scored by D for the
      train/held-out logit gap.
    memorisation_samples: samples checked for nearest training images in pixels.
    grid_samples: samples in each cell's grid image (`study_grid.png`, last checkpoint).
    orientation: the orientation leak check (tfgan_eff.eval.orientation): "dihedral"
      (flips and 90° rotations: digits, text), "rotations" (photos, whose mirror image is
      natural) or None (off). A probe trained once on the reference images (without one:
      the cell's training images) scores every checkpoint's samples: `upright`, their mean
      probability of the upright orientation, and `real_upright`, unseen reals' (the
      ratio is reported; ~1: as upright as real images).
    orientation_seed: the probe's seed.
    orientation_train_size: oriented real images the probe trains on (4 passes).
    seed: latents of the samples and KID subsets.
    batch_size: generator and D batch.
  """

  def __init__(self, reference=None, feature_extractor="inception", mnist_path=None,
               inception_path=None, download_inception=False, metrics=("fid", "kid"),
               num_samples=5000, every=1, num_heldout=2000, memorisation_samples=2000,
               grid_samples=36, orientation=None, orientation_seed=0,
               orientation_train_size=24000, seed=2026, batch_size=250,
               kid_subset_size=1000):
    from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
    self.reference = reference
    self.num_samples, self.every = int(num_samples), max(1, int(every))
    self.num_heldout, self.memorisation_samples = int(num_heldout), int(memorisation_samples)
    self.grid_samples, self.seed, self.batch_size = int(grid_samples), int(seed), batch_size
    self.metrics = tuple(metrics)
    if orientation is not None:
      from tfgan_eff.eval.orientation import TRANSFORMS  # pylint: disable=import-outside-toplevel
      if orientation not in TRANSFORMS:
        raise ValueError(f"StudyEval.orientation must be None or one of {sorted(TRANSFORMS)} "
                         f"('dihedral' for digits, 'rotations' for photos), got "
                         f"{orientation!r}.")
    self.orientation, self.orientation_seed = orientation, int(orientation_seed)
    self.orientation_train_size = int(orientation_train_size)
    self.probe_dir = None
    self._probes = {}
    kwargs = dict(num_samples=self.num_samples, feature_extractor=feature_extractor,
                  inception_path=inception_path, download_inception=download_inception,
                  kid_subset_size=min(kid_subset_size, self.num_samples), seed=self.seed,
                  batch_size=batch_size, num_runs=1)
    if mnist_path is not None:
      kwargs["mnist_path"] = mnist_path
    # Built here, before any run's config replaces gin's bindings.
    self.evaluator = Evaluator(metrics=self.metrics, **kwargs)
    self.train_evaluator = Evaluator(metrics=("fid",), **kwargs)
    self.feature_extractor = feature_extractor
    self.metrics_available = True  # False once the extractor proved unavailable
    self.protocol = None

  def keep_extractor_weights_in(self, folder):
    """The study's trained extractor ("digits", "mnist") keeps its weights in `folder`,
    recorded with the study: seeded training is not bit-reproducible across CPUs, and a
    retrained extractor would score later cells in another feature space (another protocol
    key, not comparable)."""
    if self.feature_extractor in ("digits", "mnist"):
      self.evaluator.keep_extractor_weights_in(folder)
      self.train_evaluator.keep_extractor_weights_in(folder)
    self.probe_dir = folder  # the orientation probe's too, for the same reason

  def orientation_probe(self, images):
    """The study's orientation probe of these real images (trained once, then loaded from
    the study's folder), or None when the check is off."""
    if self.orientation is None:
      return None
    key = (images.shape, hashlib.sha256(images.tobytes()).hexdigest())
    if key not in self._probes:
      from tfgan_eff.eval.orientation import OrientationProbe  # pylint: disable=import-outside-toplevel
      self._probes[key] = OrientationProbe(images, transforms=self.orientation,
                                           seed=self.orientation_seed,
                                           train_size=self.orientation_train_size,
                                           weights_dir=self.probe_dir)
    return self._probes[key]

  def extractor_tag(self):
    """Builds the one feature extractor both evaluators share; -> its cache tag, or
    "unavailable" when it is Inception and the graph cannot be had offline."""
    from tfgan_eff.eval.inception import InceptionNotFoundError  # pylint: disable=import-outside-toplevel
    try:
      ex = self.evaluator.extractor
    except InceptionNotFoundError as e:
      logging.warning("No FID/KID in this study: %s", str(e).splitlines()[0])
      self.metrics_available = False
      return "unavailable"
    self.train_evaluator._extractor = ex  # pylint: disable=protected-access
    return getattr(ex, "cache_tag", ex.name)

  def score_images(self, images):
    """FID/KID of `images` (uint8 [n, H, W, C]) in place of a cell's samples, against the
    reference, as study.csv has them: {"fid", "kid"}. For floors (experiments/)."""
    m = self.evaluator.evaluate(_feed(images), self.reference.eval_batches,
                                self.reference.name)
    return {"fid": float(m["fid"]), "kid": float(m["kid_mean"])}

  def protocol_key(self, extractor_tag):
    desc = json.dumps({"ref": getattr(self.reference, "name", None), "ex": extractor_tag,
                       "n": self.num_samples, "metrics": self.metrics, "seed": self.seed,
                       "heldout": self.num_heldout, "mem": self.memorisation_samples,
                       "version": 1}, sort_keys=True)
    return hashlib.sha1(desc.encode()).hexdigest()[:12]


@configurable
class Study:
  """The grids of a study and how they are evaluated.

  Args:
    grids: the `Grid`s (gin: `Study.grids = [@stylegan2/Grid(), ...]`).
    evaluation: a `StudyEval`.
    macros: names of the spec's gin macros passed on to every cell (first in its
      bindings), so that one value (e.g. a data path, overridden with --gin_param) serves
      the cells and the evaluation alike.
  """

  def __init__(self, grids=gin.REQUIRED, evaluation=None, macros=()):
    self.grids = list(grids)
    names = [g.name for g in self.grids]
    if len(set(names)) != len(names):
      raise ValueError(f"Study grids need distinct names, got {names}.")
    for i, g in enumerate(self.grids):
      bad = [a for a in g.after if a not in names[:i]]
      if bad:
        raise ValueError(f"Grid '{g.name}': after = {bad} must name grids listed before it "
                         f"in Study.grids ({names[:i]}).")
    self.evaluation = evaluation
    extra = []
    for m in macros:
      try:
        extra.append(f"{m} = {gin.query_parameter('%' + m)!r}")
      except ValueError:
        raise ValueError(f"Study.macros names '{m}', which the spec does not set; add "
                         f"`{m} = ...` to it.") from None
    self.cells = [c for g in self.grids for c in g.cells(extra)]

  def grid(self, cell):
    return next(g for g in self.grids if g.name == cell.grid)

  def prerequisites(self, cell):
    """The cells that must be trained before `cell` (those of its grid's `after` grids)."""
    after = self.grid(cell).after
    return [c for c in self.cells if c.grid in after]


def load_spec(path, params=()):
  """Parses a study spec (gin) and returns its `Study`."""
  import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  config.parse([path], list(params))
  return Study()


# -- training --------------------------------------------------------------------------------

def cell_dir(out, cell):
  return os.path.join(out, "cells", cell.name)


_HORIZON = re.compile(r"^\s*Trainer\.train_steps\s*=\s*(\d+)\s*$")


def _horizon(spec):
  """The cell's training steps as its bindings set them (the last binding wins), or None."""
  steps = None
  for b in spec.get("bindings", ()):
    m = _HORIZON.match(b)
    if m:
      steps = int(m.group(1))
  return steps


def _without_horizon(spec):
  return {**spec, "bindings": [b for b in spec.get("bindings", ()) if not _HORIZON.match(b)]}


def cell_status(out, cell):
  """'done', 'partial' (started, resumable), or 'new'; raises if the folder holds another
  configuration.

  A spec that only lengthens a cell's horizon (a larger `Trainer.train_steps`, all else
  equal) makes a finished cell 'partial': it resumes from its last checkpoint and trains on.
  """
  d = cell_dir(out, cell)
  path = os.path.join(d, CELL_FILE)
  if not os.path.exists(path):
    if os.path.isdir(d) and os.listdir(d):
      raise ValueError(f"'{d}' exists but has no {CELL_FILE}: it was not made by bin/study. "
                       f"Move it away or use another --out.")
    return "new"
  with open(path) as f:
    info = json.load(f)
  then, now = info.get("spec") or {}, cell.spec()
  if then != now:
    longer = (_without_horizon(then) == _without_horizon(now) and
              (_horizon(now) or 0) > (_horizon(then) or 0))
    if not longer:
      raise ValueError(
          f"Cell '{cell.name}' in '{d}' was trained with other settings than the spec now "
          f"gives:\n  then: {then}\n  now:  {now}\nUse another --out, or delete that "
          f"cell's folder to retrain it (only a longer Trainer.train_steps continues a cell).")
    return "partial"
  return "done" if info.get("status") == "done" else "partial"


def _status_or_none(out, cell):
  try:
    return cell_status(out, cell)
  except ValueError as e:
    logging.warning("Not reported: %s", e)
    return None


def train_command(out, cell):
  cmd = [sys.executable, os.path.join(PROJECT_ROOT, "bin", "train"),
         f"--model_dir={cell_dir(out, cell)}"]
  cmd += [f"--gin_file={f}" for f in cell.gin_files]
  # Every checkpoint is kept: the evaluation scores them all.
  study_dir = os.path.abspath(out)
  cmd += [f"--gin_param={b.replace('{study_dir}', study_dir)}"
          for b in cell.bindings + ("Trainer.keep_checkpoints = None",)]
  return cmd


_CHILDREN = set()
_CHILDREN_LOCK = threading.Lock()


WEIGHT_DIRS = ("checkpoints", "best", "train")


def link_weights(d, weights):
  """Makes the cell folder `d` keep its weights in `weights`: links d/checkpoints, d/best and
  d/train to the folders of that name in `weights`. A cell that already holds real folders
  of its own (started without `weights_dir`) keeps them."""
  for name in WEIGHT_DIRS:
    link, target = os.path.join(d, name), os.path.abspath(os.path.join(weights, name))
    os.makedirs(target, exist_ok=True)
    if os.path.islink(link):
      if os.path.realpath(link) == os.path.realpath(target):
        continue
      os.remove(link)
    elif os.path.exists(link):
      logging.info("%s keeps its own %s/ (it was started without weights_dir).", d, name)
      continue
    os.symlink(target, link)


def train_cell(out, cell, threads=None, weights_dir=None):
  """Trains (or resumes) one cell in a subprocess; returns the seconds it took.

  With `weights_dir`, the cell's checkpoints, best/ and TensorBoard logs are written to
  `<weights_dir>/<cell>/` (linked from the cell folder; see the module docstring).
  """
  d = cell_dir(out, cell)
  os.makedirs(d, exist_ok=True)
  if weights_dir:
    link_weights(d, os.path.join(weights_dir, cell.name))
  info_path = os.path.join(d, CELL_FILE)
  previous = {}
  if os.path.exists(info_path):
    with open(info_path) as f:
      previous = json.load(f)
  cmd = train_command(out, cell)
  evals = os.path.join(d, EVAL_FILE)
  if not _checkpoint_steps(d) and os.path.exists(evals):
    # A cell kept without its weights (a longer horizon for a finished cell, or an
    # unfinished cell on a new machine) trains again from step 0, so its recorded
    # evaluations no longer describe its checkpoints.
    os.replace(evals, evals + ".before-restart")
    logging.warning("%s has no checkpoints to continue from; it trains again from step 0.",
                    cell.name)
  atomic_write(info_path, json.dumps(
      {"spec": cell.spec(), "status": "training", "command": cmd,
       "seconds": previous.get("seconds", 0.0)}, indent=2))
  env = dict(os.environ)  # bin/train turns TF's oneDNN kernels on (cli/entry.py)
  if threads:
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
  t0 = time.time()
  with open(os.path.join(d, "train.log"), "a") as log:
    log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=os.getcwd())
    with _CHILDREN_LOCK:
      _CHILDREN.add(proc)
    try:
      rc = proc.wait()
    finally:
      with _CHILDREN_LOCK:
        _CHILDREN.discard(proc)
  seconds = time.time() - t0
  if rc != 0:
    raise RuntimeError(f"Cell '{cell.name}' failed (exit code {rc}); see "
                       f"{os.path.join(d, 'train.log')}. Re-running the study resumes it.")
  atomic_write(info_path, json.dumps(
      {"spec": cell.spec(), "status": "done", "command": cmd,
       "seconds": previous.get("seconds", 0.0) + seconds}, indent=2))
  return seconds


def stop_children():
  with _CHILDREN_LOCK:
    for p in _CHILDREN:
      p.terminate()


_LOGGED_STEP = re.compile(r"step (\d+)/(\d+) \| [\d.]+ img/s \| ([\d.]+) s/step")


def _last_logged_speed(model_dir):
  """The step and s/step of the newest progress line of the cell's train.log, or None."""
  try:
    with open(os.path.join(model_dir, "train.log"), errors="replace") as f:
      lines = f.readlines()[-400:]
  except OSError:
    return None
  for line in reversed(lines):
    m = _LOGGED_STEP.search(line)
    if m:
      return int(m.group(1)), float(m.group(3))
  return None


def status(spec_path, out, params=(), only=None):
  """Where each cell of the study stands; -> rows (dicts), in the spec's order.

  state: 'done', 'partial' (started; resumes from `step`), 'new', or 'mismatch' (its folder
  holds another configuration). `step`: the newest checkpoint; `horizon`: the cell's
  Trainer.train_steps; `s_per_step`: the speed of its last logged steps; `left`: the seconds
  the rest of its steps take at that speed; `scored`/`best_fid`: the evaluations on file (any
  protocol; a partial cell's too, from `--notrain`). Reads files only: trains and scores
  nothing."""
  study = load_spec(spec_path, params)
  rows = []
  for c in study.cells:
    if only and not re.search(only, c.name):
      continue
    d = cell_dir(out, c)
    try:
      state = cell_status(out, c)
    except ValueError:
      state = "mismatch"
    steps = list(_checkpoint_steps(d))
    step = steps[-1] if steps else 0
    horizon = _horizon(c.spec())
    evals = [r for r in _eval_rows(os.path.join(d, EVAL_FILE)) if r.get("fid") is not None]
    speed = _last_logged_speed(d)
    s_per_step = speed[1] if speed else None
    left = None
    if state == "done":
      step, left = horizon or step, 0.0
    elif s_per_step and horizon:
      left = max(0, horizon - step) * s_per_step
    seconds = 0.0
    if os.path.exists(os.path.join(d, CELL_FILE)):
      with open(os.path.join(d, CELL_FILE)) as f:
        seconds = json.load(f).get("seconds", 0.0)
    rows.append({"cell": c.name, "state": state, "step": step, "horizon": horizon,
                 "s_per_step": s_per_step, "left": left, "trained_seconds": seconds,
                 "scored": len({r["step"] for r in evals}),
                 "best_fid": min((r["fid"] for r in evals), default=None)})
  if not rows:
    raise ValueError(f"No cell of '{spec_path}' matches --only='{only}'.")
  return rows


def format_status(rows):
  """`status` rows as a plain-text table, with totals."""
  lines = [f"{'cell':<44} {'state':<8} {'step':>13} {'s/step':>7} {'left':>7} "
           f"{'scored':>6} {'best FID':>8}"]
  for r in rows:
    at = f"{r['step']}/{r['horizon'] or '?'}"
    speed = f"{r['s_per_step']:.2f}" if r["s_per_step"] else "-"
    left = "-" if r["state"] == "done" else _fmt_duration(r["left"])
    best = f"{r['best_fid']:.1f}" if r["best_fid"] is not None else "-"
    lines.append(f"{r['cell']:<44} {r['state']:<8} {at:>13} {speed:>7} {left:>7} "
                 f"{r['scored']:>6} {best:>8}")
  counts = [f"{sum(r['state'] == k for r in rows)} {k}"
            for k in ("done", "partial", "new", "mismatch")
            if k != "mismatch" or any(r["state"] == k for r in rows)]
  known = [r["left"] for r in rows if r["state"] == "partial" and r["left"] is not None]
  lines.append(f"{', '.join(counts)} of {len(rows)} cells; the partial ones with a logged "
               f"speed need {_fmt_duration(sum(known))} of cell time at it.")
  return "\n".join(lines)


# -- evaluation ------------------------------------------------------------------------------

def _checkpoint_steps(model_dir):
  found = {}
  for index in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")):
    m = re.search(r"ckpt-(\d+)\.index$", index)
    if m:
      found[int(m.group(1))] = index[:-len(".index")]
  return dict(sorted(found.items()))


def _scored(steps, every):
  """The checkpoint steps an evaluation with `every` scores: every n-th, and the last."""
  last = max(steps) if steps else None
  return [s for i, s in enumerate(steps) if i % every == every - 1 or s == last]


def _checkpoint_schedule(model_dir):
  """The checkpoint steps a cell's training made, from its config.gin (checkpoint_every and
  train_steps; the last step is always saved), or None when the config does not say."""
  values = {}
  try:
    with open(os.path.join(model_dir, "config.gin")) as f:
      for line in f:
        m = re.match(r"^\s*Trainer\.(checkpoint_every|train_steps)\s*=\s*(\d+)\s*$", line)
        if m:
          values[m.group(1)] = int(m.group(2))
  except OSError:
    return None
  every, last = values.get("checkpoint_every"), values.get("train_steps")
  if not last:
    return None
  return sorted(set(range(every, last + 1, every) if every else ()) | {last})


def _feed(images):
  """An Evaluator's `generate_fn` serving `images` in order."""
  served = [0]

  def generate_fn(n):
    out = images[served[0]:served[0] + n]
    served[0] += len(out)
    return out
  return generate_fn


def _read_jsonl(path):
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          rows.append(json.loads(line))
  return rows


def _eval_rows(path):
  """A cell's evaluations, one row per (protocol, step): the first written, should two
  processes have scored the same checkpoint at once (their rows are equal)."""
  rows, seen = [], set()
  for r in _read_jsonl(path):
    key = (r.get("protocol"), r.get("step"))
    if key not in seen:
      seen.add(key)
      rows.append(r)
  return rows


def _image_keys(images):
  return [hashlib.sha1(x.tobytes()).digest() for x in images]


def _d_logits(gan, images, labels, batch):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = []
  for i in range(0, len(images), batch):
    x = tf.cast(images[i:i + batch], tf.float32) / 127.5 - 1.0
    y = (tf.constant(labels[i:i + batch], tf.int32)
         if gan.num_classes and labels is not None else None)
    out.append(gan.D(x, y, training=False)["logits"].numpy().reshape(-1))
  return np.concatenate(out) if out else np.zeros([0], np.float32)


def _class_subset(data, extractor):
  """The classes `data` keeps of its labelled source when `extractor` classifies that
  source's classes (its class count is the source's: the MNIST LeNet on MNIST), else None."""
  n = getattr(data.source, "num_classes", 0)
  if data.classes is None or not n or getattr(extractor, "num_classes", 0) != n:
    return None
  return np.asarray(data.classes)


class _CellEvaluation:
  """Scores the checkpoints of one cell (its gin config is made current)."""

  def __init__(self, ev, model_dir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
    from tfgan_eff.eval.memorisation import augmentation_leak  # pylint: disable=import-outside-toplevel
    from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
    self.ev, self.model_dir = ev, model_dir
    runs.parse_run_config(model_dir)
    self.batch = int(_query("Trainer.batch_size", 64))
    self.data = ImageData()
    self.gan, self.ckpt, self.step_var = runs.build_run()
    self.kimg_per_step = self.gan.disc_iters * self.batch / 1000.0
    self.train_images = self.data.images
    self.train_labels = self.data.true_labels
    # Trained on x-flips: a mirrored training image is a copy too.
    self.mirror = bool(self.data.random_flip)
    train_keys = set(_image_keys(self.train_images))
    ref = ev.reference
    self.heldout = self.heldout_labels = None
    if ref is not None:
      keys = _image_keys(ref.images)
      idx = np.array([i for i, k in enumerate(keys) if k not in train_keys], np.int64)
      rng = np.random.default_rng(ev.seed)
      idx = np.sort(rng.permutation(idx)[:ev.num_heldout]) if len(idx) else idx
      self.heldout, self.heldout_labels = ref.images[idx], ref.true_labels[idx]
    self.real_leak = augmentation_leak((ref if ref is not None else self.data).images)
    # What real images score: unseen reals against the training set (thin 1s sit closer
    # together than the median pair, so this is not 0 on digits).
    self.real_memorisation = None
    if self.heldout is not None and len(self.heldout):
      from tfgan_eff.eval.memorisation import memorisation_rate  # pylint: disable=import-outside-toplevel
      self.real_memorisation = memorisation_rate(
          self.heldout[:ev.memorisation_samples], self.train_images,
          mirror=self.mirror)["memorisation_rate"]
    self._tf = tf
    # A cell trained on some classes of a labelled source, scored by a classifier of that
    # source's classes (the MNIST LeNet on MNIST digits): the share of samples it puts in the
    # training classes, e.g. how many of a few-shot transfer's samples are the target digit
    # and not the source's. Real images: the reference's (the ceiling, the classifier's own
    # error on them).
    self.class_subset = _class_subset(
        self.data, ev.evaluator.extractor if ev.metrics_available else None)
    if self.class_subset is not None:
      self.real_in_class = self.in_class((ref if ref is not None else self.data).images)
    self.probe = ev.orientation_probe((ref if ref is not None else self.data).images)

  def in_class(self, images):
    """The share of `images` the study's classifier assigns to the cell's training classes."""
    predicted = self.ev.evaluator.extractor(images)["logits"].argmax(axis=1)
    return float(np.isin(predicted, self.class_subset).mean())

  def class_rows(self, samples):
    """`in_class_rate` (None when not applicable: the key marks the row as scored for it)."""
    if self.class_subset is None:
      return {"in_class_rate": None}
    return {"in_class_rate": self.in_class(samples), "real_in_class_rate": self.real_in_class}

  def orientation_rows(self, samples):
    """`upright` and `real_upright` (the orientation probe's), and the probe's tag; {} when
    the check is off."""
    if self.probe is None:
      return {}
    return {"upright": self.probe.upright(samples), "real_upright": self.probe.real_upright,
            "orientation_probe": self.probe.tag}

  def supplemented_rows(self, samples):
    """The `SUPPLEMENTED` columns of these samples."""
    return {**self.class_rows(samples), **self.orientation_rows(samples)}

  def samples(self, n, seed, return_labels=False):
    from tfgan_eff.training.runs import generate_uint8  # pylint: disable=import-outside-toplevel
    return generate_uint8(self.gan, n, self.ev.batch_size, seed, return_labels=return_labels)

  def conditioning(self, samples, labels):
    """A class-conditional cell: `class_consistency`, the share of samples G(z, y) that the
    study's classifier (the feature extractor, when it has the GAN's classes: the MNIST
    LeNet) assigns to y; `label_accuracy_unlabelled`, the share of the unlabelled training
    reals (label -1) whose label a term predicts (S3GAN's head on D) equals their true one."""
    import types  # pylint: disable=import-outside-toplevel
    gan, ev, row = self.gan, self.ev, {}
    extractor = ev.evaluator.extractor if ev.metrics_available else None
    if labels is not None and getattr(extractor, "num_classes", 0) == gan.num_classes:
      predicted = extractor(samples)["logits"].argmax(axis=1)
      if self.data.classes is not None:  # G's label i is the source's class classes[i]
        labels = np.asarray(self.data.classes)[labels]
      row["class_consistency"] = float((predicted == labels).mean())
    unlabelled = np.flatnonzero(self.data.labels < 0)
    if not len(unlabelled):
      return row
    images, truth = self.train_images[unlabelled], self.train_labels[unlabelled]
    for t in gan.terms:
      hits = []
      for i in range(0, len(images), ev.batch_size):
        x = self._tf.cast(images[i:i + ev.batch_size], self._tf.float32) / 127.5 - 1.0
        out = gan.D(x, None, training=False)
        # The prediction reads D's features of the reals (as in a D step), nothing else.
        pred = t.predict_labels(types.SimpleNamespace(d_real=out, extras={}, phase="eval"))
        if pred is None:
          break
        pred = pred.numpy()
        hits.append((pred.argmax(axis=1) if pred.ndim == 2 else pred) ==
                    truth[i:i + ev.batch_size])
      if hits:
        row["label_accuracy_unlabelled"] = float(np.concatenate(hits).mean())
        break
    return row

  def score(self, step, path):
    from tfgan_eff.eval.memorisation import augmentation_leak, memorisation_rate  # pylint: disable=import-outside-toplevel
    from tfgan_eff.training import checkpoints  # pylint: disable=import-outside-toplevel
    ev, gan, tf = self.ev, self.gan, self._tf
    checkpoints.restore(self.ckpt, path)
    samples, labels = self.samples(ev.num_samples, ev.seed, return_labels=True)
    row = {"step": step, "kimg": step * self.kimg_per_step}
    # FID/KID against the reference (without one: against the training images, as the
    # low-shot benchmarks do); FID against the training images always.
    ref = ev.reference if ev.reference is not None else self.data
    metrics = train_metrics = {}
    if ev.metrics_available and ev.metrics:
      metrics = _try_metrics(lambda: ev.evaluator.evaluate(_feed(samples), ref.eval_batches,
                                                           ref.name))
      train_metrics = metrics if ref is self.data else _try_metrics(
          lambda: ev.train_evaluator.evaluate(_feed(samples), self.data.eval_batches,
                                              self.data.name))
    for k in ("fid", "kid_mean"):
      if k in metrics:
        row[k.replace("_mean", "")] = metrics[k]
    if "fid" in train_metrics:
      row["fid_train"] = train_metrics["fid"]
    if gan.num_classes > 1:
      row.update(self.conditioning(samples, labels))
    row.update(self.supplemented_rows(samples))
    row.update(memorisation_rate(samples[:ev.memorisation_samples], self.train_images,
                                 mirror=self.mirror))
    row.update(augmentation_leak(samples))
    row.update({f"real_{k}": v for k, v in self.real_leak.items()})
    if self.real_memorisation is not None:
      row["real_memorisation_rate"] = self.real_memorisation
    # D (not augmented, inference mode) on its training reals, unseen reals and G's fakes.
    d_train = _d_logits(gan, self.train_images, self.train_labels, ev.batch_size)
    z = tf.random.stateless_normal([min(ev.num_samples, 2000), gan.G.z_dim],
                                   seed=[ev.seed, 1])
    y = (tf.random.stateless_uniform([z.shape[0]], seed=[ev.seed, 2], maxval=gan.num_classes,
                                     dtype=tf.int32) if gan.num_classes else None)
    fakes = []
    for i in range(0, z.shape[0], ev.batch_size):
      yb = y[i:i + ev.batch_size] if y is not None else None
      x = gan.G(z[i:i + ev.batch_size], yb, training=False)
      fakes.append(gan.D(x, yb, training=False)["logits"].numpy().reshape(-1))
    d_fake = np.concatenate(fakes)
    row.update(d_real_train=float(d_train.mean()), d_fake=float(d_fake.mean()),
               gap_real_fake=float(d_train.mean() - d_fake.mean()))
    if self.heldout is not None and len(self.heldout):
      d_held = _d_logits(gan, self.heldout, self.heldout_labels, ev.batch_size)
      row.update(d_real_heldout=float(d_held.mean()),
                 gap_train_heldout=float(d_train.mean() - d_held.mean()))
    return row

  def supplement(self, step, path):
    """The columns a row scored before they existed lacks (`SUPPLEMENTED`), from its
    checkpoint: the same samples as `score`."""
    if self.class_subset is None and self.probe is None:
      return {"in_class_rate": None}
    from tfgan_eff.training import checkpoints  # pylint: disable=import-outside-toplevel
    checkpoints.restore(self.ckpt, path)
    return self.supplemented_rows(self.samples(self.ev.num_samples, self.ev.seed))

  def write_grid(self, path, name=GRID_FILE):
    """The grid of the checkpoint at `path` into the cell's `name`: the last checkpoint's
    (whichever one was scored last: a re-run scores only the steps it lacks), or the best's."""
    from tfgan_eff.training import checkpoints  # pylint: disable=import-outside-toplevel
    checkpoints.restore(self.ckpt, path)
    samples = self.samples(self.ev.grid_samples, self.ev.seed + 7)
    write_png(os.path.join(self.model_dir, name), image_grid(samples))


def _best_row(rows):
  with_fid = [r for r in rows if r.get("fid") is not None]
  return min(with_fid, key=lambda r: r["fid"]) if with_fid else None


def best_grid_step(model_dir):
  """The step the cell's best-checkpoint grid shows (None: no such grid)."""
  try:
    with open(os.path.join(model_dir, BEST_GRID_META)) as f:
      return json.load(f)["step"]
  except (OSError, ValueError, KeyError):
    return None


def _best_grid_wanted(model_dir, rows, steps):
  """The best-FID row when its checkpoint is at hand and the grid on file is not of it."""
  best = _best_row(rows)
  if best is None or best["step"] not in steps or best_grid_step(model_dir) == best["step"]:
    return None
  return best


def _write_best_grid(cell_ev, model_dir, best, steps):
  cell_ev.write_grid(steps[best["step"]], BEST_GRID_FILE)
  atomic_write(os.path.join(model_dir, BEST_GRID_META), json.dumps(
      {k: best.get(k) for k in ("step", "kimg", "fid", "memorisation_rate")}) + "\n")


def _query(name, default):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


_WARNED = set()


def _try_metrics(fn):
  """FID/KID, or {} when the Inception graph is unavailable (offline), warned once."""
  from tfgan_eff.eval.inception import InceptionNotFoundError  # pylint: disable=import-outside-toplevel
  try:
    return fn()
  except InceptionNotFoundError as e:
    if "inception" not in _WARNED:
      _WARNED.add("inception")
      logging.warning("No FID/KID in this study: %s", str(e).splitlines()[0])
    return {}


SCORING_LOCK = ".study_eval.lock"
# Columns added to the protocol after cells were scored: a row without them gets them from its
# checkpoint, when the checkpoint is at hand (the other measures of the row are unchanged).
# `upright` only while the orientation check is on.
SUPPLEMENTED = ("in_class_rate", "upright")


def _lacks(ev, row):
  """The `SUPPLEMENTED` columns `row` lacks under `ev`."""
  wanted = SUPPLEMENTED if ev.orientation is not None else SUPPLEMENTED[:-1]
  return [k for k in wanted if k not in row]


@contextlib.contextmanager
def _scoring_lock(model_dir):
  """Held while a checkpoint of the cell is scored, so that two study processes on one folder
  take turns (the other then finds the step on file) instead of scoring it twice. The lock
  file sits with the weights (`checkpoints/`), outside what a study folder keeps in git."""
  import fcntl  # pylint: disable=import-outside-toplevel
  with open(os.path.join(model_dir, "checkpoints", SCORING_LOCK), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _supplement(ev, model_dir, path, protocol, steps, cell_ev=None):
  """Adds the `SUPPLEMENTED` columns to the cell's rows that lack them; -> the cell's
  evaluation object if one was built."""
  def lacking(r):
    return r.get("protocol") == protocol and r.get("step") in steps and _lacks(ev, r)
  if not any(lacking(r) for r in _read_jsonl(path)):
    return cell_ev
  cell_ev = cell_ev or _CellEvaluation(ev, model_dir)
  with _scoring_lock(model_dir):
    rows, added = _read_jsonl(path), {}
    for r in rows:
      if lacking(r):
        if r["step"] not in added:
          added[r["step"]] = cell_ev.supplement(r["step"], steps[r["step"]])
        r.update(added[r["step"]])
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
  logging.info("Added the columns they lacked (of %s) to %d scored checkpoints of %s.",
               ", ".join(SUPPLEMENTED), len(added), os.path.basename(model_dir))
  return cell_ev


def evaluate_cell(ev, out, cell, final=True, score=True):
  """Scores the cell's checkpoints not yet scored under this protocol; -> its rows.

  `final=False` (an unfinished cell): scores the checkpoints it has made so far and returns
  nothing. Their rows stay in the cell's file for when it finishes, so a cell can move to
  another machine with only its newest checkpoint (the one it resumes from).
  `score=False`: scores nothing; the rows of a finished cell whose evaluation is complete,
  else none."""
  model_dir = cell_dir(out, cell)
  steps = _checkpoint_steps(model_dir)
  path = os.path.join(model_dir, EVAL_FILE)
  done = _eval_rows(path)
  if not steps and not done:
    return []
  if ev.protocol is None:  # the extractor's weights hash is part of the key
    ev.protocol = ev.protocol_key(ev.extractor_tag())
  protocol = ev.protocol
  every = cell.eval_every or ev.every
  have = {r["step"] for r in done if r.get("protocol") == protocol}
  if not steps:
    # A finished cell kept without its checkpoints (a study recorded in git, where the
    # weights do not go): its evaluations stand for it, as long as the protocol is the same,
    # at the checkpoints the protocol scores (a cell first scored at every checkpoint keeps
    # the others on file but does not report them).
    if not have:
      logging.warning("%s has no checkpoints and no evaluation under this protocol; delete "
                      "its folder to retrain it.", cell.name)
    wanted = _scored(_checkpoint_schedule(model_dir) or sorted(have), every)
    return [r for r in done if r.get("protocol") == protocol and r["step"] in wanted]
  schedule = _checkpoint_schedule(model_dir)
  if schedule:  # off-schedule checkpoints (a save on a signal) do not shift the choice;
    # a step scored before its checkpoint was deleted (a cell moved machines) still counts
    wanted = [s for s in _scored(schedule, every) if s in steps or s in have]
  else:
    wanted = _scored(list(steps), every)
  if final and all(s in have for s in wanted) and os.path.exists(
      os.path.join(model_dir, GRID_FILE)):
    cell_ev = _supplement(ev, model_dir, path, protocol, steps) if score else None
    rows = [r for r in _eval_rows(path) if r.get("protocol") == protocol and r["step"] in wanted]
    best = _best_grid_wanted(model_dir, rows, steps) if score else None
    if best is not None:  # scored before the best grid existed, or a continued cell
      _write_best_grid(cell_ev or _CellEvaluation(ev, model_dir), model_dir, best, steps)
    return rows
  if not score:
    return []
  if not final:
    wanted = [s for s in wanted if s not in have]
    if not wanted:
      return []
  cell_ev = _CellEvaluation(ev, model_dir)
  t0 = time.time()
  for step in wanted:
    # Another study process on the same folder (e.g. a --notrain run beside a training
    # one) may be scoring it or have scored it: one at a time, each skips what is on file.
    with _scoring_lock(model_dir):
      have |= {r["step"] for r in _eval_rows(path) if r.get("protocol") == protocol}
      if step in have:
        continue
      row = {"cell": cell.name, "protocol": protocol, **cell_ev.score(step, steps[step])}
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
  _supplement(ev, model_dir, path, protocol, steps, cell_ev)
  done = _eval_rows(path)
  if not final:
    logging.info("Scored %d checkpoints of the unfinished cell %s so far in %s.", len(wanted),
                 cell.name, _fmt_duration(time.time() - t0))
    return []
  cell_ev.write_grid(steps[max(steps)])
  rows = [r for r in done if r.get("protocol") == protocol and r["step"] in wanted]
  best = _best_grid_wanted(model_dir, rows, steps)
  if best is not None:
    _write_best_grid(cell_ev, model_dir, best, steps)
  logging.info("Evaluated %s (%d checkpoints) in %s.", cell.name, len(wanted),
               _fmt_duration(time.time() - t0))
  return rows


# -- aggregation -----------------------------------------------------------------------------

CSV_FIELDS = ["grid", "method", "data", "seed", "cell", "step", "kimg", "fid", "kid",
              "fid_train", "memorisation_rate", "real_memorisation_rate", "nn_distance_median",
              "train_nn_median",
              "leak_square", "leak_border", "leak_any", "real_leak_any", "d_real_train",
              "d_real_heldout", "d_fake", "gap_train_heldout", "gap_real_fake",
              "class_consistency", "label_accuracy_unlabelled", "in_class_rate",
              "real_in_class_rate", "upright", "real_upright"]


def write_csv(path, rows):
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
  os.replace(path + ".tmp", path)


def read_csv(path):
  rows = []
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      row = {}
      for k, v in r.items():
        if v == "":
          continue
        try:
          row[k] = int(v) if k in ("seed", "step") else (
              v if k in ("grid", "method", "data", "cell") else float(v))
        except ValueError:
          row[k] = v
      rows.append(row)
  return rows


def _stats(values):
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if not len(v):
    return None
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def per_cell_summary(rows):
  """One cell's rows (any order) -> best/final numbers."""
  rows = sorted(rows, key=lambda r: r["step"])
  final = rows[-1]
  out = {"final_step": final["step"], "final_kimg": final.get("kimg")}
  best = _best_row(rows)
  if best is not None:
    out.update(best_fid=best["fid"], best_step=best["step"], best_kimg=best.get("kimg"),
               final_fid=final.get("fid"), best_memorisation=best.get("memorisation_rate"),
               best_in_class=best.get("in_class_rate"))
  with_kid = [r for r in rows if r.get("kid") is not None]
  if with_kid:
    out.update(best_kid=min(r["kid"] for r in with_kid), final_kid=final.get("kid"))
  for k in ("fid_train", "memorisation_rate", "real_memorisation_rate", "leak_any",
            "real_leak_any",
            "gap_train_heldout", "gap_real_fake", "class_consistency",
            "label_accuracy_unlabelled", "in_class_rate", "real_in_class_rate"):
    if final.get(k) is not None:
      out[f"final_{k}"] = final[k]
  out["max_leak_any"] = max(r.get("leak_any", 0.0) for r in rows)
  if final.get("upright") is not None and final.get("real_upright"):
    out["final_upright_ratio"] = final["upright"] / final["real_upright"]
  return out


SUMMARY_KEYS = ["best_fid", "best_kid", "best_kimg", "final_fid", "final_kid",
                "final_fid_train", "final_memorisation_rate", "final_real_memorisation_rate",
                "best_memorisation",
                "final_leak_any", "max_leak_any", "final_real_leak_any",
                "final_gap_train_heldout", "final_gap_real_fake", "final_class_consistency",
                "final_label_accuracy_unlabelled", "best_in_class", "final_in_class_rate",
                "final_real_in_class_rate", "final_upright_ratio"]


def aggregate(rows):
  """rows (study.csv) -> {(grid, data, method): {key: stats over seeds, "seeds": [...]}}."""
  by_cell = {}
  for r in rows:
    by_cell.setdefault((r["grid"], r["data"], r["method"], r["seed"]), []).append(r)
  groups = {}
  for (grid, data, method, seed), cell_rows in sorted(by_cell.items()):
    groups.setdefault((grid, data, method), []).append((seed, per_cell_summary(cell_rows)))
  out = {}
  for key, items in groups.items():
    agg = {"seeds": [s for s, _ in items],
           "final_step": min(c["final_step"] for _, c in items)}
    for k in SUMMARY_KEYS:
      agg[k] = _stats([c.get(k) for _, c in items])
    agg["per_seed_best_fid"] = [c.get("best_fid") for _, c in items]
    out[key] = agg
  return out


def compare(a, b, key="best_fid"):
  """Method a against reference b: ratio of means and whether the seed ranges separate.

  "separated" is None when either side has a single seed (no spread to compare); then
  "outside" tells whether that one value lies outside the other side's seed range.
  """
  sa, sb = a.get(key), b.get(key)
  if not sa or not sb:
    return None
  apart = sa["max"] < sb["min"] or sa["min"] > sb["max"]
  spread = sa["n"] > 1 and sb["n"] > 1
  return {"ratio": sa["mean"] / sb["mean"], "diff": sa["mean"] - sb["mean"],
          "separated": bool(apart) if spread else None,
          "outside": bool(apart),
          "better": sa["mean"] < sb["mean"]}


def _separation(c):
  """The comparison line's verdict on the seed spread."""
  if c["separated"] is None:
    return ("one seed on a side, so no spread to compare (it lies "
            f"{'outside' if c['outside'] else 'inside'} the other side's range)")
  return f"seed ranges {'separate' if c['separated'] else 'overlap'}"


def _pm(s, scale=1.0, digits=1):
  """mean ± std at `digits` decimals; a nonzero std that would round to 0 keeps one
  significant digit (2.45 ± 0.005, not 2.45 ± 0.00, which reads as no spread)."""
  if not s:
    return "–"
  if s["n"] == 1:
    return f"{s['mean'] * scale:.{digits}f}"
  mean, std = s["mean"] * scale, s["std"] * scale
  if abs(std) <= 1e-9 * max(1.0, abs(mean)):  # equal values up to float rounding
    std = 0.0
  spread = f"{std:.1g}" if 0 < abs(std) < 0.5 * 10 ** -digits else f"{std:.{digits}f}"
  return f"{mean:.{digits}f} ± {spread}"


def _fid(s):
  """An FID statistic: two decimals below 10 (MNIST-scale FIDs of 2.4 ± 0.01 would read
  "2.4 ± 0.0"), one above."""
  return _pm(s, 1, 2 if s and abs(s["mean"]) < 10 else 1)


def _pct(s):
  return f"{_pm(s, 100, 1)}%" if s else "–"


def markdown(agg, grids, title="Study"):
  """study.md: per grid, a table per data size; comparisons to the baseline."""
  lines = [f"# {title}", "",
           "Mean ± sample std (n−1) over training seeds. *best*: the lowest FID/KID over the "
           "evaluated checkpoints (*memo at best*: at the best-FID one); *final*: at the last "
           "one. FID/KID against the reference "
           "set (the true distribution); *FID train*: against the training images. *memo*: "
           "share of samples nearer a training image (pixels; or its mirror image, in cells "
           "trained on x-flips) than half the median train-train nearest-neighbour distance "
           "(unseen real images: in brackets). "
           "*leak*: share of samples with a constant fill-valued square or border (real "
           "images: in brackets). *upright*: the orientation probe's mean probability of "
           "the upright orientation over the samples, divided by unseen real images' (1: as "
           "upright as real images; lower: flipped or rotated samples, an orientation leak, or "
           "ambiguous ones; –: not measured). *gap t−h*: D's "
           "mean logit on its training reals minus on unseen reals; *gap r−f*: training reals "
           "minus fakes (final checkpoint, no augmentation). *vs base*: ratio of mean best "
           "FID to the baseline; *sep.*: the seed ranges (min–max) do not overlap (–: one "
           "seed on a side, no spread).", ""]
  for g in grids:
    keys = [k for k in agg if k[0] == g.name]
    if not keys:
      continue
    lines += [f"## {g.name}", ""]
    for data in g.data:
      methods = [m for m in g.methods if (g.name, data, m) in agg]
      if not methods:
        continue
      base = agg.get((g.name, data, g.baseline))
      lines += [f"### {data}", "",
                "| method | seeds | step | best FID | vs base | sep. | best KID | best at kimg "
                "| memo at best | final FID | final KID | FID train | memo | leak [real] "
                "| upright | gap t−h | gap r−f |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
      for m in methods:
        a = agg[(g.name, data, m)]
        c = compare(a, base) if base and m != g.baseline else None
        ratio = f"{c['ratio']:.2f}×" if c else "–"
        memo = _pm(a["final_memorisation_rate"], 1, 3)
        if a["final_real_memorisation_rate"]:
          memo += f" [{_pm(a['final_real_memorisation_rate'], 1, 3)}]"
        separated = ("–" if c["separated"] is None else
                     "yes" if c["separated"] else "no") if c else "–"
        leak = (f"{_pm(a['final_leak_any'], 100, 1)}% [{_pm(a['final_real_leak_any'], 100, 1)}%]"
                if a["final_leak_any"] else "–")
        upright, up = _pm(a["final_upright_ratio"], 1, 2), a["final_upright_ratio"]
        if up and up["n"] < len(a["seeds"]):  # checkpoints gone before the check existed
          upright += f" ({up['n']} of {len(a['seeds'])} seeds)"
        lines.append(
            f"| {m} | {len(a['seeds'])} | {a['final_step']} | {_fid(a['best_fid'])} | "
            f"{ratio} | {separated} | "
            f"{_pm(a['best_kid'], 1, 2)} | {_pm(a['best_kimg'], 1, 0)} | "
            f"{_pm(a['best_memorisation'], 1, 3)} | {_fid(a['final_fid'])} | "
            f"{_pm(a['final_kid'], 1, 2)} | {_fid(a['final_fid_train'])} | {memo} | "
            f"{leak} | {upright} | "
            f"{_pm(a['final_gap_train_heldout'], 1, 2)} | "
            f"{_pm(a['final_gap_real_fake'], 1, 2)} |")
      conditional = [m for m in methods
                     if agg[(g.name, data, m)]["final_class_consistency"] or
                     agg[(g.name, data, m)]["final_label_accuracy_unlabelled"]]
      if conditional:
        lines += ["", "Class-conditional cells, final checkpoint: *class consistency*: share "
                  "of samples G(z, y) the study's classifier assigns to y; *label accuracy*: "
                  "share of the unlabelled training reals whose predicted label is right.", "",
                  "| method | class consistency | label accuracy (unlabelled reals) |",
                  "|---|---|---|"]
        for m in conditional:
          a = agg[(g.name, data, m)]
          lines.append(f"| {m} | {_pct(a['final_class_consistency'])} | "
                       f"{_pct(a['final_label_accuracy_unlabelled'])} |")
      subset = [m for m in methods if agg[(g.name, data, m)]["final_in_class_rate"]]
      if subset:
        lines += ["", "Cells trained on some classes of the data: *in-class*: share of "
                  "samples the study's classifier assigns to the training classes (real "
                  "reference images: in brackets, the classifier's own ceiling).", "",
                  "| method | in-class at best FID | final in-class [real] |", "|---|---|---|"]
        for m in subset:
          a = agg[(g.name, data, m)]
          lines.append(f"| {m} | {_pct(a['best_in_class'])} | "
                       f"{_pct(a['final_in_class_rate'])} "
                       f"[{_pct(a['final_real_in_class_rate'])}] |")
      pairs = list(g.comparisons)
      extra = []
      for m, ref in pairs:
        a, b = agg.get((g.name, data, m)), agg.get((g.name, data, ref))
        c = compare(a, b) if a and b else None
        if c:
          small = max(abs(a["best_fid"]["mean"]), abs(b["best_fid"]["mean"])) < 10
          extra.append(f"- {m} vs {ref}: best FID {_fid(a['best_fid'])} vs {_fid(b['best_fid'])}"
                       f" ({c['ratio']:.2f}×, {c['diff']:+.{2 if small else 1}f}); "
                       f"{_separation(c)}.")
      if extra:
        lines += ["", *extra]
      lines.append("")
  return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------

def _pyplot():
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt
  except ImportError:
    logging.warning("matplotlib is not installed: no fid_curves.png / grids.png. Install it "
                    "with pip install -e '.[study]'.")
    return None


def _save_figure(plt, fig, path, dpi=110):
  """Writes `fig` to `path` (atomically) at `dpi`, in the fewest channels that hold it
  exactly: matplotlib writes RGBA, but an opaque figure needs no alpha and a gray one (the
  MNIST grids) one channel, which keeps a study's side-by-side grids under a megabyte."""
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel  (matplotlib needs it)
    with Image.open(tmp) as im:
      a = np.asarray(im.convert("RGBA"))
    if (a[..., 3] == 255).all():
      rgb = a[..., :3]
      gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
      Image.fromarray(np.ascontiguousarray(rgb[..., 0] if gray else rgb)).save(
          tmp, optimize=True)
  except ImportError:
    pass
  os.replace(tmp, path)


def plot_curves(rows, grids, path, key="fid", ylabel="FID", log=True):
  """`key` (FID) against kimg, one panel per grid and data size: mean line, min–max band
  over the seeds that have it (their count in the legend). False: nothing to plot."""
  plt = _pyplot()
  panels = [(g, d) for g in grids for d in g.data
            if any(r["grid"] == g.name and r["data"] == d and r.get(key) is not None
                   for r in rows)]
  if plt is None or not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (g, d) in zip(axes[0], panels):
    for m in g.methods:
      by_step = {}
      for r in rows:
        if (r["grid"], r["data"], r["method"]) == (g.name, d, m) and r.get(key) is not None:
          by_step.setdefault(r["kimg"], {})[r["seed"]] = r[key]
      if not by_step:
        continue
      n_seeds = max(len(v) for v in by_step.values())
      ks = sorted(k for k, v in by_step.items() if len(v) == n_seeds)
      vals = [list(by_step[k].values()) for k in ks]
      mean = [np.mean(v) for v in vals]
      line, = ax.plot(ks, mean, label=f"{m} ({n_seeds})")
      ax.fill_between(ks, [min(v) for v in vals], [max(v) for v in vals],
                      color=line.get_color(), alpha=0.2)
    ax.set_title(f"{g.name} · {d}")
    ax.set_xlabel("kimg (reals shown to D)")
    ax.set_ylabel(ylabel)
    if log:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save_figure(plt, fig, path)
  return True


def plot_grids(out, study, path, best=False):
  """One sample grid per method (first seed, same latents), side by side, one row per grid
  and data size, each method in its own column: of each cell's last checkpoint, or (`best`)
  of its best-FID one, titled with its step, FID and memorisation."""
  plt = _pyplot()
  rows = []
  for g in [g for g in study.grids if g.scored]:
    found = {}
    for d in g.data:
      for m in g.methods:
        cell = os.path.join(out, "cells", f"{g.name}-{m}-{d}-s{g.seeds[0]}")
        p = os.path.join(cell, BEST_GRID_FILE if best else GRID_FILE)
        if not os.path.exists(p):
          continue
        title = m
        if best:
          try:  # written after the image: without it the image is not known to be current
            with open(os.path.join(cell, BEST_GRID_META)) as f:
              meta = json.load(f)
          except (OSError, ValueError):
            continue
          memo = meta.get("memorisation_rate")
          title += f"\nstep {meta['step']} · FID {meta['fid']:.1f}" + (
              f" · memo {memo:.2f}" if memo is not None else "")
        found.setdefault(d, {})[m] = (title, p)
    columns = [m for m in g.methods if any(m in f for f in found.values())]
    for d in g.data:
      if d in found:
        rows.append((f"{g.name} · {d}", [(columns.index(m), *found[d][m])
                                          for m in columns if m in found[d]]))
  if plt is None or not rows:
    return False
  cols = max(j for _, found in rows for j, _, _ in found) + 1
  fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols + 0.3, 2.9 * len(rows)),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i, (label, found) in enumerate(rows):
    # The row's label runs up its left edge, so that every title has the same height.
    axes[i][0].text(-0.04, 0.5, label, rotation=90, ha="right", va="center", fontsize=9,
                    transform=axes[i][0].transAxes)
    for j, title, p in found:
      img = plt.imread(p)
      # Nearest-neighbour: the samples' own pixels, not a blur of them (and a PNG a
      # fraction of the size).
      axes[i][j].imshow(img.squeeze(), cmap="gray" if img.ndim == 2 or img.shape[-1] == 1
                        else None, vmin=0, vmax=1, interpolation="nearest")
      axes[i][j].set_title(title, fontsize=8)
  fig.tight_layout()
  _save_figure(plt, fig, path)
  return True


def report(out, study, rows, title):
  """Writes study.csv, study.md and the plots from the evaluated rows."""
  cell_meta = {c.name: c for c in study.cells}
  full = []
  for r in rows:
    c = cell_meta.get(r["cell"])
    if c is not None:
      full.append({"grid": c.grid, "method": c.method, "data": c.data, "seed": c.seed, **r})
  full.sort(key=lambda r: (r["grid"], r["data"], r["method"], r["seed"], r["step"]))
  write_csv(os.path.join(out, "study.csv"), full)
  agg = aggregate(full)
  atomic_write(os.path.join(out, "study.md"), markdown(agg, study.grids, title))
  plot_curves(full, study.grids, os.path.join(out, "fid_curves.png"))
  # The orientation check over training (where measured): when a leak sets in.
  ratios = [{**r, "upright_ratio": r["upright"] / r["real_upright"]} for r in full
            if r.get("upright") is not None and r.get("real_upright")]
  plot_curves(ratios, study.grids, os.path.join(out, "upright_curves.png"), key="upright_ratio",
              ylabel="P(upright), samples / real images", log=False)
  plot_grids(out, study, os.path.join(out, "grids.png"))
  plot_grids(out, study, os.path.join(out, "grids_best.png"), best=True)
  return agg


# -- the runner ------------------------------------------------------------------------------

def run(spec_path, out, jobs=1, params=(), threads=None, train=True, evaluate=True,
        only=None, weights_dir=None):
  """Trains the study's unfinished cells (`jobs` at a time), evaluates, reports.

  Finished cells are skipped; started ones resume from their checkpoints. While cells
  train, the finished ones are evaluated in this process. `weights_dir`: where the cells'
  weights live (see the module docstring). Returns the aggregate.
  """
  study = load_spec(spec_path, params)
  cells = [c for c in study.cells if not only or re.search(only, c.name)]
  if not cells:
    raise ValueError(f"No cell of '{spec_path}' matches --only='{only}'.")
  os.makedirs(out, exist_ok=True)
  if study.evaluation is not None:
    study.evaluation.keep_extractor_weights_in(os.path.join(out, "extractor"))
  status = {c.name: cell_status(out, c) for c in cells}  # before any work: spec mismatches
  title = os.path.splitext(os.path.basename(spec_path))[0]
  todo = [c for c in cells if status[c.name] != "done"] if train else []
  chosen = {c.name for c in cells}
  for c in todo:  # prerequisites outside the selection must be trained already
    missing = [p.name for p in study.prerequisites(c)
               if p.name not in chosen and _status_or_none(out, p) != "done"]
    if missing:
      raise ValueError(f"Cell '{c.name}' needs {missing} trained first (Grid.after); "
                       f"include them in --only, or train them first.")
  with open(spec_path) as f:
    atomic_write(os.path.join(out, "spec.gin"), f.read())
  logging.info("Study %s: %d cells, %d done, %d to train (%d at a time) in %s.", title,
               len(cells), sum(status[c.name] == "done" for c in cells), len(todo), jobs, out)
  ev = study.evaluation
  rows, failures, durations = [], [], []
  evaluated = set()

  def evaluate_done():
    for c in cells:
      if (c.name not in evaluated and study.grid(c).scored and
          cell_status(out, c) == "done"):
        rows.extend(evaluate_cell(ev, out, c))
        evaluated.add(c.name)

  def ready(c):
    return all(_status_or_none(out, p) == "done" for p in study.prerequisites(c))

  if threads is None and jobs > 1:
    threads = max(1, (os.cpu_count() or 1) // jobs)
  t_start = time.time()
  pool = futures.ThreadPoolExecutor(max_workers=max(1, jobs))
  try:
    waiting, pending, finished = list(todo), {}, 0
    while waiting or pending:
      for c in [c for c in waiting if ready(c)]:  # in spec order, as prerequisites finish
        waiting.remove(c)
        pending[pool.submit(train_cell, out, c, threads, weights_dir)] = c
      if not pending:  # what is left waits for cells that failed
        for c in waiting:
          failures.append((c.name, "its prerequisites failed"))
          logging.error("%s not trained: a cell it needs (Grid.after) failed.", c.name)
        break
      done, _ = futures.wait(list(pending), timeout=5, return_when=futures.FIRST_COMPLETED)
      for fut in done:
        c = pending.pop(fut)
        finished += 1
        try:
          seconds = fut.result()
          durations.append(seconds)
          left = len(todo) - finished
          per_cell = (time.time() - t_start) / finished
          logging.info("[%d/%d] %s trained in %s | study ETA %s", finished, len(todo), c.name,
                       _fmt_duration(seconds), _fmt_duration(per_cell * left))
        except RuntimeError as e:
          failures.append((c.name, str(e)))
          logging.error("%s", e)
      if evaluate and ev is not None and done:
        evaluate_done()
  except BaseException:
    stop_children()
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  pool.shutdown(wait=True)
  agg = None
  if evaluate and ev is not None:
    evaluate_done()
    if not train:  # unfinished cells: score their checkpoints so far (not reported yet)
      for c in cells:
        if (c.name not in evaluated and study.grid(c).scored and
            cell_status(out, c) == "partial"):
          evaluate_cell(ev, out, c, final=False)
    for c in study.cells:  # the report covers the whole study; --only limits the work
      if (c.name not in chosen and study.grid(c).scored and
          _status_or_none(out, c) == "done"):
        rows.extend(evaluate_cell(ev, out, c, score=False))
    agg = report(out, study, rows, title)
    logging.info("Wrote %s (study.csv, study.md and the plots).", out)
  if failures:
    raise RuntimeError(f"{len(failures)} cell(s) failed: " +
                       "; ".join(name for name, _ in failures) +
                       ". Re-run the same command to resume them.")
  return agg
