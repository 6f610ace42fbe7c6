"""Sample-quality metrics on extracted features: FID, IS, KID, precision/recall.

Pure numpy/scipy, float64 wherever a sum is formed (FID moments, IS, KID); nothing here
knows about networks. Every function takes plain arrays of features / logits, so the same
maths serves the Inception network, the toy digits classifier, or a user's own embedding.

Conventions, chosen to match the published reference implementations:

- FID: covariances are unbiased (ddof=1), as in TTUR (`np.cov`) and clean-fid.
- IS: `splits` consecutive chunks, IS = exp(E_x KL(p(y|x) || p(y))) per chunk, mean and
  population std over chunks (OpenAI / TTUR / torch-fidelity). `splits=1` is compare_gan's
  variant. Inception logits are the *bias-free* `pool_3 @ softmax/weights` (see inception.py).
- KID: unbiased MMD² with k(x, y) = (x·y / d + 1)³ averaged over random subsets drawn without
  replacement (100 × 1000 in stylegan2-ada, torch-fidelity and clean-fid).
- Precision/recall: Kynkäänniemi et al. 2019, k-NN hyperspheres around each point (k = 3),
  distances to the k-th neighbour excluding the point itself.
"""

import os
import tempfile

import numpy as np
from scipy import special

_EPS = np.finfo(np.float64).eps


def atomic_savez(path, **arrays):
  """`np.savez` to `path` through a temporary file in the same folder and `os.replace`.

  A reader never sees a half-written file, and two writers racing each other leave one
  complete file.
  """
  path = os.path.expanduser(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ---------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------

def _psd_sqrt_factor(sigma):
  """Eigen-decomposes a symmetric PSD matrix; returns (eigenvectors, sqrt eigenvalues).

  Eigenvalues below `d · eps · λ_max` are numerical noise of a rank-deficient matrix (their
  true value is indistinguishable from 0 at float64 precision) and are set to exactly 0:
  taking the square root of ±1e-16 noise instead would add up to ~1e-8 per dimension.
  """
  w, v = np.linalg.eigh(sigma)
  tol = max(w.max(initial=0.0), 0.0) * sigma.shape[0] * _EPS
  w = np.where(w > tol, w, 0.0)
  return v, np.sqrt(w)


def trace_sqrt_product(sigma1, sigma2):
  """tr(sqrt(sigma1 · sigma2)) for symmetric PSD matrices, in float64.

  Uses the symmetric form tr sqrt(A) with A = sqrt(S1) · S2 · sqrt(S1), which has the same
  eigenvalues as S1 · S2 but is symmetric PSD, so `eigh` applies and the result is real
  (no imaginary residue as with `scipy.linalg.sqrtm(S1 @ S2)`). Stays accurate when the
  covariances are rank-deficient (fewer samples than dimensions).
  """
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  s1 = (s1 + s1.T) / 2
  s2 = (s2 + s2.T) / 2
  v, sw = _psd_sqrt_factor(s1)
  root1 = (v * sw) @ v.T
  a = root1 @ s2 @ root1
  a = (a + a.T) / 2
  eig = np.linalg.eigvalsh(a)
  tol = max(eig.max(initial=0.0), 0.0) * a.shape[0] * _EPS
  eig = np.where(eig > tol, eig, 0.0)
  return float(np.sqrt(eig).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID on Inception features).

  d² = ||mu1 − mu2||² + tr(sigma1) + tr(sigma2) − 2 tr(sqrt(sigma1 · sigma2)).

  All arithmetic in float64; returns a non-negative Python float (rounding residue below 0
  on identical inputs is returned as 0.0).

  Example:
    m = StreamingMoments().update(features)
    frechet_distance(m.mean, m.covariance, ref_mu, ref_sigma)
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
        f"mu2 {mu2.shape}, sigma2 {sigma2.shape} (expected [D] and [D, D] for both sets; "
        f"were the two sets embedded with the same feature extractor?)")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"frechet_distance: {name} contains NaN or Inf.")
  diff = mu1 - mu2
  value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
           - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return float(max(value, 0.0))


