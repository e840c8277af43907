"""`ditflow train ...`: the builtin model (`train.py`), its CLEAR student (`distill.py`), T-Stitch's small model
(`stitch_distill.py`) and the classifiers (`classifiers.py`); `cli.py` is the command table and `settings.py` the
commands' dataclass flags. The agents and the toolkit import none of it: what they load at inference lives in
`ditflow/pipelines/` (the classifiers' models in `pipelines/classifiers.py`)."""
