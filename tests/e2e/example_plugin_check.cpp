// Loads the out-of-tree example plugin through the host and uses it.
#include <doctest/doctest.h>

#include <cstdlib>

#include "plugin_loader.hpp"

using namespace hostrun;

TEST_CASE("the example tokenizer, built against the installed SDK, loads and round-trips text") {
  const char* dir = std::getenv("HOSTRUN_EXAMPLE_PLUGIN_DIR");
  REQUIRE_MESSAGE(dir, "HOSTRUN_EXAMPLE_PLUGIN_DIR must name the example's build folder");
  core::PluginRegistry registry;
  registry.scan({dir});
  REQUIRE(registry.refused().empty());
  Settings settings;
  settings.set("add_bos", true);
  auto tokenizer = registry.create<Tokenizer>("byte_tokenizer", settings, nullptr);
  REQUIRE_MESSAGE(tokenizer.has_value(), tokenizer.status().message());

  const std::string text = "héllo </s> 世界";
  std::vector<TokenId> ids;
  REQUIRE((*tokenizer)->encode(text, {}, ids).is_ok());
  CHECK(ids.front() == 256);
  CHECK(ids.size() == 1 + text.size());  // special-looking text stays plain by default
  std::vector<TokenId> special;
  REQUIRE((*tokenizer)->encode("a</s>", {.add_bos = false, .parse_special = true}, special).is_ok());
  CHECK(special == std::vector<TokenId>{'a', 257});

  std::string decoded;
  REQUIRE((*tokenizer)->decode(ids, {.skip_special_tokens = true}, decoded).is_ok());
  CHECK(decoded == text);

  // Streaming: pieces never end inside a UTF-8 sequence and add up to decode().
  auto stream = (*tokenizer)->incremental_decoder({.skip_special_tokens = true});
  REQUIRE(stream);
  std::string joined;
  for (TokenId id : ids) {
    std::string piece;
    REQUIRE(stream->push(id, piece).is_ok());
    if (!piece.empty()) CHECK((static_cast<unsigned char>(piece.back()) & 0xC0) != 0xC0);
    joined += piece;
  }
  REQUIRE(stream->finish(joined).is_ok());
  CHECK(joined == decoded);
  std::string bad;
  CHECK((*tokenizer)->decode(std::vector<TokenId>{999}, {}, bad).code() == ErrorCode::invalid_argument);
}
