// Read access to a checkpoint, provided by the host to Model and Quantizer plugins.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"

namespace hostrun {

// An HF model directory: config.json and safetensors (single or sharded). The
// host memory-maps the files and validates every header before a plugin sees a
// byte, so a view it returns is always inside its file.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::string directory() const noexcept = 0;
  virtual std::string config_json() const noexcept = 0;  // the text of config.json
  virtual std::vector<std::string> tensor_names() const noexcept = 0;
  // A host-memory view (read-only) of one tensor, in its stored dtype. A
  // missing name is ErrorCode::not_found naming the tensor and the directory.
  virtual Result<TensorView> tensor(std::string_view name) const noexcept = 0;
};

}  // namespace hostrun
