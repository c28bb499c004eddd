"""Flow-matching maths: probability paths, time samplers, losses, guidance."""
