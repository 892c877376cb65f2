// `hostrun-llama-checkpoint random DIR`: a randomly initialised Llama
// checkpoint of any shape in the HF layout, so tests and benchmarks need no
// downloaded weights (speed does not depend on the values). `rtn-awq SRC DST`:
// a folder's linear layers rounded to nearest 4-bit in AutoAWQ's format. A tool of the
// Llama library, not of the host: the host knows no model family.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <optional>

#include "llama_common/llama_config.hpp"
#include "random_checkpoint.hpp"
#include "random_llava.hpp"
#include "rtn_awq.hpp"

namespace hostrun::llama {

namespace {

namespace fs = std::filesystem;

struct RandomCheckpointOptions {
  std::string directory;
  std::string shape = "tiny";
  std::string dtype = "bf16";
  uint64_t seed = 0;
  double init_std = 0.02;
  std::optional<int64_t> hidden_size, intermediate_size, layers, heads, kv_heads, head_dim, vocab_size,
      max_position_embeddings;
  std::optional<double> rope_theta;
  std::optional<bool> tie_word_embeddings;
  std::string rope_scaling;  // "", "none" or "llama3"
  std::string tokenizer_dir;
  uint64_t max_shard_mb = 5000;
};

// The shape the flags ask for; nullopt after printing why not.
std::optional<LlamaConfig> requested_config(const RandomCheckpointOptions& o) {
  LlamaConfig config;
  if (o.shape == "tiny") {
    config = tiny_llama_config();
  } else if (o.shape == "llama3-8b") {
    config = llama3_8b_config();
  } else {
    fmt::print(stderr, "--shape '{}': expected tiny or llama3-8b\n", o.shape);
    return std::nullopt;
  }
  if (o.hidden_size) config.hidden_size = *o.hidden_size;
  if (o.intermediate_size) config.intermediate_size = *o.intermediate_size;
  if (o.layers) config.num_hidden_layers = *o.layers;
  if (o.heads) config.num_attention_heads = *o.heads;
  if (o.kv_heads) config.num_key_value_heads = *o.kv_heads;
  if (o.head_dim) config.head_dim = *o.head_dim;
  else if (o.hidden_size || o.heads) config.head_dim = config.hidden_size / std::max<int64_t>(config.num_attention_heads, 1);
  if (o.vocab_size) config.vocab_size = *o.vocab_size;
  if (o.max_position_embeddings) config.max_position_embeddings = *o.max_position_embeddings;
  if (o.rope_theta) config.rope_theta = *o.rope_theta;
  if (o.tie_word_embeddings) config.tie_word_embeddings = *o.tie_word_embeddings;
  if (o.rope_scaling == "llama3") config.rope_scaling = Llama3RopeScaling{};
  else if (o.rope_scaling == "none") config.rope_scaling.reset();
  else if (!o.rope_scaling.empty()) {
    fmt::print(stderr, "--rope-scaling '{}': expected none or llama3\n", o.rope_scaling);
    return std::nullopt;
  }
  if (!o.tokenizer_dir.empty()) {
    // Llama-3's special ids, so the checkpoint agrees with its tokenizer.
    config.bos_token_id = 128000;
    config.eos_token_ids = {128001, 128009};
  }
  return config;
}

std::optional<RandomLlamaOptions> requested_weights(const RandomCheckpointOptions& o) {
  RandomLlamaOptions options;
  options.seed = o.seed;
  options.init_std = o.init_std;
  options.max_shard_bytes = o.max_shard_mb << 20;
  if (o.dtype == "bf16") options.dtype = DType::bf16;
  else if (o.dtype == "f16") options.dtype = DType::f16;
  else if (o.dtype == "f32") options.dtype = DType::f32;
  else {
    fmt::print(stderr, "--dtype '{}': expected bf16, f16 or f32\n", o.dtype);
    return std::nullopt;
  }
  return options;
}

int write(const RandomCheckpointOptions& o) {
  std::optional<LlamaConfig> requested = requested_config(o);
  std::optional<RandomLlamaOptions> weights = requested_weights(o);
  if (!requested || !weights) return 2;
  const LlamaConfig& config = *requested;
  const RandomLlamaOptions& options = *weights;
  if (Status valid = validate_llama_config(config, "the requested shape"); !valid) {
    fmt::print(stderr, "{}\n", valid.message());
    return 2;
  }
  if (Status written = write_random_llama_checkpoint(o.directory, config, options); !written) {
    fmt::print(stderr, "{}\n", written.message());
    return 1;
  }
  if (!o.tokenizer_dir.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
      std::error_code ec;
      fs::copy_file(fs::path(o.tokenizer_dir) / name, fs::path(o.directory) / name,
                    fs::copy_options::overwrite_existing, ec);
      if (ec) {
        fmt::print(stderr, "{}: cannot copy into {}: {}\n", (fs::path(o.tokenizer_dir) / name).string(), o.directory,
                   ec.message());
        return 1;
      }
    }
  }
  fmt::print("wrote {}: {} layers, hidden {}, {} heads ({} KV), vocab {}, {}\n", o.directory, config.num_hidden_layers,
             config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.vocab_size, o.dtype);
  return 0;
}

int write_llava(const RandomCheckpointOptions& o, const RandomLlavaOptions& llava_in) {
  std::optional<LlamaConfig> requested = requested_config(o);
  std::optional<RandomLlamaOptions> weights = requested_weights(o);
  if (!requested || !weights) return 2;
  if (o.tokenizer_dir.empty()) {
    fmt::print(stderr, "random-llava needs --tokenizer (the <image> token is added to it)\n");
    return 2;
  }
  RandomLlavaOptions llava = llava_in;
  llava.weights = *weights;
  llava.tokenizer_dir = o.tokenizer_dir;
  if (Status written = write_random_llava_checkpoint(o.directory, *requested, llava); !written) {
    fmt::print(stderr, "{}\n", written.message());
    return 1;
  }
  fmt::print("wrote {}: LLaVA ({}), CLIP {} wide x {} layers at {} px, language model {} layers, hidden {}\n",
             o.directory, llava.transformers5 ? "transformers 5" : "transformers 4", llava.vision.hidden_size,
             llava.vision.layers, llava.vision.image_size, requested->num_hidden_layers, requested->hidden_size);
  return 0;
}

// The flags of the language model's shape and weights, on `random` and `random-llava`.
void add_llama_flags(CLI::App* cmd, RandomCheckpointOptions& o) {
  cmd->add_option("DIR", o.directory, "Folder to write (created)")->required();
  cmd->add_option("--shape", o.shape, "Base shape: tiny or llama3-8b; the flags below change it")->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "Stored dtype: bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed (the same seed writes the same bytes)")->capture_default_str();
  cmd->add_option("--init-std", o.init_std, "Standard deviation of the weights")->capture_default_str();
  cmd->add_option("--hidden-size", o.hidden_size);
  cmd->add_option("--intermediate-size", o.intermediate_size);
  cmd->add_option("--layers", o.layers, "num_hidden_layers");
  cmd->add_option("--heads", o.heads, "num_attention_heads");
  cmd->add_option("--kv-heads", o.kv_heads, "num_key_value_heads");
  cmd->add_option("--head-dim", o.head_dim, "head_dim (default hidden / heads)");
  cmd->add_option("--vocab-size", o.vocab_size);
  cmd->add_option("--max-position-embeddings", o.max_position_embeddings);
  cmd->add_option("--rope-theta", o.rope_theta);
  cmd->add_option("--rope-scaling", o.rope_scaling, "none or llama3 (Llama-3.1's factors)");
  cmd->add_option("--tie-word-embeddings", o.tie_word_embeddings, "true or false");
  cmd->add_option("--tokenizer", o.tokenizer_dir,
                  "Folder with tokenizer.json and tokenizer_config.json to copy in (sets Llama-3's bos/eos ids)");
  cmd->add_option("--max-shard-mb", o.max_shard_mb, "Shard the weights above this size")->capture_default_str();
}

}  // namespace

}  // namespace hostrun::llama

