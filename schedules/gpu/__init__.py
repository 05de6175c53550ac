"""GPU rules (CUDA): the fused structured conv's shared-memory template (:mod:`.conv`)."""
