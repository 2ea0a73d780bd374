"""Handlers for the layers: Gemm / MatMul (Dense), Conv (Conv2d; the NHWC input-transpose fold),
AveragePool / GlobalAveragePool (AvgPool) and MaxPool. Same handler protocol as
:mod:`fastcert.io.onnx.ops_tensor`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastcert.graph.ops import LayerOp
from fastcert.io.onnx.values import Val

if TYPE_CHECKING:
    from fastcert.io.onnx.convert import Converter


def op_gemm(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v = ins[0]
    if not isinstance(v, Val) or any(isinstance(w, Val) for w in ins[1:]):
        raise cv.err("Gemm with the tensor as its second operand is not supported")
    if at.get("transA", 0):
        raise cv.err("Gemm with transA=1 on the tensor (it would transpose the batch dimension) is not supported")
    B = np.asarray(ins[1], dtype=np.float64)
    if B.ndim != 2:
        raise cv.err(f"Gemm weight must be a matrix, got shape {list(B.shape)}")
    W = float(at.get("alpha", 1.0)) * (B if at.get("transB", 0) else B.T)  # [M, K]
    bias = None
    if len(ins) > 2 and ins[2] is not None:
        C = np.asarray(ins[2], dtype=np.float64)
        if C.size not in (1, W.shape[0]) or (C.ndim == 2 and C.shape[0] != 1):
            raise cv.err(f"Gemm bias of shape {list(C.shape)} does not broadcast per output ({W.shape[0]} outputs)")
        bias = float(at.get("beta", 1.0)) * np.broadcast_to(C.reshape(-1), (W.shape[0],))
    full = v.full()
    if len(full) != 2:
        raise cv.err(f"Gemm needs a 2-D input, got shape {list(full)}")
    if full[1] != W.shape[1]:
        raise cv.err(f"Gemm weight has {W.shape[1]} input features but the input has shape {list(full)}")
    return cv.dense(v, W, bias, (W.shape[0],) if v.batched else (full[0], W.shape[0]))


def op_matmul(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    if isinstance(ins[0], Val):
        v, Wc = ins[0], np.asarray(ins[1], dtype=np.float64)
        full = v.full()
        if Wc.ndim == 1:
            Wc2, tail = Wc[:, None], ()
        elif Wc.ndim == 2:
            Wc2, tail = Wc, (Wc.shape[1],)
        else:
            raise cv.err(f"MatMul with a {Wc.ndim}-D constant (batched matmul) is not supported")
        K = Wc2.shape[0]
        if not full or full[-1] != K:
            raise cv.err(f"MatMul: the input of shape {list(full)} does not match the weight of shape {list(Wc.shape)}")
        lead = full[:-1]
        if int(np.prod(lead[1:] if v.batched else lead, dtype=np.int64)) != 1:
            raise cv.err(f"MatMul on an input of shape {list(full)}: only one row per sample is supported")
        out_full = lead + tail
        return cv.dense(v, Wc2.T, None, out_full[1:] if v.batched else out_full)
    v, Wc = ins[1], np.asarray(ins[0], dtype=np.float64)  # W @ x: only for an unbatched vector (or column) x
    full = v.full()
    if Wc.ndim != 2 or v.batched or len(full) not in (1, 2) or full[0] != Wc.shape[1] or \
            (len(full) == 2 and full[1] != 1):
        raise cv.err(f"MatMul of a constant of shape {list(Wc.shape)} with the tensor of shape {list(full)} is only "
                     f"supported for an unbatched vector or column")
    return cv.dense(v, Wc, None, (Wc.shape[0],) + full[1:])


def pads(cv: Converter, at: dict, hw: tuple[int, int], k: tuple[int, ...], st: tuple[int, ...]) -> tuple[int, int]:
    """Symmetric (pad_h, pad_w) from ``pads`` / ``auto_pad`` for an [H, W] input, kernel k, stride st."""
    ap = at.get("auto_pad", "NOTSET")
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        tot = [max((-(-hw[i] // st[i]) - 1) * st[i] + k[i] - hw[i], 0) for i in range(2)]
        if any(t % 2 for t in tot):
            raise cv.err(f"auto_pad={ap} needs asymmetric padding here, which is not supported")
        return tot[0] // 2, tot[1] // 2
    if ap == "VALID":
        return 0, 0
    if ap not in ("NOTSET", ""):
        raise cv.err(f"auto_pad={ap!r} is not supported")
    p = [int(v) for v in at.get("pads", (0, 0, 0, 0))]
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise cv.err(f"asymmetric pads {p} are not supported (only [p_h, p_w, p_h, p_w])")
    return p[0], p[1]


def _conv_params(cv: Converter, ins: list[Any], at: dict) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    if not isinstance(ins[0], Val) or any(isinstance(w, Val) for w in ins[1:]):
        raise cv.err("Conv needs the tensor as input and constant weights")
    W = np.asarray(ins[1], dtype=np.float64)
    b = np.asarray(ins[2], dtype=np.float64).reshape(-1) if len(ins) > 2 and ins[2] is not None else None
    if W.ndim != 4:
        raise cv.err(f"only 2-D convolutions are supported (weight shape {list(W.shape)})")
    if at.get("group", 1) != 1:
        raise cv.err(f"Conv with group={at['group']} is not supported (only group=1)")
    if any(v != 1 for v in at.get("dilations", [1, 1])):
        raise cv.err(f"Conv with dilations {at['dilations']} is not supported")
    cv.check_finite(W, "weights")
    if b is not None:
        cv.check_finite(b, "bias")
    kh, kw = W.shape[2:]
    if tuple(at.get("kernel_shape", (kh, kw))) != (kh, kw):
        raise cv.err(f"kernel_shape {at['kernel_shape']} does not match the weight shape {list(W.shape)}")
    return W, b, tuple(int(s) for s in at.get("strides", (1, 1)))


def op_conv(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    W, b, st = _conv_params(cv, ins, at)
    v = ins[0]
    nhwc = cv.is_nhwc_input(v)
    if nhwc:
        C, H, Wd = v.logical
    else:
        v, (C, H, Wd) = cv.spatial_input(v, "Conv")
    if W.shape[1] != C:
        raise cv.err(f"Conv expects {W.shape[1]} input channels but its input has shape {list(v.full())}")
    OC, _, kh, kw = W.shape
    pad = pads(cv, at, (H, Wd), (kh, kw), st)
    if nhwc:
        # x_chw[c, h, w] = X[0, h, w*C + c] with X the [1, H, W*C] view of the NHWC input: the
        # convolution becomes one over X with kernel (kh, kw*C), stride (sh, sw*C), padding (ph, pw*C)
        cv.set_input_shape((1, H, Wd * C))
        v = cv.in_ir_shape(dataclasses.replace(v, P=None), (1, H, Wd * C), "of the NHWC input")
        W = np.ascontiguousarray(W.transpose(0, 2, 3, 1).reshape(OC, 1, kh, kw * C))
        st, pad = (st[0], st[1] * C), (pad[0], pad[1] * C)
        cv.notes.append(f"{cv.where}: NHWC input transpose folded into this Conv (input read as [1, {H}, {Wd * C}])")
    ih, iw = cv.shapes[v.vid][1:]
    OH = (ih + 2 * pad[0] - W.shape[2]) // st[0] + 1
    OW = (iw + 2 * pad[1] - W.shape[3]) // st[1] + 1
    if OH < 1 or OW < 1:
        raise cv.err(f"kernel {kh}x{kw} does not fit the padded input {list(v.full())}")
    Wt, bt = torch.from_numpy(np.array(W)), None if b is None else torch.from_numpy(np.array(b))  # writable copies
    vid = cv.emit(LayerOp("conv", cv.where, {"W": Wt, "b": bt, "stride": st, "padding": pad}), (v.vid,), (OC, OH, OW))
    return Val("", vid, (OC, OH, OW), v.batched, v.etype, affine=vid - 1)


def _pool_geometry(cv: Converter, at: dict, hw: tuple[int, int], what: str) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, padding, output [OH, OW]) of a 2-D pooling node."""
    k = tuple(int(v) for v in at["kernel_shape"])
    st = tuple(int(v) for v in at.get("strides", (1, 1)))
    if len(k) != 2:
        raise cv.err(f"only 2-D pooling is supported (kernel_shape {list(k)})")
    pad = pads(cv, at, hw, k, st)
    H, Wd = hw
    OH = (H + 2 * pad[0] - k[0]) // st[0] + 1
    OW = (Wd + 2 * pad[1] - k[1]) // st[1] + 1
    if at.get("ceil_mode", 0) and ((H + 2 * pad[0] - k[0]) % st[0] or (Wd + 2 * pad[1] - k[1]) % st[1]):
        raise cv.err(f"{what} with ceil_mode=1 (with a partial window) is not supported")
    return k, st, pad, (OH, OW)


