"""`python -m ditflow.cli ...`: the installed `ditflow` command, run through the package module, so that
`UserError` is the class the subcommands raise (not a copy in `__main__`)."""
import sys

from ditflow.cli.main import main

sys.exit(main())
