"""What differs between tasks: how a batch becomes (x0, x1, conditioning), and how to sample."""
