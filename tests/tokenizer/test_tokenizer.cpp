// Unit tests of hf_tokenizer (on a small tokenizer.json built here, so they
// need no download) and of chat templates; plus, in the "real" suite, known
// ids and long inputs of the real Llama-3 tokenizer, which
// run_oracle_tests.sh runs after fetching it. The invariants every tokenizer
// meets on the generated corpus (round trip, streaming == decode) are
// tests/conformance's (conformance_tokenizer).
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "byte_level.hpp"
#include "chat_template.hpp"
#include "hf_tokenizer.hpp"
#include "plugin_loader.hpp"
#include "split_regex.hpp"
#include "utf8.hpp"

namespace fs = std::filesystem;
using hostrun::TokenId;
using hostrun::hf::HfTokenizer;
using nlohmann::json;

namespace {

constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A byte-level BPE tokenizer.json in Llama-3's shape: ids 0..255 are the
// bytes, then merged tokens in merge order, then added tokens.
struct Fixture {
  json root;
  std::vector<std::string> merged;  // byte strings of merged tokens, by id - 256

  Fixture() {
    const auto& alphabet = hostrun::hf::ByteLevelAlphabet::get();
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[alphabet.to_text(std::string(1, char(b)))] = b;
    json merges = json::array();
    // "ab" before "bc": in "abc" the lower rank wins; "aa" shows leftmost-first
    // on ties; " hello" is a whole word reached through several merges.
    for (auto [l, r] : std::vector<std::pair<std::string, std::string>>{
             {"a", "b"}, {"b", "c"}, {"a", "a"}, {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"},
             {" ", "hello"}, {"x", "y"}, {"aa", "aa"}}) {
      std::string joined = l + r;
      if (!vocab.contains(alphabet.to_text(joined))) {
        vocab[alphabet.to_text(joined)] = 256 + int(merged.size());
        merged.push_back(joined);
      }
      merges.push_back(alphabet.to_text(l) + " " + alphabet.to_text(r));
    }
    int next = 256 + int(merged.size());
    json added = json::array();
    for (auto [content, special] : std::vector<std::pair<std::string, bool>>{
             {"<|bos|>", true}, {"<|eot|>", true}, {"<|eot|>x", true}, {"[TOOL]", false}})
      added.push_back({{"id", next++}, {"content", content}, {"special", special}, {"lstrip", false},
                       {"rstrip", false}, {"single_word", false}, {"normalized", !special}});
    root = {{"version", "1.0"},
            {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               json::array({{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Pattern}}}, {"behavior", "Isolated"},
                             {"invert", false}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
            {"post_processor", {{"type", "ByteLevel"}}},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}}}};
  }
  TokenId id(const std::string& bytes) const {
    if (bytes.size() == 1) return static_cast<unsigned char>(bytes[0]);
    for (size_t i = 0; i < merged.size(); ++i)
      if (merged[i] == bytes) return TokenId(256 + i);
    FAIL("no fixture token " << bytes);
    return -1;
  }
  TokenId added(const std::string& content) const {
    for (const auto& t : root["added_tokens"])
      if (t["content"] == content) return t["id"].get<TokenId>();
    return -1;
  }
  std::unique_ptr<HfTokenizer> load(const std::string& config = {}) const {
    auto made = HfTokenizer::load_from_text(root.dump(), "fixture/tokenizer.json", config, "fixture/tokenizer_config.json");
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    return std::move(made.value());
  }
};

std::vector<TokenId> encode(const HfTokenizer& t, std::string_view text, bool parse_special = true,
                            std::optional<bool> add = std::nullopt) {
  std::vector<TokenId> ids;
  auto status = t.encode(text, add, parse_special, ids);
  REQUIRE_MESSAGE(status.is_ok(), status.message());
  return ids;
}

std::string decode(const HfTokenizer& t, const std::vector<TokenId>& ids, bool skip = false) {
  std::string text;
  auto status = t.decode(ids, skip, text);
  REQUIRE_MESSAGE(status.is_ok(), status.message());
  return text;
}

