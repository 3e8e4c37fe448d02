"""onebyte.model: seeded perturbations, the zeroth-order step, fused replay, loading."""
