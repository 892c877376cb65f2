// JSON from outside the process (request bodies, a server's replies, model
// files) checked for shape before a DOM parser builds it.
//
// Why a check before parsing: nlohmann's parser is itself iterative, but a
// value nested 75,000 deep is then dumped, copied or walked recursively, one
// stack frame per level, and a 16 MiB body of `[],[],...` becomes 5.6 million
// heap vectors (~430 MB for one request). One linear pass over the text,
// allocating one byte per allowed level and nothing else, refuses both before
// anything is built:
//   - depth: at most `max_depth` arrays and objects open at once;
//   - memory: an estimate of the most heap the value takes must stay within
//     max(floor_bytes, bytes_per_input_byte x input bytes) and within max_bytes.
//
// The estimate is of the peak: the most heap that parsing, holding and
// destroying the value takes at any moment, modelled on nlohmann::json 3.11
// and a 64-bit glibc heap (a request of n bytes takes a chunk of max(32,
// n + 8 rounded up to 16) bytes):
//   - what the value holds: an array element is a 16-byte slot, counted twice
//     for the spare capacity a growing vector keeps; an array is a heap
//     vector (32), an object a heap map (64), a member a map node (96), a
//     string value a heap std::string (48), and a string over 15 bytes, key
//     or value, has its buffer too;
//   - 48 bytes per value: a vector that grows holds its old slots as well,
//     and nlohmann destroys a value without recursing by moving every value
//     onto a stack of 16-byte slots, three times that while the stack grows;
//   - 12 times the longest token: the parser keeps two growing copies of the
//     token it reads (its value and its raw bytes), up to 4 times the token,
//     and an error inside a token (a bad byte at the end of a long string, a
//     number too large for a double) copies it into the message several
//     times more (10.6 times measured);
//   - 1 KiB, and 24 bytes per level, for the parser's own buffers and stacks.
// Tokens are measured as written, escapes included, which is never less than
// what they decode to. The unit tests check the estimate against the peak the
// allocator sees for each shape (tests/json/test_bounded_json.cpp).
//
// The scan assumes strict JSON (RFC 8259, no comments), as nlohmann parses by
// default. On valid JSON its tokens are the parser's; on invalid JSON the
// parser stops at the first error, and up to that point the two agree, so what
// the parser builds is never more than what was scanned.
//
// The helpers that take a `Json` type work with nlohmann::json and
// nlohmann::ordered_json; this header does not include nlohmann, so a plugin
// that reads JSON brings its own.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/status.hpp"

namespace hostrun {

struct JsonLimits {
  // Request bodies need 4 levels (messages[i].content[j].text), Hugging Face
  // files fewer than 10; 64 leaves room and keeps any recursive walk shallow.
  int max_depth = 64;
  // Estimates measured: a long string prompt 13x its text, Llama-3's
  // tokenizer.json 6x, a list of token ids 11x, chat messages 13x (17x when
  // each says only "hi"); a list of empty arrays 37x, of zeros 40x, of empty
  // objects 48x.
  size_t bytes_per_input_byte = 24;
  // Small documents are never refused for their overhead (`{"a":1}` is 34x).
  size_t floor_bytes = size_t(1) << 20;
  // The most any one document may take, whatever its size.
  size_t max_bytes = std::numeric_limits<size_t>::max();

