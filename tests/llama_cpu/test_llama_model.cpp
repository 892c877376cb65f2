// llama_cpu + kv_cpu through the plugin registry, against the dense oracle
// and against themselves under different step layouts.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "llama_test_util.hpp"

using namespace llama_test;

namespace {

struct Shape {
  const char* name;
  int64_t hidden, intermediate, layers, heads, kv_heads, head_dim;
  bool tied;
  bool llama3_rope;
  DType dtype;
  bool random_norms;
};

const Shape kShapes[] = {
    {"gqa4_tied_llama3_hd16_bf16", 64, 128, 2, 4, 1, 16, true, true, DType::bf16, true},
    {"mha_untied_hd32_f16", 64, 160, 2, 2, 2, 32, false, false, DType::f16, false},
    {"gqa8_untied_llama3_hd64_f32", 128, 192, 2, 8, 1, 64, false, true, DType::f32, true},
    {"gqa2_tied_hd16_3layers_bf16", 64, 96, 3, 4, 2, 16, true, false, DType::bf16, true},
};

llama::LlamaConfig config_of(const Shape& s) {
  llama::LlamaConfig c = small_config();
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.tie_word_embeddings = s.tied;
  if (s.llama3_rope) {
    // Llama-3's theta, and an original context short enough that the
    // scaling changes the angles of a 40-token test noticeably (with
    // Llama-3.1's 8192 it would hide in rounding noise at these positions).
    c.rope_theta = 500000.0;
    c.rope_scaling = llama::Llama3RopeScaling{4.0, 1.0, 4.0, 32};
  }
  return c;
}

std::vector<TokenId> prompt_of(size_t length, uint32_t seed, int32_t vocab = 300) {
  std::mt19937 rng(seed);
  std::vector<TokenId> ids(length);
  for (auto& id : ids) id = TokenId(rng() % uint32_t(vocab));
  return ids;
}

// A checkpoint of the small default shape, written once per test case.
struct SmallModel {
  TempDir dir{"small"};
  llama::LlamaConfig config = small_config();
  SmallModel() {
    config.num_key_value_heads = 1;  // GQA 4:1
    write_checkpoint(dir.path(), config, 5);
    randomize_norms(dir.path(), 5);
  }
};

// Runs `request` to the end of its tokens in chunks of the given sizes (the
// last chunk samples), then `decode` greedy steps; returns the logits of
// every sampling step.
std::vector<std::vector<float>> run_chunked(Model& model, Request& request, const std::vector<int32_t>& chunks,
                                            int decode, uint32_t block_seed = 7, int32_t block_tokens = 16) {
  StepDriver driver(model, 256, block_tokens, block_seed);
  std::vector<std::vector<float>> logits;
  for (int32_t chunk : chunks) {
    auto outcome = driver.run({{&request, chunk}});
    REQUIRE_MESSAGE(outcome.status.is_ok(), outcome.status.message());
    if (!outcome.output.logits.empty()) logits.push_back(outcome.output.logits[0]);
  }
  REQUIRE(request.computed == request.prompt_len);
  for (int i = 0; i < decode; ++i) {
    auto outcome = driver.run({{&request, 1}});
    REQUIRE_MESSAGE(outcome.status.is_ok(), outcome.status.message());
    logits.push_back(outcome.output.logits.at(0));
  }
  return logits;
}

}  // namespace

