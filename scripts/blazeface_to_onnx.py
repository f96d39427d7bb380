#!/usr/bin/env python3
"""Convert the vendored BlazeFace .tflite models to the ONNX files the sanitizer runs.

Why: ONNX Runtime (already used for the text detector) runs BlazeFace about twice as fast
as OpenCV's cv2.dnn on this 2-core machine (full-range model, 192x192, one thread: 6.3 ms
against 13.3 ms; outputs equal to 1e-4), and in ONNX the full-range model can look at a
whole picture of any size in one pass instead of 3x2 tiles (docs/sanitizer.md).

What it changes, and nothing else (the weights are Google's, unchanged):
  * tflite2onnx 0.4.1 translates the graph (the float16 weights become float32);
  * the input's height and width become free (the models are fully convolutional up to
    the final reshape, which already uses -1), so any multiple of 32 works;
  * the three 2x upsampling steps of the full-range model are given as scales instead of
    fixed output sizes, which is what makes the free input size possible.

A one-off developer step, not part of the install: the .onnx outputs are vendored in
handlers/sanitizer/models/ with their SHA-256 (NOTICE.md, _detect.py). To reproduce:

    python3 -m venv /tmp/conv && /tmp/conv/bin/pip install tflite2onnx==0.4.1 onnx
    /tmp/conv/bin/python scripts/blazeface_to_onnx.py
"""
from __future__ import annotations

import hashlib
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tflite2onnx
from onnx import numpy_helper

MODELS = Path(__file__).resolve().parent.parent / "handlers" / "sanitizer" / "models"


def convert(name: str) -> Path:
    src = MODELS / f"{name}.tflite"
    out = MODELS / f"{name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # "float16 not supported/tested" per tensor
            tflite2onnx.convert(str(src), str(raw))
        model = onnx.load(str(raw))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim  # NCHW
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del graph.value_info[:]  # shapes inferred for the fixed size no longer hold
    unused = set()
    for node in graph.node:
        if node.op_type == "Resize":  # inputs: X, roi, scales, sizes
            scales = node.output[0] + "/scales"
            graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), scales))
            unused.add(node.input[3])
            node.input[2] = scales
            del node.input[3]
    # sorted: tflite2onnx writes them in set order, which differs from run to run
    keep = sorted((i for i in graph.initializer if i.name not in unused), key=lambda i: i.name)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString(deterministic=True))
    return out


def main() -> int:
    for name in ("face_detection_full_range", "face_detection_short_range"):
        out = convert(name)
        print(out.name, hashlib.sha256(out.read_bytes()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
