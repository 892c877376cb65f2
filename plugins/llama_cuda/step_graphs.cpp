// CUDA graphs of small decode passes (llama_cuda_model.hpp says which passes
// qualify and why): one graph per (sequences, attention plan context),
// captured the first time such a pass runs and replayed after every later
// pass's upload of its index arrays to graph_arena_.
#include <fmt/format.h>

#include "errors.hpp"
#include "llama_cuda_model.hpp"

namespace hostrun::llama_cuda {

bool LlamaCudaModel::replay_graph(const StepInput& input, const Pass& pass) {
  const auto key = std::make_pair(pass.batch.num_sequences, pass.batch.max_context_len);
  auto found = graphs_.find(key);
  if (found == graphs_.end()) {
    std::unique_ptr<GraphExec> made = capture_graph([&] {
      enqueue_layers(input, pass);
      enqueue_head(pass, 0, pass.num_rows, 0, false);
    });
    if (!made) return false;
    found = graphs_.emplace(key, std::move(made)).first;
  }
  profile_.mark(Op::graph, stream_);
  check_cuda(cudaGraphLaunch(found->second->get(), stream_), "cudaGraphLaunch");
  return true;
}

std::unique_ptr<GraphExec> LlamaCudaModel::capture_graph(const std::function<void()>& enqueue) {
  // Nothing runs while capturing: the launches are recorded, and the graph is
  // replayed after the (already enqueued) upload of this pass's arrays.
  profile_.pause(true);
  std::string failure;
  cudaError_t began = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (began != cudaSuccess) {
    failure = fmt::format("cudaStreamBeginCapture: {}", cudaGetErrorString(began));
  } else {
    try {
      enqueue();
    } catch (const std::exception& error) {
      failure = error.what();
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (failure.empty() && ended != cudaSuccess) failure = fmt::format("cudaStreamEndCapture: {}", cudaGetErrorString(ended));
    if (failure.empty()) {
      cudaGraphExec_t exec = nullptr;
      const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
      if (instantiated == cudaSuccess) {
        cudaGraphDestroy(graph);
        profile_.pause(false);
        return std::make_unique<GraphExec>(exec);
      }
      failure = fmt::format("cudaGraphInstantiate: {}", cudaGetErrorString(instantiated));
    }
    if (graph) cudaGraphDestroy(graph);
  }
  profile_.pause(false);
  cudaGetLastError();  // clear the (non-sticky) error a failed capture leaves behind
  log_.warn("CUDA graph capture failed ({}); decode passes run without graphs from now on", failure);
  use_graphs_ = false;
  graphs_.clear();
  return nullptr;
}

void LlamaCudaModel::clear_graphs() { graphs_.clear(); }

}  // namespace hostrun::llama_cuda