def intra_fid(fake_features, fake_labels, real_features, real_labels):
  """Intra-FID of a class-conditional generator (Miyato & Koyama 2018): the FID of each
  class's samples G(z, y) against the real images of class y, and their mean.

  Catches what one FID over all classes hides: a class drawn badly or as another class
  (every class's samples still look like some digit, so the pooled statistics barely move).

  Args:
    fake_features, real_features: [N, D] features (the same extractor).
    fake_labels, real_labels: [N] integer classes (the asked y; the true labels).

  Returns:
    {"per_class": {class: FID}, "intra_fid": mean over the classes of `fake_labels`}.
    Every one of those classes needs at least 2 samples on both sides.
  """
  fake_features = np.asarray(fake_features, np.float64)
  real_features = np.asarray(real_features, np.float64)
  fake_labels, real_labels = np.asarray(fake_labels), np.asarray(real_labels)
  if (fake_features.ndim != 2 or real_features.ndim != 2 or
      fake_features.shape[1] != real_features.shape[1] or
      fake_labels.shape != fake_features.shape[:1] or
      real_labels.shape != real_features.shape[:1]):
    raise ValueError(f"intra_fid: expected [N, D] features with [N] labels on both sides "
                     f"(same D), got {fake_features.shape} with {fake_labels.shape} and "
                     f"{real_features.shape} with {real_labels.shape}.")
  per_class = {}
  for c in np.unique(fake_labels):
    f, r = fake_features[fake_labels == c], real_features[real_labels == c]
    if len(f) < 2 or len(r) < 2:
      raise ValueError(f"intra_fid: class {c} has {len(f)} samples and {len(r)} real "
                       f"images; each class needs at least 2 of both.")
    per_class[int(c)] = frechet_distance(f.mean(0), np.cov(f, rowvar=False),
                                         r.mean(0), np.cov(r, rowvar=False))
  if not per_class:
    raise ValueError("intra_fid: no samples.")
  return {"per_class": per_class, "intra_fid": float(np.mean(list(per_class.values())))}


# ---------------------------------------------------------------------------------------
# Streaming first and second moments
# ---------------------------------------------------------------------------------------

