"""In-domain feature extractors: small classifiers the project trains itself, one per dataset.

  python -m crossflow_jax.eval.feature_classifier --dataset mnist --manual_dir ../shared/data

trains `ImageClassifier` on the train split, measures its test accuracy, and saves it (Orbax)
with a `classifier.json` (config, dataset, test accuracy) in
`<data_dir>/feature_classifiers/<dataset>/`. Its penultimate layer is the feature space
`classifier:<dataset>` of FID, precision/recall and density/coverage; its heads give the
conditional accuracy of generated images. Class datasets have one head (`label`); `shapes`
has four (colour, shape, size, position).
"""

import dataclasses
import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx

from crossflow_jax.errors import CheckpointError, ConfigError, DataError
from crossflow_jax.models.classifier import ClassifierConfig, ImageClassifier

SHAPES_HEADS = ("colour", "shape", "size", "position")
META_FILE = "classifier.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Training settings of one dataset's classifier (sized for minutes on a 2-core CPU)."""

  epochs: int
  widths: tuple[int, ...] = (32, 64, 128)
  batch_size: int = 128
  learning_rate: float = 2e-3
  augment: bool = False  # random horizontal flips and 4-pixel shifts (natural images)


RECIPES = {
  "digits": Recipe(epochs=40, widths=(32, 64)),
  "mnist": Recipe(epochs=2, widths=(16, 32, 64)),
  "cifar10": Recipe(epochs=6, widths=(16, 32, 64), augment=True),
  "shapes": Recipe(epochs=3, widths=(16, 32, 64)),
}


def base_dataset(name: str) -> str:
  """'shapes/s64' -> 'shapes'; 'cifar10_captions' shares cifar10's images but keeps its own name."""
  return name.split("/")[0]


def classifier_dir(data_dir: str, dataset: str) -> str:
  return os.path.join(os.path.expanduser(data_dir), "feature_classifiers", dataset.replace("/", "_"))


def heads_for(dataset: str, info) -> tuple[tuple[str, int], ...]:
  if info.num_classes:
    return (("label", info.num_classes),)
  if all(k in info.attributes for k in SHAPES_HEADS):
    return tuple((k, len(info.attributes[k])) for k in SHAPES_HEADS)
  raise DataError(
    f"Dataset {dataset!r} has neither class labels nor the shapes attributes; an in-domain classifier "
    "needs labels. Use --features inception:PATH for it."
  )


def load_split_arrays(
  dataset: str, split: str, *, data_dir: str, manual_dir: str = "", limit: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], object]:
  """(uint8 images [N, H, W, C], {head: int32 [N]}, SourceInfo) of a split, read in chunks."""
  from crossflow_jax.data.sources import load_source

  source, info = load_source(dataset, split, data_dir=data_dir, manual_dir=manual_dir)
  heads = heads_for(dataset, info)
  n = min(len(source), limit) if limit else len(source)
  images = np.zeros((n,) + tuple(info.image_shape), np.uint8)
  labels = {name: np.zeros((n,), np.int32) for name, _ in heads}
  for lo in range(0, n, 2048):
    for i in range(lo, min(n, lo + 2048)):
      record = source[i]
      images[i] = record["image"]
      for name in labels:
        labels[name][i] = int(record[name])
  return images, labels, info


def to_float(images_uint8: np.ndarray) -> np.ndarray:
  return images_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random horizontal flips and shifts by up to 4 pixels (zero = black padding), uint8 [B, H, W, C]."""
  b, h, w, _ = batch.shape
  flip = rng.random(b) < 0.5
  batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
  padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
  dy, dx = rng.integers(0, 9, b), rng.integers(0, 9, b)
  return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def _loss_fn(model: ImageClassifier, images: jax.Array, labels: dict) -> tuple[jax.Array, dict]:
  logits, _ = model(images)
  losses = {k: optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean() for k in labels}
  acc = {f"acc_{k}": jnp.mean(jnp.argmax(logits[k], -1) == labels[k]) for k in labels}
  return sum(losses.values()), acc


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"), donate_argnums=(1, 2))
def _train_step(graphdef, params, opt_state, images, labels, *, tx):
  def loss(p):
    return _loss_fn(nnx.merge(graphdef, p), images, labels)

  (value, acc), grads = jax.value_and_grad(loss, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": value, **acc}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, params, images):
  logits, feats = nnx.merge(graphdef, params)(images)
  return {k: jnp.argmax(v, -1) for k, v in logits.items()}, feats


def check_image_range(images: np.ndarray, what: str = "images") -> np.ndarray:
  """float images that must lie in [-1, 1]; uint8 ones are scaled. Raises DataError otherwise."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return to_float(images)
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{what} have dtype {images.dtype}; pass float images in [-1, 1] or uint8 in [0, 255].")
  lo, hi = float(images.min()), float(images.max())
  if lo < -1.01 or hi > 1.01:
    raise DataError(
      f"{what} lie in [{lo:.3g}, {hi:.3g}], not [-1, 1]. Scale them with x / 127.5 - 1 (from "
      "[0, 255]) or 2 x - 1 (from [0, 1])."
    )
  if len(images) >= 64 and lo >= 0.0:
    raise DataError(
      f"{what}: all {len(images)} images lie in [0, {hi:.3g}] with no negative value; they look "
      "scaled to [0, 1]. Pass images in [-1, 1] (2 x - 1)."
    )
  return images.astype(np.float32)


