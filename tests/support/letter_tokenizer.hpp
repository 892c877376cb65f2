// A Tokenizer for engine tests: each id is one letter ('a' + id % 26), and an
// optional eos id has no text. Small enough that a test can compute the text
// of any id sequence by hand.
#pragma once

#include <hostrun/tokenizer.hpp>
#include <optional>

namespace hostrun::testing {

class LetterTokenizer final : public Tokenizer {
 public:
  explicit LetterTokenizer(int32_t vocab, std::optional<TokenId> eos = std::nullopt) : vocab_(vocab), eos_(eos) {}

  std::string letter(TokenId id) const { return id == eos_ ? "" : std::string(1, char('a' + id % 26)); }

  Status encode(std::string_view text, const EncodeOptions&, std::vector<TokenId>& ids) const noexcept override {
    for (char c : text) ids.push_back(TokenId(uint8_t(c)));
    return {};
  }
  Status decode(std::span<const TokenId> ids, const DecodeOptions&, std::string& text) const noexcept override {
    for (TokenId id : ids) text += letter(id);
    return {};
  }
  PluginPtr<IncrementalDecoder> incremental_decoder(const DecodeOptions&) const noexcept override {
    return make_pinned<Stream>(LibraryPin{}, *this);  // made in the test binary: no library to pin
  }
  int32_t vocab_size() const noexcept override { return vocab_; }
  std::optional<TokenId> token_to_id(std::string_view) const noexcept override { return std::nullopt; }
  std::string id_to_token(TokenId id) const noexcept override { return letter(id); }
  bool is_special(TokenId id) const noexcept override { return id == eos_; }
  SpecialTokenIds special_tokens() const noexcept override {
    SpecialTokenIds ids;
    if (eos_) ids.eos.push_back(*eos_);
    return ids;
  }

 private:
  class Stream final : public IncrementalDecoder {
   public:
    explicit Stream(const LetterTokenizer& tokenizer) : tokenizer_(tokenizer) {}
    Status push(TokenId id, std::string& piece) noexcept override {
      piece += tokenizer_.letter(id);
      return {};
    }
    Status finish(std::string&) noexcept override { return {}; }

   private:
    const LetterTokenizer& tokenizer_;
  };

  int32_t vocab_;
  std::optional<TokenId> eos_;
};

}  // namespace hostrun::testing
