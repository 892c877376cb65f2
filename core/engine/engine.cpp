#include "engine/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine/block_manager.hpp"

namespace hostrun::core {

// An image's place in its sequence: tokens_per_image positions from first_position.
struct Engine::ImageSpan {
  int32_t first_position = 0;
  uint64_t digest = 0;  // of the encoded bytes, for the prefix cache
};

struct Engine::Sequence {
  uint64_t id = 0;
  std::vector<TokenId> tokens;  // prompt, then generated
  int32_t prompt_len = 0;
  int32_t computed = 0;         // tokens whose K/V is in the cache (or will be, once the step in flight ran)
  int32_t pending = 0;          // tokens sampled by the step in flight, not yet in `tokens` (0 or 1)
  int32_t pending_index = -1;   // which of that step's samples is this sequence's
  std::vector<int32_t> blocks;  // block table
  std::vector<uint64_t> block_hashes;  // prefix hash of each published full block
  SamplingParams sampling;
  uint64_t seed = 0;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  bool admitted = false;  // left the queue for the batch once (preemption does not requeue it as new)
  int32_t max_len = 0;          // tokens.size() at which generation stops (length)
  StreamCallback callback;
  PluginPtr<IncrementalDecoder> decoder;
  std::string held_text;        // decoded but held back: it may begin a stop string
  size_t longest_stop = 0;
  bool text_closed = false;     // the decoder was flushed, or a stop string ended the text
  std::vector<ImageSpan> images;          // in prompt order
  std::vector<ImageData> unencoded;       // the images' bytes until the engine thread encodes them
  PluginPtr<DeviceTensor> embeddings;     // [images * tokens_per_image, hidden], kept while the request lives
  // A score request (ScoreRequest): the targets in order. A target joins
  // `tokens` when the step that scores it is handed to the model (it is the
  // next step's input, known on the host), so such a sequence is never pending.
  std::vector<TokenId> forced;
  int32_t forced_submitted = 0;  // targets whose scoring step was handed to the model
  int32_t forced_scored = 0;     // targets whose log-probability came back

  int32_t generated() const { return int32_t(tokens.size()) - prompt_len; }
  int32_t length() const { return int32_t(tokens.size()) + pending; }  // tokens known and pending
  bool scoring() const { return !forced.empty(); }
  // A step of it that samples is handed over and not yet collected.
  bool awaiting_output() const { return pending > 0 || forced_submitted > forced_scored; }
};

namespace {

// splitmix64: seeds for requests that bring none.
uint64_t next_seed(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// FNV-1a over an image's bytes (and type), finished with splitmix64's avalanche.
uint64_t image_digest(const ImageData& image) {
  uint64_t h = 1469598103934665603ull;
  for (char c : image.mime_type) h = (h ^ uint8_t(c)) * 1099511628211ull;
  for (uint8_t b : image.bytes) h = (h ^ b) * 1099511628211ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

// Rows [first, first + count) of a [rows, hidden] tensor.
TensorView rows_of(const TensorView& all, int64_t first, int64_t count) {
  TensorView part = all;
  part.data = static_cast<std::byte*>(all.data) + size_t(first * all.strides[0]) * dtype_bits(all.dtype) / 8;
  part.shape[0] = count;
  return part;
}

// log_softmax(logits)[target], the sum in double.
double target_logprob(const std::vector<float>& logits, TokenId target) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float v : logits) sum += std::exp(double(v) - double(max));
  return double(logits[size_t(target)]) - double(max) - std::log(sum);
}

// Length of the longest prefix of `text` that ends on a UTF-8 character boundary.
size_t utf8_safe_prefix(std::string_view text, size_t length) {
  while (length > 0 && length < text.size() && (static_cast<unsigned char>(text[length]) & 0xC0) == 0x80) --length;
  return length;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::start(EngineConfig config, EngineParts parts) {
  if (!parts.model || !parts.kv_policy || !parts.tokenizer)
    return Status(ErrorCode::invalid_argument, "the engine needs a model, a KV cache policy and a tokenizer");
  ModelInfo info = parts.model->info();
  if (config.session_len <= 0) config.session_len = info.max_positions;
  if (config.session_len <= 1)
    return Status(ErrorCode::invalid_argument, fmt::format("session length {} is too short", config.session_len));
  if (config.cache_block_seq_len <= 0 || config.max_batch_size <= 0 || config.max_prefill_token_num <= 0)
    return Status(ErrorCode::invalid_argument,
                  "cache block length, max batch size and max prefill tokens must be positive");

  if (parts.vision) {
    const VisionInfo vision = parts.vision->info();
    if (vision.hidden_size != info.hidden_size || vision.tokens_per_image <= 0 || vision.placeholder_id < 0 ||
        vision.placeholder_id >= info.vocab_size)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("the vision encoder makes {} embeddings of width {} for placeholder id {}, but the "
                                "model's hidden size is {} and its vocabulary {} ids",
                                vision.tokens_per_image, vision.hidden_size, vision.placeholder_id, info.hidden_size,
                                info.vocab_size));
    if (config.max_images_per_step <= 0)
      return Status(ErrorCode::invalid_argument, "engine.max_images_per_step must be positive");
  }
  KvShape shape{info.layers, info.kv_heads, info.head_dim, config.cache_block_seq_len, info.activation_dtype};
  size_t block_bytes = parts.kv_policy->bytes_per_block(shape);
  int64_t num_blocks = config.num_kv_blocks;
  if (num_blocks <= 0) {
    if (config.cache_max_entry_count <= 0 || config.cache_max_entry_count > 1)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("--cache-max-entry-count {} must be in (0, 1]", config.cache_max_entry_count));
    int64_t free_bytes;
    if (info.device.kind == DeviceKind::cpu) {
      free_bytes = config.cpu_memory_budget_bytes;
    } else {
      auto memory = parts.model->memory();
      if (!memory) return memory.status();
      free_bytes = int64_t(memory->free_bytes);
    }
    num_blocks = int64_t(double(free_bytes) * config.cache_max_entry_count) / int64_t(std::max<size_t>(block_bytes, 1));
    if (num_blocks < 1)
      return Status(ErrorCode::out_of_memory,
                    fmt::format("the KV cache does not fit: {} MiB free x cache-max-entry-count {} leaves less "
                                "than one block of {} KiB ({} tokens x {} layers x {} KV heads x head dim {})",
                                free_bytes >> 20, config.cache_max_entry_count, block_bytes >> 10,
                                config.cache_block_seq_len, info.layers, info.kv_heads, info.head_dim));
  }
  if (num_blocks > INT32_MAX) num_blocks = INT32_MAX;
  if (Status s = parts.model->allocate_kv_cache(int32_t(num_blocks), config.cache_block_seq_len); !s) return s;
  return std::unique_ptr<Engine>(new Engine(std::move(config), std::move(parts), int32_t(num_blocks)));
}

Engine::Engine(EngineConfig config, EngineParts parts, int32_t num_blocks)
    : config_(std::move(config)), parts_(std::move(parts)), log_(parts_.log_sink, "engine") {
  model_info_ = parts_.model->info();
  if (parts_.vision) vision_info_ = parts_.vision->info();
  blocks_ = std::make_unique<BlockManager>(num_blocks, config_.cache_block_seq_len, config_.enable_prefix_caching);
  seed_state_ = config_.seed ? config_.seed
                             : uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  max_token_bytes_ = longest_token_bytes(*parts_.tokenizer);
  tokenizer_ids_ = parts_.tokenizer->vocab_size();
  stop_ids_ = model_info_.eos_ids;
  for (TokenId id : parts_.tokenizer->special_tokens().eos) stop_ids_.push_back(id);
  for (TokenId id : parts_.extra_stop_ids) stop_ids_.push_back(id);
  std::sort(stop_ids_.begin(), stop_ids_.end());
  stop_ids_.erase(std::unique(stop_ids_.begin(), stop_ids_.end()), stop_ids_.end());
  stats_.kv_blocks_total = num_blocks;
  published_stats_ = stats_;
  counters_.kv_blocks_total = uint32_t(num_blocks);
  overlap_ = config_.overlap_steps && parts_.model->overlaps_steps();
  log_.info("KV cache: {} blocks of {} tokens; session length {}; {}", num_blocks, config_.cache_block_seq_len,
            config_.session_len, overlap_ ? "overlapped steps" : "one step at a time");
  if (parts_.vision) encoder_thread_ = std::thread([this] { encoder_loop(); });
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(inbox_mutex_);
    stopping_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

// Every token stands for at most max_token_bytes_ bytes of the text it was
// encoded from (the tokenizer contract in tokenizer.hpp), so a text of B bytes
// has at least ceil(B / max_token_bytes_) tokens. Counting that costs nothing;
// tokenizing megabytes that cannot fit costs seconds of CPU.
Status Engine::refuse_unfittable_text(size_t text_bytes) const {
  const size_t fewest = fewest_tokens(text_bytes, max_token_bytes_);
  if (fewest < size_t(config_.session_len)) return Status();
  return Status(ErrorCode::context_length_exceeded,
                fmt::format("the prompt is {} bytes, so at least {} tokens (no token of this tokenizer stands for more "
                            "than {} bytes); the session length is {} (raise --session-len or shorten the prompt)",
                            text_bytes, fewest, max_token_bytes_, config_.session_len));
}

Result<std::vector<TokenId>> Engine::chat_prompt(const std::vector<ChatMessage>& messages) {
  auto same_text = [](const std::vector<ChatMessage>& a, const std::vector<ChatMessage>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].role != b[i].role || a[i].content != b[i].content || !a[i].images.empty() || !b[i].images.empty())
        return false;
    return true;
  };
  size_t images = 0;
  for (const auto& message : messages) images += message.images.size();
  const bool has_images = images > 0;
  if (has_images && !vision_info_)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("this model takes no images (its manifest has no [vision] table), and the request "
                              "carries {}",
                              images));
  if (!has_images) {
    std::lock_guard lock(last_chat_.mutex);
    if (same_text(messages, last_chat_.messages)) return last_chat_.ids;
  }
  auto ids = parts_.prompt_builder(messages);
  if (!ids || has_images) return ids;
  std::lock_guard lock(last_chat_.mutex);
  last_chat_.messages = messages;
  last_chat_.ids = *ids;
  return ids;
}

