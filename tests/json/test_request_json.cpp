// The api_server's request parser on hostile bodies (issue 19 item 1): a
// value nested 75,000 deep in any field is a 400 that names the depth, a body
// too large once parsed is a 413, and no error message repeats what it got.
#include <doctest/doctest.h>

#include <string>

#include "openai_request.hpp"

using namespace hostrun;

namespace {

std::string deep_array(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

const std::string kMessages = R"("messages":[{"role":"user","content":"hi"}])";

// The error a body gets, or an empty one when it is accepted.
api::ApiError error_of(bool chat, const std::string& body, const JsonLimits& limits = network_json_limits(16 << 20)) {
  try {
    if (chat)
      api::parse_chat_request(body, limits);
    else
      api::parse_completion_request(body, limits);
  } catch (const api::ApiException& e) {
    return e.error;
  }
  return {0, "", "", "", ""};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_SUITE("request_json") {
  TEST_CASE("a value nested 75,000 deep in any field: 400 naming the depth, before any field is read") {
    const std::string bomb = deep_array(75'000);  // 150,000 bytes
    for (const char* field : {"model", "messages", "temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "n",
                              "seed", "stream", "stream_options", "user", "tools", "response_format", "logprobs",
                              "top_logprobs", "unknown_field"}) {
      CAPTURE(field);
      api::ApiError e = error_of(true, "{" + kMessages + ",\"" + field + "\":" + bomb + "}");
      CHECK(e.status == 400);
      CHECK(contains(e.message, "the request body nests arrays and objects 75,001 deep"));
      CHECK(contains(e.message, "at most 64 levels are allowed"));
    }
    for (const char* field : {"prompt", "echo", "suffix", "best_of", "logprobs"}) {
      CAPTURE(field);
      api::ApiError e = error_of(false, std::string("{\"prompt\":\"x\",\"") + field + "\":" + bomb + "}");
      CHECK(e.status == 400);
      CHECK(contains(e.message, "75,001 deep"));
    }
    // In message content, as objects rather than arrays.
    std::string objects;
    for (int i = 0; i < 75'000; ++i) objects += R"({"text":)";
    objects += "1" + std::string(75'000, '}');
    api::ApiError e = error_of(true, R"({"messages":[{"role":"user","content":)" + objects + "}]}");
    CHECK(e.status == 400);
    CHECK(contains(e.message, "75,003 deep"));
  }

  TEST_CASE("a body that would balloon once parsed: 413 with the numbers") {
    std::string empties = "{" + kMessages + ",\"x\":[[]";
    for (int i = 0; i < 400'000; ++i) empties += ",[]";
    empties += "]}";
    api::ApiError e = error_of(true, empties);
    CHECK(e.status == 413);
    CHECK(contains(e.message, "once parsed; the limit for it is"));
    // The same body under a larger budget is parsed (and the unknown field ignored).
    JsonLimits roomy = network_json_limits(16 << 20);
    roomy.bytes_per_input_byte = 48;
    CHECK(error_of(true, empties, roomy).status == 0);
  }

  TEST_CASE("wrong types are described by type and size, never shown") {
    const std::string deep_but_allowed = deep_array(60);
    api::ApiError e = error_of(true, "{" + kMessages + ",\"model\":" + deep_but_allowed + "}");
    CHECK(e.message == "'model' must be a string, got an array of 1 element");
    e = error_of(true, "{" + kMessages + ",\"stop\":{\"a\":1,\"b\":[2]}}");
    CHECK(e.message == "'stop' must be a string or an array of strings, got an object of 2 members");
    e = error_of(true, "{" + kMessages + ",\"n\":\"three\"}");
    CHECK(e.message == "'n' must be an integer, got the string \"three\"");
    e = error_of(true, "{" + kMessages + ",\"temperature\":3}");
    CHECK(e.message == "'temperature' must be at least 0 and at most 2, got 3");
    const std::string long_role(1'000'000, 'r');
    e = error_of(true, R"({"messages":[{"role":")" + long_role + R"(","content":"x"}]})");
    CHECK(e.message == "'messages[0].role' is a string of 1,000,000 bytes; expected system, user or assistant");
    e = error_of(true, R"({"messages":[{"role":"user","content":[{"type":")" + long_role + R"("}]}]})");
    CHECK(e.message == "'messages[0].content[0].type' is a string of 1,000,000 bytes; this server takes text and image_url parts");
    e = error_of(false, R"({"prompt":[[1, [2]]]})");
    CHECK(e.message == "'prompt[0][1]' must be a token id (an integer >= 0), got an array of 1 element");
    e = error_of(true, "[" + deep_but_allowed + "]");
    CHECK(e.message == "the request body must be a JSON object, got an array of 1 element");
  }
}
