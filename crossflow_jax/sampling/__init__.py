"""ODE solvers (whole loops under jit) and the guided sampler."""
