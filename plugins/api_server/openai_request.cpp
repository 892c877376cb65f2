#include "openai_request.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "data_url.hpp"
#include "image_common/image.hpp"

namespace hostrun::api {

using nlohmann::json;

void fail(int status, std::string message, std::string param, std::string code, std::string type) {
  throw ApiException{ApiError{status, std::move(message), std::move(type), std::move(param), std::move(code)}};
}

namespace {

// A number as the client wrote it (for range errors), without serialising.
std::string number_text(const json& v) {
  if (v.is_number_unsigned()) return fmt::format("{}", v.get<uint64_t>());
  if (v.is_number_integer()) return fmt::format("{}", v.get<int64_t>());
  return fmt::format("{}", v.get<double>());
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& found) {
  fail(400, fmt::format("'{}' must be {}, got {}", param, expected, describe_json_value(found)), param);
}

// A present, non-null field, or nullptr.
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> number(const json& body, const char* key, double min, double max, bool min_open = false) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  double x = v->get<double>();
  if (!std::isfinite(x) || x < min || x > max || (min_open && x == min))
    fail(400, fmt::format("'{}' must be {} {} and at most {}, got {}", key, min_open ? "over" : "at least", min, max,
                          number_text(*v)),
         key);
  return x;
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t min, int64_t max) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  int64_t x;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    x = u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max() : int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float() && std::isfinite(v->get<double>()) && std::floor(v->get<double>()) == v->get<double>() &&
             std::fabs(v->get<double>()) < 9e18) {
    x = int64_t(v->get<double>());  // 16.0 from a client that has only doubles
  } else {
    wrong_type(key, "an integer", *v);
  }
  if (x < min || x > max) fail(400, fmt::format("'{}' must be between {} and {}, got {}", key, min, max, number_text(*v)), key);
  return x;
}

std::optional<bool> boolean(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> string(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(key, "a string", *v);
  return v->get<std::string>();
}

// The fields /v1/chat/completions and /v1/completions share.
void read_common(const json& body, ParsedRequest& out) {
  if (auto model = string(body, "model")) out.model = *model;
  SamplingParams& sp = out.sampling;
  if (auto v = number(body, "temperature", 0, 2)) sp.temperature = float(*v);
  if (auto v = number(body, "top_p", 0, 1, true)) sp.top_p = float(*v);
  if (auto v = integer(body, "top_k", -1, 1 << 30)) sp.top_k = int32_t(std::max<int64_t>(*v, 0));  // -1: off, as in vLLM
  if (auto v = number(body, "min_p", 0, 1)) sp.min_p = float(*v);
  if (auto v = number(body, "repetition_penalty", 0, 10, true)) sp.repetition_penalty = float(*v);
  if (auto v = number(body, "presence_penalty", -2, 2)) sp.presence_penalty = float(*v);
  if (auto v = number(body, "frequency_penalty", -2, 2)) sp.frequency_penalty = float(*v);
  constexpr int64_t kMaxTokens = 1 << 30;
  std::optional<int64_t> max_tokens = integer(body, "max_tokens", 1, kMaxTokens);
  if (auto v = integer(body, "max_completion_tokens", 1, kMaxTokens)) max_tokens = v;  // the newer name wins
  if (max_tokens) sp.max_tokens = int32_t(*max_tokens);
  if (auto v = integer(body, "min_tokens", 0, kMaxTokens)) sp.min_tokens = int32_t(*v);
  if (const json* stop = field(body, "stop")) {
    auto add = [&](const json& item, const std::string& param) {
      if (!item.is_string()) wrong_type(param, "a string", item);
      if (item.get_ref<const std::string&>().empty()) fail(400, fmt::format("'{}' is an empty stop string", param), param);
      sp.stop.push_back(item.get<std::string>());
    };
    if (stop->is_string()) {
      add(*stop, "stop");
    } else if (stop->is_array()) {
      if (stop->size() > 16) fail(400, fmt::format("'stop' has {} strings; at most 16 are allowed", stop->size()), "stop");
      for (size_t i = 0; i < stop->size(); ++i) add((*stop)[i], fmt::format("stop[{}]", i));
    } else {
      wrong_type("stop", "a string or an array of strings", *stop);
    }
  }
  if (auto v = integer(body, "n", 1, 128)) out.n = int(*v);
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) wrong_type("seed", "an integer", *seed);
    // Any 64-bit integer; a negative one keeps its bits.
    sp.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  }
  if (auto v = boolean(body, "ignore_eos")) sp.ignore_eos = *v;
  if (auto v = boolean(body, "skip_special_tokens")) sp.skip_special_tokens = *v;
  if (auto v = string(body, "user")) out.user = *v;
  if (auto v = boolean(body, "stream")) out.stream = *v;
  if (const json* options = field(body, "stream_options")) {
    if (!options->is_object()) wrong_type("stream_options", "an object", *options);
    if (!out.stream) fail(400, "'stream_options' is only allowed when 'stream' is true", "stream_options");
    if (const json* usage = field(*options, "include_usage")) {
      if (!usage->is_boolean()) wrong_type("stream_options.include_usage", "a boolean", *usage);
      out.include_usage = usage->get<bool>();
    }
  }
  if (const json* tools = field(body, "tools"); tools && !(tools->is_array() && tools->empty()))
    fail(400, "'tools' is not supported by this server", "tools", "unsupported_parameter");
  if (const json* format = field(body, "response_format")) {
    if (!format->is_object()) wrong_type("response_format", "an object", *format);
    const json* type = field(*format, "type");
    if (type && !(type->is_string() && type->get<std::string>() == "text"))
      fail(400, fmt::format("response_format type {} is not supported; only \"text\" is", describe_json_value(*type)),
           "response_format", "unsupported_parameter");
  }
}

