"""Perplexity, per-token cross-entropy and KL to a reference model over pinned token windows.

Protocol (frozen in :class:`PerplexityProtocol` and recorded with every result): the evaluation text is
tokenized once without special tokens and cut into windows of ``L`` positions, identical for every model
variant. With a BOS policy (Gemma) the first position of every window is the BOS token and the window
holds ``L − 1`` text tokens; otherwise it holds ``L`` text tokens. Two variants:

* non-overlapping windows (stride = text tokens per window), the GPTQ / SparseGPT convention
  (Frantar et al., arXiv 2210.17323, Sec. 5; arXiv 2301.00774, Sec. 4): every window scores all its
  tokens that have a predecessor in the window;
* sliding windows with a stride ``s``: window ``k`` starts at ``k·s`` and scores only the tokens the
  previous window did not reach, so each token is scored once with up to ``L − 1`` tokens of context
  (Hugging Face "Perplexity of fixed-length models").

Only full windows are used; the tail of the text after the last full window is not scored.
The loss is computed from the final hidden states, sending rows through the output head in chunks, so the
(windows × L × |V|) logits tensor never exists (Gemma's |V| = 262,144).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from measure.evaluation.intervals import Interval, bootstrap_mean, paired_difference, token_blocks
from theory.errors import PvqError

DEFAULT_WINDOW = {"cpu": 512, "cuda": 2048}
LOGITS_BUDGET_BYTES = 1 << 26
HEAD_CHECK_TOKENS = 8


@dataclass(frozen=True)
class PerplexityProtocol:
    """Everything that fixes which tokens are scored with which context; equal protocols ⇒ equal windows.

    ``tokenizer`` is a readable name only (the last part of its path); ``windows_sha256`` pins the tokens.
    """

    window: int
    stride: int
    bos: bool
    max_windows: int | None
    tokenizer: str
    text_sha256: str
    text_tokens: int
    windows_sha256: str

    @property
    def variant(self) -> str:
        """``non-overlapping`` when the stride equals the text tokens per window, else ``sliding``."""
        return "non-overlapping" if self.stride == self.window - int(self.bos) else "sliding"

    def as_dict(self) -> dict[str, Any]:
        """The protocol as a plain dict (for provenance and cache keys), including the variant name."""
        return {**asdict(self), "variant": self.variant}


@dataclass(frozen=True)
class TokenWindows:
    """Windows ``input_ids`` (W, L) and the mask ``scored`` (W, L) of positions whose token is predicted."""

    protocol: PerplexityProtocol
    input_ids: torch.Tensor
    scored: torch.Tensor

    @property
    def n_scored(self) -> int:
        """Number t of scored tokens."""
        return int(self.scored.sum())


@dataclass(frozen=True)
class TokenScores:
    """Per scored token, in scoring order (window by window): −log p(x_t), KL(p_ref ‖ p) and the reference's
    −log p_ref(x_t) in nats, whether the two models' top tokens agree, and the window it sits in."""

    nll: np.ndarray
    window: np.ndarray
    kl: np.ndarray | None = None
    reference_nll: np.ndarray | None = None
    same_top: np.ndarray | None = None

    @property
    def blocks(self) -> np.ndarray:
        """Block-bootstrap block of every token (:func:`measure.evaluation.intervals.token_blocks`)."""
        return token_blocks(self.window)


KL_QUANTILES = {"kl_median": 0.5, "kl_p99": 0.99, "kl_p999": 0.999}
"""Quantiles of the per-token KL reported beside its mean (what llama.cpp's ``perplexity --kl-divergence``
prints)."""