class StreamingMoments:
  """Running count, sum and sum of outer products of feature vectors, in float64.

  Keeps O(D²) memory whatever the number of samples, so FID over 50k images never holds the
  [50000, 2048] activations. Sums are taken around a fixed shift (the mean of the first
  batch) so that large means do not cancel catastrophically in `covariance`.

  Example:
    m = StreamingMoments()
    for batch in batches:
      m.update(extractor(batch)["pool"])
    mu, sigma = m.mean, m.covariance
    m.save("stats.npz"); StreamingMoments.load("stats.npz")
  """

  def __init__(self, dim=None):
    self.count = 0
    self.dim = dim
    self.shift = None
    self.sum = None
    self.sum_outer = None
    if dim is not None:
      self._init(np.zeros([dim], np.float64))

  def _init(self, shift):
    self.dim = shift.shape[0]
    self.shift = shift
    self.sum = np.zeros([self.dim], np.float64)
    self.sum_outer = np.zeros([self.dim, self.dim], np.float64)

  def update(self, x):
    """Adds a batch [B, D] (or [B, ...], flattened). Returns self."""
    x = np.asarray(x, np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
      return self
    if self.shift is None:
      self._init(x.mean(axis=0))
    if x.shape[1] != self.dim:
      raise ValueError(f"StreamingMoments: got features of dimension {x.shape[1]}, "
                       f"expected {self.dim}.")
    xc = x - self.shift
    self.sum += xc.sum(axis=0)
    self.sum_outer += xc.T @ xc
    self.count += x.shape[0]
    return self

  def merge(self, other):
    """Adds the samples accumulated in `other` (any shift) to self. Returns self."""
    if other.count == 0:
      return self
    if self.shift is None:
      self._init(other.shift.copy())
    if other.dim != self.dim:
      raise ValueError(f"StreamingMoments.merge: dimension {other.dim} != {self.dim}.")
    c = other.shift - self.shift  # x - s_self = (x - s_other) + c
    s, n = other.sum, other.count
    self.sum_outer += other.sum_outer + np.outer(s, c) + np.outer(c, s) + n * np.outer(c, c)
    self.sum += s + n * c
    self.count += n
    return self

  @property
  def mean(self):
    if self.count == 0:
      raise ValueError("StreamingMoments: no samples accumulated.")
    return self.shift + self.sum / self.count

  @property
  def covariance(self):
    """Unbiased (ddof=1) covariance [D, D], like `np.cov(x, rowvar=False)`."""
    if self.count < 2:
      raise ValueError(f"StreamingMoments: the covariance needs at least 2 samples, "
                       f"have {self.count}.")
    m = self.sum / self.count
    cov = (self.sum_outer - self.count * np.outer(m, m)) / (self.count - 1)
    return (cov + cov.T) / 2

  def to_arrays(self, prefix=""):
    if self.count == 0:
      raise ValueError("StreamingMoments: nothing to save (no samples accumulated).")
    return {prefix + "count": np.int64(self.count), prefix + "shift": self.shift,
            prefix + "sum": self.sum, prefix + "sum_outer": self.sum_outer}

  @classmethod
  def from_arrays(cls, arrays, prefix=""):
    m = cls()
    m._init(np.asarray(arrays[prefix + "shift"], np.float64))
    m.sum = np.asarray(arrays[prefix + "sum"], np.float64).copy()
    m.sum_outer = np.asarray(arrays[prefix + "sum_outer"], np.float64).copy()
    m.count = int(arrays[prefix + "count"])
    return m

  def save(self, path):
    """Writes an npz (atomically) with the raw sums plus `mu` and `sigma` (TTUR keys)."""
    atomic_savez(path, mu=self.mean, sigma=self.covariance, **self.to_arrays())

  @classmethod
  def load(cls, path):
    with np.load(os.path.expanduser(path)) as f:
      return cls.from_arrays(f)


def load_reference_stats(path):
  """(mu, sigma) from an npz written by `StreamingMoments.save`, TTUR, pytorch-fid or
  clean-fid (all use the keys `mu` and `sigma`)."""
  with np.load(os.path.expanduser(path)) as f:
    if "mu" in f and "sigma" in f:
      return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    if "shift" in f:
      m = StreamingMoments.from_arrays(f)
      return m.mean, m.covariance
  raise ValueError(f"'{path}' holds no FID statistics (expected arrays 'mu' and 'sigma').")


# ---------------------------------------------------------------------------------------
# Inception score
# ---------------------------------------------------------------------------------------

def _looks_like_probs(x):
  return (x.min() >= 0.0 and x.max() <= 1.0
          and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def inception_score(probs_or_logits, splits=10, from_logits=None, shuffle_seed=None):
  """Inception score: exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` chunks.

  Args:
    probs_or_logits: [N, K] class probabilities or logits.
    splits: number of consecutive chunks (10 in the literature; 1 = compare_gan variant).
    from_logits: True / False, or None to decide from the values (non-negative rows that
      sum to 1 are probabilities).
    shuffle_seed: when set, rows are permuted with `np.random.RandomState(seed)` first
      (torch-fidelity shuffles with seed 2020 before splitting).

  Returns:
    (mean, std) as Python floats; std is the population std over chunks (0 for splits=1).
  """
  x = np.asarray(probs_or_logits, np.float64)
  if x.ndim != 2:
    raise ValueError(f"inception_score expects [N, K] probabilities/logits, got {x.shape}.")
  n = x.shape[0]
  if splits < 1 or n < splits:
    raise ValueError(f"inception_score: need at least `splits`={splits} samples, have {n}.")
  if shuffle_seed is not None:
    x = x[np.random.RandomState(shuffle_seed).permutation(n)]
  if from_logits is None:
    from_logits = not _looks_like_probs(x)
  if from_logits:
    log_p = x - special.logsumexp(x, axis=1, keepdims=True)
    p = np.exp(log_p)
  else:
    p = x / x.sum(axis=1, keepdims=True)
    log_p = None
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    part = p[lo:hi]
    marginal = part.mean(axis=0)
    if log_p is not None:
      plogp = part * log_p[lo:hi]
    else:
      plogp = special.xlogy(part, part)
    kl = plogp.sum(axis=1) - special.xlogy(part, marginal[None, :]).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  scores = np.asarray(scores)
  return float(scores.mean()), float(scores.std())


# ---------------------------------------------------------------------------------------
# Kernel inception distance
# ---------------------------------------------------------------------------------------

def kernel_inception_distance(features1, features2, num_subsets=100, subset_size=1000,
                              seed=0):
  """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³.

  For each of `num_subsets` draws, `m = min(subset_size, n1, n2)` rows are taken without
  replacement from each set, and

    MMD²_u = [Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / m²

  which is unbiased (the cross term uses all m² pairs of independent samples).

  Returns:
    (mean, std) over subsets, Python floats (std is the population std, as torch-fidelity).
  """
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f"kernel_inception_distance: expected [N1, D] and [N2, D] features, "
                     f"got {f1.shape} and {f2.shape}.")
  n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
  m = min(subset_size, n1, n2)
  if m < 2:
    raise ValueError(f"kernel_inception_distance: need at least 2 samples per set, have "
                     f"{n1} and {n2}.")
  rng = np.random.RandomState(seed)
  values = np.empty([num_subsets])
  for s in range(num_subsets):
    x = f1[rng.choice(n1, m, replace=False)]
    y = f2[rng.choice(n2, m, replace=False)]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values[s] = within - 2.0 * kxy.sum() / (m * m)
  return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------
# Improved precision and recall
# ---------------------------------------------------------------------------------------

def _row_batch(n_cols, max_elements):
  return max(1, int(max_elements // max(n_cols, 1)))


def _sq_dists(a, b, b_sq):
  """Squared Euclidean distances [len(a), len(b)], clamped at 0."""
  a_sq = np.einsum("ij,ij->i", a, a)
  d = a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
  return np.maximum(d, 0.0)


def knn_radii(features, k=3, max_elements=2 ** 25):
  """Squared distance of each point to its k-th nearest neighbour in the same set (the
  point itself excluded), computed in row batches of at most `max_elements` distances."""
  x = np.asarray(features)
  n = x.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"precision/recall: k={k} needs more than k samples, have {n}.")
  x_sq = np.einsum("ij,ij->i", x, x)
  radii = np.empty([n], x.dtype)
  step = _row_batch(n, max_elements)
  for i in range(0, n, step):
    d = _sq_dists(x[i:i + step], x, x_sq)
    # Column 0 of the sorted row is the point itself (distance 0): take index k.
    radii[i:i + step] = np.partition(d, k, axis=1)[:, k]
  return radii


def _fraction_inside(queries, refs, ref_radii, max_elements):
  refs_sq = np.einsum("ij,ij->i", refs, refs)
  inside = 0
  step = _row_batch(refs.shape[0], max_elements)
  for i in range(0, queries.shape[0], step):
    d = _sq_dists(queries[i:i + step], refs, refs_sq)
    inside += int(np.count_nonzero((d <= ref_radii[None, :]).any(axis=1)))
  return inside / queries.shape[0]


def precision_recall(real_features, fake_features, k=3, max_elements=2 ** 25,
                     dtype=np.float32):
  """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019).

  precision = fraction of fakes inside the real manifold (the union of the hyperspheres
  around each real point with radius its distance to the k-th nearest real), recall = the
  fraction of reals inside the fake manifold. Distances are computed in row batches of at
  most `max_elements` entries (2^25 ≈ 128 MB in float32), so 10k × 10k stays small.

  Returns:
    (precision, recall) as Python floats.
  """
  real = np.asarray(real_features, dtype)
  fake = np.asarray(fake_features, dtype)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision_recall: expected [N1, D] and [N2, D] features, got "
                     f"{real.shape} and {fake.shape}.")
  real_radii = knn_radii(real, k, max_elements)
  fake_radii = knn_radii(fake, k, max_elements)
  precision = _fraction_inside(fake, real, real_radii, max_elements)
  recall = _fraction_inside(real, fake, fake_radii, max_elements)
  return float(precision), float(recall)
