"""The fused amplification step against the formula, computed independently in float64."""

import pytest
import torch

from engine.amplify import amplify, amplify_torch

ALPHAS = [-1.0, 0.0, 0.3, 20.0]


def _expected(after, before, alpha):
    shared = min(after.shape[1], before.shape[1])
    out = after.double().clone()  # ids only the after model has: no difference, its own logits
    a, b = after.double()[:, :shared], before.double()[:, :shared]
    out[:, :shared] = (1 + alpha.double()[:, None]) * a - alpha.double()[:, None] * b
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [(300, 300), (352, 300), (300, 352)])
def test_matches_formula(dtype, vocab):
    torch.manual_seed(0)
    rows = 2 * len(ALPHAS)
    after = (torch.randn(rows, vocab[0]) * 5).to(dtype)
    before = (torch.randn(rows, vocab[1]) * 5).to(dtype)
    alpha = torch.tensor(ALPHAS * 2)
    expected = _expected(after, before, alpha)
    got = amplify(after.clone(), before, alpha)
    assert got.dtype == torch.float32 and got.shape == after.shape
    # float32 arithmetic on inputs up to ~25 with alpha up to 20: a few ulps of ~500.
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ids_only_the_after_model_has_keep_its_logits(dtype):
    """An added token (a chat EOS beyond the base vocab) keeps A at every alpha: alpha 0 is the
    after model exactly, and alpha -1 is the before model on the shared vocabulary."""
    after, before = torch.randn(4, 301).to(dtype), torch.randn(4, 300).to(dtype)
    got = amplify(after.clone(), before, torch.tensor([-1.0, 0.0, 1.0, 5.0]))
    assert torch.equal(got[:, 300], after[:, 300].float())
    assert torch.equal(got[1], after[1].float())
    assert torch.equal(got[0, :300], before[0].float())


def test_alpha_zero_and_minus_one_are_exact():
    after, before = torch.randn(2, 64), torch.randn(2, 64)
    got = amplify(after.clone(), before, torch.tensor([0.0, -1.0]))
    assert torch.equal(got[0], after[0])
    assert torch.equal(got[1], before[1])


def test_in_place_for_float32():
    after, before = torch.randn(3, 50), torch.randn(3, 50)
    out = amplify_torch(after, before, torch.ones(3))
    assert out.data_ptr() == after.data_ptr()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one value per row"):
        amplify(torch.randn(2, 8), torch.randn(2, 8), torch.ones(3))
    with pytest.raises(ValueError, match="equal rows"):
        amplify(torch.randn(2, 8), torch.randn(3, 8), torch.ones(2))


def test_empty_batch():
    assert amplify(torch.randn(0, 8), torch.randn(0, 8), torch.ones(0)).shape == (0, 8)
