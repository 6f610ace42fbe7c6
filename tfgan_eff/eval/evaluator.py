"""The Evaluator: generated images and a real set in, FID / IS / KID / precision-recall out.

    ev = Evaluator(metrics=("fid", "kid"), num_samples=10000, feature_extractor="inception",
                   inception_path="/data/inception-2015-12-05.tgz")
    result = ev.evaluate(generate_fn, lambda: data.eval_batches(256), "cifar10-train-32px-all")

`generate_fn(n)` returns uint8 [n, H, W, C] (quantize a generator's [-1, 1] output with
`to_uint8`); `real_batches_fn()` yields uint8 batches, one pass over the real set. The real
side is computed once per `reference_key` (and extractor, resize) and cached as an npz in
`<cache_dir>/reference_stats/`: FID moments always, the real features too when KID or
precision/recall ask for them. The protocol is recorded in the result (extractor, weights
hash, resize, sample counts), because FID values are only comparable under the same one.
"""

import os
import re

import numpy as np
from absl import logging

from tfgan_eff.config import configurable
from tfgan_eff.eval import metrics as metrics_lib
from tfgan_eff.eval.features import (DEFAULT_CACHE_DIR, DigitsClassifierExtractor,
                                     FeatureExtractor, MnistClassifierExtractor,
                                     as_uint8_batch)

METRICS = ("fid", "is", "kid", "pr")
_ALIASES = {"fid": "fid", "is": "is", "inception_score": "is", "kid": "kid", "pr": "pr",
            "precision_recall": "pr"}
_CACHE_VERSION = 1
_MNIST_PATH_MISSING = (
    "feature_extractor='mnist' trains its classifier on the real MNIST test digits: set "
    "Evaluator.mnist_path (make_extractor's mnist_path) to the path of "
    "t10k-images-idx3-ubyte.gz (t10k-labels-idx1-ubyte.gz beside it).")


def make_extractor(feature_extractor="inception", inception_path=None,
                   cache_dir=DEFAULT_CACHE_DIR, resize="legacy_tf", download=False,
                   inception_sha256=None, batch_size=50, mnist_path=None, weights_dir=None):
  """"inception" | "digits" | "mnist" | a FeatureExtractor instance -> FeatureExtractor.

  "mnist" needs `mnist_path`, the MNIST t10k-images-idx3-ubyte.gz (labels beside it).
  `weights_dir`: where the trained ("digits", "mnist") extractors keep their own copy of
  their weights (a study's folder); None: the cache.
  """
  if isinstance(feature_extractor, FeatureExtractor):
    return feature_extractor
  if feature_extractor == "inception":
    from tfgan_eff.eval.inception import load_inception
    return load_inception(inception_path, cache_dir=cache_dir, download=download,
                          expected_sha256=inception_sha256, resize=resize,
                          batch_size=batch_size)
  if feature_extractor == "digits":
    return DigitsClassifierExtractor(cache_dir=cache_dir, weights_dir=weights_dir)
  if feature_extractor == "mnist":
    if mnist_path is None:
      raise ValueError(_MNIST_PATH_MISSING)
    return MnistClassifierExtractor(mnist_path, cache_dir=cache_dir, weights_dir=weights_dir)
  raise ValueError(f"Unknown feature_extractor '{feature_extractor}': use 'inception' (the "
                   f"standard FID network), 'digits' (toy domain FID for digit datasets) or "
                   f"'mnist' (domain FID for MNIST; set mnist_path).")


def _safe(s):
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(s))