@dataclass(frozen=True)
class PerplexityResult:
    """Sums over the scored tokens; the reported quantities are properties derived from them. With ``tokens``
    (per-token scores) every mean also gets a 95 % block-bootstrap interval (:meth:`intervals`)."""

    n_windows: int
    n_tokens: int
    vocab_size: int
    nll_sum_nats: float
    kl_sum_nats: float | None
    tokens: TokenScores | None = None

    @property
    def cross_entropy_nats(self) -> float:
        """H(X) = −(1/t) Σ_i log p(x_i | x_<i), in nats per token."""
        return self.nll_sum_nats / self.n_tokens

    @property
    def perplexity(self) -> float:
        """PPL(X) = exp H(X)."""
        return math.exp(self.cross_entropy_nats)

    @property
    def log_vocab_nats(self) -> float:
        """log |V|: the cross-entropy of the uniform predictor, an upper bound for any sensible model."""
        return math.log(self.vocab_size)

    @property
    def normalized_cross_entropy(self) -> float:
        """H(X) / log |V| ∈ [0, 1] for models no worse than uniform (unit-free)."""
        return self.cross_entropy_nats / self.log_vocab_nats

    @property
    def kl_to_reference_nats(self) -> float | None:
        """(1/t) Σ_i KL(p_ref(·|x_<i) ‖ p(·|x_<i)) in nats per token, or None without a reference."""
        return None if self.kl_sum_nats is None else self.kl_sum_nats / self.n_tokens

    def intervals(self) -> dict[str, Interval]:
        """95 % block-bootstrap intervals (:mod:`measure.evaluation.intervals`) of the per-token means: the
        cross-entropy (nats per token), and with a reference the KL (nats per token), the same-top-token rate
        (a fraction) and ln(PPL / PPL_ref) = mean(−log p + log p_ref) (nats per token). Empty without tokens."""
        if self.tokens is None:
            return {}
        tokens, blocks = self.tokens, self.tokens.blocks
        found = {"cross_entropy_nats": bootstrap_mean(tokens.nll, blocks)}
        if tokens.kl is not None:
            found["kl_to_reference_nats"] = bootstrap_mean(tokens.kl, blocks)
        if tokens.same_top is not None:
            found["same_top_rate"] = bootstrap_mean(tokens.same_top.astype(np.float64), blocks)
        if tokens.reference_nll is not None:
            found["ln_ppl_ratio"] = bootstrap_mean(tokens.nll - tokens.reference_nll, blocks)
        return found

    def interval_columns(self) -> dict[str, float]:
        """Flat columns of :meth:`intervals`: ``<metric>`` (where not already a property), ``<metric>_ci_low``,
        ``<metric>_ci_high``; ``perplexity_ci_low/high`` = exp of the cross-entropy's; the KL quantiles
        (:data:`KL_QUANTILES`); and ``tokens``, the number of scored tokens."""
        columns: dict[str, float] = {}
        for name, interval in self.intervals().items():
            if name in ("same_top_rate", "ln_ppl_ratio"):
                columns[name] = interval.mean
            columns |= {f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}
        if "cross_entropy_nats_ci_low" in columns:
            columns |= {"perplexity_ci_low": math.exp(columns["cross_entropy_nats_ci_low"]),
                        "perplexity_ci_high": math.exp(columns["cross_entropy_nats_ci_high"])}  # fmt: skip
        if self.tokens is not None and self.tokens.kl is not None:
            columns |= {name: float(np.quantile(self.tokens.kl, q)) for name, q in KL_QUANTILES.items()}
        return {**columns, "tokens": self.n_tokens} if columns else {}

    def as_dict(self) -> dict[str, Any]:
        """Every reported quantity by name (intervals included when per-token scores are kept)."""
        return {
            "n_windows": self.n_windows,
            "n_tokens": self.n_tokens,
            "vocab_size": self.vocab_size,
            "perplexity": self.perplexity,
            "cross_entropy_nats": self.cross_entropy_nats,
            "log_vocab_nats": self.log_vocab_nats,
            "normalized_cross_entropy": self.normalized_cross_entropy,
            "kl_to_reference_nats": self.kl_to_reference_nats,
            **{name: value for name, value in self.interval_columns().items() if name != "tokens"},
        }

    def metric_rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{metric, value, n}`` (n = scored tokens) of every reported quantity that exists."""
        skip = {"n_windows", "n_tokens", "vocab_size"}
        return [
            {"metric": name, "value": value, "n": self.n_tokens}
            for name, value in self.as_dict().items()
            if name not in skip and value is not None
        ]


INTERVAL_COLUMNS = ("kl_to_reference_nats_ci_low", "kl_to_reference_nats_ci_high", "perplexity_ci_low",
                    "perplexity_ci_high", "same_top_rate", "kl_p99", "tokens")  # fmt: skip
"""What every model experiment stores beside PPL and KL for each evaluated model: their 95 % block-bootstrap
intervals, the same-top-token rate, the 99th percentile of the per-token KL and the number of scored tokens."""


def interval_columns(result: PerplexityResult) -> dict[str, float]:
    """:data:`INTERVAL_COLUMNS` of one evaluated model (NaN where it has no such value)."""
    found = result.interval_columns()
    return {column: found.get(column, math.nan) for column in INTERVAL_COLUMNS}


def default_window(device: str) -> int:
    """Window length L by device type: 512 on CPU, 2048 on GPU (the GPTQ / SparseGPT value)."""
    return DEFAULT_WINDOW["cpu" if torch.device(device).type == "cpu" else "cuda"]


def bos_token_id_for(tokenizer: Any, bos_per_window: bool) -> int | None:
    """The BOS id to put first in every window when the model expects it (Gemma), else None."""
    if not bos_per_window:
        return None
    if tokenizer.bos_token_id is None:
        raise PvqError("the model expects a BOS token at the start of each window but its tokenizer has none")
    return int(tokenizer.bos_token_id)


def tokenize_text(text: str, tokenizer: Any) -> torch.Tensor:
    """Token ids (1-D, int64) of ``text`` without special tokens; the whole text in one call."""
    if not text.strip():
        raise PvqError("the evaluation text is empty; give a non-empty text to compute perplexity on")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def cut_windows(
    token_ids: torch.Tensor, window: int, stride: int | None, bos_token_id: int | None, max_windows: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (W, L) of ``token_ids`` and the mask of scored positions (see the module docstring).

    Window k holds text tokens [k·s, k·s + C) with C = L − [BOS] and s = ``stride`` (default C). Text token
    a in window k is scored iff a ≥ k·s − s + C (not reached by window k−1) and it has a predecessor in the
    window (its position is ≥ 1, always true after a BOS).
    """
    content = window - int(bos_token_id is not None)
    if content < 2:
        raise PvqError(f"window length {window} is too short; use at least {2 + int(bos_token_id is not None)}")
    stride = content if stride is None else stride
    if not 1 <= stride <= content:
        raise PvqError(f"stride {stride} must lie in [1, {content}] (text tokens per window) so none is skipped")
    if max_windows is not None and max_windows < 1:
        raise PvqError(f"max windows must be at least 1, got {max_windows}")
    n_text = int(token_ids.numel())
    if n_text < content:
        raise PvqError(
            f"the evaluation text has {n_text} tokens, fewer than one window of {content} text tokens; "
            f"use a shorter window or a longer text"
        )
    starts = torch.arange(0, n_text - content + 1, stride)[:max_windows]
    positions = starts[:, None] + torch.arange(content)[None, :]
    input_ids = token_ids[positions]
    first_new = torch.where(starts == 0, 0, starts - stride + content)
    scored = positions >= first_new[:, None]
    if bos_token_id is None:
        scored[:, 0] = False
    else:
        input_ids = torch.cat([torch.full((len(starts), 1), bos_token_id, dtype=torch.long), input_ids], dim=1)
        scored = torch.cat([torch.zeros((len(starts), 1), dtype=torch.bool), scored], dim=1)
    return input_ids, scored


