// The quantizers whose layers run on the CPU, through the LinearLayer suite
// (linear_suite.cpp); and the suite checked on layers made here, one right
// and some wrong, so its epilogue checks are known to bite before a
// quantizer that fuses epilogues joins. A new quantizer joins with one row.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "linear_checkpoints.hpp"
#include "linear_suite.hpp"
#include "ref/gemm.hpp"
#include "ref/rope.hpp"
#include "ref/silu_mul.hpp"

namespace conformance {

namespace {

using namespace hostrun;

// label, plugin, settings, activation dtype, checkpoint writer, weight tolerance, tolerance
const QuantizerRow kRows[] = {
    // int8 with one scale per row: |W - q s| <= s / 2 = max|row| / 254. Its
    // forward multiplies the dequantized rows with ref::gemm: the same sums.
    {"test_rtn_int8", "test_rtn_int8", {}, DType::f32, &write_dense_checkpoint, 1.0 / 254 * 1.0001, 1e-6},
    // AutoAWQ 4-bit, round to nearest: |W - W'| <= step / 2 with step = range / 15 <= 2 max|W| / 15 (plus the
    // f16 rounding of the scale). Its forward sums each group in input order (ref::awq_gemm), ref::gemm blocks
    // differently: f32 rounding apart.
    {"awq, group 128", "awq", {}, DType::f32, &write_awq_checkpoint<128>, 1.0 / 15 * 1.01, 1e-5},
    {"awq, group 32", "awq", {}, DType::f32, &write_awq_checkpoint<32>, 1.0 / 15 * 1.01, 1e-5},
    // FP8 e4m3: a value rounds within half its binade's step, at most 16 at the top (256..448), so
    // |W - W'| <= max|W| / 28 at either scale granularity. Its forward also rounds x to e4m3 per row (or on the
    // static scale 0.004, which x in [-1, 1] never saturates): the product's error is that of x's rounding,
    // 0.021-0.035 of the largest output over the suite's shapes, bounded at 0.05.
    {"fp8, per-channel scales", "fp8", {}, DType::f32, &write_fp8_checkpoint<true>, 1.0 / 28 * 1.0001, 0.05},
    {"fp8, per-tensor scale", "fp8", {}, DType::f32, &write_fp8_checkpoint<false>, 1.0 / 28 * 1.0001, 0.05},
    {"fp8, static input scale", "fp8", {}, DType::f32, &write_fp8_checkpoint<true, 4>, 1.0 / 28 * 1.0001, 0.05},
};

// A dense layer made here that fuses every epilogue through the ref kernels,
// each of which it can be told to get wrong.
class EpilogueLayer final : public LinearLayer {
 public:
  enum class Fault { none, rope_position, silu_without_silu, residual_dropped, writes_padding, skips_view_check };
  EpilogueLayer(std::vector<float> weight, int64_t in, Fault fault)
      : weight_(std::move(weight)), in_(in), out_(int64_t(weight_.size()) / in), fault_(fault) {}

