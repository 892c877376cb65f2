// A pass's index arrays: the paged layout (hostrun::PagedLayout, the SDK's
// one copy of it), the sampled rows' parameters, penalty histories and
// suppressed ids, and which tokens are the previous step's samples. They are
// written into the step's pinned arena and sent to the device in one copy;
// the Pass names where each array landed.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "errors.hpp"
#include "llama_cuda_model.hpp"

namespace hostrun::llama_cuda {

namespace {

size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Byte offsets of a pass's arrays in its arena, each 16-byte aligned. A
// graphed pass sizes them for graph_max_sequences sequences (one token each)
// and graph_blocks_ blocks, so every such pass has the same offsets.
struct ArenaSections {
  size_t token_ids = 0, positions = 0, slot_mapping = 0, query_start = 0, context_lens = 0, block_tables = 0;
  size_t row_tokens = 0, sampling = 0, history = 0, suppressed = 0, previous = 0;
  size_t bytes = 0;

  ArenaSections(size_t token_slots, size_t sequence_slots, size_t block_entries, size_t row_slots, size_t history_ids,
                size_t suppressed_pairs) {
    token_ids = add(token_slots * sizeof(int32_t));
    positions = add(token_slots * sizeof(int32_t));
    slot_mapping = add(token_slots * sizeof(int32_t));
    query_start = add((sequence_slots + 1) * sizeof(int32_t));
    context_lens = add(sequence_slots * sizeof(int32_t));
    block_tables = add(block_entries * sizeof(int32_t));
    row_tokens = add(row_slots * sizeof(int32_t));
    sampling = add(row_slots * sizeof(cuda::SamplingRow));
    history = add(history_ids * sizeof(int32_t));
    suppressed = add(suppressed_pairs * 2 * sizeof(int32_t));
    previous = add(token_slots * sizeof(int32_t));
  }

