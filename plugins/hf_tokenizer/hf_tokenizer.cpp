#include "hf_tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <hostrun/json_bounds.hpp>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "byte_level.hpp"
#include "utf8.hpp"

namespace hostrun::hf {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The Llama-3 Split pattern; GPT-2's ByteLevel(use_regex = true) pattern.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The largest tokenizer file read: Llama-3's tokenizer.json is 9 MB, the
// largest vocabularies in use a few times that.
constexpr uintmax_t kMaxTokenizerFileBytes = uintmax_t(256) << 20;

// A regular file (links followed) of bounded size, read whole: a FIFO or
// /dev/zero named as a tokenizer would otherwise block or grow without end.
Result<std::string> read_file(const fs::path& file, const char* what) {
  std::error_code ec;
  const fs::file_status status = fs::status(file, ec);
  if (!fs::exists(status)) return Status(ErrorCode::not_found, fmt::format("{}: the {} does not exist", file.string(), what));
  if (!fs::is_regular_file(status))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}: the {} is not a regular file (a device, FIFO or folder)", file.string(), what));
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) return Status(ErrorCode::io_error, fmt::format("{}: cannot read the {}'s size: {}", file.string(), what, ec.message()));
  if (size > kMaxTokenizerFileBytes)
    return Status(ErrorCode::invalid_argument, fmt::format("{}: the {} has {} bytes; at most {} are read", file.string(),
                                                           what, size, kMaxTokenizerFileBytes));
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status(ErrorCode::not_found, fmt::format("{}: cannot open the {}", file.string(), what));
  std::string text(size_t(size), '\0');
  in.read(text.data(), std::streamsize(size));
  if (in.gcount() != std::streamsize(size))
    return Status(ErrorCode::io_error, fmt::format("{}: read {} of the {}'s {} bytes", file.string(), in.gcount(), what, size));
  return text;
}

// "line L, column C" of a byte offset, for JSON syntax errors.
std::string where_in_text(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1, column = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') ++line, column = 1;
    else ++column;
  }
  return fmt::format("line {}, column {}", line, column);
}

// Depth and memory are checked before nlohmann builds anything (json_bounds.hpp):
// a hostile tokenizer.json is refused, not parsed into gigabytes.
Result<json> parse_json(std::string_view text, const std::string& name) {
  if (Status bounds = check_json_bounds(text, JsonLimits{}, name); !bounds)
    return Status(ErrorCode::corrupt_data, bounds.message());
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // nlohmann's message repeats the position in its own words; keep its reason.
    std::string reason = e.what();
    if (size_t colon = reason.find("syntax error"); colon != std::string::npos) reason = reason.substr(colon);
    if (reason.find("end of input") != std::string::npos)
      return Status(ErrorCode::corrupt_data,
                    fmt::format("{}: the JSON is truncated: it ends at {} (byte {}) before the document is complete "
                                "({})", name, where_in_text(text, text.size()), text.size(), reason));
    size_t at = e.byte == 0 ? 0 : e.byte - 1;  // nlohmann counts bytes from 1
    return Status(ErrorCode::corrupt_data, fmt::format("{}: invalid JSON at {} (byte {} of {}): {}", name,
                                                       where_in_text(text, at), at, text.size(), reason));
  } catch (const json::exception& e) {
    // e.g. a number too large for a double: valid JSON syntax, but unreadable.
    return Status(ErrorCode::corrupt_data, fmt::format("{}: unreadable JSON: {}", name, e.what()));
  }
}

const char* json_type(const json& j) { return j.type_name(); }

// Reading a JSON document with errors that name the file and the key path.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& problem, ErrorCode code = ErrorCode::corrupt_data) const {
    throw Error(code, fmt::format("{}: {}: {}", file_, path, problem));
  }
  const json& member(const json& object, const std::string& path, const char* key) const {
    if (!object.is_object()) fail(path, fmt::format("expected an object, found {}", json_type(object)));
    auto it = object.find(key);
    if (it == object.end()) fail(path, fmt::format("missing key '{}'", key));
    return *it;
  }
  const json* optional_member(const json& object, const char* key) const {
    auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  std::string string(const json& value, const std::string& path) const {
    if (!value.is_string()) fail(path, fmt::format("expected a string, found {}", json_type(value)));
    return value.get<std::string>();
  }
  bool boolean(const json& object, const std::string& path, const char* key, bool fallback) const {
    const json* v = optional_member(object, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(path + "." + key, fmt::format("expected true or false, found {}", json_type(*v)));
    return v->get<bool>();
  }
  TokenId id(const json& value, const std::string& path) const {
    if (!value.is_number_integer() && !value.is_number_unsigned())
      fail(path, fmt::format("expected a token id (an integer), found {}", json_type(value)));
    auto v = value.get<int64_t>();
    if (v < 0 || v >= std::numeric_limits<TokenId>::max())
      fail(path, fmt::format("token id {} is outside 0..{}", v, std::numeric_limits<TokenId>::max() - 1));
    return TokenId(v);
  }
  const std::string& file() const noexcept { return file_; }

 private:
  std::string file_;
};

// tokenizer_config.json names tokens either as a string or as an AddedToken object.
std::optional<std::string> config_token(const json& config, const char* key, const Reader& reader) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content")) return reader.string((*it)["content"], std::string(key) + ".content");
  reader.fail(key, fmt::format("expected a token string or an object with 'content', found {}", json_type(*it)));
}

}  // namespace

