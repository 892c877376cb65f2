// Randomly initialised LLaVA folders (LlavaForConditionalGeneration) in the
// HF layout: a Llama language model, a CLIP vision tower and the projector,
// with the config, image processor config and a tokenizer that has the
// <image> token, as transformers 4 or 5 saves them. Fixtures for the image
// path end to end (no LLaVA weights can be downloaded here).
#pragma once

#include <filesystem>
#include <string>

#include "hostrun/status.hpp"
#include "llama_common/llama_config.hpp"
#include "random_checkpoint.hpp"

namespace hostrun::llama {

// CLIPVisionConfig's sizes and LLaVA's keys around the tower.
struct RandomLlavaVision {
  int64_t hidden_size = 32;
  int64_t intermediate_size = 64;
  int64_t layers = 2;
  int64_t heads = 2;
  int64_t image_size = 28;
  int64_t patch_size = 14;
  int64_t feature_layer = -2;
  std::string select_strategy = "default";  // "default" drops CLS, "full" keeps it
};

struct RandomLlavaOptions {
  RandomLlamaOptions weights;
  RandomLlavaVision vision;
  bool transformers5 = false;  // names, processor_config.json and image_token_id as transformers 5 writes them
  // A folder with tokenizer.json and tokenizer_config.json: copied in with
  // "<image>" added as the next id, and text.vocab_size padded past it to a
  // multiple of 64 (as LLaVA-Llama-3 pads its embedding). Required.
  std::filesystem::path tokenizer_dir;
};

// `text` is the language model (its names are set here); its tensors hold
// the values write_random_llama_checkpoint writes for the same seed, and the
// two layouts the same values. Writes config.json,
// generation_config.json, preprocessor_config.json (transformers 4) or
// processor_config.json (5), tokenizer.json, tokenizer_config.json and the
// weights into `directory`.
Status write_random_llava_checkpoint(const std::filesystem::path& directory, LlamaConfig text,
                                     const RandomLlavaOptions& options) noexcept;

}  // namespace hostrun::llama
