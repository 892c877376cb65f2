// LinearLayer conformance: every quantizer's layers, on random shapes (one
// prefix and fused q/k/v and gate/up), against ref::gemm on the weights the
// layer itself reports (dequantize()), which must in turn be the checkpoint's
// dense weights within the format's rounding. Inputs and outputs sit in
// padded rows (NaN in the padding) on the row's device; each epilogue a layer
// claims is compared with the model's fallback (the layer without it, then
// ref RoPE / SiLU-and-multiply / the add); unclaimed ones must be refused;
// every call runs in exactly workspace_bytes(max_rows) of workspace.
#include "linear_suite.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <numeric>
#include <optional>

#include "../support/temp_dir.hpp"
#include "checkpoint/model_directory.hpp"
#include "hostrun/plugin.hpp"
#include "ref/gemm.hpp"
#include "ref/rope.hpp"
#include "ref/silu_mul.hpp"

namespace conformance {

namespace {

using namespace hostrun;

struct LinearCase {
  const char* name;
  int64_t in_features;
  std::vector<std::pair<const char*, int64_t>> outputs;  // fused in this order: (linear name, out_features)
};

// Features are multiples of 128, as grouped formats (AWQ's 128) need.
const LinearCase kCases[] = {
    {"one prefix, 256 -> 384", 256, {{"mlp.proj", 384}}},
    {"q, k, v fused, 128 -> 256 + 128 + 128", 128,
     {{"self_attn.q_proj", 256}, {"self_attn.k_proj", 128}, {"self_attn.v_proj", 128}}},
    {"gate, up fused, 256 -> 2 x 512", 256, {{"mlp.gate_proj", 512}, {"mlp.up_proj", 512}}},
    {"one prefix, 512 -> 128", 512, {{"mlp.down_proj", 128}}},
};
const int64_t kRowCounts[] = {1, 2, 3, 8, 17, 64, 130, 300};
constexpr int64_t kMaxRows = 320;
constexpr int64_t kRowPadding = 8;
constexpr size_t kCanaryBytes = 256;
// The RoPE epilogue rotates heads of this size (Llama's q and k heads).
constexpr int64_t kRopeHeadDim = 64;

ref::RopeTable rope_table() {
  ref::RopeParams params;
  params.head_dim = size_t(kRopeHeadDim);
  params.theta = 500000.0;
  return ref::make_rope_table(params);
}

// One forward() call on padded rows; y (and the residual, when given) start as `y_start`.
struct Call {
  std::vector<float> y;  // [rows, y_columns] as it came back
  Status status;
  bool padding_kept = true;
  bool input_kept = true;
};

class LayerChecker {
 public:
  LayerChecker(const QuantizerRow& row, LinearLayer& layer, int64_t in, int64_t out, int64_t max_rows)
      : row_(row), layer_(layer), memory_(linear_device_memory()), in_(in), out_(out),
        workspace_bytes_(layer.workspace_bytes(max_rows)),
        workspace_(memory_, workspace_bytes_ + kCanaryBytes) {
    memory_.upload(workspace_.as<std::byte>() + workspace_bytes_, canary_.data(), kCanaryBytes);
  }