Result<TokenizerFiles> TokenizerFiles::locate(const fs::path& path) {
  std::error_code ec;
  TokenizerFiles files;
  fs::path folder;
  if (fs::is_directory(path, ec)) {
    folder = path;
    files.tokenizer_json = path / "tokenizer.json";
    if (!fs::exists(files.tokenizer_json, ec))
      return Status(ErrorCode::not_found,
                    fmt::format("{}: the folder has no tokenizer.json (expected a Hugging Face model folder or the "
                                "path of a tokenizer.json)", path.string()));
  } else if (fs::exists(path, ec)) {
    files.tokenizer_json = path;
    folder = path.parent_path();
  } else {
    return Status(ErrorCode::not_found, fmt::format("{}: no such file or folder (expected a tokenizer.json or a model "
                                                    "folder holding one)", path.string()));
  }
  if (folder.empty()) folder = ".";
  if (fs::path p = folder / "tokenizer_config.json"; fs::is_regular_file(p, ec)) files.tokenizer_config = p;
  if (fs::path p = folder / "generation_config.json"; fs::is_regular_file(p, ec)) files.generation_config = p;
  return files;
}

// Fills an HfTokenizer from parsed JSON, throwing Error with file and key path.
class Loader {
 public:
  Loader(HfTokenizer& out, const Reader& reader) : out_(out), r_(reader) {}

  void load(const json& root) {
    if (!root.is_object()) r_.fail("(top level)", fmt::format("expected an object, found {}", json_type(root)));
    check_normalizer(root);
    load_pre_tokenizer(root);
    load_model(r_.member(root, "(top level)", "model"));
    load_added_tokens(root);
    check_decoder(root);
    load_post_processor(root);
    build_id_tables();
  }

  void apply_tokenizer_config(const json& config, const Reader& reader) {
    if (!config.is_object()) reader.fail("(top level)", fmt::format("expected an object, found {}", json_type(config)));
    auto id_of = [&](const std::string& token, const char* key) -> TokenId {
      auto it = out_.text_to_id_.find(token);
      if (it == out_.text_to_id_.end()) reader.fail(key, fmt::format("'{}' is not a token of {}", token, r_.file()));
      return it->second;
    };
    std::optional<TokenId> bos, eos;
    if (auto t = config_token(config, "bos_token", reader)) out_.special_ids_.bos = bos = id_of(*t, "bos_token");
    if (auto t = config_token(config, "eos_token", reader)) out_.special_ids_.eos.push_back(*(eos = id_of(*t, "eos_token")));
    if (auto t = config_token(config, "pad_token", reader)) out_.special_ids_.pad = id_of(*t, "pad_token");
    // transformers' Llama tokenizers rebuild the post-processor from these two
    // flags when the config states them; so do we. Otherwise the
    // tokenizer.json post-processor stands.
    const json* add_bos = reader.optional_member(config, "add_bos_token");
    const json* add_eos = reader.optional_member(config, "add_eos_token");
    if (add_bos || add_eos) {
      bool want_bos = reader.boolean(config, "(top level)", "add_bos_token", false);
      bool want_eos = reader.boolean(config, "(top level)", "add_eos_token", false);
      if (want_bos && !bos) reader.fail("add_bos_token", "is true but the config names no bos_token");
      if (want_eos && !eos) reader.fail("add_eos_token", "is true but the config names no eos_token");
      out_.prefix_ids_.clear();
      out_.suffix_ids_.clear();
      if (want_bos) out_.prefix_ids_.push_back(*bos);
      if (want_eos) out_.suffix_ids_.push_back(*eos);
      out_.add_special_default_ = want_bos || want_eos;
    }
  }