int main(int argc, char** argv) {
  using hostrun::llama::RandomCheckpointOptions;
  CLI::App app("Llama checkpoints for tests and benchmarks", "hostrun-llama-checkpoint");
  app.require_subcommand(1);
  auto* cmd = app.add_subcommand("random", "Write a randomly initialised Llama checkpoint of any shape "
                                           "(config.json, safetensors, generation_config.json)");
  RandomCheckpointOptions o;
  hostrun::llama::add_llama_flags(cmd, o);
  auto* llava_cmd = app.add_subcommand("random-llava", "Write a randomly initialised LLaVA folder "
                                                       "(LlavaForConditionalGeneration: the Llama flags for the "
                                                       "language model, CLIP's below, <image> added to --tokenizer)");
  RandomCheckpointOptions llava_text;
  hostrun::llama::RandomLlavaOptions llava;
  hostrun::llama::add_llama_flags(llava_cmd, llava_text);
  llava_cmd->add_option("--vision-hidden-size", llava.vision.hidden_size)->capture_default_str();
  llava_cmd->add_option("--vision-intermediate-size", llava.vision.intermediate_size)->capture_default_str();
  llava_cmd->add_option("--vision-layers", llava.vision.layers)->capture_default_str();
  llava_cmd->add_option("--vision-heads", llava.vision.heads)->capture_default_str();
  llava_cmd->add_option("--image-size", llava.vision.image_size)->capture_default_str();
  llava_cmd->add_option("--patch-size", llava.vision.patch_size)->capture_default_str();
  llava_cmd->add_option("--feature-layer", llava.vision.feature_layer, "vision_feature_layer")->capture_default_str();
  llava_cmd->add_option("--select-strategy", llava.vision.select_strategy, "default (drop CLS) or full")->capture_default_str();
  llava_cmd->add_flag("--transformers5", llava.transformers5,
                      "Names, image_token_id and processor_config.json as transformers 5 writes them");
  auto* rtn = app.add_subcommand("rtn-awq", "Round a Llama folder's linear layers to nearest 4-bit in AutoAWQ's GEMM "
                                            "format (the baseline AWQ's search must beat; AWQ folders for tests)");
  std::string rtn_source, rtn_destination;
  hostrun::llama::RtnAwqOptions rtn_options;
  std::string twin;
  rtn->add_option("SRC", rtn_source, "Unquantized Llama folder")->required();
  rtn->add_option("DST", rtn_destination, "Folder to write (created)")->required();
  rtn->add_option("--group-size", rtn_options.group_size, "32, 64 or 128")->capture_default_str();
  rtn->add_option("--dequantized-twin", twin, "Also write the dequantized weights as a dense f32 folder here");
  CLI11_PARSE(app, argc, argv);
  if (llava_cmd->parsed()) return hostrun::llama::write_llava(llava_text, llava);
  if (rtn->parsed()) {
    rtn_options.dequantized_twin = twin;
    if (hostrun::Status s = hostrun::llama::write_rtn_awq_checkpoint(rtn_source, rtn_destination, rtn_options); !s) {
      fmt::print(stderr, "{}\n", s.message());
      return 1;
    }
    fmt::print("wrote {}: linear layers as AWQ 4-bit, group {}{}\n", rtn_destination, rtn_options.group_size,
               twin.empty() ? "" : fmt::format("; dequantized twin in {}", twin));
    return 0;
  }
  return hostrun::llama::write(o);
}
