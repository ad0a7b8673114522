"""How tensors are really stored on disk, and what that costs in bytes.

The size account (``slimkit.measure.profile``) and ``slimkit.save`` use the same
functions, so "bytes on disk" in a report is the size of what ``save`` writes, not a
theoretical figure.

Sparse format: CSR with *relative* column indices (Deep Compression, Han et al. 2016).
A tensor is viewed as a matrix ``[rows, cols]`` (dim 0 by the rest). Each stored entry
holds its value and the number of zeros skipped since the previous entry of the row, as
an unsigned ``INDEX_BITS``-bit integer (8 bits, stored as uint8). A gap longer than
``2**INDEX_BITS - 1`` zeros gets filler entries (value 0), as in the paper. Row pointers
are int32. A tensor is stored sparse only when that is smaller than dense.
"""
from __future__ import annotations

import json
from typing import Any

import torch

INDEX_BITS = 8
_MAX_SKIP = 2**INDEX_BITS - 1  # zeros one entry can skip
ROWPTR_BYTES = 4


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a tensor as ``[rows, cols]``: dim 0 by the rest (a vector is one row)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def _entries(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zero positions of matrix ``m`` and the skip counts with fillers.

    Returns ``(rows, cols, skips, fillers)`` for the non-zeros: ``skips[i]`` zeros since
    the previous non-zero of the same row and ``fillers[i] = skips[i] // (MAX_SKIP + 1)``
    filler entries needed before it.
    """
    rows, cols = torch.nonzero(m, as_tuple=True)
    prev = torch.full_like(cols, -1)
    if cols.numel() > 1:
        same_row = rows[1:] == rows[:-1]
        prev[1:] = torch.where(same_row, cols[:-1], torch.full_like(cols[1:], -1))
    skips = cols - prev - 1  # [nnz] zeros skipped
    fillers = skips // (_MAX_SKIP + 1)
    return rows, cols, skips, fillers


def csr_nbytes(t: torch.Tensor) -> int:
    """Bytes of the relative-index CSR encoding of ``t`` (values + 1-byte skips + int32 row pointers)."""
    m = as_matrix(t.detach())
    _, _, _, fillers = _entries(m)
    n_entries = int(fillers.numel() + fillers.sum().item())
    return n_entries * (t.element_size() + INDEX_BITS // 8) + (m.shape[0] + 1) * ROWPTR_BYTES


def dense_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes this tensor takes on disk in slimkit's format (the smaller of dense and sparse)."""
    dense = dense_nbytes(t)
    if t.is_floating_point() and t.numel() >= 64:
        return min(dense, csr_nbytes(t))
    return dense


def csr_encode(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode ``t`` as ``{values, skips (uint8), rowptr (int32)}``; see the module docstring."""
    m = as_matrix(t.detach().contiguous())
    rows, cols, skips, fillers = _entries(m)
    vals = m[rows, cols]
    # Each non-zero i becomes fillers[i] filler entries followed by itself.
    reps = fillers + 1  # [nnz]
    n_total = int(reps.sum().item())
    owner = torch.repeat_interleave(torch.arange(vals.numel()), reps)  # [n_total] index of its non-zero
    first = torch.cumsum(reps, 0) - reps  # [nnz] first entry of each group
    k = torch.arange(n_total) - first[owner]  # position inside its group
    is_last = k == fillers[owner]
    out_vals = torch.where(is_last, vals[owner], torch.zeros((), dtype=vals.dtype))
    out_skips = torch.where(is_last, skips[owner] - fillers[owner] * (_MAX_SKIP + 1), torch.full_like(k, _MAX_SKIP))
    counts = torch.bincount(rows, weights=reps.to(torch.float64), minlength=m.shape[0]).to(torch.int64)
    rowptr = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(counts, 0)
    return {"values": out_vals.contiguous(), "skips": out_skips.to(torch.uint8), "rowptr": rowptr.to(torch.int32)}


def csr_decode(parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`csr_encode`."""
    values, skips, rowptr = parts["values"], parts["skips"].to(torch.int64), parts["rowptr"].to(torch.int64)
    n_rows = rowptr.numel() - 1
    numel = 1
    for s in shape:
        numel *= s
    n_cols = numel // n_rows if n_rows else 0
    out = torch.zeros(n_rows, n_cols, dtype=values.dtype)
    if values.numel():
        row_of = torch.repeat_interleave(torch.arange(n_rows), rowptr[1:] - rowptr[:-1])
        steps = skips + 1
        csum = torch.cumsum(steps, 0)
        start = torch.cat([torch.zeros(1, dtype=torch.int64), csum])[rowptr[:-1]]  # [rows] cumsum before row
        cols = csum - start[row_of] - 1
        out[row_of, cols] = values
    return out.reshape(shape)


def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a state dict for safetensors: dedupe tied tensors, store sparse ones as CSR.

    Returns ``(tensors, layout)`` where ``layout`` maps each state key to how it is stored:
    ``{"dense": key}``, ``{"csr": prefix, "shape": [...], "dtype": ...}`` or ``{"alias": other_key}``.
    """
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for key, t in state.items():
        t = t.detach()
        sig = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and sig in seen:
            layout[key] = {"alias": seen[sig]}
            continue
        if t.numel():
            seen[sig] = key
        if t.is_floating_point() and t.numel() >= 64 and csr_nbytes(t) < dense_nbytes(t):
            for part, value in csr_encode(t.cpu()).items():
                tensors[f"{key}::csr.{part}"] = value
            layout[key] = {"csr": key, "shape": list(t.shape)}
        else:
            tensors[key] = t.cpu().contiguous()
            layout[key] = {"dense": key}
    return tensors, layout


def decode_state(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state`."""
    out: dict[str, torch.Tensor] = {}
    for key, how in layout.items():
        if "dense" in how:
            out[key] = tensors[how["dense"]]
        elif "csr" in how:
            prefix = how["csr"]
            parts = {p: tensors[f"{prefix}::csr.{p}"] for p in ("values", "skips", "rowptr")}
            out[key] = csr_decode(parts, tuple(how["shape"]))
    for key, how in layout.items():
        if "alias" in how:
            out[key] = out[how["alias"]]
    return out


def layout_json(layout: dict[str, Any]) -> str:
    return json.dumps(layout, sort_keys=True)
