// Tokenizer conformance: the invariants every tokenizer must meet, on a
// corpus, and where an oracle has tokenized that corpus, the oracle's ids.
//
//   - decode(encode(s)) == s for every corpus string, special-token parsing on and off;
//   - decode() gives well-formed UTF-8, and the incremental decoder's pieces,
//     each well-formed on its own, concatenate to it, skipping specials or
//     not (on the corpus's ids and on random id lists, whose bytes are often
//     not UTF-8: those come back as U+FFFD);
//   - each special token's text is that one id with parsing on, never with
//     it off, and nothing when decoding skips specials; BOS is added exactly
//     when asked;
//   - ids outside the vocabulary are errors (decode and the decoder);
//   - token_to_id(id_to_token(id)) == id for every id.
//
// run_tokenizer_conformance.sh makes the corpus and the oracle's ids with
// tests/tokenizer's generator and JS oracle (@lenml/tokenizers on the real
// Llama-3 tokenizer.json) and passes their folder in HOSTRUN_TOKENIZER_WORK,
// the tokenizer's folder in HOSTRUN_TOKENIZER_DIR. A new tokenizer joins with
// one row.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "hostrun/plugin.hpp"
#include "support.hpp"

namespace conformance {

namespace {

using namespace hostrun;
using Ids = std::vector<TokenId>;

std::string required_env(const char* name) {
  const char* value = std::getenv(name);
  REQUIRE_MESSAGE((value && *value), name << " is not set: run this suite through "
                                              "tests/conformance/run_tokenizer_conformance.sh (ctest conformance_tokenizer)");
  return value;
}

struct TokenizerRow {
  const char* label;
  const char* plugin;
  SettingList (*settings)();  // at run time: a tokenizer's folder comes from the environment
  // Ids of HOSTRUN_TOKENIZER_WORK's corpus from an oracle (oracle_special.jsonl,
  // oracle_plain.jsonl; decode_ids.jsonl -> oracle_decode.jsonl), without BOS.
  bool oracle;
};

const TokenizerRow kRows[] = {
    {"hf_tokenizer, the real Llama-3 tokenizer.json", "hf_tokenizer",
     [] { return SettingList{{"file", required_env("HOSTRUN_TOKENIZER_DIR")}}; }, true},
    {"byte_tokenizer (examples/, built in-tree)", "byte_tokenizer", [] { return SettingList{}; }, false},
};

// JSON lines of the corpus folder.
std::vector<nlohmann::json> lines_of(const char* file) {
  const fs::path path = fs::path(required_env("HOSTRUN_TOKENIZER_WORK")) / file;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in, "cannot open " << path.string());
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// Well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
bool valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;  // bounds of the second byte
    if (lead < 0x80) length = 1;
    else if (lead >= 0xC2 && lead <= 0xDF) length = 2;
    else if (lead == 0xE0) length = 3, low = 0xA0;
    else if (lead == 0xED) length = 3, high = 0x9F;
    else if (lead >= 0xE1 && lead <= 0xEF) length = 3;
    else if (lead == 0xF0) length = 4, low = 0x90;
    else if (lead == 0xF4) length = 4, high = 0x8F;
    else if (lead >= 0xF1 && lead <= 0xF3) length = 4;
    else return false;
    if (i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto byte = static_cast<unsigned char>(text[i + k]);
      if (byte < (k == 1 ? low : 0x80) || byte > (k == 1 ? high : 0xBF)) return false;
    }
    i += length;
  }
  return true;
}

struct Made {
  std::unique_ptr<core::PluginRegistry> registry;
  core::PluginHandle<Tokenizer> tokenizer;
};

Made make(const TokenizerRow& row) {
  Made made{plugin_registry(), {}};
  REQUIRE_MESSAGE(made.registry->find(row.plugin), missing_plugin(*made.registry, row.plugin));
  auto created = made.registry->create<Tokenizer>(row.plugin, settings_of(row.settings()), nullptr);
  REQUIRE_MESSAGE(created.has_value(), created.status().message());
  made.tokenizer = created.value();
  return made;
}

Ids encode(const Tokenizer& t, std::string_view text, bool parse_special, bool add_bos = false) {
  Ids ids;
  EncodeOptions options;
  options.add_bos = add_bos;
  options.parse_special = parse_special;
  const Status s = t.encode(text, options, ids);
  REQUIRE_MESSAGE(s.is_ok(), "encode: " << s.message());
  return ids;
}

