// libFuzzer target: any bytes as text for the real Llama-3 tokenizer
// (HOSTRUN_TOKENIZER_DIR). Checks, besides memory safety:
//   decode(encode(s)) == s with ill-formed UTF-8 repaired (U+FFFD per maximal subpart);
//   streaming decode == decode for the same ids, and for the input read as raw ids.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "hf_tokenizer.hpp"
#include "utf8.hpp"

namespace {

std::unique_ptr<hostrun::hf::HfTokenizer> tokenizer;

std::string stream_decode(const std::vector<hostrun::TokenId>& ids, bool skip) {
  std::string out, pending;
  for (auto id : ids) {
    if (skip && tokenizer->is_special(id)) continue;
    pending += *tokenizer->token_bytes(id);
    size_t held = hostrun::hf::append_utf8_lossy(pending, out, true);
    pending.erase(0, pending.size() - held);
  }
  hostrun::hf::append_utf8_lossy(pending, out, false);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("HOSTRUN_TOKENIZER_DIR");
  if (!dir) {
    std::fprintf(stderr, "fuzz_encode: set HOSTRUN_TOKENIZER_DIR (scripts/fetch-tokenizer.sh prints it)\n");
    std::exit(1);
  }
  auto made = hostrun::hf::HfTokenizer::load(dir);
  if (!made) {
    std::fprintf(stderr, "fuzz_encode: %s\n", made.status().message().c_str());
    std::exit(1);
  }
  tokenizer = std::move(made.value());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  bool parse_special = data[0] & 1;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<hostrun::TokenId> ids;
  if (!tokenizer->encode(text, std::nullopt, parse_special, ids).is_ok()) abort();
  std::string decoded, expected;
  if (!tokenizer->decode(ids, false, decoded).is_ok()) abort();
  hostrun::hf::append_utf8_lossy(text, expected, false);
  if (decoded != expected) abort();
  if (stream_decode(ids, false) != decoded) abort();
  // The same bytes read as ids: decode must reject unknown ones and agree with streaming otherwise.
  std::vector<hostrun::TokenId> raw;
  for (size_t i = 1; i + 3 <= size; i += 3)
    raw.push_back(hostrun::TokenId((data[i] | data[i + 1] << 8 | data[i + 2] << 16) % (tokenizer->vocab_size() + 8)));
  std::string whole;
  bool known = true;
  for (auto id : raw) known = known && tokenizer->token_bytes(id);
  if (tokenizer->decode(raw, data[0] & 2, whole).is_ok() != known) abort();
  if (known && stream_decode(raw, data[0] & 2) != whole) abort();
  return 0;
}