@configurable
class Evaluator:
  """Computes FID, IS, KID and precision/recall of a generator against a real set.

  Args:
    metrics: any of "fid", "is" (Inception score), "kid", "pr" (precision/recall).
    num_samples: generated images per run.
    feature_extractor: "inception" (TTUR's 2015-12-05 graph; published-comparable),
      "digits" (toy LeNet; domain FID), "mnist" (LeNet trained on real MNIST digits; domain
      FID for MNIST runs; needs `mnist_path`), or a FeatureExtractor instance.
    inception_path: classify_image_graph_def.pb / inception-2015-12-05.tgz / a folder.
    mnist_path: the MNIST test images t10k-images-idx3-ubyte.gz (with
      t10k-labels-idx1-ubyte.gz beside it), for feature_extractor="mnist".
    cache_dir: weights and reference statistics cache.
    kid_subsets, kid_subset_size: KID block estimator (100 × 1000 as stylegan2-ada).
    pr_k: k of the k-NN manifolds for precision/recall.
    pr_max_samples: precision/recall uses at most this many real and fake features.
    is_splits: Inception-score splits (10 as published; 1 = compare_gan variant).
    resize: "legacy_tf" (in-graph TF1 bilinear, TTUR) or "clean" (PIL bicubic, clean-fid);
      Inception only.
    num_runs: independent sets of `num_samples` fakes; results are means over runs plus
      `<key>_std` (population std over runs).
    batch_size: images per generate_fn call and per extractor forward pass.
    download_inception: fetch the Inception .tgz when absent (needs network).
    inception_sha256: expected SHA-256 of classify_image_graph_def.pb (None: not checked).
    seed: KID subset and precision/recall subsampling seed.
  """

  def __init__(self, metrics=("fid",), num_samples=10000, feature_extractor="inception",
               inception_path=None, cache_dir=DEFAULT_CACHE_DIR, kid_subsets=100,
               kid_subset_size=1000, pr_k=3, resize="legacy_tf", num_runs=1,
               is_splits=10, pr_max_samples=10000, batch_size=50, download_inception=False,
               inception_sha256=None, seed=0, mnist_path=None):
    if isinstance(metrics, str):
      metrics = (metrics,)
    unknown = [m for m in metrics if m not in _ALIASES]
    if unknown:
      raise ValueError(f"Unknown metric(s) {unknown}: choose from {list(METRICS)}.")
    if resize not in ("legacy_tf", "clean"):
      raise ValueError(f"Evaluator.resize must be 'legacy_tf' or 'clean', got '{resize}'.")
    if num_samples < 2 or num_runs < 1:
      raise ValueError("Evaluator needs num_samples >= 2 and num_runs >= 1.")
    if feature_extractor == "mnist" and mnist_path is None:
      raise ValueError(_MNIST_PATH_MISSING)
    self.metrics = tuple(dict.fromkeys(_ALIASES[m] for m in metrics))
    self.num_samples = int(num_samples)
    self.cache_dir = os.path.expanduser(cache_dir)
    self.kid_subsets = kid_subsets
    self.kid_subset_size = kid_subset_size
    self.pr_k = pr_k
    self.pr_max_samples = pr_max_samples
    self.is_splits = is_splits
    self.resize = resize
    self.num_runs = int(num_runs)
    self.batch_size = int(batch_size)
    self.seed = seed
    self._extractor_spec = feature_extractor
    self._extractor_args = dict(inception_path=inception_path, cache_dir=self.cache_dir,
                                resize=resize, download=download_inception,
                                inception_sha256=inception_sha256, batch_size=batch_size,
                                mnist_path=mnist_path)
    self._extractor = None

  def keep_extractor_weights_in(self, folder):
    """A trained extractor ("digits", "mnist") keeps its weights in `folder` (seeded from
    the cache), so that its scores stay comparable on any machine. Before first use."""
    if self._extractor is not None:
      raise RuntimeError("keep_extractor_weights_in() must come before the extractor is built.")
    self._extractor_args["weights_dir"] = folder

  @property
  def extractor(self):
    """The feature extractor, built on first use (loading Inception takes a few seconds)."""
    if self._extractor is None:
      self._extractor = make_extractor(self._extractor_spec, **self._extractor_args)
    return self._extractor

  @property
  def _needs_features(self):
    return "kid" in self.metrics or "pr" in self.metrics

  def reference_path(self, reference_key):
    ex = self.extractor
    tag = getattr(ex, "cache_tag", ex.name)
    name = f"{_safe(reference_key)}--{_safe(tag)}--{_safe(ex.resize)}.npz"
    return os.path.join(self.cache_dir, "reference_stats", name)

  # -- real side ---------------------------------------------------------------------------

  def reference_statistics(self, real_batches_fn, reference_key=None):
    """{"moments": StreamingMoments, "features": float32 [N, D] or None, "num_real": N}.

    Read from the cache when `reference_key` is set and the cached entry has what the
    requested metrics need; otherwise one pass over `real_batches_fn()`, then cached.
    """
    path = self.reference_path(reference_key) if reference_key else None
    if path and os.path.exists(path):
      try:
        with np.load(path) as f:
          if int(f["version"]) == _CACHE_VERSION and (
              not self._needs_features or "features" in f):
            logging.info("Real statistics for '%s' from %s", reference_key, path)
            return {"moments": metrics_lib.StreamingMoments.from_arrays(f, "moments_"),
                    "features": np.asarray(f["features"]) if "features" in f else None,
                    "num_real": int(f["num_real"])}
      except (OSError, ValueError, KeyError) as e:
        logging.warning("Ignoring unreadable reference cache %s (%s)", path, e)

    logging.info("Computing real statistics%s", f" for '{reference_key}'" if path else "")
    moments = metrics_lib.StreamingMoments()
    features = []
    for batch in real_batches_fn():
      if isinstance(batch, dict):
        batch = batch["images"]
      elif isinstance(batch, (tuple, list)):
        batch = batch[0]
      batch = as_uint8_batch(batch, who="Evaluator (real_batches_fn output)")
      if not len(batch):
        continue
      pool = self.extractor(batch)["pool"]
      moments.update(pool)
      if self._needs_features:
        features.append(pool)
    if moments.count < 2:
      raise ValueError(f"real_batches_fn yielded {moments.count} image(s); the reference "
                       f"statistics need at least 2.")
    features = np.concatenate(features) if features else None
    if path:
      arrays = moments.to_arrays("moments_")
      arrays.update(version=np.int64(_CACHE_VERSION), num_real=np.int64(moments.count),
                    reference_key=np.array(str(reference_key)),
                    extractor=np.array(self.extractor.name),
                    resize=np.array(self.extractor.resize),
                    mu=moments.mean, sigma=moments.covariance)
      if features is not None:
        arrays["features"] = features
      metrics_lib.atomic_savez(path, **arrays)
      logging.info("Cached real statistics in %s", path)
    return {"moments": moments, "features": features, "num_real": moments.count}

  # -- fake side ---------------------------------------------------------------------------

  def _fake_statistics(self, generate_fn):
    moments = metrics_lib.StreamingMoments()
    features, logits = [], []
    got = 0
    while got < self.num_samples:
      want = min(self.batch_size, self.num_samples - got)
      images = as_uint8_batch(generate_fn(want), who="Evaluator (generate_fn output)")
      if not len(images):
        raise ValueError("generate_fn returned no images.")
      images = images[:self.num_samples - got]
      out = self.extractor(images)
      if "fid" in self.metrics:
        moments.update(out["pool"])
      if self._needs_features:
        features.append(out["pool"])
      if "is" in self.metrics:
        logits.append(out["logits"])
      got += len(images)
    return (moments, np.concatenate(features) if features else None,
            np.concatenate(logits) if logits else None)

  def _one_run(self, generate_fn, real, run):
    fake_moments, fake_features, fake_logits = self._fake_statistics(generate_fn)
    out = {}
    if "fid" in self.metrics:
      rm = real["moments"]
      out["fid"] = metrics_lib.frechet_distance(fake_moments.mean, fake_moments.covariance,
                                                rm.mean, rm.covariance)
    if "is" in self.metrics:
      out["is_mean"], out["is_std"] = metrics_lib.inception_score(
          fake_logits, splits=min(self.is_splits, len(fake_logits)), from_logits=True)
    if "kid" in self.metrics:
      out["kid_mean"], out["kid_std"] = metrics_lib.kernel_inception_distance(
          fake_features, real["features"], self.kid_subsets, self.kid_subset_size,
          seed=self.seed + run)
    if "pr" in self.metrics:
      rng = np.random.RandomState(self.seed + run)
      rf = real["features"]
      if len(rf) > self.pr_max_samples:
        rf = rf[np.sort(rng.choice(len(rf), self.pr_max_samples, replace=False))]
      out["precision"], out["recall"] = metrics_lib.precision_recall(
          rf, fake_features[:self.pr_max_samples], k=self.pr_k)
    return out

  def evaluate(self, generate_fn, real_batches_fn, reference_key=None):
    """Runs every requested metric; returns a flat dict.

    Keys: "fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall" (those
    requested); with num_runs > 1 each is the mean over runs and "<key>_std" the std over
    runs ("fid_std", "is_mean_std", "kid_mean_std", "precision_std", "recall_std").
    Protocol fields: "extractor", "extractor_sha256" (weights hash), "resize",
    "comparable_to_published", "num_fake", "num_real", "num_runs", "reference_key".
    """
    real = self.reference_statistics(real_batches_fn, reference_key)
    runs = [self._one_run(generate_fn, real, r) for r in range(self.num_runs)]
    result = {}
    for k in runs[0]:
      values = np.array([r[k] for r in runs], np.float64)
      result[k] = float(values.mean())
      if self.num_runs > 1 and not k.endswith("_std"):
        result[k + "_std"] = float(values.std())
    ex = self.extractor
    result.update(extractor=ex.name, resize=ex.resize,
                  comparable_to_published=bool(ex.comparable_to_published),
                  num_fake=self.num_samples, num_real=int(real["num_real"]),
                  num_runs=self.num_runs, reference_key=str(reference_key or ""))
    if getattr(ex, "sha256", None):
      result["extractor_sha256"] = ex.sha256
    return result
