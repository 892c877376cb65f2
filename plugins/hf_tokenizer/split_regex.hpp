// The Split pre-tokenizer's regex, run by PCRE2 with its JIT compiler.
//
// HF tokenizers compiles these patterns with Oniguruma. PCRE2 is a backtracking
// engine with the same leftmost-first alternation, the same look-ahead and the
// same Unicode properties, so a pattern means the same in both once `\s` and
// `\S` are pinned down: Oniguruma's `\s` is the Unicode White_Space property,
// while PCRE2's (with UCP) is "Z or \t\n\v\f\r" and so misses U+0085. We
// rewrite `\s`/`\S` to an explicit White_Space class before compiling.
#pragma once

#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>

#include "hostrun/status.hpp"

namespace hostrun::hf {

// Rewrites an Oniguruma pattern into the PCRE2 pattern that matches the same
// strings. Returns an error for syntax we cannot translate faithfully.
Result<std::string> translate_oniguruma_pattern(std::string_view pattern);

class SplitRegex {
 public:
  // `pattern` is PCRE2 syntax (already translated). `what` names it in errors.
  static Result<std::unique_ptr<SplitRegex>> compile(const std::string& pattern, const std::string& what);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Calls on_piece(piece) for every match and every gap between matches, in
  // order (HF's "Isolated" behaviour). `text` must be well-formed UTF-8.
  template <typename OnPiece>
  Status split(std::string_view text, OnPiece&& on_piece) const;

 private:
  SplitRegex() = default;
  // One match at or after `start`; returns false at the end. Errors (JIT stack
  // exhausted, match limit) become a Status rather than a wrong split.
  Status next_match(std::string_view text, size_t start, pcre2_match_data* data, bool& found, size_t& begin,
                    size_t& end) const;
  pcre2_code* code_ = nullptr;
  std::string pattern_;
  bool jit_ = false;
};

template <typename OnPiece>
Status SplitRegex::split(std::string_view text, OnPiece&& on_piece) const {
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_, nullptr);
  if (!data) return Status(ErrorCode::out_of_memory, "cannot allocate PCRE2 match data");
  size_t pos = 0;     // start of the text not yet handed out
  size_t search = 0;  // where the next match may start
  Status status;
  while (pos < text.size()) {
    bool found = false;
    size_t begin = 0, end = 0;
    status = next_match(text, search, data, found, begin, end);
    if (!status.is_ok() || !found) break;
    if (end == begin) {
      // An empty match splits nothing (as in HF); look again one character on.
      if (begin >= text.size()) break;
      search = begin + 1;
      while (search < text.size() && (static_cast<unsigned char>(text[search]) & 0xC0) == 0x80) ++search;
      continue;
    }
    if (begin > pos) on_piece(text.substr(pos, begin - pos));
    on_piece(text.substr(begin, end - begin));
    pos = search = end;
  }
  if (status.is_ok() && pos < text.size()) on_piece(text.substr(pos));
  pcre2_match_data_free(data);
  return status;
}

}  // namespace hostrun::hf