Result<uint64_t> Engine::submit(GenerationRequest request, StreamCallback on_event) noexcept {
  try {
    auto seq = std::make_shared<Sequence>();
    const bool is_chat = std::holds_alternative<std::vector<ChatMessage>>(request.input);
    // Prompt ids from whatever the request carries.
    if (auto* ids = std::get_if<std::vector<TokenId>>(&request.input)) {
      seq->tokens = std::move(*ids);
    } else if (auto* text = std::get_if<std::string>(&request.input)) {
      if (Status s = refuse_unfittable_text(text->size()); !s) return s;
      // A raw prompt may spell special tokens (<|eot_id|>) on purpose, as in other OpenAI-style servers.
      if (Status s = parts_.tokenizer->encode(*text, {.add_bos = std::nullopt, .parse_special = true}, seq->tokens); !s)
        return s;
    }
    std::vector<ImageData> images;
    if (auto* messages = std::get_if<std::vector<ChatMessage>>(&request.input)) {
      if (!parts_.prompt_builder)
        return Status(ErrorCode::unsupported, "this engine has no chat template; send a prompt instead");
      size_t content_bytes = 0;
      for (const auto& message : *messages) content_bytes += message.content.size();
      if (Status s = refuse_unfittable_text(content_bytes); !s) return s;
      auto ids = chat_prompt(*messages);
      if (!ids) return ids.status();
      seq->tokens = std::move(*ids);
      for (auto& message : *messages)
        for (auto& image : message.images) images.push_back(std::move(image));
    }
    if (seq->tokens.empty()) return Status(ErrorCode::invalid_argument, "the prompt is empty");
    if (Status s = expand_images(*seq, std::move(images)); !s) return s;
    for (TokenId id : seq->tokens)
      if (id < 0 || id >= model_info_.vocab_size)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("token id {} is outside the model's vocabulary of {}", id, model_info_.vocab_size));
    seq->prompt_len = int32_t(seq->tokens.size());
    if (seq->prompt_len >= config_.session_len)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("the prompt has {} tokens; the session length is {}, which leaves no room to "
                                "generate (raise --session-len or shorten the prompt)",
                                seq->prompt_len, config_.session_len));
    int64_t cache_tokens = int64_t(blocks_->num_blocks()) * config_.cache_block_seq_len;
    if (seq->prompt_len + 1 > cache_tokens)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("the prompt has {} tokens but the whole KV cache holds {} ({} blocks of {}); "
                                "raise --cache-max-entry-count",
                                seq->prompt_len, cache_tokens, blocks_->num_blocks(), config_.cache_block_seq_len));
    SamplingParams& sp = request.sampling;
    if (sp.temperature < 0 || sp.top_p <= 0 || sp.top_p > 1 || sp.top_k < 0 || sp.min_p < 0 || sp.min_p > 1 ||
        sp.repetition_penalty <= 0 || sp.min_tokens < 0)
      return Status(ErrorCode::invalid_argument, "sampling parameters out of range");
    seq->sampling = std::move(sp);
    // The chat template's own stop strings end chat replies.
    if (is_chat)
      seq->sampling.stop.insert(seq->sampling.stop.end(), parts_.extra_stop_strings.begin(),
                                parts_.extra_stop_strings.end());
    int64_t limit = config_.session_len;
    if (request.refuse_over_session_len && seq->sampling.max_tokens >= 0 &&
        int64_t(seq->prompt_len) + seq->sampling.max_tokens > config_.session_len)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("this model's session length is {} tokens, but {} were asked for ({} in the prompt, "
                                "{} to generate)",
                                config_.session_len, int64_t(seq->prompt_len) + seq->sampling.max_tokens,
                                seq->prompt_len, seq->sampling.max_tokens));
    if (seq->sampling.max_tokens >= 0) limit = std::min<int64_t>(limit, int64_t(seq->prompt_len) + seq->sampling.max_tokens);
    seq->max_len = int32_t(limit);
    seq->decoder = parts_.tokenizer->incremental_decoder({.skip_special_tokens = seq->sampling.skip_special_tokens});
    if (!seq->decoder) return Status(ErrorCode::internal, "the tokenizer made no incremental decoder");
    for (const auto& s : seq->sampling.stop) seq->longest_stop = std::max(seq->longest_stop, s.size());
    seq->callback = std::move(on_event);
    return enqueue(std::move(seq));
  } catch (const std::bad_alloc&) {
    return Status(ErrorCode::out_of_memory, "out of host memory while queueing the request");
  } catch (const std::exception& e) {
    return Status(ErrorCode::internal, e.what());
  }
}

