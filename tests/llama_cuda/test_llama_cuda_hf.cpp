// llama_cuda + kv_cuda (bf16) against the HF transformers fixtures that
// llama_cpu is checked against (tests/llama_cpu/hf_fixture_check.hpp).
// HF ran in f32; here weights, activations and K/V are bf16 with f32
// accumulation, so logits are held to 3e-2 of the row's largest magnitude and
// a greedy difference is accepted only at a near-tie of HF's own top two.
#include "hf_fixture_check.hpp"

using namespace llama_test;

TEST_CASE("llama_cuda matches HF transformers on the recorded fixtures (bf16)") {
  const auto fixtures = fixture_folders();
  CHECK(fixtures.size() >= 3);
  // The CUDA attention kernels are built for head_dim 64 and 128; the small
  // fixtures' 16 and 32 are llama_cpu's alone.
  int checked = 0;
  for (const auto& folder : fixtures) {
    std::ifstream in(folder / "manifest.json");
    const auto manifest = nlohmann::json::parse(in);
    const int64_t head_dim = manifest.at("config").at("head_dim").get<int64_t>();
    if (head_dim != 64 && head_dim != 128) {
      MESSAGE(folder.filename().string() << ": head_dim " << head_dim << " is not run on CUDA");
      continue;
    }
    check_fixture(folder, Backend{true}, FixtureTolerance{3e-2, 2e-2});
    ++checked;
  }
  CHECK_MESSAGE(checked >= 2, "expected the head_dim 64 and 128 fixtures (scripts/make_fixtures.py --only ...)");
}
