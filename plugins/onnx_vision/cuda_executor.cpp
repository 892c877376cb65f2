#include "onnx_vision/cuda_executor.hpp"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cuda/dense_attention.hpp"
#include "onnx_vision/cuda_ops.hpp"
#include "ref/dtype.hpp"

namespace hostrun::onnx_vision {

namespace {

using Shape = std::vector<std::int64_t>;
using cuda_ops::Elementwise;
using cuda_ops::OutputShape;
using cuda_ops::StridedInput;

std::int64_t count(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t(1), std::multiplies<>());
}

void check_cuda(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return;
  throw Error(e == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
              fmt::format("{}: {}", what, cudaGetErrorString(e)));
}

void check_blas(cublasStatus_t s, std::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::out_of_memory : ErrorCode::internal,
              fmt::format("{}: cuBLAS status {}", what, int(s)));
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (std::size_t k = shape.size(); k-- > 1;) strides[k - 1] = strides[k] * shape[k];
  return strides;
}

// Device memory for the activations: offsets into one arena, each block
// reused once the last node reading it has run (best fit among the freed).
class ArenaPlanner {
 public:
  std::int64_t allocate(std::int64_t bytes) {
    bytes = (std::max<std::int64_t>(bytes, 1) + 255) / 256 * 256;
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= bytes && (best == free_.end() || it->second < best->second)) best = it;
    if (best == free_.end()) {
      const std::int64_t offset = top_;
      top_ += bytes;
      return offset;
    }
    const std::int64_t offset = best->first, left = best->second - bytes;
    free_.erase(best);
    if (left > 0) free_[offset + bytes] = left;
    return offset;
  }
  void release(std::int64_t offset, std::int64_t bytes) {
    bytes = (std::max<std::int64_t>(bytes, 1) + 255) / 256 * 256;
    auto [it, inserted] = free_.emplace(offset, bytes);
    if (auto next = std::next(it); next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }
  std::int64_t size() const { return top_; }

 private:
  std::map<std::int64_t, std::int64_t> free_;  // offset -> bytes
  std::int64_t top_ = 0;
};

// One cuBLAS call: row-major C[M,N] = alpha A[M,K] B[K,N] + beta C, `batch`
// times at the given element strides (0: the same matrix every time), read
// through cuBLAS's column-major view as C^T = B^T A^T. A and B are both f32
// or both bf16 (`operands`); C and the accumulation are f32.
struct Gemm {
  cudaDataType operands = CUDA_R_32F;
  bool trans_a = false, trans_b = false;
  std::int64_t m = 0, n = 0, k = 0, batch = 1, stride_a = 0, stride_b = 0;
  float alpha = 1.0f, beta = 0.0f;

  void run(cublasHandle_t blas, const void* a, const void* b, float* c) const {
    check_blas(cublasGemmStridedBatchedEx(blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          int(n), int(m), int(k), &alpha, b, operands, int(trans_b ? k : n), stride_b,
                                          a, operands, int(trans_a ? m : k), stride_a, &beta, c, CUDA_R_32F, int(n),
                                          m * n, int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "GEMM");
  }
};

// One cuBLASLt call: row-major D[M,N] = A[M,K] W + bias[N] (+ R[M,N]), A and
// W bf16, the accumulation f32, D, bias and R f32 -- or D and bias bf16 with
// no R (`bf16_out`: a value only bf16 readers take); W is [K,N] (a MatMul's
// weight) or [N,K] (a Gemm's with transB). The bias rides in the GEMM's
// epilogue and R comes in as C with beta = 1, so the output is written once
// instead of written, read and written again by each add. Descriptors and
// the algorithm are chosen at plan time (the same for either beta).
class LtBiasGemm {
 public:
  LtBiasGemm(cublasLtHandle_t lt, std::int64_t m, std::int64_t n, std::int64_t k, bool weight_transposed,
             const void* bias, bool bf16_out, void* workspace, std::size_t workspace_bytes)
      : lt_(lt), workspace_(workspace), workspace_bytes_(workspace_bytes), bf16_out_(bf16_out) {
    // cuBLASLt is column-major: D^T[N,M] = W^T A^T, W^T as the first operand.
    check_blas(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t trans_w = weight_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a = CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    set(CUBLASLT_MATMUL_DESC_TRANSA, trans_w);
    set(CUBLASLT_MATMUL_DESC_TRANSB, trans_a);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    const cudaDataType out_type = bf16_out ? CUDA_R_16BF : CUDA_R_32F;
    set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, std::int32_t(out_type));  // cuBLASLt's rule: the bias is D's type
    check_blas(weight_transposed ? cublasLtMatrixLayoutCreate(&w_, CUDA_R_16BF, std::uint64_t(k), std::uint64_t(n), k)
                                 : cublasLtMatrixLayoutCreate(&w_, CUDA_R_16BF, std::uint64_t(n), std::uint64_t(k), n),
               "cublasLtMatrixLayoutCreate");
    check_blas(cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, std::uint64_t(k), std::uint64_t(m), k),
               "cublasLtMatrixLayoutCreate");
    check_blas(cublasLtMatrixLayoutCreate(&d_, out_type, std::uint64_t(n), std::uint64_t(m), n),
               "cublasLtMatrixLayoutCreate");
    cublasLtMatmulPreference_t preference = nullptr;
    check_blas(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
    cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                         sizeof(workspace_bytes_));
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(lt_, op_, w_, a_, d_, d_, preference, 1, &heuristic_, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    available_ = status == CUBLAS_STATUS_SUCCESS && found > 0;
  }
  LtBiasGemm(const LtBiasGemm&) = delete;
  LtBiasGemm& operator=(const LtBiasGemm&) = delete;
  ~LtBiasGemm() {
    if (d_ != nullptr) cublasLtMatrixLayoutDestroy(d_);
    if (a_ != nullptr) cublasLtMatrixLayoutDestroy(a_);
    if (w_ != nullptr) cublasLtMatrixLayoutDestroy(w_);
    if (op_ != nullptr) cublasLtMatmulDescDestroy(op_);
  }
  // Whether cuBLASLt offers an algorithm for this shape with the epilogue.
  bool available() const { return available_; }

  // residual: R, or null for none (always none with bf16_out).
  void run(const void* a, const void* w, const float* residual, void* d, cudaStream_t stream) const {
    if (bf16_out_ && residual != nullptr) throw Error(ErrorCode::internal, "a bf16 GEMM output takes no residual");
    const float one = 1.0f, zero = 0.0f;
    check_blas(cublasLtMatmul(lt_, op_, &one, w, w_, a, a_, residual != nullptr ? &one : &zero,
                              residual != nullptr ? residual : d, d_, d, d_, &heuristic_.algo, workspace_,
                              workspace_bytes_, stream),
               "GEMM with bias");
  }

 private:
  template <typename V>
  void set(cublasLtMatmulDescAttributes_t attribute, const V& value) {
    check_blas(cublasLtMatmulDescSetAttribute(op_, attribute, &value, sizeof(value)), "cublasLtMatmulDescSetAttribute");
  }
  cublasLtHandle_t lt_;
  void* workspace_;
  std::size_t workspace_bytes_;
  bool bf16_out_;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t w_ = nullptr, a_ = nullptr, d_ = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  bool available_ = false;
};

bool aliases_input(const std::string& op) {
  return op == "Reshape" || op == "Squeeze" || op == "Unsqueeze" || op == "Flatten" || op == "Identity" ||
         op == "Cast";
}

}  // namespace

struct CudaExecutor::Plan {
  cublasHandle_t blas = nullptr;
  std::byte* arena = nullptr;
  std::int64_t arena_size = 0, weight_size = 0;
  std::vector<void*> weights;  // uploaded constants
  std::vector<float*> inputs, outputs;
  std::vector<std::int64_t> input_sizes, output_sizes;  // elements
  struct Step {
    std::string where;
    std::function<void(cudaStream_t)> run;
  };
  std::vector<Step> steps;
  // The steps captured once as a CUDA graph (hundreds of small launches a
  // ViT becomes one), replayed on whichever stream run() is given.
  cudaGraphExec_t graph = nullptr;
  void* blas_workspace = nullptr;  // cuBLAS's and cuBLASLt's, set once so that capture allocates nothing
  std::size_t blas_workspace_bytes = 0;
  cublasLtHandle_t lt = nullptr;
  std::vector<std::unique_ptr<LtBiasGemm>> bias_gemms;
  int fused_attention = 0;         // attention subgraphs run as one step
  int fused_elementwise = 0;       // elementwise chains run as one kernel
  int fused_bias = 0;              // GEMMs with their bias add in the epilogue
  int fused_residual = 0;          // of those, GEMMs that add a residual as C
  int bf16_outputs = 0;            // values written as bf16 by their producer
  int activations = 0;             // of the fused chains, those run as a known activation

  void enqueue(cudaStream_t stream) const {
    for (const Step& step : steps) {
      try {
        step.run(stream);
      } catch (const Error& e) {
        throw Error(e.status().code(), fmt::format("{}: {}", step.where, e.status().message()));
      }
    }
  }

  ~Plan() {
    if (graph != nullptr) cudaGraphExecDestroy(graph);
    bias_gemms.clear();
    if (lt != nullptr) cublasLtDestroy(lt);
    if (blas_workspace != nullptr) cudaFree(blas_workspace);
    for (void* w : weights) cudaFree(w);
    if (arena != nullptr) cudaFree(arena);
    if (blas != nullptr) cublasDestroy(blas);
  }
};

namespace {

// Builds the plan: liveness and aliasing, arena offsets, then one step per node.
class Planner {
 public:
  Planner(const Graph& graph, Precision precision, CudaExecutor::Plan& plan)
      : graph_(graph), bf16_(precision == Precision::bf16_tensor_cores), plan_(plan) {}

