"""`python -m glmtts_batch` runs the CLI."""

from .cli import main

main(prog_name="glmtts-batch")
