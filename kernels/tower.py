"""Triton helpers shared by the kernels: the frozen tower (0-2 dense layers) forward and backward.

A tower maps user embeddings ``x [BLOCK_M, BLOCK_D]`` (one row per probe or per user) through
``x -> act(x W^T + c)`` layers; ``W`` is ``[out, in]`` row-major, as in ``retrain.heads.Layer``.
Activation codes are those of ``retrain.backends.base.ACTIVATION_CODES``: 0 identity, 1 relu,
2 tanh.  Dimensions: ``d`` in, ``h1`` out of layer 1 (only with two layers), ``h`` out.  Padded
rows/columns hold zeros, and every activation maps 0 to 0, so padding never leaks into real values.

Products (``_mm``) are chosen by the constexpr ``PRODUCTS`` (``check_products``): ``"ieee"`` (the
default) is ``tl.dot`` in plain float32 FMAs, not TF32, so the kernels agree with float32 PyTorch
to rounding; ``"tf32x3"``, three TF32 tensor-core products, is there for the benchmarks;
``"fma"`` is a broadcast multiply-and-sum, which the compiler lowers to per-thread FMA chains with
the broadcast operand exchanged through shared memory, and no ``tl.dot`` staging.  A reduction
shorter than 16, the least ``tl.dot`` takes on CUDA (d = 1 for the biases head), always takes the
broadcast form, which wastes nothing on padding.  Either way a row's result depends on that row
alone, never on how many other rows share the tile.
"""
import torch
import triton
import triton.language as tl

ACT_RELU = tl.constexpr(1)  # 0 is the identity
ACT_TANH = tl.constexpr(2)
MIN_DOT_K = tl.constexpr(16)  # the least reduction dimension tl.dot takes on CUDA (triton 3.6)
# Below this |x|, tanh uses its Taylor series to x^17 (truncation error < 1e-8 relative).
_TANH_SMALL = tl.constexpr(0.55)


@triton.jit
def _mm(a, b, PRODUCTS: tl.constexpr):
    """``a [M, K] @ b [K, N]`` in float32, as ``PRODUCTS`` says (module docstring)."""
    if a.shape[1] < MIN_DOT_K:
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif PRODUCTS == "fma":
        # Reduced over the last axis: triton's combiner rewrites the [M, K, N] form (the one
        # above) into tl.dot when K >= 16, which this variant exists to avoid.
        out = tl.sum(a[:, None, :] * tl.trans(b)[None, :, :], axis=2)
    else:
        out = tl.dot(a, b, input_precision=PRODUCTS)
    return out


@triton.jit
def _tanh(x):
    """tanh in float32: an odd series near 0 (no cancellation), ``(1 - e) / (1 + e)`` with
    ``e = exp(-2|x|)`` elsewhere.  (libdevice's tanh is not available under the interpreter.)"""
    x2 = x * x
    series = 6404582.0 / 10854718875.0
    series = series * x2 - 929569.0 / 638512875.0
    series = series * x2 + 21844.0 / 6081075.0
    series = series * x2 - 1382.0 / 155925.0
    series = series * x2 + 62.0 / 2835.0
    series = series * x2 - 17.0 / 315.0
    series = series * x2 + 2.0 / 15.0
    series = series * x2 - 1.0 / 3.0
    series = x + x * (x2 * series)
    e = tl.exp(-2.0 * tl.abs(x))
    far = tl.div_rn(1.0 - e, 1.0 + e)  # IEEE division, as everywhere in the kernels
    far = tl.where(x < 0, -far, far)
    return tl.where(tl.abs(x) < _TANH_SMALL, series, far)


@triton.jit
def _activate(z, ACT: tl.constexpr):
    if ACT == ACT_RELU:
        z = tl.maximum(z, 0.0)
    elif ACT == ACT_TANH:
        z = _tanh(z)
    return z


@triton.jit
def _activation_grad(y, grad, ACT: tl.constexpr):
    """Gradient w.r.t. the pre-activation from the activation's output ``y`` (relu'(0) = 0)."""
    if ACT == ACT_RELU:
        grad = tl.where(y > 0, grad, 0.0)
    elif ACT == ACT_TANH:
        grad = grad * (1.0 - y * y)
    return grad


@triton.jit
def _load_weight_t(w_ptr, n_in, n_out, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr):
    """``W^T`` as a ``[BLOCK_IN, BLOCK_OUT]`` tile of the row-major ``W [n_out, n_in]``."""
    offs_in = tl.arange(0, BLOCK_IN)
    offs_out = tl.arange(0, BLOCK_OUT)
    mask = (offs_in[:, None] < n_in) & (offs_out[None, :] < n_out)
    return tl.load(w_ptr + offs_out[None, :] * n_in + offs_in[:, None], mask=mask, other=0.0)


@triton.jit
def _load_weight(w_ptr, n_in, n_out, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr):
    """``W`` as a ``[BLOCK_OUT, BLOCK_IN]`` tile."""
    offs_in = tl.arange(0, BLOCK_IN)
    offs_out = tl.arange(0, BLOCK_OUT)
    mask = (offs_out[:, None] < n_out) & (offs_in[None, :] < n_in)
    return tl.load(w_ptr + offs_out[:, None] * n_in + offs_in[None, :], mask=mask, other=0.0)


