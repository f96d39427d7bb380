#!/usr/bin/env python3
"""Fold the PP-OCRv4 text detector's per-layer affine steps into its convolutions.

Why: the exported graph spells out, around almost every convolution, a learnable affine step
(multiply by a scalar, add a scalar) on each side of a hard-swish, and the hard-swish itself
as four element-wise operations (add 3, clip to 0..6, multiply, divide by 6). Each is a pass
over a whole feature map, and each breaks ONNX Runtime's blocked convolution layout. Measured
on this 2-core machine, one thread, a 512x384 input: about 50 ms before, about 41 ms after.

Every rewrite is exact algebra; only float rounding changes (largest difference in the
probability map 3e-5 over the evaluation set's text and skin pictures, against thresholds of
0.3 and 0.6; tests/sanitizer/test_identifiable.py runs both files):
  * Conv -> Mul(s) -> Add(b)            becomes Conv with weights*s and bias*s + b;
  * Add(3) -> Clip(0, 6) -> Mul(x) -> Div(6)  becomes HardSigmoid(1/6, 0.5) -> Mul(x)
    (x * clip(x + 3, 0, 6) / 6 = x * clip(x / 6 + 0.5, 0, 1));
  * Mul(s) -> Add(b) -> Conv without padding  becomes Conv with weights*s and
    bias + b * (sum of each filter's weights);
  * Mul(s) -> Add(b) -> Conv with zero padding  becomes Add(b/s) -> Conv with weights*s
    (s*(x + b/s) = s*x + b, and a padded zero stays zero after scaling).

A one-off developer step, like scripts/blazeface_to_onnx.py: the output is vendored in
handlers/sanitizer/models/ with its SHA-256 (NOTICE.md, _detect.py). To reproduce:

    python3 -m venv /tmp/fold && /tmp/fold/bin/pip install onnx numpy
    /tmp/fold/bin/python scripts/fold_text_detector.py
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MODELS = Path(__file__).resolve().parent.parent / "handlers" / "sanitizer" / "models"
SOURCE = MODELS / "text_detection_ppocrv4_det.onnx"
OUTPUT = MODELS / "text_detection_ppocrv4_det_folded.onnx"


class Graph:
    """The node list with lookups: constants, consumers, and edits applied at the end."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.graph = model, model.graph
        self.values: dict[str, np.ndarray] = {}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for init in self.graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
        self.new_values: dict[str, np.ndarray] = {}
        self.index()

    def index(self) -> None:
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def scalar(self, name: str) -> float | None:
        value = self.values.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def only_user(self, node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        users = self.users.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def scalar_operand(self, node: onnx.NodeProto) -> tuple[str, float] | None:
        """(the tensor input, the scalar) of a binary op with one scalar constant input."""
        scalars = [(i, self.scalar(i)) for i in node.input]
        tensors = [i for i, v in scalars if v is None]
        values = [v for _, v in scalars if v is not None]
        return (tensors[0], values[0]) if len(tensors) == 1 and len(values) == 1 else None

    def value(self, name: str) -> np.ndarray:
        return self.new_values[name] if name in self.new_values else self.values[name]

    def weights(self, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        w = self.value(conv.input[1])
        b = self.value(conv.input[2]) if len(conv.input) > 2 else np.zeros(w.shape[0], np.float32)
        return w, b

    def set_weights(self, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> None:
        wn, bn = f"{conv.name or conv.output[0]}.w_folded", f"{conv.name or conv.output[0]}.b_folded"
        self.new_values[wn], self.new_values[bn] = w.astype(np.float32), b.astype(np.float32)
        conv.input[1] = wn
        if len(conv.input) > 2:
            conv.input[2] = bn
        else:
            conv.input.append(bn)

    def finish(self, drop: set[int], replace: dict[int, list[onnx.NodeProto]]) -> None:
        nodes = []
        for node in self.graph.node:
            if id(node) in replace:
                nodes.extend(replace[id(node)])
            elif id(node) not in drop:
                nodes.append(node)
        used = {i for n in nodes for i in n.input} | {o.name for o in self.graph.output}
        nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        keep = [i for i in self.graph.initializer if i.name in used and i.name not in self.new_values]
        keep += [numpy_helper.from_array(v, n) for n, v in sorted(self.new_values.items()) if n in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        del self.graph.value_info[:]
        self.index()


def conv_then_affine(g: Graph) -> int:
    drop: set[int] = set()
    for conv in list(g.graph.node):
        mul = g.only_user(conv, "Mul") if conv.op_type == "Conv" else None
        add = g.only_user(mul, "Add") if mul is not None else None
        if add is None or g.scalar_operand(mul) is None or g.scalar_operand(add) is None:
            continue
        s, b = g.scalar_operand(mul)[1], g.scalar_operand(add)[1]
        w, bias = g.weights(conv)
        g.set_weights(conv, w * s, bias * s + b)
        conv.output[0] = add.output[0]
        drop |= {id(mul), id(add)}
    g.finish(drop, {})
    return len(drop) // 2


def hard_swish(g: Graph) -> int:
    drop: set[int] = set()
    replace: dict[int, list[onnx.NodeProto]] = {}
    for add in list(g.graph.node):
        if add.op_type != "Add" or g.scalar_operand(add) is None or g.scalar_operand(add)[1] != 3.0:
            continue
        x = g.scalar_operand(add)[0]
        clip = g.only_user(add, "Clip")
        if clip is None or [g.scalar(i) for i in clip.input[1:]] != [0.0, 6.0]:
            continue
        mul = g.only_user(clip, "Mul")
        if mul is None or x not in mul.input:
            continue
        div = g.only_user(mul, "Div")
        if div is None or g.scalar(div.input[1]) != 6.0:
            continue
        gate = helper.make_node("HardSigmoid", [x], [f"{x}.hard_sigmoid"], alpha=1 / 6, beta=0.5)
        product = helper.make_node("Mul", [x, gate.output[0]], [div.output[0]])
        replace[id(add)] = [gate, product]
        drop |= {id(clip), id(mul), id(div)}
    g.finish(drop, replace)
    return len(replace)


def affine_then_conv(g: Graph) -> int:
    drop: set[int] = set()
    for mul in list(g.graph.node):
        if mul.op_type != "Mul" or g.scalar_operand(mul) is None:
            continue
        x, s = g.scalar_operand(mul)
        add = g.only_user(mul, "Add")
        conv = g.only_user(add, "Conv") if add is not None else None
        if conv is None or g.scalar_operand(add) is None or conv.input[0] != add.output[0] or s == 0:
            continue
        b = g.scalar_operand(add)[1]
        w, bias = g.weights(conv)
        pads = next((list(helper.get_attribute_value(a)) for a in conv.attribute if a.name == "pads"), [0])
        if not any(pads):
            g.set_weights(conv, w * s, bias + b * w.sum(axis=(1, 2, 3)))
            conv.input[0] = x
            drop |= {id(mul), id(add)}
        else:
            g.set_weights(conv, w * s, bias)
            shift = f"{add.output[0]}.shift"
            g.new_values[shift] = np.array(b / s, np.float32)
            add.input[:] = [x, shift]
            drop.add(id(mul))
    g.finish(drop, {})
    return len(drop)


def main() -> int:
    model = onnx.load(str(SOURCE))
    g = Graph(model)
    print("conv then affine:", conv_then_affine(g))
    print("hard-swish:", hard_swish(g))
    print("affine then conv:", affine_then_conv(g))
    onnx.checker.check_model(model)
    OUTPUT.write_bytes(model.SerializeToString(deterministic=True))
    print(OUTPUT.name, hashlib.sha256(OUTPUT.read_bytes()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