std::vector<std::string> split(std::string_view text) {
  auto pattern = hostrun::hf::translate_oniguruma_pattern(kLlama3Pattern);
  REQUIRE(pattern.has_value());
  auto regex = hostrun::hf::SplitRegex::compile(*pattern, "test");
  REQUIRE(regex.has_value());
  std::vector<std::string> pieces;
  REQUIRE((*regex)->split(text, [&](std::string_view p) { pieces.emplace_back(p); }).is_ok());
  return pieces;
}

std::string load_error(const std::string& text, const std::string& config = {}) {
  auto made = HfTokenizer::load_from_text(text, "dir/tokenizer.json", config, "dir/tokenizer_config.json");
  REQUIRE_FALSE(made.has_value());
  return made.status().message();
}

using Ids = std::vector<TokenId>;

}  // namespace

TEST_SUITE("fixture") {
  TEST_CASE("BPE merges by rank, leftmost first on a tie") {
    Fixture f;
    auto t = f.load();
    CHECK(encode(*t, "abc") == Ids{f.id("ab"), 'c'});  // ab (rank 0) beats bc (rank 1)
    CHECK(encode(*t, "bc") == Ids{f.id("bc")});
    CHECK(encode(*t, "aaa") == Ids{f.id("aa"), 'a'});   // leftmost pair merges first
    CHECK(encode(*t, "aaaaa") == Ids{f.id("aaaa"), 'a'});
    CHECK(encode(*t, " hello") == Ids{f.id(" hello")});
    CHECK(encode(*t, "hello hello") == Ids{f.id("hello"), f.id(" hello")});
    CHECK(encode(*t, "").empty());
  }

  TEST_CASE("added tokens: leftmost-longest, special parsing on and off") {
    Fixture f;
    auto t = f.load();
    CHECK(encode(*t, "ab<|eot|>ab") == Ids{f.id("ab"), f.added("<|eot|>"), f.id("ab")});
    CHECK(encode(*t, "<|eot|>xy") == Ids{f.added("<|eot|>x"), 'y'});  // the longer token wins
    Ids plain = encode(*t, "<|eot|>", false);
    CHECK(plain.size() > 1);
    CHECK(std::find(plain.begin(), plain.end(), f.added("<|eot|>")) == plain.end());
    CHECK(decode(*t, plain) == "<|eot|>");
    // A non-special added token is matched even when special parsing is off, as in HF.
    CHECK(encode(*t, "[TOOL]", false) == Ids{f.added("[TOOL]")});
    CHECK(t->is_special(f.added("<|eot|>")));
    CHECK_FALSE(t->is_special(f.added("[TOOL]")));
  }

  TEST_CASE("lstrip and rstrip eat the whitespace beside an added token") {
    Fixture f;
    f.root["added_tokens"][1]["lstrip"] = true;
    f.root["added_tokens"][1]["rstrip"] = true;
    auto t = f.load();
    CHECK(encode(*t, "ab  <|eot|>\t ab") == Ids{f.id("ab"), f.added("<|eot|>"), f.id("ab")});
  }

  TEST_CASE("BOS follows the post-processor, then tokenizer_config.json, then the caller") {
    Fixture f;
    CHECK_FALSE(f.load()->adds_special_by_default());
    CHECK(encode(*f.load(), "ab") == Ids{f.id("ab")});
    f.root["post_processor"] = {
        {"type", "Sequence"},
        {"processors",
         json::array({{{"type", "ByteLevel"}},
                      {{"type", "TemplateProcessing"},
                       {"single", json::array({{{"SpecialToken", {{"id", "<|bos|>"}, {"type_id", 0}}}},
                                               {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                       {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {f.added("<|bos|>")}},
                                                         {"tokens", {"<|bos|>"}}}}}}}})}};
    auto t = f.load();
    CHECK(encode(*t, "ab") == Ids{f.added("<|bos|>"), f.id("ab")});
    CHECK(encode(*t, "ab", true, false) == Ids{f.id("ab")});
    auto off = f.load(R"({"bos_token": "<|bos|>", "add_bos_token": false})");
    CHECK(encode(*off, "ab") == Ids{f.id("ab")});
    CHECK(encode(*off, "ab", true, true).empty() == false);
    auto on = f.load(R"({"bos_token": {"content": "<|bos|>"}, "eos_token": "<|eot|>", "add_bos_token": true, "add_eos_token": true})");
    CHECK(encode(*on, "ab") == Ids{f.added("<|bos|>"), f.id("ab"), f.added("<|eot|>")});
    CHECK(on->special_tokens().bos == f.added("<|bos|>"));
    CHECK(on->special_tokens().eos == Ids{f.added("<|eot|>")});
  }

  TEST_CASE("ill-formed UTF-8 is repaired as HF receives it: one U+FFFD per maximal subpart") {
    Fixture f;
    auto t = f.load();
    const std::string fffd = "\xEF\xBF\xBD";
    // E2 82 is an unfinished 3-byte sequence (one subpart); FF is never valid; C0 80 is overlong (two).
    CHECK(decode(*t, encode(*t, "a\xE2\x82" "b\xFF" "c\xC0\x80")) == "a" + fffd + "b" + fffd + "c" + fffd + fffd);
    CHECK(decode(*t, encode(*t, "\xED\xA0\x80")) == fffd + fffd + fffd);  // a UTF-16 surrogate
    CHECK(encode(*t, "x\xF0\x9F\x98") == encode(*t, "x" + fffd));  // cut 4-byte sequence at the end
  }

  TEST_CASE("decode: bytes joined then repaired; unknown ids are errors") {
    Fixture f;
    auto t = f.load();
    Ids euro = encode(*t, "\xE2\x82\xAC");  // three byte tokens
    REQUIRE(euro.size() == 3);
    CHECK(decode(*t, euro) == "\xE2\x82\xAC");
    CHECK(decode(*t, {euro[0], euro[1]}) == "\xEF\xBF\xBD");
    CHECK(decode(*t, {euro[0], f.added("<|eot|>"), euro[2]}) == "\xEF\xBF\xBD<|eot|>\xEF\xBF\xBD");
    // Skipping the special token joins the bytes around it again, as HF does.
    CHECK(decode(*t, {euro[0], euro[1], f.added("<|eot|>"), euro[2]}, true) == "\xE2\x82\xAC");
    std::string text;
    auto bad = t->decode(Ids{1, 99999}, false, text);
    CHECK(bad.code() == hostrun::ErrorCode::invalid_argument);
    CHECK(bad.message().find("99999") != std::string::npos);
  }

  TEST_CASE("lossy UTF-8 streaming equals lossy UTF-8 of the whole, for any cut") {
    std::mt19937 rng(7);
    for (int round = 0; round < 2000; ++round) {
      std::string bytes;
      size_t n = rng() % 12;
      for (size_t i = 0; i < n; ++i)
        bytes.push_back(char(rng() % 3 == 0 ? rng() % 256 : "\xE2\x82\xAC\xF0\x9F\x98\x80" "a\xC3\xA9"[rng() % 10]));
      std::string whole;
      hostrun::hf::append_utf8_lossy(bytes, whole, false);
      std::string streamed, pending;
      for (char c : bytes) {
        pending += c;
        size_t held = hostrun::hf::append_utf8_lossy(pending, streamed, true);
        pending.erase(0, pending.size() - held);
        CHECK(held < 4);
      }
      hostrun::hf::append_utf8_lossy(pending, streamed, false);
      REQUIRE(streamed == whole);
      CHECK(hostrun::hf::utf8_valid_prefix(whole) == whole.size());
    }
  }

  TEST_CASE("\\s means Unicode White_Space, as in Oniguruma (not JavaScript's \\s)") {
    // U+0085 is White_Space: it does not join the punctuation run after it.
    CHECK(split("a\xC2\x85!") == std::vector<std::string>{"a", "\xC2\x85", "!"});
    // U+FEFF is not White_Space: it joins the punctuation run.
    CHECK(split("a\xEF\xBB\xBF!") == std::vector<std::string>{"a", "\xEF\xBB\xBF!"});
    CHECK(split("Hello  world\r\n\r\n  x") ==
          std::vector<std::string>{"Hello", " ", " world", "\r\n\r\n", " ", " x"});
    CHECK(split("I'M 1234 ok") == std::vector<std::string>{"I", "'M", " ", "123", "4", " ok"});
    // (?i) folds Unicode too: U+017F (long s) matches 's' as Oniguruma's does.
    CHECK(split("it'\xC5\xBF") == std::vector<std::string>{"it", "'\xC5\xBF"});
  }

  TEST_CASE("pattern translation refuses what it cannot keep exact") {
    CHECK(hostrun::hf::translate_oniguruma_pattern(R"([^\S])").status().code() == hostrun::ErrorCode::unsupported);
    CHECK(hostrun::hf::translate_oniguruma_pattern(R"([a[b]])").status().code() == hostrun::ErrorCode::unsupported);
    CHECK(hostrun::hf::translate_oniguruma_pattern(R"(\s\S[\s])").has_value());
  }

  TEST_CASE("malformed or truncated tokenizer.json: the error names the file and what is wrong") {
    Fixture f;
    std::string text = f.root.dump();
    std::string truncated = load_error(text.substr(0, text.size() / 2));
    CHECK(truncated.find("dir/tokenizer.json") != std::string::npos);
    CHECK(truncated.find("truncated") != std::string::npos);
    CHECK(load_error("").find("dir/tokenizer.json: (top level): the file is empty") != std::string::npos);
    CHECK(load_error("{\"model\": 3,}").find("invalid JSON at line 1") != std::string::npos);
    CHECK(load_error("[]").find("expected an object, found array") != std::string::npos);

    json bad = f.root;
    bad["model"]["merges"][3] = "Ġzz qq";
    CHECK(load_error(bad.dump()).find("dir/tokenizer.json: model.merges[3]: 'Ġzz' is not in model.vocab") != std::string::npos);
    bad = f.root;
    bad["model"]["merges"][2] = "abc";
    CHECK(load_error(bad.dump()).find("model.merges[2]: 'abc' is not two tokens") != std::string::npos);
    bad = f.root;
    bad["model"]["vocab"].erase("Ġ");
    CHECK(load_error(bad.dump()).find("has no token for byte 0x20") != std::string::npos);
    bad = f.root;
    bad["model"]["vocab"]["a"] = "ten";
    CHECK(load_error(bad.dump()).find("model.vocab[\"a\"]: expected a token id (an integer), found string") != std::string::npos);
    bad = f.root;
    bad["model"].erase("vocab");
    CHECK(load_error(bad.dump()).find("dir/tokenizer.json: model: missing key 'vocab'") != std::string::npos);
    bad = f.root;
    bad["normalizer"] = {{"type", "NFC"}};
    CHECK(load_error(bad.dump()).find("normalizer type 'NFC' is not supported") != std::string::npos);
    bad = f.root;
    bad["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
    CHECK(load_error(bad.dump()).find("PCRE2 cannot compile the pattern") != std::string::npos);
    bad = f.root;
    bad["added_tokens"][0]["id"] = 5;
    CHECK(load_error(bad.dump()).find("added_tokens[0]") != std::string::npos);
    CHECK(load_error(f.root.dump(), R"({"bos_token": "<nope>"})").find("dir/tokenizer_config.json: bos_token: '<nope>' is not a token") != std::string::npos);
  }

  TEST_CASE("a missing file or folder is named") {
    auto made = HfTokenizer::load("/nonexistent/model");
    REQUIRE_FALSE(made.has_value());
    CHECK(made.status().code() == hostrun::ErrorCode::not_found);
    CHECK(made.status().message().find("/nonexistent/model") != std::string::npos);
    fs::path dir = fs::temp_directory_path() / "hostrun-test-empty-model";
    fs::create_directories(dir);
    auto empty = HfTokenizer::load(dir);
    REQUIRE_FALSE(empty.has_value());
    CHECK(empty.status().message().find("has no tokenizer.json") != std::string::npos);
    fs::remove_all(dir);
  }

  TEST_CASE("the plugin loads through the registry and streams as it decodes") {
    Fixture f;
    fs::path dir = fs::temp_directory_path() / "hostrun-test-fixture-model";
    fs::create_directories(dir);
    std::ofstream(dir / "tokenizer.json") << f.root.dump();
    std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<|bos|>", "eos_token": "<|eot|>", "add_bos_token": true})";
    std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [)" << f.added("<|eot|>x") << "]}";
    hostrun::core::PluginRegistry registry;
    registry.scan({HOSTRUN_PLUGIN_BUILD_DIR});
    hostrun::Settings settings;
    settings.set("file", dir.string());
    auto made = registry.create<hostrun::Tokenizer>("hf_tokenizer", settings, nullptr);
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    const hostrun::Tokenizer& t = **made;
    std::vector<TokenId> ids;
    REQUIRE(t.encode("ab <|eot|>\xE2\x82\xAC", {}, ids).is_ok());
    CHECK(ids.front() == f.added("<|bos|>"));
    CHECK(ids[ids.size() - 4] != f.added("<|eot|>"));  // parse_special defaults to false
    CHECK(t.special_tokens().eos == Ids{f.added("<|eot|>"), f.added("<|eot|>x")});
    CHECK(t.token_to_id("<|eot|>") == f.added("<|eot|>"));
    CHECK(t.id_to_token(' ') == "Ġ");
    CHECK(t.vocab_size() == f.added("[TOOL]") + 1);
    std::string whole;
    REQUIRE(t.decode(ids, {}, whole).is_ok());
    auto stream = t.incremental_decoder({});
    REQUIRE(stream);
    std::string streamed;
    for (TokenId id : ids) {
      std::string piece;
      REQUIRE(stream->push(id, piece).is_ok());
      CHECK(hostrun::hf::utf8_valid_prefix(piece) == piece.size());
      streamed += piece;
    }
    REQUIRE(stream->finish(streamed).is_ok());
    CHECK(streamed == whole);
    std::string piece;
    CHECK(stream->push(-1, piece).code() == hostrun::ErrorCode::invalid_argument);

    std::ofstream(dir / "tokenizer.json") << "{\"model\": {";
    auto broken = registry.create<hostrun::Tokenizer>("hf_tokenizer", settings, nullptr);
    REQUIRE_FALSE(broken.has_value());
    CHECK(broken.status().message().find((dir / "tokenizer.json").string() + ": the JSON is truncated") != std::string::npos);
    fs::remove_all(dir);
  }
}

