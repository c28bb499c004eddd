"""Device meshes, logical axis names and rules, shardings of state and batch."""
