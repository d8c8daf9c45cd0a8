"""`python -m glmtts_batch` runs the CLI."""

from .cli import entry

entry()
