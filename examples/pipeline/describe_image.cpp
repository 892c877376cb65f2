// LMDeploy's VLM example in C++:
//
//   from lmdeploy import pipeline
//   from lmdeploy.vl import load_image
//   pipe = pipeline('xtuner/llava-llama-3-8b-v1_1-hf')
//   image = load_image('tiger.jpeg')
//   response = pipe(('describe this image', image))
//   print(response)
//
// Usage: describe_image MODEL_DIR IMAGE [PROMPT]   (the reply streams to stdout)
#include <hostrun/pipeline.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE [PROMPT]\n", argv[0]);
    return 2;
  }
  auto pipe = hostrun::Pipeline::open({.model_dir = argv[1]});
  if (!pipe) {
    std::fprintf(stderr, "%s\n", pipe.status().message().c_str());
    return 1;
  }
  auto image = hostrun::load_image(argv[2]);
  if (!image) {
    std::fprintf(stderr, "%s\n", image.status().message().c_str());
    return 1;
  }
  hostrun::SamplingParams sampling;
  sampling.max_tokens = 64;
  sampling.temperature = 0.0f;  // greedy: the same image gives the same description
  auto reply = (*pipe)->ask(argc > 3 ? argv[3] : "describe this image", {*image}, sampling,
                            [](std::string_view piece) { std::fwrite(piece.data(), 1, piece.size(), stdout); });
  if (!reply) {
    std::fprintf(stderr, "\n%s\n", reply.status().message().c_str());
    return 1;
  }
  std::printf("\n[%s: %d prompt tokens, %d generated]\n", hostrun::finish_reason_name(reply->finish),
              reply->prompt_tokens, reply->completion_tokens);
  return 0;
}
