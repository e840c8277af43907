"""The shapes world (docs/shapes-world.md): `scenes.py` (scenes, captions, the renderer, the analytic scorer) and
`phrases.py` (its phrase vocabulary and object-phrase parser), read by the agents, the toolkit, the training and
the benchmarks."""
