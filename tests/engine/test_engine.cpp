// The engine against a model whose every answer depends on what it reads
// back from the paged KV cache.
//
// PagedEchoModel writes each computed token into its slot (block table ->
// block, offset) and samples next = f(all tokens read back through the block
// table). A scheduler bug — a wrong block, a stale prefix-cache block, a
// position off by one, a lost chunk — changes the tokens, so comparing with
// `expected_run` (the same rule applied to a plain vector) checks the
// scheduler, the block manager, preemption and prefix caching end to end.
// Where an image embedding replaces a token, the model stores a value made
// from the embedding instead, so image positions are checked the same way.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <condition_variable>
#include <future>
#include <mutex>
#include <map>
#include <random>

#include "../support/letter_tokenizer.hpp"
#include "engine/block_manager.hpp"
#include "engine/engine.hpp"

using namespace hostrun;
using namespace hostrun::core;

namespace {

constexpr TokenId kEos = 999;
constexpr int32_t kVocab = 1000;
// The vision test encoder: each image becomes kImageTokens embeddings of width 1.
constexpr TokenId kImagePlaceholder = 900;
constexpr int32_t kImageTokens = 3;
// What the echo model stores at a position an embedding value replaces.
TokenId embedded_token(float value) { return TokenId(2000 + int32_t(value)); }

// The next token after `context`: eos sometimes, else 1..996.
TokenId next_token(std::span<const TokenId> context, uint64_t seed, uint32_t offset, bool random) {
  uint64_t h = 0;
  for (size_t i = 0; i < context.size(); ++i) h = h * 1000003u + uint64_t(context[i]) * (i + 1);
  if (random) h ^= (seed + 0x9e37u * offset) * 0xbf58476d1ce4e5b9ull;
  if (h % 41 == 0) return kEos;
  return TokenId(1 + h % 996);
}

// How the fake model runs steps: Model::step only; overlapped, each step
// run when it is submitted (a device that keeps up); or overlapped, each run
// only when it is collected (a device that runs late, so whatever the host
// changes between submit and collect must not matter).
enum class Mode { step, overlap_at_submit, overlap_at_collect };

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::step: return "one step at a time";
    case Mode::overlap_at_submit: return "overlapped, run at submit";
    case Mode::overlap_at_collect: return "overlapped, run at collect";
  }
  return "?";
}

// Each test runs once per mode.
Mode pick_mode() {
  Mode mode = Mode::step;
  SUBCASE("one step at a time") { mode = Mode::step; }
  SUBCASE("overlapped, run at submit") { mode = Mode::overlap_at_submit; }
  SUBCASE("overlapped, run at collect") { mode = Mode::overlap_at_collect; }
  return mode;
}

// The echo model's logits after `context` (when a sequence asks for them):
// a spread of values fixed by the context, so a log-probability computed from
// the wrong context, or for the wrong target, differs.
std::vector<float> echo_logits(std::span<const TokenId> context) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : context) h = (h ^ uint64_t(t)) * 1099511628211ull;
  std::vector<float> logits(kVocab);
  for (int32_t v = 0; v < kVocab; ++v) {
    uint64_t x = (h + uint64_t(v) * 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
    logits[size_t(v)] = float((x >> 40) % 4096) / 256.0f;
  }
  return logits;
}

// Host memory standing in for device memory the engine owns.
class HostTensor final : public DeviceTensor {
 public:
  explicit HostTensor(int64_t rows) : values_(size_t(rows)) {}
  TensorView view() const noexcept override {
    return TensorView::contiguous(const_cast<float*>(values_.data()), DType::f32, {int64_t(values_.size()), 1});
  }

 private:
  std::vector<float> values_;
};

class PagedEchoModel final : public Model {
 public:
  explicit PagedEchoModel(Mode mode) : mode_(mode) {}
  Status load(const LoadContext&) noexcept override { return {}; }
  ModelInfo info() const noexcept override {
    ModelInfo m;
    m.vocab_size = kVocab;
    m.hidden_size = 1;
    m.activation_dtype = DType::f32;
    m.layers = 1;
    m.kv_heads = 1;
    m.head_dim = 1;
    m.max_positions = 100000;
    m.eos_ids = {kEos};
    m.device = {DeviceKind::cpu, 0};
    return m;
  }
  Result<MemoryReport> memory() const noexcept override { return MemoryReport{}; }
  Status allocate_kv_cache(int32_t num_blocks, int32_t block_tokens) noexcept override {
    block_tokens_ = block_tokens;
    slots_.assign(size_t(num_blocks) * size_t(block_tokens), -1);
    return {};
  }
  Status step(const StepInput& input, StepOutput& output) noexcept override {
    for (const StepSequence& s : input.sequences)
      if (s.previous_sample >= 0) return {ErrorCode::invalid_argument, "previous_sample outside submit_step"};
    Step copy = copy_step(input);
    Status status = run(copy, output);
    if (status && fail_step_ > 0 && steps_done_++ == fail_step_) status = {ErrorCode::internal, "injected kernel failure"};
    return status;
  }
  Result<PluginPtr<DeviceTensor>> allocate_embeddings(int64_t rows) noexcept override {
    ++embedding_allocations;
    return PluginPtr<DeviceTensor>(make_pinned<HostTensor>(LibraryPin{}, rows));
  }
  size_t embedding_allocations = 0;
  // The fail_step-th step (counting from 0) reports a failure when its output is asked for.
  void fail_step(size_t step) { fail_step_ = step; }
  bool overlaps_steps() const noexcept override { return mode_ != Mode::step; }
  Status submit_step(const StepInput& input) noexcept override {
    if (queued_.size() >= 2) return {ErrorCode::internal, "a third step submitted before the first was collected"};
    for (const StepSequence& s : input.sequences)
      if (s.previous_sample >= 0 && s.sample && s.sampling->has_penalties())
        return {ErrorCode::invalid_argument, "previous_sample for a sequence with penalties"};
    queued_.push_back({copy_step(input), {}, false, {}});
    if (mode_ == Mode::overlap_at_submit) queued_.back().status = run(queued_.back().input, queued_.back().output);
    queued_.back().ran = mode_ == Mode::overlap_at_submit;
    return {};
  }
  Status collect_step(StepOutput& output) noexcept override {
    if (queued_.empty()) return {ErrorCode::internal, "collect_step with no step submitted"};
    Queued& front = queued_.front();
    if (!front.ran) front.status = run(front.input, front.output);
    Status status = front.status;
    if (status && fail_step_ > 0 && steps_done_++ == fail_step_) status = {ErrorCode::internal, "injected kernel failure"};
    output = std::move(front.output);
    queued_.pop_front();
    return status;
  }
  size_t steps = 0;
  size_t max_batch = 0;

