#include "llama_common/calibration_step.hpp"

#include <fmt/format.h>

#include <limits>
#include <numeric>

namespace hostrun::llama {

CalibrationStep::CalibrationStep(std::span<const TokenId> tokens, int32_t block_tokens)
    : block_table_(static_cast<size_t>((int64_t(tokens.size()) + block_tokens - 1) / block_tokens)),
      positions_(tokens.size()),
      block_tokens_(block_tokens) {
  std::iota(block_table_.begin(), block_table_.end(), 0);
  std::iota(positions_.begin(), positions_.end(), 0);
  sequence_.query_len = int32_t(tokens.size());
  sequence_.block_table = block_table_;
  input_ = StepInput{tokens, positions_, std::span(&sequence_, 1)};
}

Result<std::unique_ptr<CalibrationStep>> CalibrationStep::make(std::span<const TokenId> tokens, int32_t block_tokens,
                                                               const LlamaConfig& config) {
  if (tokens.empty()) return Status(ErrorCode::invalid_argument, "expected at least one token, found none");
  if (block_tokens <= 0 || tokens.size() > size_t(std::numeric_limits<int32_t>::max() - block_tokens))
    return Status(ErrorCode::invalid_argument, fmt::format("{} tokens is too many", tokens.size()));
  std::unique_ptr<CalibrationStep> step(new CalibrationStep(tokens, block_tokens));
  StepLimits limits;
  limits.vocab_size = config.vocab_size;
  limits.num_blocks = step->num_blocks();
  limits.block_tokens = block_tokens;
  limits.hidden_size = config.hidden_size;
  if (Status s = check_step_input(step->input(), limits); !s) return s;
  return step;
}

}  // namespace hostrun::llama