@triton.jit
def _load_vector(ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    return tl.load(ptr + offs, mask=offs < n, other=0.0)


@triton.jit
def _tower_forward(x, w1_ptr, c1_ptr, w2_ptr, c2_ptr, d, h1, h,
                   N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
                   PRODUCTS: tl.constexpr):
    """``(hidden, features)``: layer 1's output (``x`` itself unless there are two layers) and the
    tower's output ``[BLOCK_M, BLOCK_H]`` (``x`` itself with no layers, where ``d == h``)."""
    hidden = x
    features = x
    if N_LAYERS == 1:
        z = _mm(x, _load_weight_t(w1_ptr, d, h, BLOCK_D, BLOCK_H), PRODUCTS)
        features = _activate(z + _load_vector(c1_ptr, h, BLOCK_H)[None, :], ACT1)
    elif N_LAYERS == 2:
        z = _mm(x, _load_weight_t(w1_ptr, d, h1, BLOCK_D, BLOCK_H1), PRODUCTS)
        hidden = _activate(z + _load_vector(c1_ptr, h1, BLOCK_H1)[None, :], ACT1)
        z = _mm(hidden, _load_weight_t(w2_ptr, h1, h, BLOCK_H1, BLOCK_H), PRODUCTS)
        features = _activate(z + _load_vector(c2_ptr, h, BLOCK_H)[None, :], ACT2)
    return hidden, features


@triton.jit
def _tower_backward(grad_features, hidden, features, w1_ptr, w2_ptr, d, h1, h,
                    N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
                    PRODUCTS: tl.constexpr):
    """Gradient w.r.t. the tower's input ``[BLOCK_M, BLOCK_D]`` given the gradient w.r.t. its output."""
    grad = grad_features
    if N_LAYERS == 1:
        grad = _mm(_activation_grad(features, grad, ACT1), _load_weight(w1_ptr, d, h, BLOCK_D, BLOCK_H),
                   PRODUCTS)
    elif N_LAYERS == 2:
        grad = _mm(_activation_grad(features, grad, ACT2), _load_weight(w2_ptr, h1, h, BLOCK_H1, BLOCK_H),
                   PRODUCTS)
        grad = _mm(_activation_grad(hidden, grad, ACT1), _load_weight(w1_ptr, d, h1, BLOCK_D, BLOCK_H1),
                   PRODUCTS)
    return grad


def tower_args(tower, d: int, h: int, placeholder: torch.Tensor):
    """Kernel arguments of a tower given as ``[(W [out, in], c [out], activation code), ...]``.

    Returns ``(w1, c1, w2, c2, h1, n_layers, act1, act2)``; absent layers get ``placeholder`` (any
    tensor on the kernels' device, never read) and ``h1 = h`` unless there are two layers.  Raises
    ValueError on shapes that do not chain ``d -> ... -> h``, or weights that are not contiguous
    float32 on ``placeholder``'s device.
    """
    if len(tower) > 2:
        raise ValueError(f"a tower has at most 2 layers, got {len(tower)}")
    if d < 1:  # pick_blocks divides by the feature blocks
        raise ValueError(f"the embeddings must have d >= 1 features, got {d}")
    width = d
    for l, (weight, bias, act) in enumerate(tower):
        if weight.dtype != torch.float32 or bias.dtype != torch.float32:
            raise ValueError(f"tower layer {l}: weight and bias must be float32")
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise ValueError(f"tower layer {l}: expected weight [out, {width}] and bias [out], got "
                             f"{tuple(weight.shape)} and {tuple(bias.shape)}")
        if not (weight.is_contiguous() and bias.is_contiguous()):
            raise ValueError(f"tower layer {l}: weight and bias must be contiguous")
        if weight.device != placeholder.device or bias.device != placeholder.device:
            raise ValueError(f"tower layer {l} is on {weight.device}, expected {placeholder.device}")
        if act not in (0, 1, 2):
            raise ValueError(f"tower layer {l}: activation code must be 0, 1 or 2, got {act!r}")
        width = weight.shape[0]
    if width != h:
        raise ValueError(f"the tower outputs {width} values but the item vectors have h={h}")
    layers = list(tower) + [(placeholder, placeholder, 0)] * (2 - len(tower))
    (w1, c1, act1), (w2, c2, act2) = layers
    h1 = tower[0][0].shape[0] if len(tower) == 2 else h
    return w1, c1, w2, c2, h1, len(tower), act1, act2


PRODUCT_KINDS = ("ieee", "tf32x3", "fma")  # how _mm forms products: the module docstring


def check_products(products: str) -> str:
    """``products`` for ``_mm``, one of ``PRODUCT_KINDS``."""
    if products not in PRODUCT_KINDS:
        raise ValueError(f"products must be one of {PRODUCT_KINDS}, got {products!r}")
    return products