class FeatureClassifier:
  """A trained in-domain classifier: `features(images) -> [N, F]`, `predict(images) -> {head: [N]}`."""

  def __init__(self, model: ImageClassifier, meta: dict, path: str, batch_size: int = 256):
    self.graphdef, self.params = nnx.split(model)
    self.config: ClassifierConfig = model.config
    self.meta = meta
    self.path = path
    self.dataset = meta["dataset"]
    self.batch_size = batch_size

  @property
  def feature_space(self) -> str:
    return f"classifier:{self.dataset}"

  @functools.cached_property
  def identity(self) -> str:
    """sha256 (16 hex digits) of the weights: every leaf's path, dtype, shape and bytes (computed once)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(self.params):
      value = np.ascontiguousarray(jax.device_get(leaf))
      h.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape};".encode())
      h.update(value.tobytes())
    return h.hexdigest()[:16]

  @property
  def resolution(self) -> int:
    return int(self.config.image_shape[0])

  @property
  def feature_dim(self) -> int:
    return int(self.config.feature_dim)

  @property
  def test_accuracy(self) -> dict[str, float]:
    return dict(self.meta["test_accuracy"])

  def _run(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images = check_image_range(images)
    want = tuple(self.config.image_shape)
    if images.shape[1:] != want:
      raise DataError(
        f"The {self.feature_space} feature extractor takes images {want}, got {images.shape[1:]}; "
        "evaluate at the resolution the classifier was trained on."
      )
    preds, feats = [], []
    bs = self.batch_size
    for lo in range(0, len(images), bs):
      chunk = images[lo : lo + bs]
      pad = bs - len(chunk) if len(images) > bs else 0
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      p, f = jax.device_get(_forward(self.graphdef, self.params, jnp.asarray(chunk)))
      keep = len(chunk) - pad
      preds.append({k: v[:keep] for k, v in p.items()})
      feats.append(f[:keep])
    return (
      {k: np.concatenate([p[k] for p in preds]).astype(np.int32) for k in preds[0]},
      np.concatenate(feats).astype(np.float32),
    )

  def features(self, images: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] in [-1, 1] (or uint8) -> float32 [N, feature_dim]."""
    return self._run(images)[1]

  def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Images -> {head: int32 [N]} predicted classes."""
    return self._run(images)[0]

  def features_and_predictions(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    preds, feats = self._run(images)
    return feats, preds


def _evaluate(graphdef, params, images: np.ndarray, labels: dict, batch_size: int = 512) -> dict[str, float]:
  correct = {k: 0 for k in labels}
  for lo in range(0, len(images), batch_size):
    chunk = to_float(images[lo : lo + batch_size])
    preds, _ = _forward(graphdef, params, jnp.asarray(chunk))
    for k in labels:
      correct[k] += int(np.sum(np.asarray(preds[k]) == labels[k][lo : lo + batch_size]))
  return {k: correct[k] / len(images) for k in labels}


def train_classifier(
  dataset: str,
  *,
  data_dir: str,
  manual_dir: str = "",
  out_dir: str = "",
  epochs: int = 0,
  train_limit: int = 0,
  seed: int = 0,
  log=print,
) -> FeatureClassifier:
  """Trains the in-domain classifier of `dataset`, saves it to `out_dir` (default `classifier_dir`), returns it.

  epochs / train_limit: override the recipe's epochs / use only the first N train records (tests).
  """
  base = base_dataset(dataset)
  if base not in RECIPES:
    raise ConfigError(
      f"No in-domain classifier recipe for dataset {dataset!r}; recipes exist for {sorted(RECIPES)}. "
      "Use --features inception:PATH for other datasets."
    )
  recipe = RECIPES[base]
  epochs = epochs or recipe.epochs
  out_dir = out_dir or classifier_dir(data_dir, dataset)
  x_train, y_train, info = load_split_arrays(
    dataset, "train", data_dir=data_dir, manual_dir=manual_dir, limit=train_limit
  )
  x_test, y_test, _ = load_split_arrays(dataset, "test", data_dir=data_dir, manual_dir=manual_dir)
  config = ClassifierConfig(image_shape=tuple(info.image_shape), heads=heads_for(dataset, info), widths=recipe.widths)
  model = ImageClassifier(config, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  steps_per_epoch = len(x_train) // recipe.batch_size
  if steps_per_epoch < 1:
    raise DataError(f"{dataset} train split has {len(x_train)} records, fewer than one batch of {recipe.batch_size}.")
  total = epochs * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, min(200, total // 10), total)
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  log(
    f"Training the {dataset} feature classifier: {len(x_train)} images {info.image_shape}, heads "
    f"{dict(config.heads)}, {epochs} epochs x {steps_per_epoch} steps."
  )
  start, step = time.time(), 0
  for epoch in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(steps_per_epoch):
      idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
      batch = x_train[idx]
      if recipe.augment:
        batch = _augment(batch, rng)
      labels = {k: jnp.asarray(v[idx]) for k, v in y_train.items()}
      params, opt_state, metrics = _train_step(graphdef, params, opt_state, jnp.asarray(to_float(batch)), labels, tx=tx)
      step += 1
      if step % 100 == 0 or step == total:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        rate = step / (time.time() - start)
        log(
          f"  step {step}/{total} (epoch {epoch + 1}) loss {m['loss']:.4f} | {rate:.1f} steps/s | "
          f"ETA {(total - step) / rate:.0f} s"
        )
  accuracy = _evaluate(graphdef, params, x_test, y_test)
  log(f"  test accuracy: {accuracy}")
  meta = {
    "dataset": dataset,
    "config": config.to_dict(),
    "test_accuracy": accuracy,
    "epochs": epochs,
    "train_examples": int(len(x_train)),
    "seed": seed,
    "train_seconds": round(time.time() - start, 1),
    "recipe": dataclasses.asdict(recipe),
  }
  save_classifier(out_dir, params, meta)
  return FeatureClassifier(nnx.merge(graphdef, params), meta, out_dir)


def save_classifier(out_dir: str, params: nnx.State, meta: dict) -> None:
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(out_dir, "params"), params, force=True)
  ckpt.wait_until_finished()
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(meta, f, indent=1)


def load_classifier(path: str) -> FeatureClassifier:
  """A classifier saved by `train_classifier` (its folder)."""
  path = os.path.abspath(os.path.expanduser(path))
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise CheckpointError(
      f"No feature classifier in {path} (missing {META_FILE}). Train one with `python -m "
      "crossflow_jax.eval.feature_classifier --dataset NAME`."
    )
  with open(meta_path) as f:
    meta = json.load(f)
  config = ClassifierConfig.from_dict(meta["config"])
  abstract = nnx.eval_shape(lambda: ImageClassifier(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract)
  # On this process's first device: the saved sharding names a device that, in a multi-host run, only one has.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local), abstract_params)
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), abstract_params)
  except Exception as e:
    raise CheckpointError(
      f"Cannot restore the feature classifier in {path}: {type(e).__name__}: {e}. Delete the folder and train it again."
    ) from e
  return FeatureClassifier(nnx.merge(graphdef, params), meta, path)


def get_classifier(
  dataset: str, *, data_dir: str, manual_dir: str = "", train_if_missing: bool = True, log=print
) -> FeatureClassifier:
  """The saved classifier of `dataset` in `data_dir`, trained first if missing (and allowed)."""
  path = classifier_dir(data_dir, dataset)
  if os.path.isfile(os.path.join(path, META_FILE)):
    return load_classifier(path)
  if not train_if_missing:
    raise CheckpointError(
      f"No feature classifier for {dataset!r} in {path}. Train it with `python -m "
      f"crossflow_jax.eval.feature_classifier --dataset {dataset} --data_dir {data_dir}`."
    )
  log(f"No feature classifier for {dataset!r} in {path} yet: training it once (it is reused afterwards).")
  return train_classifier(dataset, data_dir=data_dir, manual_dir=manual_dir, log=log)


def main():
  """`python -m crossflow_jax.eval.feature_classifier --dataset NAME`: train and save one classifier."""
  from crossflow_jax.data.sources import default_data_dir

  # Defined here, not at import: eval_fid.py imports this module and has flags of the same names.
  dataset = flags.DEFINE_string("dataset", "mnist", f"Dataset to train the classifier on: {sorted(RECIPES)}.")
  data_dir = flags.DEFINE_string(
    "data_dir", "", "Prepared datasets ('' = $CROSSFLOW_DATA_DIR or ~/crossflow_jax_data)."
  )
  manual_dir = flags.DEFINE_string("manual_dir", "", "Raw files for builders that need them (e.g. ../shared/data).")
  epochs = flags.DEFINE_integer("epochs", 0, "Override the recipe's epochs.")
  out = flags.DEFINE_string("out", "", "Output folder ('' = <data_dir>/feature_classifiers/<dataset>).")

  def run(argv):
    del argv
    clf = train_classifier(
      dataset.value,
      data_dir=data_dir.value or default_data_dir(),
      manual_dir=manual_dir.value,
      out_dir=out.value,
      epochs=epochs.value,
    )
    print(json.dumps({"path": clf.path, "feature_space": clf.feature_space, "test_accuracy": clf.test_accuracy}))

  app.run(run)


if __name__ == "__main__":
  main()