 private:
  // A step as the model keeps it after submit: nothing points into the engine.
  struct Step {
    std::vector<TokenId> token_ids;
    std::vector<int32_t> positions;
    std::vector<StepSequence> sequences;
    std::vector<std::vector<int32_t>> block_tables;
    std::vector<std::vector<TokenId>> suppressed;
    std::vector<SamplingParams> sampling;
    std::vector<std::vector<EmbeddingSpan>> embeddings;  // views into memory the engine keeps
  };
  struct Queued {
    Step input;
    StepOutput output;
    bool ran = false;
    Status status;
  };

  static Step copy_step(const StepInput& input) {
    Step step;
    step.token_ids.assign(input.token_ids.begin(), input.token_ids.end());
    step.positions.assign(input.positions.begin(), input.positions.end());
    step.sequences.assign(input.sequences.begin(), input.sequences.end());
    for (const StepSequence& s : input.sequences) {
      step.block_tables.emplace_back(s.block_table.begin(), s.block_table.end());
      step.suppressed.emplace_back(s.suppressed.begin(), s.suppressed.end());
      step.sampling.push_back(s.sampling ? *s.sampling : SamplingParams{});
      step.embeddings.emplace_back(s.embeddings.begin(), s.embeddings.end());
    }
    for (size_t i = 0; i < step.sequences.size(); ++i) {
      step.sequences[i].block_table = step.block_tables[i];
      step.sequences[i].suppressed = step.suppressed[i];
      step.sequences[i].sampling = &step.sampling[i];
      step.sequences[i].embeddings = step.embeddings[i];
      step.sequences[i].history = {};  // the engine's, and stale by then
      step.sequences[i].generated = {};
    }
    return step;
  }

  Status run(Step& input, StepOutput& output) {
    ++steps;
    max_batch = std::max(max_batch, input.sequences.size());
    // One logits entry per sample when any sequence asks (Model's contract).
    const bool any_logits = std::any_of(input.sequences.begin(), input.sequences.end(),
                                        [](const StepSequence& s) { return s.sample && s.return_logits; });
    for (const StepSequence& s : input.sequences) {
      if (s.previous_sample >= 0) {
        if (size_t(s.previous_sample) >= last_sampled_.size())
          return {ErrorCode::invalid_argument, "previous_sample beyond the previous step's samples"};
        input.token_ids[size_t(s.query_start)] = last_sampled_[size_t(s.previous_sample)];
      }
      std::vector<TokenId> stored(input.token_ids.begin() + s.query_start,
                                  input.token_ids.begin() + s.query_start + s.query_len);
      for (const EmbeddingSpan& span : s.embeddings) {
        if (span.values.dtype != DType::f32 || span.values.shape[1] != 1 || span.first_token < 0 ||
            span.first_token + span.values.shape[0] > s.query_len)
          return {ErrorCode::invalid_argument, "an embedding span outside the sequence's tokens"};
        for (int64_t r = 0; r < span.values.shape[0]; ++r)
          stored[size_t(span.first_token + r)] = embedded_token(span.values.as<float>()[r]);
      }
      for (int32_t j = 0; j < s.query_len; ++j) {
        int32_t position = s.cached_len + j;
        if (input.positions[size_t(s.query_start + j)] != position) return {ErrorCode::internal, "wrong position"};
        int32_t block = s.block_table[size_t(position / block_tokens_)];
        slots_[size_t(block * block_tokens_ + position % block_tokens_)] = stored[size_t(j)];
      }
      if (!s.sample) continue;
      std::vector<TokenId> context;
      for (int32_t p = 0; p < s.cached_len + s.query_len; ++p) {
        int32_t block = s.block_table[size_t(p / block_tokens_)];
        context.push_back(slots_[size_t(block * block_tokens_ + p % block_tokens_)]);
      }
      bool random = s.sampling->temperature > 0;
      TokenId next = next_token(context, s.rng_seed, s.rng_offset, random);
      while (std::find(s.suppressed.begin(), s.suppressed.end(), next) != s.suppressed.end()) next = next % 996 + 1;
      output.sampled.push_back(next);
      if (any_logits) output.logits.push_back(s.return_logits ? echo_logits(context) : std::vector<float>{});
    }
    last_sampled_ = output.sampled;
    return {};
  }

  Mode mode_;
  size_t fail_step_ = 0;   // 0: none
  size_t steps_done_ = 0;  // outputs given so far
  int32_t block_tokens_ = 1;
  std::vector<TokenId> slots_;
  std::deque<Queued> queued_;
  std::vector<TokenId> last_sampled_;  // of the step run last
};

class FixedBytesPolicy final : public KvCachePolicy {
 public:
  KvFormat format() const noexcept override { return {"test", 0, 16, dtype_bit(DType::f32), DeviceKind::cpu, false}; }
  size_t bytes_per_block(const KvShape& shape) const noexcept override { return size_t(shape.block_tokens) * 4; }
  Result<PluginPtr<KvCache>> allocate(const KvShape&, int32_t, Device) noexcept override {
    return Status(ErrorCode::unsupported, "the test model keeps its own cache");
  }
  Result<size_t> workspace_bytes(const KvWorkspaceQuery&) const noexcept override { return size_t(0); }
  Status write(KvCache&, int32_t, const TensorView&, const TensorView&, const PagedKvBatch&,
               const ExecContext&) noexcept override {
    return {ErrorCode::unsupported, ""};
  }
  Status attend(const KvCache&, int32_t, const TensorView&, const PagedKvBatch&, float, const TensorView&,
                const ExecContext&) noexcept override {
    return {ErrorCode::unsupported, ""};
  }
};

