// The local engine: continuous batching over a paged KV cache.
//
// One thread runs the loop: take new requests and cancellations, schedule a
// step (decode tokens of running sequences, then chunks of prefill under a
// token budget, then new admissions), run Model::step, apply stop rules,
// stream text. Everything device-specific is behind Model and KvCachePolicy.
//
// Overlapped steps (a model that offers them, EngineConfig::overlap_steps):
// step N+1 is scheduled and submitted while the device still runs step N,
// and only then is step N collected and its tokens streamed, so the device
// never waits for the host. A sequence that sampled in step N has one
// `pending` token: step N+1 decodes it from the device (previous_sample).
// What this costs: a sequence that stops in step N (a stop id or string)
// has already been given a step N+1, whose token is dropped.
//
// Invariants (tests/engine checks them):
//  - a sequence's first `computed` tokens have K/V in the blocks of its block
//    table, in order; nothing else is assumed about a block's contents;
//  - memory pressure only delays: when a running sequence needs a block and
//    none is free, the most recently admitted sequence is preempted (its blocks
//    freed, its tokens recomputed later), so no request fails unless it alone
//    needs more blocks than the cache holds;
//  - a cancelled request's blocks are free before the next step is scheduled;
//  - a request's images (when the model has a vision encoder) are encoded
//    once, on the engine's encoder thread beside the loop's steps, into
//    memory the request owns until it ends, before the request is queued; each image's placeholder token is expanded to the
//    encoder's tokens per image, whose prompt positions take the embeddings
//    instead of the token's own (recomputed prefills after preemption too);
//    a block's prefix-cache hash includes the digests of the images it holds,
//    so equal placeholder ids with different images never share K/V.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "hostrun/sdk.hpp"
#include "plugin_loader.hpp"

namespace hostrun::core {

struct EngineConfig {
  int32_t max_batch_size = 128;           // sequences in one step
  int32_t max_prefill_token_num = 8192;   // prefill tokens in one step (chunked prefill)
  int32_t session_len = 0;                // prompt + completion; 0: the model's max positions
  int32_t cache_block_seq_len = 64;       // tokens per KV block
  double cache_max_entry_count = 0.8;     // share of memory left after weights given to the KV cache
  int64_t num_kv_blocks = 0;              // > 0: exactly this many blocks (overrides the share)
  bool enable_prefix_caching = false;
  // Admission keeps free the KV blocks each running sequence needs for the
  // rest of its prompt and its next decode_reserve_tokens tokens (fewer when
  // its max_tokens ends sooner), so new prompts do not take blocks that
  // running sequences will need and then force their preemption (each one
  // recomputes its whole prompt). 0: admit while a chunk fits.
  int32_t decode_reserve_tokens = 256;
  // On the CPU there is no "free device memory"; the share applies to this budget.
  int64_t cpu_memory_budget_bytes = int64_t(2) << 30;
  uint64_t seed = 0;                      // seeds requests that bring none; 0: from the clock
  bool overlap_steps = true;              // overlapped steps when the model offers them
  int32_t max_images_per_step = 8;        // images one VisionEncoder::encode call takes
  // Admission control: requests waiting for a place in the batch beyond this
  // are refused at submit (resource_exhausted; a server answers 429). 0: no bound.
  int32_t max_queued_requests = 0;
  // A request still running this long after submit ends with
  // deadline_exceeded (its text so far delivered). 0: no limit.
  double request_timeout_seconds = 0;
};

// Host-side statistics the tests and /metrics read.
struct EngineStats {
  uint64_t steps = 0;
  uint64_t prefill_tokens_computed = 0;  // prompt (and recomputed) tokens run through the model
  uint64_t decode_tokens_computed = 0;
  // Steps that carry prompt tokens (mixed passes: a chunk of prefill beside
  // whatever decodes), and every token those steps run. The other steps only
  // decode: steps - prefill_steps of them, with the remaining tokens.
  uint64_t prefill_steps = 0;
  uint64_t prefill_step_tokens = 0;
  uint64_t prefix_cache_hit_tokens = 0;  // prompt tokens whose K/V came from the prefix cache
  uint64_t preemptions = 0;
  uint64_t overlapped_steps = 0;         // steps submitted before the previous one was collected
  uint64_t images_encoded = 0;
  // Wall time of the loop thread: inside the Model's step calls (step, or
  // submit_step and collect_step), and scheduling plus output handling
  // around them (overlapped with the device when steps overlap).
  double model_step_seconds = 0;
  double scheduling_seconds = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_held = 0;
};

// Teacher-forced scoring (what `bench perplexity` runs): the model's
// log-probability of each target, given the context and the targets before
// it. The sequence is scheduled like a generation (continuous batching,
// chunked prefill, preemption, overlapped steps) but the engine supplies each
// next token itself instead of sampling, so a target's step is one decode.
struct ScoreRequest {
  std::vector<TokenId> context;  // at least one id (BOS, usually)
  std::vector<TokenId> targets;  // at least one id
};

// Turns chat messages into prompt ids (chat template + tokenizer), wired by the host.
using PromptBuilder = std::function<Result<std::vector<TokenId>>(const std::vector<ChatMessage>&)>;

struct EngineParts {
  PluginHandle<Model> model;  // loaded, with its KV policy
  PluginHandle<KvCachePolicy> kv_policy;
  PluginHandle<Tokenizer> tokenizer;
  PluginHandle<VisionEncoder> vision;    // may be empty: requests with images are then refused
  PromptBuilder prompt_builder;          // may be empty: chat requests are then refused
  std::vector<TokenId> extra_stop_ids;   // e.g. the chat template's stop tokens
  std::vector<std::string> extra_stop_strings;
  std::string model_name;
  LogSink* log_sink = nullptr;
};

class Engine final : public EngineHandle {
 public:
  // Sizes and allocates the KV cache, then starts the loop thread.
  static Result<std::unique_ptr<Engine>> start(EngineConfig config, EngineParts parts);
  ~Engine() override;

