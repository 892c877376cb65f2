// The step a Llama plugin's observe_linear_inputs runs: the calibration
// tokens as one sequence from position 0 over a KV cache of its own (pages
// 0 .. num_blocks - 1 of `block_tokens` tokens), so the model's own cache,
// allocated or not, is never touched and the numbers are a step's.
#pragma once

#include <hostrun/step.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "llama_common/llama_config.hpp"

namespace hostrun::llama {

class CalibrationStep {
 public:
  // Checked as a step of this model (token ids inside the vocabulary; at
  // least one token): invalid_argument naming what is wrong otherwise.
  static Result<std::unique_ptr<CalibrationStep>> make(std::span<const TokenId> tokens, int32_t block_tokens,
                                                       const LlamaConfig& config);
  CalibrationStep(const CalibrationStep&) = delete;
  CalibrationStep& operator=(const CalibrationStep&) = delete;

  const StepInput& input() const { return input_; }  // views into this object
  int32_t num_tokens() const { return int32_t(positions_.size()); }
  int32_t num_blocks() const { return int32_t(block_table_.size()); }
  int32_t block_tokens() const { return block_tokens_; }

 private:
  CalibrationStep(std::span<const TokenId> tokens, int32_t block_tokens);
  std::vector<int32_t> block_table_, positions_;
  StepSequence sequence_;
  StepInput input_;
  int32_t block_tokens_ = 0;
};

}  // namespace hostrun::llama
