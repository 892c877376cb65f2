// Role: Quantizer — at load, supplies the linear layers of its weight format
// (AWQ's packed int4, FP8, ...); offline, writes a quantized checkpoint from
// a full-precision one (AWQ calibration: `hostrun lite`).
//
// A model plugin given a quantizer (LoadContext::quantizer) asks it for every
// linear layer it would otherwise build from dense weights, and calls
// LinearLayer::forward where it would have run its own GEMM.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "hostrun/exec.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/weights.hpp"

namespace hostrun {

// Work a linear layer may do on its output before writing it, saving the
// model a kernel and a round trip through memory. Bits of a mask.
enum LinearEpilogue : uint32_t {
  kEpilogueNone = 0,
  // RoPE on the first `rope.rotated_heads` heads of each output row (the q and
  // k heads of a fused QKV product), as KvCachePolicy::write_rotary defines it.
  kEpilogueRope = 1u << 0,
  // SiLU-and-multiply: the product's columns are [gate | up] (out_features =
  // 2 n) and y receives silu(gate) * up, [rows, n].
  kEpilogueSiluMul = 1u << 1,
  // y = x W^T + residual (residual [rows, out_features]; it may alias y).
  kEpilogueResidualAdd = 1u << 2,
};

struct LinearRope {
  const int32_t* positions = nullptr;  // [rows], on the layer's device
  const float* inv_freq = nullptr;     // [head_dim / 2] f32, on the layer's device
  int32_t rotated_heads = 0;           // heads from the start of each row that rotate
  int32_t head_dim = 0;
};

// One call: y = epilogue(x W^T). x [rows, in_features] and y [rows, out] are
// views in the layer's activation dtype on its device; rows are contiguous,
// the row stride is free.
struct LinearCall {
  TensorView x;
  TensorView y;
  uint32_t epilogue = kEpilogueNone;  // a subset of fused_epilogues(rows)
  LinearRope rope;                    // kEpilogueRope
  TensorView residual;                // kEpilogueResidualAdd
};

// One view of a LinearCall against that contract: [rows, columns] in
// `dtype` on `device`, each row contiguous and the row stride at least a
// row. `layer` names the caller and `what` the view ("x", "y", "residual")
// in the error, which says what was expected and what came.
inline Status check_linear_view(std::string_view layer, std::string_view what, const TensorView& view, int64_t rows,
                                int64_t columns, DType dtype, Device device) {
  if (view.device == device && view.dtype == dtype && view.rank == 2 && view.shape[0] == rows &&
      view.shape[1] == columns && view.strides[1] == 1 && view.strides[0] >= columns &&
      (view.data != nullptr || rows == 0))
    return Status();
  return Status(ErrorCode::invalid_argument,
                fmt::format("{}: {}: expected [{}, {}] {} rows on {}:{} (row stride >= {}), found {} rank {} "
                            "[{}, {}] strides [{}, {}] on {}:{}{}",
                            layer, what, rows, columns, dtype_name(dtype), device_kind_name(device.kind),
                            device.index, columns, dtype_name(view.dtype), view.rank, view.shape[0], view.shape[1],
                            view.strides[0], view.strides[1], device_kind_name(view.device.kind), view.device.index,
                            view.data == nullptr && rows > 0 ? " with no data" : ""));
}

struct LinearInfo {
  int64_t in_features = 0;
  int64_t out_features = 0;  // of the product (before a SiLU-and-multiply halves it)
  size_t weight_bytes = 0;   // on the device, scales and zero points included
  DType activation_dtype = DType::bf16;
  Device device{};
  std::string format;        // "awq-w4-g128", "bf16", ... for logs
};

// y[rows, out_features] = x[rows, in_features] * W^T, in whatever storage
// format the quantizer chose for W (repacked at load into the layout its
// kernels read best). Made once at load, used every step; forward() follows
// KvCachePolicy's rules (no allocation, no synchronize, legal under capture).
class LinearLayer : public PluginObject {
 public:
  virtual LinearInfo info() const noexcept = 0;
  // The epilogues this layer fuses for a call of `rows` rows (a mask). For an
  // epilogue it needs and the layer lacks, the model calls with that bit
  // clear and runs its own kernel on y afterwards (RoPE, SiLU-and-multiply,
  // the residual add), so a layer that fuses nothing is always correct.
  virtual uint32_t fused_epilogues(int64_t rows) const noexcept = 0;
  // Device workspace forward() needs for calls of up to `max_rows` rows.
  virtual size_t workspace_bytes(int64_t max_rows) const noexcept = 0;
  virtual Status forward(const LinearCall& call, const ExecContext& exec) noexcept = 0;
  // W as the layer computes with it, dequantized to f32 [out_features,
  // in_features] in host memory (conformance tests, calibration, debugging).
  virtual Status dequantize(std::span<float> weight) const noexcept = 0;
};

// What load_linear gets: the checkpoint, which of its linear layers to
// build, and where they run.
struct LinearLoad {
  const WeightSource* weights = nullptr;
  // Checkpoint prefixes ("model.layers.3.self_attn.q_proj"); several are fused
  // along the output dimension in order (q/k/v into one QKV product, gate/up
  // into one), all with the same in_features.
  std::span<const std::string> prefixes;
  Device device{};
  DType activation_dtype = DType::bf16;
  int64_t max_rows = 0;  // the most rows one call will have (for pre-packing choices)
};

// What a Model reports during calibration: the input of every linear layer.
class CalibrationObserver {
 public:
  virtual ~CalibrationObserver() = default;
  // `linear` is the checkpoint prefix, e.g. "model.layers.3.mlp.down_proj";
  // `x` [tokens, in_features] f32 in host memory, valid during the call.
  // Linears that read one input (LinearInputGroup) are reported with equal x.
  virtual void on_linear_input(std::string_view linear, const TensorView& x) noexcept = 0;
};

struct CalibratedLinear {
  std::string prefix;  // "model.layers.3.self_attn.q_proj": `prefix.weight` [out, in] in the checkpoint
  // Its outputs become attention logits (q and k): outliers there matter
  // beyond the layer's own output error, so quantizers that clip weights
  // leave these unclipped (as AutoAWQ does).
  bool feeds_attention_logits = false;
};

// Linear layers that read one input, and the tensors that produce that
// input's channels: dividing channel c of the producers by s[c] and
// multiplying column c of every reader by s[c] leaves the model's function
// unchanged, which is what AWQ's activation-aware scaling does before it
// rounds. What a model reports here is its knowledge of its own graph, so a
// quantizer needs no table of model families.
struct LinearInputGroup {
  std::vector<CalibratedLinear> linears;  // in the order the model fuses them (q, k, v)
  // Checkpoint tensors whose slice c along dimension 0 is channel c of the
  // input: a norm's weight [in] (and bias), a producing linear's weight rows
  // [in, ...] and bias [in]. Empty when nothing before the input is linear
  // in it (o_proj under grouped-query attention: a v row feeds several heads'
  // columns); such a group is only clipped, never scaled.
  std::vector<std::string> producers;
};

// How far a quantize() has come, for a progress bar.
class QuantizeProgress {
 public:
  virtual ~QuantizeProgress() = default;
  // `stage` says what runs ("calibrating", "quantizing linears"), `done` of `total` units of it.
  virtual void on_progress(std::string_view stage, int64_t done, int64_t total) noexcept = 0;
};

class Model;

struct QuantizeJob {
  const WeightSource* source = nullptr;  // the full-precision checkpoint
  Model* model = nullptr;                // loaded from `source`, to run calibration batches
  std::span<const std::vector<TokenId>> calibration;  // token sequences
  // Where the quantized folder's weights and config.json go; the host copies
  // the other files (tokenizer, generation config) and calls finish().
  WeightSink* output = nullptr;
  int32_t bits = 4;                      // weight bits (--w-bits)
  int32_t group_size = 128;              // input channels a scale covers (--w-group-size)
  QuantizeProgress* progress = nullptr;  // optional
};

class Quantizer : public PluginObject {
 public:
  // The checkpoint format this quantizer reads and writes, as config.json's
  // quantization_config.quant_method spells it ("awq", "fp8").
  virtual std::string format() const noexcept = 0;
  virtual Result<PluginPtr<LinearLayer>> load_linear(const LinearLoad& load) noexcept = 0;
  // Offline: writes a quantized checkpoint. A quantizer that only loads says unsupported.
  virtual Status quantize(const QuantizeJob& job) noexcept = 0;
};

}  // namespace hostrun
