"""Low-bit states: code maps, blockwise quantization, shard slicing, and the Numba kernels
against "dequantize, run descent.functional, quantize"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from descent import functional as F
from descent.lowbit import QuantState, aligned_ranges, code_map, dynamic_map, linear_map
from descent.lowbit.maps import dynamic_layout, lookup, midpoints, normal_map

kernels = pytest.importorskip("descent.kernels.lowbit")
encode = pytest.importorskip("descent.kernels.lowbit_encode")
decode = pytest.importorskip("descent.kernels.lowbit_decode")


def test_maps_shape_and_order():
    for signed, bits in ((True, 8), (False, 8), (True, 4), (False, 4)):
        q = code_map(signed, bits)
        assert q.numel() == 2**bits and q.dtype == torch.float32
        assert torch.all(q[1:] > q[:-1]), "entries must be sorted and distinct"
        assert float(q.max()) == 1.0
        assert (float(q.min()) < 0) == signed
    assert 0.0 in dynamic_map(False, 8).tolist() and 0.0 not in linear_map(4).tolist()
    # 4-bit second moment: (k/16)**2, k = 1..16 (no zero; linear in sqrt(v))
    assert code_map(False, 4).tolist() == [(k / 16) ** 2 for k in range(1, 17)]
    assert code_map(True, 8) is code_map(True, 8), "one shared map per device"
    # bitsandbytes' create_dynamic_map(signed=True): smallest positive entry 0.55e-6, largest below 1 0.99296875
    q = dynamic_map(True, 8)
    assert q[128].item() == pytest.approx(5.5e-7) and q[-2].item() == pytest.approx(0.99296875)


def test_invalid_bits():
    with pytest.raises(ValueError, match="bits"):
        dynamic_map(True, 3)
    with pytest.raises(ValueError, match="Invalid bits: 2"):
        QuantState.quantize(torch.ones(3), True, 2)


def _hard_values(qmap: torch.Tensor, n: int) -> torch.Tensor:
    """Midpoints exactly, their float neighbours, entries, +-0, tiny and random values; |x| <= 1."""
    mids = midpoints(qmap)
    up, down = torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))
    x = torch.cat([mids, up, down, qmap, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-9, -1e-9])])
    x = torch.cat([x, torch.rand(n) * 2 - 1]).clamp(-1, 1)
    return x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("signed,bits", [(True, 8), (False, 8), (True, 4), (False, 4)])
def test_kernel_quantizer_equals_bucketize(signed, bits):
    """The O(1) table quantizer gives torch.bucketize's code for every value, ties included."""
    qmap = code_map(signed, bits)
    x = _hard_values(qmap, 3000)
    if not signed:
        x = x.abs()
    block = 256 if bits == 8 else 128
    x = x.view(-1)[: x.numel() // block * block].view(-1, block)
    x[:, 0] = 1.0  # absmax 1 in every block, so the normalized values are x itself
    x = x.reshape(-1)
    state = QuantState.zeros(x.numel(), signed, bits)
    # SGD's first step with momentum stores the gradient itself in the buffer (lr 0: p unchanged)
    kernels.sgd_lowbit([torch.zeros_like(x)], [x], [state.codes], [state.absmax], [state.qmap], lr=0.0,
                       momentum=0.9, first=True)
    ref = QuantState.quantize(x, signed, bits)
    assert torch.equal(state.absmax, ref.absmax)
    assert torch.equal(state.codes, ref.codes)
    table = lookup(qmap)
    assert torch.equal(torch.bucketize(x, torch.from_numpy(table.mids)), torch.bucketize(x, midpoints(qmap)))


def test_positive_second_moments_never_quantize_to_zero():
    """In the 8-bit second-moment map (0, 3.25e-7, ...) 0 stays 0 and every positive value, however small,
    gets at least the smallest positive entry, on the reference, the table and the arithmetic paths."""
    qmap = code_map(False, 8)
    x = torch.tensor([0.0, 1e-45, 1e-30, 1e-9, 1.6e-7, 1.7e-7, 4e-7, 1.0])
    codes = torch.bucketize(x, midpoints(qmap))
    assert codes.tolist()[:6] == [0, 1, 1, 1, 1, 1] and codes[6] == 1 and codes[7] == 255
    block = torch.cat([x, torch.zeros(248)])
    for values in (block, block.double()):
        state = QuantState.zeros(256, False, 8)
        kernels.sgd_lowbit([torch.zeros_like(values)], [values], [state.codes], [state.absmax], [state.qmap],
                           lr=0.0, momentum=0.9, first=True)
        assert torch.equal(state.codes, QuantState.quantize(block, False, 8).codes)
        assert state.codes[:8].tolist() == codes.tolist()
    assert float(midpoints(code_map(True, 8))[127]) > 0 and float(midpoints(code_map(False, 4))[0]) > 0


def test_quantize_roundtrip_error_small():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    q4 = code_map(True, 4)
    for bits, tol in ((8, 0.02), (4, float((q4[1:] - q4[:-1]).max()))):  # 4-bit signed: either neighbour
        s = QuantState.quantize(x, True, bits)
        err = (s.dequantize() - x).abs().view(-1)[:9984].view(-1, 128 if bits == 4 else 256).amax(1)
        assert float((err / s.absmax[: err.numel()]).max()) < tol


def test_normal_float_map():
    """normal_map() is QLoRA's NF4 (0 and +-1 exact), an alternative 4-bit first-moment map."""
    nf4 = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
           0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]  # bitsandbytes' NF4
    torch.testing.assert_close(normal_map(), torch.tensor(nf4), rtol=0, atol=1e-6)
    lookup(normal_map())  # the kernels' table can be built for it


