"""One cell trained: the cell, the training loop, shared body features, seeded streams, the cell's key."""
