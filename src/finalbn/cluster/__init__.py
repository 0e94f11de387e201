"""Fan-out: local worker processes and the Ray executor."""
