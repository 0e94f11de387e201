"""Images in, splits out: the sources, labels tables, groups, the seeded split, the tensors a cell trains on."""
