// Runs a loaded ONNX graph (graph.hpp) on a CUDA GPU: planned once at load
// (every value's device memory in one arena, reused once its last reader has
// run; Reshape-like nodes alias their input; the weights uploaded), then
// enqueued node by node on the caller's stream with cuBLAS for MatMul, Gemm
// and Conv, kernels/cuda's dense_attention for each attention subgraph
// (MatMul, Softmax, MatMul and the transposes around them: one step), and the
// kernels of cuda_ops.hpp for the rest. Activations are f32, except that
// with Precision::bf16_tensor_cores (GEMM operands bf16 on the tensor cores,
// f32 accumulation) a value only GEMMs read is written as bf16 by its
// producer; Precision::f32 stays f32 throughout (what the tests compare
// with the CPU executor).
//
// What cannot run is refused at load naming the node, its operator and the
// opset: integer values computed from the image (the CPU executor's int64
// path; constant folding leaves none in a ViT export), MatMul batch
// broadcasting other than one side's batch being all ones, Conv other than
// 2-D, ReduceMean other than over the trailing axes, Slice / Gather with
// computed starts or indices.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "hostrun/tensor.hpp"
#include "onnx_vision/graph.hpp"

namespace hostrun::onnx_vision {

enum class Precision { bf16_tensor_cores, f32 };

class CudaExecutor {
 public:
  // Plans `graph` for the current CUDA device; the graph may be dropped after.
  static Result<std::unique_ptr<CudaExecutor>> create(const Graph& graph, Precision precision);
  ~CudaExecutor();
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

  // Device memory of the graph's inputs and outputs (f32, contiguous, the
  // shapes of Graph::inputs / outputs, in their order): the caller fills the
  // inputs and reads the outputs on the stream it runs on.
  float* input(std::size_t k) const;
  const float* output(std::size_t k) const;
  std::int64_t arena_bytes() const;   // activations (reused across nodes)
  std::int64_t weight_bytes() const;  // the uploaded initializers
  // Attention subgraphs run as one fused step (bf16 precision only).
  int fused_attention() const;
  // Chains of elementwise nodes run as one kernel (every precision).
  int fused_elementwise() const;
  // Of those, chains recognized as an activation (quick_gelu, GELU) and run
  // as its kernel rather than interpreted.
  int activations() const;
  // GEMMs whose bias add runs in their epilogue (bf16 precision only).
  int fused_bias() const;
  // Of those, GEMMs that also add the residual after the bias (as cuBLASLt's C).
  int fused_residual() const;
  // Values only GEMMs read, written as bf16 by the step that makes them (a
  // LayerNormalization, a fused attention or elementwise chain; bf16 only).
  int bf16_outputs() const;

  // Enqueues every node on `stream` (a cudaStream_t). The first run on a
  // stream other than the legacy default (nullptr) captures the nodes as a
  // CUDA graph; every later one launches that graph. Errors name the node.
  Status run(void* stream);
  // Host floats into input k (its whole size), enqueued on `stream`; the
  // host memory may be reused when it returns.
  Status set_input(std::size_t k, std::span<const float> values, void* stream);
  // Output k into `out` (device memory of its size) as f32, bf16 or f16.
  Status copy_output(std::size_t k, DType dtype, void* out, void* stream) const;

  struct Plan;  // defined in cuda_executor.cpp

 private:
  explicit CudaExecutor(std::unique_ptr<Plan> plan);
  std::unique_ptr<Plan> plan_;
};

}  // namespace hostrun::onnx_vision
