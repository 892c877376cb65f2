// `hostrun tokenize MODEL_DIR|TOKENIZER_JSON`: text <-> ids through the
// hf_tokenizer plugin, the tool to reach for when a template or a stop word
// misbehaves.
//
//   echo "Hello" | hostrun tokenize MODEL_DIR              -> [9906]
//   echo "[9906]" | hostrun tokenize MODEL_DIR --decode    -> Hello
//   echo '[{"role":"user","content":"Hi"}]' | hostrun tokenize MODEL_DIR --chat
//   hostrun tokenize MODEL_DIR --jsonl < strings.jsonl     one id list per line
#include <fmt/format.h>
#include <hostrun/json_bounds.hpp>

#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "chat_template.hpp"
#include "commands.hpp"
#include "tokenizer_loading.hpp"

namespace hostrun::cli {

namespace {

struct TokenizeOptions {
  std::string path;
  bool no_special = false;
  bool decode = false;
  bool chat = false;
  bool render = false;
  bool jsonl = false;
  bool skip_special = false;
  std::optional<bool> add_bos;
  std::string chat_template = "llama3";
  std::string plugin = "hf_tokenizer";
};

// One unit of input (the whole of stdin, or one line of it) to one line of output.
Result<std::string> handle(const Tokenizer& tokenizer, const core::ChatTemplate* chat_template,
                           const TokenizeOptions& o, std::string_view input, bool input_is_json) {
  using nlohmann::json;
  // What the input is when it is not what a flag expects: why it could not be
  // parsed (too deep, too large, not JSON), or its type and size.
  auto found = [](const Result<json>& parsed) {
    return parsed ? "got " + describe_json_value(parsed.value()) : parsed.status().message();
  };
  if (o.decode) {
    Result<json> parsed = parse_json_bounded<json>(input, JsonLimits{}, "the input");
    if (!parsed || !parsed->is_array())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("--decode expects a JSON array of token ids, e.g. [9906, 1917]; {}", found(parsed)));
    std::vector<TokenId> ids;
    for (const auto& v : *parsed) {
      if (!v.is_number_integer())
        return Status(ErrorCode::invalid_argument, fmt::format("--decode: {} is not a token id", describe_json_value(v)));
      ids.push_back(v.get<TokenId>());
    }
    std::string text;
    DecodeOptions options;
    options.skip_special_tokens = o.skip_special;
    if (Status s = tokenizer.decode(ids, options, text); !s) return s;
    if (o.jsonl) return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
    return text;
  }

  std::vector<TokenId> ids;
  if (o.chat) {
    Result<json> parsed = parse_json_bounded<json>(input, JsonLimits{}, "the input");
    if (!parsed || !parsed->is_array())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("--chat expects a JSON array of messages, e.g. [{{\"role\": \"user\", \"content\": "
                                "\"Hi\"}}]; {}", found(parsed)));
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < parsed->size(); ++i) {
      const json& m = (*parsed)[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        return Status(ErrorCode::invalid_argument,
                      fmt::format("--chat: message {} is not {{\"role\": string, \"content\": string}}; got {}",
                                  i + 1, describe_json_value(m)));
      messages.push_back(ChatMessage{m["role"].get<std::string>(), m["content"].get<std::string>(), {}});
    }
    auto segments = core::render_chat_segments(*chat_template, messages, true);
    if (!segments) return segments.status();
    if (o.render) {
      std::string text;
      for (const auto& s : *segments) text += s.text;
      return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
    }
    // As transformers' apply_chat_template(tokenize=True): the rendered text,
    // specials parsed, no BOS added by the tokenizer (the template wrote it).
    // With --no-special, only the template's own text may hold special tokens.
    EncodeOptions options;
    options.add_bos = o.add_bos.value_or(false);
    for (size_t i = 0; i < segments->size(); ++i) {
      const auto& segment = (*segments)[i];
      options.parse_special = segment.from_template || !o.no_special;
      if (Status s = tokenizer.encode(segment.text, options, ids); !s) return s;
      options.add_bos = false;
    }
  } else {
    std::string text;
    if (input_is_json) {
      Result<json> parsed = parse_json_bounded<json>(input, JsonLimits{}, "the line");
      if (!parsed || !parsed->is_string())
        return Status(ErrorCode::invalid_argument,
                      fmt::format("--jsonl expects one JSON string per line, e.g. \"Hello\"; {}", found(parsed)));
      text = parsed->get<std::string>();
    } else {
      text = std::string(input);
    }
    EncodeOptions options;
    options.add_bos = o.add_bos;
    options.parse_special = !o.no_special;
    if (Status s = tokenizer.encode(text, options, ids); !s) return s;
  }
  return json(ids).dump();
}

