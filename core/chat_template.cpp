#include "chat_template.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

namespace hostrun::core {

namespace fs = std::filesystem;

namespace {

// Llama-3 Instruct's tokenizer_config.json template, written as data:
//   {% for message in messages %}
//     {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
//                      + message['content'] | trim + '<|eot_id|>' %}
//     {% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}
//   {% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
// No default system prompt (LMDeploy's llama3 template has none either); a
// reply ends at <|eot_id|>, and a base model's text at <|end_of_text|>.
ChatTemplate make_llama3() {
  ChatTemplate t;
  t.name = "llama3";
  t.system_prefix = "<|start_header_id|>system<|end_header_id|>\n\n";
  t.user_prefix = "<|start_header_id|>user<|end_header_id|>\n\n";
  t.assistant_prefix = "<|start_header_id|>assistant<|end_header_id|>\n\n";
  t.system_suffix = t.user_suffix = t.assistant_suffix = "<|eot_id|>";
  t.generation_prompt = t.assistant_prefix;
  t.bos = "<|begin_of_text|>";
  t.bos_rule = BosRule::first_message;
  t.trim_content = true;
  t.stop_tokens = {"<|eot_id|>", "<|end_of_text|>"};
  return t;
}

// xtuner/llava-llama-3-8b-v1_1 was trained with xtuner's `llama3_chat`
// template, which is Llama-3's wire format (same headers, <|eot_id|> after
// every turn, stop word <|eot_id|>, no default system prompt), and its
// converted -hf/-transformers releases ship the llama3 Jinja template above.
// The only addition is the image: xtuner writes "<image>\n" before the user's
// text, and the vision encoder's embeddings replace "<image>".
ChatTemplate make_llava_llama3() {
  ChatTemplate t = make_llama3();
  t.name = "llava-llama3";
  t.image_prefix = "<image>\n";
  return t;
}

const std::array<ChatTemplate, 2>& builtins() {
  static const std::array<ChatTemplate, 2> templates{make_llama3(), make_llava_llama3()};
  return templates;
}

const SettingSpec kSettings[] = {
    {"base", SettingType::string, "Built-in template to start from (llama3, llava-llama3); keys here override it"},
    {"name", SettingType::string, "Name shown in logs (default: the base's name, or the file's)"},
    {"system_prefix", SettingType::string, "Text before a system message's content"},
    {"system_suffix", SettingType::string, "Text after a system message's content"},
    {"user_prefix", SettingType::string, "Text before a user message's content"},
    {"user_suffix", SettingType::string, "Text after a user message's content"},
    {"assistant_prefix", SettingType::string, "Text before an assistant message's content"},
    {"assistant_suffix", SettingType::string, "Text after an assistant message's content"},
    {"default_system", SettingType::string, "System prompt used when the conversation has none (\"\" = none)"},
    {"generation_prompt", SettingType::string, "Text that opens the assistant's turn when a reply is wanted"},
    {"bos", SettingType::string, "BOS token as text, written by the template (see bos_rule)"},
    {"bos_rule", SettingType::string, "Where the template writes bos: none, first_message or always"},
    {"trim_content", SettingType::boolean, "Strip whitespace around each message's content (Jinja's | trim)"},
    {"image_prefix", SettingType::string, "Text put before a message's content once per attached image"},
    {"stop_tokens", SettingType::string_list, "Token strings that end a reply (e.g. \"<|eot_id|>\")"},
    {"stop_strings", SettingType::string_list, "Decoded text that ends a reply"},
};

std::string builtin_names() {
  std::string out;
  for (const auto& t : builtins()) out += (out.empty() ? "" : ", ") + t.name;
  return out;
}

// Python's str.isspace() set, which Jinja's `trim` (str.strip) uses: the
// Unicode White_Space characters plus the separators U+001C..U+001F.
size_t python_space_at(std::string_view s, size_t pos) {
  auto b = static_cast<uint8_t>(s[pos]);
  if (b == ' ' || (b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x1F)) return 1;
  static constexpr std::string_view kWide[] = {"\xC2\x85",     "\xC2\xA0",     "\xE1\x9A\x80", "\xE2\x80\xA8",
                                               "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (auto w : kWide)
    if (s.substr(pos, w.size()) == w) return w.size();
  if (pos + 2 < s.size() && s.substr(pos, 2) == "\xE2\x80") {
    auto c = static_cast<uint8_t>(s[pos + 2]);
    if (c >= 0x80 && c <= 0x8A) return 3;  // U+2000..U+200A
  }
  return 0;
}

std::string_view python_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t w = python_space_at(s, begin);
    if (!w) break;
    begin += w;
  }
  size_t end = begin;  // end of the last non-space character
  for (size_t i = begin; i < s.size();) {
    size_t w = python_space_at(s, i);
    if (w) {
      i += w;
    } else {
      ++i;
      while (i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) ++i;
      end = i;
    }
  }
  return s.substr(begin, end - begin);
}

}  // namespace

std::span<const ChatTemplate> builtin_chat_templates() { return builtins(); }

const ChatTemplate* find_builtin_chat_template(std::string_view name) {
  for (const auto& t : builtins())
    if (t.name == name) return &t;
  return nullptr;
}

HostTableSchema chat_template_schema() { return HostTableSchema{"chat_template", std::span<const SettingSpec>(kSettings)}; }