  // The memory a document of `input_bytes` may take.
  size_t budget_for(size_t input_bytes) const noexcept {
    size_t proportional = input_bytes > std::numeric_limits<size_t>::max() / std::max<size_t>(bytes_per_input_byte, 1)
                              ? std::numeric_limits<size_t>::max()
                              : input_bytes * bytes_per_input_byte;
    return std::min(std::max(floor_bytes, proportional), max_bytes);
  }
};

// The limits for JSON that arrives over a connection whose messages are at
// most `max_message_bytes` (an HTTP server's body limit, a client's cap on a
// reply): the defaults, and no document may take more than 16 times the
// largest message, 256 MiB for 16 MiB bodies. The largest legitimate body,
// one prompt string as long as the limit allows, is estimated at about 12.4
// times its size (the parser's copies of one long token), so it passes; the
// proportional budget still refuses the shapes that balloon. The servers
// parse on their worker threads, so at most that many documents are parsed
// at once.
inline JsonLimits network_json_limits(size_t max_message_bytes) {
  constexpr size_t kCeilingFactor = 16;
  JsonLimits limits;
  limits.max_bytes = max_message_bytes > std::numeric_limits<size_t>::max() / kCeilingFactor
                         ? std::numeric_limits<size_t>::max()
                         : kCeilingFactor * max_message_bytes;
  return limits;
}

// What one scan found.
struct JsonShape {
  size_t deepest = 0;                                      // most arrays and objects open at once
  size_t first_too_deep_at = std::string_view::npos;       // byte offset of the first one over the limit
  size_t first_value_end = std::string_view::npos;         // just past the array or object the text starts with
  size_t values = 0;                                       // scalars, strings, arrays and objects (keys not counted)
  size_t estimated_bytes = 0;                              // the most heap the value takes (the model above)
};

namespace json_bounds_detail {

// glibc's chunk for a request of n bytes.
constexpr size_t heap_chunk(size_t n) noexcept { return std::max<size_t>(32, (n + 8 + 15) & ~size_t(15)); }
constexpr size_t kSlot = 16;
constexpr size_t kVector = heap_chunk(24);
constexpr size_t kMap = heap_chunk(48);
constexpr size_t kMapNode = heap_chunk(32 + 32 + 16);  // tree links, key std::string, value
constexpr size_t kString = heap_chunk(32);
constexpr size_t kShortString = 15;  // libstdc++ keeps up to 15 bytes inside the std::string
// The parser's own buffers and stacks, and the copies of the token it reads
// (the model above).
constexpr size_t kParserBase = 1024;
constexpr size_t kParserPerLevel = 24;
constexpr size_t kTokenCopies = 12;

constexpr bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
constexpr bool ends_scalar(char c) noexcept {
  return is_space(c) || c == ',' || c == ':' || c == ']' || c == '}' || c == '[' || c == '{' || c == '"';
}

inline size_t add_saturated(size_t a, size_t b) noexcept {
  return a > std::numeric_limits<size_t>::max() - b ? std::numeric_limits<size_t>::max() : a + b;
}

// "75,000": sizes in messages read at a glance.
inline std::string grouped(size_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// nlohmann's messages quote the token they stopped at, which may be megabytes.
inline std::string clipped(std::string_view text, size_t most = 300) {
  return text.size() <= most ? std::string(text) : std::string(text.substr(0, most)) + "...";
}

inline std::string mebibytes(size_t bytes) {
  return bytes == std::numeric_limits<size_t>::max() ? std::string("unlimited")
                                                     : fmt::format("{:.1f} MiB", double(bytes) / double(1 << 20));
}

}  // namespace json_bounds_detail

// One pass over `text`; allocates max_depth bytes. Past the depth limit it
// keeps counting depth (for the message) but no longer which containers are
// arrays. It stops at a closing bracket with nothing open, where any parser
// stops too.
inline JsonShape scan_json_shape(std::string_view text, const JsonLimits& limits) {
  using namespace json_bounds_detail;
  JsonShape shape;
  const size_t tracked_depth = size_t(std::max(limits.max_depth, 0));
  std::vector<char> open_is_array(tracked_depth, 0);  // per open level up to the limit
  size_t depth = 0;
  size_t longest_token = 0;
  size_t cost = 0;
  auto add_value = [&](size_t own_bytes) {
    ++shape.values;
    // A member's slot is in its map node, counted with its key.
    size_t slot = kSlot;
    if (depth > 0) slot = depth > tracked_depth || open_is_array[depth - 1] ? 2 * kSlot : 0;
    cost = add_saturated(cost, slot + own_bytes);
  };
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const char c = text[i];
    if (is_space(c) || c == ',') {
      ++i;
    } else if (c == '"') {
      size_t end = i + 1;
      while (end < n && text[end] != '"') end += text[end] == '\\' ? 2 : 1;
      const size_t length = std::min(end, n) - (i + 1);
      longest_token = std::max(longest_token, length);
      const size_t buffer = length > kShortString ? heap_chunk(length + 1) : 0;
      size_t next = end + 1;
      while (next < n && is_space(text[next])) ++next;
      if (next < n && text[next] == ':') {
        cost = add_saturated(cost, kMapNode + buffer);  // a key: it lives in its member's node
        i = next + 1;
      } else {
        add_value(kString + buffer);
        i = end + 1;
      }
    } else if (c == '[' || c == '{') {
      add_value(c == '[' ? kVector : kMap);
      if (depth < tracked_depth) open_is_array[depth] = c == '[';
      ++depth;
      if (depth > tracked_depth && shape.first_too_deep_at == std::string_view::npos) shape.first_too_deep_at = i;
      shape.deepest = std::max(shape.deepest, depth);
      ++i;
    } else if (c == ']' || c == '}') {
      if (depth == 0) break;
      --depth;
      ++i;
      if (depth == 0 && shape.first_value_end == std::string_view::npos) shape.first_value_end = i;
    } else {  // a number, true, false, null, or a stray byte (a ':' out of place) the parser will refuse
      add_value(0);
      const size_t start = i;
      do ++i;
      while (i < n && !ends_scalar(text[i]));
      longest_token = std::max(longest_token, i - start);
    }
  }
  const size_t transient = shape.values > std::numeric_limits<size_t>::max() / (3 * kSlot)
                               ? std::numeric_limits<size_t>::max()
                               : 3 * kSlot * shape.values;
  const size_t parser = kParserBase + kParserPerLevel * shape.deepest + kTokenCopies * longest_token;
  shape.estimated_bytes = add_saturated(add_saturated(cost, parser), transient);
  return shape;
}

// Ok, or why `text` may not be parsed: too deep (invalid_argument) or too
// large once parsed (resource_exhausted). `what` names the document in the
// message ("the request body", "/models/x/config.json").
inline Status check_json_bounds(std::string_view text, const JsonLimits& limits, std::string_view what) {
  using namespace json_bounds_detail;
  const JsonShape shape = scan_json_shape(text, limits);
  if (shape.first_too_deep_at != std::string_view::npos)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{} nests arrays and objects {} deep (level {} opens at byte {}); at most {} levels "
                              "are allowed",
                              what, grouped(shape.deepest), limits.max_depth + 1, grouped(shape.first_too_deep_at),
                              limits.max_depth));
  const size_t budget = limits.budget_for(text.size());
  if (shape.estimated_bytes > budget)
    return Status(ErrorCode::resource_exhausted,
                  fmt::format("{} ({} bytes, {} values) would take about {} once parsed; the limit for it is {} "
                              "({} per byte of JSON, at least {}, at most {})",
                              what, grouped(text.size()), grouped(shape.values), mebibytes(shape.estimated_bytes),
                              mebibytes(budget), limits.bytes_per_input_byte, mebibytes(limits.floor_bytes),
                              mebibytes(limits.max_bytes)));
  return Status();
}