int run(const GlobalOptions& global, const TokenizeOptions& o) {
  const core::ChatTemplate* chat_template = nullptr;
  core::ChatTemplate resolved_template;
  if (o.chat) {
    auto t = core::resolve_chat_template(o.chat_template);
    if (!t) {
      fmt::print(stderr, "hostrun tokenize: {}\n", t.status().message());
      return 2;
    }
    resolved_template = std::move(*t);
    chat_template = &resolved_template;
  }
  core::PluginRegistry registry = load_plugins(global);
  auto tokenizer = load_tokenizer(registry, o.plugin, o.path);
  if (!tokenizer) {
    fmt::print(stderr, "hostrun tokenize: {}\n", tokenizer.status().message());
    return 1;
  }
  std::ios::sync_with_stdio(false);
  if (!o.jsonl) {
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    // A terminal or `echo` adds one newline the user did not mean as text; a
    // file piped in is taken as is except for that one final newline.
    if (!o.decode && !o.chat && !input.empty() && input.back() == '\n') {
      input.pop_back();
      if (!input.empty() && input.back() == '\r') input.pop_back();
    }
    auto out = handle(**tokenizer, chat_template, o, input, false);
    if (!out) {
      fmt::print(stderr, "hostrun tokenize: {}\n", out.status().message());
      return 1;
    }
    fmt::print("{}{}", *out, o.decode ? "" : "\n");
    return 0;
  }
  std::string line;
  size_t line_number = 0;
  std::string output;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto out = handle(**tokenizer, chat_template, o, line, true);
    if (!out) {
      fmt::print(stderr, "hostrun tokenize: stdin line {}: {}\n", line_number, out.status().message());
      return 1;
    }
    output += *out;
    output += '\n';
    if (output.size() > (1 << 20)) {
      fwrite(output.data(), 1, output.size(), stdout);
      output.clear();
    }
  }
  fwrite(output.data(), 1, output.size(), stdout);
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app, GlobalOptions& options) {
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of stdin's text as JSON (or the reverse with "
                                             "--decode), through the tokenizer plugin");
  auto o = std::make_shared<TokenizeOptions>();
  cmd->add_option("MODEL", o->path, "A model folder holding tokenizer.json, or a tokenizer.json")->required();
  cmd->add_flag("--no-special", o->no_special,
                "Treat special-token text in the input (\"<|eot_id|>\") as plain text; with --chat, only message "
                "contents are treated so");
  cmd->add_flag("--decode", o->decode, "Read a JSON list of ids and print their text");
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave special tokens out of the text");
  cmd->add_flag("--chat", o->chat,
                "Read a JSON list of {role, content} messages and tokenize it rendered through the chat template");
  cmd->add_flag("--render", o->render, "With --chat: print the rendered prompt (a JSON string) instead of ids");
  cmd->add_option("--chat-template", o->chat_template,
                  "Built-in template name (llama3, llava-llama3) or a TOML file with a [chat_template] table")
      ->type_name("NAME|FILE")
      ->capture_default_str();
  cmd->add_flag("--jsonl", o->jsonl,
                "One input per line (a JSON string; a JSON id list with --decode; a message list with --chat), "
                "one JSON result per output line");
  cmd->add_flag("--bos,!--no-bos", o->add_bos,
                "Add (or don't) the tokenizer's BOS; default: as tokenizer_config.json / the post-processor say");
  cmd->add_option("--tokenizer-plugin", o->plugin, "The tokenizer plugin to load")->capture_default_str();
  cmd->callback([&options, o] { options.exit_code = run(options, *o); });
}

}  // namespace hostrun::cli
