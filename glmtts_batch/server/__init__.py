"""`glmtts-batch serve`: an HTTP job server over the batch runner (install the `server` extra).

One process holds one engine. Jobs from a persistent SQLite queue run one after another
through `run_batch` on a single worker thread; speech requests take the same engine lock
between job tasks. See docs/architecture.md for the module map.
"""

from glmtts_batch.server.config import ServeConfig, ServerLimits

__all__ = ["ServeConfig", "ServerLimits"]
