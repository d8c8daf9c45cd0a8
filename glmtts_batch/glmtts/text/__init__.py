"""GLM-TTS text front end.

Modules (imported directly; this package imports nothing, so loading the tokenizer does
not pull in the normalisation grammars):

* `tokenizer`: `TextTokenizer` (tiktoken ranks + added tokens);
* `normalize`: `TextNormalizer` (upstream `text_normalize`), `KNOWN_DIFFERENCES`;
* `tn_graphs`: WeTextProcessing 1.0.3's compiled TN graphs run with kaldifst;
* `split`: `split_by_len` (upstream's 30..60 piece splitting);
* `g2p`: `PhonemeDict`, `to_phoneme_text` (phoneme mode);
* `frontend`: `TextFrontend`, what the GLM-TTS engine calls.
"""
