"""Evaluation of (compressed) models in memory: perplexity with a pinned window protocol, lm-eval benchmarks.

* :mod:`measure.evaluation.perplexity` — token windows, chunked cross-entropy and KL from hidden states.
* :mod:`measure.evaluation.lmeval` — our task registry and lm-eval runs on the local benchmark datasets.
* :mod:`measure.evaluation.results` — the result cache and the tidy result rows.
* :mod:`measure.evaluation.runs` — cached runs of a model variant (loaded, optionally compressed in memory).
"""
