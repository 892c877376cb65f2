#include "llama_common/llama_weights.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "llama_common/text.hpp"

namespace hostrun::llama {

std::vector<LlamaTensorSpec> llama_tensor_specs(const LlamaConfig& c) {
  std::vector<LlamaTensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    specs.push_back(LlamaTensorSpec{std::move(name), std::move(shape)});
  };
  const int64_t hidden = c.hidden_size;
  add(c.names.embed_tokens(), {c.vocab_size, hidden});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = c.names.layer(layer);
    add(p + "input_layernorm.weight", {hidden});
    add(p + "self_attn.q_proj.weight", {c.q_size(), hidden});
    add(p + "self_attn.k_proj.weight", {c.kv_size(), hidden});
    add(p + "self_attn.v_proj.weight", {c.kv_size(), hidden});
    add(p + "self_attn.o_proj.weight", {hidden, c.q_size()});
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {c.q_size()});
      add(p + "self_attn.k_proj.bias", {c.kv_size()});
      add(p + "self_attn.v_proj.bias", {c.kv_size()});
      add(p + "self_attn.o_proj.bias", {hidden});
    }
    add(p + "post_attention_layernorm.weight", {hidden});
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, hidden});
    add(p + "mlp.up_proj.weight", {c.intermediate_size, hidden});
    add(p + "mlp.down_proj.weight", {hidden, c.intermediate_size});
    if (c.mlp_bias) {
      add(p + "mlp.gate_proj.bias", {c.intermediate_size});
      add(p + "mlp.up_proj.bias", {c.intermediate_size});
      add(p + "mlp.down_proj.bias", {hidden});
    }
  }
  add(c.names.final_norm(), {hidden});
  if (!c.tie_word_embeddings) add(c.names.lm_head, {c.vocab_size, hidden});
  return specs;
}

std::vector<LinearInputGroup> llama_linear_input_groups(const LlamaConfig& c) {
  std::vector<LinearInputGroup> groups;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = c.names.layer(layer);
    const auto producer_linear = [&](const std::string& prefix, bool bias) {
      std::vector<std::string> tensors{prefix + ".weight"};
      if (bias) tensors.push_back(prefix + ".bias");
      return tensors;
    };
    groups.push_back({{{p + "self_attn.q_proj", true}, {p + "self_attn.k_proj", true}, {p + "self_attn.v_proj", false}},
                      {p + "input_layernorm.weight"}});
    groups.push_back({{{p + "self_attn.o_proj", false}},
                      c.num_key_value_heads == c.num_attention_heads
                          ? producer_linear(p + "self_attn.v_proj", c.attention_bias)
                          : std::vector<std::string>{}});
    groups.push_back({{{p + "mlp.gate_proj", false}, {p + "mlp.up_proj", false}}, {p + "post_attention_layernorm.weight"}});
    groups.push_back({{{p + "mlp.down_proj", false}}, producer_linear(p + "mlp.up_proj", c.mlp_bias)});
  }
  return groups;
}

Status validate_llama_weights(const LlamaConfig& config, const WeightSource& weights) noexcept {
  return guard([&]() -> Status {
    const std::string where = weights.directory();
    if (config.quant_method)
      return Status(ErrorCode::unsupported,
                    fmt::format("{}: config is quantized (quant_method '{}'); validate_llama_weights checks "
                                "unquantized Llama weights only",
                                where, *config.quant_method));
    if (Status s = validate_llama_config(config); !s) return s;

    // Every problem at once: a converter that got one layer wrong usually got
    // them all wrong, and one error per run makes that slow to see.
    constexpr size_t kMaxListed = 32;
    std::vector<std::string> problems;
    size_t count = 0;
    ErrorCode code = ErrorCode::corrupt_data;
    auto problem = [&](ErrorCode c, std::string text) {
      if (count++ == 0 || c == ErrorCode::not_found) code = c;
      if (problems.size() < kMaxListed) problems.push_back(std::move(text));
    };
    for (const auto& spec : llama_tensor_specs(config)) {
      auto view = weights.tensor(spec.name);
      if (!view) {
        problem(ErrorCode::not_found,
                fmt::format("tensor {}: missing (expected shape {})", quote_name(spec.name), shape_text(spec.shape)));
        continue;
      }
      std::span<const int64_t> found(view->shape.data(), view->rank);
      if (!std::equal(found.begin(), found.end(), spec.shape.begin(), spec.shape.end()))
        problem(ErrorCode::corrupt_data, fmt::format("tensor {}: expected shape {}, found {}", quote_name(spec.name),
                                                     shape_text(spec.shape), shape_text(found)));
      else if (view->dtype != DType::f32 && view->dtype != DType::f16 && view->dtype != DType::bf16)
        problem(ErrorCode::corrupt_data, fmt::format("tensor {}: expected a float dtype (f32, f16, bf16), found {}",
                                                     quote_name(spec.name), dtype_name(view->dtype)));
    }
    if (count == 0) return Status::ok();
    std::string message =
        fmt::format("{}: {} Llama weight problem{}: {}", where, count, count == 1 ? "" : "s", fmt::join(problems, "; "));
    if (count > problems.size()) message += fmt::format("; and {} more", count - problems.size());
    return Status(code, std::move(message));
  });
}

}  // namespace hostrun::llama
