// The engine with llama_cpu + kv_cpu: batching and preemption must not change
// a single greedy token.
#include "../support/letter_tokenizer.hpp"
#include <doctest/doctest.h>

#include <future>

#include "engine/engine.hpp"
#include "llama_test_util.hpp"

using namespace llama_test;

namespace {

// One letter per id; no ids of its own beyond the model's.
struct Finished {
  std::vector<TokenId> generated;
  FinishReason finish = FinishReason::none;
  std::string error;
};

struct EngineUnderTest {
  std::unique_ptr<LoadedModel> loaded;
  std::unique_ptr<core::Engine> engine;

  EngineUnderTest(const fs::path& dir, core::EngineConfig config) {
    loaded = load(dir, 1, "f32", 0);  // the engine sizes and allocates the cache
    core::EngineParts parts;
    parts.model = loaded->model;
    parts.kv_policy = loaded->policy;
    parts.tokenizer = std::make_shared<hostrun::testing::LetterTokenizer>(loaded->model->info().vocab_size);
    parts.model_name = "llama_cpu";
    auto started = core::Engine::start(config, std::move(parts));
    REQUIRE_MESSAGE(started.has_value(), started.status().message());
    engine = std::move(started.value());
  }
  ~EngineUnderTest() { engine.reset(); }  // the loop stops before the model goes

  std::future<Finished> submit(const std::vector<TokenId>& prompt, const SamplingParams& sp) {
    auto promise = std::make_shared<std::promise<Finished>>();
    auto result = std::make_shared<Finished>();
    GenerationRequest request;
    request.input = prompt;
    request.sampling = sp;
    auto id = engine->submit(std::move(request), [promise, result](const StreamEvent& e) {
      result->generated.insert(result->generated.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.finish != FinishReason::none) {
        result->finish = e.finish;
        result->error = e.error;
        promise->set_value(*result);
      }
    });
    REQUIRE_MESSAGE(id.has_value(), id.status().message());
    return promise->get_future();
  }
};

}  // namespace

TEST_CASE("engine: 64 concurrent greedy requests equal each run alone, also when the KV cache forces preemption") {
  TempDir dir("engine");
  llama::LlamaConfig config = small_config();
  config.eos_token_ids = {2};
  write_checkpoint(dir.path(), config, 9);
  randomize_norms(dir.path(), 9);

  std::mt19937 rng(2024);
  std::vector<std::vector<TokenId>> prompts;
  std::vector<SamplingParams> params;
  for (int i = 0; i < 64; ++i) {
    std::vector<TokenId> prompt(1 + rng() % 48);
    for (auto& id : prompt) id = TokenId(3 + rng() % 297);
    prompts.push_back(prompt);
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_tokens = 1 + int32_t(rng() % 24);
    sp.ignore_eos = i % 2 == 0;
    params.push_back(sp);
  }

  core::EngineConfig roomy;
  roomy.num_kv_blocks = 512;
  roomy.cache_block_seq_len = 16;
  std::vector<Finished> alone;
  {
    EngineUnderTest e(dir.path(), roomy);
    for (int i = 0; i < 64; ++i) alone.push_back(e.submit(prompts[size_t(i)], params[size_t(i)]).get());
  }
  for (const auto& a : alone) REQUIRE_MESSAGE(a.finish != FinishReason::error, a.error);

  auto run_together = [&](core::EngineConfig engine_config, bool expect_preemption) {
    EngineUnderTest e(dir.path(), engine_config);
    std::vector<std::future<Finished>> futures;
    for (int i = 0; i < 64; ++i) futures.push_back(e.submit(prompts[size_t(i)], params[size_t(i)]));
    for (int i = 0; i < 64; ++i) {
      CAPTURE(i);
      const Finished got = futures[size_t(i)].get();
      CHECK_MESSAGE(got.finish == alone[size_t(i)].finish, got.error);
      CHECK(got.generated == alone[size_t(i)].generated);
    }
    e.engine->wait_idle();
    const core::EngineStats stats = e.engine->stats();
    CHECK(stats.kv_blocks_held == 0);
    if (expect_preemption) CHECK(stats.preemptions > 0);
    return stats;
  };
  SUBCASE("batched, with chunked prefill mixed into decodes") {
    core::EngineConfig batched = roomy;
    batched.max_prefill_token_num = 40;
    batched.max_batch_size = 32;
    const auto stats = run_together(batched, false);
    CHECK(stats.steps < 64 * 10);  // really batched
  }
  SUBCASE("a KV cache of 12 blocks x 16 tokens holds only a few sequences") {
    core::EngineConfig tight = roomy;
    tight.num_kv_blocks = 12;
    run_together(tight, true);
  }
}
