// Role: VisionEncoder — images to embeddings the language model takes in
// place of placeholder tokens (LLaVA's CLIP ViT + projector).
//
// The engine owns the memory the embeddings go to (Model::allocate_embeddings,
// on the language model's device) and keeps them while the request lives, so
// a sequence recomputed after preemption is fed the same embeddings; the
// encoder only fills it. It does so on a thread of the engine's own, while
// the model's steps go on (a GPU encoder on a stream of its own): a batch of
// images never holds up the decode of running requests. encode() returns
// once the memory holds the embeddings, so a step the engine queues after
// it reads them with no further synchronization.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "hostrun/generation.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/weights.hpp"

namespace hostrun {

struct VisionInfo {
  int32_t tokens_per_image = 0;  // embeddings (prompt positions) one image becomes
  int32_t hidden_size = 0;       // width of each: the language model's hidden size
  // The prompt token whose one occurrence per image the engine expands to
  // tokens_per_image positions (config.json's image_token_index) and its text.
  TokenId placeholder_id = -1;
  std::string placeholder;       // "<image>"
  int32_t image_height = 0;      // the pixels one image is resized and cropped to
  int32_t image_width = 0;
  uint32_t output_dtypes = 0;    // dtype_bit() of each dtype encode() can write
  Device device{};
};

struct VisionLoadContext {
  // Kept alive by the host for as long as the encoder (LLaVA folders hold the
  // vision tower beside the language model).
  const WeightSource* weights = nullptr;
  Device device{};
  DType activation_dtype = DType::bf16;
  int32_t max_images = 1;  // the most images one encode() call gets (for its workspace)
};

class VisionEncoder : public PluginObject {
 public:
  virtual Status load(const VisionLoadContext& context) noexcept = 0;
  virtual VisionInfo info() const noexcept = 0;
  // Decodes, preprocesses and encodes `images` (at most max_images) into
  // `out` ([images * tokens_per_image, hidden_size], contiguous, on the
  // encoder's device, a dtype from output_dtypes) and returns once `out`
  // holds them. Called from one thread at a time, which need not be the one
  // that loaded the encoder; a GPU encoder launches on a stream of its own
  // and never on the model's (which may be capturing a CUDA graph), so the
  // call runs beside the model's steps. Bad image bytes are
  // invalid_argument naming the image's index.
  virtual Status encode(std::span<const ImageData> images, const TensorView& out) noexcept = 0;
};

}  // namespace hostrun
