"""``slimkit export DIR --format onnx|pt2e``: restore a saved model and write it as a checked
ONNX file (ONNX Runtime) or PT2E int8 program (PyTorch's x86 Inductor backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Int8Mode, write_onnx


def export_artifact(path: Path, *, out: Path | None = None, int8: Int8Mode = "none", exclude: tuple[str, ...] = (),
                    task_name: str | None = None, calib_batches: int = 8, batch_size: int = 32,
                    fmt: str = "onnx") -> dict[str, Any]:
    """Write ``out`` (default ``path/model.onnx`` or ``path/model.pt2``) from the slimkit folder ``path``;
    return the export record.

    ``fmt="pt2e"`` writes an int8 program for PyTorch (``int8`` must be "static", the
    default there, or "dynamic").

    The float graph is checked against the restored PyTorch model (an error when it
    differs); an int8 graph's deviation is measured and returned. Static int8 takes its
    calibration batches from ``task_name``'s calibration split.
    """
    from .. import zoo
    from ..cli.pipeline import load_artifact
    from ..core.errors import MethodError

    model, zm = load_artifact(Path(path))
    if fmt == "pt2e" and int8 == "none":
        int8 = "static"
    calib = None
    if int8 == "static":
        if task_name is None:
            raise MethodError("--int8 static needs --task for calibration data")
        task = zoo.get_task(task_name)
        task.check_model(zm)
        calib = task.calibration_batches(zm, calib_batches, batch_size)
    inputs = zm.example_inputs(2)
    if fmt == "pt2e":
        from .pt2e import write_pt2e

        dest = Path(out) if out is not None else Path(path) / "model.pt2"
        if calib:  # an image program serves one shape: that of the batches it will see
            inputs = calib[0]
        return {"model": str(path), "pt2": str(dest),
                **write_pt2e(model, inputs, dest, static=int8 == "static", calib=calib)}
    if fmt != "onnx":
        raise MethodError(f"unknown export format {fmt!r}; expected onnx or pt2e")
    dest = Path(out) if out is not None else Path(path) / "model.onnx"
    info = write_onnx(model, inputs, dest, int8=int8, exclude=exclude, calib=calib)
    return {"model": str(path), "onnx": str(dest), **info}
