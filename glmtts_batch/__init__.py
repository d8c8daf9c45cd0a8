"""glmtts-batch: stream a JSONL task file through a TTS engine into WAVs, a manifest and a zip."""

__version__ = "0.1.0"
