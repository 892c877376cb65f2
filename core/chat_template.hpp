// Chat templates as data: how a list of messages becomes the prompt text.
//
// Models ship a Jinja template; the ones we serve are all of one shape (a
// prefix and a suffix around each message, a BOS rule, a prompt that opens
// the assistant's turn), so a template here is that shape's fields, read from
// a manifest's [chat_template] table or a built-in. Rendering is exact: the
// tests compare it with the model's own Jinja template as rendered by the JS
// oracle (tests/tokenizer).
//
//   [chat_template]
//   base = "llama3"                      # start from a built-in, then override
//   default_system = "You are a helpful assistant."
//   stop_strings = ["\nUser:"]
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/config.hpp"
#include "hostrun/engine.hpp"
#include "hostrun/status.hpp"
#include "manifest.hpp"

namespace hostrun::core {

enum class BosRule : uint8_t {
  none,           // the template writes no BOS (the tokenizer may still add one)
  first_message,  // BOS before the first message; nothing when there are no messages
  always,         // BOS at the very start, even of an empty conversation
};

struct ChatTemplate {
  std::string name;
  std::string system_prefix, system_suffix;
  std::string user_prefix, user_suffix;
  std::string assistant_prefix, assistant_suffix;
  std::string default_system;     // used when the first message is not a system one; "" = none
  std::string generation_prompt;  // opens the assistant's turn when a reply is wanted
  std::string bos;                // BOS as text, e.g. "<|begin_of_text|>"
  BosRule bos_rule = BosRule::none;
  bool trim_content = false;      // strip whitespace around each content, as Jinja's `| trim`
  std::string image_prefix;       // put before a message's content once per image; "" = images refused
  std::vector<std::string> stop_tokens;   // token strings that end a reply, e.g. "<|eot_id|>"
  std::vector<std::string> stop_strings;  // decoded text that ends a reply
};

// A piece of rendered text: template text (may hold special-token text) or a
// message's content (which a safe caller encodes with special parsing off).
struct ChatSegment {
  std::string text;
  bool from_template = true;
};

// Built-ins: "llama3" and "llava-llama3" (see docs/tokenizer.md for where each comes from).
std::span<const ChatTemplate> builtin_chat_templates();
const ChatTemplate* find_builtin_chat_template(std::string_view name);

// The [chat_template] host table: pass it to core::resolve() so manifests are
// checked like plugin tables.
HostTableSchema chat_template_schema();

// A template from a validated [chat_template] table. `where` names the table in errors.
Result<ChatTemplate> chat_template_from_settings(const Settings& settings, const std::string& where);

// `--chat-template NAME|FILE`: a built-in name, or a TOML file whose only
// table is [chat_template].
Result<ChatTemplate> resolve_chat_template(std::string_view name_or_file);

// Renders messages (roles system, user, assistant). With add_generation_prompt
// the text ends by opening the assistant's turn.
Result<std::vector<ChatSegment>> render_chat_segments(const ChatTemplate& chat_template,
                                                      std::span<const ChatMessage> messages,
                                                      bool add_generation_prompt = true);
Result<std::string> render_chat(const ChatTemplate& chat_template, std::span<const ChatMessage> messages,
                                bool add_generation_prompt = true);

}  // namespace hostrun::core
