// Helpers every Model plugin needs around a step, so no plugin copies them:
// the checks of a StepInput against the model and its cache (done on the host
// before anything runs, so a bad step is an error that leaves the KV cache as
// it was), and the paged layout (PagedKvBatch's index arrays) of a step or of
// one pass over part of it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "hostrun/kv_cache.hpp"
#include "hostrun/model.hpp"
#include "hostrun/status.hpp"

namespace hostrun {

// What a step is checked against.
struct StepLimits {
  int64_t vocab_size = 0;     // token and history ids must be below it
  int32_t num_blocks = 0;     // block table entries must be below it
  int32_t block_tokens = 0;
  int64_t hidden_size = 0;    // width of embedding spans
  Device embedding_device{};  // where embedding spans must live
  uint32_t embedding_dtypes = 0;  // dtype_bit() of the dtypes embedding spans may have
  // Samples of the step submitted just before this one (overlapped steps);
  // previous_sample must be below it (0: not allowed at all).
  int32_t previous_samples = 0;
};

// Checks every field of `input` a model relies on: sequences own consecutive
// runs of token_ids, positions are cached_len + j, block tables cover the
// context and stay inside the cache, ids are in the vocabulary, sampling
// sequences have parameters, embedding spans fit. The message names the
// sequence and the field.
inline Status check_step_input(const StepInput& input, const StepLimits& limits) {
  auto bad = [](std::string message) { return Status(ErrorCode::invalid_argument, std::move(message)); };
  const size_t num_tokens = input.token_ids.size();
  const size_t num_sequences = input.sequences.size();
  if (input.positions.size() != num_tokens)
    return bad(fmt::format("{} token ids but {} positions", num_tokens, input.positions.size()));
  if (num_tokens > size_t(std::numeric_limits<int32_t>::max())) return bad("too many tokens in one step");
  if (num_sequences == 0 && num_tokens != 0) return bad(fmt::format("{} tokens but no sequences", num_tokens));
  if (limits.block_tokens <= 0) return bad("the model has no KV cache (block_tokens 0)");
  int32_t expected_start = 0;
  for (size_t s = 0; s < num_sequences; ++s) {
    const StepSequence& seq = input.sequences[s];
    if (seq.query_start != expected_start)
      return bad(fmt::format(
          "sequence {}: query_start {}, expected {} (sequences own consecutive runs of token_ids, in order)", s,
          seq.query_start, expected_start));
    if (seq.query_len <= 0 || int64_t(seq.query_start) + seq.query_len > int64_t(num_tokens))
      return bad(fmt::format("sequence {}: query_len {} from token {} does not fit the step's {} tokens", s,
                             seq.query_len, seq.query_start, num_tokens));
    if (seq.cached_len < 0 || int64_t(seq.cached_len) + seq.query_len > std::numeric_limits<int32_t>::max())
      return bad(fmt::format("sequence {}: cached_len {} is out of range", s, seq.cached_len));
    const int32_t context = seq.cached_len + seq.query_len;
    for (int32_t j = 0; j < seq.query_len; ++j) {
      const size_t t = size_t(seq.query_start + j);
      if (input.positions[t] != seq.cached_len + j)
        return bad(fmt::format("sequence {}: token {} is at position {}, expected cached_len + {} = {}", s, t,
                               input.positions[t], j, seq.cached_len + j));
      if (input.token_ids[t] < 0 || input.token_ids[t] >= limits.vocab_size)
        return bad(fmt::format("token id {} (token {} of the step, sequence {}) is outside the vocabulary of {}",
                               input.token_ids[t], t, s, limits.vocab_size));
    }
    const int32_t blocks_needed = int32_t((int64_t(context) + limits.block_tokens - 1) / limits.block_tokens);
    if (int64_t(seq.block_table.size()) < blocks_needed)
      return bad(fmt::format("sequence {}: {} tokens of context need {} blocks of {}, but its block table has {}", s,
                             context, blocks_needed, limits.block_tokens, seq.block_table.size()));
    for (int32_t b = 0; b < blocks_needed; ++b)
      if (seq.block_table[size_t(b)] < 0 || seq.block_table[size_t(b)] >= limits.num_blocks)
        return bad(fmt::format("sequence {}: block table entry {} is {}, outside the cache's {} blocks", s, b,
                               seq.block_table[size_t(b)], limits.num_blocks));
    if (seq.sample && seq.sampling == nullptr)
      return bad(fmt::format("sequence {} samples but has no sampling parameters", s));
    if (seq.previous_sample >= 0 && seq.previous_sample >= limits.previous_samples)
      return bad(fmt::format("sequence {}: previous_sample {}, but the step submitted before this one sampled {} ids",
                             s, seq.previous_sample, limits.previous_samples));
    if (seq.previous_sample >= 0 && seq.sample && seq.sampling->has_penalties())
      return bad(fmt::format("sequence {}: penalties read the whole history, which lacks its previous_sample", s));
    if (seq.generated.size() > seq.history.size())
      return bad(fmt::format("sequence {}: {} generated ids but only {} in its history", s, seq.generated.size(),
                             seq.history.size()));
    if (seq.sample)
      for (size_t i = 0; i < seq.history.size(); ++i)
        if (seq.history[i] < 0 || seq.history[i] >= limits.vocab_size)
          return bad(fmt::format("sequence {}: history id {} (index {}) is outside the vocabulary of {}", s,
                                 seq.history[i], i, limits.vocab_size));
    for (const EmbeddingSpan& span : seq.embeddings) {
      const TensorView& v = span.values;
      const int64_t rows = v.rank > 0 ? v.shape[0] : 0;
      if (v.rank != 2 || v.shape[1] != limits.hidden_size || v.device.kind != limits.embedding_device.kind ||
          !v.is_contiguous() || (limits.embedding_dtypes & dtype_bit(v.dtype)) == 0 || v.data == nullptr)
        return bad(fmt::format("sequence {}: an embedding span must be a contiguous [tokens, {}] tensor on {} in a "
                               "dtype the model takes",
                               s, limits.hidden_size, device_kind_name(limits.embedding_device.kind)));
      if (span.first_token < 0 || int64_t(span.first_token) + rows > seq.query_len)
        return bad(fmt::format("sequence {}: embedding span of {} tokens at {} is outside its {} tokens of this step",
                               s, rows, span.first_token, seq.query_len));
    }
    expected_start = seq.query_start + seq.query_len;
  }
  if (size_t(expected_start) != num_tokens)
    return bad(fmt::format("the sequences cover {} tokens but the step has {}", expected_start, num_tokens));
  return Status();
}

// A pass's share of one sequence: query tokens [first, first + count) of
// input.sequences[sequence]. A model that runs a step in several passes (a
// workspace for fewer tokens than the step has) cuts it into pieces; one that
// runs it whole takes whole_sequences().
struct StepPiece {
  int32_t sequence = 0;
  int32_t first = 0;
  int32_t count = 0;
  bool sample = false;  // the sequence samples and this piece ends its query
};

inline std::vector<StepPiece> whole_sequences(const StepInput& input) {
  std::vector<StepPiece> pieces;
  pieces.reserve(input.sequences.size());
  for (size_t s = 0; s < input.sequences.size(); ++s)
    pieces.push_back({int32_t(s), 0, input.sequences[s].query_len, input.sequences[s].sample});
  return pieces;
}

// PagedKvBatch's arrays for a list of pieces, in host memory (a model on a
// device copies them there). Piece i is sequence i of the batch; its context
// is its cached tokens plus the pieces of it before this one plus this one.
struct PagedLayout {
  std::vector<int32_t> token_ids;     // [tokens]
  std::vector<int32_t> positions;     // [tokens]
  std::vector<int32_t> slot_mapping;  // [tokens]
  std::vector<int32_t> query_start;   // [sequence_slots + 1]
  std::vector<int32_t> context_lens;  // [sequence_slots]
  std::vector<int32_t> block_tables;  // [sequence_slots * block_stride], unused entries 0
  int32_t num_sequences = 0;
  int32_t block_stride = 0;
  int32_t max_blocks = 0;  // the most blocks any piece's context needs
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;

