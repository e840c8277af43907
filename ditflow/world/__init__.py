"""The shapes world (docs/shapes-world.md): `scenes.py` (scenes, captions, the renderer, the analytic scorer) and
`phrases.py` (its phrase vocabulary and object-phrase parser). It sits at the ground: the agents, the toolkit, the
pipelines, the training and the benchmarks read it, and it imports nothing of ditflow but the caption tag grammar
(`ditflow/panel_tags.py`)."""