@pytest.mark.parametrize("qmap", ["default", "nf4"])
def test_4bit_first_moment_rounding(qmap):
    """4-bit signed codes round stochastically with a hashed threshold: to one of the two neighbouring
    entries, unbiased, and a decaying value keeps decaying where nearest rounding sticks."""
    from descent.lowbit.quant import dequantize, quantize, unpack

    q = code_map(True, 4) if qmap == "default" else normal_map()
    assert torch.equal(code_map(True, 4), dynamic_map(True, 4))
    blocks = torch.full((2000, 128), 0.3)
    blocks[:, 0] = 1 + torch.arange(2000) * 1e-4  # a different absmax, so other thresholds, per block
    codes, absmax = quantize(blocks.reshape(-1), q, 4)
    hi = int(torch.bucketize(torch.tensor(0.3), q))  # 0.3 / absmax lies between q[hi - 1] and q[hi]
    assert float(q[hi - 1]) < 0.3 / float(absmax.max()) and float(q[hi]) > 0.3
    assert set(unpack(codes, 4, blocks.numel()).view(2000, 128)[:, 1:].unique().tolist()) == {hi - 1, hi}
    values = dequantize(codes, absmax, q, 4, blocks.numel()).view(2000, 128)[:, 1:]
    assert abs(float(values.mean()) - 0.3) < 0.003, "unbiased"
    k = int(q.numel()) - 5
    assert q[torch.bucketize(0.9 * q[k], (q[1:] + q[:-1]) / 2)] == q[k], "rounded to nearest, 0.9 m sticks at m"
    m = blocks.reshape(-1).clone()
    for step in range(10):  # m <- round(0.9 m); new gradients keep each block's largest element near 1
        codes, absmax = quantize(m * 0.9, q, 4)
        m = dequantize(codes, absmax, q, 4, m.numel())
        m.view(2000, 128)[:, 0] = 1 + (torch.arange(2000) + 2000 * step) * 1e-4
    decayed = float(m.view(2000, 128)[:, 1:].mean())
    assert abs(decayed - 0.3 * 0.9**10) < 0.01, decayed


def test_zero_state_and_odd_sizes():
    s = QuantState.zeros(4097, True, 4)
    assert s.codes.numel() == 2049 and s.absmax.numel() == 33
    assert torch.equal(s.dequantize(), torch.zeros(4097))