  // generation_config.json's eos_token_id (an id or a list) ends generations too.
  void apply_generation_config(const json& config, const Reader& reader) {
    if (!config.is_object()) reader.fail("(top level)", fmt::format("expected an object, found {}", json_type(config)));
    const json* eos = reader.optional_member(config, "eos_token_id");
    if (!eos) return;
    auto add = [&](const json& v, const std::string& path) {
      TokenId id = reader.id(v, path);
      if (!out_.token_bytes(id)) reader.fail(path, fmt::format("token id {} is not in {}", id, r_.file()));
      auto& list = out_.special_ids_.eos;
      if (std::find(list.begin(), list.end(), id) == list.end()) list.push_back(id);
    };
    if (eos->is_array()) {
      for (size_t i = 0; i < eos->size(); ++i) add((*eos)[i], fmt::format("eos_token_id[{}]", i));
    } else {
      add(*eos, "eos_token_id");
    }
  }

 private:
  void check_normalizer(const json& root) {
    const json* normalizer = r_.optional_member(root, "normalizer");
    if (!normalizer) return;
    std::string type = r_.string(r_.member(*normalizer, "normalizer", "type"), "normalizer.type");
    if (type == "Sequence" && normalizer->contains("normalizers") && (*normalizer)["normalizers"].is_array() &&
        (*normalizer)["normalizers"].empty())
      return;
    r_.fail("normalizer", fmt::format("normalizer type '{}' is not supported (hf_tokenizer implements byte-level "
                                      "BPE without a normalizer, as Llama-3 and GPT-2 use it)", type),
            ErrorCode::unsupported);
  }

  void add_split(const std::string& onig_pattern, const std::string& path) {
    auto translated = translate_oniguruma_pattern(onig_pattern);
    if (!translated) r_.fail(path, translated.status().message(), translated.status().code());
    auto compiled = SplitRegex::compile(*translated, fmt::format("{}: {}", r_.file(), path));
    if (!compiled) throw Error(compiled.status());
    out_.splits_.push_back(std::move(compiled.value()));
  }