// A vision encoder for engine tests: an image's kImageTokens embeddings are
// a function of its bytes, so images with different bytes differ.
class ByteSumVision final : public VisionEncoder {
 public:
  static float image_value(const ImageData& image) {
    uint32_t sum = 0;
    for (uint8_t b : image.bytes) sum = sum * 31 + b;
    return float(sum % 997) * 4;
  }
  Status load(const VisionLoadContext&) noexcept override { return {}; }
  VisionInfo info() const noexcept override {
    VisionInfo v;
    v.tokens_per_image = kImageTokens;
    v.hidden_size = 1;
    v.placeholder_id = kImagePlaceholder;
    v.placeholder = "<image>";
    v.output_dtypes = dtype_bit(DType::f32);
    return v;
  }
  Status encode(std::span<const ImageData> images, const TensorView& out) noexcept override {
    {
      std::unique_lock lock(gate_mutex_);
      ++calls_;
      gate_cv_.notify_all();
      gate_cv_.wait(lock, [&] { return !held_; });
    }
    if (out.dtype != DType::f32 || out.shape[0] != int64_t(images.size()) * kImageTokens || out.shape[1] != 1)
      return {ErrorCode::invalid_argument, "the engine gave memory of the wrong shape"};
    for (size_t i = 0; i < images.size(); ++i) {
      if (images[i].bytes.empty()) return {ErrorCode::invalid_argument, fmt::format("image {}: no bytes", i)};
      for (int32_t t = 0; t < kImageTokens; ++t) out.as<float>()[i * kImageTokens + size_t(t)] = image_value(images[i]) + float(t);
    }
    encoded += images.size();
    return {};
  }
  std::atomic<size_t> encoded{0};

  // While held, encode() waits: the engine's encoder thread stands still.
  void hold() {
    std::lock_guard lock(gate_mutex_);
    held_ = true;
  }
  void release() {
    {
      std::lock_guard lock(gate_mutex_);
      held_ = false;
    }
    gate_cv_.notify_all();
  }
  // Waits (up to a few seconds) until encode() has been entered `calls` times in all.
  bool entered(size_t calls) {
    std::unique_lock lock(gate_mutex_);
    return gate_cv_.wait_for(lock, std::chrono::seconds(10), [&] { return calls_ >= calls; });
  }

 private:
  std::mutex gate_mutex_;
  std::condition_variable gate_cv_;
  bool held_ = false;
  size_t calls_ = 0;
};

ImageData image_of(uint8_t seed, size_t size = 64) {
  ImageData image;
  image.mime_type = "image/png";
  for (size_t i = 0; i < size; ++i) image.bytes.push_back(uint8_t(seed * 7 + i));
  return image;
}

using hostrun::testing::LetterTokenizer;
const LetterTokenizer kLetters(kVocab, kEos);

struct Outcome {
  std::vector<TokenId> generated;
  std::string text;
  FinishReason finish = FinishReason::none;
  std::string error;
  ErrorCode error_code = ErrorCode::ok;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

// What a request must produce, computed without the engine.
Outcome expected_run(const std::vector<TokenId>& prompt, const SamplingParams& sp, int32_t session_len, uint64_t seed) {
  Outcome out;
  std::vector<TokenId> tokens = prompt;
  int32_t limit = sp.max_tokens >= 0 ? std::min<int32_t>(session_len, int32_t(prompt.size()) + sp.max_tokens) : session_len;
  for (;;) {
    TokenId next = next_token(tokens, seed, uint32_t(out.generated.size()), sp.temperature > 0);
    if (int32_t(out.generated.size()) < sp.min_tokens && !sp.ignore_eos)
      while (next == kEos) next = next % 996 + 1;
    tokens.push_back(next);
    out.generated.push_back(next);
    if (next == kEos && !sp.ignore_eos) {
      out.finish = FinishReason::stop;
      break;
    }
    out.text += kLetters.letter(next);
    if (int32_t(tokens.size()) >= limit) {
      out.finish = FinishReason::length;
      break;
    }
  }
  out.prompt_tokens = int32_t(prompt.size());
  out.completion_tokens = int32_t(out.generated.size());
  return out;
}

// Chat messages as the model sees them: each image's placeholder, then the
// message's bytes as ids (the letter tokenizer's encoding).
std::atomic<int> g_chat_prompts_built{0};  // calls of the harness's prompt builder

std::vector<TokenId> chat_prompt(const std::vector<ChatMessage>& messages) {
  ++g_chat_prompts_built;
  std::vector<TokenId> ids;
  for (const auto& m : messages) {
    ids.insert(ids.end(), m.images.size(), kImagePlaceholder);
    (void)kLetters.encode(m.content, {}, ids);
  }
  return ids;
}

// The prompt the echo model reads back: placeholders expanded, each image
// position holding what the model stores for its embedding.
std::vector<TokenId> model_view(const std::vector<ChatMessage>& messages) {
  std::vector<TokenId> out;
  for (const auto& m : messages) {
    for (const auto& image : m.images)
      for (int32_t t = 0; t < kImageTokens; ++t) out.push_back(embedded_token(ByteSumVision::image_value(image) + float(t)));
    (void)kLetters.encode(m.content, {}, out);
  }
  return out;
}

struct Harness {
  std::shared_ptr<PagedEchoModel> model;
  std::shared_ptr<ByteSumVision> vision;  // null for a text-only model
  std::unique_ptr<Engine> engine;

  // `tokenizer_ids`: the tokenizer's vocabulary, smaller than the model's when its embedding is padded.
  explicit Harness(EngineConfig config, Mode mode, bool with_vision = false, int32_t tokenizer_ids = kVocab)
      : model(std::make_shared<PagedEchoModel>(mode)),
        vision(with_vision ? std::make_shared<ByteSumVision>() : nullptr) {
    CAPTURE(mode_name(mode));
    EngineParts parts;
    parts.model = model;
    parts.kv_policy = std::make_shared<FixedBytesPolicy>();
    parts.tokenizer = std::make_shared<LetterTokenizer>(tokenizer_ids, kEos);
    parts.vision = vision;
    parts.prompt_builder = [](const std::vector<ChatMessage>& messages) -> Result<std::vector<TokenId>> {
      return chat_prompt(messages);
    };
    parts.model_name = "echo";
    auto started = Engine::start(config, std::move(parts));
    REQUIRE_MESSAGE(started.has_value(), started.status().message());
    engine = std::move(started.value());
  }

