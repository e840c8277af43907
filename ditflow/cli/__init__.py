"""The `ditflow` command: thin shells over the package. `main.py` holds the command table and the exit statuses;
`run.py`, `chat.py`, `generate.py` and `tools.py` (edit, restore) are subcommands. `ditflow batch` is
`ditflow/batch.py`, a library module beside the API that carries its own shell."""
