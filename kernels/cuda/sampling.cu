#include <cfloat>

#include "cuda/common.cuh"
#include "cuda/sampling.hpp"

namespace hostrun::cuda {

namespace {

constexpr int sample_threads = 1024;
constexpr int sample_warps = sample_threads / 32;
constexpr float greedy_temperature_threshold = 1e-5f;  // ref::greedy_temperature_threshold

// ---- Philox4x32-10, as ref/rng.cpp ---------------------------------------

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, std::uint32_t k0, std::uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const std::uint32_t hi0 = __umulhi(0xD2511F53u, c.x);
    const std::uint32_t lo0 = 0xD2511F53u * c.x;
    const std::uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z);
    const std::uint32_t lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

// u = (word + 0.5) * 2^-32 is exact in double; -log(-log(u)) in double.
__device__ __forceinline__ double gumbel_from_word(std::uint32_t word) {
  const double u = (static_cast<double>(word) + 0.5) * 0x1p-32;
  return -log(-log(u));
}

// ---- the total order ------------------------------------------------------

// Larger key = more likely: the f32 bits made order-preserving as unsigned,
// then the complement of the id so equal logits order by ascending id.
__device__ __forceinline__ std::uint64_t order_key(float value, int id) {
  std::uint32_t bits = __float_as_uint(value);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<std::uint64_t>(bits) << 32) | (0xFFFFFFFFu - static_cast<std::uint32_t>(id));
}

struct RowView {
  const float* values;  // penalised logits (or the raw row when no penalty applies)
  int vocab;
  float temperature;  // 1 means "values are used as they are"
  __device__ float operator()(int i) const { return __fdiv_rn(values[i], temperature); }
};

struct SharedState {
  unsigned counts[256];
  double masses[256];
  std::uint64_t keys[sample_warps];
  float floats[sample_warps];
  double doubles[sample_warps];
  int ints[sample_warps];
  std::uint64_t found_prefix;
  unsigned found_above;
  double found_mass_above;
  int found;
};

