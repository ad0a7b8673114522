"""Channel labels for the pruning graph analysis: a union-find over channel ids.

Every prunable axis (a parameter's or buffer's dim) gets one id per position; ops that make
two positions meet union their ids (:mod:`.propagate`), so the groups that must be pruned
together are the union-find's classes.
"""
from __future__ import annotations

import numpy as np

Axis = tuple[str, int]  # (parameter or buffer qualified name, dim)


class Labels:
    """Union-find over channel ids plus the id -> (axis, position) table."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.where: list[tuple[Axis, int]] = []
        self.axes: dict[Axis, np.ndarray] = {}
        self.frozen: dict[int, str] = {}
        self.blocked: set[int] = set()

    def axis(self, param: str, dim: int, size: int) -> np.ndarray:
        key = (param, dim)
        if key not in self.axes:
            start = len(self.parent)
            self.parent.extend(range(start, start + size))
            self.where.extend((key, i) for i in range(size))
            self.axes[key] = np.arange(start, start + size, dtype=np.int64)
        return self.axes[key]

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ids that meet position by position (broadcasting); -1 meets nothing."""
        a, b = np.broadcast_arrays(a, b)
        ok = (a >= 0) & (b >= 0)
        if ok.any():
            for x, y in np.unique(np.stack([a[ok], b[ok]], 1), axis=0):
                self.union(int(x), int(y))

    def freeze(self, lab: np.ndarray | None, reason: str) -> None:
        if lab is None:
            return
        for i in np.unique(lab):
            if i >= 0:
                self.frozen.setdefault(int(i), reason)

    def roots(self, lab: np.ndarray) -> np.ndarray:
        flat = [self.find(int(i)) if i >= 0 else -1 for i in lab.reshape(-1)]
        return np.asarray(flat, dtype=np.int64).reshape(lab.shape)


def compress(lab: np.ndarray) -> np.ndarray:
    """Shrink every dim along which the labels are constant to size 1."""
    for d in range(lab.ndim):
        if lab.shape[d] > 1 and (lab == lab.take([0], axis=d)).all():
            lab = lab.take([0], axis=d)
    return lab


def varying(lab: np.ndarray) -> list[int]:
    return [d for d in range(lab.ndim) if lab.shape[d] > 1]