Result<uint64_t> Engine::submit_score(ScoreRequest request, StreamCallback on_event) noexcept {
  try {
    if (request.context.empty() || request.targets.empty())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("a score request needs at least one context id and one target (got {} and {})",
                                request.context.size(), request.targets.size()));
    for (const auto* ids : {&request.context, &request.targets})
      for (TokenId id : *ids)
        if (id < 0 || id >= model_info_.vocab_size)
          return Status(ErrorCode::invalid_argument,
                        fmt::format("token id {} is outside the model's vocabulary of {}", id, model_info_.vocab_size));
    // Every target but the last becomes an input, so the whole sequence is what the cache holds at most.
    const int64_t total = int64_t(request.context.size()) + int64_t(request.targets.size());
    if (total > config_.session_len)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("{} context and {} target tokens exceed the session length of {}",
                                request.context.size(), request.targets.size(), config_.session_len));
    const int64_t cache_tokens = int64_t(blocks_->num_blocks()) * config_.cache_block_seq_len;
    if (total > cache_tokens)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("{} tokens to score in one sequence, but the whole KV cache holds {} ({} blocks of "
                                "{}); raise --cache-max-entry-count",
                                total, cache_tokens, blocks_->num_blocks(), config_.cache_block_seq_len));
    auto seq = std::make_shared<Sequence>();
    seq->tokens = std::move(request.context);
    seq->prompt_len = int32_t(seq->tokens.size());
    seq->forced = std::move(request.targets);
    seq->max_len = int32_t(total);
    seq->sampling.temperature = 0;  // the model samples anyway; greedy is its cheapest choice, and it is ignored
    seq->text_closed = true;        // events carry ids and log-probabilities, no text
    seq->callback = std::move(on_event);
    return enqueue(std::move(seq));
  } catch (const std::bad_alloc&) {
    return Status(ErrorCode::out_of_memory, "out of host memory while queueing the request");
  } catch (const std::exception& e) {
    return Status(ErrorCode::internal, e.what());
  }
}

Result<uint64_t> Engine::enqueue(std::shared_ptr<Sequence> seq) {
  {
    uint64_t id;
    {
      std::lock_guard lock(inbox_mutex_);
      if (stopping_) return Status(ErrorCode::unavailable, "the engine is shutting down");
      if (config_.max_queued_requests > 0 && queued_ >= uint32_t(config_.max_queued_requests)) {
        ++counters_.requests_rejected;
        return Status(ErrorCode::resource_exhausted,
                      fmt::format("{} requests are already waiting (engine.max_queued_requests); try again later",
                                  queued_));
      }
      ++queued_;
      id = next_id_++;
      seq->id = id;
      seq->seed = seq->sampling.seed ? *seq->sampling.seed : next_seed(seed_state_);
      if (config_.request_timeout_seconds > 0)
        seq->deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(config_.request_timeout_seconds));
      ++counters_.requests_submitted;
      counters_.prompt_tokens += uint64_t(seq->prompt_len);
      inbox_.push_back(std::move(seq));
    }
    inbox_cv_.notify_all();
    return id;
  }
}

void Engine::cancel(uint64_t request_id) noexcept {
  try {
    {
      std::lock_guard lock(inbox_mutex_);
      cancel_inbox_.push_back(request_id);
    }
    inbox_cv_.notify_all();
  } catch (...) {
  }
}

EngineInfo Engine::info() const noexcept {
  EngineInfo out;
  try {
    out.model_name = parts_.model_name;
  } catch (...) {
  }
  out.session_len = config_.session_len;
  out.remote = false;
  out.accepts_images = vision_info_.has_value();
  return out;
}

EngineCounters Engine::counters() const noexcept {
  std::lock_guard lock(inbox_mutex_);
  return counters_;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(inbox_mutex_);
  return published_stats_;
}

