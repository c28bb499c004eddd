"""The class -> image CPU recipe: digits of every class that an independent classifier can read.

Trains `configs/digits_c2i.py` as the README's class -> image command does (about 4 minutes on
2 CPU cores), samples every class with the CLI and has scikit-learn's SVM, trained on real
digits only, read them. Also checks image -> class by integrating the same field backwards.
"""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from tests.helpers import run_cli


@pytest.fixture(scope="module")
def judge():
  digits = load_digits()  # [1797, 64] in 0..16
  x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.25, random_state=0,
                                                      stratify=digits.target)
  clf = SVC(gamma=0.001, C=10.0).fit(x_train, y_train)
  assert clf.score(x_test, y_test) > 0.98  # the judge itself is reliable (99.3% on held-out real digits)
  return clf


@pytest.mark.slow
def test_digits_c2i_run_draws_every_class(tmp_path, judge):
  workdir = tmp_path / "digits"
  data = tmp_path / "data"
  r = run_cli(["train_flow.py", "--config", "configs/digits_c2i.py", "--workdir", str(workdir)], timeout=1800,
              env_extra={"CROSSFLOW_DATA_DIR": str(data)})
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / "loss.png").exists() and (workdir / "samples" / "step_0002000.png").exists()

  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(workdir), "--num_samples", "30", "--steps", "20",
               "--seed", "1", "--out", str(tmp_path / "s.npz")], env_extra={"CROSSFLOW_DATA_DIR": str(data)})
  assert r.returncode == 0, r.stderr[-3000:]
  z = np.load(tmp_path / "s.npz")
  images, labels = z["images"], z["labels"]
  assert images.shape == (300, 8, 8, 1)
  pred = judge.predict(images.reshape(300, 64).astype(np.float64) * 16.0 / 255.0)
  per_class = [float(np.mean(pred[labels == c] == c)) for c in range(10)]
  print("judged accuracy", float(np.mean(pred == labels)), per_class)
  assert np.mean(pred == labels) >= 0.9, per_class
  assert min(per_class) >= 0.6, per_class

  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(workdir), "--classify_split", "test", "--steps", "20"],
              env_extra={"CROSSFLOW_DATA_DIR": str(data)})
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  print("image -> class", result)
  assert result["num_images"] == 300 and result["accuracy"] >= 0.85


@pytest.mark.slow
def test_digits_image_to_class_model_classifies_held_out_digits(tmp_path):
  workdir, data = tmp_path / "i2c", tmp_path / "data"
  env = {"CROSSFLOW_DATA_DIR": str(data)}
  r = run_cli(["train_flow.py", "--config", "configs/digits_i2c.py", "--workdir", str(workdir)], timeout=1800,
              env_extra=env)
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli(["-m", "crossflow_jax.sample", "--workdir", str(workdir), "--classify_split", "test", "--steps", "20"],
              env_extra=env)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  print("image -> class", result)
  assert result["num_images"] == 300 and result["accuracy"] >= 0.9