namespace {
std::string rendered(const hostrun::core::ChatTemplate& t, std::span<const hostrun::ChatMessage> messages) {
  auto text = hostrun::core::render_chat(t, messages);
  REQUIRE_MESSAGE(text.has_value(), text.status().message());
  return text.value();
}
}  // namespace

TEST_SUITE("chat") {
  using hostrun::ChatMessage;
  using hostrun::core::render_chat;

  TEST_CASE("llama3: BOS once, headers, trimmed content, generation prompt") {
    const auto* t = hostrun::core::find_builtin_chat_template("llama3");
    REQUIRE(t);
    std::vector<ChatMessage> messages{{"system", "Be brief. ", {}}, {"user", "\n Hi \t", {}}, {"assistant", "Hello!", {}},
                                      {"user", "Bye", {}}};
    CHECK(rendered(*t, messages) ==
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    // No messages: the Jinja loop writes nothing, so no BOS either.
    CHECK(rendered(*t, {}) == "<|start_header_id|>assistant<|end_header_id|>\n\n");
    CHECK(t->stop_tokens == std::vector<std::string>{"<|eot_id|>", "<|end_of_text|>"});
    auto tool = render_chat(*t, std::vector<ChatMessage>{{"tool", "x", {}}});
    CHECK(tool.status().message().find("role 'tool'") != std::string::npos);
    auto image = render_chat(*t, std::vector<ChatMessage>{{"user", "x", {{"image/png", {1, 2}}}}});
    CHECK(image.status().message().find("no image_prefix") != std::string::npos);
  }

  TEST_CASE("llava-llama3: the llama3 wire format with <image> before the user's text") {
    const auto* t = hostrun::core::find_builtin_chat_template("llava-llama3");
    REQUIRE(t);
    std::vector<ChatMessage> messages{{"user", "What is this?", {{"image/png", {1}}}}};
    CHECK(rendered(*t, messages) ==
          "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    auto segments = hostrun::core::render_chat_segments(*t, messages);
    REQUIRE(segments->size() == 3);
    CHECK((*segments)[1].text == "What is this?");
    CHECK_FALSE((*segments)[1].from_template);
  }

  TEST_CASE("--chat-template FILE: a [chat_template] table on a base, checked like a manifest") {
    fs::path file = fs::temp_directory_path() / "hostrun-test-template.toml";
    std::ofstream(file) << "[chat_template]\nbase = \"llama3\"\ndefault_system = \"You are terse.\"\n"
                           "stop_strings = [\"\\nUser:\"]\n";
    auto t = hostrun::core::resolve_chat_template(file.string());
    REQUIRE_MESSAGE(t.has_value(), t.status().message());
    CHECK(t->name == "llama3");
    CHECK(rendered(*t, std::vector<ChatMessage>{{"user", "Hi", {}}}) ==
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    std::ofstream(file) << "[chat_template]\nbase = \"llama3\"\nstop_string = [\"x\"]\n";
    auto typo = hostrun::core::resolve_chat_template(file.string());
    REQUIRE_FALSE(typo.has_value());
    CHECK(typo.status().message().find(file.string() + ":3:1: unknown key 'stop_string' in [chat_template]") != std::string::npos);
    CHECK(typo.status().message().find("did you mean 'stop_strings'?") != std::string::npos);
    std::ofstream(file) << "[chat_template]\nbase = \"llama3\"\nbos_rule = \"sometimes\"\n";
    CHECK(hostrun::core::resolve_chat_template(file.string()).status().message().find("expected none, first_message or always") != std::string::npos);
    std::ofstream(file) << "[chat_template]\nbase = \"vicuna\"\n";
    CHECK(hostrun::core::resolve_chat_template(file.string()).status().message().find("not a built-in") != std::string::npos);
    std::ofstream(file) << "[chat_template]\nuser_prefix = \"U: \"\nuser_suffix = \"\\n\"\nassistant_prefix = \"A: \"\n"
                           "generation_prompt = \"A:\"\n[engine]\n";
    CHECK(hostrun::core::resolve_chat_template(file.string()).status().message().find("unexpected table [engine]") != std::string::npos);
    fs::remove(file);
    CHECK(hostrun::core::resolve_chat_template("no-such-template").status().code() == hostrun::ErrorCode::not_found);
    CHECK(hostrun::core::chat_template_schema().name == "chat_template");
  }
}

// ---- The real Llama-3 tokenizer: run_oracle_tests.sh sets HOSTRUN_TOKENIZER_DIR. ----

namespace {

std::string required_env(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value)
    FAIL(name << " is not set: run tests/tokenizer/run_oracle_tests.sh (it fetches the tokenizer with "
              "scripts/fetch-tokenizer.sh and sets it)");
  return value;
}

std::unique_ptr<HfTokenizer> real_tokenizer() {
  auto made = HfTokenizer::load(required_env("HOSTRUN_TOKENIZER_DIR"));
  REQUIRE_MESSAGE(made.has_value(), made.status().message());
  return std::move(made.value());
}

}  // namespace

TEST_SUITE("real") {
  TEST_CASE("Llama-3: known ids, special tokens, no BOS by default for this tokenizer.json") {
    auto t = real_tokenizer();
    CHECK(encode(*t, "Hello world") == Ids{9906, 1917});
    CHECK(encode(*t, "<|begin_of_text|>Hi<|eot_id|>") == Ids{128000, 13347, 128009});
    CHECK(t->vocab_size() == 128256);
    CHECK(t->special_tokens().bos == 128000);
    CHECK(t->token_to_id("<|eot_id|>") == 128009);
    CHECK(t->is_special(128009));
    // This package's tokenizer.json has a ByteLevel post-processor and its
    // config no add_bos_token: HF adds no BOS, so neither do we.
    CHECK_FALSE(t->adds_special_by_default());
    CHECK(encode(*t, "Hi", true, true) == Ids{128000, 13347});
  }

  // Their speed (no quadratic blow-up) is measured by `hostrun bench tokenizer`
  // and recorded in docs/benchmarks.md; a test asserts only what they encode to.
  TEST_CASE("1 MB of one letter, of spaces, of newlines and of digits round-trip") {
    auto t = real_tokenizer();
    for (char c : {'a', ' ', '\n', '7'}) {
      std::string text(1000000, c);
      auto start = std::chrono::steady_clock::now();
      Ids ids = encode(*t, text);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      MESSAGE("1 MB of byte " << int(c) << ": " << seconds << " s, " << ids.size() << " ids");
      CHECK(decode(*t, ids) == text);
    }
  }
}