Result<ChatTemplate> chat_template_from_settings(const Settings& settings, const std::string& where) {
  ChatTemplate t;
  if (settings.has("base")) {
    const std::string& base = settings.get_string("base");
    const ChatTemplate* found = find_builtin_chat_template(base);
    if (!found)
      return Status(ErrorCode::invalid_argument, fmt::format("{}: base = \"{}\" is not a built-in chat template "
                                                             "(built-ins: {})", where, base, builtin_names()));
    t = *found;
  }
  auto take = [&](const char* key, std::string& field) {
    if (settings.has(key)) field = settings.get_string(key);
  };
  take("name", t.name);
  take("system_prefix", t.system_prefix);
  take("system_suffix", t.system_suffix);
  take("user_prefix", t.user_prefix);
  take("user_suffix", t.user_suffix);
  take("assistant_prefix", t.assistant_prefix);
  take("assistant_suffix", t.assistant_suffix);
  take("default_system", t.default_system);
  take("generation_prompt", t.generation_prompt);
  take("bos", t.bos);
  take("image_prefix", t.image_prefix);
  if (settings.has("trim_content")) t.trim_content = settings.get_bool("trim_content");
  if (settings.has("stop_tokens")) t.stop_tokens = settings.get_strings("stop_tokens");
  if (settings.has("stop_strings")) t.stop_strings = settings.get_strings("stop_strings");
  if (settings.has("bos_rule")) {
    const std::string& rule = settings.get_string("bos_rule");
    if (rule == "none") t.bos_rule = BosRule::none;
    else if (rule == "first_message") t.bos_rule = BosRule::first_message;
    else if (rule == "always") t.bos_rule = BosRule::always;
    else
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: bos_rule = \"{}\": expected none, first_message or always", where, rule));
  }
  if (t.bos_rule != BosRule::none && t.bos.empty())
    return Status(ErrorCode::invalid_argument, fmt::format("{}: bos_rule asks for a BOS but bos is empty", where));
  for (const auto& s : t.stop_strings)
    if (s.empty()) return Status(ErrorCode::invalid_argument, fmt::format("{}: stop_strings holds an empty string", where));
  if (t.user_prefix.empty() && t.assistant_prefix.empty() && t.user_suffix.empty())
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}: the template gives users and assistants neither prefix nor suffix; set base = "
                              "\"llama3\" or the *_prefix/*_suffix keys", where));
  return t;
}

Result<ChatTemplate> resolve_chat_template(std::string_view name_or_file) {
  if (const ChatTemplate* t = find_builtin_chat_template(name_or_file)) return *t;
  fs::path file(name_or_file);
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    return Status(ErrorCode::not_found,
                  fmt::format("chat template '{}' is neither a built-in ({}) nor a TOML file with a [chat_template] "
                              "table", name_or_file, builtin_names()));
  auto manifest = Manifest::parse_file(file);
  if (!manifest) return manifest.status();
  const ManifestTable* table = nullptr;
  for (const auto& t : manifest->tables()) {
    if (t.name != "chat_template")
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: unexpected table [{}]: a chat template file holds only [chat_template]",
                                t.origin.describe(), t.name));
    table = &t;
  }
  if (!table) return Status(ErrorCode::invalid_argument, fmt::format("{}: no [chat_template] table", file.string()));
  std::map<std::string, ValueOrigin> origins;
  std::vector<std::string> problems;
  Settings settings = validate_settings(std::span<const SettingSpec>(kSettings), table->values, "chat_template",
                                        "hostrun", manifest->base_dir(), origins, problems);
  if (!problems.empty()) {
    std::string joined;
    for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
    return Status(ErrorCode::invalid_argument, joined);
  }
  auto made = chat_template_from_settings(settings, fmt::format("{}: [chat_template]", file.string()));
  if (made && made->name.empty()) made->name = file.stem().string();
  return made;
}

Result<std::vector<ChatSegment>> render_chat_segments(const ChatTemplate& t, std::span<const ChatMessage> messages,
                                                      bool add_generation_prompt) {
  std::vector<ChatSegment> out;
  auto put = [&](std::string_view text, bool from_template) {
    if (text.empty()) return;
    if (!out.empty() && out.back().from_template == from_template)
      out.back().text += text;
    else
      out.push_back(ChatSegment{std::string(text), from_template});
  };
  auto content_of = [&](std::string_view content) { return t.trim_content ? python_strip(content) : content; };
  bool has_system = !messages.empty() && messages.front().role == "system";
  bool default_system = !has_system && !t.default_system.empty();
  if (t.bos_rule == BosRule::always || (t.bos_rule == BosRule::first_message && (!messages.empty() || default_system)))
    put(t.bos, true);
  if (default_system) {
    put(t.system_prefix, true);
    put(content_of(t.default_system), false);
    put(t.system_suffix, true);
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string *prefix, *suffix;
    if (m.role == "system") prefix = &t.system_prefix, suffix = &t.system_suffix;
    else if (m.role == "user") prefix = &t.user_prefix, suffix = &t.user_suffix;
    else if (m.role == "assistant") prefix = &t.assistant_prefix, suffix = &t.assistant_suffix;
    else
      return Status(ErrorCode::invalid_argument,
                    fmt::format("message {}: role '{}' is not one that chat template '{}' knows (system, user, "
                                "assistant)", i + 1, m.role, t.name));
    if (!m.images.empty() && t.image_prefix.empty())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("message {}: it carries {} image(s), but chat template '{}' has no image_prefix (a "
                                "text-only model?)", i + 1, m.images.size(), t.name));
    put(*prefix, true);
    // The image marker is template text: the vision path looks for it.
    for (size_t k = 0; k < m.images.size(); ++k) put(t.image_prefix, true);
    put(content_of(m.content), false);
    put(*suffix, true);
  }
  if (add_generation_prompt) put(t.generation_prompt, true);
  return out;
}

Result<std::string> render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages,
                                bool add_generation_prompt) {
  auto segments = render_chat_segments(t, messages, add_generation_prompt);
  if (!segments) return segments.status();
  std::string text;
  for (const auto& s : *segments) text += s.text;
  return text;
}

}  // namespace hostrun::core