  // Submits and returns a future of the outcome, collecting streamed pieces.
  std::future<Outcome> run(std::vector<TokenId> prompt, SamplingParams sp, uint64_t* id_out = nullptr) {
    GenerationRequest request;
    request.input = std::move(prompt);
    request.sampling = std::move(sp);
    return submit(std::move(request), id_out);
  }
  std::future<Outcome> chat(std::vector<ChatMessage> messages, SamplingParams sp) {
    GenerationRequest request;
    request.input = std::move(messages);
    request.sampling = std::move(sp);
    return submit(std::move(request), nullptr);
  }
  std::future<Outcome> submit(GenerationRequest request, uint64_t* id_out) {
    auto promise = std::make_shared<std::promise<Outcome>>();
    auto outcome = std::make_shared<Outcome>();
    auto id = engine->submit(std::move(request), [promise, outcome](const StreamEvent& e) {
      outcome->text += e.text;
      outcome->generated.insert(outcome->generated.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.finish != FinishReason::none) {
        outcome->finish = e.finish;
        outcome->error = e.error;
        outcome->error_code = e.error_code;
        outcome->prompt_tokens = e.prompt_tokens;
        outcome->completion_tokens = e.completion_tokens;
        promise->set_value(*outcome);
      }
    });
    REQUIRE_MESSAGE(id.has_value(), id.status().message());
    if (id_out) *id_out = *id;
    return promise->get_future();
  }
};

std::vector<TokenId> random_prompt(std::mt19937& rng, int32_t length) {
  std::uniform_int_distribution<TokenId> token(1, 996);
  std::vector<TokenId> p(static_cast<size_t>(length));
  for (auto& t : p) t = token(rng);
  return p;
}

SamplingParams greedy(int32_t max_tokens) {
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_tokens = max_tokens;
  return sp;
}

void check_same(const Outcome& got, const Outcome& want) {
  CHECK(got.finish == want.finish);
  CHECK(got.generated == want.generated);
  CHECK(got.text == want.text);
  CHECK(got.completion_tokens == want.completion_tokens);
  CHECK(got.prompt_tokens == want.prompt_tokens);
}

// 64 requests of different lengths at once, each compared with its run alone.
EngineStats run_many(EngineConfig config, uint64_t seed, bool expect_preemption) {
  const Mode mode = pick_mode();
  Harness h(config, mode);
  std::mt19937 rng{static_cast<uint32_t>(seed)};
  std::vector<std::vector<TokenId>> prompts;
  std::vector<SamplingParams> params;
  std::vector<std::future<Outcome>> futures;
  for (int i = 0; i < 64; ++i) {
    prompts.push_back(random_prompt(rng, 1 + int32_t(rng() % 300)));
    SamplingParams sp = greedy(1 + int32_t(rng() % 60));
    sp.ignore_eos = i % 3 == 0;
    sp.min_tokens = i % 5 == 0 ? 10 : 0;
    // The echo model ignores penalties, but overlapped steps must not hand it
    // a device-side token for a sequence whose sampling reads its history.
    if (i % 7 == 0) sp.repetition_penalty = 1.3f;
    params.push_back(sp);
    futures.push_back(h.run(prompts.back(), sp));
  }
  for (int i = 0; i < 64; ++i) {
    CAPTURE(i);
    check_same(futures[size_t(i)].get(), expected_run(prompts[size_t(i)], params[size_t(i)], config.session_len, 0));
  }
  h.engine->wait_idle();
  EngineStats stats = h.engine->stats();
  CHECK(stats.kv_blocks_held == 0);
  if (expect_preemption) CHECK(stats.preemptions > 0);
  CHECK(h.model->max_batch <= size_t(config.max_batch_size));
  if (mode != Mode::step) CHECK(stats.overlapped_steps > 0);
  return stats;
}

}  // namespace

TEST_CASE("block manager: allocation, sharing and eviction of cached blocks") {
  BlockManager bm(3, 4, true);
  auto a = bm.allocate(), b = bm.allocate(), c = bm.allocate();
  REQUIRE((a && b && c));
  CHECK_FALSE(bm.allocate().has_value());
  std::vector<int32_t> tokens{1, 2, 3, 4};
  uint64_t h = BlockManager::chain_hash(0, tokens);
  bm.publish(*a, h, tokens);
  bm.release(*a);
  CHECK(bm.available() == 1);  // cached but unheld: evictable
  auto again = bm.acquire_cached(h, tokens);
  REQUIRE(again.has_value());
  CHECK(*again == *a);
  CHECK_FALSE(bm.acquire_cached(h, std::vector<int32_t>{1, 2, 3, 5}).has_value());  // a collision is not a hit
  bm.release(*a);
  bm.release(*b);
  auto d = bm.allocate();  // the never-cached block goes first
  CHECK(*d == *b);
  auto e = bm.allocate();  // then the cached one is evicted and forgotten
  CHECK(*e == *a);
  CHECK_FALSE(bm.acquire_cached(h, tokens).has_value());
}

TEST_CASE("one request alone gives the expected tokens and usage") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 64;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  std::vector<TokenId> prompt{5, 6, 7, 8, 9};
  Outcome got = h.run(prompt, greedy(30)).get();
  check_same(got, expected_run(prompt, greedy(30), config.session_len, 0));
}

TEST_CASE("ids of a padded vocabulary (past the tokenizer's) are generated with no text, as HF decodes them") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 64;
  config.cache_block_seq_len = 16;
  constexpr int32_t kTokenizerIds = 400;
  Harness h(config, pick_mode(), false, kTokenizerIds);
  std::vector<TokenId> prompt{5, 6, 7, 8, 9};
  SamplingParams sp = greedy(40);
  sp.ignore_eos = true;
  Outcome got = h.run(prompt, sp).get();
  Outcome want = expected_run(prompt, sp, config.session_len, 0);
  want.text.clear();
  for (TokenId id : want.generated)
    if (id < kTokenizerIds) want.text += kLetters.letter(id);
  REQUIRE(std::any_of(want.generated.begin(), want.generated.end(), [](TokenId id) { return id >= kTokenizerIds; }));
  check_same(got, want);
}

TEST_CASE("batch invariance: 64 concurrent requests equal their runs alone (chunked prefill)") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 2000;
  config.cache_block_seq_len = 16;
  config.max_prefill_token_num = 100;  // forces prompts into chunks, mixed with decodes
  config.max_batch_size = 24;
  run_many(config, 11, false);
}

TEST_CASE("a KV budget for only a few sequences: all 64 finish with the same tokens, by preemption") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 40;  // 640 tokens: about two of the longest requests
  config.cache_block_seq_len = 16;
  config.max_prefill_token_num = 256;
  config.decode_reserve_tokens = 0;  // admit while a chunk fits: running ones must then give way
  run_many(config, 12, true);
}

TEST_CASE("the same under preemption with prefix caching on") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 40;
  config.cache_block_seq_len = 16;
  config.enable_prefix_caching = true;
  config.decode_reserve_tokens = 0;
  run_many(config, 13, true);
}

TEST_CASE("the same budget with admission reserving what running sequences will need: no preemption at all") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 40;
  config.cache_block_seq_len = 16;
  config.max_prefill_token_num = 256;
  config.decode_reserve_tokens = 64;  // more than any request's max_tokens (<= 60): every need is reserved
  const EngineStats stats = run_many(config, 12, false);
  CHECK(stats.preemptions == 0);
}

