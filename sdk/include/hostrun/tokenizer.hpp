// Role: Tokenizer — text <-> token ids, special tokens, streaming-safe decoding.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"

namespace hostrun {

using TokenId = int32_t;

struct EncodeOptions {
  // Prepend the BOS token? nullopt follows the tokenizer's own configuration
  // (tokenizer_config.json's add_bos_token / the post-processor).
  std::optional<bool> add_bos;
  // true: text such as "<|eot_id|>" becomes the special token. false (the safe
  // default for anything a user typed): it is encoded as the plain characters.
  bool parse_special = false;
};

struct DecodeOptions {
  bool skip_special_tokens = false;
};

// Decodes a growing list of ids piece by piece. The concatenation of every
// piece returned by push() and then finish() equals Tokenizer::decode() of all
// ids pushed; no piece ever ends inside a UTF-8 sequence.
class IncrementalDecoder : public PluginObject {
 public:
  // Appends to `piece` whatever text is now final (possibly nothing).
  virtual Status push(TokenId id, std::string& piece) noexcept = 0;
  // Appends the text still held back (an incomplete UTF-8 tail decodes as U+FFFD).
  virtual Status finish(std::string& piece) noexcept = 0;
};

struct SpecialTokenIds {
  std::optional<TokenId> bos;
  std::vector<TokenId> eos;  // every id that ends a generation by default
  std::optional<TokenId> pad;
};

class Tokenizer : public PluginObject {
 public:
  // Appends the ids of `text` to `ids`. No id stands for more bytes of `text`
  // than decode() of that id alone gives back (true of byte-level BPE, where
  // the ids' texts concatenate to the input): the engine refuses a text longer
  // than session length x the longest decoded id before encoding it.
  virtual Status encode(std::string_view text, const EncodeOptions& options,
                        std::vector<TokenId>& ids) const noexcept = 0;
  // Appends the text of `ids` to `text`. An id outside the vocabulary is an error.
  virtual Status decode(std::span<const TokenId> ids, const DecodeOptions& options,
                        std::string& text) const noexcept = 0;
  // A decoder that keeps this tokenizer's library loaded (plugin_object.hpp).
  // It may read the tokenizer: the caller keeps the tokenizer alive longer.
  virtual PluginPtr<IncrementalDecoder> incremental_decoder(const DecodeOptions& options) const noexcept = 0;

  // Number of ids, added tokens included (the model's embedding may be larger).
  virtual int32_t vocab_size() const noexcept = 0;
  // The id of a token's exact vocabulary string (e.g. "<|eot_id|>"), if any.
  virtual std::optional<TokenId> token_to_id(std::string_view token) const noexcept = 0;
  // The vocabulary string of an id (empty for an unknown id).
  virtual std::string id_to_token(TokenId id) const noexcept = 0;
  virtual bool is_special(TokenId id) const noexcept = 0;
  virtual SpecialTokenIds special_tokens() const noexcept = 0;
};

// The most bytes of encode()'s input that one id stands for: the longest
// decode() of a single id (the contract on encode). A text of B bytes then
// has at least ceil(B / longest) ids, which says whether it can fit a session
// without encoding it. 0 when no id decodes to any text.
inline size_t longest_token_bytes(const Tokenizer& tokenizer) noexcept {
  size_t longest = 0;
  std::string text;
  for (TokenId id = 0; id < tokenizer.vocab_size(); ++id) {
    text.clear();
    if (tokenizer.decode(std::span(&id, 1), {.skip_special_tokens = false}, text)) longest = std::max(longest, text.size());
  }
  return longest;
}

// The fewest ids a text of `bytes` bytes encodes to (see longest_token_bytes); 0 when `longest` is 0.
inline size_t fewest_tokens(size_t bytes, size_t longest) noexcept {
  return longest == 0 ? 0 : (bytes + longest - 1) / longest;
}

}  // namespace hostrun