def make_windows(
    text: str,
    tokenizer: Any,
    window: int,
    stride: int | None = None,
    bos_token_id: int | None = None,
    max_windows: int | None = None,
) -> TokenWindows:
    """Tokenize ``text`` once and cut the pinned windows; the protocol records text, tokenizer and windows."""
    token_ids = tokenize_text(text, tokenizer)
    input_ids, scored = cut_windows(token_ids, window, stride, bos_token_id, max_windows)
    protocol = PerplexityProtocol(
        window=window,
        stride=window - int(bos_token_id is not None) if stride is None else stride,
        bos=bos_token_id is not None,
        max_windows=max_windows,
        tokenizer=Path(str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)).name,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
        text_tokens=int(token_ids.numel()),
        windows_sha256=hashlib.sha256(input_ids.numpy().tobytes() + scored.numpy().tobytes()).hexdigest(),
    )
    return TokenWindows(protocol=protocol, input_ids=input_ids, scored=scored)


def model_context_length(model: torch.nn.Module) -> int | None:
    """Longest input the model was built for (``max_position_embeddings`` of its text config), if declared."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def check_window_fits(model: torch.nn.Module, window: int) -> None:
    """Raise when the window is longer than the model's context."""
    context = model_context_length(model)
    if context is not None and window > context:
        raise PvqError(
            f"window of {window} tokens exceeds the model's context of {context}; use a window ≤ {context}"
        )


