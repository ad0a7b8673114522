"""``slimkit export DIR --format onnx``: restore a saved model and write it as a checked ONNX file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Int8Mode, write_onnx


def export_artifact(path: Path, *, out: Path | None = None, int8: Int8Mode = "none", exclude: tuple[str, ...] = (),
                    task_name: str | None = None, calib_batches: int = 8, batch_size: int = 32) -> dict[str, Any]:
    """Write ``out`` (default ``path/model.onnx``) from the slimkit folder ``path``; return the export record.

    The float graph is checked against the restored PyTorch model (an error when it
    differs); an int8 graph's deviation is measured and returned. Static int8 takes its
    calibration batches from ``task_name``'s calibration split.
    """
    from .. import zoo
    from ..cli.pipeline import load_artifact
    from ..core.errors import MethodError

    model, zm = load_artifact(Path(path))
    calib = None
    if int8 == "static":
        if task_name is None:
            raise MethodError("--int8 static needs --task for calibration data")
        task = zoo.get_task(task_name)
        task.check_model(zm)
        calib = task.calibration_batches(zm, calib_batches, batch_size)
    inputs = zm.example_inputs(2)
    dest = Path(out) if out is not None else Path(path) / "model.onnx"
    info = write_onnx(model, inputs, dest, int8=int8, exclude=exclude, calib=calib)
    return {"model": str(path), "onnx": str(dest), **info}