  void build() {
    const auto& nodes = graph_.proto().node();
    find_uses();
    if (bf16_) find_attention();
    if (bf16_) find_bias_adds();
    find_elementwise_chains();
    if (bf16_) find_bf16_values();
    if (bf16_) find_bf16_gemm_outputs();
    for (const Graph::Value& input : graph_.inputs) {
      if (input.element != Element::f32)
        refuse_graph(fmt::format("input '{}' is integer; the CUDA executor takes float inputs", input.name));
      values_[input.name] = {input.shape, new_storage(count(input.shape) * 4, -1)};
      storages_[std::size_t(values_[input.name].storage)].last = kForever;
    }
    for (int n = 0; n < nodes.size(); ++n) plan_liveness(nodes[n], n);
    for (const Graph::Value& output : graph_.outputs) {
      const auto it = values_.find(output.name);
      if (it == values_.end())
        refuse_graph(fmt::format("output '{}' does not depend on the graph's inputs", output.name));
      storages_[std::size_t(it->second.storage)].last = kForever;
    }
    place_storages(nodes.size());
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&plan_.arena), std::size_t(std::max<std::int64_t>(plan_.arena_size, 256))),
               fmt::format("allocating {} bytes of activations", plan_.arena_size));
    for (const Graph::Value& input : graph_.inputs) {
      plan_.inputs.push_back(pointer(input.name));
      plan_.input_sizes.push_back(count(input.shape));
    }
    for (int n = 0; n < nodes.size(); ++n) plan_node(nodes[n], n);
    for (const Graph::Value& output : graph_.outputs) {
      plan_.outputs.push_back(pointer(output.name));
      plan_.output_sizes.push_back(count(output.shape));
    }
  }

 private:
  static constexpr int kForever = std::numeric_limits<int>::max();
  struct Storage {
    std::int64_t bytes = 0;
    int first = 0, last = 0;
    std::int64_t offset = -1;
  };
  struct Value {
    Shape shape;
    int storage = -1;
  };

  [[noreturn]] void refuse_graph(std::string why) const {
    throw Error(ErrorCode::unsupported, fmt::format("the CUDA executor: {}", why));
  }
  std::string where(const onnx::NodeProto& node, int n) const {
    return fmt::format("node {} '{}' ({}, opset {})", n, node.name(), node.op_type(), graph_.opset);
  }
  [[noreturn]] void refuse_node(const onnx::NodeProto& node, int n, std::string_view why) const {
    throw Error(ErrorCode::unsupported, fmt::format("{}: {} on CUDA", where(node, n), why));
  }

  int new_storage(std::int64_t bytes, int first) {
    storages_.push_back({bytes, first, first, -1});
    return int(storages_.size()) - 1;
  }

  // Who makes and who reads each value: what the fusion passes below ask.
  struct Uses {
    std::map<std::string, int> producer;                // value -> the node that outputs it
    std::map<std::string, std::vector<int>> readers;    // value -> the nodes that read it, in order
    std::set<std::string> outputs;                      // the graph's outputs
  };
  void find_uses() {
    const auto& nodes = graph_.proto().node();
    for (int n = 0; n < nodes.size(); ++n) {
      for (const auto& out : nodes[n].output()) uses_.producer[out] = n;
      for (const auto& in : nodes[n].input()) uses_.readers[in].push_back(n);
    }
    for (const auto& o : graph_.outputs) uses_.outputs.insert(o.name);
  }

  // ---- pass 0: attention subgraphs, fused -----------------------------------
  //
  // MatMul(Q, K^T) [-> Mul or Div by a constant scalar] -> Softmax(last axis)
  // -> MatMul(., V), each intermediate read by the next node alone, becomes one
  // dense_attention step (kernels/cuda) at the last node: the scores never
  // reach memory. Transposes feeding Q, K^T or V, and one applied to the
  // result, are absorbed too when nothing else reads them: the kernel reads
  // and writes through their strides. Only with bf16 GEMMs (the kernel's
  // products are bf16); Precision::f32 keeps every node, as the CPU runs it.

  // A value as a MatMul of the pattern reads it: `source` through a
  // Transpose's `perm` (empty: `source` as it is).
  struct Operand {
    std::string source;
    std::vector<std::int64_t> perm;
    float scale = 1.0f;  // constant factors absorbed on the way
  };

  // A Mul by a constant scalar (either side) or a Div by one (the divisor):
  // its factor, else 0. scalar_operand_index: the other input, the one scaled.
  float scalar_factor(const onnx::NodeProto& node) const {
    if ((node.op_type() != "Mul" && node.op_type() != "Div") || node.input_size() != 2) return 0.0f;
    for (int c = node.op_type() == "Div" ? 1 : 0; c < 2; ++c) {
      const auto it = graph_.initializers.find(node.input(c));
      if (it == graph_.initializers.end() || it->second.element != Element::f32 || it->second.f.size() != 1 ||
          graph_.initializers.count(node.input(1 - c)))
        continue;
      const float v = it->second.f[0];
      if (v == 0.0f || !std::isfinite(v)) return 0.0f;
      return node.op_type() == "Mul" ? v : 1.0f / v;
    }
    return 0.0f;
  }
  int scalar_operand_index(const onnx::NodeProto& node) const {
    return graph_.initializers.count(node.input(0)) && (node.op_type() == "Mul") ? 1 : 0;
  }
  struct Attention {
    Operand q, kt, v;                    // [.., Lq, D], [.., D, Lk], [.., Lk, D]
    std::string out;                     // what the step writes: the context, or its transpose
    std::vector<std::int64_t> out_perm;  // that transpose's perm
    Shape context;                       // [.., Lq, D]
    float scale = 1.0f;
  };

  void find_attention() {
    const auto& nodes = graph_.proto().node();
    const auto& producer = uses_.producer;
    auto& readers = uses_.readers;
    const auto& outputs = uses_.outputs;
    const auto read_only_by = [&](const std::string& value, int reader) {
      return !outputs.count(value) && readers[value] == std::vector<int>{reader};
    };
    const auto made_by = [&](const std::string& value, std::string_view op) {
      const auto it = producer.find(value);
      return it != producer.end() && nodes[it->second].op_type() == op ? it->second : -1;
    };
    const auto shape = [&](const std::string& value) -> const Shape* {
      const auto it = graph_.computed.find(value);
      return it == graph_.computed.end() || it->second.element != Element::f32 ? nullptr : &it->second.shape;
    };
    for (int s = 0; s < nodes.size(); ++s) {
      const onnx::NodeProto& softmax = nodes[s];
      if (softmax.op_type() != "Softmax") continue;
      const Shape* scores_shape = shape(softmax.input(0));
      if (scores_shape == nullptr || (scores_shape->size() != 3 && scores_shape->size() != 4)) continue;
      const std::int64_t rank = std::int64_t(scores_shape->size()), softmax_axis = int_attr(softmax, "axis", -1);
      if (softmax_axis != -1 && softmax_axis != rank - 1) continue;
      std::vector<int> group;
      std::string scores = softmax.input(0);
      int scores_reader = s;
      float scale = 1.0f;
      for (const char* op : {"Mul", "Div"}) {
        const int m = made_by(scores, op);
        if (m < 0 || !read_only_by(scores, scores_reader)) continue;
        for (int c = 0; c < 2; ++c) {
          const auto it = graph_.initializers.find(nodes[m].input(c));
          if (it == graph_.initializers.end() || it->second.element != Element::f32 || it->second.f.size() != 1 ||
              (op == std::string_view("Div") && c == 0))
            continue;
          scale *= op == std::string_view("Mul") ? it->second.f[0] : 1.0f / it->second.f[0];
          group.push_back(m);
          scores = nodes[m].input(1 - c);
          scores_reader = m;
          break;
        }
      }
      const int m1 = made_by(scores, "MatMul");
      const std::string& probs = softmax.output(0);
      if (m1 < 0 || !read_only_by(scores, scores_reader) || outputs.count(probs) || readers[probs].size() != 1) continue;
      const int m2 = readers[probs][0];
      if (nodes[m2].op_type() != "MatMul" || nodes[m2].input(0) != probs) continue;
      const Shape *q = shape(nodes[m1].input(0)), *kt = shape(nodes[m1].input(1)), *v = shape(nodes[m2].input(1)),
                  *context = shape(nodes[m2].output(0));
      if (q == nullptr || kt == nullptr || v == nullptr || context == nullptr || q->size() != std::size_t(rank) ||
          kt->size() != std::size_t(rank) || v->size() != std::size_t(rank) ||
          !std::equal(q->begin(), q->end() - 2, kt->begin()) || !std::equal(q->begin(), q->end() - 2, v->begin()) ||
          (*kt)[std::size_t(rank - 2)] != q->back() || v->back() != q->back() ||
          (*v)[std::size_t(rank - 2)] != kt->back() || !cuda::dense_attention_supports(int(q->back())))
        continue;
      group.insert(group.end(), {s, m1});
      // What feeds an operand through Transposes (read through their strides)
      // and, for Q and K^T, Muls or Divs by a constant scalar (folded into the
      // scale: torch.onnx's SDPA scales both by sqrt(scale)), each read by the
      // next alone, is absorbed; the operand is read where the chain starts.
      const auto operand = [&](const std::string& value, int reader, bool scalars) {
        Operand x{value, {}};
        for (;;) {
          const auto p = producer.find(x.source);
          if (p == producer.end() || !read_only_by(x.source, reader)) break;
          const onnx::NodeProto& node = nodes[p->second];
          if (node.op_type() == "Transpose" && shape(node.input(0)) != nullptr) {
            // x reads source axis perm[k]; source is node's input with axis j at t[j].
            const std::vector<std::int64_t> t = transpose_perm(node, shape(node.input(0))->size());
            if (x.perm.empty()) x.perm = t;
            else
              for (auto& axis : x.perm) axis = t[std::size_t(axis)];
          } else if (const float factor = scalars ? scalar_factor(node) : 0.0f;
                     factor != 0.0f && shape(node.output(0)) != nullptr &&
                     shape(node.input(scalar_operand_index(node))) != nullptr &&
                     *shape(node.output(0)) == *shape(node.input(scalar_operand_index(node)))) {
            x.scale *= factor;
          } else {
            break;
          }
          group.push_back(p->second);
          reader = p->second;
          x.source = node.input(node.op_type() == "Transpose" ? 0 : scalar_operand_index(node));
        }
        return x;
      };
      Attention a{operand(nodes[m1].input(0), m1, true), operand(nodes[m1].input(1), m1, true),
                  operand(nodes[m2].input(1), m2, false), nodes[m2].output(0), {}, *context, scale};
      a.scale *= a.q.scale * a.kt.scale;
      int last = m2;
      const auto& context_readers = readers[nodes[m2].output(0)];
      if (!outputs.count(a.out) && context_readers.size() == 1 && nodes[context_readers[0]].op_type() == "Transpose") {
        group.push_back(m2);
        last = context_readers[0];
        a.out = nodes[last].output(0);
        a.out_perm = transpose_perm(nodes[last], context->size());
      }
      absorbed_.insert(group.begin(), group.end());
      for (const int g : group) attention_of_[g] = last;
      attention_of_[last] = last;  // the step's own node (MatMul(., V) itself when no transpose follows)
      attention_[last] = std::move(a);
    }
  }

  std::vector<std::int64_t> transpose_perm(const onnx::NodeProto& node, std::size_t rank) const {
    std::vector<std::int64_t> reversed(rank);
    std::iota(reversed.rbegin(), reversed.rend(), 0);
    std::vector<std::int64_t> perm = ints_attr(node, "perm", reversed);
    for (auto& p : perm) p = p < 0 ? p + std::int64_t(rank) : p;
    return perm;
  }

  // An operand's strides over (batch, head, token, dim); rank 3 has one batch.
  static ref::AttentionStrides attention_strides(std::vector<std::int64_t> strides) {
    if (strides.size() == 3) strides.insert(strides.begin(), 0);
    return {strides[0], strides[1], strides[2], strides[3]};
  }
  ref::AttentionStrides operand_strides(const Operand& x, bool transposed) const {
    const Shape source = contiguous_strides(shape_of(x.source));
    std::vector<std::int64_t> strides = source;
    for (std::size_t k = 0; k < x.perm.size(); ++k) strides[k] = source[std::size_t(x.perm[k])];
    if (transposed) std::swap(strides[strides.size() - 1], strides[strides.size() - 2]);  // K^T read as K
    return attention_strides(strides);
  }

  void plan_attention(const onnx::NodeProto& node, int n, const Attention& a) {
    const Shape& c = a.context;
    const std::size_t r = c.size();
    // The context's strides: its own, or where the transpose puts each of its axes.
    std::vector<std::int64_t> out = contiguous_strides(c);
    if (!a.out_perm.empty()) {
      const Shape written = contiguous_strides(shape_of(a.out));
      for (std::size_t i = 0; i < r; ++i) out[std::size_t(a.out_perm[i])] = written[i];
    }
    const ref::DenseAttentionShape s = attention_shape(a);
    const ref::AttentionStrides qs = operand_strides(a.q, false), ks = operand_strides(a.kt, true),
                                vs = operand_strides(a.v, false), os = attention_strides(out);
    const auto input = [&](const Operand& x, const ref::AttentionStrides& strides) {
      return cuda::DenseAttentionInput{pointer(x.source), stored_dtype(x.source), strides};
    };
    const cuda::DenseAttentionInput q = input(a.q, qs), k = input(a.kt, ks), v = input(a.v, vs);
    float* o = pointer(a.out);
    const ref::DType out_dtype = stored_dtype(a.out);
    void* workspace = plan_.arena + storages_[std::size_t(workspace_.at(n))].offset;
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda::dense_attention(s, q, k, v, o, out_dtype, os, workspace, stream), "fused attention");
    });
    ++plan_.fused_attention;
  }
  ref::DenseAttentionShape attention_shape(const Attention& a) const {
    const Shape& c = a.context;
    const std::size_t r = c.size();
    ref::DenseAttentionShape s;
    s.batch = int(r == 4 ? c[0] : 1);
    s.heads = int(c[r - 3]);
    s.q_len = int(c[r - 2]);
    s.head_dim = int(c[r - 1]);
    s.kv_len = int(attention_kv_len(a));
    s.scale = a.scale;
    return s;
  }
  std::int64_t attention_kv_len(const Attention& a) const {
    const Shape& source = shape_of(a.kt.source);
    return a.kt.perm.empty() ? source.back() : source[std::size_t(a.kt.perm.back())];
  }

  // ---- pass 0a: bias adds and residual adds, into the GEMM before them ------
  //
  // MatMul(x, W) with W a constant matrix, whose output only an Add of a
  // constant bias over its last dimension reads (torch.onnx's nn.Linear), and
  // a Gemm with a constant bias input C (alpha = beta = 1, A not transposed):
  // the GEMM step computes the sum with the bias in cuBLASLt's epilogue and
  // the Add is skipped. When that sum is read only by one more Add, of a value
  // of the same shape computed before the GEMM (a transformer's residual), the
  // GEMM takes that value as its C (beta = 1) and writes the second Add's
  // output instead. bf16 precision only, as attention.

  struct BiasAdd {
    std::string bias;      // the constant bias
    std::string residual;  // the value added after the bias, or empty
    std::string output;    // what the GEMM step writes
    bool weight_transposed = false;
  };

  void find_bias_adds() {
    const auto& nodes = graph_.proto().node();
    const auto& readers = uses_.readers;
    const auto& outputs = uses_.outputs;
    const auto f32_constant = [&](const std::string& name) -> const HostTensor* {
      const auto it = graph_.initializers.find(name);
      return it == graph_.initializers.end() || it->second.element != Element::f32 ? nullptr : &it->second;
    };
    const auto computed_shape = [&](const std::string& name) -> const Shape* {
      const auto it = graph_.computed.find(name);
      return it == graph_.computed.end() ? nullptr : &it->second.shape;
    };
    const auto free_node = [&](int n) { return !absorbed_.count(n) && !attention_.count(n); };
    // The one Add that reads `value` (and nothing else does), else -1.
    const auto sole_add_reader = [&](const std::string& value) {
      const auto read = readers.find(value);
      if (outputs.count(value) || read == readers.end() || read->second.size() != 1) return -1;
      const int add = read->second[0];
      const onnx::NodeProto& node = nodes[add];
      return node.op_type() == "Add" && node.input_size() == 2 && node.input(0) != node.input(1) && free_node(add)
                 ? add
                 : -1;
    };
    const auto is_bias_for = [&](const std::string& name, std::int64_t columns) {
      const HostTensor* bias = f32_constant(name);
      return bias != nullptr && !bias->shape.empty() && bias->shape.back() == columns &&
             count(bias->shape) == columns;
    };
    for (int n = 0; n < nodes.size(); ++n) {
      const onnx::NodeProto& node = nodes[n];
      if ((node.op_type() != "MatMul" && node.op_type() != "Gemm") || !free_node(n) || node.input_size() < 2 ||
          graph_.initializers.count(node.input(0)))
        continue;
      const Shape* x = computed_shape(node.input(0));
      const Shape* y = computed_shape(node.output(0));
      if (x == nullptr || y == nullptr) continue;
      BiasAdd fused;
      if (node.op_type() == "MatMul" && node.input_size() == 2) {
        const HostTensor* weight = f32_constant(node.input(1));
        const int add = sole_add_reader(node.output(0));
        if (weight == nullptr || weight->shape.size() != 2 || x->size() < 2 || add < 0) continue;
        const onnx::NodeProto& add_node = nodes[add];
        const std::string& bias = add_node.input(0) == node.output(0) ? add_node.input(1) : add_node.input(0);
        const Shape* sum = computed_shape(add_node.output(0));
        if (!is_bias_for(bias, weight->shape[1]) || sum == nullptr || *sum != *y) continue;
        fused = {bias, {}, add_node.output(0), false};
        absorbed_.insert(add);
      } else if (node.op_type() == "Gemm" && node.input_size() > 2 && !node.input(2).empty()) {
        const Shape* w = computed_shape(node.input(1));
        const HostTensor* weight = f32_constant(node.input(1));
        const bool trans_b = int_attr(node, "transB", 0) != 0;
        if (int_attr(node, "transA", 0) != 0 || float_attr(node, "alpha", 1.0f) != 1.0f ||
            float_attr(node, "beta", 1.0f) != 1.0f || x->size() != 2 || (weight == nullptr && w == nullptr))
          continue;
        const Shape& ws = weight != nullptr ? weight->shape : *w;
        if (ws.size() != 2 || !is_bias_for(node.input(2), trans_b ? ws[0] : ws[1])) continue;
        fused = {node.input(2), {}, node.output(0), trans_b};
      } else {
        continue;
      }
      // A residual after the bias: Add(sum, r) with r the sum's shape, made before this GEMM.
      if (const int add = sole_add_reader(fused.output); add >= 0) {
        const onnx::NodeProto& add_node = nodes[add];
        const std::string& residual = add_node.input(0) == fused.output ? add_node.input(1) : add_node.input(0);
        const Shape* r = computed_shape(residual);
        const Shape* sum = computed_shape(add_node.output(0));
        const auto made = uses_.producer.find(residual);
        const bool ready = made == uses_.producer.end() ? !graph_.initializers.count(residual) : made->second < n;
        if (r != nullptr && sum != nullptr && *r == *y && *sum == *y && ready && materialized(residual)) {
          fused.residual = residual;
          fused.output = add_node.output(0);
          absorbed_.insert(add);
        }
      }
      bias_adds_[n] = std::move(fused);
    }
  }
  // Whether `value` reaches memory: made by a step of its own, or the sum a
  // GEMM step writes (not an intermediate inside a fused step).
  bool materialized(const std::string& value) const {
    const auto made = uses_.producer.find(value);
    return made == uses_.producer.end() || !absorbed_.count(made->second) ||
           std::any_of(bias_adds_.begin(), bias_adds_.end(), [&](const auto& b) { return b.second.output == value; });
  }

  // ---- pass 0b: elementwise chains, fused -----------------------------------
  //
  // An elementwise node whose output only one elementwise node reads, at the
  // same shape, is computed inside that reader: from each root (a node no
  // such reader takes in) the tree of absorbed producers becomes one
  // ElementwiseProgram over its leaves (values read from memory, broadcast
  // through strides). Every precision: each element's f32 operations are the
  // same as node by node, only the round trips through memory go.

  struct Chain {
    std::vector<std::string> leaves;
    cuda_ops::ElementwiseProgram program;
    std::string output;  // the root's output: what the chain computes
  };

  // The ONNX operators the elementwise kernels run, and as what.
  static const std::map<std::string, Elementwise>& elementwise_operators() {
    static const std::map<std::string, Elementwise> kOperators = {
        {"Add", Elementwise::add},         {"Sub", Elementwise::sub},   {"Mul", Elementwise::mul},
        {"Div", Elementwise::div},         {"Pow", Elementwise::pow},   {"Where", Elementwise::where},
        {"Sigmoid", Elementwise::sigmoid}, {"Erf", Elementwise::erf},   {"Sqrt", Elementwise::sqrt},
        {"Tanh", Elementwise::tanh},       {"Relu", Elementwise::relu}, {"Neg", Elementwise::neg},
        {"Expand", Elementwise::copy}};
    return kOperators;
  }
  // Of those, what a chain takes in: operators of one or two operands that compute.
  static bool chainable(const std::string& op) {
    const auto it = elementwise_operators().find(op);
    return it != elementwise_operators().end() && it->second != Elementwise::where && it->second != Elementwise::copy;
  }

  void find_elementwise_chains() {
    using Program = cuda_ops::ElementwiseProgram;
    const auto& nodes = graph_.proto().node();
    const auto& producer = uses_.producer;
    auto& readers = uses_.readers;
    const auto& outputs = uses_.outputs;
    const auto shape = [&](const std::string& value) -> const Shape* {
      const auto it = graph_.computed.find(value);
      return it == graph_.computed.end() || it->second.element != Element::f32 ? nullptr : &it->second.shape;
    };
    std::set<int> taken;
    for (int root = nodes.size() - 1; root >= 0; --root) {
      const onnx::NodeProto& top = nodes[root];
      if (taken.count(root) || absorbed_.count(root) || !chainable(top.op_type()) || top.output_size() != 1) continue;
      const Shape* out = shape(top.output(0));
      if (out == nullptr || out->size() > std::size_t(cuda_ops::kMaxRank)) continue;
      Chain chain;
      std::int8_t leaf_register[Program::kMaxLeaves] = {};
      std::vector<int> members;
      bool fits = true;
      // Emits node x's instructions after its operands'; its register.
      std::function<int(int)> emit = [&](int x) -> int {
        const onnx::NodeProto& node = nodes[x];
        const Elementwise op = elementwise_operators().at(node.op_type());
        const int arity = cuda_ops::operand_count(op);
        std::int8_t regs[2] = {0, 0};
        for (int k = 0; k < arity && fits; ++k) {
          if (k >= node.input_size()) {
            fits = false;
            break;
          }
          const std::string& in = node.input(k);
          const auto p = producer.find(in);
          const Shape* in_shape = shape(in);
          if (p != producer.end() && chainable(nodes[p->second].op_type()) && !absorbed_.count(p->second) &&
              !taken.count(p->second) && readers[in].size() == 1 && !outputs.count(in) && in_shape != nullptr &&
              *in_shape == *out) {
            members.push_back(p->second);
            regs[k] = std::int8_t(emit(p->second));
            continue;
          }
          const auto leaf = std::find(chain.leaves.begin(), chain.leaves.end(), in);
          if (leaf != chain.leaves.end()) {  // loaded already
            regs[k] = leaf_register[leaf - chain.leaves.begin()];
            continue;
          }
          if (int(chain.leaves.size()) == Program::kMaxLeaves || chain.program.count == Program::kMaxInstructions) {
            fits = false;
            break;
          }
          chain.program.instruction[chain.program.count] = {std::int8_t(chain.leaves.size())};
          chain.leaves.push_back(in);
          leaf_register[chain.leaves.size() - 1] = std::int8_t(chain.program.count);
          regs[k] = std::int8_t(chain.program.count++);
        }
        if (!fits || chain.program.count == Program::kMaxInstructions) {
          fits = false;
          return 0;
        }
        chain.program.instruction[chain.program.count] = {-1, op, regs[0], regs[1]};
        return chain.program.count++;
      };
      emit(root);
      if (!fits || members.empty()) continue;
      for (int m : members) absorbed_.insert(m), taken.insert(m), chain_of_[m] = root;
      chain_of_[root] = root;
      chain.output = top.output(0);
      chains_[root] = std::move(chain);
    }
  }

  // A chain that is a known activation of one computed value (and scalar
  // constants) runs as cuda_ops::activation instead of the program. It is
  // recognized by the chain's expression written with the operands of + and
  // * in a fixed order, the value as "x" and each constant as "#", and the
  // constants (in the order they appear) checked: so x * sigmoid(1.702 x)
  // matches however the exporter ordered the Muls.
  struct Expression {
    std::string text;
    std::vector<float> constants;
  };
  struct Activation {
    cuda_ops::Activation kind;
    float alpha = 0.0f;
    std::string input;
  };
  std::optional<Activation> find_activation(const Chain& chain) const {
    using Program = cuda_ops::ElementwiseProgram;
    std::string variable;
    bool fits = true;
    std::function<Expression(int)> write = [&](int reg) -> Expression {
      const Program::Instruction& in = chain.program.instruction[reg];
      if (in.leaf >= 0) {
        const std::string& name = chain.leaves[std::size_t(in.leaf)];
        if (const auto c = graph_.initializers.find(name); c != graph_.initializers.end()) {
          if (c->second.element != Element::f32 || c->second.f.size() != 1) fits = false;
          return {"#", {c->second.f.empty() ? 0.0f : c->second.f[0]}};
        }
        if (!variable.empty() && variable != name) fits = false;
        variable = name;
        return {"x", {}};
      }
      // The operator's ONNX name in lower case ("Mul" -> "mul").
      std::string op;
      for (const auto& [name, kind] : elementwise_operators())
        if (kind == in.op && chainable(name)) op = name;
      std::transform(op.begin(), op.end(), op.begin(), [](unsigned char c) { return char(std::tolower(c)); });
      const bool binary = cuda_ops::operand_count(in.op) == 2;
      Expression a = write(in.a);
      if (!binary) return {op + "(" + a.text + ")", a.constants};
      Expression b = write(in.b);
      if ((in.op == Elementwise::add || in.op == Elementwise::mul) && b.text < a.text) std::swap(a, b);
      a.constants.insert(a.constants.end(), b.constants.begin(), b.constants.end());
      return {op + "(" + a.text + "," + b.text + ")", a.constants};
    };
    const Expression e = write(chain.program.count - 1);
    const auto x_shape = graph_.computed.find(variable), out_shape = graph_.computed.find(chain.output);
    if (!fits || variable.empty() || x_shape == graph_.computed.end() || out_shape == graph_.computed.end() ||
        x_shape->second.shape != out_shape->second.shape)
      return {};
    const auto near = [&](std::size_t k, double want) {
      return std::fabs(double(e.constants[k]) - want) <= 1e-6 * std::fabs(want);
    };
    if (e.text == "mul(sigmoid(mul(#,x)),x)") return Activation{cuda_ops::Activation::quick_gelu, e.constants[0], variable};
    // x / 2 (1 + erf(x / sqrt 2)) as llava_graph.cpp writes it (other forms run as programs).
    if (e.text == "mul(add(#,erf(mul(#,x))),mul(#,x))" && near(0, 1.0) && near(1, M_SQRT1_2) && near(2, 0.5))
      return Activation{cuda_ops::Activation::gelu, 0.0f, variable};
    return {};
  }

  void plan_chain(const onnx::NodeProto& node, int n, const Chain& chain) {
    const Shape& out_shape = values_.at(node.output(0)).shape;
    if (const std::optional<Activation> a = find_activation(chain)) {
      const void* x = pointer(a->input);
      const cuda_ops::Store x_stored = written_as(a->input);
      void* out = pointer(node.output(0));
      const cuda_ops::Store store = written_as(node.output(0));
      const std::int64_t elements = count(out_shape);
      add_step(node, n, [=, kind = a->kind, alpha = a->alpha](cudaStream_t stream) {
        check_cuda(cuda_ops::activation(kind, alpha, x, x_stored, elements, out, store, stream), "activation");
      });
      ++plan_.fused_elementwise;
      ++plan_.activations;
      return;
    }
    const OutputShape shape = output_shape(node, n, out_shape);
    StridedInput leaves[cuda_ops::ElementwiseProgram::kMaxLeaves];
    for (std::size_t j = 0; j < chain.leaves.size(); ++j)
      leaves[j] = broadcast_input(node, n, chain.leaves[j], out_shape);
    float* out = pointer(node.output(0));
    const cuda_ops::Store store = written_as(node.output(0));
    const cuda_ops::ElementwiseProgram program = chain.program;
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::elementwise_program(program, shape, leaves, out, store, stream), "fused elementwise");
    });
    ++plan_.fused_elementwise;
  }

  // ---- pass 0c: values only bf16 readers take, written as bf16 by their producer ----
  //
  // With bf16 GEMMs, a value every reader of which takes it as bf16 (seen
  // through Reshape-like views) -- a GEMM as its operand, a fused attention as
  // q, k or v, a recognized activation as its input -- lives only in bf16,
  // written so by the step that makes it: a LayerNormalization, a fused
  // attention, an elementwise chain (here), or a GEMM with its bias in the
  // epilogue (pass 0d). For the first three the bits are what the readers
  // would have rounded to themselves: each rounds the same f32 to nearest
  // even.

  // Whether every reader of `value` (and of its views) takes it as bf16;
  // `views` collects the views.
  bool read_as_bf16_only(const std::string& value, std::vector<std::string>& views) const {
    const auto& nodes = graph_.proto().node();
    const auto read = uses_.readers.find(value);
    if (uses_.outputs.count(value) || read == uses_.readers.end()) return false;
    for (const int r : read->second) {
      const onnx::NodeProto& node = nodes[r];
      if (const auto a = attention_of_.find(r); a != attention_of_.end()) {
        const Attention& fused = attention_.at(a->second);
        if (value != fused.q.source && value != fused.kt.source && value != fused.v.source) return false;
        continue;
      }
      if (const auto c = chain_of_.find(r); c != chain_of_.end()) {
        const std::optional<Activation> activation = find_activation(chains_.at(c->second));
        if (!activation || activation->input != value) return false;
        continue;
      }
      if (absorbed_.count(r) || attention_.count(r)) return false;
      if (aliases_input(node.op_type()) && node.input(0) == value) {
        for (int k = 1; k < node.input_size(); ++k)
          if (node.input(k) == value) return false;
        views.push_back(node.output(0));
        if (!read_as_bf16_only(node.output(0), views)) return false;
        continue;
      }
      if (node.op_type() != "MatMul" && node.op_type() != "Gemm") return false;
      for (int k = 2; k < node.input_size(); ++k)
        if (node.input(k) == value) return false;  // Gemm's C is added in f32
    }
    return true;
  }

  void find_bf16_values() {
    const auto& nodes = graph_.proto().node();
    for (int n = 0; n < nodes.size(); ++n) {
      if (absorbed_.count(n)) continue;
      std::string made;
      if (const auto a = attention_.find(n); a != attention_.end()) made = a->second.out;
      else if (chains_.count(n) || nodes[n].op_type() == "LayerNormalization") made = nodes[n].output(0);
      else continue;
      std::vector<std::string> views;
      if (!read_as_bf16_only(made, views)) continue;
      bf16_values_.insert(made);
      bf16_values_.insert(views.begin(), views.end());
      ++plan_.bf16_outputs;
    }
  }

  // ---- pass 0d: GEMM outputs written as bf16 -------------------------------
  //
  // A GEMM with its bias in the epilogue (and no residual) whose sum only
  // bf16 readers take (read_as_bf16_only; the attention reads q, k and v in
  // place when their rows allow) writes that sum as bf16 from cuBLASLt's
  // epilogue: half the bytes written, half read, and no f32 copy for the
  // conversions or the attention's gather. The readers would round it to
  // bf16 first anyway, except the activation, which then computes from the
  // rounded value as a bf16 model's Linear hands it on (HF's bf16 CLIP does
  // the same).

  void find_bf16_gemm_outputs() {
    const auto& nodes = graph_.proto().node();
    for (const auto& [n, fused] : bias_adds_) {
      if (!fused.residual.empty()) continue;
      std::vector<std::string> views;
      if (!read_as_bf16_only(fused.output, views)) continue;
      // The GEMM as plan_bias_gemm will run it: x [.., k] rows times W.
      const onnx::NodeProto& node = nodes[n];
      const auto known_shape = [&](const std::string& name) -> const Shape* {
        if (const auto c = graph_.computed.find(name); c != graph_.computed.end()) return &c->second.shape;
        if (const auto i = graph_.initializers.find(name); i != graph_.initializers.end()) return &i->second.shape;
        return nullptr;
      };
      const Shape *x = known_shape(node.input(0)), *w = known_shape(node.input(1));
      if (x == nullptr || w == nullptr || x->size() < 2 || w->size() != 2) continue;
      const std::int64_t k = x->back(), m = count(*x) / std::max<std::int64_t>(k, 1);
      const std::int64_t nn = fused.weight_transposed ? (*w)[0] : (*w)[1];
      // Asked with the bias as the step will pass it (cuBLASLt reads the pointer's alignment).
      if (!LtBiasGemm(plan_.lt, m, nn, k, fused.weight_transposed, upload_bf16(fused.bias), true,
                      plan_.blas_workspace, plan_.blas_workspace_bytes)
               .available())
        continue;
      bf16_values_.insert({node.output(0), fused.output});
      bf16_values_.insert(views.begin(), views.end());
      ++plan_.bf16_outputs;
    }
  }

  // ---- pass 1: which storage each value lives in, and until when --------

  void plan_liveness(const onnx::NodeProto& node, int n) {
    if (absorbed_.count(n)) return;  // computed by a fused step at a later node
    std::vector<const std::string*> fused_reads;  // what the absorbed nodes read
    if (const auto fused = attention_.find(n); fused != attention_.end())
      fused_reads = {&fused->second.q.source, &fused->second.kt.source, &fused->second.v.source};
    if (const auto chain = chains_.find(n); chain != chains_.end())
      for (const std::string& leaf : chain->second.leaves) fused_reads.push_back(&leaf);
    if (const auto bias = bias_adds_.find(n); bias != bias_adds_.end() && !bias->second.residual.empty())
      fused_reads.push_back(&bias->second.residual);
    for (const std::string* name : fused_reads)
      if (const auto it = values_.find(*name); it != values_.end())
        storages_[std::size_t(it->second.storage)].last = std::max(storages_[std::size_t(it->second.storage)].last, n);
    for (const auto& name : node.input())
      if (const auto it = values_.find(name); it != values_.end())
        storages_[std::size_t(it->second.storage)].last = std::max(storages_[std::size_t(it->second.storage)].last, n);
    for (int k = 1; k < node.output_size(); ++k)
      if (!node.output(k).empty() && read_later(node.output(k)))
        refuse_node(node, n, fmt::format("output {} ('{}') is read, and only the first output is computed", k,
                                         node.output(k)));
    const std::string& name = node.output(0);
    const auto computed = graph_.computed.find(name);
    if (computed == graph_.computed.end()) refuse_node(node, n, "its output has no static shape");
    if (computed->second.element != Element::f32)
      refuse_node(node, n, "it computes an integer value from the graph's inputs, which only the CPU executor runs");
    const Shape& shape = computed->second.shape;
    if (aliases_input(node.op_type()) && node.input_size() > 0 && values_.count(node.input(0))) {
      values_[name] = {shape, values_[node.input(0)].storage};
      return;
    }
    values_[name] = {shape, new_storage(count(shape) * (bf16_values_.count(name) ? 2 : 4), n)};
    if (const auto bias = bias_adds_.find(n); bias != bias_adds_.end())
      values_[bias->second.output] = values_[name];  // the last Add's output: this node writes it
    if (const auto fused = attention_.find(n); fused != attention_.end())
      workspace_[n] = new_storage(std::int64_t(cuda::dense_attention_workspace_bytes(attention_shape(fused->second))), n);
    if (node.op_type() == "Conv") {
      workspace_[n] = new_storage(conv_columns(node, n) * 4, n);
      if (bf16_) conv_bf16_[n] = new_storage(conv_columns(node, n) * 2, n);
    }
    // A value the GEMMs read is converted to bf16 once, at its first GEMM,
    // and the copy kept until its last (a LayerNorm's output feeds q, k and v).
    if (bf16_ && (node.op_type() == "MatMul" || node.op_type() == "Gemm") && !attention_.count(n))
      for (int k = 0; k < 2 && k < node.input_size(); ++k)
        if (const auto it = values_.find(node.input(k)); it != values_.end() && !bf16_values_.count(node.input(k))) {
          if (const auto copy = bf16_copy_.find(node.input(k)); copy != bf16_copy_.end())
            storages_[std::size_t(copy->second)].last = n;
          else
            bf16_copy_[node.input(k)] = new_storage(count(it->second.shape) * 2, n);
        }
  }

  bool read_later(const std::string& name) const {
    for (const auto& node : graph_.proto().node())
      for (const auto& input : node.input())
        if (input == name) return true;
    return std::any_of(graph_.outputs.begin(), graph_.outputs.end(), [&](const auto& o) { return o.name == name; });
  }

  // ---- pass 2: arena offsets ----------------------------------------------

  void place_storages(int node_count) {
    ArenaPlanner arena;
    std::map<int, std::vector<int>> created, released;
    for (int s = 0; s < int(storages_.size()); ++s) {
      created[storages_[std::size_t(s)].first].push_back(s);
      if (storages_[std::size_t(s)].last != kForever) released[storages_[std::size_t(s)].last].push_back(s);
    }
    for (int n = -1; n < node_count; ++n) {
      for (int s : created[n]) storages_[std::size_t(s)].offset = arena.allocate(storages_[std::size_t(s)].bytes);
      for (int s : released[n]) arena.release(storages_[std::size_t(s)].offset, storages_[std::size_t(s)].bytes);
    }
    plan_.arena_size = arena.size();
  }

  // ---- pass 3: steps ---------------------------------------------------------

  float* pointer(const std::string& name) {
    if (const auto it = values_.find(name); it != values_.end())
      return reinterpret_cast<float*>(plan_.arena + storages_[std::size_t(it->second.storage)].offset);
    return upload_floats(name);
  }
  const Shape& shape_of(const std::string& name) const {
    if (const auto it = values_.find(name); it != values_.end()) return it->second.shape;
    return constant(name).shape;
  }
  const HostTensor& constant(const std::string& name) const {
    const auto it = graph_.initializers.find(name);
    if (it == graph_.initializers.end()) throw Error(ErrorCode::internal, fmt::format("value '{}' is unknown", name));
    return it->second;
  }
  bool is_constant(const std::string& name) const { return !values_.count(name); }

  void* upload(const void* data, std::int64_t bytes) {
    void* device = nullptr;
    check_cuda(cudaMalloc(&device, std::size_t(std::max<std::int64_t>(bytes, 4))), "allocating weights");
    plan_.weights.push_back(device);
    check_cuda(cudaMemcpy(device, data, std::size_t(bytes), cudaMemcpyHostToDevice), "uploading weights");
    plan_.weight_size += bytes;
    return device;
  }
  // An initializer as device floats (integer ones, e.g. Where's condition, converted), once.
  float* upload_floats(const std::string& name) {
    if (const auto it = uploaded_.find(name); it != uploaded_.end()) return it->second;
    const HostTensor& t = constant(name);
    std::vector<float> converted;
    if (t.element == Element::i64) converted.assign(t.i.begin(), t.i.end());
    const std::vector<float>& values = t.element == Element::f32 ? t.f : converted;
    float* device = static_cast<float*>(upload(values.data(), std::int64_t(values.size()) * 4));
    uploaded_[name] = device;
    return device;
  }
  const std::vector<std::int64_t>& constant_ints(const onnx::NodeProto& node, int n, int k) const {
    if (k >= node.input_size() || node.input(k).empty()) refuse_node(node, n, fmt::format("input {} is missing", k));
    if (!is_constant(node.input(k)))
      refuse_node(node, n, fmt::format("input {} ('{}') must be a constant", k, node.input(k)));
    const HostTensor& t = constant(node.input(k));
    if (t.element != Element::i64) refuse_node(node, n, fmt::format("input {} must be integer", k));
    return t.i;
  }

  void add_step(const onnx::NodeProto& node, int n, std::function<void(cudaStream_t)> run) {
    plan_.steps.push_back({where(node, n), std::move(run)});
  }

  // `shape` read as the output's index space (numpy broadcasting, aligned right).
  StridedInput broadcast_input(const onnx::NodeProto& node, int n, const std::string& name, const Shape& out) {
    const Shape& shape = shape_of(name);
    if (shape.size() > out.size()) refuse_node(node, n, "an input has more dimensions than the output");
    StridedInput in;
    in.data = pointer(name);
    const Shape strides = contiguous_strides(shape);
    const std::size_t lead = out.size() - shape.size();
    for (std::size_t k = 0; k < shape.size(); ++k) in.strides[lead + k] = shape[k] == 1 ? 0 : strides[k];
    return in;
  }
  OutputShape output_shape(const onnx::NodeProto& node, int n, const Shape& shape) const {
    if (shape.size() > std::size_t(cuda_ops::kMaxRank))
      refuse_node(node, n, fmt::format("rank {} is more than {}", shape.size(), cuda_ops::kMaxRank));
    OutputShape o;
    o.rank = int(shape.size());
    std::copy(shape.begin(), shape.end(), o.sizes);
    return o;
  }

  std::int64_t int_attr(const onnx::NodeProto& node, std::string_view name, std::int64_t fallback) const {
    for (const auto& a : node.attribute())
      if (a.name() == name) return a.i();
    return fallback;
  }
  float float_attr(const onnx::NodeProto& node, std::string_view name, float fallback) const {
    for (const auto& a : node.attribute())
      if (a.name() == name) return a.f();
    return fallback;
  }
  std::vector<std::int64_t> ints_attr(const onnx::NodeProto& node, std::string_view name,
                                      std::vector<std::int64_t> fallback) const {
    for (const auto& a : node.attribute())
      if (a.name() == name) return {a.ints().begin(), a.ints().end()};
    return fallback;
  }
  std::int64_t axis(const onnx::NodeProto& node, int n, std::int64_t value, std::int64_t rank) const {
    if (value < -rank || value >= rank) refuse_node(node, n, fmt::format("axis {} out of range", value));
    return value < 0 ? value + rank : value;
  }

  void plan_node(const onnx::NodeProto& node, int n) {
    const std::string& op = node.op_type();
    if (absorbed_.count(n)) return;  // computed by a fused step
    if (const auto fused = attention_.find(n); fused != attention_.end()) return plan_attention(node, n, fused->second);
    if (const auto chain = chains_.find(n); chain != chains_.end()) return plan_chain(node, n, chain->second);
    if (aliases_input(op) && values_.count(node.input(0)) &&
        values_[node.input(0)].storage == values_[node.output(0)].storage)
      return;  // a view of its input: no work
    if (const auto it = elementwise_operators().find(op); it != elementwise_operators().end())
      return plan_elementwise(node, n, it->second);
    if (op == "MatMul") return plan_matmul(node, n);
    if (op == "Gemm") return plan_gemm(node, n);
    if (op == "Conv") return plan_conv(node, n);
    if (op == "Softmax") return plan_softmax(node, n);
    if (op == "LayerNormalization") return plan_layer_norm(node, n);
    if (op == "ReduceMean") return plan_reduce_mean(node, n);
    if (op == "Transpose") return plan_transpose(node, n);
    if (op == "Slice") return plan_slice(node, n);
    if (op == "Gather") return plan_gather(node, n);
    if (op == "Concat") return plan_concat(node, n);
    refuse_node(node, n, "operator not implemented");
  }

  void plan_elementwise(const onnx::NodeProto& node, int n, Elementwise op) {
    const Shape& out_shape = values_.at(node.output(0)).shape;
    const OutputShape shape = output_shape(node, n, out_shape);
    StridedInput in[3];
    if (op == Elementwise::where) {
      // ONNX's Where(condition, X, Y) is the kernel's c ? a : b.
      in[2] = broadcast_input(node, n, node.input(0), out_shape);
      in[0] = broadcast_input(node, n, node.input(1), out_shape);
      in[1] = broadcast_input(node, n, node.input(2), out_shape);
    } else {
      // Expand's second input is the target shape, not an operand.
      const int operands = op == Elementwise::copy ? 1 : node.input_size();
      for (int k = 0; k < operands && k < 3; ++k) in[k] = broadcast_input(node, n, node.input(k), out_shape);
    }
    float* out = pointer(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::elementwise(op, shape, in[0], in[1], in[2], out, stream), "elementwise");
    });
  }

  // Input k of a MatMul / Gemm as the GEMM reads it: f32 as it is, or bf16 (a
  // constant converted once here; a computed value converted into its copy by
  // a step enqueued before its first GEMM's).
  const void* gemm_operand(const onnx::NodeProto& node, int n, int k) {
    const std::string& name = node.input(k);
    if (!bf16_ || bf16_values_.count(name)) return pointer(name);
    if (is_constant(name)) return upload_bf16(name);
    void* copy = plan_.arena + storages_[std::size_t(bf16_copy_.at(name))].offset;
    if (converted_.insert(name).second) {
      const float* in = pointer(name);
      const std::int64_t elements = count(shape_of(name));
      add_step(node, n, [=](cudaStream_t stream) {
        check_cuda(cuda_ops::convert_f32(in, elements, 1, copy, stream), "converting a GEMM operand to bf16");
      });
    }
    return copy;
  }
  const void* upload_bf16(const std::string& name) {
    if (const auto it = uploaded_bf16_.find(name); it != uploaded_bf16_.end()) return it->second;
    const HostTensor& t = constant(name);
    std::vector<std::uint16_t> bits;
    bits.reserve(std::size_t(t.numel()));
    if (t.element == Element::f32)
      for (float v : t.f) bits.push_back(ref::f32_to_bf16(v));
    else
      for (std::int64_t v : t.i) bits.push_back(ref::f32_to_bf16(float(v)));
    const void* device = upload(bits.data(), std::int64_t(bits.size()) * 2);
    uploaded_bf16_[name] = device;
    return device;
  }
  ref::DType stored_dtype(const std::string& value) const {
    return bf16_values_.count(value) ? ref::DType::bf16 : ref::DType::f32;
  }
  cuda_ops::Store written_as(const std::string& value) const {
    return bf16_values_.count(value) ? cuda_ops::Store::bf16 : cuda_ops::Store::f32;
  }
  cudaDataType operand_type() const { return bf16_ ? CUDA_R_16BF : CUDA_R_32F; }
  std::int64_t operand_bytes() const { return bf16_ ? 2 : 4; }

  void plan_matmul(const onnx::NodeProto& node, int n) {
    if (const auto bias = bias_adds_.find(n); bias != bias_adds_.end()) {
      const Shape& x = shape_of(node.input(0));
      const Shape& w = shape_of(node.input(1));
      if (w[0] != x.back()) refuse_node(node, n, "inner dimensions differ");
      return plan_bias_gemm(node, n, count(x) / x.back(), w[1], x.back(), bias->second);
    }
    Shape a = shape_of(node.input(0)), b = shape_of(node.input(1));
    if (a.size() == 1) a.insert(a.begin(), 1);
    if (b.size() == 1) b.push_back(1);
    const std::int64_t m = a[a.size() - 2], k = a.back(), nn = b.back();
    if (b[b.size() - 2] != k) refuse_node(node, n, "inner dimensions differ");
    const Shape a_batch(a.begin(), a.end() - 2), b_batch(b.begin(), b.end() - 2);
    const Shape& out = values_.at(node.output(0)).shape;
    const std::int64_t batch = count(out) / std::max<std::int64_t>(m * nn, 1);
    auto batch_stride = [&](const Shape& operand_batch, std::int64_t matrix) -> std::int64_t {
      const std::int64_t c = count(operand_batch);
      if (c == 1) return 0;
      if (c == batch) return matrix;  // the same batch dims as the output's (broadcast shapes equal in count)
      refuse_node(node, n, fmt::format("batch dimensions [{}] and [{}] broadcast partly", fmt::join(operand_batch, ", "),
                                       fmt::join(b_batch, ", ")));
    };
    Gemm g{.operands = operand_type(), .m = m, .n = nn, .k = k, .batch = batch};
    g.stride_a = batch_stride(a_batch, m * k);
    g.stride_b = batch_stride(b_batch, k * nn);
    if (g.stride_b == 0 && g.stride_a != 0) {  // a weight: one GEMM over every row of the batch
      g.m = m * batch;
      g.batch = 1;
      g.stride_a = 0;
    }
    const void* pa = gemm_operand(node, n, 0);
    const void* pb = gemm_operand(node, n, 1);
    float* pc = pointer(node.output(0));
    const cublasHandle_t blas = plan_.blas;
    add_step(node, n, [=](cudaStream_t) { g.run(blas, pa, pb, pc); });
  }

  // Row-major out[m, nn] = x W + bias[nn] (+ residual[m, nn]) for node n (a
  // MatMul or a Gemm): x is input 0 ([.., k] rows), W input 1 ([k, nn], or
  // [nn, k] when transposed).
  void plan_bias_gemm(const onnx::NodeProto& node, int n, std::int64_t m, std::int64_t nn, std::int64_t k,
                      const BiasAdd& fused) {
    const float* residual = fused.residual.empty() ? nullptr : pointer(fused.residual);
    const void* x = gemm_operand(node, n, 0);
    const void* w = gemm_operand(node, n, 1);
    float* out = pointer(fused.output);
    const bool bf16_out = bf16_values_.count(fused.output) != 0;
    const void* bias_on_device = bf16_out ? upload_bf16(fused.bias) : static_cast<const void*>(upload_floats(fused.bias));
    auto lt = std::make_unique<LtBiasGemm>(plan_.lt, m, nn, k, fused.weight_transposed, bias_on_device, bf16_out,
                                           plan_.blas_workspace, plan_.blas_workspace_bytes);
    if (bf16_out && !lt->available())  // pass 0d asked cuBLASLt for this very shape
      refuse_node(node, n, "cuBLASLt offers no bf16-output GEMM with a bias for its shape");
    if (lt->available()) {
      const LtBiasGemm* gemm = lt.get();
      plan_.bias_gemms.push_back(std::move(lt));
      add_step(node, n, [=](cudaStream_t stream) { gemm->run(x, w, residual, out, stream); });
      ++plan_.fused_bias;
      plan_.fused_residual += residual != nullptr;
      return;
    }
    // No cuBLASLt algorithm with the epilogue for this shape: the GEMM, then the adds in place.
    const float* bias = upload_floats(fused.bias);
    const Gemm g{.operands = operand_type(), .trans_b = fused.weight_transposed, .m = m, .n = nn, .k = k};
    cuda_ops::OutputShape shape;
    shape.rank = 2;
    shape.sizes[0] = m;
    shape.sizes[1] = nn;
    cuda_ops::StridedInput sum, addend, rows;
    sum.data = out;
    sum.strides[0] = nn;
    sum.strides[1] = 1;
    addend.data = bias;
    addend.strides[1] = 1;
    rows = sum;
    rows.data = residual;
    const cublasHandle_t blas = plan_.blas;
    add_step(node, n, [=](cudaStream_t stream) {
      g.run(blas, x, w, out);
      check_cuda(cuda_ops::elementwise(Elementwise::add, shape, sum, addend, {}, out, stream), "the bias");
      if (residual != nullptr)
        check_cuda(cuda_ops::elementwise(Elementwise::add, shape, sum, rows, {}, out, stream), "the residual");
    });
  }

  void plan_gemm(const onnx::NodeProto& node, int n) {
    const Shape& a = shape_of(node.input(0));
    const Shape& b = shape_of(node.input(1));
    if (a.size() != 2 || b.size() != 2) refuse_node(node, n, "A and B must be matrices");
    const bool trans_a = int_attr(node, "transA", 0) != 0, trans_b = int_attr(node, "transB", 0) != 0;
    const float alpha = float_attr(node, "alpha", 1.0f);
    float beta = float_attr(node, "beta", 1.0f);
    const std::int64_t m = trans_a ? a[1] : a[0], k = trans_a ? a[0] : a[1], nn = trans_b ? b[0] : b[1];
    const Shape& out = values_.at(node.output(0)).shape;
    if (const auto bias = bias_adds_.find(n); bias != bias_adds_.end()) return plan_bias_gemm(node, n, m, nn, k, bias->second);
    float* pc = pointer(node.output(0));
    if (node.input_size() > 2 && !node.input(2).empty() && beta != 0.0f) {
      const OutputShape shape = output_shape(node, n, out);
      const StridedInput bias = broadcast_input(node, n, node.input(2), out);
      add_step(node, n, [=](cudaStream_t stream) {
        check_cuda(cuda_ops::elementwise(Elementwise::copy, shape, bias, {}, {}, pc, stream), "Gemm's C");
      });
    } else {
      beta = 0.0f;
    }
    const Gemm g{.operands = operand_type(), .trans_a = trans_a, .trans_b = trans_b, .m = m, .n = nn, .k = k,
                 .alpha = alpha, .beta = beta};
    const void* pa = gemm_operand(node, n, 0);
    const void* pb = gemm_operand(node, n, 1);
    const cublasHandle_t blas = plan_.blas;
    add_step(node, n, [=](cudaStream_t) { g.run(blas, pa, pb, pc); });
  }

  cuda_ops::Im2col conv_shape(const onnx::NodeProto& node, int n) const {
    const Shape& x = shape_of(node.input(0));
    const Shape& w = shape_of(node.input(1));
    if (x.size() != 4 || w.size() != 4) refuse_node(node, n, "only 2-D convolutions run");
    const std::int64_t groups = int_attr(node, "group", 1);
    if (groups < 1 || x[1] % groups != 0 || w[1] * groups != x[1]) refuse_node(node, n, "channels do not split into groups");
    const auto strides = ints_attr(node, "strides", {1, 1}), dilations = ints_attr(node, "dilations", {1, 1}),
               pads = ints_attr(node, "pads", {0, 0, 0, 0});
    if (strides.size() != 2 || dilations.size() != 2 || pads.size() != 4) refuse_node(node, n, "bad attributes");
    const Shape& out = values_.at(node.output(0)).shape;
    return {int(x[1] / groups), int(x[2]), int(x[3]), int(w[2]), int(w[3]), int(strides[0]), int(strides[1]), int(pads[0]),
            int(pads[1]), int(dilations[0]), int(dilations[1]), int(out[2]), int(out[3])};
  }
  std::int64_t conv_columns(const onnx::NodeProto& node, int n) const {
    const cuda_ops::Im2col s = conv_shape(node, n);
    return std::int64_t(s.channels) * s.kernel_h * s.kernel_w * s.out_h * s.out_w;
  }

  void plan_conv(const onnx::NodeProto& node, int n) {
    const cuda_ops::Im2col s = conv_shape(node, n);
    const Shape& x = shape_of(node.input(0));
    const Shape& out = values_.at(node.output(0)).shape;
    const std::int64_t groups = int_attr(node, "group", 1);
    const std::int64_t images = x[0], group_out = out[1] / groups, pixels = std::int64_t(s.out_h) * s.out_w,
                       patch = std::int64_t(s.channels) * s.kernel_h * s.kernel_w;
    const float* px = pointer(node.input(0));
    const auto* pw = static_cast<const std::byte*>(bf16_ ? upload_bf16(node.input(1)) : pointer(node.input(1)));
    float* columns = reinterpret_cast<float*>(plan_.arena + storages_[std::size_t(workspace_.at(n))].offset);
    void* operand =
        bf16_ ? static_cast<void*>(plan_.arena + storages_[std::size_t(conv_bf16_.at(n))].offset) : columns;
    float* py = pointer(node.output(0));
    const std::int64_t group_in = std::int64_t(s.channels) * s.height * s.width, weight_bytes = operand_bytes();
    // out[M, P] = W[M, patch] columns[patch, P], M the group's output channels
    const Gemm gemm{.operands = operand_type(), .m = group_out, .n = pixels, .k = patch};
    const cublasHandle_t blas = plan_.blas;
    const bool bf16 = bf16_;
    add_step(node, n, [=](cudaStream_t stream) {
      for (std::int64_t i = 0; i < images; ++i)
        for (std::int64_t g = 0; g < groups; ++g) {
          check_cuda(cuda_ops::im2col(s, px + (i * groups + g) * group_in, columns, stream), "im2col");
          if (bf16) check_cuda(cuda_ops::convert_f32(columns, patch * pixels, 1, operand, stream), "im2col to bf16");
          gemm.run(blas, pw + g * group_out * patch * weight_bytes, operand, py + (i * groups + g) * group_out * pixels);
        }
    });
    if (node.input_size() > 2 && !node.input(2).empty()) {
      const OutputShape shape = output_shape(node, n, out);
      StridedInput y;
      y.data = py;
      const Shape strides = contiguous_strides(out);
      std::copy(strides.begin(), strides.end(), y.strides);
      StridedInput bias;
      bias.data = pointer(node.input(2));
      bias.strides[1] = 1;  // [M] along the channel axis
      add_step(node, n, [=](cudaStream_t stream) {
        check_cuda(cuda_ops::elementwise(Elementwise::add, shape, y, bias, {}, py, stream), "Conv's bias");
      });
    }
  }

  void plan_softmax(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    const std::int64_t a = axis(node, n, int_attr(node, "axis", -1), std::int64_t(x.size()));
    const std::int64_t outer = count(Shape(x.begin(), x.begin() + a)), length = x[std::size_t(a)],
                       inner = count(Shape(x.begin() + a + 1, x.end()));
    const float* in = pointer(node.input(0));
    float* out = pointer(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::softmax_axis(in, outer, length, inner, out, stream), "softmax");
    });
  }

  void plan_layer_norm(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    const std::int64_t a = axis(node, n, int_attr(node, "axis", -1), std::int64_t(x.size()));
    const std::int64_t cols = count(Shape(x.begin() + a, x.end())), rows = count(x) / std::max<std::int64_t>(cols, 1);
    if (node.input_size() < 2 || count(shape_of(node.input(1))) != cols)
      refuse_node(node, n, "Scale must hold one value per normalized element");
    const bool has_bias = node.input_size() > 2 && !node.input(2).empty();
    if (has_bias && count(shape_of(node.input(2))) != cols) refuse_node(node, n, "B must hold one value per normalized element");
    const float eps = float_attr(node, "epsilon", 1e-5f);
    const float* in = pointer(node.input(0));
    const float* scale = pointer(node.input(1));
    const float* bias = has_bias ? pointer(node.input(2)) : nullptr;
    float* out = pointer(node.output(0));
    const cuda_ops::Store store = written_as(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::layer_norm_rows(in, scale, bias, rows, cols, eps, out, store, stream), "layer_norm");
    });
  }

  void plan_reduce_mean(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    const std::int64_t rank = std::int64_t(x.size());
    std::vector<std::int64_t> axes = ints_attr(node, "axes", {});
    if (axes.empty()) axes.resize(std::size_t(rank)), std::iota(axes.begin(), axes.end(), 0);
    for (auto& v : axes) v = axis(node, n, v, rank);
    std::sort(axes.begin(), axes.end());
    for (std::size_t k = 0; k < axes.size(); ++k)
      if (axes[k] != rank - std::int64_t(axes.size()) + std::int64_t(k))
        refuse_node(node, n, "only a mean over the trailing axes is implemented");
    const std::int64_t cols = count(Shape(x.end() - std::ptrdiff_t(axes.size()), x.end())),
                       rows = count(x) / std::max<std::int64_t>(cols, 1);
    const float* in = pointer(node.input(0));
    float* out = pointer(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) { check_cuda(cuda_ops::mean_rows(in, rows, cols, out, stream), "mean"); });
  }

  void plan_transpose(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    std::vector<std::int64_t> reversed(x.size());
    std::iota(reversed.rbegin(), reversed.rend(), 0);
    const std::vector<std::int64_t> perm = ints_attr(node, "perm", reversed);
    const Shape& out = values_.at(node.output(0)).shape;
    const OutputShape shape = output_shape(node, n, out);
    if (perm.size() != x.size()) refuse_node(node, n, "perm does not match the rank");
    const Shape strides = contiguous_strides(x);
    StridedInput in;
    in.data = pointer(node.input(0));
    for (std::size_t k = 0; k < perm.size(); ++k) in.strides[k] = strides[std::size_t(axis(node, n, perm[k], std::int64_t(x.size())))];
    float* py = pointer(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::elementwise(Elementwise::copy, shape, in, {}, {}, py, stream), "transpose");
    });
  }

  void plan_slice(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    const std::int64_t rank = std::int64_t(x.size());
    const auto& starts = constant_ints(node, n, 1);
    const auto& ends = constant_ints(node, n, 2);
    std::vector<std::int64_t> axes(starts.size()), steps(starts.size(), 1);
    std::iota(axes.begin(), axes.end(), 0);
    if (node.input_size() > 3 && !node.input(3).empty()) axes = constant_ints(node, n, 3);
    if (node.input_size() > 4 && !node.input(4).empty()) steps = constant_ints(node, n, 4);
    if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
      refuse_node(node, n, "starts, ends, axes and steps differ in length");
    const Shape& out = values_.at(node.output(0)).shape;
    const OutputShape shape = output_shape(node, n, out);
    const Shape strides = contiguous_strides(x);
    StridedInput in;
    in.data = pointer(node.input(0));
    for (std::size_t k = 0; k < x.size(); ++k) in.strides[k] = strides[k];
    for (std::size_t j = 0; j < starts.size(); ++j) {
      const std::int64_t a = axis(node, n, axes[j], rank), d = x[std::size_t(a)], step = steps[j];
      if (step == 0) refuse_node(node, n, "a step of 0");
      std::int64_t start = starts[j] < 0 ? starts[j] + d : starts[j];
      start = step > 0 ? std::clamp<std::int64_t>(start, 0, d) : std::clamp<std::int64_t>(start, 0, d - 1);
      in.offset += start * strides[std::size_t(a)];
      in.strides[a] = strides[std::size_t(a)] * step;
    }
    float* py = pointer(node.output(0));
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::elementwise(Elementwise::copy, shape, in, {}, {}, py, stream), "slice");
    });
  }

  void plan_gather(const onnx::NodeProto& node, int n) {
    const Shape& x = shape_of(node.input(0));
    const std::int64_t a = axis(node, n, int_attr(node, "axis", 0), std::int64_t(x.size()));
    std::vector<std::int64_t> indices = constant_ints(node, n, 1);
    const std::int64_t size = x[std::size_t(a)];
    for (auto& i : indices) {
      if (i < -size || i >= size) refuse_node(node, n, fmt::format("index {} is out of range for {}", i, size));
      if (i < 0) i += size;
    }
    const std::int64_t outer = count(Shape(x.begin(), x.begin() + a)), inner = count(Shape(x.begin() + a + 1, x.end()));
    const std::int64_t* device_indices =
        static_cast<const std::int64_t*>(upload(indices.data(), std::int64_t(indices.size()) * 8));
    const float* in = pointer(node.input(0));
    float* out = pointer(node.output(0));
    const std::int64_t index_count = std::int64_t(indices.size());
    add_step(node, n, [=](cudaStream_t stream) {
      check_cuda(cuda_ops::gather_axis(in, device_indices, outer, size, index_count, inner, out, stream), "gather");
    });
  }

  void plan_concat(const onnx::NodeProto& node, int n) {
    const Shape& out = values_.at(node.output(0)).shape;
    const std::int64_t a = axis(node, n, int_attr(node, "axis", 0), std::int64_t(out.size()));
    const std::int64_t outer = count(Shape(out.begin(), out.begin() + a)),
                       inner = count(Shape(out.begin() + a + 1, out.end()));
    float* py = pointer(node.output(0));
    std::int64_t at = 0;
    for (const auto& name : node.input()) {
      const std::int64_t length = shape_of(name)[std::size_t(a)];
      const float* src = pointer(name);
      float* dst = py + at * inner;
      const std::size_t width = std::size_t(length * inner) * 4, dst_pitch = std::size_t(out[std::size_t(a)] * inner) * 4;
      if (width > 0)
        add_step(node, n, [=](cudaStream_t stream) {
          check_cuda(cudaMemcpy2DAsync(dst, dst_pitch, src, width, width, std::size_t(outer), cudaMemcpyDeviceToDevice, stream),
                     "concat");
        });
      at += length;
    }
  }

  const Graph& graph_;
  const bool bf16_;  // GEMM operands in bf16 (Precision::bf16_tensor_cores)
  CudaExecutor::Plan& plan_;
  std::vector<Storage> storages_;
  std::map<std::string, Value> values_;   // computed values (and inputs)
  std::map<int, int> workspace_;          // Conv node -> its im2col columns; fused attention -> its gathered q, k, v
  std::map<std::string, float*> uploaded_;
  std::map<std::string, int> bf16_copy_;  // a value GEMMs read -> the storage of its bf16 copy
  std::set<std::string> bf16_values_;     // values only bf16 readers take, stored as bf16 only (passes 0c, 0d)
  std::set<std::string> converted_;       // values whose conversion step is planned
  std::map<int, int> conv_bf16_;          // Conv node -> its columns' bf16 copy
  std::map<std::string, const void*> uploaded_bf16_;
  std::map<int, Attention> attention_;  // node whose output a fused step writes -> the pattern
  std::map<int, Chain> chains_;         // a chain's last node -> the chain
  std::map<int, int> attention_of_;     // a node absorbed into fused attention -> that attention's node
  std::map<int, int> chain_of_;         // a chain's node -> the chain's last node
  std::set<int> absorbed_;              // nodes a fused step computes (skipped)
  std::map<int, BiasAdd> bias_adds_;    // MatMul node -> the Add it computes too
  Uses uses_;
};

}  // namespace

