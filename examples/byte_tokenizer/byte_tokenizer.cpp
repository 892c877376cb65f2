// An example third-party Tokenizer: one id per byte of UTF-8, plus <s> and </s>.
//
// Small enough to read in a minute, complete enough to run: it shows the
// settings table, the factory, noexcept methods that report errors as
// Status, and an incremental decoder that never splits a UTF-8 sequence and
// keeps this library loaded while it lives (make_pinned).
#include <hostrun/sdk.hpp>

namespace {

using hostrun::DecodeOptions;
using hostrun::EncodeOptions;
using hostrun::ErrorCode;
using hostrun::Status;
using hostrun::TokenId;

constexpr TokenId kBos = 256;
constexpr TokenId kEos = 257;
constexpr std::string_view kBosText = "<s>";
constexpr std::string_view kEosText = "</s>";

// Length of the UTF-8 sequence a lead byte starts (1 for anything invalid,
// which then decodes as one replacement character).
size_t utf8_length(unsigned char lead) {
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  if (lead >= 0xE0) return lead <= 0xEF ? 3 : 1;
  if (lead >= 0xC2) return 2;
  return 1;
}

// Whether `next` may follow `lead` as the second byte of a well-formed
// sequence: the plain continuation range, narrowed after E0/ED/F0/F4 so
// overlong forms, surrogates (ED A0..BF) and code points past U+10FFFF are
// malformed, as Unicode's table 3-7 says.
bool second_byte_ok(unsigned char lead, unsigned char next) {
  switch (lead) {
    case 0xE0: return next >= 0xA0 && next <= 0xBF;
    case 0xED: return next >= 0x80 && next <= 0x9F;
    case 0xF0: return next >= 0x90 && next <= 0xBF;
    case 0xF4: return next >= 0x80 && next <= 0x8F;
    default: return (next & 0xC0) == 0x80;
  }
}

// Copies bytes, replacing each malformed sequence with U+FFFD. Returns how
// many bytes at the end were held back as a possibly incomplete sequence
// (only when `hold_tail` is set).
size_t append_valid_utf8(std::string_view bytes, std::string& out, bool hold_tail) {
  size_t i = 0;
  while (i < bytes.size()) {
    auto lead = static_cast<unsigned char>(bytes[i]);
    size_t need = lead < 0x80 ? 1 : utf8_length(lead);
    if (need == 1 && lead >= 0x80) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t have = 1;
    while (have < need && i + have < bytes.size()) {
      const auto next = static_cast<unsigned char>(bytes[i + have]);
      if (have == 1 ? !second_byte_ok(lead, next) : (next & 0xC0) != 0x80) break;
      ++have;
    }
    if (have == need) {
      out.append(bytes.substr(i, need));
    } else if (i + have == bytes.size() && hold_tail) {
      return have;  // may still complete with the next token
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += have;
  }
  return 0;
}

class ByteDecoder final : public hostrun::IncrementalDecoder {
 public:
  explicit ByteDecoder(bool skip_special) : skip_special_(skip_special) {}

  Status push(TokenId id, std::string& piece) noexcept override {
    return hostrun::guard([&]() -> Status {
      if (id < 0 || id > kEos) return {ErrorCode::invalid_argument, "token id " + std::to_string(id) + " is not in 0..257"};
      if (id >= kBos) {
        flush(piece);
        if (!skip_special_) piece += id == kBos ? kBosText : kEosText;
        return {};
      }
      pending_ += char(id);
      std::string_view bytes = pending_;
      size_t held = append_valid_utf8(bytes, piece, true);
      pending_.erase(0, pending_.size() - held);
      return {};
    });
  }
  Status finish(std::string& piece) noexcept override {
    return hostrun::guard([&] { flush(piece); });
  }

 private:
  void flush(std::string& piece) {
    append_valid_utf8(pending_, piece, false);
    pending_.clear();
  }
  bool skip_special_;
  std::string pending_;
};

class ByteTokenizer final : public hostrun::Tokenizer {
 public:
  explicit ByteTokenizer(const hostrun::CreateContext& context)
      : add_bos_(context.settings->get_bool("add_bos")), library_(context.library) {
    hostrun::plugin_logger(context, "byte_tokenizer").debug("made, add_bos={}", add_bos_);
  }

  Status encode(std::string_view text, const EncodeOptions& options, std::vector<TokenId>& ids) const noexcept override {
    return hostrun::guard([&] {
      if (options.add_bos.value_or(add_bos_)) ids.push_back(kBos);
      for (size_t i = 0; i < text.size();) {
        if (options.parse_special && text.substr(i).starts_with(kBosText)) {
          ids.push_back(kBos);
          i += kBosText.size();
        } else if (options.parse_special && text.substr(i).starts_with(kEosText)) {
          ids.push_back(kEos);
          i += kEosText.size();
        } else {
          ids.push_back(static_cast<unsigned char>(text[i++]));
        }
      }
    });
  }

  Status decode(std::span<const TokenId> ids, const DecodeOptions& options, std::string& text) const noexcept override {
    ByteDecoder decoder(options.skip_special_tokens);
    for (TokenId id : ids)
      if (Status s = decoder.push(id, text); !s) return s;
    return decoder.finish(text);
  }

  hostrun::PluginPtr<hostrun::IncrementalDecoder> incremental_decoder(
      const DecodeOptions& options) const noexcept override {
    try {
      return hostrun::make_pinned<ByteDecoder>(library_, options.skip_special_tokens);
    } catch (...) {
      return nullptr;
    }
  }

  int32_t vocab_size() const noexcept override { return kEos + 1; }
  std::optional<TokenId> token_to_id(std::string_view token) const noexcept override {
    if (token == kBosText) return kBos;
    if (token == kEosText) return kEos;
    if (token.size() == 1) return static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }
  std::string id_to_token(TokenId id) const noexcept override {
    if (id == kBos) return std::string(kBosText);
    if (id == kEos) return std::string(kEosText);
    if (id >= 0 && id < 256) return std::string(1, char(id));
    return {};
  }
  bool is_special(TokenId id) const noexcept override { return id == kBos || id == kEos; }
  hostrun::SpecialTokenIds special_tokens() const noexcept override { return {kBos, {kEos}, std::nullopt}; }

 private:
  bool add_bos_;
  // This library, as the host gave it; every decoder carries a copy so the
  // code of ~ByteDecoder stays mapped until it has run.
  hostrun::LibraryPin library_;
};

const hostrun::SettingSpec kSettings[] = {
    {"add_bos", hostrun::SettingType::boolean, "Prepend <s> when the caller does not say", false, "true"},
};
const hostrun::RoleEntry kRoles[] = {hostrun::role_entry<hostrun::Tokenizer, ByteTokenizer>(kSettings)};

}  // namespace

HOSTRUN_PLUGIN("byte_tokenizer", "1.0.0", "Example third-party tokenizer: one id per UTF-8 byte, plus <s> and </s>",
               kRoles)
