// Sampling on the GPU, one token per row of logits (twin of ref/sampling.hpp,
// same steps, same order, same random numbers):
//
//   1. repetition penalty over prompt + generated ids (each distinct id once)
//   2. presence / frequency penalties over generated ids
//   3. temperature < 1e-5: greedy argmax, ties to the lowest id; else l / T
//   4-6. keep the prefix of the (logit desc, id asc) order that top-k, top-p
//        and min-p allow (top-p mass and min-p ratios in double, as ref)
//   7. argmax over kept ids of  double(l) + gumbel(seed, step, id)  with
//      Philox4x32-10 exactly as ref/rng.hpp (key = seed, counter = {id / 4,
//      stream 0, step lo, step hi}, word id % 4, u = (word + 0.5) 2^-32)
//
// The kept set is found without sorting: a 64-bit key (order-preserving bits
// of the f32 logit, then the complement of the id) makes the order total, and
// an 8-bit radix select over that key finds the element of a given rank
// (top-k, min-p) or where the cumulative softmax mass first reaches
// top_p * total (top-p, bins summed in double). Only the summation order of
// the top-p mass differs from ref (its sequential sum vs. per-bin sums), so
// tokens agree except where the nucleus boundary is a floating-point near-tie
// (relative 1e-15).
//
// Logprobs are not computed here: they are rare, and the caller copies the raw
// logits row to the host and calls ref::token_logprobs (DESIGN.md allows
// copying logits when asked).
#pragma once

#include <cstddef>

#include "cuda/dtype.hpp"

namespace hostrun::cuda {

// Per row, in device memory. Same meaning and disabled values as
// ref::SamplingParams; the history is a slice of SamplingBatch::history_ids.
struct SamplingRow {
  float temperature = 1.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::int32_t prompt_offset = 0;  // prompt ids: history_ids[prompt_offset, +num_prompt_ids)
  std::int32_t num_prompt_ids = 0;
  std::int32_t generated_offset = 0;  // generated ids: history_ids[generated_offset, +num_generated_ids)
  std::int32_t num_generated_ids = 0;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // index of the token being generated within its request
};

struct SamplingBatch {
  int rows = 0;
  int vocab_size = 0;
  const float* logits = nullptr;  // [rows, logits_row_stride], f32, not modified
  std::int64_t logits_row_stride = 0;
  const SamplingRow* params = nullptr;       // [rows]
  const std::int32_t* history_ids = nullptr;  // may be null when no row has a history
  std::int32_t* tokens_out = nullptr;         // [rows]
  // A history id outside [0, vocab_size) is ignored and sets
  // Status::token_id_out_of_range here (ref returns that status instead).
  std::int32_t* error_flag = nullptr;
};

// Penalised logits and per-id counts, [rows, vocab] each (only rows with
// penalties touch theirs, and only the history's entries of the counts).
std::size_t sampling_workspace_bytes(int rows, int vocab_size);

// One block of 1024 threads per row. Never allocates or synchronizes.
cudaError_t sample_tokens(const SamplingBatch& batch, void* workspace, std::size_t workspace_bytes,
                          cudaStream_t stream);

}  // namespace hostrun::cuda