@pytest.mark.parametrize("bits", [8, 4])
def test_slice_cat_split_roundtrip(bits):
    x = torch.randn(5001, generator=torch.Generator().manual_seed(2))
    s = QuantState.quantize(x, True, bits)
    for parts in (1, 2, 3, 4):
        pieces = s.split(parts)
        assert len(pieces) == parts
        joined = QuantState.cat(pieces)
        assert torch.equal(joined.codes, s.codes) and torch.equal(joined.absmax, s.absmax)
        assert joined.numel == s.numel
        # each slice is exactly the quantization of its part of the tensor
        start = 0
        for p in pieces:
            ref = QuantState.quantize(x[start:start + p.numel], True, bits)
            assert torch.equal(p.codes, ref.codes) and torch.equal(p.absmax, ref.absmax)
            start += p.numel
    block = 256 if bits == 8 else 128
    with pytest.raises(ValueError, match="aligned"):
        s.slice(block // 2, 2 * block)
    with pytest.raises(ValueError, match="Invalid range"):
        s.slice(0, 6000)
    with pytest.raises(ValueError, match="multiple"):
        QuantState.cat([s.slice(0, 5001), s.slice(0, 256)])


def test_aligned_ranges():
    assert aligned_ranges(1000, 3, 256) == [(0, 512), (512, 768), (768, 1000)]
    assert aligned_ranges(100, 2, 256) == [(0, 100), (100, 100)]
    with pytest.raises(ValueError, match="parts"):
        aligned_ranges(10, 0, 256)


def test_state_dict_entries_load_weights_only(tmp_path):
    s = QuantState.quantize(torch.randn(5000), False, 8)
    torch.save(s.entries("exp_avg_sq"), tmp_path / "s.pt")
    back = QuantState.from_entries(torch.load(tmp_path / "s.pt", weights_only=True), "exp_avg_sq", 5000)
    assert torch.equal(back.codes, s.codes) and torch.equal(back.qmap, s.qmap)


# ------------------------------------------------------------------------------ kernels vs reference
def _states(sizes, signed, bits, dtype, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return [QuantState.quantize((torch.randn(n, generator=g, dtype=torch.float64).abs() if not signed
                                 else torch.randn(n, generator=g, dtype=torch.float64)) * scale, signed, bits)
            for n in sizes]


def _clone(s: QuantState) -> QuantState:
    return QuantState(s.codes.clone(), s.absmax.clone(), s.qmap, s.numel)


SIZES = [4096, 40_000, 5001]
DTYPES = [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)]
TOL = {torch.float32: dict(rtol=0, atol=3e-7), torch.float64: dict(rtol=0, atol=1e-15)}


def _check(params, ref_params, states, ref_states, dtype):
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, **TOL[dtype])  # the last bit of sqrt/div may differ
    for s, r in zip(states, ref_states):
        assert torch.equal(s.absmax, r.absmax) and torch.equal(s.codes, r.codes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("variant", [dict(decoupled_weight_decay=True, weight_decay=0.1),
                                     pytest.param(dict(decoupled_weight_decay=False, weight_decay=0.05, maximize=True),
                                                  marks=pytest.mark.slow)])
def test_adam_kernel_matches_functional(dtype, bits, variant):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
    ref_p = [p.clone() for p in params]
    ms, vs = _states(SIZES, True, bits, dtype, 4), _states(SIZES, False, bits, dtype, 5, 0.01)
    ref_m, ref_v = [_clone(s) for s in ms], [_clone(s) for s in vs]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **variant)
    for step in (1, 2, 3):
        grads = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
        kernels.adam_lowbit(params, grads, [s.codes for s in ms], [s.absmax for s in ms], [s.qmap for s in ms],
                            [s.codes for s in vs], [s.absmax for s in vs], [s.qmap for s in vs],
                            steps=[step, step + 5, step], **hp)
        for i, (p, g) in enumerate(zip(ref_p, grads)):
            m, v = ref_m[i].dequantize(dtype), ref_v[i].dequantize(dtype)
            F.adam(p, g, m, v, None, step=step + 5 * (i == 1), **hp)
            ref_m[i] = QuantState.quantize(m, True, bits, step + 5 * (i == 1))  # the step salts 4-bit rounding
            ref_v[i] = QuantState.quantize(v, False, bits)
        _check(params, ref_p, ms + vs, ref_m + ref_v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
def test_lion_kernel_matches_functional_exactly(dtype, bits):
    gen = torch.Generator().manual_seed(6)
    params = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
    ref_p = [p.clone() for p in params]
    ms = _states(SIZES, True, bits, dtype, 7)
    ref_m = [_clone(s) for s in ms]
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1)
    for _ in range(3):
        grads = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
        kernels.lion_lowbit(params, grads, [s.codes for s in ms], [s.absmax for s in ms], [s.qmap for s in ms], **hp)
        for i, (p, g) in enumerate(zip(ref_p, grads)):
            m = ref_m[i].dequantize(dtype)
            F.lion(p, g, m, **hp)
            ref_m[i] = QuantState.quantize(m, True, bits)
    for p, r in zip(params, ref_p):
        assert torch.equal(p, r)
    _check(params, ref_p, ms, ref_m, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant,bits", [(dict(), 8), (dict(nesterov=True, weight_decay=0.01), 8),
                                          (dict(dampening=0.5, maximize=True), 8), (dict(), 4)])
