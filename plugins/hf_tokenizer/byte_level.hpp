// GPT-2's byte-level alphabet: every byte gets a printable code point so that a
// vocabulary of byte strings can be stored as JSON text. Bytes that are already
// printable and unambiguous (33..126, 161..172, 174..255) map to themselves;
// the other 68 map, in order, to U+0100..U+0143. Space (0x20) is thus U+0120
// "Ġ" and newline "Ċ", which is why vocabularies are full of them.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hostrun::hf {

class ByteLevelAlphabet {
 public:
  ByteLevelAlphabet() {
    codepoint_to_byte_.fill(-1);
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? b : next_extra++;
      byte_to_codepoint_[b] = cp;
      codepoint_to_byte_[cp] = int16_t(b);
    }
  }

  uint32_t codepoint(uint8_t byte) const noexcept { return byte_to_codepoint_[byte]; }

  // The bytes a byte-level string stands for, or nullopt when it holds a
  // character outside the alphabet (or is not UTF-8).
  std::optional<std::string> to_bytes(std::string_view text) const {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      auto b0 = static_cast<uint8_t>(text[i]);
      uint32_t cp;
      if (b0 < 0x80) {
        cp = b0, i += 1;
      } else if ((b0 & 0xE0) == 0xC0 && i + 1 < text.size()) {
        cp = (uint32_t(b0 & 0x1F) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3F), i += 2;
      } else {
        return std::nullopt;  // the alphabet lies below U+0800: two bytes at most
      }
      if (cp >= codepoint_to_byte_.size() || codepoint_to_byte_[cp] < 0) return std::nullopt;
      out.push_back(char(codepoint_to_byte_[cp]));
    }
    return out;
  }

  // The byte-level string of raw bytes (for error messages and id_to_token).
  std::string to_text(std::string_view bytes) const {
    std::string out;
    for (char c : bytes) {
      uint32_t cp = byte_to_codepoint_[static_cast<uint8_t>(c)];
      if (cp < 0x80) {
        out.push_back(char(cp));
      } else {
        out.push_back(char(0xC0 | (cp >> 6)));
        out.push_back(char(0x80 | (cp & 0x3F)));
      }
    }
    return out;
  }

  static const ByteLevelAlphabet& get() {
    static const ByteLevelAlphabet alphabet;
    return alphabet;
  }

 private:
  std::array<uint32_t, 256> byte_to_codepoint_{};
  std::array<int16_t, 0x144> codepoint_to_byte_{};
};

}  // namespace hostrun::hf