def output_head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map final hidden states to float32 logits as the model's own forward does: lm_head, then Gemma's
    soft-capping c·tanh(z / c) when ``final_logit_softcapping`` is set (Gemma 2 report, arXiv 2408.00118)."""
    head = model.get_output_embeddings()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        z = head(hidden).float()
        return torch.tanh(z / cap) * cap if cap else z

    return logits


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Hidden states after the final norm, (B, L, d), from the model's base (no logits computed)."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def check_output_head(
    model: torch.nn.Module, head: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor
) -> None:
    """Raise unless ``head(final hidden states)`` reproduces the model's own logits on a short probe."""
    own = model(input_ids=probe, use_cache=False).logits.float()
    ours = head(final_hidden_states(model, probe))
    tolerance = 1e-3 * float(own.abs().max()) + 1e-5
    if own.shape != ours.shape or float((own - ours).abs().max()) > tolerance:
        raise PvqError(
            f"{type(model).__name__} computes its logits differently from lm_head(final hidden states); "
            f"perplexity from hidden states is not supported for this architecture"
        )


def token_statistics(
    logits: torch.Tensor, targets: torch.Tensor, reference_logits: torch.Tensor | None
) -> dict[str, np.ndarray]:
    """Per row of one chunk: ``nll`` = −log p(target), and with reference logits ``kl`` = KL(p_ref ‖ p) =
    Σ_v p_ref(v) (log p_ref(v) − log p(v)) (Kullback & Leibler 1951), ``reference_nll`` = −log p_ref(target) and
    ``same_top`` (argmax p = argmax p_ref); nats, float64."""
    log_p = torch.log_softmax(logits, dim=-1)
    rows = {"nll": -log_p.gather(1, targets[:, None])[:, 0].double().cpu().numpy()}
    if reference_logits is None:
        return rows
    log_ref = torch.log_softmax(reference_logits, dim=-1)
    rows["kl"] = (log_ref.exp() * (log_ref - log_p)).sum(dim=-1).double().cpu().numpy()
    rows["reference_nll"] = -log_ref.gather(1, targets[:, None])[:, 0].double().cpu().numpy()
    rows["same_top"] = (logits.argmax(dim=-1) == reference_logits.argmax(dim=-1)).cpu().numpy()
    return rows


@dataclass(frozen=True)
class ReferenceChunk:
    """What the per-token statistics need of the reference on one chunk of rows, computed once: its next-token
    log-probabilities and probabilities (float32), its top token and −log p_ref(target) per row."""

    log_probs: torch.Tensor
    probs: torch.Tensor
    top: torch.Tensor
    nll: np.ndarray

    @classmethod
    def of(cls, reference_logits: torch.Tensor, targets: torch.Tensor) -> ReferenceChunk:
        log_ref = torch.log_softmax(reference_logits, dim=-1)
        return cls(log_ref, log_ref.exp(), reference_logits.argmax(dim=-1),
                   -log_ref.gather(1, targets[:, None])[:, 0].double().cpu().numpy())  # fmt: skip


def cached_token_statistics(logits: torch.Tensor, targets: torch.Tensor, reference: ReferenceChunk
                            ) -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`token_statistics` against a reference computed once (:class:`ReferenceChunk`): the same formula
    KL(p_ref ‖ p) = Σ_v p_ref(v) (log p_ref(v) − log p(v)) (so a small KL keeps its precision) without recomputing
    the reference's softmax at every evaluation."""
    log_p = torch.log_softmax(logits, dim=-1)
    return {"nll": -log_p.gather(1, targets[:, None])[:, 0].double().cpu().numpy(),
            "kl": (reference.probs * (reference.log_probs - log_p)).sum(dim=-1).double().cpu().numpy(),
            "reference_nll": reference.nll,
            "same_top": (logits.argmax(dim=-1) == reference.top).cpu().numpy()}  # fmt: skip


def chunk_statistics(
    logits: torch.Tensor, targets: torch.Tensor, reference_logits: torch.Tensor | None
) -> tuple[float, float | None]:
    """Σ −log p(target) and Σ KL(p_ref ‖ p) over the rows of one chunk, in nats (float64 sums of
    :func:`token_statistics`)."""
    rows = token_statistics(logits, targets, reference_logits)
    return float(rows["nll"].sum()), None if reference_logits is None else float(rows["kl"].sum())