TEST_CASE("logits match the dense oracle for every shape, in prefill and decode") {
  for (const Shape& shape : kShapes) {
    const std::string shape_name = shape.name;
    CAPTURE(shape_name);
    TempDir dir(shape.name);
    const llama::LlamaConfig config = config_of(shape);
    write_checkpoint(dir.path(), config, 17, shape.dtype);
    if (shape.random_norms) randomize_norms(dir.path(), 17);
    auto loaded = load(dir.path());
    CHECK(loaded->model->info().kv_heads == shape.kv_heads);
    CHECK(loaded->model->info().vocab_size == 300);

    Request request(prompt_of(37, 3));
    const auto ours = run_chunked(*loaded->model, request, {37}, 6);
    REQUIRE(ours.size() == 7);
    DenseLlama oracle(*loaded->weights, config);
    const auto want = oracle.forward(request.tokens);
    for (size_t i = 0; i < ours.size(); ++i) {
      CAPTURE(i);
      const size_t position = 36 + i;  // the prompt's last token, then each decoded one
      CHECK(relative_error(ours[i], want[position]) < 1e-5);
    }
    if (shape.llama3_rope) {
      // The scaling must matter here, or this shape would not test it.
      DenseLlama unscaled(*loaded->weights, config, false);
      CHECK(relative_error(ours.back(), unscaled.forward(request.tokens)[42]) > 1e-4);
    }
  }
}

TEST_CASE("one prefill == the prompt in chunks == prefill then decode steps") {
  SmallModel small;
  auto loaded = load(small.dir.path());
  const std::vector<TokenId> prompt = prompt_of(45, 11);

  Request whole(prompt);
  const auto reference = run_chunked(*loaded->model, whole, {45}, 10);
  const std::vector<std::vector<int32_t>> layouts = {
      std::vector<int32_t>(45, 1),               // token by token, like decoding the prompt
      {7, 7, 7, 7, 7, 7, 3},                      // chunks that straddle 16-token blocks
      {16, 16, 13},                               // chunks on block boundaries
      {30, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},  // prefill, then the rest one at a time
  };
  for (size_t i = 0; i < layouts.size(); ++i) {
    CAPTURE(i);
    Request chunked(prompt);
    const auto logits = run_chunked(*loaded->model, chunked, layouts[i], 10, uint32_t(100 + i));
    CHECK(chunked.tokens == whole.tokens);
    REQUIRE(logits.size() == reference.size());
    for (size_t j = 0; j < logits.size(); ++j) CHECK(relative_error(logits[j], reference[j]) < 1e-5);
  }
  SUBCASE("another block size") {
    REQUIRE(loaded->model->allocate_kv_cache(512, 5).is_ok());
    Request small_blocks(prompt);
    const auto logits = run_chunked(*loaded->model, small_blocks, {9, 36}, 10, 3, 5);
    CHECK(small_blocks.tokens == whole.tokens);
    for (size_t j = 0; j < logits.size(); ++j) CHECK(relative_error(logits[j], reference[j]) < 1e-5);
  }
}

TEST_CASE("a batch mixing a prefill chunk after a cached prefix, a fresh prefill and decodes == each alone") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 512);
  Model& model = *loaded->model;
  SamplingParams seeded;
  seeded.temperature = 0.8f;
  seeded.top_k = 50;
  seeded.top_p = 0.95f;
  seeded.repetition_penalty = 1.2f;
  // Two copies of four requests: one set runs alone, one together.
  auto make = [&] {
    std::vector<Request> r;
    r.emplace_back(prompt_of(40, 21));                 // prefix of 24 cached, then a chunk of 16
    r.emplace_back(prompt_of(13, 22));                 // fresh prefill
    r.emplace_back(prompt_of(9, 23));                  // decoding, greedy
    r.emplace_back(prompt_of(30, 24), seeded, 1234);   // decoding, seeded sampling
    return r;
  };
  std::vector<Request> alone = make(), together = make();
  StepDriver driver(model, 512, 16, 99);
  // Bring both sets to the same state: prefix of 0, prompts of 2 and 3 prefilled and one token generated.
  for (auto* set : {&alone, &together}) {
    REQUIRE(driver.run({{&(*set)[0], 24}}).status.is_ok());
    REQUIRE(driver.run({{&(*set)[2], 9}}).status.is_ok());
    REQUIRE(driver.run({{&(*set)[3], 30}}).status.is_ok());
  }
  std::vector<std::vector<float>> alone_logits;
  for (auto [index, len] : {std::pair{0, 16}, {1, 13}, {2, 1}, {3, 1}}) {
    auto outcome = driver.run({{&alone[size_t(index)], len}});
    REQUIRE(outcome.status.is_ok());
    alone_logits.push_back(outcome.output.logits.at(0));
  }
  auto mixed = driver.run({{&together[0], 16}, {&together[1], 13}, {&together[2], 1}, {&together[3], 1}});
  REQUIRE_MESSAGE(mixed.status.is_ok(), mixed.status.message());
  REQUIRE(mixed.output.logits.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(relative_error(mixed.output.logits[i], alone_logits[i]) < 1e-5);
    CHECK(together[i].tokens == alone[i].tokens);
  }
  // Then all four decode together for a while, against each decoding alone.
  for (int step = 0; step < 8; ++step) {
    for (auto& r : alone) REQUIRE(driver.run({{&r, 1}}).status.is_ok());
    REQUIRE(driver.run({{&together[0], 1}, {&together[1], 1}, {&together[2], 1}, {&together[3], 1}}).status.is_ok());
  }
  for (size_t i = 0; i < 4; ++i) CHECK(together[i].tokens == alone[i].tokens);
}

