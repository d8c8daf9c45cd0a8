"""Native GLM-TTS inference: frontends, speech-token LLM, DiT flow and vocoders."""
