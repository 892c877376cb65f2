// libFuzzer target: any bytes as tokenizer.json. Loading must either succeed
// or return a Status naming the file; a loaded tokenizer must then encode and
// decode without crashing. Seeds: a small byte-level BPE file (fuzz_seed.cjs).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "hf_tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto made = hostrun::hf::HfTokenizer::load_from_text(text, "fuzz/tokenizer.json");
  if (!made) {
    // Every failure explains itself and says where.
    if (made.status().message().find("fuzz/tokenizer.json") == std::string::npos) abort();
    return 0;
  }
  std::vector<hostrun::TokenId> ids;
  if (!(*made)->encode("Hello <|eot|> world 123 \xE2\x82\xAC\xFF", std::nullopt, true, ids).is_ok()) return 0;
  std::string decoded;
  if (!(*made)->decode(ids, false, decoded).is_ok()) abort();  // ids it made itself must decode
  return 0;
}
