"""Shared test setup: run JAX on the CPU unless the caller chose a platform."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
