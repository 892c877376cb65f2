// `hostrun-vision-onnx HF_DIR OUT.onnx`: a LLaVA folder's vision tower and
// projector as the ONNX graph onnx_vision writes from it at load (one
// execution path: the file runs through the same plugin with `--set
// vision.graph=OUT.onnx`), for inspection, for onnxruntime or other tools, or
// to edit. A tool of the vision plugin's library, not of the host: the host
// knows no model family.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <fstream>

#include "checkpoint/model_directory.hpp"
#include "onnx_vision/llava_graph.hpp"

int main(int argc, char** argv) {
  CLI::App app("A LLaVA folder's vision tower and projector as an ONNX graph (f32 weights inside the file)",
               "hostrun-vision-onnx");
  std::string folder, output;
  app.add_option("HF_DIR", folder, "LLaVA folder (LlavaForConditionalGeneration: config.json and safetensors)")->required();
  app.add_option("OUT", output, "The .onnx file to write")->required();
  CLI11_PARSE(app, argc, argv);
  auto weights = hostrun::checkpoint::ModelDirectory::open(folder);
  if (!weights) {
    fmt::print(stderr, "{}\n", weights.status().message());
    return 1;
  }
  auto graph = hostrun::onnx_vision::llava_folder_graph(*weights.value());
  if (!graph) {
    fmt::print(stderr, "{}\n", graph.status().message());
    return 1;
  }
  // protobuf refuses messages of 2 GiB and more: the ViT-L tower in f32 is about 1.2 GB.
  if (graph->model.ByteSizeLong() >= (size_t(2) << 30)) {
    fmt::print(stderr, "{}: the graph would take {} bytes, over protobuf's 2 GiB\n", folder, graph->model.ByteSizeLong());
    return 1;
  }
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out || !graph->model.SerializeToOstream(&out) || !out.flush()) {
    fmt::print(stderr, "{}: cannot write the graph\n", output);
    return 1;
  }
  const auto& c = graph->config;
  fmt::print("wrote {}: CLIP {} wide, {} of {} layers, {} x {} px images -> {} x {} features\n", output, c.hidden_size,
             c.layers_run(), c.num_hidden_layers, c.image_size, c.image_size, c.tokens_per_image(), c.text_hidden_size);
  return 0;
}
