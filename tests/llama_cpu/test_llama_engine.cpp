// The engine with llama_cpu + kv_cpu: batching and preemption must not change
// a single greedy token.
#include "../support/letter_tokenizer.hpp"
#include <doctest/doctest.h>

#include <future>

#include "engine/engine.hpp"
#include "llama_test_util.hpp"
#include "perplexity.hpp"

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
    tight.decode_reserve_tokens = 0;  // admit while a chunk fits: running ones give way
    run_together(tight, true);
  }
}

TEST_CASE("perplexity through the engine equals the dense oracle's log-softmax, windows and all") {
  TempDir dir("perplexity");
  llama::LlamaConfig config = small_config();
  write_checkpoint(dir.path(), config, 31);
  randomize_norms(dir.path(), 31);
  auto weights = checkpoint::ModelDirectory::open(dir.path());
  REQUIRE(weights.has_value());
  const DenseLlama oracle(*weights.value(), config);

  std::mt19937 rng(77);
  std::vector<TokenId> text(150);
  for (auto& id : text) id = TokenId(3 + rng() % 297);
  core::PerplexityOptions options;
  options.context = 40;
  options.stride = 13;
  options.bos = 1;
  options.max_in_flight = 5;

  // The oracle: every window run whole from BOS, its scored tokens' log_softmax in double.
  auto windows = core::plan_windows(int64_t(text.size()), options);
  REQUIRE(windows.has_value());
  std::vector<double> nll;
  for (const core::ScoreWindow& w : *windows) {
    std::vector<TokenId> ids{*options.bos};
    ids.insert(ids.end(), text.begin() + w.begin, text.begin() + w.end);
    const auto logits = oracle.forward(ids);
    for (int64_t t = w.scored_begin; t < w.end; ++t) {
      const std::vector<double>& row = logits[size_t(t - w.begin)];  // row i predicts ids[i + 1]
      const double top = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (double v : row) sum += std::exp(v - top);
      nll.push_back(-(row[size_t(text[size_t(t)])] - top - std::log(sum)));
    }
  }
  const core::PerplexityResult want = core::summarize_nll(nll);

  core::EngineConfig engine_config;
  engine_config.num_kv_blocks = 12;  // 192 tokens: five windows of 40 do not fit at once, so some are preempted
  engine_config.cache_block_seq_len = 16;
  engine_config.max_prefill_token_num = 24;
  engine_config.decode_reserve_tokens = 0;
  EngineUnderTest e(dir.path(), engine_config);
  auto got = core::measure_perplexity(*e.engine, text, options);
  REQUIRE_MESSAGE(got.has_value(), got.status().message());
  CHECK(got->scored_tokens == int64_t(text.size()));
  CHECK(got->windows == int64_t(windows->size()));
  CHECK(got->mean_nll == doctest::Approx(want.mean_nll).epsilon(1e-5));
  CHECK(got->perplexity == doctest::Approx(want.perplexity).epsilon(1e-5));
  CHECK(got->mean_nll_stderr == doctest::Approx(want.mean_nll_stderr).epsilon(1e-4));
  CHECK(e.engine->stats().preemptions > 0);
}
