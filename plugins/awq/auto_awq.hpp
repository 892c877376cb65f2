// `hostrun lite auto_awq`'s work inside the awq plugin (Quantizer::quantize):
// calibrate, search scales and clipping, round, write an AutoAWQ folder.
//
//  1. Calibration: every sequence runs through the model
//     (Model::observe_linear_inputs); for each LinearInputGroup the input's
//     rows are sampled evenly (every k-th token) up to kSearchTokens.
//  2. Scales (groups with producers): ref::awq_search_scales on the sampled
//     rows, over the group's linears together; the scales multiply the
//     linears' columns and divide the producers' channels (a norm's weight,
//     up_proj's rows before down_proj), and the sampled rows.
//  3. Clipping (every linear that does not feed attention logits):
//     ref::awq_search_clip on the scaled weights and kClipTokens of the
//     scaled rows (AutoAWQ's n_sample_token: each (row, group) candidate is
//     judged on its own partial products, which few tokens pin down).
//  4. Round to nearest 4-bit in groups (ref::awq_quantize_rtn_packed), packed
//     as AutoAWQ's GEMM format; every other floating tensor (embeddings,
//     norms, the LM head) written as f16, as AutoAWQ writes them; config.json
//     gains quantization_config and torch_dtype float16. A summary of the
//     searches (alpha and output error against plain rounding per group and
//     linear) goes beside it as awq_search.json.
//
// The work runs a chunk of groups at a time (chunks.hpp: kChunkBytes of
// their weights in f32, ~4 layers of an 8B model, all of a small one;
// groups that share a tensor, such as up_proj, which down_proj's scales
// divide, in one chunk): the calibration sequences run through the model
// once per chunk, keeping only the chunk's inputs, then steps 2-4 run (the
// searches on all cores, or on the model's GPU one at a time:
// awq_cuda_search.hpp; the rounding on all cores) and the chunk's tensors
// are written and freed. Host memory holds one
// chunk's weights and samples (kSearchTokens rows of each of its groups'
// inputs in f32; ~2 GB for 4 layers of an 8B model); the price is one
// calibration pass per chunk.
#pragma once

#include <hostrun/sdk.hpp>

namespace hostrun::awq {

inline constexpr size_t kSearchTokens = 4096;
inline constexpr size_t kClipTokens = 512;
inline constexpr uint64_t kChunkBytes = uint64_t(4) << 30;

Status run_auto_awq(const QuantizeJob& job) noexcept;

}  // namespace hostrun::awq