def op_avgpool(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, (C, H, Wd) = cv.spatial_input(ins[0], "AveragePool")
    if any(d != 1 for d in at.get("dilations", [1, 1])):
        raise cv.err("AveragePool with dilations is not supported")
    k, st, pad, (OH, OW) = _pool_geometry(cv, at, (H, Wd), "AveragePool")
    if pad != (0, 0) and not at.get("count_include_pad", 0):
        raise cv.err("AveragePool with padding and count_include_pad=0 is not supported")
    if OH < 1 or OW < 1:
        raise cv.err(f"kernel {list(k)} does not fit the input {list(v.full())}")
    vid = cv.emit(LayerOp("avgpool", cv.where, {"k": k, "stride": st, "padding": pad, "div": float(k[0] * k[1])}),
                  (v.vid,), (C, OH, OW))
    return Val("", vid, (C, OH, OW), v.batched, v.etype)


def op_maxpool(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, (C, H, Wd) = cv.spatial_input(ins[0], "MaxPool")
    if any(d != 1 for d in at.get("dilations", [1, 1])) or len(node.output) > 1 or at.get("storage_order", 0):
        raise cv.err("MaxPool with dilations, storage_order or an indices output is not supported")
    k, st, pad, (OH, OW) = _pool_geometry(cv, at, (H, Wd), "MaxPool")
    if OH < 1 or OW < 1 or pad[0] > k[0] // 2 or pad[1] > k[1] // 2:
        raise cv.err(f"kernel {list(k)} with pads {list(pad)} does not fit the input {list(v.full())}")
    vid = cv.emit(LayerOp("maxpool", cv.where, {"k": k, "stride": st, "padding": pad}), (v.vid,), (C, OH, OW))
    return Val("", vid, (C, OH, OW), v.batched, v.etype)


def op_global_avgpool(cv: Converter, node: Any, ins: list[Any], at: dict) -> Val:
    v, (C, H, Wd) = cv.spatial_input(ins[0], "GlobalAveragePool")
    vid = cv.emit(LayerOp("avgpool", cv.where, {"k": (H, Wd), "stride": (1, 1), "padding": (0, 0),
                                                "div": float(H * Wd)}), (v.vid,), (C, 1, 1))
    return Val("", vid, (C, 1, 1), v.batched, v.etype)


HANDLERS = {"Gemm": op_gemm, "MatMul": op_matmul, "Conv": op_conv, "AveragePool": op_avgpool,
            "MaxPool": op_maxpool, "GlobalAveragePool": op_global_avgpool}