// An image_url part's image: {"url": "data:image/png;base64,..."} (or the
// URL as a plain string, which some clients send), or an http(s) URL on a
// host the operator listed, fetched here.
ImageData image_part(const json& part, const std::string& part_param, const ImageFetcher& fetcher) {
  const json* value = field(part, "image_url");
  const std::string param = part_param + ".image_url";
  if (!value) fail(400, fmt::format("'{}' is missing", param), param);
  const json* url = value;
  std::string url_param = param;
  if (value->is_object()) {
    url = field(*value, "url");
    url_param = param + ".url";
    if (!url) fail(400, fmt::format("'{}' is missing", url_param), url_param);
  }
  if (!url->is_string()) wrong_type(url_param, "a string (a data: URL)", *url);
  const std::string& text = url->get_ref<const std::string&>();
  const bool web = text.starts_with("http://") || text.starts_with("https://");
  if (web && fetcher.allowed && fetcher.allowed(text)) {
    Result<std::vector<uint8_t>> fetched = fetcher.fetch(text);
    if (!fetched)
      fail(fetched.status().code() == ErrorCode::resource_exhausted ? 413 : 400,
           fmt::format("'{}': {}", url_param, fetched.status().message()), url_param,
           fetched.status().code() == ErrorCode::permission_denied ? "unsupported_content" : "");
    Result<ImageData> image = image::image_data(std::move(fetched).value());
    if (!image) fail(400, fmt::format("'{}': {}", url_param, image.status().message()), url_param);
    return std::move(image).value();
  }
  if (!text.starts_with("data:") && !text.starts_with("DATA:"))
    fail(400,
         web ? fmt::format("'{}' must be a data: URL (\"data:image/png;base64,...\") or an http(s) URL on a host "
                           "this server fetches images from (--image-url-hosts); it does not fetch from this one",
                           url_param)
             : fmt::format("'{}' must be a data: URL (\"data:image/png;base64,...\"); this server does not fetch URLs "
                           "or files",
                           url_param),
         url_param, "unsupported_content");
  Result<http::DataUrl> data = http::parse_data_url(text, kMaxImageBytes);
  if (!data)
    fail(data.status().code() == ErrorCode::resource_exhausted ? 413 : 400,
         fmt::format("'{}': {}", url_param, data.status().message()), url_param);
  Result<ImageData> image = image::image_data(std::move(data->bytes));
  if (!image) fail(400, fmt::format("'{}': {}", url_param, image.status().message()), url_param);
  return std::move(image).value();
}