class TokenCollector:
    """Per-token rows of :func:`token_statistics`, chunk after chunk, into one :class:`PerplexityResult`."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, rows: dict[str, np.ndarray], window: np.ndarray) -> None:
        for name, values in {**rows, "window": window}.items():
            self.parts.setdefault(name, []).append(values)

    def result(self, n_windows: int, vocab_size: int) -> PerplexityResult:
        joined = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        tokens = TokenScores(**joined)
        kl = None if tokens.kl is None else float(tokens.kl.sum())
        return PerplexityResult(n_windows=n_windows, n_tokens=int(tokens.nll.size), vocab_size=vocab_size,
                                nll_sum_nats=float(tokens.nll.sum()), kl_sum_nats=kl, tokens=tokens)  # fmt: skip


def scored_windows(predicts: torch.Tensor, first_window: int) -> np.ndarray:
    """Window index of every scored row of a batch, in the row-major order of ``predicts`` (B, L − 1)."""
    return (torch.nonzero(predicts.cpu())[:, 0] + first_window).numpy()


def predicting_rows(model: torch.nn.Module, input_ids: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """Final hidden states (R, d) at the positions whose next token is scored (``predicts``: (B, L − 1))."""
    return final_hidden_states(model, input_ids.to(model.device))[:, :-1][predicts.to(model.device)]


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    windows: TokenWindows,
    reference: torch.nn.Module | None = None,
    batch_size: int = 1,
    logits_budget_bytes: int = LOGITS_BUDGET_BYTES,
) -> PerplexityResult:
    """PPL, H(X), log|V|, H(X)/log|V| and (with a reference model) the mean KL, window batch by batch.

    Per batch of windows, the hidden rows that predict scored tokens go through the output head in chunks
    whose float32 logits fit in ``logits_budget_bytes``; the reference model sees the same windows.
    """
    models = [model] if reference is None else [model, reference]
    vocab_sizes = {each.get_output_embeddings().weight.shape[0] for each in models}
    if len(vocab_sizes) != 1:
        raise PvqError(f"the model and its reference have different vocabularies {sorted(vocab_sizes)}")
    vocab_size = vocab_sizes.pop()
    heads = [output_head(each) for each in models]
    for each, head in zip(models, heads, strict=True):
        each.eval()
        check_window_fits(each, windows.input_ids.shape[1])
        check_output_head(each, head, windows.input_ids[:1, :HEAD_CHECK_TOKENS].to(each.device))
    rows_per_chunk = max(1, logits_budget_bytes // (4 * vocab_size * len(models)))
    collector = TokenCollector()
    for start in range(0, windows.input_ids.shape[0], batch_size):
        input_ids = windows.input_ids[start:start + batch_size]
        predicts = windows.scored[start:start + batch_size, 1:]
        targets = input_ids[:, 1:][predicts].to(model.device)
        window_of = scored_windows(predicts, start)
        rows = [predicting_rows(each, input_ids, predicts) for each in models]
        for first in range(0, targets.numel(), rows_per_chunk):
            chunk = slice(first, first + rows_per_chunk)
            logits = [head(row[chunk]).to(model.device) for head, row in zip(heads, rows, strict=True)]
            reference_logits = logits[1] if reference is not None else None
            collector.add(token_statistics(logits[0], targets[chunk], reference_logits), window_of[chunk])
    return collector.result(int(windows.input_ids.shape[0]), int(vocab_size))


def paired_kl_difference(a: PerplexityResult, b: PerplexityResult) -> Interval:
    """Mean over tokens of KL_a − KL_b (nats per token) with its 95 % paired block-bootstrap interval: both
    variants scored against the same reference on the same tokens (PvqError otherwise)."""
    if a.tokens is None or b.tokens is None or a.tokens.kl is None or b.tokens.kl is None:
        raise PvqError("a paired KL difference needs per-token KL of both variants (evaluate with a reference)")
    if not np.array_equal(a.tokens.window, b.tokens.window):
        raise PvqError("the two variants were scored on different tokens; a paired difference needs the same ones")
    return paired_difference(a.tokens.kl, b.tokens.kl, a.tokens.blocks)
