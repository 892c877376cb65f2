// The head of a pass, on its sampled rows only: gather their residual rows,
// the final norm, the LM head (f32 logits), suppressed ids, sampling on the
// GPU; then the sampled ids back to the step's pinned results, and, when a
// sequence asked for logprobs or logits, the logits to the host.
#include <fmt/format.h>

#include <algorithm>

#include "cuda/rmsnorm.hpp"
#include "errors.hpp"
#include "llama_cuda_model.hpp"
#include "llama_kernels.hpp"
#include "ref/logprobs.hpp"

namespace hostrun::llama_cuda {

void LlamaCudaModel::run_head(const StepInput& input, const Pass& pass, bool read_now, StepOutput& output) {
  auto* const results = reinterpret_cast<int32_t*>(pinned_results_[parity_].data());
  // max_batch rows at a time (the logits and sampling workspace hold that many).
  for (int32_t chunk_start = 0, chunk = 0; chunk_start < pass.num_rows; chunk_start += int32_t(max_batch_), ++chunk) {
    const int32_t chunk_rows = int32_t(std::min<int64_t>(max_batch_, pass.num_rows - chunk_start));
    enqueue_head(pass, chunk_start, chunk_rows, chunk, read_now);
    if (read_now) {
      // The logits buffer holds one chunk: read it before the next overwrites it.
      read_back_ids(pass, chunk_start, chunk_rows);
      check_cuda(cudaMemcpyAsync(results + step_rows_, workspace_.error_flag, sizeof(int32_t), cudaMemcpyDeviceToHost,
                                 stream_),
                 "reading the error flag");
      check_cuda(cudaStreamSynchronize(stream_), "step");
      report_rows(input, pass, chunk_start, chunk_rows, output);
    }
  }
  if (!read_now) read_back_ids(pass, 0, pass.num_rows);
}

// Rows [chunk_start, + chunk_rows) of the pass; the ids go to sampled_ at the step's row.
void LlamaCudaModel::enqueue_head(const Pass& pass, int32_t chunk_start, int32_t chunk_rows, int32_t chunk,
                                  bool read_now) {
  const cuda::DType kdtype = dtype_ == DType::f16 ? cuda::DType::f16 : cuda::DType::bf16;
  const int hidden = int(config_.hidden_size);
  const int64_t vocab = config_.vocab_size;
  const int32_t* chunk_row_tokens = pass.row_tokens + chunk_start;
  profile_.mark(Op::lm_head, stream_);
  check_cuda(gather_rows(workspace_.residual, hidden, chunk_row_tokens, chunk_rows, workspace_.last_residual, stream_),
             "gather_rows");
  check_cuda(gather_rows(workspace_.delta, hidden, chunk_row_tokens, chunk_rows, workspace_.last_delta, stream_),
             "gather_rows");
  check_cuda(cuda::add_rmsnorm(workspace_.last_residual, workspace_.last_delta, final_norm_, kdtype, chunk_rows, hidden,
                               float(config_.rms_norm_eps), workspace_.last_normed, stream_),
             "add_rmsnorm");
  gemm_->multiply(workspace_.last_normed, hidden, lm_head_, chunk_rows, int(vocab), hidden, workspace_.logits, vocab,
                  true, stream_);
  if (read_now) {
    profile_.mark(Op::read_back, stream_);
    // The raw logits (before suppression), as llama_cpu reports them.
    if (pinned_logits_.bytes() == 0)
      pinned_logits_.allocate(size_t(max_batch_) * size_t(vocab) * sizeof(float), "logits read-back");
    check_cuda(cudaMemcpyAsync(pinned_logits_.data(), workspace_.logits,
                               size_t(chunk_rows) * size_t(vocab) * sizeof(float), cudaMemcpyDeviceToHost, stream_),
               "copying logits");
  }
  profile_.mark(Op::sampling, stream_);
  const int32_t pair_begin = pass.suppressed_begin[size_t(chunk)];
  const int32_t pair_end = pass.suppressed_begin[size_t(chunk) + 1];
  check_cuda(suppress_ids(workspace_.logits, vocab, pass.suppressed + 2 * pair_begin, pair_end - pair_begin, stream_),
             "suppress_ids");
  cuda::SamplingBatch sampling;
  sampling.rows = chunk_rows;
  sampling.vocab_size = int(vocab);
  sampling.logits = workspace_.logits;
  sampling.logits_row_stride = vocab;
  sampling.params = pass.sampling + chunk_start;
  sampling.history_ids = pass.history_ids;
  sampling.tokens_out = sampled_ + pass.first_row + chunk_start;
  sampling.error_flag = workspace_.error_flag;
  check_cuda(cuda::sample_tokens(sampling, workspace_.sampling, workspace_.sizes.sampling_bytes, stream_),
             "sample_tokens");
}

// The pass's ids [row, row + rows) to the step's pinned results (never inside
// a graph: the pinned buffer depends on the step's parity).
void LlamaCudaModel::read_back_ids(const Pass& pass, int32_t row, int32_t rows) {
  if (rows == 0) return;
  auto* const results = reinterpret_cast<int32_t*>(pinned_results_[parity_].data());
  check_cuda(cudaMemcpyAsync(results + pass.first_row + row, sampled_ + pass.first_row + row,
                             size_t(rows) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
             "reading sampled tokens");
}

// After the chunk's synchronize: a kernel's error, else its ids, logprobs and logits into `output`.
void LlamaCudaModel::report_rows(const StepInput& input, const Pass& pass, int32_t chunk_start, int32_t chunk_rows,
                                 StepOutput& output) {
  const auto* const results = reinterpret_cast<const int32_t*>(pinned_results_[parity_].data());
  if (const int32_t flag = results[step_rows_]; flag != 0) {
    cudaMemsetAsync(workspace_.error_flag, 0, sizeof(int32_t), stream_);
    fail(ErrorCode::internal, fmt::format("step: a kernel reported {}", ref::status_name(ref::Status(flag))));
  }
  const int64_t vocab = config_.vocab_size;
  for (int32_t r = 0; r < chunk_rows; ++r) {
    const StepSequence& seq = input.sequences[size_t(pass.row_sequence[size_t(chunk_start + r)])];
    const TokenId chosen = results[pass.first_row + chunk_start + r];
    output.sampled.push_back(chosen);
    const float* logits = reinterpret_cast<const float*>(pinned_logits_.data()) + size_t(r) * size_t(vocab);
    if (pass.any_logprobs) {
      TokenLogprob reported;
      reported.id = chosen;
      if (seq.sampling->top_logprobs >= 0) {
        const size_t num_top = std::min(size_t(seq.sampling->top_logprobs), size_t(vocab));
        std::vector<ref::TokenLogprob> top(num_top);
        ref::TokenLogprob chosen_logprob;
        size_t rank = 0;
        if (ref::token_logprobs(logits, size_t(vocab), chosen, num_top, &chosen_logprob, &rank, top.data()) !=
            ref::Status::ok)
          fail(ErrorCode::internal, fmt::format("step: logprobs of token {} failed", chosen));
        reported.logprob = chosen_logprob.logprob;
        for (const auto& entry : top) reported.top.emplace_back(entry.token_id, entry.logprob);
      }
      output.logprobs.push_back(std::move(reported));
    }
    if (pass.any_logits) {
      output.logits.emplace_back();
      if (seq.return_logits) output.logits.back().assign(logits, logits + vocab);
    }
  }
}

}  // namespace hostrun::llama_cuda
