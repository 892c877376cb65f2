#include "utf8.hpp"

#include <cstdint>
#include <cstring>

namespace hostrun::hf {

namespace {

// Unicode Table 3-7 (well-formed byte sequences): the allowed range of the
// second byte depends on the lead byte; every later byte is 80..BF.
struct LeadRule {
  uint8_t length;  // 0: not a lead byte
  uint8_t second_lo, second_hi;
};

constexpr LeadRule lead_rule(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};  // continuation bytes and the overlong C0, C1
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};  // no overlong 3-byte forms
  if (b == 0xED) return {3, 0x80, 0x9F};  // no UTF-16 surrogates
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};  // no overlong 4-byte forms
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};  // nothing above U+10FFFF
  return {0, 0, 0};
}

}  // namespace

Utf8Step utf8_step(std::string_view bytes, size_t pos) noexcept {
  auto at = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  LeadRule rule = lead_rule(at(pos));
  if (rule.length == 0) return {Utf8Step::ill_formed, 1};
  if (rule.length == 1) return {Utf8Step::complete, 1};
  size_t have = 1;
  while (have < rule.length) {
    if (pos + have >= bytes.size()) return {Utf8Step::incomplete, have};
    uint8_t b = at(pos + have);
    bool ok = have == 1 ? (b >= rule.second_lo && b <= rule.second_hi) : (b >= 0x80 && b <= 0xBF);
    // The bytes read so far are the maximal subpart; the offending byte starts anew.
    if (!ok) return {Utf8Step::ill_formed, have};
    ++have;
  }
  return {Utf8Step::complete, have};
}

size_t utf8_valid_prefix(std::string_view bytes) noexcept {
  size_t pos = 0;
  const size_t n = bytes.size();
  while (pos < n) {
    // ASCII runs dominate real text; check 8 bytes at a time.
    while (pos + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, bytes.data() + pos, 8);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= n) break;
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    Utf8Step step = utf8_step(bytes, pos);
    if (step.kind != Utf8Step::complete) return pos;
    pos += step.length;
  }
  return n;
}

size_t append_utf8_lossy(std::string_view bytes, std::string& out, bool hold_incomplete) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t valid = utf8_valid_prefix(bytes.substr(pos));
    out.append(bytes.substr(pos, valid));
    pos += valid;
    if (pos >= bytes.size()) break;
    Utf8Step step = utf8_step(bytes, pos);
    if (step.kind == Utf8Step::incomplete && hold_incomplete) return step.length;
    out.append(kReplacementChar);
    pos += step.length;
  }
  return 0;
}

}  // namespace hostrun::hf