  LinearInfo info() const noexcept override {
    return LinearInfo{in_, out_, weight_.size() * sizeof(float), DType::f32, Device{}, "f32 with epilogues"};
  }
  uint32_t fused_epilogues(int64_t) const noexcept override {
    return kEpilogueRope | kEpilogueSiluMul | kEpilogueResidualAdd;
  }
  size_t workspace_bytes(int64_t max_rows) const noexcept override { return size_t(max_rows * out_) * sizeof(float); }
  Status forward(const LinearCall& call, const ExecContext& exec) noexcept override {
    const int64_t rows = call.x.rank == 2 ? call.x.shape[0] : -1;
    const int64_t y_columns = call.epilogue & kEpilogueSiluMul ? out_ / 2 : out_;
    if (fault_ != Fault::skips_view_check) {
      if (Status s = check_linear_view("epilogue layer", "x", call.x, rows, in_, DType::f32, {}); !s) return s;
      if (Status s = check_linear_view("epilogue layer", "y", call.y, rows, y_columns, DType::f32, {}); !s) return s;
    }
    auto* product = static_cast<float*>(exec.workspace.data);  // [rows, out]
    for (int64_t r = 0; r < rows; ++r)
      ref::gemm(call.x.as<const float>() + r * call.x.strides[0], weight_.data(), ref::DType::f32, 1, size_t(out_),
                size_t(in_), product + r * out_);
    if (call.epilogue & kEpilogueRope) {
      const ref::RopeTable table{size_t(call.rope.head_dim),
                                 std::vector<float>(call.rope.inv_freq, call.rope.inv_freq + call.rope.head_dim / 2)};
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t position = call.rope.positions[r] + (fault_ == Fault::rope_position ? 1 : 0);
        ref::apply_rope(table, &position, 1, product + r * out_, size_t(call.rope.rotated_heads), nullptr, 0);
      }
    }
    const int64_t columns = call.epilogue & kEpilogueSiluMul ? out_ / 2 : out_;
    for (int64_t r = 0; r < rows; ++r) {
      float* y = call.y.as<float>() + r * call.y.strides[0];
      const float* p = product + r * out_;
      for (int64_t i = 0; i < columns; ++i) {
        float value = p[i];
        if (call.epilogue & kEpilogueSiluMul) {
          const float gate = p[i], up = p[i + columns];
          value = fault_ == Fault::silu_without_silu ? gate * up : gate / (1.0f + std::exp(-gate)) * up;
        }
        if ((call.epilogue & kEpilogueResidualAdd) && fault_ != Fault::residual_dropped)
          value += call.residual.as<const float>()[r * call.residual.strides[0] + i];
        y[i] = value;
      }
      if (fault_ == Fault::writes_padding) y[columns] = 0.0f;
    }
    return {};
  }
  Status dequantize(std::span<float> weight) const noexcept override {
    if (weight.size() != weight_.size()) return Status(ErrorCode::invalid_argument, "wrong size");
    std::copy(weight_.begin(), weight_.end(), weight.begin());
    return {};
  }

 private:
  std::vector<float> weight_;
  int64_t in_, out_;
  Fault fault_;
};

}  // namespace

std::span<const QuantizerRow> quantizer_rows() { return kRows; }

DeviceMemory& linear_device_memory() {
  static HostMemory memory;
  return memory;
}

TEST_CASE("the linear suite passes a layer that fuses every epilogue right, and names each one done wrong") {
  const QuantizerRow row{"epilogues made here", "", {}, DType::f32, nullptr, 0.0, 1e-5};
  // A fused gate/up-like product: 128 -> 2 x 128 (four 64-wide heads for RoPE).
  std::vector<DenseLinearWeight> weights{
      {"model.layers.0.mlp.gate_proj", 128, 128, random_values(128 * 128, 3, 0.05f)},
      {"model.layers.0.mlp.up_proj", 128, 128, random_values(128 * 128, 4, 0.05f)}};
  std::vector<float> stacked = weights[0].values;
  stacked.insert(stacked.end(), weights[1].values.begin(), weights[1].values.end());
  using Fault = EpilogueLayer::Fault;
  auto problems_of = [&](Fault fault) {
    EpilogueLayer layer(stacked, 128, fault);
    return check_linear_layer(row, layer, weights, 64);
  };
  const auto right = problems_of(Fault::none);
  CHECK_MESSAGE(right.empty(), fmt::format("{}", fmt::join(right, "; ")));
  for (auto [fault, named] : {std::pair{Fault::rope_position, "RoPE epilogue off"},
                              {Fault::silu_without_silu, "SiLU-and-multiply epilogue off"},
                              {Fault::residual_dropped, "residual add epilogue off"},
                              {Fault::writes_padding, "wrote outside y's rows"},
                              {Fault::skips_view_check, "forward given y [rows, 255] for 256 outputs"}}) {
    INFO("fault: " << std::string(named));
    const auto found = problems_of(fault);
    const bool named_it =
        std::any_of(found.begin(), found.end(), [&](const std::string& p) { return p.find(named) != std::string::npos; });
    CHECK_MESSAGE(named_it, fmt::format("{}", fmt::join(found, "; ")));
  }
}

}  // namespace conformance