  Result<uint64_t> submit(GenerationRequest request, StreamCallback on_event) noexcept override;
  void cancel(uint64_t request_id) noexcept override;
  EngineInfo info() const noexcept override;
  EngineCounters counters() const noexcept override;
  const Tokenizer* tokenizer() const noexcept override { return parts_.tokenizer.get(); }

  // Queues a ScoreRequest. Its events carry one target each, in order:
  // token_ids = {target}, logprobs = {{target, log-probability}} (from the raw
  // logits, natural log), no text; the event of the last target has finish =
  // length. Refused at once when context + targets exceed the session length
  // or the whole KV cache.
  Result<uint64_t> submit_score(ScoreRequest request, StreamCallback on_event) noexcept;

  EngineStats stats() const;
  const EngineConfig& config() const noexcept { return config_; }
  // Blocks until no request is waiting or running.
  void wait_idle();

 private:
  struct Sequence;
  struct ImageSpan;
  // One sequence's share of a step.
  struct Planned {
    std::shared_ptr<Sequence> seq;  // shared: a step in flight outlives a cancelled request's place in running_
    int32_t query_len = 0;
    bool sample = false;
  };
  Engine(EngineConfig config, EngineParts parts, int32_t num_blocks);
  void loop();
  void take_inbox();
  void expire_overdue();
  bool schedule_and_run();
  std::vector<Planned> schedule();
  void commit(const std::vector<Planned>& plan);
  void apply(const std::vector<Planned>& plan, StepOutput& output);
  void fail_plan(const std::vector<Planned>& plan, const Status& failure, bool committed);
  void collect_in_flight();
  void finish(Sequence& seq, FinishReason reason, const Status& error = Status());
  void emit(Sequence& seq, std::string text, std::vector<TokenId> ids, std::vector<TokenLogprob> logprobs);
  bool grow(Sequence& seq, int32_t tokens);
  int64_t reserve_blocks(const Sequence& seq) const;
  void admit_prefix(Sequence& seq);
  void publish_full_blocks(Sequence& seq);
  void preempt(Sequence& seq);
  void after_sample(Sequence& seq, TokenId token, TokenLogprob* logprob);
  Status refuse_unfittable_text(size_t text_bytes) const;
  Result<std::vector<TokenId>> chat_prompt(const std::vector<ChatMessage>& messages);
  void after_score(Sequence& seq, const std::vector<float>* logits);
  Result<uint64_t> enqueue(std::shared_ptr<Sequence> seq);
  Status expand_images(Sequence& seq, std::vector<ImageData> images);