__device__ std::uint64_t block_max_u64(std::uint64_t v, SharedState& s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const std::uint64_t other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.keys[threadIdx.x / 32] = v;
  __syncthreads();
  v = s.keys[threadIdx.x % 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const std::uint64_t other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

__device__ double block_sum_double(double v, SharedState& s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.doubles[threadIdx.x / 32] = v;
  __syncthreads();
  v = s.doubles[threadIdx.x % 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ int block_sum_int(int v, SharedState& s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.ints[threadIdx.x / 32] = v;
  __syncthreads();
  v = s.ints[threadIdx.x % 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The key of the element with exactly `rank` elements before it in the
// order (rank < vocab). Eight passes, one byte of the key each: histogram the
// elements that match the bytes chosen so far, then pick the bin holding the
// rank. Warp 0 scans the 256 bins, 8 per lane, from the top.
__device__ std::uint64_t select_by_rank(const RowView& row, unsigned rank, SharedState& s) {
  std::uint64_t prefix = 0, mask = 0;
  unsigned above = 0;
  for (int level = 0; level < 8; ++level) {
    const int shift = 56 - 8 * level;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) s.counts[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const std::uint64_t key = order_key(row(i), i);
      if ((key & mask) == prefix) atomicAdd(&s.counts[(key >> shift) & 0xFF], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      unsigned lane_total = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) lane_total += s.counts[255 - 8 * lane - j];
      unsigned before = lane_total;  // inclusive scan over lanes, then made exclusive
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned other = __shfl_up_sync(0xffffffffu, before, offset);
        if (lane >= offset) before += other;
      }
      unsigned running = above + before - lane_total;
      int digit = -1;
      unsigned digit_above = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const unsigned count = s.counts[255 - 8 * lane - j];
        if (digit < 0 && running + count > rank) {
          digit = 255 - 8 * lane - j;
          digit_above = running;
        }
        running += count;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, digit >= 0);
      if (ballot != 0 && lane == __ffs(ballot) - 1) {
        s.found_prefix = prefix | (static_cast<std::uint64_t>(digit) << shift);
        s.found_above = digit_above;
      }
    }
    __syncthreads();
    prefix = s.found_prefix;
    above = s.found_above;
    mask |= 0xFFull << shift;
  }
  return prefix;
}

// Among elements with key >= floor, the rank of the first one (in the order)
// at which the cumulative mass exp(double(v) - max) reaches target. Returns
// -1 if the mass never does (rounding: ref would then keep everything).
__device__ int select_by_mass(const RowView& row, std::uint64_t floor, float max_value, double target,
                              SharedState& s) {
  std::uint64_t prefix = 0, mask = 0;
  unsigned above = 0;
  double mass_above = 0.0;
  for (int level = 0; level < 8; ++level) {
    const int shift = 56 - 8 * level;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      s.counts[b] = 0;
      s.masses[b] = 0.0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const float v = row(i);
      const std::uint64_t key = order_key(v, i);
      if (key >= floor && (key & mask) == prefix) {
        const int bin = (key >> shift) & 0xFF;
        atomicAdd(&s.counts[bin], 1u);
        atomicAdd(&s.masses[bin], exp(static_cast<double>(v) - static_cast<double>(max_value)));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      unsigned lane_count = 0;
      double lane_mass = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        lane_count += s.counts[255 - 8 * lane - j];
        lane_mass += s.masses[255 - 8 * lane - j];
      }
      unsigned count_before = lane_count;
      double mass_before = lane_mass;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned c = __shfl_up_sync(0xffffffffu, count_before, offset);
        const double m = __shfl_up_sync(0xffffffffu, mass_before, offset);
        if (lane >= offset) {
          count_before += c;
          mass_before += m;
        }
      }
      unsigned running_count = above + count_before - lane_count;
      double running_mass = mass_above + (mass_before - lane_mass);
      int digit = -1;
      unsigned digit_above = 0;
      double digit_mass_above = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int bin = 255 - 8 * lane - j;
        const unsigned count = s.counts[bin];
        if (digit < 0 && count > 0 && running_mass + s.masses[bin] >= target) {
          digit = bin;
          digit_above = running_count;
          digit_mass_above = running_mass;
        }
        running_count += count;
        running_mass += s.masses[bin];
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, digit >= 0);
      if (lane == 0) s.found = ballot != 0;
      if (ballot != 0 && lane == __ffs(ballot) - 1) {
        s.found_prefix = prefix | (static_cast<std::uint64_t>(digit) << shift);
        s.found_above = digit_above;
        s.found_mass_above = digit_mass_above;
      }
    }
    __syncthreads();
    if (!s.found) return -1;
    prefix = s.found_prefix;
    above = s.found_above;
    mass_above = s.found_mass_above;
    mask |= 0xFFull << shift;
  }
  return static_cast<int>(above);
}