TEST_CASE("greedy and seeded sampling are reproducible; seeds matter only when sampling") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 512);
  const std::vector<TokenId> prompt = prompt_of(20, 31);
  auto generate = [&](SamplingParams sp, uint64_t seed) {
    Request r(prompt, sp, seed);
    run_chunked(*loaded->model, r, {20}, 15, uint32_t(seed));
    return std::vector<TokenId>(r.generated().begin(), r.generated().end());
  };
  SamplingParams sp;
  sp.temperature = 1.3f;
  sp.top_k = 100;
  sp.top_p = 0.97f;
  sp.min_p = 0.001f;
  sp.repetition_penalty = 1.1f;
  sp.presence_penalty = 0.2f;
  sp.frequency_penalty = 0.1f;
  const auto first = generate(sp, 42);
  CHECK(first.size() == 16);
  CHECK(generate(sp, 42) == first);
  CHECK(generate(sp, 43) != first);
  SamplingParams greedy = Request::greedy_params();
  CHECK(generate(greedy, 1) == generate(greedy, 2));
  CHECK(generate(greedy, 1) != first);
}

TEST_CASE("suppressed ids are never sampled") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 512);
  const std::vector<TokenId> prompt = prompt_of(12, 41);
  Request probe(prompt);
  const auto logits = run_chunked(*loaded->model, probe, {12}, 0).at(0);
  std::vector<TokenId> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](TokenId a, TokenId b) { return logits[size_t(a)] > logits[size_t(b)]; });
  CHECK(probe.tokens.back() == order[0]);

  SUBCASE("greedy takes the best id not suppressed") {
    Request r(prompt);
    r.suppressed = {order[0], order[1], order[2], 100000, -5};  // ids outside the vocabulary are ignored
    run_chunked(*loaded->model, r, {12}, 0);
    CHECK(r.tokens.back() == order[3]);
  }
  SUBCASE("sampling never draws one, whatever the seed") {
    const std::set<TokenId> banned(order.begin(), order.begin() + 20);
    SamplingParams sp;
    sp.temperature = 2.0f;
    for (uint64_t seed = 0; seed < 40; ++seed) {
      Request r(prompt, sp, seed);
      r.suppressed.assign(banned.begin(), banned.end());
      run_chunked(*loaded->model, r, {12}, 0);
      CHECK(banned.count(r.tokens.back()) == 0);
    }
  }
}