TEST_CASE("a reserve larger than the cache still admits the queue's head when nothing runs") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 8;  // 128 tokens
  config.cache_block_seq_len = 16;
  config.decode_reserve_tokens = 100000;
  Harness h(config, pick_mode());
  std::vector<std::future<Outcome>> futures;
  SamplingParams sp = greedy(20);
  sp.ignore_eos = true;
  for (int i = 0; i < 4; ++i) futures.push_back(h.run(std::vector<TokenId>(size_t(60 + i), TokenId(5 + i)), sp));
  for (auto& f : futures) CHECK(f.get().finish == FinishReason::length);  // one at a time, none refused
  h.engine->wait_idle();
  CHECK(h.engine->stats().preemptions == 0);
}

TEST_CASE("prefix caching: a shared prefix is prefilled once") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 200;
  config.cache_block_seq_len = 16;
  config.enable_prefix_caching = true;
  Harness h(config, pick_mode());
  std::mt19937 rng(5);
  std::vector<TokenId> shared = random_prompt(rng, 200);
  std::vector<TokenId> first = shared, second = shared;
  first.push_back(3);
  second.insert(second.end(), {4, 5, 6});
  check_same(h.run(first, greedy(8)).get(), expected_run(first, greedy(8), 4096, 0));
  h.engine->wait_idle();
  EngineStats before = h.engine->stats();
  check_same(h.run(second, greedy(8)).get(), expected_run(second, greedy(8), 4096, 0));
  h.engine->wait_idle();
  EngineStats after = h.engine->stats();
  // 12 full blocks (192 tokens) of the shared 200 come from the cache; only 203 - 192 are computed.
  CHECK(after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == 192);
  CHECK(after.prefill_tokens_computed - before.prefill_tokens_computed == 203 - 192);
}

TEST_CASE("engine stats: steps that carry prompt tokens and the tokens they run") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 200;
  config.cache_block_seq_len = 16;
  config.max_prefill_token_num = 64;
  Harness h(config, pick_mode());
  std::mt19937 rng(11);
  const std::vector<TokenId> prompt = random_prompt(rng, 150);
  check_same(h.run(prompt, greedy(6)).get(), expected_run(prompt, greedy(6), 4096, 0));
  h.engine->wait_idle();
  const EngineStats stats = h.engine->stats();
  // 150 prompt tokens in chunks of at most 64: three steps with nothing else in them ...
  CHECK(stats.prefill_steps == 3);
  CHECK(stats.prefill_step_tokens == 150);
  CHECK(stats.prefill_tokens_computed == 150);
  // ... and the later tokens from steps that only decode.
  CHECK(stats.steps - stats.prefill_steps == stats.decode_tokens_computed);
  CHECK(stats.decode_tokens_computed > 0);

  // Two requests at once: the steps that carry prompt tokens count every
  // token they run (a decode beside a chunk included), so at least the
  // prompt tokens; the other steps run at least one token each.
  const std::vector<TokenId> second = random_prompt(rng, 300);
  auto first_run = h.run(prompt, greedy(200));
  auto second_run = h.run(second, greedy(4));
  check_same(first_run.get(), expected_run(prompt, greedy(200), 4096, 0));
  check_same(second_run.get(), expected_run(second, greedy(4), 4096, 0));
  h.engine->wait_idle();
  const EngineStats after = h.engine->stats();
  CHECK(after.prefill_tokens_computed - stats.prefill_tokens_computed >= 300);
  CHECK(after.prefill_step_tokens - stats.prefill_step_tokens >=
        after.prefill_tokens_computed - stats.prefill_tokens_computed);
  CHECK(after.prefill_steps > stats.prefill_steps);
  CHECK(after.prefill_tokens_computed + after.decode_tokens_computed - after.prefill_step_tokens >=
        after.steps - after.prefill_steps);
}

TEST_CASE("cancelling a running request frees all its blocks") {
  EngineConfig config;
  config.session_len = 100000;
  config.num_kv_blocks = 500;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  std::mt19937 rng(7);
  SamplingParams sp = greedy(-1);
  sp.ignore_eos = true;
  uint64_t id = 0;
  auto running = h.run(random_prompt(rng, 100), sp, &id);
  while (h.engine->counters().completion_tokens < 50) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(h.engine->stats().kv_blocks_held > 0);
  h.engine->cancel(id);
  Outcome got = running.get();
  CHECK(got.finish == FinishReason::cancelled);
  h.engine->wait_idle();
  CHECK(h.engine->stats().kv_blocks_held == 0);
  CHECK(h.engine->counters().requests_cancelled == 1);
}

TEST_CASE("session length: a prompt over it is refused, generation reaching it ends with length") {
  EngineConfig config;
  config.session_len = 64;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  GenerationRequest too_long;
  too_long.input = std::vector<TokenId>(64, 7);
  auto refused = h.engine->submit(too_long, [](const StreamEvent&) {});
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().code() == ErrorCode::context_length_exceeded);
  CHECK(refused.status().message().find("session length is 64") != std::string::npos);
  // OpenAI's rule on request: prompt + max_tokens over the session is refused, not cut.
  GenerationRequest strict;
  strict.input = std::vector<TokenId>(50, 7);
  strict.sampling = greedy(20);
  strict.refuse_over_session_len = true;
  auto over = h.engine->submit(strict, [](const StreamEvent&) {});
  REQUIRE_FALSE(over.has_value());
  CHECK(over.status().code() == ErrorCode::context_length_exceeded);
  CHECK(over.status().message().find("70 were asked for (50 in the prompt, 20 to generate)") != std::string::npos);
  strict.sampling = greedy(14);  // exactly the session: accepted
  strict.sampling.ignore_eos = true;
  Outcome fits = h.submit(strict, nullptr).get();
  CHECK(fits.finish == FinishReason::length);
  CHECK(fits.completion_tokens == 14);

  SamplingParams sp = greedy(-1);
  sp.ignore_eos = true;
  std::vector<TokenId> prompt(50, 9);
  Outcome got = h.run(prompt, sp).get();
  CHECK(got.finish == FinishReason::length);
  CHECK(got.completion_tokens == 14);
  check_same(got, expected_run(prompt, sp, 64, 0));
}