// Parses `text` as a `Json` (nlohmann::json or ordered_json) once it passed
// check_json_bounds. Errors: the check's, or invalid_argument for text that
// is not JSON (with nlohmann's byte offset and reason, its first 300 bytes)
// or not representable (a number out of range).
template <class Json>
Result<Json> parse_json_bounded(std::string_view text, const JsonLimits& limits, std::string_view what) {
  if (Status bounds = check_json_bounds(text, limits, what); !bounds) return bounds;
  using json_bounds_detail::clipped;
  try {
    return Json::parse(text);
  } catch (const typename Json::parse_error& e) {
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{} is not valid JSON (at byte {}): {}", what, e.byte, clipped(e.what())));
  } catch (const typename Json::exception& e) {
    return Status(ErrorCode::invalid_argument, fmt::format("{} is not usable JSON: {}", what, clipped(e.what())));
  }
}

// A value as an error message shows it: its type and size, never its
// contents, which may be megabytes or nested thousands deep. Numbers and
// booleans are shown, and strings of at most 32 bytes, quoted.
template <class Json>
std::string describe_json_value(const Json& value) {
  using json_bounds_detail::grouped;
  auto counted = [](size_t n, const char* one, const char* many) {
    return fmt::format("{} {}", grouped(n), n == 1 ? one : many);
  };
  if (value.is_null()) return "null";
  if (value.is_boolean()) return value.template get<bool>() ? "true" : "false";
  if (value.is_number_unsigned()) return fmt::format("the integer {}", value.template get<uint64_t>());
  if (value.is_number_integer()) return fmt::format("the integer {}", value.template get<int64_t>());
  if (value.is_number_float()) return fmt::format("the number {}", value.template get<double>());
  if (value.is_string()) {
    const std::string& text = value.template get_ref<const std::string&>();
    if (text.empty()) return "an empty string";
    if (text.size() <= 32) return fmt::format("the string \"{}\"", text);
    return "a string of " + counted(text.size(), "byte", "bytes");
  }
  if (value.is_array()) return value.empty() ? "an empty array" : "an array of " + counted(value.size(), "element", "elements");
  if (value.is_object()) return value.empty() ? "an empty object" : "an object of " + counted(value.size(), "member", "members");
  return "a binary value";
}

}  // namespace hostrun