TEST_CASE("logprobs are the raw log-softmax, one entry per sampled sequence") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 512);
  StepDriver driver(*loaded->model, 512, 16);
  Request plain(prompt_of(10, 51));
  Request asking(prompt_of(14, 52));
  asking.sampling.top_logprobs = 4;
  auto outcome = driver.run({{&plain, 10}, {&asking, 14}});
  REQUIRE(outcome.status.is_ok());
  REQUIRE(outcome.output.logprobs.size() == 2);  // aligned with `sampled`, as the engine reads them
  const TokenLogprob& lp = outcome.output.logprobs[1];
  const auto& logits = outcome.output.logits[1];
  double top = *std::max_element(logits.begin(), logits.end()), total = 0;
  for (float l : logits) total += std::exp(double(l) - top);
  const double want = double(logits[size_t(lp.id)]) - top - std::log(total);
  CHECK(lp.id == asking.tokens.back());
  CHECK(std::abs(lp.logprob - want) < 1e-5);
  REQUIRE(lp.top.size() == 4);
  CHECK(lp.top[0].first == lp.id);  // greedy: the chosen one is the most likely
  for (size_t i = 1; i < lp.top.size(); ++i) CHECK(lp.top[i].second <= lp.top[i - 1].second);
  CHECK(outcome.output.logprobs[0].top.empty());
}

TEST_CASE("threads: the same bits for any thread count") {
  SmallModel small;
  auto one = load(small.dir.path(), 1);
  auto three = load(small.dir.path(), 3);
  const std::vector<TokenId> prompt = prompt_of(90, 61);
  Request a(prompt), b(prompt);
  const auto la = run_chunked(*one->model, a, {90}, 4);
  const auto lb = run_chunked(*three->model, b, {90}, 4);
  CHECK(la == lb);
  CHECK(a.tokens == b.tokens);
}

// The policy on its own is tests/conformance's (conformance_kv_cache); this is
// what its page dtype does to a whole model.
TEST_CASE("kv_cpu: 16-bit pages round K/V, and the model stays close to f32 pages") {
  SmallModel small;
  auto f32 = load(small.dir.path());
  const std::vector<TokenId> prompt = prompt_of(30, 71);
  Request base(prompt);
  const auto want = run_chunked(*f32->model, base, {30}, 3);
  for (const char* dtype : {"bf16", "f16"}) {
    CAPTURE(dtype);
    auto loaded = load(small.dir.path(), 1, dtype);
    Request r(prompt);
    const auto got = run_chunked(*loaded->model, r, {30}, 0);
    const double error = relative_error(got[0], want[0]);
    CHECK(error > 0);       // the pages really are 16-bit
    CHECK(error < 2e-2);
  }
}

// The quality bar for quantized KV, on the CPU twin: last-position
// logits within cosine 0.999 (int8) and 0.99 (int4) of f32 pages, through a
// chunked prefill that reads its own quantized prefix and then decodes.
TEST_CASE("kv_cpu: int8 and int4 pages keep the logits within cosine 0.999 / 0.99 of f32 pages") {
  SmallModel small;
  auto f32 = load(small.dir.path());
  const std::vector<TokenId> prompt = prompt_of(40, 73);
  Request base(prompt);
  const auto want = run_chunked(*f32->model, base, {16, 16, 8}, 4);
  for (auto [format, bar] : {std::pair{"int8", 0.999}, {"int4", 0.99}}) {
    CAPTURE(format);
    auto loaded = load(small.dir.path(), 1, format);
    Request r(prompt);
    const auto got = run_chunked(*loaded->model, r, {16, 16, 8}, 4);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      double dot = 0, a = 0, b = 0;
      for (size_t j = 0; j < got[i].size(); ++j) {
        dot += double(got[i][j]) * want[i][j];
        a += double(got[i][j]) * got[i][j];
        b += double(want[i][j]) * want[i][j];
      }
      const double cosine = dot / std::sqrt(a * b);
      CHECK(cosine >= bar);
      CHECK(cosine < 1.0);  // the pages really are quantized
    }
  }
}

