"""Triton kernel for the fused inverted-residual block, registered as mnv2_fused::inverted_residual_triton.

Each program owns BLOCK_P output pixels of one image (flattened over rows and columns) and every
output channel, and walks the hidden channels in chunks of BLOCK_H:

    for each hidden chunk:
        for each of the 9 depthwise taps:
            e = ReLU6(x[shifted pixels] @ W_expand[:, chunk] + b)   (tl.dot over Cin chunks)
            d += e * w_dw[chunk, tap]
        d = ReLU6(d + b_dw)
        acc += d @ W_proj[chunk, :]                               (tl.dot, fp32 accumulate)
    y = acc + b_proj (+ x)

Output channels go in blocks of at most MAX_BLOCK_CO: with one block, acc is a register tile; with
more (Cout 160, 320), each block's partial sums are kept in an fp32 workspace (a row per output
pixel, read and written by this program alone), so neither does a wide accumulator spill nor does
a second program redo the expand and depthwise for the other channels.

Halo pixels are *recomputed*, not staged: a Triton block cannot index a neighbour's row of a
register tile, so the expand of each tap's shifted pixels is computed afresh. That costs up to
9x the expand FLOPs at stride 1 (each input pixel is expanded once per output pixel that reads
it) and about 2.25x at stride 2 (9 taps over 4 input pixels per output). The expand is
Cin*hidden of the block's hidden*(Cin*s^2 + 9 + Cout) MACs per output pixel, so the whole block
costs about 4-5x its eager FLOPs at stride 1; the hidden tensor still never reaches global
memory. The CUDA kernel (csrc/cuda) stages the halo in shared memory instead.

Addressing is NHWC-agnostic: every tensor access goes through the input's and output's strides
(NCHW, channels_last or any view), with 64-bit offsets. fp32 dots use input_precision="ieee" so
results match a non-TF32 reference; fp16/bf16 accumulate in fp32.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from ..reference import FoldedWeights, conv_out, output_memory_format, same_pad_before
from ..spec import ACTIVATIONS, BlockSpec, SEWeights, op_arguments


@triton.jit
def _relu6(v):
    # Comparisons with NaN are false, so NaN passes through as in torch.clamp.
    return tl.where(v < 0.0, 0.0, tl.where(v > 6.0, 6.0, v))


@triton.jit
def _activate(v, ACT: tl.constexpr):
    # ACT: 1 relu, 2 relu6, 3 silu, 4 hardswish (mnv2_fused.spec.ACTIVATIONS, from 1)
    if ACT == 1:
        v = tl.where(v < 0.0, 0.0, v)
    elif ACT == 2:
        v = _relu6(v)
    elif ACT == 3:
        v = v * tl.sigmoid(v)
    elif ACT == 4:
        v = v * _relu6(v + 3.0) / 6.0
    return v


@triton.jit
def _inverted_residual_kernel(
    x_ptr, we_ptr, be_ptr, wd_ptr, bd_ptr, wp_ptr, bp_ptr, y_ptr, acc_ptr, gate_ptr, sums_ptr,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    N, CIN, HID, COUT, H, W, OH, OW, DIL, PAD_T, PAD_L,
    STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr, HAS_EXPAND: tl.constexpr,
    RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, SUMS_ONLY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_CO: tl.constexpr,
    ONE_CO_BLOCK: tl.constexpr,
):
    # One program: BLOCK_P output pixels of one image (batch and pixel blocks share grid axis 0,
    # which has no 65,535 limit), every output channel. SUMS_ONLY: the squeeze-and-excite's first
    # pass, adding the depthwise output of each channel into sums (N, HID) and projecting nothing.
    blocks_per_image = tl.cdiv(OH * OW, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // blocks_per_image).to(tl.int64)
    offs_p = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < OH * OW
    oy = offs_p // OW
    ox = offs_p % OW
    x_n = x_ptr + n * sxn
    offs_b = tl.arange(0, BLOCK_CO)
    # With one block of output channels the projection accumulates in registers; with more, each
    # block's partial sums live in the fp32 workspace rows of this program's pixels (a register
    # accumulator for 320 channels would spill, and a program per block would redo the expand).
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    ws_rows = acc_ptr + (n * OH * OW + offs_p.to(tl.int64))[:, None] * COUT

    for h0 in range(0, HID, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs_h < HID
        dacc = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)
        for tap in tl.static_range(KSIZE * KSIZE):
            iy = oy * STRIDE - PAD_T + (tap // KSIZE) * DIL
            ix = ox * STRIDE - PAD_L + (tap % KSIZE) * DIL
            valid = p_mask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            pix = x_n + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
            if HAS_EXPAND:
                e = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)
                for c0 in range(0, CIN, BLOCK_CI):
                    offs_c = c0 + tl.arange(0, BLOCK_CI)
                    c_mask = offs_c < CIN
                    xt = tl.load(pix[:, None] + offs_c[None, :].to(tl.int64) * sxc,
                                 mask=valid[:, None] & c_mask[None, :], other=0.0)
                    wt = tl.load(we_ptr + offs_h[None, :] * CIN + offs_c[:, None],
                                 mask=c_mask[:, None] & h_mask[None, :], other=0.0)
                    e = tl.dot(xt, wt, acc=e, input_precision=DOT_PRECISION)
                be = tl.load(be_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
                # Padding pixels are zeros of the *expanded* tensor, not act(bias).
                e = tl.where(valid[:, None], _activate(e + be[None, :], ACT), 0.0)
            else:
                e = tl.load(pix[:, None] + offs_h[None, :].to(tl.int64) * sxc,
                            mask=valid[:, None] & h_mask[None, :], other=0.0).to(tl.float32)
            wd = tl.load(wd_ptr + offs_h * (KSIZE * KSIZE) + tap, mask=h_mask, other=0.0).to(tl.float32)
            dacc += e * wd[None, :]
        bd = tl.load(bd_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
        d = _activate(dacc + bd[None, :], ACT)
        if SUMS_ONLY:
            tl.atomic_add(sums_ptr + n * HID + offs_h, tl.sum(tl.where(p_mask[:, None], d, 0.0), axis=0),
                          mask=h_mask)
        else:
            if HAS_GATE:
                d = d * tl.load(gate_ptr + n * HID + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]
            if ONE_CO_BLOCK:
                wp = tl.load(wp_ptr + offs_b[None, :] * HID + offs_h[:, None],
                             mask=h_mask[:, None] & (offs_b < COUT)[None, :], other=0.0)
                acc = tl.dot(d.to(wp.dtype), wp, acc=acc, input_precision=DOT_PRECISION)
            else:
                for co0 in range(0, COUT, BLOCK_CO):
                    offs_co = co0 + offs_b
                    co_mask = offs_co < COUT
                    wp = tl.load(wp_ptr + offs_co[None, :] * HID + offs_h[:, None],
                                 mask=h_mask[:, None] & co_mask[None, :], other=0.0)
                    ws_mask = p_mask[:, None] & co_mask[None, :]
                    part = tl.load(ws_rows + offs_co[None, :], mask=ws_mask & (h0 > 0), other=0.0)
                    part = tl.dot(d.to(wp.dtype), wp, acc=part, input_precision=DOT_PRECISION)
                    tl.store(ws_rows + offs_co[None, :], part, mask=ws_mask)

    if not SUMS_ONLY:
        for co0 in range(0, COUT, BLOCK_CO):
            offs_co = co0 + offs_b
            co_mask = offs_co < COUT
            out_mask = p_mask[:, None] & co_mask[None, :]
            if not ONE_CO_BLOCK:
                acc = tl.load(ws_rows + offs_co[None, :], mask=out_mask, other=0.0)
            acc += tl.load(bp_ptr + offs_co, mask=co_mask, other=0.0).to(tl.float32)[None, :]
            if RESIDUAL:
                res = tl.load(x_n + offs_co[None, :].to(tl.int64) * sxc + oy[:, None].to(tl.int64) * sxh
                              + ox[:, None].to(tl.int64) * sxw, mask=out_mask, other=0.0)
                acc += res.to(tl.float32)
            y_off = (n * syn + offs_co[None, :].to(tl.int64) * syc + oy[:, None].to(tl.int64) * syh
                     + ox[:, None].to(tl.int64) * syw)
            tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


# A small autotune space of tile shapes for GPUs, keyed by the whole shape (the batch included);
# MNV2_FUSED_TRITON_AUTOTUNE=0 keeps the first config only (quick test runs). The interpreter uses
# one fixed shape.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": bp, "BLOCK_H": bh}, num_warps=nw, num_stages=2)
    for bp, bh, nw in [(64, 32, 4), (32, 32, 4), (64, 16, 4), (128, 32, 8), (32, 64, 4)]
]
if os.environ.get("MNV2_FUSED_TRITON_AUTOTUNE", "1") == "0":
    _GPU_CONFIGS = _GPU_CONFIGS[:1]
_autotuned_kernel = triton.autotune(configs=_GPU_CONFIGS,
                                   key=["N", "CIN", "HID", "COUT", "OH", "OW", "DIL", "STRIDE", "KSIZE", "SUMS_ONLY"])(
    _inverted_residual_kernel)

# Output channels per block: more would need a register accumulator that spills.
MAX_BLOCK_CO = 128


def _pow2_at_least_16(v: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(1, v))))


def _launch(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, spec: BlockSpec, gate=None, sums=None):
    """One pass of the kernel: y, or (with sums) the squeeze-and-excite's channel sums."""
    n, cin, h, w = x.shape
    hidden, cout, k = w_dw.shape[0], w_proj.shape[0], w_dw.shape[-1]
    oh, ow = conv_out(h, spec.stride), conv_out(w, spec.stride)
    span = (k - 1) * spec.dilation + 1
    pad_t = same_pad_before(h, spec.stride, span) if spec.same_padding else (span - 1) // 2
    pad_l = same_pad_before(w, spec.stride, span) if spec.same_padding else (span - 1) // 2
    if sums is None:
        y = torch.empty((n, cout, oh, ow), device=x.device, dtype=x.dtype).contiguous(
            memory_format=output_memory_format(x))
        if y.numel() == 0:
            return y
    else:
        y = sums.view(n, 1, 1, -1)  # not written in this pass: a placeholder pointer and strides
    has_expand = w_expand is not None
    we = w_expand.contiguous() if has_expand else w_dw  # placeholder pointer, never read
    be = b_expand.contiguous() if has_expand else b_dw
    block_co = _pow2_at_least_16(cout, MAX_BLOCK_CO)
    one_block = cout <= block_co
    workspace = y if one_block or sums is not None else torch.empty((n * oh * ow, cout), device=x.device,
                                                                     dtype=torch.float32)
    common = dict(STRIDE=spec.stride, KSIZE=k, ACT=ACTIVATIONS.index(spec.activation) + 1, HAS_EXPAND=has_expand,
                  RESIDUAL=spec.residual, HAS_GATE=gate is not None, SUMS_ONLY=sums is not None,
                  DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                  BLOCK_CI=_pow2_at_least_16(cin, 64), BLOCK_CO=block_co, ONE_CO_BLOCK=one_block)
    args = (x, we, be, w_dw.contiguous(), b_dw.contiguous(), w_proj.contiguous(), b_proj.contiguous(), y, workspace,
            gate if gate is not None else b_dw, sums if sums is not None else workspace,
            *x.stride(), *y.stride(), n, cin, hidden, cout, h, w, oh, ow, spec.dilation, pad_t, pad_l)

    def grid(meta):
        return (n * triton.cdiv(oh * ow, meta["BLOCK_P"]),)

    if x.is_cuda:
        wrap_triton(_autotuned_kernel)[grid](*args, **common)
    else:  # Triton's interpreter, whose kernels before Triton 3.8 are no JITFunction for wrap_triton to take
        kernel = _inverted_residual_kernel
        launch = wrap_triton(kernel) if isinstance(kernel, JITFunction) else kernel
        launch[grid](*args, **common, BLOCK_P=32, BLOCK_H=32)
    return y


