// An HF tokenizer.json (byte-level BPE, as Llama-3 and GPT-2 style models use
// it), independent of the plugin glue so that tests and fuzzers can drive it.
//
// Pipeline, as HF tokenizers runs it for these files:
//   text -> repair ill-formed UTF-8 -> split out added tokens -> for each other
//   section: Split regex(es) -> byte-level -> BPE -> post-processor (BOS).
// Anything in a tokenizer.json outside what this implements is refused at load
// with the JSON path of the part, never silently ignored.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bpe.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tokenizer.hpp"
#include "split_regex.hpp"

namespace hostrun::hf {

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// The files a tokenizer is read from.
struct TokenizerFiles {
  std::filesystem::path tokenizer_json;
  std::optional<std::filesystem::path> tokenizer_config;  // tokenizer_config.json, when present
  std::optional<std::filesystem::path> generation_config; // generation_config.json, when present
  // `path` is a tokenizer.json or a folder holding one; the two config files
  // are looked for beside it.
  static Result<TokenizerFiles> locate(const std::filesystem::path& path);
};

class HfTokenizer {
 public:
  static Result<std::unique_ptr<HfTokenizer>> load(const std::filesystem::path& path);
  // From text; the names are used in error messages only. Empty config texts mean absent.
  static Result<std::unique_ptr<HfTokenizer>> load_from_text(std::string_view tokenizer_json,
                                                             const std::string& tokenizer_json_name,
                                                             std::string_view tokenizer_config = {},
                                                             const std::string& tokenizer_config_name = {},
                                                             std::string_view generation_config = {},
                                                             const std::string& generation_config_name = {});
  ~HfTokenizer();

  // add_special: apply the post-processor's template (BOS, and EOS where it has
  // one); true with no template prepends the config's bos_token; nullopt follows the files.
  Status encode(std::string_view text, std::optional<bool> add_special, bool parse_special,
                std::vector<TokenId>& ids) const;
  Status decode(std::span<const TokenId> ids, bool skip_special, std::string& text) const;

  // The raw bytes an id stands for (a special token's text), or nullptr for an unknown id.
  const std::string* token_bytes(TokenId id) const noexcept {
    return id >= 0 && size_t(id) < id_bytes_.size() && id_known_[size_t(id)] ? &id_bytes_[size_t(id)] : nullptr;
  }
  bool is_special(TokenId id) const noexcept {
    return id >= 0 && size_t(id) < id_special_.size() && id_special_[size_t(id)];
  }
  int32_t vocab_size() const noexcept { return int32_t(id_bytes_.size()); }
  std::optional<TokenId> token_to_id(std::string_view token) const;
  std::string id_to_token(TokenId id) const;
  SpecialTokenIds special_tokens() const { return special_ids_; }
  bool adds_special_by_default() const noexcept { return add_special_default_; }
  const std::string& source() const noexcept { return source_; }

 private:
  HfTokenizer() = default;
  friend class Loader;

  // Leftmost-longest search for added tokens (HF uses Aho-Corasick with the
  // same match kind). A byte trie is enough: a few hundred short tokens.
  struct Trie {
    struct Node {
      int32_t child[256];
      int32_t token = -1;  // index into added_ when a token ends here
    };
    std::vector<Node> nodes;
    bool first_byte[256] = {};
    void add(std::string_view text, int32_t token_index);
    // Longest token starting at `pos`: its index and length, or -1.
    int32_t longest(std::string_view text, size_t pos, size_t& length) const;
  };
  struct Section {
    std::string_view text;
    int32_t added = -1;  // index into added_, or -1 for plain text
  };
  void split_added(std::string_view text, bool parse_special, std::vector<Section>& sections) const;
  Status encode_plain(std::string_view text, std::vector<TokenId>& ids) const;

  std::string source_;  // the tokenizer.json path, for messages
  std::vector<std::unique_ptr<SplitRegex>> splits_;
  BpeModel bpe_;
  std::vector<AddedToken> added_;
  Trie all_added_;      // every added token
  Trie non_special_;    // only the non-special ones (parse_special = false)
  std::vector<std::string> id_bytes_;   // decode table: raw bytes of every id
  std::vector<std::string> id_text_;    // the vocabulary string of every id
  std::vector<bool> id_known_;
  std::vector<bool> id_special_;
  BytesToId text_to_id_;                // vocabulary string -> id (token_to_id)
  std::vector<TokenId> prefix_ids_, suffix_ids_;  // the post-processor's template
  bool add_special_default_ = false;
  SpecialTokenIds special_ids_;
};

}  // namespace hostrun::hf