TEST_CASE("bad steps are errors that name the problem, and leave the model usable") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 64);
  Model& model = *loaded->model;
  StepDriver driver(model, 64, 16);
  for (TokenId bad : {TokenId(300), TokenId(-1), TokenId(1 << 30)}) {
    CAPTURE(bad);
    std::vector<TokenId> prompt = prompt_of(8, 81);
    prompt[5] = bad;
    Request r(prompt);
    auto outcome = driver.run({{&r, 8}});
    CHECK(outcome.status.code() == ErrorCode::invalid_argument);
    CHECK(outcome.status.message().find("outside the vocabulary") != std::string::npos);
    CHECK(outcome.status.message().find(std::to_string(bad)) != std::string::npos);
    driver.release(r);
  }
  // Layout errors, built by hand.
  const std::vector<TokenId> ids{1, 2, 3};
  const std::vector<int32_t> blocks{70};  // outside the 64 blocks
  SamplingParams sp = Request::greedy_params();
  StepSequence seq;
  seq.query_len = 3;
  seq.block_table = blocks;
  seq.sample = true;
  seq.sampling = &sp;
  StepOutput out;
  Status s = model.step(StepInput{ids, std::vector<int32_t>{0, 1, 2}, std::span(&seq, 1)}, out);
  CHECK(s.message().find("outside the cache's 64 blocks") != std::string::npos);
  const std::vector<int32_t> good_blocks{3};
  seq.block_table = good_blocks;
  s = model.step(StepInput{ids, std::vector<int32_t>{0, 2, 2}, std::span(&seq, 1)}, out);
  CHECK(s.message().find("position") != std::string::npos);
  seq.query_len = 4;
  s = model.step(StepInput{ids, std::vector<int32_t>{0, 1, 2}, std::span(&seq, 1)}, out);
  CHECK(s.code() == ErrorCode::invalid_argument);
  seq.query_len = 3;
  seq.cached_len = 20;  // needs 2 blocks, has 1
  s = model.step(StepInput{ids, std::vector<int32_t>{20, 21, 22}, std::span(&seq, 1)}, out);
  CHECK(s.message().find("block table has 1") != std::string::npos);
  seq.cached_len = 0;
  const std::vector<TokenId> bad_history{1, 400};
  seq.history = bad_history;
  s = model.step(StepInput{ids, std::vector<int32_t>{0, 1, 2}, std::span(&seq, 1)}, out);
  CHECK(s.message().find("history") != std::string::npos);
  seq.history = {};
  // Still fine afterwards.
  s = model.step(StepInput{ids, std::vector<int32_t>{0, 1, 2}, std::span(&seq, 1)}, out);
  CHECK_MESSAGE(s.is_ok(), s.message());
  CHECK(out.sampled.size() == 1);
}

