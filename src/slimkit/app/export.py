"""``slimkit export DIR --format onnx|pt2e|openvino|hf``: restore a saved model and write it as a
checked ONNX file (ONNX Runtime), PT2E int8 program (PyTorch's x86 Inductor backend), OpenVINO IR
(``model.xml`` + ``.bin``, NNCF int8 or fp32, :mod:`.openvino`) or Hugging Face folder
(``from_pretrained``, :mod:`.hf`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..export.onnx import Int8Mode, write_onnx


def export_artifact(path: Path, *, out: Path | None = None, int8: Int8Mode | None = None, exclude: tuple[str, ...] = (),
                    task_name: str | None = None, calib_batches: int = 8, batch_size: int = 32,
                    fmt: str = "onnx", trust_code: bool = False) -> dict[str, Any]:
    """Write ``out`` (default ``path/model.onnx`` or ``path/model.pt2``) from the slimkit folder ``path``;
    return the export record.

    ``int8``: ONNX "none" (the default: float), "dynamic" or "static"; ``fmt="pt2e"``
    writes an int8 program for PyTorch, so there ``int8`` is "static" (the default) or
    "dynamic", and "none" is refused with what to use instead.

    The float graph is checked against the restored PyTorch model (an error when it
    differs); an int8 graph's deviation is measured and returned. Static int8 takes its
    calibration batches from ``task_name``'s calibration split. A file written into
    ``path`` is added to the manifest's file hashes, so later loads can check it.
    """
    from .. import zoo
    from ..core.errors import ConfigError, MethodError
    from ..core.safety import seal
    from .pipeline import load_artifact

    if fmt not in ("onnx", "pt2e", "openvino", "hf"):
        raise ConfigError(f"unknown export format {fmt!r}; expected onnx, pt2e, openvino or hf", key="format")
    if fmt == "hf":
        if int8 is not None or exclude or task_name is not None:
            raise ConfigError("--format hf writes the float HF model: --int8, --exclude and --task do not apply",
                              key="int8")
        return _export_hf(Path(path), out, trust_code)
    if int8 is None:
        int8 = "static" if fmt in ("pt2e", "openvino") else "none"
    if int8 not in ("none", "dynamic", "static"):
        raise ConfigError(f"--int8 {int8!r}: expected none, dynamic or static", key="int8")
    if fmt == "pt2e" and int8 == "none":
        raise ConfigError("--format pt2e writes an int8 program: --int8 static (the default, needs --task for "
                          "calibration) or --int8 dynamic; for a float artifact use --format onnx --int8 none",
                          key="int8")
    if fmt == "openvino" and int8 == "dynamic":
        raise ConfigError("--format openvino writes NNCF static int8 (--int8 static, needs --task) or fp32 "
                          "(--int8 none); dynamic int8 is not offered", key="int8")
    if int8 == "static" and task_name is None:
        other = "--int8 none" if fmt == "openvino" else "--int8 dynamic"
        raise MethodError(f"--int8 static needs --task for calibration data (or use {other})")
    task = zoo.get_task(task_name) if int8 == "static" else None  # validated before the model is restored
    model, zm = load_artifact(Path(path), trust_code=trust_code)
    calib = None
    if task is not None:
        task.check_model(zm)
        calib = task.calibration_batches(zm, calib_batches, batch_size)
    inputs = zm.example_inputs(2)
    suffix = {"pt2e": ".pt2", "openvino": ".xml"}.get(fmt, ".onnx")
    dest = Path(out) if out is not None else Path(path) / f"model{suffix}"
    if fmt == "openvino":
        from ..export.openvino import write_openvino

        doc = {"model": str(path), "openvino": str(dest),
               **write_openvino(model, inputs, dest, int8=int8, calib=calib)}
    elif fmt == "pt2e":
        from ..export.pt2e import write_pt2e

        if calib:  # an image program serves one shape: that of the batches it will see
            inputs = calib[0]
        doc = {"model": str(path), "pt2": str(dest),
               **write_pt2e(model, inputs, dest, static=int8 == "static", calib=calib)}
    else:
        doc = {"model": str(path), "onnx": str(dest),
               **write_onnx(model, inputs, dest, int8=int8, exclude=exclude, calib=calib)}
    if dest.resolve().parent == Path(path).resolve():
        seal(path)  # the new file is part of the artifact now
    return doc


def _export_hf(path: Path, out: Path | None, trust_code: bool) -> dict[str, Any]:
    """``--format hf``: the folder ``out`` (default ``path/hf``), reloaded and checked against the restored model.

    It is a subfolder, so the artifact's manifest (top-level files) is left as it was."""
    from ..app.pipeline import load_artifact
    from ..export.hf import write_hf

    model, zm = load_artifact(path, trust_code=trust_code)
    dest = Path(out) if out is not None else path / "hf"
    return {"model": str(path), **write_hf(model, dest, example_inputs=zm.example_inputs(2, 16),
                                           tokenizer=zm.tokenizer)}