void Engine::wait_idle() {
  std::unique_lock lock(inbox_mutex_);
  idle_cv_.wait(lock, [&] {
    return inbox_.empty() && cancel_inbox_.empty() && counters_.running == 0 && counters_.waiting == 0 &&
           !step_in_flight_;
  });
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock lock(inbox_mutex_);
      inbox_cv_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !cancel_inbox_.empty() || !encoded_.empty() || !waiting_.empty() ||
               !running_.empty() || in_flight_.has_value();
      });
      if (stopping_) break;
    }
    const auto iteration_start = std::chrono::steady_clock::now();
    const double step_seconds_before = stats_.model_step_seconds;
    take_inbox();
    bool progressed = schedule_and_run();
    stats_.scheduling_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - iteration_start).count() -
        (stats_.model_step_seconds - step_seconds_before);
    {
      std::lock_guard lock(inbox_mutex_);
      counters_.running = uint32_t(running_.size());
      counters_.waiting = uint32_t(waiting_.size() + inbox_.size() + encoding_.size());
      counters_.kv_blocks_used = uint32_t(blocks_->held());
      stats_.kv_blocks_held = blocks_->held();
      step_in_flight_ = in_flight_.has_value();
      published_stats_ = stats_;
    }
    idle_cv_.notify_all();
    if (!progressed && !running_.empty()) {
      // Cannot happen by construction (a lone sequence always gets a block or
      // fails); guard against a spin if it ever does.
      log_.error("no sequence could be scheduled; failing the running ones");
      for (auto& seq : running_)
        finish(*seq, FinishReason::error, Status(ErrorCode::internal, "the scheduler could not place this request"));
      running_.clear();
    }
  }
  // Shutting down: every request still here ends, so no caller waits forever
  // (the step in flight is collected first: the model may not be left with it).
  if (in_flight_) collect_in_flight();
  stop_encoder();
  take_inbox();
  for (auto& seq : encoding_) finish(*seq, FinishReason::cancelled);
  encoding_.clear();
  for (auto& seq : running_) finish(*seq, FinishReason::cancelled);
  for (auto& seq : waiting_) finish(*seq, FinishReason::cancelled);
  running_.clear();
  waiting_.clear();
  {
    std::lock_guard lock(inbox_mutex_);
    counters_.running = counters_.waiting = 0;
  }
  idle_cv_.notify_all();
}

void Engine::take_inbox() {
  std::vector<std::shared_ptr<Sequence>> arrived;
  std::vector<uint64_t> cancelled;
  std::vector<EncodeJob> encoded;
  bool encoder_stopped = false;
  {
    std::lock_guard lock(inbox_mutex_);
    arrived.swap(inbox_);
    cancelled.swap(cancel_inbox_);
    encoded.swap(encoded_);
    encoder_stopped = encoder_stopping_;
  }
  expire_overdue();
  for (EncodeJob& job : encoded) finish_encoding(job);
  for (auto& seq : arrived) {
    if (!seq->unencoded.empty()) {
      if (encoder_stopped) finish(*seq, FinishReason::cancelled);
      else start_encoding(std::move(seq));
      continue;
    }
    waiting_.push_back(std::move(seq));
  }
  if (cancelled.empty()) return;
  auto is_cancelled = [&](const std::shared_ptr<Sequence>& seq) {
    return std::find(cancelled.begin(), cancelled.end(), seq->id) != cancelled.end();
  };
  // Cancelled requests leave now, with their blocks, before anything is
  // scheduled; one whose images are being encoded is dropped when they are.
  for (auto& seq : running_)
    if (is_cancelled(seq)) finish(*seq, FinishReason::cancelled);
  for (auto& seq : waiting_)
    if (is_cancelled(seq)) finish(*seq, FinishReason::cancelled);
  for (auto& seq : encoding_)
    if (is_cancelled(seq)) finish(*seq, FinishReason::cancelled);
  std::erase_if(running_, [](const auto& seq) { return seq->callback == nullptr; });
  std::erase_if(waiting_, [](const auto& seq) { return seq->callback == nullptr; });
}

bool Engine::grow(Sequence& seq, int32_t tokens) {
  int32_t needed = (tokens + config_.cache_block_seq_len - 1) / config_.cache_block_seq_len;
  while (int32_t(seq.blocks.size()) < needed) {
    auto block = blocks_->allocate();
    if (!block) return false;
    seq.blocks.push_back(*block);
  }
  return true;
}

// Blocks `seq` does not hold yet that it will need for its whole prompt and
// its next decode_reserve_tokens tokens, up to its length limit.
int64_t Engine::reserve_blocks(const Sequence& seq) const {
  const int64_t bt = config_.cache_block_seq_len;
  // tokens holds the whole prompt from the start, so length() covers its rest.
  const int64_t reach = std::min<int64_t>(seq.max_len, int64_t(seq.length()) + config_.decode_reserve_tokens);
  return std::max<int64_t>(0, (reach + bt - 1) / bt - int64_t(seq.blocks.size()));
}

void Engine::admit_prefix(Sequence& seq) {
  // Reuse cached full blocks of the prompt, always leaving at least one token
  // to compute so the step has logits to sample from.
  const int32_t bt = config_.cache_block_seq_len;
  int32_t reusable = (int32_t(seq.tokens.size()) - 1) / bt;
  uint64_t hash = 0;
  for (int32_t b = 0; b < reusable; ++b) {
    std::span<const TokenId> block_tokens(seq.tokens.data() + size_t(b) * bt, size_t(bt));
    const uint64_t inputs = block_inputs(seq, size_t(b));
    hash = BlockManager::chain_hash(hash, block_tokens, inputs);
    auto block = blocks_->acquire_cached(hash, block_tokens, inputs);
    if (!block) break;
    seq.blocks.push_back(*block);
    seq.block_hashes.push_back(hash);
  }
  seq.computed = int32_t(seq.blocks.size()) * bt;
  stats_.prefix_cache_hit_tokens += uint64_t(seq.computed);
}

