// The LinearLayer conformance suite (linear_suite.cpp): any quantizer's
// layers against ref::gemm on the layer's own dequantize()d weights, on the
// device the row names.
//
// The executable that runs the suite (conformance_linear.cpp) defines the two
// functions below: its rows and the memory of their device. A new quantizer
// joins by adding one row, with a function that writes a checkpoint it loads.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "device_memory.hpp"
#include "hostrun/quantizer.hpp"

namespace conformance {

// One linear layer of a checkpoint: "<prefix>.weight" holds `values`
// ([out_features, in_features], already representable in bf16) in the
// quantizer's own format.
struct DenseLinearWeight {
  std::string prefix;
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::vector<float> values;
};

struct QuantizerRow {
  const char* label;
  const char* plugin;
  SettingList settings;
  hostrun::DType activation_dtype;
  // Writes into `directory` an HF folder this quantizer's load_linear reads
  // the given layers from (dense weights for a quantizer that quantizes at
  // load; its packed format for one that reads a quantized checkpoint).
  void (*write_checkpoint)(const std::filesystem::path& directory, std::span<const DenseLinearWeight> layers);
  // Bound on max |W_dequantized - W_dense| / max |W_dense| per layer: what
  // the format's rounding may cost (and what catches fused prefixes out of order).
  double weight_tolerance;
  // Bound on max |y - ref| / max |ref| of every forward() (epilogues
  // included) against the same product from ref::gemm on dequantize()'s W.
  double tolerance;
};

std::span<const QuantizerRow> quantizer_rows();
DeviceMemory& linear_device_memory();

// Every check of the suite on one layer, as messages (empty: it conforms);
// `row` gives the activation dtype and tolerance, `weights` what it was
// loaded from. Exposed so the suite can check itself on a layer made in the
// test (conformance_linear.cpp).
std::vector<std::string> check_linear_layer(const QuantizerRow& row, hostrun::LinearLayer& layer,
                                            std::span<const DenseLinearWeight> weights, int64_t max_rows);

}  // namespace conformance