std::string decode(const Tokenizer& t, const Ids& ids, bool skip_special) {
  std::string text;
  const Status s = t.decode(ids, DecodeOptions{skip_special}, text);
  REQUIRE_MESSAGE(s.is_ok(), "decode: " << s.message());
  return text;
}

// Random id lists over the whole vocabulary: byte pieces that do not form
// UTF-8 on their own, special tokens between them.
std::vector<Ids> random_id_lists(int32_t vocab_size) {
  std::mt19937 rng(2024);
  std::vector<Ids> lists;
  for (int n = 0; n < 300; ++n) {
    Ids ids(1 + rng() % 40);
    for (TokenId& id : ids) id = TokenId(rng() % uint32_t(vocab_size));
    lists.push_back(std::move(ids));
  }
  return lists;
}

}  // namespace

TEST_SUITE("tokenizer") {
  TEST_CASE("round trip: decode(encode(s)) == s on the corpus, special-token parsing on and off") {
    const auto corpus = lines_of("corpus.jsonl");
    CHECK(corpus.size() >= 2000);
    for (const TokenizerRow& row : kRows) {
      INFO("row: " << std::string(row.label));
      Made made = make(row);
      for (const auto& line : corpus) {
        const std::string text = line.get<std::string>();
        for (bool parse_special : {true, false})
          REQUIRE_MESSAGE(decode(*made.tokenizer, encode(*made.tokenizer, text, parse_special), false) == text,
                          "round trip failed for " << line.dump() << (parse_special ? " (special parsing on)" : ""));
      }
    }
  }

  TEST_CASE("streaming: the decoder's pieces concatenate to decode(), and all of it is well-formed UTF-8") {
    for (const TokenizerRow& row : kRows) {
      INFO("row: " << std::string(row.label));
      Made made = make(row);
      const Tokenizer& t = *made.tokenizer;
      std::vector<Ids> lists = random_id_lists(t.vocab_size());
      for (const auto& line : lines_of("corpus.jsonl")) lists.push_back(encode(t, line.get<std::string>(), true));
      if (row.oracle)
        for (const auto& line : lines_of("decode_ids.jsonl")) lists.push_back(line.get<Ids>());
      for (const Ids& ids : lists)
        for (bool skip : {false, true}) {
          const std::string whole = decode(t, ids, skip);
          REQUIRE_MESSAGE(valid_utf8(whole), "decode() gave ill-formed UTF-8 for " << nlohmann::json(ids).dump());
          auto decoder = t.incremental_decoder(DecodeOptions{skip});
          REQUIRE(decoder);
          std::string streamed;
          for (TokenId id : ids) {
            std::string piece;
            REQUIRE(decoder->push(id, piece).is_ok());
            REQUIRE_MESSAGE(valid_utf8(piece), "a piece that is not whole UTF-8, pushing " << id << " of "
                                                                                            << nlohmann::json(ids).dump());
            streamed += piece;
          }
          std::string tail;
          REQUIRE(decoder->finish(tail).is_ok());
          REQUIRE(valid_utf8(tail));
          streamed += tail;
          REQUIRE_MESSAGE(streamed == whole, "streamed != decode() for " << nlohmann::json(ids).dump()
                                                                          << (skip ? " (skipping specials)" : ""));
        }
    }
  }

  TEST_CASE("special tokens: parsed only when asked, skipped when asked; BOS exactly when asked") {
    for (const TokenizerRow& row : kRows) {
      INFO("row: " << std::string(row.label));
      Made made = make(row);
      const Tokenizer& t = *made.tokenizer;
      const SpecialTokenIds specials = t.special_tokens();
      std::vector<TokenId> special_ids;
      for (TokenId id = 0; id < t.vocab_size(); ++id)
        if (t.is_special(id)) special_ids.push_back(id);
      REQUIRE_FALSE(special_ids.empty());
      std::vector<TokenId> named = specials.eos;
      if (specials.bos) named.push_back(*specials.bos);
      if (specials.pad) named.push_back(*specials.pad);
      for (TokenId id : named) {
        CAPTURE(id);
        CHECK((id >= 0 && id < t.vocab_size()));
      }
      for (TokenId id : special_ids) {
        CAPTURE(id);
        const std::string text = t.id_to_token(id);
        REQUIRE_FALSE(text.empty());
        CHECK(encode(t, text, true) == Ids{id});
        const Ids plain = encode(t, text, false);
        CHECK(std::find(plain.begin(), plain.end(), id) == plain.end());
        CHECK(decode(t, plain, false) == text);
        CHECK(decode(t, Ids{id}, true).empty());
        CHECK(decode(t, Ids{id}, false) == text);
      }
      if (specials.bos) {
        const Ids with = encode(t, "Hello", false, true), without = encode(t, "Hello", false, false);
        REQUIRE_FALSE(with.empty());
        CHECK(with.front() == *specials.bos);
        CHECK(Ids(with.begin() + 1, with.end()) == without);
        CHECK((without.empty() || without.front() != *specials.bos));
      }
    }
  }

  TEST_CASE("ids outside the vocabulary are errors; token_to_id and id_to_token agree on every id") {
    for (const TokenizerRow& row : kRows) {
      INFO("row: " << std::string(row.label));
      Made made = make(row);
      const Tokenizer& t = *made.tokenizer;
      const int32_t vocab = t.vocab_size();
      REQUIRE(vocab > 0);
      for (TokenId bad : {vocab, TokenId(-1), TokenId(1 << 30)}) {
        CAPTURE(bad);
        std::string text;
        const Ids ids{0, bad};
        CHECK(t.decode(ids, {}, text).code() == ErrorCode::invalid_argument);
        auto decoder = t.incremental_decoder({});
        REQUIRE(decoder);
        std::string piece;
        CHECK(decoder->push(bad, piece).code() == ErrorCode::invalid_argument);
        CHECK(t.id_to_token(bad).empty());
      }
      size_t mismatched = 0;
      for (TokenId id = 0; id < vocab; ++id) {
        const std::string token = t.id_to_token(id);
        const std::optional<TokenId> back = t.token_to_id(token);
        if (token.empty() || back != id) {
          if (++mismatched <= 5) FAIL_CHECK("id " << id << ": id_to_token gives \"" << token << "\", token_to_id of that gives "
                                                  << (back ? std::to_string(*back) : std::string("nothing")));
        }
      }
      CHECK(mismatched == 0);
      CHECK_FALSE(t.token_to_id("no token is spelled like this \x01\x02\x03").has_value());
    }
  }

  TEST_CASE("oracle: ids equal the oracle's, special tokens parsed and not; decode equals the oracle's") {
    size_t rows_with_oracle = 0;
    for (const TokenizerRow& row : kRows) {
      if (!row.oracle) continue;
      ++rows_with_oracle;
      INFO("row: " << std::string(row.label));
      Made made = make(row);
      const Tokenizer& t = *made.tokenizer;
      const auto corpus = lines_of("corpus.jsonl");
      for (auto [file, parse_special] : {std::pair{"oracle_special.jsonl", true}, {"oracle_plain.jsonl", false}}) {
        const auto want = lines_of(file);
        REQUIRE(want.size() == corpus.size());
        size_t differing = 0;
        for (size_t i = 0; i < corpus.size(); ++i) {
          const Ids got = encode(t, corpus[i].get<std::string>(), parse_special);
          if (got != want[i].get<Ids>() && ++differing <= 5)
            FAIL_CHECK(file << " line " << i + 1 << ": " << corpus[i].dump() << " -> " << nlohmann::json(got).dump()
                            << ", oracle " << want[i].dump());
        }
        CHECK(differing == 0);
      }
      const auto id_lists = lines_of("decode_ids.jsonl"), decoded = lines_of("oracle_decode.jsonl");
      REQUIRE(id_lists.size() == decoded.size());
      size_t differing = 0;
      for (size_t i = 0; i < id_lists.size(); ++i) {
        const std::string got = decode(t, id_lists[i].get<Ids>(), false);
        if (got != decoded[i].get<std::string>() && ++differing <= 5)
          FAIL_CHECK("decode of line " << i + 1 << " " << id_lists[i].dump() << ": " << nlohmann::json(got).dump()
                                       << ", oracle " << decoded[i].dump());
      }
      CHECK(differing == 0);
    }
    CHECK(rows_with_oracle >= 1);
  }
}

}  // namespace conformance
