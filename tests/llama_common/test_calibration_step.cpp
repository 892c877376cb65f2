// CalibrationStep: the one sequence both Llama plugins' observe_linear_inputs
// run, laid out over a private cache's pages and checked as a step.
#include <doctest/doctest.h>

#include <numeric>
#include <vector>

#include "llama_common/calibration_step.hpp"

using namespace hostrun;

TEST_CASE("CalibrationStep lays the tokens out as one sequence from position 0 over pages 0..n-1") {
  const llama::LlamaConfig config = llama::tiny_llama_config();
  std::vector<TokenId> tokens(70);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = TokenId(i % size_t(config.vocab_size));
  auto made = llama::CalibrationStep::make(tokens, 16, config);
  REQUIRE_MESSAGE(made.has_value(), made.status().message());
  const llama::CalibrationStep& step = *made.value();
  CHECK(step.num_tokens() == 70);
  CHECK(step.num_blocks() == 5);  // ceil(70 / 16)
  CHECK(step.block_tokens() == 16);
  const StepInput& input = step.input();
  REQUIRE(input.sequences.size() == 1);
  const StepSequence& seq = input.sequences[0];
  CHECK(seq.query_start == 0);
  CHECK(seq.query_len == 70);
  CHECK(seq.cached_len == 0);
  CHECK_FALSE(seq.sample);
  CHECK(std::vector<int32_t>(seq.block_table.begin(), seq.block_table.end()) == std::vector<int32_t>{0, 1, 2, 3, 4});
  REQUIRE(input.positions.size() == 70);
  for (size_t i = 0; i < 70; ++i) CHECK(input.positions[i] == int32_t(i));
  CHECK(input.token_ids.data() == tokens.data());
}

TEST_CASE("CalibrationStep refuses no tokens and ids outside the vocabulary") {
  const llama::LlamaConfig config = llama::tiny_llama_config();
  auto empty = llama::CalibrationStep::make({}, 16, config);
  REQUIRE_FALSE(empty.has_value());
  CHECK(empty.status().code() == ErrorCode::invalid_argument);
  CHECK(empty.status().message().find("at least one token") != std::string::npos);
  const std::vector<TokenId> outside{1, TokenId(config.vocab_size)};
  auto bad = llama::CalibrationStep::make(outside, 16, config);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.status().code() == ErrorCode::invalid_argument);
  const std::vector<TokenId> one{1};
  CHECK_FALSE(llama::CalibrationStep::make(one, 0, config).has_value());
}
