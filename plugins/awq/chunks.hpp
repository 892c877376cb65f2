// How auto_awq cuts a model's linear input groups into chunks it quantizes
// one at a time (auto_awq.hpp says why): in the model's order, each of about
// `target_bytes` of f32 weights (`f32_bytes[g]`: what group g lists), and
// groups that list a common tensor always in one chunk (a linear is changed
// by its own group's scales, a producer by the scales of the group it
// feeds; up_proj is both).
#pragma once

#include <hostrun/sdk.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hostrun::awq {

std::vector<std::vector<size_t>> awq_chunks(const std::vector<LinearInputGroup>& groups,
                                            const std::vector<uint64_t>& f32_bytes, uint64_t target_bytes);

}  // namespace hostrun::awq
