"""Conv and ConvTranspose against direct NumPy loops on tiny shapes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flaxen import nn
from flaxen.errors import LayerArgumentError, ShapeError


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def conv_ref(x, k, strides, pads, lhs_dil, rhs_dil, groups):
    """Direct loop: x (N, *S, C), k (*K, C/g, F), explicit pads [(lo, hi)]."""
    n = x.ndim - 2
    # input dilation: insert zeros
    if any(d > 1 for d in lhs_dil):
        shape = (x.shape[0],) + tuple((s - 1) * d + 1 for s, d in zip(x.shape[1:-1], lhs_dil))
        xd = np.zeros(shape + (x.shape[-1],))
        xd[(slice(None),) + tuple(slice(None, None, d) for d in lhs_dil)] = x
        x = xd
    x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
    ksz = [(k.shape[i] - 1) * rhs_dil[i] + 1 for i in range(n)]
    out_sp = [(x.shape[1 + i] - ksz[i]) // strides[i] + 1 for i in range(n)]
    cin_g, f = k.shape[-2], k.shape[-1]
    fg = f // groups
    out = np.zeros((x.shape[0], *out_sp, f))
    for pos in itertools.product(*[range(o) for o in out_sp]):
        for kpos in itertools.product(*[range(s) for s in k.shape[:n]]):
            ipos = tuple(pos[i] * strides[i] + kpos[i] * rhs_dil[i] for i in range(n))
            patch = x[(slice(None),) + ipos]  # (N, C)
            for g in range(groups):
                xin = patch[:, g * cin_g:(g + 1) * cin_g]
                out[(slice(None),) + pos + (slice(g * fg, (g + 1) * fg),)] += (
                    xin @ k[kpos][:, g * fg:(g + 1) * fg])
    return out


def same_pads(in_sp, k, s, d=None):
    d = d or (1,) * len(k)
    pads = []
    for i, size in enumerate(in_sp):
        ke = (k[i] - 1) * d[i] + 1
        out = -(-size // s[i])
        total = max((out - 1) * s[i] + ke - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


CASES = [
    # (input shape, kernel_size, strides, padding, input_dilation, kernel_dilation, groups, F)
    ((2, 5, 1), (3,), (1,), "SAME", None, None, 1, 2),
    ((1, 5, 4, 2), (3, 2), (2, 1), "VALID", None, None, 1, 3),
    ((1, 4, 4, 4), (2, 2), (1, 1), ((1, 0), (0, 1)), None, (2, 1), 2, 4),
    ((1, 3, 3, 2), (2, 2), (1, 1), "VALID", (2, 1), None, 1, 2),
    ((1, 3, 3, 2), (3, 3), (1, 1), "SAME", (2, 2), None, 1, 2),
    ((1, 4, 4, 3), (3, 3), (1, 1), "SAME", None, None, 3, 3),  # depthwise
    ((1, 3, 3, 3, 1), (2, 2, 2), (1, 1, 1), "VALID", None, None, 1, 2),  # 3-D
]


@pytest.mark.parametrize("shape,ks,st,pad,ldil,rdil,g,f", CASES)
def test_conv_matches_loop(rng, shape, ks, st, pad, ldil, rdil, g, f):
    x = jax.random.normal(rng, shape)
    y, params = nn.Conv.init(rng, x, features=f, kernel_size=ks, strides=st, padding=pad,
                             input_dilation=ldil, kernel_dilation=rdil, feature_group_count=g,
                             bias_init=nn.initializers.normal(1.0))
    n = len(ks)
    assert params["kernel"].shape == ks + (shape[-1] // g, f)
    ldil = ldil or (1,) * n
    rdil = rdil or (1,) * n
    if pad == "SAME":  # the pads of the (input-dilated) input
        dilated = tuple((d - 1) * ld + 1 for d, ld in zip(shape[1:-1], ldil))
        pads = same_pads(dilated, ks, st, rdil)
    elif pad == "VALID":
        pads = [(0, 0)] * n
    else:
        pads = pad
    ref = conv_ref(_np(x), _np(params["kernel"]), st, pads, ldil, rdil, g) + _np(params["bias"])
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_conv_mnist_layout_and_unbatched(rng):
    x = jnp.ones((2, 28, 28, 1))
    y, params = nn.Conv.init(rng, x, features=32, kernel_size=(3, 3))
    assert y.shape == (2, 28, 28, 32)
    assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 3, 1, 32), "bias": (32,)}
    y1 = nn.Conv.call(params, x[0], features=32, kernel_size=(3, 3))
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y[0]), rtol=1e-6)


def test_conv_bf16_and_grads(rng):
    x = jax.random.normal(rng, (1, 4, 4, 2))
    y, params = nn.Conv.init(rng, x, features=2, kernel_size=(2, 2), dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    f = lambda p, x: nn.Conv.call(p, x, features=2, kernel_size=(2, 2))
    check_grads(jax.jit(f), (params, x), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_conv_errors(rng):
    with pytest.raises(ShapeError, match=r"rank 4.*rank 2 \(shape \(4, 1\)\)"):
        nn.Conv.init(rng, jnp.ones((4, 1)), features=2, kernel_size=(3, 3))
    with pytest.raises(LayerArgumentError, match="feature_group_count"):
        nn.Conv.init(rng, jnp.ones((1, 4, 4, 3)), features=4, kernel_size=(1, 1),
                     feature_group_count=2)
    _, params = nn.Conv.init(rng, jnp.ones((1, 4, 4, 3)), features=2, kernel_size=(3, 3))
    with pytest.raises(ShapeError, match=r"Conv.*\(3, 3, 3, 2\).*\(1, 4, 4, 5\)"):
        nn.Conv.call(params, jnp.ones((1, 4, 4, 5)), features=2, kernel_size=(3, 3))


def conv_transpose_ref(x, k, strides):
    """Scatter form (VALID padding): each input pixel adds value * kernel at stride*pos."""
    n = x.ndim - 2
    sp = x.shape[1:-1]
    ks = k.shape[:n]
    full = [(sp[i] - 1) * strides[i] + ks[i] for i in range(n)]
    out = np.zeros((x.shape[0], *full, k.shape[-1]))
    for pos in itertools.product(*[range(s) for s in sp]):
        for kpos in itertools.product(*[range(s) for s in ks]):
            o = tuple(pos[i] * strides[i] + kpos[i] for i in range(n))
            # lax.conv_transpose without transpose_kernel correlates: flip the kernel.
            kflip = tuple(ks[i] - 1 - kpos[i] for i in range(n))
            out[(slice(None),) + o] += x[(slice(None),) + pos] @ k[kflip]
    # VALID: lax's output length is in * stride + max(k - stride, 0) (zeros past the end).
    targets = [sp[i] * strides[i] + max(ks[i] - strides[i], 0) for i in range(n)]
    sl = [slice(0, t) for t in targets]
    big = np.zeros((x.shape[0], *[max(t, f) for t, f in zip(targets, full)], k.shape[-1]))
    big[(slice(None),) + tuple(slice(0, f) for f in full)] = out
    return big[(slice(None),) + tuple(sl)]


@pytest.mark.parametrize("shape,ks,st,pad", [
    ((1, 3, 2), (3,), (2,), "VALID"),
    ((2, 2, 3, 1), (2, 2), (2, 1), "VALID"),
    ((1, 2, 2, 2), (1, 2), (3, 2), "VALID"),
])
def test_conv_transpose_matches_scatter_loop(rng, shape, ks, st, pad):
    x = jax.random.normal(rng, shape)
    y, params = nn.ConvTranspose.init(rng, x, features=2, kernel_size=ks, strides=st,
                                      padding=pad, bias_init=nn.initializers.normal(1.0))
    assert params["kernel"].shape == ks + (shape[-1], 2)
    ref = conv_transpose_ref(_np(x), _np(params["kernel"]), st) + _np(params["bias"])
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_same_shape(rng):
    x = jnp.ones((1, 3, 4, 2))
    y, _ = nn.ConvTranspose.init(rng, x, features=5, kernel_size=(3, 3), strides=(2, 2))
    assert y.shape == (1, 6, 8, 5)


@pytest.mark.parametrize("ks,st,insz", [((3, 3), (2, 2), (3, 3)), ((4, 4), (2, 2), (3, 3)),
                                        ((2,), (2,), (3,))])
def test_conv_transpose_same_is_adjoint_of_conv(rng, ks, st, insz):
    # <ConvTranspose(x, k), z> == <x, Conv(z, k')> with k' the flipped, in/out-swapped
    # kernel: ConvTranspose with 'SAME' is the adjoint of a strided 'SAME' Conv.
    n = len(ks)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, *insz, 2)), jnp.float32)
    y, params = nn.ConvTranspose.init(rng, x, features=3, kernel_size=ks, strides=st,
                                      bias=False)
    assert y.shape == (1, *[i * s for i, s in zip(insz, st)], 3)
    k2 = jnp.swapaxes(jnp.flip(params["kernel"], axis=tuple(range(n))), -1, -2)
    spec = ("NHWC", "HWIO", "NHWC") if n == 2 else ("NHC", "HIO", "NHC")
    conv = lambda z: jax.lax.conv_general_dilated(z, k2, st, "SAME", dimension_numbers=spec)
    _, vjp = jax.vjp(conv, jnp.zeros(y.shape))
    (adjoint,) = vjp(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(adjoint), rtol=1e-5, atol=1e-5)