@triton_op("mnv2_fused::inverted_residual_triton", mutates_args=())
def inverted_residual_triton_op(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                                w_dw: torch.Tensor, b_dw: torch.Tensor, w_proj: torch.Tensor, b_proj: torch.Tensor,
                                stride: int, residual: bool) -> torch.Tensor:
    return _launch(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, BlockSpec(stride=stride, residual=residual))


_SE_FUNCTIONS = {"relu": torch.relu, "relu6": lambda t: F.hardtanh(t, 0.0, 6.0), "silu": F.silu,
                 "hardswish": F.hardswish, "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


@triton_op("mnv2_fused::mbconv_triton", mutates_args=())
def mbconv_triton_op(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                     w_dw: torch.Tensor, b_dw: torch.Tensor, w_se_reduce: Optional[torch.Tensor],
                     b_se_reduce: Optional[torch.Tensor], w_se_expand: Optional[torch.Tensor],
                     b_se_expand: Optional[torch.Tensor], w_proj: torch.Tensor, b_proj: torch.Tensor, stride: int,
                     dilation: int, same_padding: bool, activation: str, se_activation: str, se_gate: str,
                     residual: bool) -> torch.Tensor:
    spec = BlockSpec(kernel_size=w_dw.shape[-1], stride=stride, dilation=dilation, same_padding=same_padding,
                     activation=activation, se_activation=se_activation, se_gate=se_gate, residual=residual,
                     squeeze_excite=w_se_reduce is not None)
    gate = None
    if w_se_reduce is not None and x.shape[0] > 0:
        # Two passes, the hidden tensor never made: the channel sums, then the block with the gate.
        sums = torch.zeros((x.shape[0], w_dw.shape[0]), device=x.device, dtype=torch.float32)
        _launch(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, spec, sums=sums)
        pixels = conv_out(x.shape[2], stride) * conv_out(x.shape[3], stride)
        z = _SE_FUNCTIONS[se_activation](F.linear(sums / pixels, w_se_reduce.float(), b_se_reduce.float()))
        gate = _SE_FUNCTIONS[se_gate](F.linear(z, w_se_expand.float(), b_se_expand.float())).contiguous()
    return _launch(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, spec, gate=gate)


def inverted_residual_triton(x: torch.Tensor, weights: FoldedWeights, stride: int, residual: bool) -> torch.Tensor:
    return inverted_residual_triton_op(x, *weights, stride, residual)


def mbconv_triton(x: torch.Tensor, weights: FoldedWeights, se: Optional[SEWeights], spec: BlockSpec) -> torch.Tensor:
    se_args, tail = op_arguments(spec, se)
    return mbconv_triton_op(x, weights.w_expand, weights.b_expand, weights.w_dw, weights.b_dw, *se_args,
                            weights.w_proj, weights.b_proj, *tail)
