// sdk/include/hostrun/json_bounds.hpp: the scan that refuses JSON too deep or
// too large once parsed before nlohmann builds it, its memory estimate
// against the peak the allocator sees, the limits' arithmetic and the error
// texts.
#include <doctest/doctest.h>
#include <hostrun/json_bounds.hpp>
#include <malloc.h>

#include <cstdlib>
#include <new>
#include <nlohmann/json.hpp>
#include <string>

using namespace hostrun;
using nlohmann::json;

namespace {

std::string nested(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// `[item,item,...]` with `count` items.
std::string list_of(const std::string& item, size_t count) {
  std::string out = "[";
  out.reserve(count * (item.size() + 1) + 2);
  for (size_t i = 0; i < count; ++i) {
    if (i) out += ',';
    out += item;
  }
  return out + "]";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A JSON string of `length` bytes of 'a'.
std::string quoted(size_t length) {
  std::string text(length + 2, 'a');
  text.front() = text.back() = '"';
  return text;
}

}  // namespace

// The peak test counts every allocation through operator new, as glibc
// charges it (the usable size plus its 8-byte header). ASan brings its own
// operator new, so the sanitizer build skips that test rather than replace it.
#if defined(__SANITIZE_ADDRESS__)
#define HOSTRUN_TEST_COUNTS_HEAP 0
#else
#define HOSTRUN_TEST_COUNTS_HEAP 1
namespace {
size_t g_heap_in_use = 0;  // the tests run on one thread
size_t g_heap_peak = 0;
}  // namespace
// GCC sees free() in a replacement operator delete as a mismatch with new.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t bytes) {
  void* block = std::malloc(bytes ? bytes : 1);
  if (!block) throw std::bad_alloc();
  g_heap_in_use += malloc_usable_size(block) + 8;
  g_heap_peak = std::max(g_heap_peak, g_heap_in_use);
  return block;
}
void operator delete(void* block) noexcept {
  if (!block) return;
  g_heap_in_use -= malloc_usable_size(block) + 8;
  std::free(block);
}
void operator delete(void* block, size_t) noexcept { operator delete(block); }
#endif

TEST_SUITE("json_bounds") {
  TEST_CASE("depth: exactly at the limit passes, one more is refused with where and how deep") {
    JsonLimits limits;  // 64
    CHECK(scan_json_shape(nested(64), limits).deepest == 64);
    CHECK(check_json_bounds(nested(64), limits, "the body").is_ok());
    auto objects = [](size_t depth) {
      std::string text;
      for (size_t i = 0; i < depth; ++i) text += "{\"a\":";
      return text + "1" + std::string(depth, '}');
    };
    CHECK(check_json_bounds(objects(64), limits, "x").is_ok());
    CHECK(check_json_bounds(objects(65), limits, "x").code() == ErrorCode::invalid_argument);

    Status over = check_json_bounds(nested(65), limits, "the body");
    CHECK(over.code() == ErrorCode::invalid_argument);
    CHECK(over.message() == "the body nests arrays and objects 65 deep (level 65 opens at byte 64); at most 64 levels are allowed");

    // The issue's body: the whole depth is reported, with thousands grouped.
    std::string bomb = R"({"model":)" + nested(75'000) + "}";
    Status deep = check_json_bounds(bomb, limits, "the request body");
    CHECK(deep.code() == ErrorCode::invalid_argument);
    CHECK(contains(deep.message(), "75,001 deep (level 65 opens at byte 72)"));
  }

  TEST_CASE("depth counts objects and arrays alike, and nothing inside strings") {
    JsonLimits limits;
    limits.max_depth = 3;
    CHECK(check_json_bounds(R"({"a":[{"b":1}]})", limits, "x").is_ok());
    CHECK(!check_json_bounds(R"({"a":[{"b":[]}]})", limits, "x").is_ok());
    // Brackets and escaped quotes inside strings are text.
    CHECK(check_json_bounds(R"(["[[[[{{{{", "\"[[[[", "\\", "]]]]"])", limits, "x").is_ok());
    CHECK(scan_json_shape(R"(["\"[[[["])", limits).deepest == 1);
    // A key with spaces before its colon is still a key.
    CHECK(scan_json_shape(R"({"k" : [[1]]})", limits).deepest == 3);
  }

  TEST_CASE("invalid JSON: the scan stops where a parser stops, and never loops") {
    JsonLimits limits;
    limits.max_depth = 2;
    // A closing bracket with nothing open ends the scan: what follows is never parsed.
    CHECK(check_json_bounds("[]]" + nested(10), limits, "x").is_ok());
    // Stray colons, a lone quote, an unfinished escape, bytes that are no token.
    for (const char* text : {":", "[:::]", "{1:2}", "\"", "\"\\", "[\"a\\\"]", "\xEF\xBB\xBF[1]", "nul", "-", ""}) {
      JsonShape shape = scan_json_shape(text, limits);
      CHECK(shape.deepest <= 1);
    }
    // An unterminated deep prefix is still refused for its depth.
    CHECK(!check_json_bounds(std::string(3, '['), limits, "x").is_ok());
  }

  TEST_CASE("budget arithmetic: floor, proportion, ceiling, no overflow") {
    JsonLimits limits;  // 24 per byte, at least 1 MiB, no ceiling
    CHECK(limits.budget_for(0) == size_t(1) << 20);
    CHECK(limits.budget_for(1000) == size_t(1) << 20);
    CHECK(limits.budget_for(size_t(1) << 20) == size_t(24) << 20);
    CHECK(limits.budget_for(std::numeric_limits<size_t>::max() / 2) == std::numeric_limits<size_t>::max());

    JsonLimits network = network_json_limits(size_t(16) << 20);
    CHECK(network.max_bytes == size_t(256) << 20);
    CHECK(network.budget_for(size_t(1) << 20) == size_t(24) << 20);
    CHECK(network.budget_for(size_t(16) << 20) == size_t(256) << 20);  // the ceiling, not 384 MiB
    CHECK(network_json_limits(std::numeric_limits<size_t>::max()).max_bytes == std::numeric_limits<size_t>::max());
    // A ceiling under the floor wins.
    CHECK(network_json_limits(1024).budget_for(10) == 16384);
  }

  TEST_CASE("huge flat arrays: refused by their estimate, before anything is built") {
    JsonLimits limits = network_json_limits(size_t(16) << 20);
    // The issue's 16 MiB body of empty arrays: 64 bytes each once parsed.
    const size_t inner = (size_t(16) << 20) / 3 - 1;
    std::string empties = list_of("[]", inner);
    JsonShape shape = scan_json_shape(empties, limits);
    CHECK(shape.values == inner + 1);
    CHECK(shape.deepest == 2);
    // The outer array: a slot and a vector; each inner one a doubled slot and a
    // vector; the parser's base and two levels; 48 per value for the stacks.
    CHECK(shape.estimated_bytes == 48 + inner * 64 + 1024 + 2 * 24 + 48 * shape.values);
    Status refused = check_json_bounds(empties, limits, "the request body");
    CHECK(refused.code() == ErrorCode::resource_exhausted);
    CHECK(refused.message() == "the request body (16,777,213 bytes, 5,592,405 values) would take about 597.3 MiB once "
                               "parsed; the limit for it is 256.0 MiB (24 per byte of JSON, at least 1.0 MiB, at most "
                               "256.0 MiB)");
    // The same shape at 1 MiB is refused for its proportion (37 bytes per byte), not the ceiling.
    CHECK(check_json_bounds(list_of("[]", 350'000), limits, "x").code() == ErrorCode::resource_exhausted);
    // Token ids (11 per byte) and a string prompt as long as a body may be
    // (about 12.4 per byte) pass.
    CHECK(check_json_bounds(list_of("128000", 2'300'000), limits, "x").is_ok());
    CHECK(check_json_bounds(quoted((size_t(16) << 20) - 2), limits, "x").is_ok());
    // Past the ceiling (a body over the server's limit, which the HTTP layer refuses first) both are refused.
    CHECK(!check_json_bounds(list_of("128000", 3'600'000), limits, "x").is_ok());
    CHECK(!check_json_bounds(quoted(size_t(21) << 20), limits, "x").is_ok());
  }

#if HOSTRUN_TEST_COUNTS_HEAP
  TEST_CASE("the estimate bounds the peak heap of parsing and destroying, within 2.7x") {
    struct Case {
      std::string name;
      std::string text;
      double most_over;  // estimate / heap at most this
    };
    std::string members = "{";
    for (int i = 0; i < 100'001; ++i) members += (i ? ",\"" : "\"") + std::to_string(i) + "\":" + (i % 2 ? "0" : "{}");
    members += "}";
    std::string nested_zeros = "{\"a\":" + list_of("0", (size_t(1) << 17) + 1) + "}";
    const Case cases[] = {
        {"empty arrays", list_of("[]", 100'001), 1.8},
        {"empty objects", list_of("{}", 100'001), 1.6},
        {"zeros", list_of("0", 100'001), 2.5},
        {"zeros one level down, just past a doubling", nested_zeros, 1.1},
        {"token ids", list_of("128000", 100'001), 2.5},
        {"empty strings", list_of("\"\"", 100'001), 1.7},
        {"strings of 16 bytes", list_of("\"0123456789abcdef\"", 100'001), 1.5},
        {"escaped strings", list_of(R"("\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9")", 100'001), 2.3},
        {"one long string", quoted(size_t(4) << 20), 2.7},
        {"a long string with a bad byte at its end", "[\"" + std::string(size_t(1) << 20, 'a') + "\x01\"]", 1.5},
        {"a long number, too large for a double", "[" + std::string(size_t(1) << 20, '1') + "]", 1.3},
        {"members", members, 1.4},
        {"one-member objects", list_of(R"({"":0})", 100'001), 1.6},
        {"lists of lists", list_of("[[0,0]]", 100'001), 1.9},
        {"chat messages", "{\"messages\":" + list_of(R"({"role":"user","content":"hello there"})", 20'001) + "}", 1.5},
    };
    for (const Case& c : cases) {
      CAPTURE(c.name);
      const size_t estimate = scan_json_shape(c.text, JsonLimits{}).estimated_bytes;
      const size_t before = g_heap_in_use;
      g_heap_peak = before;
      try {
        json parsed = json::parse(c.text);
      } catch (const json::exception&) {
        // The last two fail; their messages were built all the same.
      }
      const size_t peak = g_heap_peak - before;
      CHECK(g_heap_in_use == before);
      CHECK(estimate >= peak);
      CHECK(double(estimate) <= c.most_over * double(peak));
    }
  }
#endif

  TEST_CASE("parse_json_bounded: the value, or why not") {
    JsonLimits limits;
    limits.max_depth = 4;
    auto ok = parse_json_bounded<json>(R"({"a":[1,2]})", limits, "the body");
    REQUIRE(ok.has_value());
    CHECK(ok.value()["a"].size() == 2);

    auto syntax = parse_json_bounded<json>(R"({"a": tru})", limits, "the body");
    CHECK(syntax.status().code() == ErrorCode::invalid_argument);
    CHECK(contains(syntax.status().message(), "the body is not valid JSON (at byte 10)"));

    auto range = parse_json_bounded<nlohmann::ordered_json>("1e999", limits, "the body");
    CHECK(range.status().code() == ErrorCode::invalid_argument);
    CHECK(contains(range.status().message(), "the body is not usable JSON"));

    // nlohmann quotes the token it stopped at; the message keeps 300 bytes of it.
    auto long_token = parse_json_bounded<json>("[\"" + std::string(100'000, 'a') + "\x01\"]", limits, "the body");
    CHECK(long_token.status().code() == ErrorCode::invalid_argument);
    CHECK(long_token.status().message().size() < 400);
    CHECK(long_token.status().message().ends_with("..."));

    CHECK(parse_json_bounded<json>(nested(5), limits, "x").status().code() == ErrorCode::invalid_argument);
    CHECK(parse_json_bounded<json>(list_of("[]", 100'000), limits, "x").status().code() ==
          ErrorCode::resource_exhausted);
  }

  TEST_CASE("describe_json_value: type and size, never the contents") {
    CHECK(describe_json_value(json(nullptr)) == "null");
    CHECK(describe_json_value(json(true)) == "true");
    CHECK(describe_json_value(json(-3)) == "the integer -3");
    CHECK(describe_json_value(json(uint64_t(18446744073709551615u))) == "the integer 18446744073709551615");
    CHECK(describe_json_value(json(0.5)) == "the number 0.5");
    CHECK(describe_json_value(json("")) == "an empty string");
    CHECK(describe_json_value(json("json_object")) == "the string \"json_object\"");
    CHECK(describe_json_value(json(std::string(33, 'x'))) == "a string of 33 bytes");
    CHECK(describe_json_value(json(std::string(12'345, 'x'))) == "a string of 12,345 bytes");
    CHECK(describe_json_value(json::array()) == "an empty array");
    CHECK(describe_json_value(json::array({1})) == "an array of 1 element");
    CHECK(describe_json_value(json::parse("[[[[1]]],2,3]")) == "an array of 3 elements");
    CHECK(describe_json_value(json::object()) == "an empty object");
    CHECK(describe_json_value(json::parse(R"({"a":{"b":{}}})")) == "an object of 1 member");
    CHECK(describe_json_value(nlohmann::ordered_json::parse(R"({"a":1,"b":2})")) == "an object of 2 members");
    // Deep values are described without walking them: a 100,000-deep array
    // (built by the parser, which does not recurse) is one element.
    json deep = json::parse(nested(100'000));
    CHECK(describe_json_value(deep) == "an array of 1 element");
  }
}