// A message's text (its text parts joined) and its images, in order.
ChatMessage message_content(const json& message, size_t index, const std::string& role, const ImageFetcher& fetcher) {
  ChatMessage out{role, {}, {}};
  std::string param = fmt::format("messages[{}].content", index);
  auto it = message.find("content");
  if (it == message.end() || it->is_null()) {
    // An assistant turn that only called tools has no content.
    if (role == "assistant") return out;
    fail(400, fmt::format("'{}' is missing", param), param);
  }
  if (it->is_string()) {
    out.content = it->get<std::string>();
    return out;
  }
  if (!it->is_array()) wrong_type(param, "a string or an array of content parts", *it);
  for (size_t j = 0; j < it->size(); ++j) {
    const json& part = (*it)[j];
    std::string part_param = fmt::format("{}[{}]", param, j);
    if (!part.is_object()) wrong_type(part_param, "an object", part);
    const json* type = field(part, "type");
    if (!type || !type->is_string()) fail(400, fmt::format("'{}.type' must be a string", part_param), part_param + ".type");
    const std::string& kind = type->get_ref<const std::string&>();
    if (kind == "image_url") {
      if (role != "user")
        fail(400, fmt::format("'{}' is an image in a {} message; images go in user messages", part_param, role),
             part_param + ".type", "unsupported_content");
      out.images.push_back(image_part(part, part_param, fetcher));
      continue;
    }
    if (kind != "text")
      fail(400, fmt::format("'{}.type' is {}; this server takes text and image_url parts", part_param,
                            describe_json_value(*type)),
           part_param + ".type", "unsupported_content");
    const json* value = field(part, "text");
    if (!value || !value->is_string()) wrong_type(part_param + ".text", "a string", value ? *value : json());
    out.content += value->get_ref<const std::string&>();
  }
  return out;
}

}  // namespace

json parse_json_object(const std::string& body, const JsonLimits& limits) {
  Result<json> parsed = parse_json_bounded<json>(body, limits, "the request body");
  if (!parsed) fail(parsed.status().code() == ErrorCode::resource_exhausted ? 413 : 400, parsed.status().message());
  if (!parsed->is_object()) fail(400, fmt::format("the request body must be a JSON object, got {}", describe_json_value(*parsed)));
  return std::move(parsed).value();
}

ParsedRequest parse_chat_request(const std::string& body_text, const JsonLimits& limits, const ImageFetcher& images) {
  json body = parse_json_object(body_text, limits);
  ParsedRequest out;
  out.chat = true;
  read_common(body, out);
  const json* messages = field(body, "messages");
  if (!messages) fail(400, "'messages' is missing", "messages");
  if (!messages->is_array()) wrong_type("messages", "an array of messages", *messages);
  if (messages->empty()) fail(400, "'messages' is empty; send at least one message", "messages");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) wrong_type(param, "an object", m);
    const json* role = field(m, "role");
    if (!role || !role->is_string()) wrong_type(param + ".role", "a string", role ? *role : json());
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant")
      fail(400, fmt::format("'{}.role' is {}; expected system, user or assistant", param, describe_json_value(*role)),
           param + ".role");
    out.messages.push_back(message_content(m, i, r, images));
  }
  if (auto v = boolean(body, "logprobs")) out.logprobs = *v;
  if (auto v = integer(body, "top_logprobs", 0, 20)) {
    if (!out.logprobs) fail(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
    out.sampling.top_logprobs = int32_t(*v);
  } else if (out.logprobs) {
    out.sampling.top_logprobs = 0;
  }
  return out;
}

ParsedRequest parse_completion_request(const std::string& body_text, const JsonLimits& limits) {
  json body = parse_json_object(body_text, limits);
  ParsedRequest out;
  out.chat = false;
  out.sampling.max_tokens = 16;
  read_common(body, out);
  const json* prompt = field(body, "prompt");
  if (!prompt) fail(400, "'prompt' is missing", "prompt");
  auto token_ids = [&](const json& list, const std::string& param) {
    std::vector<TokenId> ids;
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_number_integer() || list[i].get<int64_t>() < 0 || list[i].get<int64_t>() > INT32_MAX)
        wrong_type(fmt::format("{}[{}]", param, i), "a token id (an integer >= 0)", list[i]);
      ids.push_back(TokenId(list[i].get<int64_t>()));
    }
    if (ids.empty()) fail(400, fmt::format("'{}' is an empty list of token ids", param), param);
    return ids;
  };
  if (prompt->is_string()) {
    out.prompts.push_back(prompt->get<std::string>());
  } else if (prompt->is_array()) {
    if (prompt->empty()) fail(400, "'prompt' is an empty array", "prompt");
    if ((*prompt)[0].is_number()) {
      out.prompts.push_back(token_ids(*prompt, "prompt"));
    } else {
      for (size_t i = 0; i < prompt->size(); ++i) {
        const json& p = (*prompt)[i];
        std::string param = fmt::format("prompt[{}]", i);
        if (p.is_string())
          out.prompts.push_back(p.get<std::string>());
        else if (p.is_array())
          out.prompts.push_back(token_ids(p, param));
        else
          wrong_type(param, "a string or an array of token ids", p);
      }
    }
  } else {
    wrong_type("prompt", "a string, an array of strings or an array of token ids", *prompt);
  }
  if (out.prompts.size() * size_t(out.n) > 128)
    fail(400, fmt::format("{} prompts x n={} asks for {} choices; at most 128 per request", out.prompts.size(), out.n,
                          out.prompts.size() * size_t(out.n)),
         "n");
  if (auto v = boolean(body, "echo")) out.echo = *v;
  if (auto v = integer(body, "logprobs", 0, 20)) {
    out.logprobs = true;
    out.sampling.top_logprobs = int32_t(*v);
  }
  if (const json* suffix = field(body, "suffix"))
    if (!suffix->is_string() || !suffix->get<std::string>().empty())
      fail(400, "'suffix' (insertion) is not supported", "suffix", "unsupported_parameter");
  if (auto v = integer(body, "best_of", 1, 128); v && *v != out.n)
    fail(400, "'best_of' other than n is not supported", "best_of", "unsupported_parameter");
  return out;
}