  void load_pre_tokenizer(const json& root) {
    const json* pre = r_.optional_member(root, "pre_tokenizer");
    if (!pre) r_.fail("pre_tokenizer", "is missing; byte-level BPE needs a ByteLevel pre-tokenizer");
    std::vector<std::pair<const json*, std::string>> steps;
    std::string type = r_.string(r_.member(*pre, "pre_tokenizer", "type"), "pre_tokenizer.type");
    if (type == "Sequence") {
      const json& list = r_.member(*pre, "pre_tokenizer", "pretokenizers");
      if (!list.is_array()) r_.fail("pre_tokenizer.pretokenizers", fmt::format("expected an array, found {}", json_type(list)));
      for (size_t i = 0; i < list.size(); ++i) steps.emplace_back(&list[i], fmt::format("pre_tokenizer.pretokenizers[{}]", i));
    } else {
      steps.emplace_back(pre, "pre_tokenizer");
    }
    bool byte_level = false;
    for (const auto& [step, path] : steps) {
      std::string step_type = r_.string(r_.member(*step, path, "type"), path + ".type");
      if (byte_level)
        r_.fail(path, fmt::format("a '{}' pre-tokenizer after ByteLevel is not supported", step_type), ErrorCode::unsupported);
      if (step_type == "Split") {
        const json& pattern = r_.member(*step, path, "pattern");
        std::string behavior = r_.string(r_.member(*step, path, "behavior"), path + ".behavior");
        if (behavior != "Isolated")
          r_.fail(path + ".behavior", fmt::format("'{}' is not supported (only Isolated)", behavior), ErrorCode::unsupported);
        if (r_.boolean(*step, path, "invert", false))
          r_.fail(path + ".invert", "true is not supported", ErrorCode::unsupported);
        if (pattern.is_object() && pattern.contains("Regex")) {
          add_split(r_.string(pattern["Regex"], path + ".pattern.Regex"), path + ".pattern.Regex");
        } else if (pattern.is_object() && pattern.contains("String")) {
          std::string literal = r_.string(pattern["String"], path + ".pattern.String");
          if (literal.empty()) r_.fail(path + ".pattern.String", "is empty");
          std::string quoted = "\\Q" + literal + "\\E";
          if (literal.find("\\E") != std::string::npos)
            r_.fail(path + ".pattern.String", "contains \\E, which cannot be quoted", ErrorCode::unsupported);
          auto compiled = SplitRegex::compile(quoted, fmt::format("{}: {}", r_.file(), path));
          if (!compiled) throw Error(compiled.status());
          out_.splits_.push_back(std::move(compiled.value()));
        } else {
          r_.fail(path + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
        }
      } else if (step_type == "ByteLevel") {
        byte_level = true;
        if (r_.boolean(*step, path, "add_prefix_space", false))
          r_.fail(path + ".add_prefix_space", "true is not supported", ErrorCode::unsupported);
        if (r_.boolean(*step, path, "use_regex", true)) add_split(std::string(kGpt2Pattern), path + " (GPT-2 regex)");
      } else {
        r_.fail(path, fmt::format("pre-tokenizer type '{}' is not supported (Split, ByteLevel)", step_type),
                ErrorCode::unsupported);
      }
    }
    if (!byte_level) r_.fail("pre_tokenizer", "has no ByteLevel step; only byte-level BPE is supported", ErrorCode::unsupported);
  }

  void load_model(const json& model) {
    if (!model.is_object()) r_.fail("model", fmt::format("expected an object, found {}", json_type(model)));
    if (const json* type = r_.optional_member(model, "type"); type && r_.string(*type, "model.type") != "BPE")
      r_.fail("model.type", fmt::format("'{}' is not supported (only BPE)", type->get<std::string>()), ErrorCode::unsupported);
    if (const json* dropout = r_.optional_member(model, "dropout"); dropout && !(dropout->is_number() && dropout->get<double>() == 0.0))
      r_.fail("model.dropout", "BPE dropout is not supported (it makes encoding random)", ErrorCode::unsupported);
    if (r_.boolean(model, "model", "byte_fallback", false))
      r_.fail("model.byte_fallback", "true is not supported", ErrorCode::unsupported);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (const json* v = r_.optional_member(model, key); v && !(v->is_string() && v->get<std::string>().empty()))
        r_.fail(std::string("model.") + key, "is not supported with byte-level BPE", ErrorCode::unsupported);
    out_.bpe_.ignore_merges = r_.boolean(model, "model", "ignore_merges", false);

    const auto& alphabet = ByteLevelAlphabet::get();
    const json& vocab = r_.member(model, "model", "vocab");
    if (!vocab.is_object()) r_.fail("model.vocab", fmt::format("expected an object of token: id, found {}", json_type(vocab)));
    out_.bpe_.bytes_to_id.reserve(vocab.size());
    out_.text_to_id_.reserve(vocab.size() + 512);
    model_tokens_.reserve(vocab.size());
    TokenId max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      TokenId id = r_.id(it.value(), "model.vocab[\"" + it.key() + "\"]");
      max_id = std::max(max_id, id);
      model_tokens_.emplace_back(id, it.key());
      if (!out_.text_to_id_.emplace(it.key(), id).second)
        r_.fail("model.vocab", fmt::format("token '{}' appears twice", it.key()));
      // A token with a character outside the byte-level alphabet can never be
      // produced by encoding; it still decodes (to its own UTF-8, as HF does).
      if (auto bytes = alphabet.to_bytes(it.key())) out_.bpe_.bytes_to_id.emplace(std::move(*bytes), id);
    }
    if (max_id >= TokenId(vocab.size() * 4 + 1024))
      r_.fail("model.vocab", fmt::format("ids run up to {} for {} tokens; the vocabulary looks corrupt", max_id, vocab.size()));
    for (int b = 0; b < 256; ++b) {
      auto it = out_.bpe_.bytes_to_id.find(std::string(1, char(b)));
      if (it == out_.bpe_.bytes_to_id.end())
        r_.fail("model.vocab", fmt::format("has no token for byte 0x{:02X} ('{}'); byte-level BPE needs all 256",
                                           b, alphabet.to_text(std::string(1, char(b)))));
      out_.bpe_.byte_ids[b] = it->second;
    }

    const json& merges = r_.member(model, "model", "merges");
    if (!merges.is_array()) r_.fail("model.merges", fmt::format("expected an array, found {}", json_type(merges)));
    out_.bpe_.merges.reserve(merges.size());
    auto vocab_id = [&](const std::string& text, const std::string& path) {
      auto it = out_.text_to_id_.find(text);
      if (it == out_.text_to_id_.end()) r_.fail(path, fmt::format("'{}' is not in model.vocab", text));
      return it->second;
    };
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      std::string path = fmt::format("model.merges[{}]", i);
      std::string left, right;
      // Two spellings exist: "a b" (older files) and ["a", "b"] (tokenizers >= 0.20).
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          r_.fail(path, fmt::format("'{}' is not two tokens separated by one space", s));
        left = s.substr(0, space), right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2) {
        left = r_.string(m[0], path + "[0]"), right = r_.string(m[1], path + "[1]");
      } else {
        r_.fail(path, fmt::format("expected \"left right\" or [left, right], found {}", json_type(m)));
      }
      TokenId a = vocab_id(left, path), b = vocab_id(right, path);
      TokenId merged = vocab_id(left + right, path + " (merged)");
      if (i > size_t(std::numeric_limits<int32_t>::max())) r_.fail("model.merges", "too many merges");
      out_.bpe_.merges.insert(a, b, int32_t(i), merged);
    }
    max_id_ = max_id;
  }

  void load_added_tokens(const json& root) {
    const json* added = r_.optional_member(root, "added_tokens");
    if (!added) return;
    if (!added->is_array()) r_.fail("added_tokens", fmt::format("expected an array, found {}", json_type(*added)));
    for (size_t i = 0; i < added->size(); ++i) {
      const json& t = (*added)[i];
      std::string path = fmt::format("added_tokens[{}]", i);
      AddedToken token;
      token.id = r_.id(r_.member(t, path, "id"), path + ".id");
      token.content = r_.string(r_.member(t, path, "content"), path + ".content");
      if (token.content.empty()) r_.fail(path + ".content", "is empty");
      if (utf8_valid_prefix(token.content) != token.content.size()) r_.fail(path + ".content", "is not valid UTF-8");
      token.special = r_.boolean(t, path, "special", false);
      token.lstrip = r_.boolean(t, path, "lstrip", false);
      token.rstrip = r_.boolean(t, path, "rstrip", false);
      token.single_word = r_.boolean(t, path, "single_word", false);
      auto known = out_.text_to_id_.find(token.content);
      if (known != out_.text_to_id_.end() && known->second != token.id)
        r_.fail(path, fmt::format("'{}' has id {} here but {} in model.vocab", token.content, token.id, known->second));
      out_.text_to_id_[token.content] = token.id;
      max_id_ = std::max(max_id_, token.id);
      out_.added_.push_back(std::move(token));
    }
    for (size_t i = 0; i < out_.added_.size(); ++i) {
      out_.all_added_.add(out_.added_[i].content, int32_t(i));
      if (!out_.added_[i].special) out_.non_special_.add(out_.added_[i].content, int32_t(i));
    }
  }

  void check_decoder(const json& root) {
    const json* decoder = r_.optional_member(root, "decoder");
    if (!decoder) r_.fail("decoder", "is missing; byte-level BPE needs the ByteLevel decoder");
    std::string type = r_.string(r_.member(*decoder, "decoder", "type"), "decoder.type");
    if (type == "ByteLevel") return;
    r_.fail("decoder", fmt::format("decoder type '{}' is not supported (only ByteLevel)", type), ErrorCode::unsupported);
  }

  // TemplateProcessing's "single" template: special tokens around $A.
  void load_template(const json& processor, const std::string& path) {
    const json& single = r_.member(processor, path, "single");
    if (!single.is_array()) r_.fail(path + ".single", fmt::format("expected an array, found {}", json_type(single)));
    const json& specials = r_.member(processor, path, "special_tokens");
    bool after_sequence = false;
    std::vector<TokenId> prefix, suffix;
    for (size_t i = 0; i < single.size(); ++i) {
      std::string item_path = fmt::format("{}.single[{}]", path, i);
      const json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        if (after_sequence) r_.fail(item_path, "a second sequence in the single template", ErrorCode::unsupported);
        after_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken")) {
        std::string name = r_.string(r_.member(item["SpecialToken"], item_path + ".SpecialToken", "id"), item_path + ".SpecialToken.id");
        const json& entry = r_.member(specials, path + ".special_tokens", name.c_str());
        const json& ids = r_.member(entry, path + ".special_tokens." + name, "ids");
        if (!ids.is_array()) r_.fail(path + ".special_tokens." + name + ".ids", "expected an array");
        for (size_t k = 0; k < ids.size(); ++k)
          (after_sequence ? suffix : prefix).push_back(r_.id(ids[k], fmt::format("{}.special_tokens.{}.ids[{}]", path, name, k)));
      } else {
        r_.fail(item_path, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    out_.prefix_ids_ = std::move(prefix);
    out_.suffix_ids_ = std::move(suffix);
    out_.add_special_default_ = !out_.prefix_ids_.empty() || !out_.suffix_ids_.empty();
  }

  void load_post_processor(const json& root) {
    const json* processor = r_.optional_member(root, "post_processor");
    if (!processor) return;
    std::vector<std::pair<const json*, std::string>> steps;
    std::string type = r_.string(r_.member(*processor, "post_processor", "type"), "post_processor.type");
    if (type == "Sequence") {
      const json& list = r_.member(*processor, "post_processor", "processors");
      if (!list.is_array()) r_.fail("post_processor.processors", "expected an array");
      for (size_t i = 0; i < list.size(); ++i) steps.emplace_back(&list[i], fmt::format("post_processor.processors[{}]", i));
    } else {
      steps.emplace_back(processor, "post_processor");
    }
    for (const auto& [step, path] : steps) {
      std::string step_type = r_.string(r_.member(*step, path, "type"), path + ".type");
      if (step_type == "ByteLevel") continue;  // it only trims offsets, which we do not report
      if (step_type == "TemplateProcessing") {
        load_template(*step, path);
        continue;
      }
      r_.fail(path, fmt::format("post-processor type '{}' is not supported (ByteLevel, TemplateProcessing)", step_type),
              ErrorCode::unsupported);
    }
  }

  void build_id_tables() {
    const auto& alphabet = ByteLevelAlphabet::get();
    size_t count = size_t(max_id_ + 1);
    out_.id_bytes_.assign(count, {});
    out_.id_text_.assign(count, {});
    out_.id_known_.assign(count, false);
    out_.id_special_.assign(count, false);
    for (auto& [id, text] : model_tokens_) {
      if (out_.id_known_[size_t(id)])
        r_.fail("model.vocab", fmt::format("id {} is used by both '{}' and '{}'", id, out_.id_text_[size_t(id)], text));
      auto bytes = alphabet.to_bytes(text);
      out_.id_bytes_[size_t(id)] = bytes ? std::move(*bytes) : text;
      out_.id_text_[size_t(id)] = std::move(text);
      out_.id_known_[size_t(id)] = true;
    }
    model_tokens_.clear();
    // An added token decodes to its content as written (HF does not pass
    // special tokens through the byte-level decoder; for an ASCII token such
    // as <|eot_id|> both readings agree anyway).
    for (size_t i = 0; i < out_.added_.size(); ++i) {
      const AddedToken& t = out_.added_[i];
      if (out_.id_known_[size_t(t.id)] && out_.id_text_[size_t(t.id)] != t.content)
        r_.fail(fmt::format("added_tokens[{}]", i), fmt::format("id {} of '{}' is already the id of '{}'", t.id,
                                                                t.content, out_.id_text_[size_t(t.id)]));
      out_.id_bytes_[size_t(t.id)] = t.content;
      out_.id_text_[size_t(t.id)] = t.content;
      out_.id_known_[size_t(t.id)] = true;
      out_.id_special_[size_t(t.id)] = t.special;
    }
    for (TokenId id : out_.prefix_ids_)
      if (!out_.token_bytes(id)) r_.fail("post_processor", fmt::format("template token id {} is not in the vocabulary", id));
    for (TokenId id : out_.suffix_ids_)
      if (!out_.token_bytes(id)) r_.fail("post_processor", fmt::format("template token id {} is not in the vocabulary", id));
  }

  HfTokenizer& out_;
  const Reader& r_;
  std::vector<std::pair<TokenId, std::string>> model_tokens_;
  TokenId max_id_ = -1;
};

void HfTokenizer::Trie::add(std::string_view text, int32_t token_index) {
  if (nodes.empty()) {
    nodes.emplace_back();
    std::fill(std::begin(nodes[0].child), std::end(nodes[0].child), -1);
  }
  int32_t at = 0;
  for (char c : text) {
    auto b = static_cast<uint8_t>(c);
    if (nodes[size_t(at)].child[b] < 0) {
      nodes[size_t(at)].child[b] = int32_t(nodes.size());
      nodes.emplace_back();
      std::fill(std::begin(nodes.back().child), std::end(nodes.back().child), -1);
    }
    at = nodes[size_t(at)].child[b];
  }
  first_byte[static_cast<uint8_t>(text[0])] = true;
  // Two added tokens with the same content: the first one listed wins, as in HF.
  if (nodes[size_t(at)].token < 0) nodes[size_t(at)].token = token_index;
}

int32_t HfTokenizer::Trie::longest(std::string_view text, size_t pos, size_t& length) const {
  int32_t best = -1;
  int32_t at = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    at = nodes[size_t(at)].child[static_cast<uint8_t>(text[i])];
    if (at < 0) break;
    if (nodes[size_t(at)].token >= 0) best = nodes[size_t(at)].token, length = i + 1 - pos;
  }
  return best;
}