def test_sgd_kernel_matches_functional(dtype, variant, bits):
    gen = torch.Generator().manual_seed(8)
    params = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
    ref_p = [p.clone() for p in params]
    bufs = [QuantState.zeros(n, True, bits) for n in SIZES]
    ref_b: list = [None] * len(SIZES)
    hp = dict(lr=0.05, momentum=0.9, **variant)
    for step in range(3):
        grads = [torch.randn(n, generator=gen, dtype=dtype) for n in SIZES]
        kernels.sgd_lowbit(params, grads, [s.codes for s in bufs], [s.absmax for s in bufs], [s.qmap for s in bufs],
                           first=step == 0, **hp)
        for i, (p, g) in enumerate(zip(ref_p, grads)):
            b = None if ref_b[i] is None else ref_b[i].dequantize(dtype)
            b = F.sgd(p, g, b, **hp)
            ref_b[i] = QuantState.quantize(b, True, bits)
        _check(params, ref_p, bufs, ref_b, dtype)


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_state_independent_of_sharding(bits):
    """Stepping a tensor whole or as two block-aligned shards gives the same parameter and state bits."""
    gen = torch.Generator().manual_seed(9)
    n = 70_000
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    m, v = _states([n], True, bits, torch.float32, 10)[0], _states([n], False, bits, torch.float32, 11, 0.01)[0]
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True)
    (a, b), (c, d) = aligned_ranges(n, 2, 256 if bits == 8 else 128)
    shards_p = [p[a:b].clone(), p[c:d].clone()]
    ms = [_clone(m.slice(a, b)), _clone(m.slice(c, d))]
    vs = [_clone(v.slice(a, b)), _clone(v.slice(c, d))]
    kernels.adam_lowbit([p], [g], [m.codes], [m.absmax], [m.qmap], [v.codes], [v.absmax], [v.qmap], steps=[4], **hp)
    kernels.adam_lowbit(shards_p, [g[a:b], g[c:d]], [s.codes for s in ms], [s.absmax for s in ms],
                        [s.qmap for s in ms], [s.codes for s in vs], [s.absmax for s in vs], [s.qmap for s in vs],
                        steps=[4, 4], **hp)
    assert torch.equal(torch.cat(shards_p), p)
    assert torch.equal(QuantState.cat(ms).codes, m.codes) and torch.equal(QuantState.cat(vs).absmax, v.absmax)


def test_adam_kernel_rejects_amsgrad():
    s = QuantState.zeros(4096, True, 8)
    with pytest.raises(ValueError, match="amsgrad"):
        kernels.adam_lowbit([torch.zeros(4096)], [torch.zeros(4096)], [s.codes], [s.absmax], [s.qmap], [s.codes],
                            [s.absmax], [s.qmap], steps=[1], lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, amsgrad=True)


