#!/usr/bin/python3
"""Writes tests/fixtures/onnx: small ONNX graphs (one per operator pattern,
and a tiny ViT block as CLIP exports it) with their inputs, for
tests/onnx_vision: hostrun's CPU executor against onnxruntime (npm) on the
same files (ctest onnx_ort_parity).

    apt-get install python3-onnx python3-numpy
    /usr/bin/python3 scripts/make-onnx-fixtures.py [OUT_DIR]

cases.json lists, per case, the model file, its inputs (name, dtype, shape,
raw little-endian file) and its output names.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx")
rng = np.random.default_rng(7)
cases = []

F, I = TensorProto.FLOAT, TensorProto.INT64


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def case(name, nodes, inputs, outputs, initializers=(), opset=17):
    """inputs: [(name, numpy array)]; outputs: [name]; output types and shapes left to inference."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, F if a.dtype == np.float32 else I, list(a.shape)) for n, a in inputs],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hostrun-fixtures")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name + ".onnx"))
    entries = []
    for n, a in inputs:
        file = "%s.%s.bin" % (name, n)
        a.tofile(os.path.join(OUT, file))
        entries.append({"name": n, "dtype": "float32" if a.dtype == np.float32 else "int64", "shape": list(a.shape), "file": file})
    cases.append({"name": name, "model": name + ".onnx", "inputs": entries, "outputs": list(outputs)})


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def n(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, name=outputs[0] + "_node", **attrs)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    case("binary_broadcast",
         [n("Add", ["a", "b"], ["s"]), n("Sub", ["s", "c"], ["d"]), n("Mul", ["d", "b"], ["m"]),
          n("Div", ["m", "e"], ["q"]), n("Pow", ["e", "two"], ["p"]),
          n("Add", ["q", "p"], ["y"])],
         [("a", f32(2, 3, 4)), ("b", f32(4)), ("c", f32(3, 1)), ("e", (np.abs(f32(1, 3, 4)) + 0.5).astype(np.float32))],
         ["y"], [const("two", np.array(2.0, np.float32))])
    case("unary", [n("Sigmoid", ["x"], ["a"]), n("Erf", ["x"], ["b"]), n("Tanh", ["x"], ["c"]), n("Relu", ["x"], ["d"]),
                   n("Neg", ["x"], ["e"]), n("Mul", ["x", "x"], ["x2"]),
                   n("Sqrt", ["x2"], ["g"]), n("Identity", ["g"], ["h"])],
         [("x", f32(3, 5))], ["a", "b", "c", "d", "e", "h"])
    case("matmul", [n("MatMul", ["a", "b"], ["y"]), n("MatMul", ["c", "d"], ["z"]), n("MatMul", ["v", "d2"], ["w"])],
         [("a", f32(2, 3, 4, 5)), ("b", f32(5, 6)), ("c", f32(3, 4)), ("d", f32(2, 4, 5)), ("v", f32(4)), ("d2", f32(4, 3))],
         ["y", "z", "w"])
    case("gemm", [n("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=2.0), n("Gemm", ["bt", "a2"], ["z"], transA=1)],
         [("a", f32(3, 4)), ("b", f32(5, 4)), ("c", f32(5)), ("bt", f32(4, 3)), ("a2", f32(4, 2))], ["y", "z"])
    case("conv", [n("Conv", ["x", "w", "bias"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                  n("Conv", ["x2", "w2"], ["patches"], strides=[7, 7], kernel_shape=[7, 7]),
                  n("Conv", ["x", "wg"], ["grouped"], group=3, pads=[0, 1, 2, 1], dilations=[2, 1])],
         [("x", f32(2, 3, 9, 9)), ("x2", f32(1, 3, 14, 14))], ["y", "patches", "grouped"],
         [const("w", f32(4, 3, 3, 3)), const("bias", f32(4)), const("w2", f32(8, 3, 7, 7)), const("wg", f32(6, 1, 3, 2))])
    case("softmax_norms",
         [n("Softmax", ["x"], ["s_last"]), n("Softmax", ["x"], ["s_1"], axis=1),
          n("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
          n("LayerNormalization", ["x", "gamma2"], ["ln2"], axis=1),
          n("ReduceMean", ["x"], ["mu"], axes=[-1]), n("Sub", ["x", "mu"], ["centred"]),
          n("Pow", ["centred", "two"], ["sq"]), n("ReduceMean", ["sq"], ["var"], axes=[-1]),
          n("Add", ["var", "eps"], ["var_eps"]), n("Sqrt", ["var_eps"], ["sd"]), n("Div", ["centred", "sd"], ["ln_parts"]),
          n("ReduceMean", ["x"], ["all"], keepdims=0)],
         [("x", f32(2, 3, 8))], ["s_last", "s_1", "ln", "ln2", "ln_parts", "all"],
         [const("gamma", f32(8)), const("beta", f32(8)), const("gamma2", f32(3, 8)), const("two", np.array(2.0, np.float32)),
          const("eps", np.array(1e-5, np.float32))])
    case("shapes",
         [n("Reshape", ["x", "s1"], ["r1"]), n("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3]), n("Transpose", ["x"], ["t_rev"]),
          n("Concat", ["x", "x2"], ["cat"], axis=-2), n("Flatten", ["x"], ["flat"], axis=2),
          n("Unsqueeze", ["x", "ax"], ["u"]), n("Squeeze", ["u", "ax"], ["sq"]), n("Squeeze", ["one"], ["sq_all"]),
          n("Expand", ["e", "es"], ["ex"]), n("Identity", ["sq"], ["same"])],
         [("x", f32(2, 3, 4)), ("x2", f32(2, 5, 4)), ("e", f32(3, 1)), ("one", f32(1, 4, 1))],
         ["r1", "t", "t_rev", "cat", "flat", "sq", "sq_all", "ex", "same"],
         [const("s1", np.array([0, 3, 2, -1], np.int64)), const("ax", np.array([1, -1], np.int64)),
          const("es", np.array([2, 3, 5], np.int64))])
    case("slice_gather",
         [n("Slice", ["x", "st", "en"], ["a"]), n("Slice", ["x", "st2", "en2", "axs2", "sp2"], ["b"]),
          n("Gather", ["x", "idx"], ["g0"], axis=0), n("Gather", ["x", "idx2"], ["g1"], axis=1),
          n("Gather", ["x", "scalar"], ["g2"], axis=2)],
         [("x", f32(4, 5, 6))], ["a", "b", "g0", "g1", "g2"],
         [const("st", np.array([1, 0], np.int64)), const("en", np.array([3, -1], np.int64)),
          const("st2", np.array([-1, 100], np.int64)), const("en2", np.array([-100, 0], np.int64)),
          const("axs2", np.array([2, 0], np.int64)), const("sp2", np.array([-2, -1], np.int64)),
          const("idx", np.array([[3, -1], [0, 2]], np.int64)), const("idx2", np.array([-5, 4, 1], np.int64)),
          const("scalar", np.array(2, np.int64))])
    # Shapes computed in the graph, as torch.onnx writes them for view(): Shape -> Gather -> Concat -> Reshape.
    case("dynamic_shape",
         [n("Shape", ["x"], ["shape"]), n("Shape", ["x"], ["tail"], start=-1), n("Gather", ["shape", "zero"], ["batch"]),
          n("Unsqueeze", ["batch", "ax0"], ["batch1"]), n("Concat", ["batch1", "minus1", "tail"], ["target"], axis=0),
          n("Reshape", ["x", "target"], ["y"]), n("Cast", ["shape"], ["shape_f"], to=F), n("Cast", ["x"], ["x_i"], to=I),
          n("Cast", ["x"], ["x_b"], to=TensorProto.BOOL), n("Cast", ["x_b"], ["x_bf"], to=F),
          n("ConstantOfShape", ["tail"], ["zeros"]),
          n("ConstantOfShape", ["shape"], ["sevens"], value=helper.make_tensor("v", I, [1], [7])),
          n("Constant", [], ["c"], value=helper.make_tensor("cv", F, [2], [1.5, -2.0])),
          n("Constant", [], ["ci"], value_ints=[4, 5]), n("Equal", ["x_i", "zero"], ["eq"]),
          n("Where", ["eq", "x", "c0"], ["w"])],
         [("x", (f32(2, 3, 4) * 3).astype(np.float32))],
         ["y", "shape_f", "x_i", "x_bf", "zeros", "sevens", "c", "ci", "w"],
         [const("zero", np.array(0, np.int64)), const("ax0", np.array([0], np.int64)),
          const("minus1", np.array([-1], np.int64)), const("c0", np.array(-7.0, np.float32))])
    vit_block()
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


def vit_block():
    """CLIP's embeddings and one encoder layer at toy size, in the ops torch.onnx uses:
    patch Conv, flatten, class token, positions, pre-LayerNorm, attention, quick_gelu MLP."""
    d, heads, patch, image = 16, 2, 4, 8
    tokens = (image // patch) ** 2 + 1
    hd = d // heads
    init = [const("patch_w", f32(d, 3, patch, patch) * 0.2), const("cls", f32(1, 1, d)), const("pos", f32(1, tokens, d) * 0.1),
            const("ln0_g", f32(d)), const("ln0_b", f32(d)), const("ln1_g", f32(d)), const("ln1_b", f32(d)),
            const("wq", f32(d, d) * 0.3), const("wk", f32(d, d) * 0.3), const("wv", f32(d, d) * 0.3), const("wo", f32(d, d) * 0.3),
            const("bq", f32(d)), const("ln2_g", f32(d)), const("ln2_b", f32(d)),
            const("w1", f32(d, 4 * d) * 0.3), const("b1", f32(4 * d)), const("w2", f32(4 * d, d) * 0.3), const("b2", f32(d)),
            const("heads_shape", np.array([1, tokens, heads, hd], np.int64)), const("merge_shape", np.array([1, tokens, d], np.int64)),
            const("flat_shape", np.array([1, d, -1], np.int64)), const("scale", np.array(hd ** -0.5, np.float32)),
            const("gelu_k", np.array(1.702, np.float32))]
    nodes = [
        n("Conv", ["pixels", "patch_w"], ["p"], strides=[patch, patch], kernel_shape=[patch, patch]),
        n("Reshape", ["p", "flat_shape"], ["pf"]), n("Transpose", ["pf"], ["pt"], perm=[0, 2, 1]),
        n("Concat", ["cls", "pt"], ["emb"], axis=1), n("Add", ["emb", "pos"], ["x0"]),
        n("LayerNormalization", ["x0", "ln0_g", "ln0_b"], ["x"], epsilon=1e-5),
        n("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], epsilon=1e-5),
        n("MatMul", ["h", "wq"], ["q0"]), n("Add", ["q0", "bq"], ["q1"]), n("Mul", ["q1", "scale"], ["q"]),
        n("MatMul", ["h", "wk"], ["k"]), n("MatMul", ["h", "wv"], ["v"]),
        n("Reshape", ["q", "heads_shape"], ["qh"]), n("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "heads_shape"], ["kh"]), n("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
        n("Reshape", ["v", "heads_shape"], ["vh"]), n("Transpose", ["vh"], ["vt"], perm=[0, 2, 1, 3]),
        n("MatMul", ["qt", "kt"], ["scores"]), n("Softmax", ["scores"], ["probs"], axis=-1),
        n("MatMul", ["probs", "vt"], ["ctx"]), n("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_shape"], ["ctx_m"]), n("MatMul", ["ctx_m", "wo"], ["attn"]),
        n("Add", ["x", "attn"], ["r1"]),
        n("LayerNormalization", ["r1", "ln2_g", "ln2_b"], ["h2"], epsilon=1e-5),
        n("MatMul", ["h2", "w1"], ["m0"]), n("Add", ["m0", "b1"], ["m1"]), n("Mul", ["m1", "gelu_k"], ["m2"]),
        n("Sigmoid", ["m2"], ["m3"]), n("Mul", ["m1", "m3"], ["m4"]), n("MatMul", ["m4", "w2"], ["m5"]),
        n("Add", ["m5", "b2"], ["m6"]), n("Add", ["r1", "m6"], ["hidden"]),
        n("Slice", ["hidden", "one", "big", "one"], ["features"]),  # CLS dropped, as LLaVA's "default" strategy
    ]
    init += [const("one", np.array([1], np.int64)), const("big", np.array([1 << 30], np.int64))]
    case("vit_block", nodes, [("pixels", f32(1, 3, image, image))], ["hidden", "features"], init)


if __name__ == "__main__":
    main()