namespace {

// Unicode White_Space, as Rust's char::is_whitespace (HF's lstrip/rstrip).
size_t whitespace_at(std::string_view s, size_t pos) {
  auto b = static_cast<uint8_t>(s[pos]);
  if (b == ' ' || (b >= 0x09 && b <= 0x0D)) return 1;
  static constexpr std::string_view kWide[] = {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                               "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (auto w : kWide)
    if (s.substr(pos, w.size()) == w) return w.size();
  if (s.substr(pos, 2) == "\xE2\x80" && pos + 2 < s.size()) {
    auto c = static_cast<uint8_t>(s[pos + 2]);
    if (c >= 0x80 && c <= 0x8A) return 3;  // U+2000..U+200A
  }
  return 0;
}

size_t trailing_whitespace(std::string_view s) {
  // Walk forward (UTF-8 cannot be parsed backwards reliably for multi-byte
  // spaces without it) and remember where the last non-space ended.
  size_t end_of_content = 0;
  for (size_t i = 0; i < s.size();) {
    size_t w = whitespace_at(s, i);
    if (w) {
      i += w;
    } else {
      ++i;
      while (i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) ++i;
      end_of_content = i;
    }
  }
  return s.size() - end_of_content;
}

// The byte at pos + offset is a word character (see single_word above).
bool is_word_byte(std::string_view s, size_t pos, int offset) {
  if (offset < 0 && pos == 0) return false;
  size_t at = pos + size_t(offset);
  if (at >= s.size()) return false;
  auto b = static_cast<uint8_t>(s[at]);
  return b >= 0x80 || std::isalnum(b) || b == '_';
}

}  // namespace

void HfTokenizer::split_added(std::string_view text, bool parse_special, std::vector<Section>& sections) const {
  const Trie& trie = parse_special ? all_added_ : non_special_;
  if (trie.nodes.empty()) {
    sections.push_back({text, -1});
    return;
  }
  size_t plain_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (!trie.first_byte[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    int32_t index = trie.longest(text, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = added_[size_t(index)];
    // single_word: only a match that is a word of its own (ASCII word
    // characters are checked exactly; any non-ASCII neighbour counts as a word
    // character, which is stricter than HF's Unicode \w).
    if (token.single_word && (is_word_byte(text, pos, -1) || is_word_byte(text, pos + length, 0))) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + length;
    if (token.lstrip) begin -= trailing_whitespace(text.substr(plain_start, pos - plain_start));
    if (token.rstrip)
      while (end < text.size()) {
        size_t w = whitespace_at(text, end);
        if (!w) break;
        end += w;
      }
    if (begin > plain_start) sections.push_back({text.substr(plain_start, begin - plain_start), -1});
    sections.push_back({text.substr(begin, end - begin), index});
    plain_start = pos = end;
  }
  if (plain_start < text.size()) sections.push_back({text.substr(plain_start), -1});
}

Status HfTokenizer::encode_plain(std::string_view text, std::vector<TokenId>& ids) const {
  if (splits_.empty()) {
    bpe_.encode_piece(text, ids);
    return {};
  }
  // Each Split refines the pieces of the one before; Llama-3 has one.
  std::vector<std::string_view> pieces{text}, next;
  for (size_t s = 0; s + 1 < splits_.size(); ++s) {
    next.clear();
    for (auto piece : pieces) {
      Status st = splits_[s]->split(piece, [&](std::string_view p) { next.push_back(p); });
      if (!st.is_ok()) return st;
    }
    pieces.swap(next);
  }
  for (auto piece : pieces) {
    Status st = splits_.back()->split(piece, [&](std::string_view p) { bpe_.encode_piece(p, ids); });
    if (!st.is_ok()) return st;
  }
  return {};
}

Status HfTokenizer::encode(std::string_view text, std::optional<bool> add_special, bool parse_special,
                           std::vector<TokenId>& ids) const {
  // HF tokenizers only ever sees valid Unicode (a Rust &str, a Python str);
  // bytes reach it through a lossy decode. Repair the same way, so that what
  // we encode is what HF would have been handed.
  std::string repaired;
  if (utf8_valid_prefix(text) != text.size()) {
    append_utf8_lossy(text, repaired, false);
    text = repaired;
  }
  bool add = add_special.value_or(add_special_default_);
  // A caller who asks for BOS gets it even when the files add none by
  // default (Llama-3's original tokenizer.json): the template if there is one,
  // else the config's bos_token.
  if (add && prefix_ids_.empty() && suffix_ids_.empty() && special_ids_.bos) ids.push_back(*special_ids_.bos);
  if (add) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<Section> sections;
  split_added(text, parse_special, sections);
  for (const Section& section : sections) {
    if (section.added >= 0) {
      ids.push_back(added_[size_t(section.added)].id);
      continue;
    }
    if (section.text.empty()) continue;
    Status st = encode_plain(section.text, ids);
    if (!st.is_ok()) return st;
  }
  if (add) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return {};
}

Status HfTokenizer::decode(std::span<const TokenId> ids, bool skip_special, std::string& text) const {
  std::string bytes;
  for (TokenId id : ids) {
    const std::string* b = token_bytes(id);
    if (!b)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("token id {} is not in the vocabulary of {} (ids 0..{})", id, source_, vocab_size() - 1));
    if (skip_special && is_special(id)) continue;
    bytes += *b;
  }
  // Like HF's ByteLevel decoder (String::from_utf8_lossy over the joined bytes).
  append_utf8_lossy(bytes, text, false);
  return {};
}

std::optional<TokenId> HfTokenizer::token_to_id(std::string_view token) const {
  auto it = text_to_id_.find(token);
  if (it == text_to_id_.end()) return std::nullopt;
  return it->second;
}

std::string HfTokenizer::id_to_token(TokenId id) const {
  return token_bytes(id) ? id_text_[size_t(id)] : std::string();
}

HfTokenizer::~HfTokenizer() = default;

Result<std::unique_ptr<HfTokenizer>> HfTokenizer::load_from_text(std::string_view tokenizer_json,
                                                                 const std::string& tokenizer_json_name,
                                                                 std::string_view tokenizer_config,
                                                                 const std::string& tokenizer_config_name,
                                                                 std::string_view generation_config,
                                                                 const std::string& generation_config_name) {
  std::unique_ptr<HfTokenizer> out(new HfTokenizer());
  out->source_ = tokenizer_json_name;
  Status status = guard([&] {
    Reader reader(tokenizer_json_name);
    if (tokenizer_json.empty())
      reader.fail("(top level)", "the file is empty");
    auto root = parse_json(tokenizer_json, tokenizer_json_name);
    if (!root) throw Error(root.status());
    Loader loader(*out, reader);
    loader.load(*root);
    if (!tokenizer_config.empty()) {
      auto config = parse_json(tokenizer_config, tokenizer_config_name);
      if (!config) throw Error(config.status());
      loader.apply_tokenizer_config(*config, Reader(tokenizer_config_name));
    }
    if (!generation_config.empty()) {
      auto config = parse_json(generation_config, generation_config_name);
      if (!config) throw Error(config.status());
      loader.apply_generation_config(*config, Reader(generation_config_name));
    }
  });
  // Whatever escaped the checks above (a JSON value of an unexpected type deep
  // inside) still names the files, never only an exception's text.
  if (status.code() == ErrorCode::internal)
    status = Status(ErrorCode::corrupt_data, fmt::format("{} (or its tokenizer_config.json/generation_config.json): {}",
                                                         tokenizer_json_name, status.message()));
  if (!status.is_ok()) return status;
  return out;
}

Result<std::unique_ptr<HfTokenizer>> HfTokenizer::load(const fs::path& path) {
  auto files = TokenizerFiles::locate(path);
  if (!files) return files.status();
  auto main = read_file(files->tokenizer_json, "tokenizer.json");
  if (!main) return main.status();
  std::string config_text, generation_text, config_name, generation_name;
  if (files->tokenizer_config) {
    auto text = read_file(*files->tokenizer_config, "tokenizer config");
    if (!text) return text.status();
    config_text = std::move(*text);
    config_name = files->tokenizer_config->string();
    if (config_text.empty()) return Status(ErrorCode::corrupt_data, config_name + ": the file is empty");
  }
  if (files->generation_config) {
    auto text = read_file(*files->generation_config, "generation config");
    if (!text) return text.status();
    generation_text = std::move(*text);
    generation_name = files->generation_config->string();
    if (generation_text.empty()) return Status(ErrorCode::corrupt_data, generation_name + ": the file is empty");
  }
  return load_from_text(*main, files->tokenizer_json.string(), config_text, config_name, generation_text,
                        generation_name);
}

}  // namespace hostrun::hf