 private:
  size_t add(size_t size) {
    const size_t at = bytes;
    bytes += align16(size);
    return at;
  }
};

template <typename T>
void put(std::byte* arena, size_t at, const std::vector<T>& values) {
  std::memcpy(arena + at, values.data(), values.size() * sizeof(T));
}

cuda::SamplingRow sampling_row(const StepSequence& seq) {
  const SamplingParams& sp = *seq.sampling;
  cuda::SamplingRow row;
  row.temperature = sp.temperature;
  row.top_k = sp.top_k;
  row.top_p = sp.top_p;
  row.min_p = sp.min_p;
  row.repetition_penalty = sp.repetition_penalty;
  row.presence_penalty = sp.presence_penalty;
  row.frequency_penalty = sp.frequency_penalty;
  row.seed = seq.rng_seed;
  row.step = seq.rng_offset;
  return row;
}

}  // namespace

size_t LlamaCudaModel::graph_arena_bytes() const {
  const size_t slots = size_t(graph_max_sequences);
  return ArenaSections(slots, slots, slots * size_t(graph_blocks_), slots, 0, 0).bytes;
}

Pass LlamaCudaModel::lay_out_pass(const StepInput& input, std::span<const StepPiece> pieces, int32_t first_row) {
  Pass pass;
  pass.pieces = pieces;
  pass.first_row = first_row;
  for (const StepSequence& seq : input.sequences)
    if (seq.sample) {
      pass.any_logprobs |= seq.sampling->top_logprobs >= 0;
      pass.any_logits |= seq.return_logits;
    }
  size_t history_ids = 0, suppressed_pairs = 0;
  pass.decode = true;
  for (const StepPiece& p : pieces) {
    const StepSequence& seq = input.sequences[size_t(p.sequence)];
    pass.decode &= p.count == 1;
    pass.has_embeddings |= !seq.embeddings.empty();
    pass.has_previous |= p.first == 0 && seq.previous_sample >= 0;
    if (p.sample) {
      ++pass.num_rows;
      if (seq.sampling->has_penalties()) history_ids += seq.history.size();
      suppressed_pairs += seq.suppressed.size();
    }
  }
  const int32_t num_sequences = int32_t(pieces.size());
  const bool graph_shaped = use_graphs_ && first_row == 0 && pass.decode && num_sequences <= graph_max_sequences &&
                            pass.num_rows == num_sequences && pass.num_rows <= max_batch_ && !pass.any_logprobs &&
                            !pass.any_logits && history_ids == 0 && suppressed_pairs == 0 && !pass.has_embeddings;
  PagedLayout& layout = paged_layout_;
  layout.build(input, pieces, block_tokens_, graph_shaped ? graph_max_sequences : 0, graph_shaped ? graph_blocks_ : 0);
  pass.graphed = graph_shaped && layout.max_blocks <= graph_blocks_;
  pass.num_tokens = layout.num_tokens();
  pass.token_slots = pass.graphed ? graph_max_sequences : pass.num_tokens;
  const int32_t sequence_slots = int32_t(layout.context_lens.size());
  const ArenaSections at(size_t(pass.token_slots), size_t(sequence_slots), layout.block_tables.size(),
                         size_t(pass.graphed ? graph_max_sequences : pass.num_rows), history_ids, suppressed_pairs);
  profile_.begin_pass(pass.decode);

  // The step's pinned arena: uploads of this step's earlier passes may still
  // wait in the stream, so each pass takes the next free part; when none is
  // left, wait for the stream first.
  PinnedBuffer& pinned_arena = pinned_arena_[parity_];
  if (pinned_arena_used_ + at.bytes > pinned_arena.bytes() || at.bytes > device_arena_.bytes()) {
    check_cuda(cudaStreamSynchronize(stream_), "waiting for earlier uploads");
    pinned_arena_used_ = 0;
    const size_t grown = std::max<size_t>(at.bytes * 2, size_t(1) << 20);
    if (at.bytes > pinned_arena.bytes()) pinned_arena.allocate(grown, "the step's index arrays");
    if (at.bytes > device_arena_.bytes()) device_arena_.allocate(grown, "the step's index arrays");
  }
  std::byte* const staged = pinned_arena.data() + pinned_arena_used_;
  pinned_arena_used_ += (at.bytes + 255) / 256 * 256;
  std::memset(staged, 0, at.bytes);
  put(staged, at.token_ids, layout.token_ids);
  put(staged, at.positions, layout.positions);
  put(staged, at.slot_mapping, layout.slot_mapping);
  put(staged, at.query_start, layout.query_start);
  put(staged, at.context_lens, layout.context_lens);
  put(staged, at.block_tables, layout.block_tables);

  auto* previous = reinterpret_cast<int32_t*>(staged + at.previous);
  std::fill_n(previous, pass.token_slots, -1);
  auto* row_tokens = reinterpret_cast<int32_t*>(staged + at.row_tokens);
  auto* sampling = reinterpret_cast<cuda::SamplingRow*>(staged + at.sampling);
  auto* history = reinterpret_cast<int32_t*>(staged + at.history);
  auto* suppressed = reinterpret_cast<int32_t*>(staged + at.suppressed);
  pass.suppressed_begin.assign(1, 0);
  int32_t row = 0, history_at = 0, pair = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const StepPiece& p = pieces[i];
    const StepSequence& seq = input.sequences[size_t(p.sequence)];
    if (p.first == 0 && seq.previous_sample >= 0) previous[layout.query_start[i]] = seq.previous_sample;
    if (!p.sample) continue;
    row_tokens[row] = layout.query_start[i + 1] - 1;
    cuda::SamplingRow& params = sampling[row];
    params = sampling_row(seq);
    if (seq.sampling->has_penalties()) {
      const int32_t prompt = int32_t(seq.history.size() - seq.generated.size());
      std::copy(seq.history.begin(), seq.history.end(), history + history_at);
      params.prompt_offset = history_at;
      params.num_prompt_ids = prompt;
      params.generated_offset = history_at + prompt;
      params.num_generated_ids = int32_t(seq.generated.size());
      history_at += int32_t(seq.history.size());
    }
    // Pairs are (row within its LM-head chunk of max_batch rows, id).
    for (TokenId id : seq.suppressed)
      if (id >= 0 && id < config_.vocab_size) {
        suppressed[2 * pair] = int32_t(row % max_batch_);
        suppressed[2 * pair + 1] = id;
        ++pair;
      }
    pass.row_sequence.push_back(p.sequence);
    ++row;
    if (row % max_batch_ == 0) pass.suppressed_begin.push_back(pair);
  }
  if (row % max_batch_ != 0) pass.suppressed_begin.push_back(pair);

  profile_.mark(Op::upload, stream_);
  std::byte* const device_arena = pass.graphed ? graph_arena_.data() : device_arena_.data();
  check_cuda(cudaMemcpyAsync(device_arena, staged, at.bytes, cudaMemcpyHostToDevice, stream_), "uploading the step");
  auto device_ints = [device_arena](size_t offset) { return reinterpret_cast<int32_t*>(device_arena + offset); };

  PagedKvBatch& batch = pass.batch;
  batch.num_sequences = num_sequences;
  batch.num_tokens = pass.num_tokens;
  batch.query_start = device_ints(at.query_start);
  batch.context_lens = device_ints(at.context_lens);
  batch.block_tables = device_ints(at.block_tables);
  batch.max_blocks_per_sequence = layout.block_stride;
  batch.slot_mapping = device_ints(at.slot_mapping);
  batch.positions = device_ints(at.positions);
  batch.max_query_len = layout.max_query_len;
  // A graph's attention plan serves contexts up to the next power of two.
  batch.max_context_len =
      pass.graphed ? int32_t(std::min<int64_t>(std::bit_ceil(uint32_t(std::max(layout.max_context_len, 64))),
                                               std::max<int64_t>(config_.max_position_embeddings, layout.max_context_len)))
                   : layout.max_context_len;
  batch.device = device_;
  pass.token_ids = device_ints(at.token_ids);
  pass.previous_index = device_ints(at.previous);
  pass.row_tokens = device_ints(at.row_tokens);
  pass.sampling = reinterpret_cast<const cuda::SamplingRow*>(device_arena + at.sampling);
  pass.history_ids = history_ids > 0 ? device_ints(at.history) : nullptr;
  pass.suppressed = device_ints(at.suppressed);
  return pass;
}

}  // namespace hostrun::llama_cuda
