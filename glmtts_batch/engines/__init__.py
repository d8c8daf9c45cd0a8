"""Speech engines behind one interface (`base.Engine`), and `load_engine` to pick one.

Engine modules are imported only when selected, so `glmtts` (torch) costs nothing
to a run that uses the embedded espeak-ng engine, and the other way round.
"""

from glmtts_batch.engines.base import (
    Engine,
    EngineInfo,
    EngineOptions,
    Synthesis,
    SynthesisRequest,
)
from glmtts_batch.engines.select import ENGINE_NAMES, MODEL_DIR_ENV, load_engine

__all__ = [
    "ENGINE_NAMES",
    "MODEL_DIR_ENV",
    "Engine",
    "EngineInfo",
    "EngineOptions",
    "Synthesis",
    "SynthesisRequest",
    "load_engine",
]