TEST_CASE("a text whose bytes cannot fit the session is refused before it is tokenized") {
  // LetterTokenizer: one byte per token, so 64 bytes are at least 64 tokens.
  EngineConfig config;
  config.session_len = 64;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  GenerationRequest text;
  text.input = std::string(64, 'x');
  auto refused = h.engine->submit(text, [](const StreamEvent&) {});
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().code() == ErrorCode::context_length_exceeded);
  CHECK(refused.status().message().find("64 bytes, so at least 64 tokens") != std::string::npos);
  const int built = g_chat_prompts_built;
  GenerationRequest chat;
  chat.input = std::vector<ChatMessage>{{"system", std::string(30, 's'), {}}, {"user", std::string(34, 'u'), {}}};
  auto chat_refused = h.engine->submit(chat, [](const StreamEvent&) {});
  REQUIRE_FALSE(chat_refused.has_value());
  CHECK(chat_refused.status().message().find("at least 64 tokens") != std::string::npos);
  CHECK(g_chat_prompts_built == built);  // never rendered
  // One byte less fits as a prompt and is answered.
  Outcome fits = h.submit([] {
    GenerationRequest r;
    r.input = std::string(63, 'x');
    r.sampling = greedy(1);
    return r;
  }(), nullptr).get();
  CHECK(fits.prompt_tokens == 63);
}

TEST_CASE("the n choices of a chat request are rendered and tokenized once") {
  EngineConfig config;
  config.session_len = 256;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  std::vector<ChatMessage> messages{{"user", "hello there", {}}};
  const int before = g_chat_prompts_built;
  std::vector<std::future<Outcome>> choices;
  for (int i = 0; i < 4; ++i) choices.push_back(h.chat(messages, greedy(3)));
  for (auto& c : choices) CHECK(c.get().prompt_tokens == 11);
  CHECK(g_chat_prompts_built == before + 1);
  // Other messages are built anew, and the first again after them.
  h.chat({{"user", "hello therE", {}}}, greedy(1)).get();
  h.chat(messages, greedy(1)).get();
  CHECK(g_chat_prompts_built == before + 3);
}

TEST_CASE("stop strings end the text before them; stop ids and min_tokens") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  std::vector<TokenId> prompt{1, 2, 3};
  SamplingParams sp = greedy(40);
  sp.ignore_eos = true;
  Outcome reference = expected_run(prompt, sp, 4096, 0);
  REQUIRE(reference.text.size() >= 20);
  std::string stop = reference.text.substr(12, 3);
  size_t cut = reference.text.find(stop);
  sp.stop = {stop, "not-present"};
  Outcome got = h.run(prompt, sp).get();
  CHECK(got.finish == FinishReason::stop);
  CHECK(got.text == reference.text.substr(0, cut));

  SamplingParams by_id = greedy(40);
  by_id.ignore_eos = true;
  by_id.stop_token_ids = {reference.generated[5]};
  size_t first = size_t(std::find(reference.generated.begin(), reference.generated.end(), reference.generated[5]) -
                        reference.generated.begin());
  Outcome stopped = h.run(prompt, by_id).get();
  CHECK(stopped.finish == FinishReason::stop);
  CHECK(stopped.completion_tokens == int32_t(first + 1));
  std::string before_stop;
  for (size_t i = 0; i < first; ++i) before_stop += kLetters.letter(reference.generated[i]);
  CHECK(stopped.text == before_stop);
}

TEST_CASE("seeded sampling is reproducible and differs across seeds") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.max_tokens = 20;
  sp.ignore_eos = true;
  sp.seed = 42;
  std::vector<TokenId> prompt{4, 4, 4};
  Outcome a = h.run(prompt, sp).get(), b = h.run(prompt, sp).get();
  CHECK(a.generated == b.generated);
  check_same(a, expected_run(prompt, sp, 4096, 42));
  sp.seed = 43;
  CHECK(h.run(prompt, sp).get().generated != a.generated);
}

TEST_CASE("bad requests are refused at submit") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 4;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  GenerationRequest empty;
  empty.input = std::vector<TokenId>{};
  CHECK_FALSE(h.engine->submit(empty, [](const StreamEvent&) {}).has_value());
  GenerationRequest outside;
  outside.input = std::vector<TokenId>{1, kVocab};
  CHECK(h.engine->submit(outside, [](const StreamEvent&) {}).status().message().find("outside the model's vocabulary") !=
        std::string::npos);
  GenerationRequest huge;
  huge.input = std::vector<TokenId>(100, 3);  // more than 4 blocks of 16
  CHECK(h.engine->submit(huge, [](const StreamEvent&) {}).status().code() == ErrorCode::context_length_exceeded);

  // A request that fits as a prompt but not with its generation fails alone, clearly.
  SamplingParams sp = greedy(-1);
  sp.ignore_eos = true;
  Outcome got = h.run(std::vector<TokenId>(60, 3), sp).get();
  CHECK(got.finish == FinishReason::error);
  CHECK(got.error.find("cannot hold this request") != std::string::npos);
  CHECK(got.error_code == ErrorCode::context_length_exceeded);
  h.engine->wait_idle();
  CHECK(h.engine->stats().kv_blocks_held == 0);
}

TEST_CASE("a step that fails ends its requests with the error; the engine goes on") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 400;
  config.cache_block_seq_len = 16;
  Harness h(config, pick_mode());
  h.model->fail_step(3);
  std::mt19937 rng(21);
  SamplingParams sp = greedy(40);
  sp.ignore_eos = true;
  std::vector<std::future<Outcome>> futures;
  for (int i = 0; i < 8; ++i) futures.push_back(h.run(random_prompt(rng, 20 + i), sp));
  int failed = 0;
  for (auto& f : futures) {
    Outcome got = f.get();
    if (got.finish == FinishReason::error) {
      ++failed;
      CHECK(got.error == "injected kernel failure");
      CHECK(got.error_code == ErrorCode::internal);
    } else {
      CHECK(got.finish == FinishReason::length);
    }
  }
  CHECK(failed > 0);
  // Nothing is lost: the blocks come back and a new request runs as if nothing happened.
  std::vector<TokenId> prompt{7, 8, 9};
  check_same(h.run(prompt, greedy(12)).get(), expected_run(prompt, greedy(12), 4096, 0));
  h.engine->wait_idle();
  CHECK(h.engine->stats().kv_blocks_held == 0);
}

TEST_CASE("images: each placeholder becomes the encoder's tokens, and their embeddings reach the model there") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 200;
  config.cache_block_seq_len = 4;
  config.max_prefill_token_num = 5;  // image spans cut across prefill chunks
  config.max_images_per_step = 2;    // three images take two encoder calls
  Harness h(config, pick_mode(), true);
  std::vector<ChatMessage> messages{{"user", "describe", {image_of(1), image_of(2)}},
                                    {"assistant", "two", {}},
                                    {"user", "and", {image_of(3)}}};
  SamplingParams sp = greedy(16);
  sp.ignore_eos = true;
  const std::vector<TokenId> seen = model_view(messages);
  Outcome got = h.chat(messages, sp).get();
  check_same(got, expected_run(seen, sp, 4096, 0));
  CHECK(got.prompt_tokens == int32_t(chat_prompt(messages).size()) + 3 * (kImageTokens - 1));
  CHECK(h.vision->encoded == 3);
  CHECK(h.model->embedding_allocations == 1);
  h.engine->wait_idle();
  CHECK(h.engine->stats().images_encoded == 3);
  CHECK(h.engine->info().accepts_images);
}