def _ulps(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` moved by ``k`` float32 ulps away from 0 (toward 0 for negative ``k``, stopping at 0)."""
    bits = (x.abs().view(torch.int32) + k).clamp(min=0)
    return torch.where(x < 0, -bits.view(torch.float32), bits.view(torch.float32))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arithmetic_encoder_equals_reference_on_adversarial_values(signed, dtype):
    """The 8-bit dynamic maps quantize by arithmetic (kernels.lowbit._encode), falling back to the table
    near midpoints: the codes equal the torch reference's on every midpoint +-0..3 ulps, 0, -0,
    denormals, entries, +-absmax and random values, with absmax 1 and with random absmax."""
    qmap = code_map(signed, 8)
    assert encode._arithmetic(tuple(qmap.tolist()))[-1], "the dynamic map must take the arithmetic path"
    assert not encode._arithmetic(tuple(code_map(signed, 4).tolist()))[-1]
    mids = midpoints(qmap)
    near = torch.cat([_ulps(mids, k) for k in range(-3, 4)] + [qmap])
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 2.0**-126, -(2.0**-126), 1.0, -1.0])
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([near, tiny, torch.rand(6000, generator=gen) * 2 - 1, torch.randn(3000, generator=gen) * 1e-3])
    x = x if signed else x.abs()
    x = x[torch.randperm(x.numel(), generator=gen)][: x.numel() // 256 * 256].view(-1, 256)
    x[:, 0] = torch.where(x[:, 0] < 0, -1.0, 1.0)  # absmax 1: the normalized values are x itself
    for scale in (torch.ones(x.shape[0], 1), torch.rand(x.shape[0], 1, generator=gen) * 10.0 ** torch.randint(
            -8, 4, (x.shape[0], 1), generator=gen)):
        values = (x * scale).reshape(-1).to(dtype)
        state = QuantState.zeros(values.numel(), signed, 8)
        kernels.sgd_lowbit([torch.zeros_like(values)], [values], [state.codes], [state.absmax], [state.qmap],
                           lr=0.0, momentum=0.9, first=True)
        ref = QuantState.quantize(values, signed, 8)
        assert torch.equal(state.absmax, ref.absmax)
        assert torch.equal(state.codes, ref.codes)


def test_arithmetic_encoder_check_rejects_a_wrong_layout():
    """The build-time check (every midpoint's band) catches a layout that would give other codes."""
    qmap = code_map(True, 8)
    cross, ten, zero, e = dynamic_layout(qmap)
    mids = lookup(qmap).mids
    xs = torch.cat([_ulps(torch.from_numpy(mids), k) for k in (-1, 0, 1)]).numpy()
    want = np.searchsorted(mids, xs, side="left").astype(np.uint8)
    edge = np.zeros(xs.size, bool)
    args = (cross, ten, np.int32(zero), np.int32(e))
    assert encode._encode_agrees(xs, want, edge, *args)
    wrong = cross.copy()
    wrong[3] = np.nextafter(wrong[3], np.float32(1))  # one decade boundary moved by an ulp
    assert not encode._encode_agrees(xs, want, edge, wrong, *args[1:])


def _decode_fresh():
    """A new (uncached) compilation of the 8-bit decoder, so that ``decode.FORCE_SCALAR`` is read again."""
    from numba import njit

    @njit
    def run(codes, off, n, qmap, planes, absmax, out):  # noqa: ANN001, ANN202
        decode._decode(codes, off, n, qmap, planes, absmax, out)
    return run


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_byte_permute_decoder_gives_every_entry(scalar, signed, dtype):
    """Every code of each 8-bit map, from the byte-permute decoder (and its scalar compilation):
    the torch reference ``qmap[codes].to(dtype) * absmax`` bit for bit, a tail of n % 64 included."""
    qmap = code_map(signed, 8)
    planes, exact = decode.decoder(tuple(qmap.tolist()))
    assert exact
    gen = torch.Generator().manual_seed(12)
    codes = torch.cat([torch.arange(256), torch.arange(256).flip(0), torch.randint(0, 256, (333,), generator=gen)])
    codes = codes.to(torch.uint8)
    decode.FORCE_SCALAR[0] = scalar
    try:
        run = _decode_fresh()
        for absmax in (1.0, 3.7e-5):
            out = torch.full((codes.numel() - 5,), float("nan"), dtype=dtype)
            run(codes.numpy(), 5, out.numel(), qmap.numpy().astype(out.numpy().dtype), planes,
                out.numpy().dtype.type(absmax), out.numpy())
            want = qmap[codes[5:].long()].to(dtype) * torch.tensor(absmax, dtype=dtype)
            assert torch.equal(out.view(torch.uint8), want.view(torch.uint8))
        asm = "".join(run.inspect_asm().values())
    finally:
        decode.FORCE_SCALAR[0] = False
    from llvmlite.binding import get_host_cpu_features

    if not scalar and get_host_cpu_features().get("avx512vbmi", False):
        assert "vpermt2b" in asm or "vpermi2b" in asm, "the VBMI byte permutes must be used on this CPU"
    if scalar:
        assert "vpermt2b" not in asm and "vpermi2b" not in asm


def test_decoder_planes_and_rejects():
    q = code_map(True, 8).numpy()
    p = decode.planes(q)
    assert p.dtype == np.uint8 and p.size == 1024
    assert np.array_equal(p.reshape(4, 256).T.copy().view(np.float32).ravel(), q)
    with pytest.raises(ValueError, match="Invalid map size: 16"):
        decode.planes(code_map(True, 4).numpy())
    assert decode.decoder(tuple(code_map(False, 4).tolist()))[1] is False


def _encode16_fresh():
    """A new compilation of :func:`_encode16` over whole arrays (``encode.FORCE_SCALAR16`` read again), beside
    :func:`_encode` on each value alone: codes and unsure flags of both."""
    from numba import njit

    @njit
    def run(xs, cross, ten, zero, e, xc, dlo, ften, ebase, out16, bad16, out1, bad1):  # noqa: ANN001, ANN202
        for k in range(0, xs.size, 16):
            bits = encode._encode16(xs, k, np.float32(1.0), out16, k, xc, dlo, ften, cross[7], np.float32(zero), e,
                                    ebase)
            for i in range(16):
                bad16[k + i] = (bits >> np.uint32(i)) & np.uint32(1)
        for k in range(xs.size):
            bad1[k] = encode._encode(xs[k:k + 1], 1, np.float32(1.0), out1, k, cross, ten, zero, e)
    return run


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("signed", [True, False])
def test_encode16_equals_encode_lane_by_lane(scalar, signed):
    """The 16-lane encoder (decade from the exponent's octave table, AVX-512 permutes or, compiled with
    FORCE_SCALAR16, scalar loads) gives :func:`_encode`'s code and unsure flag on every value: midpoints
    +-0..3 ulps, octave and decade edges, +-0, denormals, random values; and the table's code where sure."""
    qmap = code_map(signed, 8)
    values = tuple(qmap.tolist())
    cross, ten, zero, e, usable = encode._arithmetic(values)
    xc, dlo, ften, ebase, ok = encode._vector(values)
    assert usable and ok
    mids = midpoints(qmap)
    octaves = torch.tensor([2.0**k for k in range(-40, 1)])
    gen = torch.Generator().manual_seed(13)
    rand = torch.cat([torch.rand(3000, generator=gen) * 2 - 1, torch.randn(1000, generator=gen) * 1e-4])
    x = torch.cat([_ulps(mids, k) for k in range(-3, 4)] + [qmap, _ulps(octaves, -1), octaves, _ulps(octaves, 1),
                   torch.from_numpy(cross), torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.0, -1.0]), rand])
    first_random = x.numel() - rand.numel()
    x = (x if signed else x.abs()).clamp(-1, 1)
    x = torch.cat([x, torch.zeros((-x.numel()) % 16)]).numpy()
    out16, out1 = np.empty(x.size, np.uint8), np.empty(x.size, np.uint8)
    bad16, bad1 = np.empty(x.size, np.uint8), np.empty(x.size, bool)
    encode.FORCE_SCALAR16[0] = scalar
    try:
        run = _encode16_fresh()
        run(x, cross, ten, zero, e, xc, dlo, ften, ebase, out16, bad16, out1, bad1)
        asm = "".join(run.inspect_asm().values())
    finally:
        encode.FORCE_SCALAR16[0] = False
    assert np.array_equal(bad16.astype(bool), bad1)
    sure = ~bad1
    assert np.array_equal(out16[sure], out1[sure])
    want = torch.bucketize(torch.from_numpy(x), mids).numpy()
    assert np.array_equal(out16[sure], want[sure])
    assert bad1[:first_random].any() and bad1[first_random:].mean() < 0.01, "unsure: near midpoints only"
    if scalar:
        assert "vpermt2ps" not in asm and "vpermi2ps" not in asm
