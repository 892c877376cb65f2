// The hf_tokenizer plugin: HF tokenizer.json byte-level BPE (Llama-3) behind
// the SDK's Tokenizer interface. The work is in hf_tokenizer.cpp; this file is
// the settings table, the factory and the streaming decoder.
#include <hostrun/sdk.hpp>

#include "hf_tokenizer.hpp"
#include "utf8.hpp"

namespace {

using hostrun::DecodeOptions;
using hostrun::EncodeOptions;
using hostrun::ErrorCode;
using hostrun::Status;
using hostrun::TokenId;
using hostrun::hf::HfTokenizer;

// Streams text as ids arrive. Bytes of a character split across tokens wait
// in `pending_` until the character is complete (or proves ill-formed, then
// U+FFFD). Decoding all ids at once applies the same lossy rule to the joined
// bytes, so the pieces concatenated always equal decode(all ids).
class StreamDecoder final : public hostrun::IncrementalDecoder {
 public:
  StreamDecoder(const HfTokenizer& tokenizer, bool skip_special) : tokenizer_(tokenizer), skip_special_(skip_special) {}

  Status push(TokenId id, std::string& piece) noexcept override {
    return hostrun::guard([&]() -> Status {
      const std::string* bytes = tokenizer_.token_bytes(id);
      if (!bytes)
        return {ErrorCode::invalid_argument, fmt::format("token id {} is not in the vocabulary (ids 0..{})", id,
                                                         tokenizer_.vocab_size() - 1)};
      if (skip_special_ && tokenizer_.is_special(id)) return {};
      pending_ += *bytes;
      size_t held = hostrun::hf::append_utf8_lossy(pending_, piece, true);
      pending_.erase(0, pending_.size() - held);
      return {};
    });
  }

  Status finish(std::string& piece) noexcept override {
    return hostrun::guard([&] {
      hostrun::hf::append_utf8_lossy(pending_, piece, false);
      pending_.clear();
    });
  }

 private:
  const HfTokenizer& tokenizer_;  // the SDK has callers keep the tokenizer longer than its decoders
  bool skip_special_;
  std::string pending_;
};

class HfTokenizerPlugin final : public hostrun::Tokenizer {
 public:
  explicit HfTokenizerPlugin(const hostrun::CreateContext& context) : library_(context.library) {
    const std::string& file = context.settings->get_string("file");
    auto loaded = HfTokenizer::load(file);
    if (!loaded) throw hostrun::Error(loaded.status());
    tokenizer_ = std::move(loaded.value());
    auto log = hostrun::plugin_logger(context, "hf_tokenizer");
    log.debug("loaded {}: {} ids, BOS by default: {}", tokenizer_->source(), tokenizer_->vocab_size(),
              tokenizer_->adds_special_by_default());
  }

  Status encode(std::string_view text, const EncodeOptions& options, std::vector<TokenId>& ids) const noexcept override {
    size_t before = ids.size();
    Status status = hostrun::guard([&] { return tokenizer_->encode(text, options.add_bos, options.parse_special, ids); });
    if (!status.is_ok()) ids.resize(before);  // all or nothing
    return status;
  }

  Status decode(std::span<const TokenId> ids, const DecodeOptions& options, std::string& text) const noexcept override {
    return hostrun::guard([&] { return tokenizer_->decode(ids, options.skip_special_tokens, text); });
  }

  hostrun::PluginPtr<hostrun::IncrementalDecoder> incremental_decoder(
      const DecodeOptions& options) const noexcept override {
    try {
      return hostrun::make_pinned<StreamDecoder>(library_, *tokenizer_, options.skip_special_tokens);
    } catch (...) {
      return nullptr;
    }
  }

  int32_t vocab_size() const noexcept override { return tokenizer_->vocab_size(); }
  std::optional<TokenId> token_to_id(std::string_view token) const noexcept override {
    try {
      return tokenizer_->token_to_id(token);
    } catch (...) {
      return std::nullopt;
    }
  }
  std::string id_to_token(TokenId id) const noexcept override {
    try {
      return tokenizer_->id_to_token(id);
    } catch (...) {
      return {};
    }
  }
  bool is_special(TokenId id) const noexcept override { return tokenizer_->is_special(id); }
  hostrun::SpecialTokenIds special_tokens() const noexcept override {
    try {
      return tokenizer_->special_tokens();
    } catch (...) {
      return {};
    }
  }

 private:
  hostrun::LibraryPin library_;  // carried by every decoder this tokenizer makes
  std::unique_ptr<const HfTokenizer> tokenizer_;
};

const hostrun::SettingSpec kSettings[] = {
    {"file", hostrun::SettingType::string,
     "tokenizer.json, or a model folder holding it; tokenizer_config.json and generation_config.json beside it "
     "are read too (BOS rule, special tokens, end-of-generation ids)",
     true, nullptr, -1e300, 1e300, true},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::Tokenizer, HfTokenizerPlugin>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("hf_tokenizer", "1.0.0",
               "Hugging Face tokenizer.json byte-level BPE (Llama-3): PCRE2 pre-tokenizer, added/special tokens, "
               "streaming-safe decoding",
               kRoles)