CudaExecutor::CudaExecutor(std::unique_ptr<Plan> plan) : plan_(std::move(plan)) {}
CudaExecutor::~CudaExecutor() = default;

Result<std::unique_ptr<CudaExecutor>> CudaExecutor::create(const Graph& graph, Precision precision) {
  return guard_result<std::unique_ptr<CudaExecutor>>([&] {
    auto plan = std::make_unique<Plan>();
    check_blas(cublasCreate(&plan->blas), "cublasCreate");
    constexpr std::size_t kBlasWorkspace = std::size_t(32) << 20;  // what cuBLAS asks for on Hopper
    check_cuda(cudaMalloc(&plan->blas_workspace, kBlasWorkspace), "allocating cuBLAS's workspace");
    check_blas(cublasSetWorkspace(plan->blas, plan->blas_workspace, kBlasWorkspace), "cublasSetWorkspace");
    plan->blas_workspace_bytes = kBlasWorkspace;
    check_blas(cublasLtCreate(&plan->lt), "cublasLtCreate");
    Planner(graph, precision, *plan).build();
    return std::unique_ptr<CudaExecutor>(new CudaExecutor(std::move(plan)));
  });
}

float* CudaExecutor::input(std::size_t k) const { return plan_->inputs.at(k); }
const float* CudaExecutor::output(std::size_t k) const { return plan_->outputs.at(k); }
std::int64_t CudaExecutor::arena_bytes() const { return plan_->arena_size; }
std::int64_t CudaExecutor::weight_bytes() const { return plan_->weight_size; }
int CudaExecutor::fused_attention() const { return plan_->fused_attention; }
int CudaExecutor::fused_elementwise() const { return plan_->fused_elementwise; }
int CudaExecutor::fused_bias() const { return plan_->fused_bias; }
int CudaExecutor::fused_residual() const { return plan_->fused_residual; }
int CudaExecutor::bf16_outputs() const { return plan_->bf16_outputs; }
int CudaExecutor::activations() const { return plan_->activations; }

