// Role: Quantizer — offline, turns a checkpoint into a quantized one (e.g. AWQ
// calibration); at load time, supplies the linear layers for its format.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/exec.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/weights.hpp"

namespace hostrun {

// y[tokens, out_features] = x[tokens, in_features] * W^T, in whatever storage
// format the quantizer chose for W. Made once at load, used every step.
class LinearLayer : public PluginObject {
 public:
  virtual int64_t in_features() const noexcept = 0;
  virtual int64_t out_features() const noexcept = 0;
  virtual size_t weight_bytes() const noexcept = 0;
  virtual Status forward(const TensorView& x, const TensorView& y, const ExecContext& exec) noexcept = 0;
};

// What a Model reports during calibration: the input of every linear layer.
class CalibrationObserver {
 public:
  virtual ~CalibrationObserver() = default;
  // `linear` is the checkpoint prefix, e.g. "model.layers.3.mlp.down_proj".
  virtual void on_linear_input(std::string_view linear, const TensorView& x) noexcept = 0;
};

class Model;

struct QuantizeJob {
  const WeightSource* source = nullptr;  // the full-precision checkpoint
  Model* model = nullptr;                // loaded from `source`, to run calibration batches
  std::span<const std::vector<TokenId>> calibration;  // token sequences
  std::string output_dir;                // where the quantized HF directory is written
};

class Quantizer : public PluginObject {
 public:
  // The checkpoint format this quantizer reads and writes ("awq").
  virtual std::string format() const noexcept = 0;
  // Builds one linear layer from the checkpoint. Several prefixes are fused
  // along the output dimension (q/k/v into one QKV product, gate/up into one).
  virtual Result<std::unique_ptr<LinearLayer>> load_linear(const WeightSource& weights,
                                                           std::span<const std::string> prefixes,
                                                           Device device) noexcept = 0;
  // Offline: writes a quantized checkpoint. A quantizer that only loads says unsupported.
  virtual Status quantize(const QuantizeJob& job) noexcept = 0;
};

}  // namespace hostrun
