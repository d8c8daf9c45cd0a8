"""The real console entry point (`glmtts_batch.cli.entry`) with a fake engine behind `--engine`.

For subprocess tests of the CLI's signal and output handling without a model:
    python tests/cli_driver.py run TASKS --out OUT --engine espeak ...
`FAKE_ENGINE` picks the engine `load_engine` returns (whatever `--engine` says):
    fake        FakeEngine
    slow-load   prints "fake: loading" to stderr, then loads for 60 s (a signal ends it)
    slow-close  FakeEngine whose close() prints "fake: closing" and takes 60 s
    gated       FakeEngine that waits for the file named by FAKE_GATE before its first task
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from fake_engines import FakeEngine

import glmtts_batch.engines.select as select


class _SlowClose(FakeEngine):
    def close(self) -> None:
        print("fake: closing", file=sys.stderr, flush=True)
        time.sleep(60)
        super().close()


class _Gated(FakeEngine):
    def synthesize(self, request: Any) -> Any:
        gate = Path(os.environ["FAKE_GATE"])
        while not gate.exists():
            time.sleep(0.01)
        return super().synthesize(request)


def _load_engine(name: str, options: Any, *, log: Any = None) -> Any:
    mode = os.environ.get("FAKE_ENGINE", "fake")
    if mode == "slow-load":
        print("fake: loading", file=sys.stderr, flush=True)
        time.sleep(60)
    return {"slow-close": _SlowClose, "gated": _Gated}.get(mode, FakeEngine)()


select.load_engine = _load_engine

if __name__ == "__main__":
    from glmtts_batch.cli import entry

    sys.argv[0] = "glmtts-batch"
    entry()