Status CudaExecutor::run(void* stream_handle) {
  return guard([&] {
    const auto stream = static_cast<cudaStream_t>(stream_handle);
    check_blas(cublasSetStream(plan_->blas, stream), "cublasSetStream");
    if (stream == nullptr) {  // the legacy default stream cannot be captured
      plan_->enqueue(stream);
      return;
    }
    if (plan_->graph == nullptr) {
      check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "starting the graph's capture");
      cudaGraph_t graph = nullptr;
      try {
        plan_->enqueue(stream);
      } catch (...) {
        if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr) cudaGraphDestroy(graph);
        throw;
      }
      check_cuda(cudaStreamEndCapture(stream, &graph), "capturing the graph");
      const cudaError_t instantiated = cudaGraphInstantiate(&plan_->graph, graph, 0);
      cudaGraphDestroy(graph);
      check_cuda(instantiated, "instantiating the graph");
    }
    check_cuda(cudaGraphLaunch(plan_->graph, stream), "launching the graph");
  });
}

Status CudaExecutor::set_input(std::size_t k, std::span<const float> values, void* stream) {
  return guard([&] {
    if (k >= plan_->inputs.size() || std::int64_t(values.size()) != plan_->input_sizes[k])
      throw Error(ErrorCode::invalid_argument, fmt::format("input {} takes {} values, got {}", k,
                                                           k < plan_->inputs.size() ? plan_->input_sizes[k] : 0,
                                                           values.size()));
    check_cuda(cudaMemcpyAsync(plan_->inputs[k], values.data(), values.size() * 4, cudaMemcpyHostToDevice,
                               static_cast<cudaStream_t>(stream)),
               "copying an input");
  });
}

Status CudaExecutor::copy_output(std::size_t k, DType dtype, void* out, void* stream_handle) const {
  return guard([&] {
    if (k >= plan_->outputs.size()) throw Error(ErrorCode::invalid_argument, fmt::format("no output {}", k));
    const auto stream = static_cast<cudaStream_t>(stream_handle);
    const std::int64_t n = plan_->output_sizes[k];
    if (dtype == DType::f32)
      check_cuda(cudaMemcpyAsync(out, plan_->outputs[k], std::size_t(n) * 4, cudaMemcpyDeviceToDevice, stream),
                 "copying an output");
    else if (dtype == DType::bf16 || dtype == DType::f16)
      check_cuda(cuda_ops::convert_f32(plan_->outputs[k], n, dtype == DType::bf16 ? 1 : 2, out, stream),
                 "converting an output");
    else
      throw Error(ErrorCode::invalid_argument, "outputs are written as f32, bf16 or f16");
  });
}

}  // namespace hostrun::onnx_vision
