"""An experiment: a config built into a task, model, optimizer and mesh; its saved state and how it loads."""