TEST_CASE("images: encoding runs beside the steps; a request waiting for its images holds up no other and can be cancelled") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 200;
  config.cache_block_seq_len = 4;
  Harness h(config, pick_mode(), true);
  h.vision->hold();
  struct Release {  // a failed check below must not leave the encoder thread held (the engine would never stop)
    ByteSumVision& vision;
    ~Release() { vision.release(); }
  } release_at_exit{*h.vision};
  const std::vector<ChatMessage> pictured{{"user", "describe", {image_of(1)}}};
  SamplingParams sp = greedy(8);
  sp.ignore_eos = true;
  std::future<Outcome> with_image = h.chat(pictured, sp);
  REQUIRE(h.vision->entered(1));
  // The encoder is inside encode() and stays there: text requests run to the end meanwhile.
  const std::vector<TokenId> prompt{7, 8, 9};
  std::future<Outcome> text = h.run(prompt, greedy(12));
  REQUIRE(text.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  check_same(text.get(), expected_run(prompt, greedy(12), 4096, 0));
  // A second image request, queued behind the first, is cancelled while it waits.
  GenerationRequest second;
  second.input = std::vector<ChatMessage>{{"user", "and", {image_of(2)}}};
  second.sampling = sp;
  uint64_t second_id = 0;
  std::future<Outcome> cancelled = h.submit(std::move(second), &second_id);
  h.engine->cancel(second_id);
  CHECK(cancelled.get().finish == FinishReason::cancelled);
  CHECK(with_image.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  h.vision->release();
  check_same(with_image.get(), expected_run(model_view(pictured), sp, 4096, 0));
  h.engine->wait_idle();
  CHECK(h.engine->stats().images_encoded == 2);  // the cancelled one's too: it was on its way
  CHECK(h.engine->stats().kv_blocks_held == 0);
}

TEST_CASE("images and the prefix cache: equal placeholder ids with different images share no block; the same image does") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 200;
  config.cache_block_seq_len = 4;
  config.enable_prefix_caching = true;
  Harness h(config, pick_mode(), true);
  const std::string text = "the same question, long enough for several blocks";
  SamplingParams sp = greedy(12);
  sp.ignore_eos = true;
  // Runs one chat, checks its tokens, and gives the prefix-cache hits so far.
  auto hits_after = [&](const std::vector<ChatMessage>& messages) {
    Outcome got = h.chat(messages, sp).get();
    check_same(got, expected_run(model_view(messages), sp, 4096, 0));
    h.engine->wait_idle();
    return h.engine->stats().prefix_cache_hit_tokens;
  };
  auto ask = [&](const ImageData& image) { return hits_after({{"user", text, {image}}}); };
  const uint64_t first = ask(image_of(10));
  // The image sits in the first block, so a different one changes every block's hash.
  const uint64_t other_image = ask(image_of(11));
  CHECK(other_image == first);
  // The same image again: every full block of the prompt but the last comes from the cache.
  const uint64_t same_image = ask(image_of(10));
  const int32_t prompt = int32_t(text.size()) + kImageTokens;
  CHECK(same_image - other_image == uint64_t((prompt - 1) / 4 * 4));
  // Images after a shared text prefix: the blocks before the image are shared.
  auto ask_after = [&](const ImageData& image) { return hits_after({{"system", text, {}}, {"user", "look", {image}}}); };
  const uint64_t before = ask_after(image_of(20));
  const uint64_t after = ask_after(image_of(21));
  CHECK(after - before == uint64_t(text.size() / 4 * 4));
}

TEST_CASE("images under preemption: recomputed prefills take the embeddings the request keeps") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 24;  // 96 tokens: a few requests at a time
  config.cache_block_seq_len = 4;
  config.max_prefill_token_num = 32;
  config.decode_reserve_tokens = 0;  // admit while a chunk fits, so that some are preempted
  Harness h(config, pick_mode(), true);
  std::vector<std::vector<ChatMessage>> requests;
  std::vector<std::future<Outcome>> futures;
  SamplingParams sp = greedy(30);
  sp.ignore_eos = true;
  for (int i = 0; i < 12; ++i) {
    requests.push_back({{"user", std::string(size_t(5 + i), char('a' + i)), {image_of(uint8_t(40 + i % 5))}}});
    futures.push_back(h.chat(requests.back(), sp));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    CAPTURE(i);
    check_same(futures[i].get(), expected_run(model_view(requests[i]), sp, 4096, 0));
  }
  h.engine->wait_idle();
  CHECK(h.engine->stats().preemptions > 0);
  CHECK(h.vision->encoded == 12);  // once per request, whatever was recomputed
  CHECK(h.engine->stats().kv_blocks_held == 0);
}

TEST_CASE("images are refused where they cannot be placed") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 100;
  config.cache_block_seq_len = 16;
  {
    Harness text_only(config, Mode::step, false);
    GenerationRequest request;
    request.input = std::vector<ChatMessage>{{"user", "what is this", {image_of(1)}}};
    auto refused = text_only.engine->submit(request, [](const StreamEvent&) {});
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.status().code() == ErrorCode::invalid_argument);
    CHECK(refused.status().message().find("takes no images") != std::string::npos);
    CHECK_FALSE(text_only.engine->info().accepts_images);
  }
  Harness h(config, Mode::step, true);
  // Placeholder ids without images (they cannot come from chat content: only from ids or raw text).
  GenerationRequest forged;
  forged.input = std::vector<TokenId>{5, kImagePlaceholder, 6};
  auto refused = h.engine->submit(forged, [](const StreamEvent&) {});
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().message().find("1 image placeholder") != std::string::npos);
  // An image the encoder cannot read ends that request alone, with the encoder's error.
  Outcome broken = h.chat({{"user", "x", {ImageData{"image/png", {}}}}}, greedy(4)).get();
  CHECK(broken.finish == FinishReason::error);
  CHECK(broken.error.find("no bytes") != std::string::npos);
  std::vector<ChatMessage> fine{{"user", "y", {image_of(2)}}};
  check_same(h.chat(fine, greedy(4)).get(), expected_run(model_view(fine), greedy(4), 4096, 0));
}