TEST_CASE("load refuses what it does not support, naming the key or tensor") {
  SUBCASE("attention bias") {
    TempDir dir("bias");
    llama::LlamaConfig c = small_config();
    c.attention_bias = true;
    write_checkpoint(dir.path(), c, 1);
    auto loaded = try_load(dir.path());
    REQUIRE_FALSE(loaded.has_value());
    CHECK(loaded.status().code() == ErrorCode::unsupported);
    CHECK(loaded.status().message().find("attention_bias") != std::string::npos);
  }
  SUBCASE("a missing tensor") {
    TempDir dir("missing");
    llama::LlamaConfig c = small_config();
    c.tie_word_embeddings = true;
    write_checkpoint(dir.path(), c, 1);
    // The same weights under an untied config: lm_head.weight is missing.
    c.tie_word_embeddings = false;
    std::ofstream(dir.path() / "config.json") << llama::llama_config_to_json(c);
    auto loaded = try_load(dir.path());
    REQUIRE_FALSE(loaded.has_value());
    CHECK(loaded.status().code() == ErrorCode::not_found);
    CHECK(loaded.status().message().find("lm_head.weight") != std::string::npos);
  }
  SUBCASE("a tensor of the wrong shape") {
    TempDir dir("shape");
    llama::LlamaConfig c = small_config();
    write_checkpoint(dir.path(), c, 1);
    c.intermediate_size = 100;
    std::ofstream(dir.path() / "config.json") << llama::llama_config_to_json(c);
    auto loaded = try_load(dir.path());
    REQUIRE_FALSE(loaded.has_value());
    CHECK(loaded.status().message().find("model.layers.0.mlp.gate_proj.weight") != std::string::npos);
    CHECK(loaded.status().message().find("[100, 64]") != std::string::npos);
  }
  SUBCASE("no KV policy, and steps before the cache exists") {
    TempDir dir("nokv");
    write_checkpoint(dir.path(), small_config(), 1);
    auto registry = load_registry();
    auto weights = checkpoint::ModelDirectory::open(dir.path());
    REQUIRE(weights.has_value());
    Settings settings;
    settings.set("threads", int64_t(1));
    auto model = registry->create<Model>("llama_cpu", settings, nullptr);
    REQUIRE(model.has_value());
    LoadContext context;
    context.weights = weights.value().get();
    context.activation_dtype = DType::f32;
    Status s = model.value()->load(context);
    CHECK(s.message().find("KV cache policy") != std::string::npos);
    auto loaded = load(dir.path(), 1, "f32", 0);
    const std::vector<TokenId> ids{1};
    StepSequence seq;
    seq.query_len = 1;
    StepOutput out;
    s = loaded->model->step(StepInput{ids, std::vector<int32_t>{0}, std::span(&seq, 1)}, out);
    CHECK(s.message().find("allocate_kv_cache") != std::string::npos);
  }
  SUBCASE("a GPU device: the probe declines it, saying why") {
    auto registry = load_registry();
    Settings settings;
    settings.set("threads", int64_t(1));
    auto model = registry->create<Model>("llama_cpu", settings, nullptr, "model", Device{DeviceKind::cuda, 0});
    REQUIRE_FALSE(model.has_value());
    CHECK(model.status().code() == ErrorCode::unsupported);
    CHECK(model.status().message().find("llama_cpu computes on the CPU") != std::string::npos);
  }
  SUBCASE("activations other than f32, and a KV policy whose format does not fit") {
    TempDir dir("formats");
    write_checkpoint(dir.path(), small_config(), 1);
    auto registry = load_registry();
    auto weights = checkpoint::ModelDirectory::open(dir.path());
    REQUIRE(weights.has_value());
    Settings kv_settings;
    kv_settings.set("dtype", std::string("bf16"));
    auto policy = registry->create<KvCachePolicy>("kv_cpu", kv_settings, nullptr);
    REQUIRE(policy.has_value());
    Settings settings;
    settings.set("threads", int64_t(1));
    LoadContext context;
    context.weights = weights.value().get();
    context.kv_policy = policy.value().get();
    context.activation_dtype = DType::bf16;
    auto bf16_model = registry->create<Model>("llama_cpu", settings, nullptr).value();
    Status s = bf16_model->load(context);
    CHECK(s.code() == ErrorCode::unsupported);
    CHECK(s.message().find("computes in f32; activation dtype bf16") != std::string::npos);

    // kv_cpu as a policy that says it keeps its cache on a GPU.
    class GpuFormat final : public KvCachePolicy {
     public:
      explicit GpuFormat(KvCachePolicy& real) : real_(real) {}
      KvFormat format() const noexcept override {
        KvFormat format = real_.format();
        format.device = DeviceKind::cuda;
        return format;
      }
      size_t bytes_per_block(const KvShape& shape) const noexcept override { return real_.bytes_per_block(shape); }
      Result<PluginPtr<KvCache>> allocate(const KvShape& shape, int32_t blocks, Device device) noexcept override {
        return real_.allocate(shape, blocks, device);
      }
      Result<size_t> workspace_bytes(const KvWorkspaceQuery& query) const noexcept override {
        return real_.workspace_bytes(query);
      }
      Status write(KvCache& cache, int32_t layer, const TensorView& k, const TensorView& v, const PagedKvBatch& batch,
                   const ExecContext& exec) noexcept override {
        return real_.write(cache, layer, k, v, batch, exec);
      }
      Status attend(const KvCache& cache, int32_t layer, const TensorView& q, const PagedKvBatch& batch, float scale,
                    const TensorView& out, const ExecContext& exec) noexcept override {
        return real_.attend(cache, layer, q, batch, scale, out, exec);
      }

     private:
      KvCachePolicy& real_;
    } gpu_format(*policy.value());
    context.activation_dtype = DType::f32;
    context.kv_policy = &gpu_format;
    auto gpu_kv_model = registry->create<Model>("llama_cpu", settings, nullptr).value();
    s = gpu_kv_model->load(context);
    CHECK(s.code() == ErrorCode::invalid_argument);
    CHECK(s.message().find("keeps its cache on cuda but the model runs on cpu") != std::string::npos);
    // The same policy as it describes itself (bf16 pages, f32 activations) is fine.
    context.kv_policy = policy.value().get();
    auto model = registry->create<Model>("llama_cpu", settings, nullptr).value();
    s = model->load(context);
    CHECK_MESSAGE(s.is_ok(), s.message());
  }
}

