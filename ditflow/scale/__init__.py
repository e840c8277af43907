"""Scale-out beyond one process: batch fan-out over a Ray cluster (`ray_batch`). See docs/scaling.md."""