TEST_CASE("admission control: a full queue refuses at submit; a time limit ends a request with what it made") {
  EngineConfig config;
  config.session_len = 100000;
  config.num_kv_blocks = 20000;    // no request reaches the cache's or the session's end in its time
  config.cache_block_seq_len = 16;
  config.max_batch_size = 1;       // one runs, the rest wait
  config.max_queued_requests = 3;
  config.request_timeout_seconds = 0.3;
  Harness h(config, pick_mode());
  SamplingParams forever = greedy(-1);
  forever.ignore_eos = true;
  std::vector<std::future<Outcome>> accepted;
  accepted.push_back(h.run({1, 2, 3}, forever));
  while (h.engine->counters().running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (int i = 0; i < 3; ++i) accepted.push_back(h.run({4, 5, TokenId(6 + i)}, forever));
  GenerationRequest over;
  over.input = std::vector<TokenId>{7, 8, 9};
  over.sampling = forever;
  auto refused = h.engine->submit(over, [](const StreamEvent&) {});
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().code() == ErrorCode::resource_exhausted);
  CHECK(refused.status().message().find("engine.max_queued_requests") != std::string::npos);
  // Every accepted request, running or waiting, ends by the limit with the tokens it made so far.
  for (auto& f : accepted) {
    Outcome got = f.get();
    CHECK(got.finish == FinishReason::error);
    CHECK(got.error_code == ErrorCode::deadline_exceeded);
  }
  h.engine->wait_idle();
  EngineCounters counters = h.engine->counters();
  CHECK(counters.requests_rejected == 1);
  CHECK(counters.requests_timed_out == 4);
  CHECK(h.engine->stats().kv_blocks_held == 0);
  // The queue has room again.
  std::vector<TokenId> prompt{7, 8, 9};
  check_same(h.run(prompt, greedy(6)).get(), expected_run(prompt, greedy(6), 100000, 0));
}

namespace {

// A score request's log-probabilities, computed without the engine.
std::vector<double> expected_scores(std::vector<TokenId> context, const std::vector<TokenId>& targets) {
  std::vector<double> out;
  for (TokenId target : targets) {
    std::vector<float> logits = echo_logits(context);
    double max = *std::max_element(logits.begin(), logits.end()), sum = 0;
    for (float v : logits) sum += std::exp(double(v) - max);
    out.push_back(double(logits[size_t(target)]) - max - std::log(sum));
    context.push_back(target);
  }
  return out;
}

struct Scored {
  std::vector<TokenId> ids;
  std::vector<double> logprobs;
  FinishReason finish = FinishReason::none;
  std::string error;
};

std::future<Scored> score(Engine& engine, ScoreRequest request) {
  auto promise = std::make_shared<std::promise<Scored>>();
  auto scored = std::make_shared<Scored>();
  auto id = engine.submit_score(std::move(request), [promise, scored](const StreamEvent& e) {
    CHECK(e.text.empty());
    for (const TokenLogprob& lp : e.logprobs) {
      scored->ids.push_back(lp.id);
      scored->logprobs.push_back(lp.logprob);
    }
    if (e.finish != FinishReason::none) {
      scored->finish = e.finish;
      scored->error = e.error;
      promise->set_value(*scored);
    }
  });
  REQUIRE_MESSAGE(id.has_value(), id.status().message());
  return promise->get_future();
}

}  // namespace

TEST_CASE("score requests: each target's log-probability as alone, batched with generation and under preemption") {
  EngineConfig config;
  config.session_len = 4096;
  config.num_kv_blocks = 40;  // 640 tokens: preemption among the longer requests
  config.cache_block_seq_len = 16;
  config.max_prefill_token_num = 128;
  config.enable_prefix_caching = true;
  config.decode_reserve_tokens = 0;
  Harness h(config, pick_mode());
  std::mt19937 rng{21};
  std::vector<ScoreRequest> requests;
  std::vector<std::future<Scored>> scored;
  std::vector<std::future<Outcome>> generated;
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 24; ++i) {
    ScoreRequest r{random_prompt(rng, 1 + int32_t(rng() % 200)), random_prompt(rng, 1 + int32_t(rng() % 60))};
    if (i % 6 == 0) r.targets.push_back(kEos);  // a stop id is only a target here
    requests.push_back(r);
    scored.push_back(score(*h.engine, r));
    if (i % 3 == 0) {
      prompts.push_back(random_prompt(rng, 1 + int32_t(rng() % 100)));
      generated.push_back(h.run(prompts.back(), greedy(20)));
    }
  }
  for (size_t i = 0; i < scored.size(); ++i) {
    CAPTURE(i);
    Scored got = scored[i].get();
    CHECK(got.finish == FinishReason::length);
    CHECK(got.ids == requests[i].targets);
    const std::vector<double> want = expected_scores(requests[i].context, requests[i].targets);
    REQUIRE(got.logprobs.size() == want.size());
    for (size_t t = 0; t < want.size(); ++t) CHECK(got.logprobs[t] == doctest::Approx(want[t]).epsilon(1e-5));
  }
  for (size_t i = 0; i < generated.size(); ++i)
    check_same(generated[i].get(), expected_run(prompts[i], greedy(20), config.session_len, 0));
  h.engine->wait_idle();
  CHECK(h.engine->stats().kv_blocks_held == 0);
  CHECK(h.engine->stats().preemptions > 0);
}

TEST_CASE("score requests that cannot run are refused at submit") {
  EngineConfig config;
  config.session_len = 100;
  config.num_kv_blocks = 64;
  config.cache_block_seq_len = 16;
  Harness h(config, Mode::step);
  auto refused = [&](ScoreRequest r) {
    auto id = h.engine->submit_score(std::move(r), [](const StreamEvent&) { FAIL("no event expected"); });
    REQUIRE_FALSE(id.has_value());
    return id.status();
  };
  CHECK(refused({{}, {1}}).code() == ErrorCode::invalid_argument);
  CHECK(refused({{1}, {}}).code() == ErrorCode::invalid_argument);
  CHECK(refused({{1}, {kVocab}}).code() == ErrorCode::invalid_argument);
  Status over = refused({std::vector<TokenId>(60, 1), std::vector<TokenId>(41, 2)});
  CHECK(over.code() == ErrorCode::context_length_exceeded);
  CHECK(over.message().find("session length of 100") != std::string::npos);
  // Exactly the session length fits.
  Scored fits = score(*h.engine, {std::vector<TokenId>(60, 1), std::vector<TokenId>(40, 2)}).get();
  CHECK(fits.finish == FinishReason::length);
  CHECK(fits.logprobs.size() == 40);
}