TEST_CASE("image embeddings: memory from allocate_embeddings replaces token embeddings in a step") {
  SmallModel small;
  auto loaded = load(small.dir.path(), 1, "f32", 64);
  Model& model = *loaded->model;
  const int64_t hidden = small.config.hidden_size;

  // The embeddings of four real tokens, written into the engine-owned memory.
  const std::vector<TokenId> prompt = prompt_of(12, 91);
  const std::vector<TokenId> pictured(prompt.begin() + 5, prompt.begin() + 9);
  auto memory = model.allocate_embeddings(int64_t(pictured.size()));
  REQUIRE_MESSAGE(memory.has_value(), memory.status().message());
  const TensorView view = memory.value()->view();
  REQUIRE(view.rank == 2);
  CHECK(view.shape[0] == int64_t(pictured.size()));
  CHECK(view.shape[1] == hidden);
  CHECK(view.dtype == DType::f32);
  CHECK(view.device.kind == DeviceKind::cpu);
  CHECK(view.is_contiguous());
  const std::vector<double> table = tensor_values(*loaded->weights, "model.embed_tokens.weight");
  for (size_t r = 0; r < pictured.size(); ++r)
    for (int64_t i = 0; i < hidden; ++i)
      view.as<float>()[r * size_t(hidden) + size_t(i)] = float(table[size_t(pictured[r]) * size_t(hidden) + size_t(i)]);

  // The same prompt with placeholders where the span goes: the same logits, bit for bit.
  auto run = [&](const std::vector<TokenId>& ids, std::span<const EmbeddingSpan> spans, int32_t first_block) {
    const std::vector<int32_t> blocks{first_block};
    std::vector<int32_t> positions(ids.size());
    std::iota(positions.begin(), positions.end(), 0);
    SamplingParams greedy = Request::greedy_params();
    StepSequence seq;
    seq.query_len = int32_t(ids.size());
    seq.block_table = blocks;
    seq.sample = true;
    seq.sampling = &greedy;
    seq.return_logits = true;
    seq.embeddings = spans;
    StepOutput out;
    Status s = model.step(StepInput{ids, positions, std::span(&seq, 1)}, out);
    REQUIRE_MESSAGE(s.is_ok(), s.message());
    return out.logits.at(0);
  };
  std::vector<TokenId> placeholders = prompt;
  std::fill(placeholders.begin() + 5, placeholders.begin() + 9, TokenId(0));
  const EmbeddingSpan span{5, view};
  const auto spliced = run(placeholders, std::span(&span, 1), 3);
  CHECK(spliced == run(prompt, {}, 4));
  CHECK(spliced != run(placeholders, {}, 5));

  CHECK(model.allocate_embeddings(0).status().code() == ErrorCode::invalid_argument);
  auto registry = load_registry();
  Settings settings;
  settings.set("threads", int64_t(1));
  auto unloaded = registry->create<Model>("llama_cpu", settings, nullptr).value();
  CHECK(unloaded->allocate_embeddings(4).status().message().find("before load") != std::string::npos);
}