  // y = epilogue(x W^T) with y [rows, y_columns]; `residual` (when the
  // residual epilogue is asked) is its own buffer, or y itself when `alias`.
  Call forward(const std::vector<float>& x, int64_t rows, uint32_t epilogue, int64_t y_columns,
               const std::vector<float>* residual = nullptr, bool alias = false, const LinearRope* rope = nullptr) {
    Staging xs(memory_, row_.activation_dtype, size_t(rows * (in_ + kRowPadding)));
    xs.put(0, rows, in_ + kRowPadding, in_, x);
    xs.upload();
    const std::vector<std::byte> x_before = xs.image();
    Staging ys(memory_, row_.activation_dtype, size_t(rows * (y_columns + kRowPadding)));
    if (alias) ys.put(0, rows, y_columns + kRowPadding, y_columns, *residual);
    ys.upload();
    const std::vector<std::byte> padding_before = ys.padding(rows, y_columns + kRowPadding, y_columns);
    std::optional<Staging> residual_buffer;
    LinearCall call;
    call.x = xs.view(0, {rows, in_}, in_ + kRowPadding);
    call.y = ys.view(0, {rows, y_columns}, y_columns + kRowPadding);
    call.epilogue = epilogue;
    if (rope) call.rope = *rope;
    if (residual && alias) {
      call.residual = call.y;
    } else if (residual) {
      residual_buffer.emplace(memory_, row_.activation_dtype, size_t(rows * (y_columns + kRowPadding)));
      residual_buffer->put(0, rows, y_columns + kRowPadding, y_columns, *residual);
      residual_buffer->upload();
      call.residual = residual_buffer->view(0, {rows, y_columns}, y_columns + kRowPadding);
    }
    ExecContext exec{memory_.device(), memory_.stream(), {}};
    exec.workspace = TensorView::contiguous(workspace_.data(), DType::u8, {int64_t(workspace_bytes_)}, memory_.device());
    Call result;
    result.status = layer_.forward(call, exec);
    memory_.synchronize();
    ys.download();
    xs.download();
    result.y = ys.get(0, rows, y_columns + kRowPadding, y_columns);
    result.padding_kept = ys.padding(rows, y_columns + kRowPadding, y_columns) == padding_before;
    result.input_kept = xs.image() == x_before;
    return result;
  }

