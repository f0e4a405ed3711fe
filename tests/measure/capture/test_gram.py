"""The streaming Gram: panel kernel against x.T @ x, float64 accumulation, token counts and bad input."""

from __future__ import annotations

import pytest
import torch

from measure.capture.gram import GramAccumulator, batch_gram_syrk, batch_gram_upper
from theory.errors import PvqError


@pytest.mark.parametrize("features", [1, 5, 191, 192, 300, 577])
@pytest.mark.parametrize("panel", [1, 64, 192, 1000])
def test_panel_kernel_gives_the_upper_triangle_of_xtx(features: int, panel: int) -> None:
    x = torch.randn(37, features, dtype=torch.float64, generator=torch.Generator().manual_seed(features))
    upper = batch_gram_upper(x, panel)
    full = x.T @ x
    assert torch.allclose(torch.triu(upper), torch.triu(full), rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(torch.tril(upper, -1)[torch.tril(full, -1) == 0]) == 0


def test_syrk_kernel_agrees_with_the_panel_kernel() -> None:
    x = torch.randn(50, 40)
    syrk, panels = torch.triu(batch_gram_syrk(x)), torch.triu(batch_gram_upper(x, 16))
    assert torch.allclose(syrk, panels, rtol=1e-5, atol=1e-4)


def test_accumulator_sums_batches_in_float64_and_counts_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 7, 12, generator=generator) for _ in range(3)]
    gram = GramAccumulator(12, keep_rows=5)
    for batch in batches:
        gram.add(batch)
    rows = torch.cat([b.reshape(-1, 12) for b in batches]).double()
    assert gram.tokens == 42
    assert gram.gram.dtype == torch.float64
    assert torch.allclose(gram.gram, rows.T @ rows, rtol=1e-5, atol=1e-5)  # float32 products within a batch
    assert torch.equal(gram.gram, gram.gram.T)
    assert torch.equal(gram.sample, rows[:5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_offset_sums_survive_only_float64_accumulation(dtype: torch.dtype) -> None:
    """Inputs 3000 + k (k = 0..7): every product is an integer below 2^24, exact in float32, but 40 of them sum
    past 2^24, where float32 steps by 2 or more; the float64 sum is exact."""
    generator = torch.Generator().manual_seed(1)
    batches = [3000 + torch.randint(0, 8, (1, 9), generator=generator).to(dtype) for _ in range(40)]
    gram = GramAccumulator(9)
    for batch in batches:
        gram.add(batch)
    rows = torch.cat(batches).double()
    torch.testing.assert_close(gram.gram, rows.T @ rows, rtol=1e-12, atol=0)
    float32_sum = torch.stack([b.T @ b for b in batches]).float().cumsum(dim=0)[-1].double()
    assert not torch.allclose(float32_sum, rows.T @ rows, rtol=1e-12, atol=0)  # the bug this test would catch


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_non_finite_inputs_are_refused_by_name(bad: float) -> None:
    x = torch.randn(4, 8)
    x[2, 3] = bad
    with pytest.raises(PvqError, match=r"NaN or Inf in the input activations of layer\.q"):
        GramAccumulator(8, name="layer.q").add(x)


def test_wrong_width_is_refused() -> None:
    with pytest.raises(PvqError, match="expected 8"):
        GramAccumulator(8, name="x").add(torch.randn(3, 9))


def test_rows_only_keeps_the_same_rows_forms_no_gram_and_refuses_to_give_one() -> None:
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(2, 3, 6, generator=generator) for _ in range(3)]
    full = GramAccumulator(6, keep_rows=8)
    rows_only = GramAccumulator(6, keep_rows=8, name="sinks", accumulate=False)
    for batch in batches:
        full.add(batch)
        rows_only.add(batch)
    assert torch.equal(rows_only.sample, full.sample) and rows_only.tokens == full.tokens == 18
    assert rows_only._panels == []
    with pytest.raises(PvqError, match="sinks keeps input rows only"):
        _ = rows_only.gram


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rows_only_refuses_non_finite_kept_rows_by_name(bad: float) -> None:
    x = torch.randn(4, 8)
    x[1, 2] = bad
    with pytest.raises(PvqError, match=r"NaN or Inf in the input activations of layer\.k"):
        GramAccumulator(8, keep_rows=4, name="layer.k", accumulate=False).add(x)


def test_a_released_gram_is_an_error_to_read_or_extend_never_zeros() -> None:
    gram = GramAccumulator(5, keep_rows=2, name="layer.o")
    gram.add(torch.randn(4, 5))
    gram.release()
    assert gram.sample.shape == (2, 5)  # the kept rows stay
    with pytest.raises(PvqError, match=r"layer\.o was released"):
        _ = gram.gram
    with pytest.raises(PvqError, match="released"):
        gram.add(torch.randn(4, 5))
