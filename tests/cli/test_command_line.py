"""Command lines: config overrides, the JAX flow-matching reference's flags, and their errors."""

import os

from absl import flags

from crossflow_jax.command_line import normalize_argv
from tests.helpers import REPO, run_cli

REFERENCE = (
  "--dataset_name imagenet256 --wandb.name DiT-B --model.depth 12 --model.hidden_size 768 "
  "--model.patch_size 2 --model.num_heads 16 --model.mlp_ratio 4 --batch_size 512"
).split()


def test_normalize_reference_command_line():
  out = normalize_argv(["train_flow.py"] + REFERENCE + ["--workdir", "w"], {"config", "workdir"})
  assert out == [
    "train_flow.py",
    "--config.data.name=imagenet256",
    "--config.wandb.name=DiT-B",
    "--config.model.depth=12",
    "--config.model.hidden_size=768",
    "--config.model.patch_size=2",
    "--config.model.num_heads=16",
    "--config.model.mlp_ratio=4",
    "--config.batch_size=512",
    "--workdir=w",
  ]


def test_normalize_keeps_prefixed_booleans_and_negative_numbers():
  out = normalize_argv(
    [
      "x",
      "--config.wandb.enabled",
      "--mesh.data",
      "-1",
      "--config",
      "c.py:smoke",
      "--model.lr=3e-4",
      "--max_steps",
      "7",
    ],
    {"config"},
  )
  assert out == [
    "x",
    "--config.wandb.enabled",
    "--config.mesh.data=-1",
    "--config=c.py:smoke",
    "--config.optim.learning_rate=3e-4",
    "--config.total_steps=7",
  ]
  # absl's negated boolean of an entry point's own flag stays the entry point's; other names become config keys.
  assert normalize_argv(["x", "--nodry_run", "--nocompile", "--notes", "a"], {"dry_run"}) == [
    "x",
    "--nodry_run",
    "--config.nocompile",
    "--config.notes=a",
  ]


def test_reference_config_values_mean_what_they_say():
  """Parse the reference flags against the real config flag and read the values back."""
  from ml_collections import config_flags

  # train_flow.py's default config (importing train_flow here would define its absl flags in the test process).
  default_config = os.path.join(REPO, "configs", "shapes_t2i.py")
  assert f'"{os.path.basename(default_config)}"' in open(os.path.join(REPO, "train_flow.py")).read()
  fv = flags.FlagValues()
  argv = normalize_argv(["train_flow.py"] + REFERENCE, {"config"})
  argv.insert(1, f"--config={default_config}")
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  c = holder.value
  assert (c.data.name, c.wandb.name, c.batch_size) == ("imagenet256", "DiT-B", 512)
  assert (c.model.depth, c.model.hidden_size, c.model.patch_size, c.model.num_heads, c.model.mlp_ratio) == (
    12,
    768,
    2,
    16,
    4.0,
  )


def test_reference_command_fails_cleanly_without_imagenet(tmp_path):
  workdir = tmp_path / "w"
  r = run_cli(["train_flow.py", "--workdir", str(workdir), "--data.data_dir", str(tmp_path / "data")] + REFERENCE)
  assert r.returncode != 0
  assert "imagenet256" in r.stderr and "not built" in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not workdir.exists(), "nothing may be written before the input is validated"


def test_unknown_and_ill_typed_keys(tmp_path):
  r = run_cli(["train_flow.py", "--workdir", str(tmp_path / "w"), "--model.dpth", "3"])
  assert r.returncode != 0 and "dpth" in r.stderr and "depth" in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  r = run_cli(["train_flow.py", "--workdir", str(tmp_path / "w"), "--model.depth", "abc"])
  assert r.returncode != 0 and "config.model.depth" in r.stderr and "abc" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_misspelt_recipe_variant_fails_before_any_work(tmp_path):
  # --total_steps 1 bounds the run the misspelt variant used to start silently (the full recipe).
  r = run_cli(
    [
      "train_flow.py",
      "--config",
      "configs/digits_c2i.py:smok",
      "--workdir",
      str(tmp_path / "w"),
      "--data.data_dir",
      str(tmp_path / "data"),
      "--total_steps",
      "1",
    ]
  )
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [
    "error: ConfigError: configs/digits_c2i.py has no variant 'smok'; valid: smoke (or none). Fix: --config "
    "configs/digits_c2i.py:smoke or --config configs/digits_c2i.py."
  ], r.stderr[-2000:]
  assert not (tmp_path / "w").exists() and not (tmp_path / "data").exists()


def test_impossible_patch_size(tmp_path):
  r = run_cli(
    [
      "train_flow.py",
      "--config",
      "configs/digits_c2i.py",
      "--workdir",
      str(tmp_path / "w"),
      "--data.data_dir",
      str(tmp_path / "data"),
      "--data.image_size",
      "12",
      "--model.patch_size",
      "8",
    ]
  )
  assert r.returncode != 0
  assert "patch_size=8 does not divide the image size 12x12" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_help_prints_the_entry_points_flags():
  """`--help` and `--helpfull` reach absl (they are defined only when app.run starts, so argv normalisation
  must not turn them into config keys)."""
  assert normalize_argv(["x", "--helpfull", "--workdir", "w"], {"helpfull", "workdir"}) == [
    "x",
    "--helpfull",
    "--workdir=w",
  ]  # a help flag does not take the next argument as its value
  for args, flag in (
    (["train_flow.py", "--help"], "--[no]dry_run"),
    (["eval_fid.py", "--help"], "--num_samples"),
    (["-m", "crossflow_jax.sample", "--helpfull"], "--prompts_file"),
  ):
    r = run_cli(args)  # absl prints the usage and exits 1
    assert "error:" not in r.stderr and flag in r.stdout and "--workdir" in r.stdout, (args, r.stderr[-2000:])