  // The encoder thread (a model that takes images). VisionEncoder::encode
  // returns once the embeddings are written, so it runs there, beside the
  // loop's steps, and images never hold up running requests' decode. The
  // loop allocates a request's embeddings and queues an EncodeJob; the
  // thread encodes it and hands it back; the loop then queues the request
  // (or finishes it with the encoder's error). The thread touches only the
  // job's images and memory, never the Sequence.
  struct EncodeJob {
    std::shared_ptr<Sequence> seq;
    std::vector<ImageData> images;
    PluginPtr<DeviceTensor> memory;  // [images * tokens_per_image, hidden]
    Status status;
  };
  void start_encoding(std::shared_ptr<Sequence> seq);
  void encoder_loop();
  Status encode_job(const EncodeJob& job);  // on the encoder thread
  void finish_encoding(EncodeJob& job);
  void stop_encoder();
  uint64_t block_inputs(const Sequence& seq, size_t block) const;
  void embedding_spans(const Sequence& seq, int32_t first, int32_t count, std::vector<EmbeddingSpan>& spans) const;

  EngineConfig config_;
  EngineParts parts_;
  ModelInfo model_info_;
  std::optional<VisionInfo> vision_info_;  // when the model takes images
  Logger log_;

  // The most input bytes one token stands for (the longest decoded token): a
  // text of more than session_len times this many bytes cannot fit, and is
  // refused before it is tokenized.
  size_t max_token_bytes_ = 0;
  // The last chat prompt built without images, for the n choices of one
  // request (submitted one after the other with the same messages): those
  // are rendered and tokenized once.
  struct LastChatPrompt {
    std::mutex mutex;
    std::vector<ChatMessage> messages;
    std::vector<TokenId> ids;
  } last_chat_;

  // Shared with submitters.
  mutable std::mutex inbox_mutex_;
  std::condition_variable inbox_cv_;
  std::condition_variable idle_cv_;
  std::vector<std::shared_ptr<Sequence>> inbox_;
  std::vector<uint64_t> cancel_inbox_;
  std::deque<EncodeJob> encode_queue_;  // to the encoder thread
  std::vector<EncodeJob> encoded_;      // back from it
  std::condition_variable encode_cv_;
  bool encoder_stopping_ = false;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  uint32_t queued_ = 0;  // submitted and not yet admitted to the batch (nor finished)
  EngineCounters counters_;
  EngineStats published_stats_;  // a copy of stats_ made after each step
  uint64_t seed_state_;
  bool step_in_flight_ = false;  // published copy of in_flight_.has_value(), for wait_idle

  // Owned by the loop thread.
  std::unique_ptr<class BlockManager> blocks_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  std::vector<std::shared_ptr<Sequence>> running_;  // in admission order
  bool overlap_ = false;                             // config says so and the model offers it
  std::optional<std::vector<Planned>> in_flight_;   // the step submitted and not yet collected
  std::vector<TokenId> stop_ids_;                    // model eos + template stop tokens
  TokenId tokenizer_ids_ = 0;                        // the tokenizer's vocabulary; the model's may be padded past it
  std::vector<std::shared_ptr<Sequence>> encoding_;  // handed to the encoder thread and not back yet
  EngineStats stats_;
  std::thread encoder_thread_;
  std::thread thread_;
};

}  // namespace hostrun::core