__global__ void __launch_bounds__(sample_threads) sample_kernel(SamplingBatch batch, float* working_all,
                                                                std::int32_t* counts_all) {
  __shared__ SharedState s;
  const int r = blockIdx.x;
  const SamplingRow params = batch.params[r];
  const int vocab = batch.vocab_size;
  const float* logits = batch.logits + static_cast<std::int64_t>(r) * batch.logits_row_stride;

  // 1-2. Penalties, into this row's working copy. Every duplicate of an id
  // writes the same value (computed from the raw logit and the final count),
  // so the order of the writes does not matter.
  const bool repetition = params.repetition_penalty != 1.0f;
  const bool presence_frequency = params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f;
  const float* values = logits;
  if ((repetition && params.num_prompt_ids + params.num_generated_ids > 0) ||
      (presence_frequency && params.num_generated_ids > 0)) {
    float* working = working_all + static_cast<std::int64_t>(r) * vocab;
    std::int32_t* counts = counts_all + static_cast<std::int64_t>(r) * vocab;
    const std::int32_t* prompt = batch.history_ids + params.prompt_offset;
    const std::int32_t* generated = batch.history_ids + params.generated_offset;
    const int history = params.num_prompt_ids + params.num_generated_ids;
    const auto history_id = [&](int k) { return k < params.num_prompt_ids ? prompt[k] : generated[k - params.num_prompt_ids]; };
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) working[i] = logits[i];
    for (int k = threadIdx.x; k < history; k += blockDim.x) {
      const int id = history_id(k);
      if (id >= 0 && id < vocab) {
        counts[id] = 0;
      } else {
        detail::raise_error(batch.error_flag, Status::token_id_out_of_range);
      }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < params.num_generated_ids; k += blockDim.x) {
      const int id = generated[k];
      if (id >= 0 && id < vocab) atomicAdd(&counts[id], 1);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < history; k += blockDim.x) {
      const int id = history_id(k);
      if (id < 0 || id >= vocab) continue;
      float l = logits[id];
      if (repetition) {
        l = l > 0.0f ? __fdiv_rn(l, params.repetition_penalty) : __fmul_rn(l, params.repetition_penalty);
      }
      const int count = counts[id];
      if (presence_frequency && count > 0) {
        // ref: l -= frequency * count + presence, each step rounded (no FMA).
        l = __fsub_rn(l, __fadd_rn(__fmul_rn(params.frequency_penalty, static_cast<float>(count)),
                                   params.presence_penalty));
      }
      working[id] = l;
    }
    __syncthreads();
    values = working;
  }

  // 3. Greedy: the largest key is the largest logit, lowest id among equals.
  if (params.temperature < greedy_temperature_threshold) {
    std::uint64_t best = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const std::uint64_t key = order_key(values[i], i);
      best = key > best ? key : best;
    }
    best = block_max_u64(best, s);
    if (threadIdx.x == 0) batch.tokens_out[r] = static_cast<std::int32_t>(0xFFFFFFFFu - static_cast<std::uint32_t>(best));
    return;
  }

  const RowView row{values, vocab, params.temperature};
  const bool use_top_k = params.top_k > 0 && params.top_k < vocab;
  const bool use_top_p = params.top_p < 1.0f;
  const bool use_min_p = params.min_p > 0.0f;

  // 4-6. The kept set is a prefix of the order; find its length, then the key
  // of its last element.
  std::uint64_t floor = 0;  // keep key >= floor
  if (use_top_k || use_top_p || use_min_p) {
    std::uint64_t best = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const std::uint64_t key = order_key(row(i), i);
      best = key > best ? key : best;
    }
    best = block_max_u64(best, s);
    const int best_id = static_cast<int>(0xFFFFFFFFu - static_cast<std::uint32_t>(best));
    const float max_value = row(best_id);

    int kept = use_top_k ? params.top_k : vocab;
    std::uint64_t top_k_floor = use_top_k ? select_by_rank(row, static_cast<unsigned>(kept - 1), s) : 0;
    if (use_top_p) {
      double total = 0.0;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = row(i);
        if (order_key(v, i) >= top_k_floor) total += exp(static_cast<double>(v) - static_cast<double>(max_value));
      }
      total = block_sum_double(total, s);
      const double target = static_cast<double>(params.top_p) * total;
      const int last = select_by_mass(row, top_k_floor, max_value, target, s);
      if (last >= 0 && last + 1 < kept) kept = last + 1;
    }
    if (use_min_p) {
      // exp(v - max) >= min_p, decided in f32 when clearly on one side and in
      // double (ref's arithmetic) near the boundary.
      const double min_p = static_cast<double>(params.min_p);
      int survivors = 0;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = row(i);
        const float approx = expf(v - max_value);
        bool keep;
        if (approx > params.min_p * 1.001f + 1e-30f) {
          keep = true;
        } else if (approx < params.min_p * 0.999f) {
          keep = false;
        } else {
          keep = exp(static_cast<double>(v) - static_cast<double>(max_value)) >= min_p;
        }
        survivors += keep ? 1 : 0;
      }
      survivors = block_sum_int(survivors, s);
      kept = min(kept, max(survivors, 1));  // min_p > 1 keeps the most likely id, as ref
    }
    if (kept < vocab) floor = (use_top_k && kept == params.top_k) ? top_k_floor : select_by_rank(row, kept - 1, s);
  }

  // 7. Gumbel-max over the kept ids; one Philox call per group of 4 ids.
  // (An f32 pre-screen that left the double logs to near-winners was tried and
  // measured slower on H100: Philox and issue rate on one SM dominate.)
  double best_score = -INFINITY;
  int best_id = vocab;
  const int groups = (vocab + 3) / 4;
  const std::uint32_t seed_lo = static_cast<std::uint32_t>(params.seed);
  const std::uint32_t seed_hi = static_cast<std::uint32_t>(params.seed >> 32);
  const std::uint32_t step_lo = static_cast<std::uint32_t>(params.step);
  const std::uint32_t step_hi = static_cast<std::uint32_t>(params.step >> 32);
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    float v[4];
    bool keep[4];
    bool any = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int id = 4 * g + j;
      keep[j] = false;
      if (id < vocab) {
        v[j] = row(id);
        keep[j] = order_key(v[j], id) >= floor;
        any |= keep[j];
      }
    }
    if (!any) continue;
    const uint4 words = philox4x32_10(make_uint4(static_cast<std::uint32_t>(g), 0u, step_lo, step_hi), seed_lo, seed_hi);
    const std::uint32_t word[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (!keep[j]) continue;
      const double score = static_cast<double>(v[j]) + gumbel_from_word(word[j]);
      // ids rise within a thread, so strict > keeps the lower id on ties.
      if (score > best_score) {
        best_score = score;
        best_id = 4 * g + j;
      }
    }
  }
  // Block argmax of (score desc, id asc).
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const double other_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
    const int other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
    if (other_score > best_score || (other_score == best_score && other_id < best_id)) {
      best_score = other_score;
      best_id = other_id;
    }
  }
  if (threadIdx.x % 32 == 0) {
    s.doubles[threadIdx.x / 32] = best_score;
    s.ints[threadIdx.x / 32] = best_id;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    best_score = s.doubles[threadIdx.x];
    best_id = s.ints[threadIdx.x];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double other_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
      if (other_score > best_score || (other_score == best_score && other_id < best_id)) {
        best_score = other_score;
        best_id = other_id;
      }
    }
    if (threadIdx.x == 0) batch.tokens_out[r] = best_id;
  }
}

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

std::size_t sampling_workspace_bytes(int rows, int vocab_size) {
  const std::size_t cells = static_cast<std::size_t>(rows) * static_cast<std::size_t>(vocab_size);
  return align256(cells * sizeof(float)) + align256(cells * sizeof(std::int32_t));
}

cudaError_t sample_tokens(const SamplingBatch& batch, void* workspace, std::size_t workspace_bytes,
                          cudaStream_t stream) {
  if (batch.rows == 0) return cudaSuccess;
  if (batch.rows < 0 || batch.vocab_size <= 0 || batch.logits == nullptr || batch.params == nullptr ||
      batch.tokens_out == nullptr || workspace_bytes < sampling_workspace_bytes(batch.rows, batch.vocab_size)) {
    return cudaErrorInvalidValue;
  }
  const std::size_t cells = static_cast<std::size_t>(batch.rows) * static_cast<std::size_t>(batch.vocab_size);
  auto* working = static_cast<float*>(workspace);
  auto* counts = reinterpret_cast<std::int32_t*>(static_cast<char*>(workspace) + align256(cells * sizeof(float)));
  sample_kernel<<<batch.rows, sample_threads, 0, stream>>>(batch, working, counts);
  return cudaGetLastError();
}

}  // namespace hostrun::cuda
