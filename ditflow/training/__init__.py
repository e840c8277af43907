"""`ditflow train ...`: the builtin model (`train.py`), its CLEAR student (`distill.py`), T-Stitch's small model
(`stitch_distill.py`), the classifiers (`classifiers.py`) and the parse model (`parser.py`, on the requests
`parser_data.py` writes); `cli.py` is the command table and `settings.py` the commands' dataclass flags. The agents
and the toolkit import none of it: what they load at inference lives in `ditflow/pipelines/` (the classifiers'
models in `pipelines/classifiers.py`) and `ditflow/agents/llm/` (the parse model's adapter, merged at first use)."""