void Engine::publish_full_blocks(Sequence& seq) {
  if (!blocks_->prefix_caching()) return;
  const int32_t bt = config_.cache_block_seq_len;
  // A block is named by its tokens, so one ending in a pending token waits.
  int32_t full = std::min(seq.computed, int32_t(seq.tokens.size())) / bt;
  while (int32_t(seq.block_hashes.size()) < full) {
    size_t b = seq.block_hashes.size();
    std::span<const TokenId> block_tokens(seq.tokens.data() + b * size_t(bt), size_t(bt));
    const uint64_t inputs = block_inputs(seq, b);
    uint64_t hash = BlockManager::chain_hash(b ? seq.block_hashes[b - 1] : 0, block_tokens, inputs);
    blocks_->publish(seq.blocks[b], hash, block_tokens, inputs);
    seq.block_hashes.push_back(hash);
  }
}

void Engine::preempt(Sequence& seq) {
  // Recompute later from the start: prompt and generated tokens become the new
  // prefill; the prefix cache (when on) usually gives most of it back.
  blocks_->release_all(seq.blocks);
  seq.block_hashes.clear();
  seq.computed = 0;
  ++stats_.preemptions;
}

std::vector<Engine::Planned> Engine::schedule() {
  std::vector<Planned> plan;
  int32_t prefill_budget = config_.max_prefill_token_num;
  const uint64_t preemptions_before = stats_.preemptions;

  // 1. Running sequences, oldest first; the newest give way when blocks run out.
  for (size_t i = 0; i < running_.size();) {
    Sequence& seq = *running_[i];
    // A score request whose last target's step is out has nothing left to compute.
    if (seq.scoring() && seq.forced_submitted == int32_t(seq.forced.size())) {
      ++i;
      continue;
    }
    int32_t remaining = seq.length() - seq.computed;
    bool decoding = remaining == 1;
    int32_t want = decoding ? 1 : std::min(remaining, prefill_budget);
    // A pending token that reaches the length limit ends the sequence when it is collected.
    if (want <= 0 || (seq.pending > 0 && seq.length() >= seq.max_len)) {
      ++i;
      continue;
    }
    bool placed = grow(seq, seq.computed + want);
    while (!placed && running_.size() > i + 1) {
      std::shared_ptr<Sequence> victim = std::move(running_.back());
      running_.pop_back();
      preempt(*victim);
      waiting_.push_front(std::move(victim));
      placed = grow(seq, seq.computed + want);
    }
    if (!placed) {
      std::shared_ptr<Sequence> self = std::move(running_[i]);
      running_.erase(running_.begin() + std::ptrdiff_t(i));
      if (i == 0) {
        // Alone in the cache and still no room: it can never finish.
        finish(*self, FinishReason::error,
               Status(ErrorCode::context_length_exceeded,
                      fmt::format("the KV cache ({} blocks of {} tokens) cannot hold this request's {} tokens",
                                  blocks_->num_blocks(), config_.cache_block_seq_len, self->computed + want)));
      } else {
        preempt(*self);
        waiting_.push_front(std::move(self));
      }
      break;  // it was the newest; nothing runs after it
    }
    if (!decoding) prefill_budget -= want;
    plan.push_back({running_[i], want, seq.computed + want == seq.length()});
    ++i;
  }

  // 2. Admit waiting requests while there is room and prefill budget (not
  // in a step that just preempted: the freed blocks are for the running ones).
  // One preempted while its sample was in flight waits until that is collected.
  // With decode_reserve_tokens, a request joins only if the free blocks cover
  // what it and every running sequence will still need (reserve_blocks);
  // when nothing runs, the queue's head joins whenever its first chunk fits.
  const bool reserving = config_.decode_reserve_tokens > 0;
  int64_t reserved = 0;
  if (reserving && !waiting_.empty())
    for (const auto& running : running_) reserved += reserve_blocks(*running);
  while (stats_.preemptions == preemptions_before && !waiting_.empty() && !waiting_.front()->awaiting_output() &&
         int32_t(running_.size()) < config_.max_batch_size && prefill_budget > 0) {
    Sequence& seq = *waiting_.front();
    if (seq.blocks.empty()) admit_prefix(seq);
    int32_t remaining = int32_t(seq.tokens.size()) - seq.computed;
    int32_t capacity = (int32_t(seq.blocks.size()) + blocks_->available()) * config_.cache_block_seq_len - seq.computed;
    int32_t want = std::min({remaining, prefill_budget, capacity});
    const bool reserve_short = reserving && !running_.empty() &&
                               reserve_blocks(seq) + reserved > int64_t(blocks_->available());
    if (want <= 0 || reserve_short || !grow(seq, seq.computed + want)) {
      if (running_.empty() && plan.empty() && !in_flight_) {
        // Nothing else holds blocks; this can only be a lone oversize request.
        finish(seq, FinishReason::error,
               Status(ErrorCode::context_length_exceeded,
                      fmt::format("the KV cache ({} blocks of {} tokens) cannot hold this request",
                                  blocks_->num_blocks(), config_.cache_block_seq_len)));
        waiting_.pop_front();
        continue;
      }
      // Give back the cached prefix so it does not pin blocks while waiting.
      blocks_->release_all(seq.blocks);
      seq.block_hashes.clear();
      seq.computed = 0;
      break;
    }
    prefill_budget -= want;
    if (reserving) reserved += reserve_blocks(seq);
    plan.push_back({waiting_.front(), want, seq.computed + want == int32_t(seq.tokens.size())});
    if (!seq.admitted) {
      seq.admitted = true;
      std::lock_guard lock(inbox_mutex_);
      --queued_;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return plan;
}

// What a step does to the host state once it is handed to the model: K/V
// will be there (the device runs steps in order), and a sampling sequence
// has a pending token until the step is collected.
void Engine::commit(const std::vector<Planned>& plan) {
  int32_t sampled = 0;
  bool any_prefill = false;
  uint64_t step_tokens = 0;
  for (const Planned& p : plan) {
    Sequence& seq = *p.seq;
    bool prefill = seq.length() - seq.computed > 1 || seq.generated() + seq.pending == 0;
    (prefill ? stats_.prefill_tokens_computed : stats_.decode_tokens_computed) += uint64_t(p.query_len);
    any_prefill = any_prefill || prefill;
    step_tokens += uint64_t(p.query_len);
    seq.computed += p.query_len;
    publish_full_blocks(seq);
    if (p.sample && seq.scoring()) {
      // The next input is the target this step scores: known, so not pending.
      seq.tokens.push_back(seq.forced[size_t(seq.forced_submitted++)]);
      ++sampled;
    } else if (p.sample) {
      ++seq.pending;
      seq.pending_index = sampled++;
    }
  }
  if (any_prefill) {
    ++stats_.prefill_steps;
    stats_.prefill_step_tokens += step_tokens;
  }
}

// A collected step's tokens, to the sequences that are still there.
void Engine::apply(const std::vector<Planned>& plan, StepOutput& output) {
  size_t sampled_index = 0;
  for (const Planned& p : plan) {
    if (!p.sample) continue;
    Sequence& seq = *p.seq;
    if (seq.scoring()) {
      const size_t index = sampled_index++;
      after_score(seq, index < output.logits.size() ? &output.logits[index] : nullptr);
      continue;
    }
    // Still pending after this: a sample of the step submitted after this one.
    if (--seq.pending == 0) seq.pending_index = -1;
    if (sampled_index >= output.sampled.size()) {
      finish(seq, FinishReason::error,
             Status(ErrorCode::internal, "the model returned fewer tokens than sequences that sample"));
      continue;
    }
    TokenLogprob* logprob = sampled_index < output.logprobs.size() ? &output.logprobs[sampled_index] : nullptr;
    const TokenId token = output.sampled[sampled_index++];
    // Finished (stopped in the step before, or cancelled) while this step ran: its token is dropped.
    if (seq.callback) after_sample(seq, token, logprob);
  }
  // Blocks that ended in the pending token are named now.
  for (const Planned& p : plan)
    if (p.seq->callback) publish_full_blocks(*p.seq);
}

// `committed`: the step had been handed over (its samples are pending).
void Engine::fail_plan(const std::vector<Planned>& plan, const Status& failure, bool committed) {
  log_.error("model step failed: {}", failure.message());
  for (const Planned& p : plan) {
    if (committed && p.sample && --p.seq->pending == 0) p.seq->pending_index = -1;
    finish(*p.seq, FinishReason::error, failure);
  }
}

void Engine::collect_in_flight() {
  std::vector<Planned> plan = std::move(*in_flight_);
  in_flight_.reset();
  StepOutput output;
  const auto start = std::chrono::steady_clock::now();
  Status collected = parts_.model->collect_step(output);
  stats_.model_step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (collected)
    apply(plan, output);
  else
    fail_plan(plan, collected, true);
  std::erase_if(running_, [](const auto& s) { return s->callback == nullptr; });
}

bool Engine::schedule_and_run() {
  // A sequence whose sampling reads its whole history (penalties) cannot
  // decode a token still on the device: collect it first.
  if (in_flight_ && std::any_of(in_flight_->begin(), in_flight_->end(), [](const Planned& p) {
        return p.sample && p.seq->callback && p.seq->sampling.has_penalties();
      }))
    collect_in_flight();

  std::vector<Planned> plan = schedule();
  if (plan.empty()) {
    if (!in_flight_) return false;
    collect_in_flight();
    return true;
  }

  // Lay the step out as the Model expects it.
  std::vector<TokenId> token_ids;
  std::vector<int32_t> positions;
  std::vector<StepSequence> sequences;
  // Stop ids may not be sampled before min_tokens; each sequence that needs it gets its list here.
  std::vector<std::vector<TokenId>> suppressed;
  suppressed.reserve(plan.size());
  // Image embeddings at this step's positions of each sequence.
  std::vector<std::vector<EmbeddingSpan>> spans;
  spans.reserve(plan.size());
  sequences.reserve(plan.size());
  for (const auto& p : plan) {
    Sequence& seq = *p.seq;
    const int32_t generated = seq.generated() + seq.pending;  // counting the pending token
    StepSequence s;
    s.query_start = int32_t(token_ids.size());
    s.query_len = p.query_len;
    s.cached_len = seq.computed;
    s.block_table = seq.blocks;
    s.sample = p.sample;
    s.sampling = &seq.sampling;
    s.rng_seed = seq.seed;
    s.rng_offset = uint32_t(generated);
    s.history = seq.tokens;
    s.generated = std::span<const TokenId>(seq.tokens).subspan(size_t(seq.prompt_len));
    s.return_logits = seq.scoring();
    if (s.sample && generated < seq.sampling.min_tokens) {
      auto& ids = suppressed.emplace_back(seq.sampling.stop_token_ids);
      if (!seq.sampling.ignore_eos) ids.insert(ids.end(), stop_ids_.begin(), stop_ids_.end());
      s.suppressed = ids;
    }
    if (!seq.images.empty()) {
      auto& mine = spans.emplace_back();
      embedding_spans(seq, seq.computed, p.query_len, mine);
      s.embeddings = mine;
    }
    for (int32_t t = 0; t < p.query_len; ++t) {
      const int32_t position = seq.computed + t;
      if (position < int32_t(seq.tokens.size())) {
        token_ids.push_back(seq.tokens[size_t(position)]);
      } else {
        // The pending token (a decode right after the step in flight): the model takes it from the device.
        token_ids.push_back(0);
        s.previous_sample = seq.pending_index;
      }
      positions.push_back(position);
    }
    sequences.push_back(s);
  }
  StepInput input{token_ids, positions, sequences};
  const auto step_start = std::chrono::steady_clock::now();
  if (overlap_) {
    Status submitted = parts_.model->submit_step(input);
    stats_.model_step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    ++stats_.steps;
    if (submitted) {
      commit(plan);
      if (in_flight_) ++stats_.overlapped_steps;
    } else {
      fail_plan(plan, submitted, false);
    }
    // Step N+1 is queued: now step N's tokens, while the device runs N+1.
    if (in_flight_) collect_in_flight();
    if (submitted) in_flight_ = std::move(plan);
  } else {
    StepOutput output;
    Status stepped = parts_.model->step(input, output);
    stats_.model_step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    ++stats_.steps;
    if (stepped) {
      commit(plan);
      apply(plan, output);
    } else {
      fail_plan(plan, stepped, false);
    }
  }
  std::erase_if(running_, [](const auto& s) { return s->callback == nullptr; });
  return true;
}

void Engine::after_sample(Sequence& seq, TokenId token, TokenLogprob* logprob) {
  seq.tokens.push_back(token);
  std::vector<TokenLogprob> logprobs;
  if (logprob && seq.sampling.top_logprobs >= 0) logprobs.push_back(std::move(*logprob));
  {
    std::lock_guard lock(inbox_mutex_);
    ++counters_.completion_tokens;
  }
  bool is_stop_id = std::binary_search(stop_ids_.begin(), stop_ids_.end(), token) ||
                    std::find(seq.sampling.stop_token_ids.begin(), seq.sampling.stop_token_ids.end(), token) !=
                        seq.sampling.stop_token_ids.end();
  bool eos_allowed = !seq.sampling.ignore_eos || !std::binary_search(stop_ids_.begin(), stop_ids_.end(), token);
  if (is_stop_id && eos_allowed && seq.generated() > seq.sampling.min_tokens - 1) {
    // The stop token itself is not part of the text, as in OpenAI's API.
    emit(seq, {}, {token}, std::move(logprobs));
    finish(seq, FinishReason::stop);
    return;
  }
  std::string piece;
  // Rows of a padded embedding (LLaVA's vocabulary is rounded up past the
  // tokenizer's) have no text: HF's decode skips such ids, and so do we.
  if (token < tokenizer_ids_) {
    if (Status s = seq.decoder->push(token, piece); !s) {
      finish(seq, FinishReason::error, s);
      return;
    }
  }
  seq.held_text += piece;
  bool at_length = int32_t(seq.tokens.size()) >= seq.max_len;
  if (at_length) {
    if (Status s = seq.decoder->finish(seq.held_text); !s) log_.warn("request {}: {}", seq.id, s.message());
    seq.text_closed = true;
  }

  // Stop strings: the earliest match ends the text before it.
  if (!seq.sampling.stop.empty() && seq.generated() >= seq.sampling.min_tokens) {
    size_t best = std::string::npos;
    for (const auto& stop : seq.sampling.stop)
      if (!stop.empty()) best = std::min(best, seq.held_text.find(stop));
    if (best != std::string::npos) {
      emit(seq, seq.held_text.substr(0, best), {token}, std::move(logprobs));
      seq.held_text.clear();
      seq.text_closed = true;
      finish(seq, FinishReason::stop);
      return;
    }
  }
  // Hold back what could still become the start of a stop string.
  size_t keep = seq.longest_stop ? seq.longest_stop - 1 : 0;
  size_t ready = seq.held_text.size() > keep ? seq.held_text.size() - keep : 0;
  if (at_length) ready = seq.held_text.size();
  ready = utf8_safe_prefix(seq.held_text, ready);
  std::string text = seq.held_text.substr(0, ready);
  seq.held_text.erase(0, ready);
  emit(seq, std::move(text), {token}, std::move(logprobs));
  if (at_length) finish(seq, FinishReason::length);
}

// A score request's step came back: the log-probability of the target it scored.
void Engine::after_score(Sequence& seq, const std::vector<float>* logits) {
  const TokenId target = seq.forced[size_t(seq.forced_scored++)];
  if (!seq.callback) return;  // finished (cancelled) while the step ran
  if (!logits || logits->size() != size_t(model_info_.vocab_size)) {
    finish(seq, FinishReason::error,
           Status(ErrorCode::internal,
                  fmt::format("the model returned {} logits for a sequence that asked for them; expected {}",
                              logits ? logits->size() : 0, model_info_.vocab_size)));
    return;
  }
  const double logprob = target_logprob(*logits, target);
  emit(seq, {}, {target}, {TokenLogprob{target, float(logprob), {}}});
  if (seq.forced_scored == int32_t(seq.forced.size())) finish(seq, FinishReason::length);
}

// Requests past their time limit end now, with what they produced so far.
void Engine::expire_overdue() {
  if (config_.request_timeout_seconds <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  const Status overdue(ErrorCode::deadline_exceeded,
                       fmt::format("the request ran past its time limit of {} s (engine.request_timeout_s)",
                                   config_.request_timeout_seconds));
  for (auto& seq : running_)
    if (seq->deadline <= now) finish(*seq, FinishReason::error, overdue);
  for (auto& seq : waiting_)
    if (seq->deadline <= now) finish(*seq, FinishReason::error, overdue);
  std::erase_if(running_, [](const auto& seq) { return seq->callback == nullptr; });
  std::erase_if(waiting_, [](const auto& seq) { return seq->callback == nullptr; });
}

// Expands each image placeholder of the prompt to the encoder's tokens per
// image and keeps the images for the engine thread to encode.
Status Engine::expand_images(Sequence& seq, std::vector<ImageData> images) {
  if (!vision_info_) {
    if (images.empty()) return Status();
    return Status(ErrorCode::invalid_argument,
                  fmt::format("this model takes no images (its manifest has no [vision] table), and the request "
                              "carries {}",
                              images.size()));
  }
  const TokenId placeholder = vision_info_->placeholder_id;
  const size_t placeholders = size_t(std::count(seq.tokens.begin(), seq.tokens.end(), placeholder));
  if (placeholders != images.size())
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the prompt holds {} image placeholder(s) ('{}', id {}) but the request carries {} "
                              "image(s)",
                              placeholders, vision_info_->placeholder, placeholder, images.size()));
  if (images.empty()) return Status();
  std::vector<TokenId> expanded;
  expanded.reserve(seq.tokens.size() + images.size() * size_t(vision_info_->tokens_per_image));
  size_t image = 0;
  for (TokenId id : seq.tokens) {
    if (id != placeholder) {
      expanded.push_back(id);
      continue;
    }
    seq.images.push_back({int32_t(expanded.size()), image_digest(images[image++])});
    expanded.insert(expanded.end(), size_t(vision_info_->tokens_per_image), placeholder);
  }
  seq.tokens = std::move(expanded);
  seq.unencoded = std::move(images);
  return Status();
}

// The embeddings' memory on the model's device (the request keeps it: a
// preempted sequence is recomputed from the same embeddings), then the job
// to the encoder thread.
void Engine::start_encoding(std::shared_ptr<Sequence> seq) {
  const int64_t count = int64_t(seq->unencoded.size());
  auto memory = parts_.model->allocate_embeddings(count * vision_info_->tokens_per_image);
  if (!memory) return finish(*seq, FinishReason::error, memory.status());
  const DType dtype = memory.value()->view().dtype;
  if ((vision_info_->output_dtypes & dtype_bit(dtype)) == 0)
    return finish(*seq, FinishReason::error,
                  Status(ErrorCode::invalid_argument,
                         fmt::format("the model takes {} image embeddings, which the vision encoder cannot write",
                                     dtype_name(dtype))));
  EncodeJob job{seq, std::move(seq->unencoded), std::move(memory.value()), Status()};
  seq->unencoded.clear();
  encoding_.push_back(std::move(seq));
  {
    std::lock_guard lock(inbox_mutex_);
    encode_queue_.push_back(std::move(job));
  }
  encode_cv_.notify_one();
}

void Engine::encoder_loop() {
  for (;;) {
    EncodeJob job;
    {
      std::unique_lock lock(inbox_mutex_);
      encode_cv_.wait(lock, [&] { return encoder_stopping_ || !encode_queue_.empty(); });
      if (encoder_stopping_) return;
      job = std::move(encode_queue_.front());
      encode_queue_.pop_front();
    }
    job.status = encode_job(job);
    {
      std::lock_guard lock(inbox_mutex_);
      encoded_.push_back(std::move(job));
    }
    inbox_cv_.notify_all();
  }
}

// All of a job's images, max_images_per_step per call.
Status Engine::encode_job(const EncodeJob& job) {
  const int64_t per_image = vision_info_->tokens_per_image;
  const int64_t count = int64_t(job.images.size());
  const TensorView all = job.memory->view();
  for (int64_t first = 0; first < count; first += config_.max_images_per_step) {
    const int64_t n = std::min<int64_t>(config_.max_images_per_step, count - first);
    std::span<const ImageData> batch(job.images.data() + first, size_t(n));
    if (Status s = parts_.vision->encode(batch, rows_of(all, first * per_image, n * per_image)); !s)
      return Status(s.code(), fmt::format("encoding the request's image{} {} (the encoder's 0..{}): {}",
                                          n == 1 ? "" : "s",
                                          n == 1 ? fmt::format("{}", first + 1) : fmt::format("{} to {}", first + 1, first + n),
                                          n - 1, s.message()));
  }
  return Status();
}

// A job back from the encoder thread: its request is queued, unless it was
// cancelled meanwhile or its images could not be encoded.
void Engine::finish_encoding(EncodeJob& job) {
  std::erase(encoding_, job.seq);
  if (job.status) stats_.images_encoded += uint64_t(job.images.size());
  Sequence& seq = *job.seq;
  if (!seq.callback) return;
  if (!job.status) return finish(seq, FinishReason::error, job.status);
  seq.embeddings = std::move(job.memory);
  waiting_.push_back(std::move(job.seq));
}

// Waits for the image the encoder thread is on, if any; jobs still queued
// stay in encode_queue_ and are dropped with the engine.
void Engine::stop_encoder() {
  {
    std::lock_guard lock(inbox_mutex_);
    encoder_stopping_ = true;
  }
  encode_cv_.notify_all();
  if (encoder_thread_.joinable()) encoder_thread_.join();
}

// The digest of the images a block of `seq` holds, each with its offset.
uint64_t Engine::block_inputs(const Sequence& seq, size_t block) const {
  if (seq.images.empty()) return 0;
  const int64_t begin = int64_t(block) * config_.cache_block_seq_len, end = begin + config_.cache_block_seq_len;
  uint64_t digest = 0;
  for (const ImageSpan& image : seq.images) {
    const int64_t first = image.first_position, last = first + vision_info_->tokens_per_image;
    if (last <= begin || first >= end) continue;
    digest = BlockManager::chain_hash(digest ^ image.digest, std::span<const int32_t>(), uint64_t(first - begin));
  }
  return digest;
}

// The embeddings of query positions [first, first + count) of `seq`.
void Engine::embedding_spans(const Sequence& seq, int32_t first, int32_t count, std::vector<EmbeddingSpan>& spans) const {
  const int32_t per_image = vision_info_->tokens_per_image;
  for (size_t i = 0; i < seq.images.size(); ++i) {
    const int32_t image_first = seq.images[i].first_position;
    const int32_t lo = std::max(image_first, first), hi = std::min(image_first + per_image, first + count);
    if (lo >= hi) continue;
    EmbeddingSpan span;
    span.first_token = lo - first;
    span.values = rows_of(seq.embeddings->view(), int64_t(i) * per_image + (lo - image_first), hi - lo);
    spans.push_back(span);
  }
}

void Engine::emit(Sequence& seq, std::string text, std::vector<TokenId> ids, std::vector<TokenLogprob> logprobs) {
  if (!seq.callback) return;
  StreamEvent event;
  event.request_id = seq.id;
  event.text = std::move(text);
  event.token_ids = std::move(ids);
  event.logprobs = std::move(logprobs);
  seq.callback(event);
}

void Engine::finish(Sequence& seq, FinishReason reason, const Status& error) {
  if (!seq.callback) return;
  blocks_->release_all(seq.blocks);
  seq.block_hashes.clear();
  StreamEvent event;
  event.request_id = seq.id;
  // Whatever was held back (stop-string look-ahead, an unfinished UTF-8
  // sequence) is final now.
  if (!seq.text_closed && seq.decoder)
    if (Status s = seq.decoder->finish(seq.held_text); !s) log_.warn("request {}: {}", seq.id, s.message());
  seq.text_closed = true;
  event.text = std::move(seq.held_text);
  event.finish = reason;
  event.error = error.message();
  event.error_code = error.code();
  event.prompt_tokens = seq.prompt_len;
  event.completion_tokens = std::max(seq.generated(), 0);
  {
    std::lock_guard lock(inbox_mutex_);
    ++counters_.requests_finished;
    if (reason == FinishReason::cancelled) ++counters_.requests_cancelled;
    if (error.code() == ErrorCode::deadline_exceeded) ++counters_.requests_timed_out;
    if (!seq.admitted) {
      seq.admitted = true;
      --queued_;
    }
  }
  auto callback = std::move(seq.callback);
  seq.callback = nullptr;  // marks the sequence finished; the loop drops it
  callback(event);
}

}  // namespace hostrun::core