void refuse_unfittable_prompts(int32_t session_len, size_t longest_token_bytes, const ParsedRequest& request) {
  if (session_len <= 0 || request.chat) return;
  for (const auto& prompt : request.prompts) {
    const auto* text = std::get_if<std::string>(&prompt);
    if (!text) continue;
    const size_t fewest = fewest_tokens(text->size(), longest_token_bytes);
    if (fewest >= size_t(session_len))
      fail(400,
           fmt::format("This model's maximum context length is {} tokens. However, your prompt of {} bytes is at "
                       "least {} tokens (no token stands for more than {} bytes). Please reduce the length of the "
                       "prompt.",
                       session_len, text->size(), fewest, longest_token_bytes),
           "prompt", "context_length_exceeded");
  }
}

std::vector<PromptInput> engine_prompts(const Tokenizer* tokenizer, const ParsedRequest& request) {
  std::vector<PromptInput> prompts;
  for (const auto& prompt : request.prompts) {
    const auto* text = std::get_if<std::string>(&prompt);
    std::vector<TokenId> ids;
    if (text && tokenizer && tokenizer->encode(*text, {.add_bos = std::nullopt, .parse_special = true}, ids))
      prompts.push_back(std::move(ids));
    else
      prompts.push_back(prompt);
  }
  return prompts;
}

void check_context_length(int32_t session_len, const ParsedRequest& request,
                          const std::vector<PromptInput>& engine_prompts) {
  if (session_len <= 0) return;
  const int64_t max_tokens = std::max<int64_t>(request.sampling.max_tokens, 0);
  const char* what = request.chat ? "messages" : "prompt";
  auto refuse = [&](int64_t prompt_tokens, bool at_least) {
    fail(400,
         fmt::format("This model's maximum context length is {} tokens. However, you requested {}{} tokens ({}{} in "
                     "the {}, {} for the completion). Please reduce the length of the {} or the completion.",
                     session_len, at_least ? "at least " : "", prompt_tokens + max_tokens, at_least ? "at least " : "",
                     prompt_tokens, what, max_tokens, what),
         what, "context_length_exceeded");
  };
  if (request.chat) {
    if (max_tokens >= session_len) refuse(1, true);  // a chat prompt has at least one token
    return;
  }
  for (const auto& prompt : engine_prompts) {
    const auto* ids = std::get_if<std::vector<TokenId>>(&prompt);
    if (!ids) continue;
    const int64_t count = int64_t(ids->size());
    if (count + max_tokens > session_len || count >= session_len) refuse(count, false);
  }
}

ApiError engine_refusal(const Status& refusal, bool chat) {
  ApiError e;
  e.message = refusal.message();
  switch (refusal.code()) {
    case ErrorCode::context_length_exceeded:
      e.status = 400;
      e.param = chat ? "messages" : "prompt";
      e.code = "context_length_exceeded";
      break;
    case ErrorCode::invalid_argument:
    case ErrorCode::unsupported:
      e.status = 400;
      break;
    case ErrorCode::not_found:
      e.status = 404;
      break;
    case ErrorCode::permission_denied:
      e.status = 403;
      break;
    case ErrorCode::resource_exhausted:  // a queue or budget that frees up: retry later
      e.status = 429;
      e.type = "server_error";
      break;
    case ErrorCode::unavailable:
    case ErrorCode::cancelled:
    case ErrorCode::out_of_memory:
      e.status = 503;
      e.type = "server_error";
      break;
    case ErrorCode::deadline_exceeded:
      e.status = 504;
      e.type = "server_error";
      break;
    case ErrorCode::ok:
    case ErrorCode::io_error:
    case ErrorCode::corrupt_data:
    case ErrorCode::internal:
      e.status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

}  // namespace hostrun::api