  // `sequence_slots` and `block_stride` may exceed what the pieces need
  // (a CUDA graph lays every pass out for its largest); 0 means exactly.
  // The input must have passed check_step_input.
  void build(const StepInput& input, std::span<const StepPiece> pieces, int32_t block_tokens,
             int32_t sequence_slots = 0, int32_t min_block_stride = 0) {
    num_sequences = int32_t(pieces.size());
    const int32_t slots = std::max(sequence_slots, num_sequences);
    max_blocks = max_query_len = max_context_len = 0;
    int32_t tokens = 0;
    for (const StepPiece& p : pieces) {
      const StepSequence& seq = input.sequences[size_t(p.sequence)];
      const int32_t context = seq.cached_len + p.first + p.count;
      tokens += p.count;
      max_query_len = std::max(max_query_len, p.count);
      max_context_len = std::max(max_context_len, context);
      max_blocks = std::max(max_blocks, (context + block_tokens - 1) / block_tokens);
    }
    block_stride = std::max(min_block_stride, max_blocks);
    token_ids.resize(size_t(tokens));
    positions.resize(size_t(tokens));
    slot_mapping.resize(size_t(tokens));
    query_start.assign(size_t(slots) + 1, tokens);
    context_lens.assign(size_t(slots), 0);
    block_tables.assign(size_t(slots) * size_t(block_stride), 0);
    int32_t token = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const StepPiece& p = pieces[i];
      const StepSequence& seq = input.sequences[size_t(p.sequence)];
      const int32_t cached = seq.cached_len + p.first;
      query_start[i] = token;
      context_lens[i] = cached + p.count;
      const int32_t blocks = (cached + p.count + block_tokens - 1) / block_tokens;
      std::copy_n(seq.block_table.begin(), blocks, block_tables.begin() + std::ptrdiff_t(i * size_t(block_stride)));
      for (int32_t j = 0; j < p.count; ++j) {
        const int32_t position = cached + j;
        token_ids[size_t(token + j)] = input.token_ids[size_t(seq.query_start + p.first + j)];
        positions[size_t(token + j)] = position;
        slot_mapping[size_t(token + j)] =
            seq.block_table[size_t(position / block_tokens)] * block_tokens + position % block_tokens;
      }
      token += p.count;
    }
  }

  int32_t num_tokens() const noexcept { return int32_t(token_ids.size()); }

  // The batch over these host arrays (a device model points it at its copies instead).
  PagedKvBatch host_batch() const noexcept {
    PagedKvBatch batch;
    batch.num_sequences = num_sequences;
    batch.num_tokens = num_tokens();
    batch.query_start = query_start.data();
    batch.context_lens = context_lens.data();
    batch.block_tables = block_tables.data();
    batch.max_blocks_per_sequence = block_stride;
    batch.slot_mapping = slot_mapping.data();
    batch.positions = positions.data();
    batch.max_query_len = max_query_len;
    batch.max_context_len = max_context_len;
    batch.device = Device{DeviceKind::cpu, 0};
    return batch;
  }
};

}  // namespace hostrun