  bool canary_kept() {
    std::vector<std::byte> after(kCanaryBytes);
    memory_.download(after.data(), workspace_.as<std::byte>() + workspace_bytes_, kCanaryBytes);
    return after == canary_;
  }
  DeviceMemory& memory() { return memory_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  const QuantizerRow& row_;
  LinearLayer& layer_;
  DeviceMemory& memory_;
  int64_t in_, out_;
  size_t workspace_bytes_;
  DeviceBuffer workspace_;
  const std::vector<std::byte> canary_ = std::vector<std::byte>(kCanaryBytes, std::byte{0x5a});
};

std::vector<float> concatenated(std::span<const DenseLinearWeight> weights) {
  std::vector<float> all;
  for (const auto& w : weights) all.insert(all.end(), w.values.begin(), w.values.end());
  return all;
}

}  // namespace

std::vector<std::string> check_linear_layer(const QuantizerRow& row, LinearLayer& layer,
                                            std::span<const DenseLinearWeight> weights, int64_t max_rows) {
  std::vector<std::string> problems;
  auto problem = [&](std::string text) { problems.push_back(std::move(text)); };
  const int64_t in = weights.front().in_features;
  const int64_t out = std::accumulate(weights.begin(), weights.end(), int64_t(0),
                                      [](int64_t sum, const DenseLinearWeight& w) { return sum + w.out_features; });
  DeviceMemory& memory = linear_device_memory();

  const LinearInfo info = layer.info();
  if (info.in_features != in || info.out_features != out) {
    problem(fmt::format("info(): {} -> {} features, expected {} -> {}", info.in_features, info.out_features, in, out));
    return problems;
  }
  if (info.activation_dtype != row.activation_dtype)
    problem(fmt::format("info(): activation dtype {}, expected {}", dtype_name(info.activation_dtype),
                        dtype_name(row.activation_dtype)));
  if (info.device.kind != memory.device().kind)
    problem(fmt::format("info(): device {}, expected {}", device_kind_name(info.device.kind),
                        device_kind_name(memory.device().kind)));
  if (info.weight_bytes == 0) problem("info(): weight_bytes is 0");
  if (info.format.empty()) problem("info(): no format name");

  std::vector<float> w(size_t(out * in));
  if (Status s = layer.dequantize(w); !s) {
    problem("dequantize: " + s.message());
    return problems;
  }
  const double weight_error = relative_error(w, concatenated(weights));
  if (!(weight_error <= row.weight_tolerance))
    problem(fmt::format("dequantize(): off the checkpoint's dense weights (prefixes fused in order) by {} relative, "
                        "bound {}",
                        weight_error, row.weight_tolerance));
  std::vector<float> too_small(w.size() - 1);
  if (layer.dequantize(too_small).is_ok()) problem("dequantize() accepted a span one value short");

  LayerChecker checker(row, layer, in, out, max_rows);
  const ref::RopeTable rope = rope_table();
  DeviceBuffer inv_freq(memory, rope.inv_freq.size() * sizeof(float));
  memory.upload(inv_freq.data(), rope.inv_freq.data(), inv_freq.bytes());
  for (int64_t rows : kRowCounts) {
    if (rows > max_rows) continue;
    const std::string where = fmt::format("{} rows", rows);
    const std::vector<float> x = rounded_to(random_values(size_t(rows * in), uint32_t(rows)), row.activation_dtype);
    std::vector<float> want(size_t(rows * out));
    ref::gemm(x.data(), w.data(), ref::DType::f32, size_t(rows), size_t(out), size_t(in), want.data());
    const Call plain = checker.forward(x, rows, kEpilogueNone, out);
    if (!plain.status) {
      problem(fmt::format("{}: forward: {}", where, plain.status.message()));
      continue;
    }
    const double error = relative_error(plain.y, want);
    if (!(error <= row.tolerance))
      problem(fmt::format("{}: y = x W^T off ref::gemm on dequantize()'s W by {} relative, bound {}", where, error,
                          row.tolerance));
    if (!plain.padding_kept) problem(where + ": forward wrote outside y's rows");
    if (!plain.input_kept) problem(where + ": forward changed x");
    if (rows == kRowCounts[0]) {
      // The LinearCall contract (sdk's check_linear_view): a y one column
      // short is refused as invalid_argument, and nothing lands past its rows.
      const Call misfit = checker.forward(x, rows, kEpilogueNone, out - 1);
      if (misfit.status.code() != ErrorCode::invalid_argument || !misfit.padding_kept)
        problem(fmt::format("{}: forward given y [rows, {}] for {} outputs: {}", where, out - 1, out,
                            misfit.status ? "accepted" : misfit.status.message()));
    }

    const uint32_t fused = layer.fused_epilogues(rows);
    auto compare = [&](const char* epilogue, const Call& call, const std::vector<float>& fallback) {
      if (!call.status) return problem(fmt::format("{}: {} epilogue claimed, but forward says: {}", where, epilogue,
                                                   call.status.message()));
      const double e = relative_error(call.y, fallback);
      if (!(e <= row.tolerance))
        problem(fmt::format("{}: {} epilogue off the model's fallback by {} relative, bound {}", where, epilogue, e,
                            row.tolerance));
      if (!call.padding_kept) problem(fmt::format("{}: {} epilogue wrote outside y's rows", where, epilogue));
    };
    if (fused & kEpilogueRope) {
      const int64_t heads = std::min<int64_t>(out / kRopeHeadDim, 6);
      std::vector<int32_t> positions(static_cast<size_t>(rows));
      std::mt19937 rng(uint32_t(rows) + 7);
      for (int32_t& p : positions) p = int32_t(rng() % 8192);
      DeviceBuffer device_positions(memory, positions.size() * sizeof(int32_t));
      memory.upload(device_positions.data(), positions.data(), device_positions.bytes());
      const LinearRope call_rope{device_positions.as<const int32_t>(), inv_freq.as<const float>(), int32_t(heads),
                                 int32_t(kRopeHeadDim)};
      std::vector<float> fallback = plain.y;
      for (int64_t r = 0; r < rows; ++r)
        ref::apply_rope(rope, &positions[size_t(r)], 1, fallback.data() + r * out, size_t(heads), nullptr, 0);
      compare("RoPE", checker.forward(x, rows, kEpilogueRope, out, nullptr, false, &call_rope), fallback);
    }
    if (fused & kEpilogueSiluMul) {
      if (out % 2 != 0) {
        problem(fmt::format("{}: SiLU-and-multiply claimed on {} (odd) outputs", where, out));
      } else {
        std::vector<float> fallback(size_t(rows * out / 2));
        ref::silu_and_mul(plain.y.data(), size_t(rows), size_t(out / 2), fallback.data());
        compare("SiLU-and-multiply", checker.forward(x, rows, kEpilogueSiluMul, out / 2), fallback);
      }
    }
    if (fused & kEpilogueResidualAdd) {
      const std::vector<float> residual =
          rounded_to(random_values(size_t(rows * out), uint32_t(rows) + 11), row.activation_dtype);
      std::vector<float> fallback = plain.y;
      for (size_t i = 0; i < fallback.size(); ++i) fallback[i] += residual[i];
      compare("residual add", checker.forward(x, rows, kEpilogueResidualAdd, out, &residual), fallback);
      compare("residual add into y itself", checker.forward(x, rows, kEpilogueResidualAdd, out, &residual, true),
              fallback);
    }
    // An epilogue the layer does not claim is the caller's mistake: refused, not ignored.
    for (auto [bit, name] : {std::pair{kEpilogueRope, "RoPE"}, {kEpilogueSiluMul, "SiLU-and-multiply"},
                             {kEpilogueResidualAdd, "residual add"}}) {
      if (fused & bit) continue;
      const std::vector<float> residual(size_t(rows * out), 0.0f);
      const LinearRope no_rope{};
      const Call call = checker.forward(x, rows, bit, bit == kEpilogueSiluMul ? out / 2 : out,
                                        bit == kEpilogueResidualAdd ? &residual : nullptr, false, &no_rope);
      if (call.status) problem(fmt::format("{}: {} epilogue not claimed, yet forward accepted it", where, name));
    }
  }
  if (!checker.canary_kept())
    problem(fmt::format("forward wrote past workspace_bytes({}) = {}", max_rows, checker.workspace_bytes()));
  return problems;
}

TEST_SUITE("linear") {
  TEST_CASE("load_linear: layers of every shape conform; a missing prefix is not_found, naming it") {
    for (const QuantizerRow& row : quantizer_rows()) {
      INFO("row: " << std::string(row.label));
      auto registry = plugin_registry();
      REQUIRE_MESSAGE(registry->find(row.plugin), missing_plugin(*registry, row.plugin));
      auto made = registry->create<Quantizer>(row.plugin, settings_of(row.settings), nullptr, "quantizer",
                                              linear_device_memory().device());
      REQUIRE_MESSAGE(made.has_value(), made.status().message());
      Quantizer& quantizer = *made.value();
      CHECK_FALSE(quantizer.format().empty());
      uint32_t seed = 1;
      for (const LinearCase& c : kCases) {
        INFO("case: " << std::string(c.name));
        std::vector<DenseLinearWeight> weights;
        for (auto [name, out] : c.outputs) {
          DenseLinearWeight weight{fmt::format("model.layers.3.{}", name), out, c.in_features, {}};
          // HF's init scale, rounded to bf16 as checkpoints store it.
          weight.values = rounded_to(random_values(size_t(out * c.in_features), seed++, 0.05f), DType::bf16);
          weights.push_back(std::move(weight));
        }
        hostrun::test::TempDir dir("conformance-linear");
        row.write_checkpoint(dir.path(), weights);
        auto source = checkpoint::ModelDirectory::open(dir.path());
        REQUIRE_MESSAGE(source.has_value(), source.status().message());
        std::vector<std::string> prefixes;
        for (const auto& w : weights) prefixes.push_back(w.prefix);
        LinearLoad load{source.value().get(), prefixes, linear_device_memory().device(), row.activation_dtype, kMaxRows};
        auto layer = quantizer.load_linear(load);
        REQUIRE_MESSAGE(layer.has_value(), layer.status().message());
        REQUIRE(layer.value());
        const std::vector<std::string> problems = check_linear_layer(row, *layer.value(), weights, kMaxRows);
        for (const std::string& p : problems) FAIL_CHECK(p);

        const std::vector<std::string> missing{prefixes.front(), "model.layers.3.self_attn.missing_proj"};
        auto refused = quantizer.load_linear(LinearLoad{source.value().get(), missing, linear_device_memory().device(),
                                                        row.activation_dtype, kMaxRows});
        REQUIRE_FALSE(refused.has_value());
        CHECK(refused.status().code() == ErrorCode::not_found);
        CHECK(refused.status().message().find("missing_proj") != std::string::npos);
      }
    }
  }
}

}  // namespace conformance
