// Shared pieces of the llama_cpu tests: checkpoints in temporary folders, the
// plugins loaded through the real registry, a step driver that lays out
// StepInput the way the engine does (with scattered block tables), and a
// dense, unpaged Llama written in plain loops (double accumulation) as the
// oracle.
#pragma once

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <unistd.h>

#include <bit>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llama_common/llama_config.hpp"
#include "llama_common/llama_weights.hpp"
#include "random_checkpoint.hpp"
#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"
#include "plugin_loader.hpp"
#include "../support/temp_dir.hpp"

namespace llama_test {

using namespace hostrun;
namespace fs = std::filesystem;

using hostrun::test::TempDir;

// The plugins as the host wires them. Members are destroyed bottom-up: the
// model (and the KV cache it holds, whose code is in kv_cpu) before the
// policy, both before the registry that pins their libraries.
struct LoadedModel {
  std::unique_ptr<core::PluginRegistry> registry;
  std::unique_ptr<checkpoint::ModelDirectory> weights;
  core::PluginHandle<KvCachePolicy> policy;
  core::PluginHandle<Model> model;
};

// Which plugins run the model: llama_cpu + kv_cpu (f32 activations), or
// llama_cuda + kv_cuda (bf16) where the test is built with CUDA and run on a GPU.
struct Backend {
  bool cuda = false;
  std::string model_plugin() const { return cuda ? "llama_cuda" : "llama_cpu"; }
  std::string kv_plugin() const { return cuda ? "kv_cuda" : "kv_cpu"; }
};

// The build's plugin folder, or HOSTRUN_TEST_PLUGIN_DIR (a bundle carried to the GPU machine).
inline fs::path test_plugin_dir() {
  const char* dir = std::getenv("HOSTRUN_TEST_PLUGIN_DIR");
  return dir && *dir ? fs::path(dir) : fs::path(HOSTRUN_PLUGIN_BUILD_DIR);
}

inline std::unique_ptr<core::PluginRegistry> load_registry(const Backend& backend = {}) {
  auto registry = std::make_unique<core::PluginRegistry>();
  for (const std::string& name : {backend.model_plugin(), backend.kv_plugin()})
    registry->load_file(test_plugin_dir() / ("hostrun_" + name + ".so"));
  for (const auto& refused : registry->refused()) FAIL(refused.file.string() << ": " << refused.reason);
  return registry;
}

// `quantizer` (owned by the caller, outliving the model) builds the linear layers when given.
inline Result<std::unique_ptr<LoadedModel>> try_load(const fs::path& dir, int threads = 1,
                                                     const std::string& kv_dtype = "f32", int32_t num_blocks = 256,
                                                     int32_t block_tokens = 16, const Backend& backend = {},
                                                     Quantizer* quantizer = nullptr) {
  auto loaded = std::make_unique<LoadedModel>();
  loaded->registry = load_registry(backend);
  auto weights = checkpoint::ModelDirectory::open(dir);
  if (!weights) return weights.status();
  loaded->weights = std::move(weights.value());
  const Device device{backend.cuda ? DeviceKind::cuda : DeviceKind::cpu, 0};
  // kv_cpu's dtype is its pages' storage ("int8" / "int4": its quant_policy);
  // kv_cuda stores the activation dtype and has no such setting.
  Settings kv_settings;
  if (!backend.cuda) {
    if (kv_dtype == "int8" || kv_dtype == "int4")
      kv_settings.set("quant_policy", int64_t(kv_dtype == "int8" ? 8 : 4));
    else
      kv_settings.set("dtype", kv_dtype);
  }
  auto policy = loaded->registry->create<KvCachePolicy>(backend.kv_plugin(), kv_settings, nullptr, "kv_cache", device);
  if (!policy) return policy.status();
  loaded->policy = policy.value();
  Settings model_settings;
  if (!backend.cuda) model_settings.set("threads", int64_t(threads));
  auto model = loaded->registry->create<Model>(backend.model_plugin(), model_settings, nullptr, "model", device);
  if (!model) return model.status();
  loaded->model = model.value();
  LoadContext context;
  context.weights = loaded->weights.get();
  context.device = device;
  context.activation_dtype = !backend.cuda ? DType::f32 : kv_dtype == "f16" ? DType::f16 : DType::bf16;
  context.kv_policy = loaded->policy.get();
  context.quantizer = quantizer;
  if (Status s = loaded->model->load(context); !s) return s;
  if (num_blocks > 0)
    if (Status s = loaded->model->allocate_kv_cache(num_blocks, block_tokens); !s) return s;
  return loaded;
}

inline std::unique_ptr<LoadedModel> load(const fs::path& dir, int threads = 1, const std::string& kv_dtype = "f32",
                                         int32_t num_blocks = 256, int32_t block_tokens = 16,
                                         const Backend& backend = {}, Quantizer* quantizer = nullptr) {
  auto loaded = try_load(dir, threads, kv_dtype, num_blocks, block_tokens, backend, quantizer);
  REQUIRE_MESSAGE(loaded.has_value(), loaded.status().message());
  return std::move(loaded.value());
}

// A small Llama; the tests change the fields that matter to them.
inline llama::LlamaConfig small_config() {
  llama::LlamaConfig c = llama::tiny_llama_config();
  c.vocab_size = 300;
  c.max_position_embeddings = 1024;
  return c;
}

inline void write_checkpoint(const fs::path& dir, const llama::LlamaConfig& config, uint64_t seed,
                             DType dtype = DType::bf16) {
  llama::RandomLlamaOptions options;
  options.seed = seed;
  options.dtype = dtype;
  Status written = llama::write_random_llama_checkpoint(dir, config, options);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
}

// The writer stores RMSNorm weights as ones, which would hide a norm applied
// with the wrong weight; this rewrites them (bf16 or f32 checkpoints) as
// 1 + U(-0.5, 0.5).
inline void randomize_norms(const fs::path& dir, uint32_t seed) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  {
    auto opened = checkpoint::ModelDirectory::open(dir);
    REQUIRE_MESSAGE(opened.has_value(), opened.status().message());
    const auto& source = *opened.value();
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> jitter(-0.5f, 0.5f);
    for (const std::string& name : source.tensor_names()) {
      const TensorView view = source.tensor(name).value();
      const auto* bytes = static_cast<const std::byte*>(view.data);
      std::vector<std::byte> copy(bytes, bytes + view.nbytes());
      if (name.ends_with("norm.weight")) {
        REQUIRE((view.dtype == DType::bf16 || view.dtype == DType::f32));
        for (int64_t i = 0; i < view.numel(); ++i) {
          const float value = 1.0f + jitter(rng);
          if (view.dtype == DType::f32) {
            std::memcpy(copy.data() + 4 * i, &value, 4);
          } else {
            const uint16_t bits = uint16_t(std::bit_cast<uint32_t>(value) >> 16);
            std::memcpy(copy.data() + 2 * i, &bits, 2);
          }
        }
      }
      storage.push_back(std::move(copy));
      tensors.push_back({name, view.dtype, std::vector<int64_t>(view.shape.begin(), view.shape.begin() + view.rank),
                         std::span<const std::byte>(storage.back())});
    }
  }
  Status written = checkpoint::write_safetensors(dir / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
}

// Plain-loop decoding of a stored tensor, independent of kernels/ref.
inline std::vector<double> tensor_values(const WeightSource& weights, const std::string& name) {
  auto view = weights.tensor(name);
  REQUIRE_MESSAGE(view.has_value(), view.status().message());
  const TensorView& v = view.value();
  std::vector<double> out(size_t(v.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.dtype == DType::f32) {
      out[i] = v.as<const float>()[i];
    } else if (v.dtype == DType::bf16) {
      out[i] = std::bit_cast<float>(uint32_t(v.as<const uint16_t>()[i]) << 16);
    } else {
      REQUIRE(v.dtype == DType::f16);
      const uint16_t h = v.as<const uint16_t>()[i];
      const int exponent = (h >> 10) & 0x1f;
      const double mantissa = h & 0x3ff;
      const double magnitude = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
      out[i] = (h & 0x8000) ? -magnitude : magnitude;
    }
  }
  return out;
}

// The oracle: HF's LlamaForCausalLM forward, dense and unpaged, in double.
class DenseLlama {
 public:
  DenseLlama(const WeightSource& weights, const llama::LlamaConfig& config, bool apply_rope_scaling = true)
      : c_(config) {
    embed_ = tensor_values(weights, "model.embed_tokens.weight");
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      const std::string p = fmt::format("model.layers.{}.", l);
      Layer layer;
      layer.input_norm = tensor_values(weights, p + "input_layernorm.weight");
      layer.q = tensor_values(weights, p + "self_attn.q_proj.weight");
      layer.k = tensor_values(weights, p + "self_attn.k_proj.weight");
      layer.v = tensor_values(weights, p + "self_attn.v_proj.weight");
      layer.o = tensor_values(weights, p + "self_attn.o_proj.weight");
      layer.post_norm = tensor_values(weights, p + "post_attention_layernorm.weight");
      layer.gate = tensor_values(weights, p + "mlp.gate_proj.weight");
      layer.up = tensor_values(weights, p + "mlp.up_proj.weight");
      layer.down = tensor_values(weights, p + "mlp.down_proj.weight");
      layers_.push_back(std::move(layer));
    }
    norm_ = tensor_values(weights, "model.norm.weight");
    lm_head_ = c_.tie_word_embeddings ? embed_ : tensor_values(weights, "lm_head.weight");
    // transformers' rotary frequencies, with _compute_llama3_parameters when scaled.
    const int64_t d = c_.head_dim;
    for (int64_t i = 0; i < d / 2; ++i) {
      double f = 1.0 / std::pow(c_.rope_theta, double(2 * i) / double(d));
      if (c_.rope_scaling && apply_rope_scaling) {
        const auto& s = *c_.rope_scaling;
        const double orig = double(s.original_max_position_embeddings);
        const double wavelen = 2 * M_PI / f;
        if (wavelen > orig / s.low_freq_factor) {
          f = f / s.factor;
        } else if (wavelen >= orig / s.high_freq_factor) {
          const double smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1 - smooth) * f / s.factor + smooth * f;
        }
      }
      inv_freq_.push_back(f);
    }
  }

  // What every linear layer of a decoder layer takes in, by checkpoint prefix
  // ("model.layers.0.self_attn.q_proj"): [tokens][in_features].
  using LinearInputs = std::function<void(const std::string& linear, const std::vector<std::vector<double>>& x)>;

  // Logits [tokens][vocab] of every position of `tokens` (positions 0..n-1).
  std::vector<std::vector<double>> forward(const std::vector<TokenId>& tokens, const LinearInputs& record = {}) const {
    const size_t n = tokens.size(), h = size_t(c_.hidden_size), d = size_t(c_.head_dim);
    const size_t qh = size_t(c_.num_attention_heads), kvh = size_t(c_.num_key_value_heads);
    const size_t inter = size_t(c_.intermediate_size), vocab = size_t(c_.vocab_size);
    auto report = [&](size_t layer, const char* linear, const std::vector<std::vector<double>>& x) {
      if (record) record(fmt::format("model.layers.{}.{}", layer, linear), x);
    };
    std::vector<std::vector<double>> x(n, std::vector<double>(h));
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < h; ++i) x[t][i] = embed_[size_t(tokens[t]) * h + i];
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      std::vector<std::vector<double>> normed(n), q(n), k(n), v(n);
      for (size_t t = 0; t < n; ++t) normed[t] = rmsnorm(x[t], layer.input_norm);
      for (const char* linear : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) report(l, linear, normed);
      for (size_t t = 0; t < n; ++t) {
        q[t] = matvec(layer.q, normed[t], qh * d);
        k[t] = matvec(layer.k, normed[t], kvh * d);
        v[t] = matvec(layer.v, normed[t], kvh * d);
        rope(q[t], qh, double(t));
        rope(k[t], kvh, double(t));
      }
      std::vector<std::vector<double>> attended(n, std::vector<double>(qh * d, 0.0));
      for (size_t t = 0; t < n; ++t) {
        for (size_t head = 0; head < qh; ++head) {
          const size_t g = head / (qh / kvh);
          std::vector<double> scores(t + 1);
          double top = -INFINITY;
          for (size_t s = 0; s <= t; ++s) {
            double dot = 0;
            for (size_t i = 0; i < d; ++i) dot += q[t][head * d + i] * k[s][g * d + i];
            scores[s] = dot / std::sqrt(double(d));
            top = std::max(top, scores[s]);
          }
          double total = 0;
          for (double& s : scores) total += (s = std::exp(s - top));
          for (size_t s = 0; s <= t; ++s)
            for (size_t i = 0; i < d; ++i) attended[t][head * d + i] += scores[s] / total * v[s][g * d + i];
        }
      }
      report(l, "self_attn.o_proj", attended);
      for (size_t t = 0; t < n; ++t) {
        const std::vector<double> out = matvec(layer.o, attended[t], h);
        for (size_t i = 0; i < h; ++i) x[t][i] += out[i];
      }
      for (size_t t = 0; t < n; ++t) normed[t] = rmsnorm(x[t], layer.post_norm);
      for (const char* linear : {"mlp.gate_proj", "mlp.up_proj"}) report(l, linear, normed);
      std::vector<std::vector<double>> act(n, std::vector<double>(inter));
      for (size_t t = 0; t < n; ++t) {
        const std::vector<double> gate = matvec(layer.gate, normed[t], inter);
        const std::vector<double> up = matvec(layer.up, normed[t], inter);
        for (size_t i = 0; i < inter; ++i) act[t][i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      }
      report(l, "mlp.down_proj", act);
      for (size_t t = 0; t < n; ++t) {
        const std::vector<double> out = matvec(layer.down, act[t], h);
        for (size_t i = 0; i < h; ++i) x[t][i] += out[i];
      }
    }
    std::vector<std::vector<double>> logits(n);
    for (size_t t = 0; t < n; ++t) logits[t] = matvec(lm_head_, rmsnorm(x[t], norm_), vocab);
    return logits;
  }

 private:
  struct Layer {
    std::vector<double> input_norm, q, k, v, o, post_norm, gate, up, down;
  };
  std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<double>& weight) const {
    double sum = 0;
    for (double value : x) sum += value * value;
    const double scale = 1.0 / std::sqrt(sum / double(x.size()) + c_.rms_norm_eps);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * weight[i];
    return out;
  }
  static std::vector<double> matvec(const std::vector<double>& w, const std::vector<double>& x, size_t rows) {
    std::vector<double> out(rows, 0.0);
    for (size_t r = 0; r < rows; ++r)
      for (size_t i = 0; i < x.size(); ++i) out[r] += w[r * x.size() + i] * x[i];
    return out;
  }
  void rope(std::vector<double>& heads, size_t num_heads, double position) const {
    const size_t d = size_t(c_.head_dim), half = d / 2;
    for (size_t head = 0; head < num_heads; ++head) {
      double* x = heads.data() + head * d;
      for (size_t i = 0; i < half; ++i) {
        const double angle = position * inv_freq_[i];
        const double a = x[i], b = x[i + half];
        x[i] = a * std::cos(angle) - b * std::sin(angle);
        x[i + half] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
  }

  llama::LlamaConfig c_;
  std::vector<double> embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<double> inv_freq_;
};

// max |got - want| / max |want| over one row.
template <typename A, typename B>
double relative_error(const A& got, const B& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return worst / std::max(scale, 1e-30);
}

// One request's state, as the engine keeps it.
struct Request {
  std::vector<TokenId> tokens;  // prompt, then generated
  int32_t prompt_len = 0;
  int32_t computed = 0;         // tokens with K/V in the cache
  std::vector<int32_t> blocks;
  SamplingParams sampling;
  uint64_t seed = 0;
  std::vector<TokenId> suppressed;
  bool return_logits = true;

  explicit Request(std::vector<TokenId> prompt, SamplingParams sp = greedy_params(), uint64_t request_seed = 0)
      : tokens(std::move(prompt)), prompt_len(int32_t(tokens.size())), sampling(sp), seed(request_seed) {}
  static SamplingParams greedy_params() {
    SamplingParams sp;
    sp.temperature = 0;
    return sp;
  }
  std::span<const TokenId> generated() const { return std::span<const TokenId>(tokens).subspan(size_t(prompt_len)); }
};

// Lays out steps like the engine, handing out blocks in a scrambled order so
// block tables are never the identity.
class StepDriver {
 public:
  StepDriver(Model& model, int32_t num_blocks, int32_t block_tokens, uint32_t seed = 7)
      : model_(model), block_tokens_(block_tokens) {
    free_.resize(size_t(num_blocks));
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), std::mt19937(seed));
  }

  struct Part {
    Request* request;
    int32_t query_len;  // tokens to compute now (from request->computed)
  };
  struct Outcome {
    Status status;
    StepOutput output;
  };

  // Runs one step; a part whose chunk reaches the end of its tokens samples,
  // and the sampled token is appended to its request.
  Outcome run(const std::vector<Part>& parts) {
    std::vector<TokenId> ids;
    std::vector<int32_t> positions;
    std::vector<StepSequence> sequences;
    for (const Part& part : parts) {
      Request& r = *part.request;
      const int32_t context = r.computed + part.query_len;
      while (int32_t(r.blocks.size()) * block_tokens_ < context) {
        REQUIRE_MESSAGE(!free_.empty(), "the test ran out of KV blocks");
        r.blocks.push_back(free_.back());
        free_.pop_back();
      }
      StepSequence s;
      s.query_start = int32_t(ids.size());
      s.query_len = part.query_len;
      s.cached_len = r.computed;
      s.block_table = r.blocks;
      s.sample = context == int32_t(r.tokens.size());
      s.sampling = &r.sampling;
      s.rng_seed = r.seed;
      s.rng_offset = uint32_t(r.tokens.size()) - uint32_t(r.prompt_len);
      s.history = r.tokens;
      s.generated = r.generated();
      s.suppressed = r.suppressed;
      s.return_logits = r.return_logits;
      for (int32_t j = 0; j < part.query_len; ++j) {
        ids.push_back(r.tokens[size_t(r.computed + j)]);
        positions.push_back(r.computed + j);
      }
      sequences.push_back(s);
    }
    Outcome outcome;
    outcome.status = model_.step(StepInput{ids, positions, sequences}, outcome.output);
    if (!outcome.status) return outcome;
    size_t sampled = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      Request& r = *parts[i].request;
      r.computed += parts[i].query_len;
      if (sequences[i].sample) {
        REQUIRE(sampled < outcome.output.sampled.size());
        r.tokens.push_back(outcome.output.sampled[sampled++]);
      }
    }
    CHECK(sampled == outcome.output.sampled.size());
    return outcome;
  }

  void release(Request& r) {
    free_.insert(free_.end(), r.blocks.begin(), r.blocks.end());
    r.blocks.clear();
    r.computed = 0;
  }

 private:
  Model& model_;
  int32_t block_tokens_;
  std::vector<int32_t> free_;
};

}  // namespace llama_test
