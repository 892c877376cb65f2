#include <doctest/doctest.h>

#include "builtin_manifests.hpp"
#include "checkpoint/folder_config.hpp"
#include "manifest.hpp"
#include "manifest_table.hpp"

using namespace hostrun;
using namespace hostrun::core;

namespace {

PluginRegistry fixture_registry() {
  PluginRegistry registry;
  registry.scan({HOSTRUN_TEST_PLUGIN_DIR});
  REQUIRE(registry.find("fixture") != nullptr);
  return registry;
}

Result<ResolvedManifest> resolve_text(const std::string& text, const PluginRegistry& registry) {
  auto manifest = Manifest::parse_string(text, "m.toml", "/base");
  if (!manifest) return manifest.status();
  return resolve(*manifest, registry);
}

}  // namespace

TEST_CASE("a valid manifest resolves with defaults and relative paths") {
  auto registry = fixture_registry();
  auto resolved = resolve_text("[tokenizer]\nplugin = \"fixture\"\nfile = \"tok.json\"\nbudget = 7\nscale = 2\n",
                               registry);
  REQUIRE_MESSAGE(resolved.has_value(), resolved.status().message());
  const ResolvedInstance* tok = resolved->instance("tokenizer");
  REQUIRE(tok);
  CHECK(tok->role == Role::tokenizer);
  CHECK(tok->settings.get_string("file") == "/base/tok.json");
  CHECK(tok->settings.get_int("budget") == 7);
  CHECK(tok->settings.get_number("scale") == 2.0);  // an integer is accepted as a number
  CHECK(tok->settings.get_bool("add_bos") == true);  // default
  CHECK(tok->settings.get_strings("stops").empty());
  CHECK(tok->origins.at("budget").line == 4);
  CHECK(tok->origins.at("add_bos").label == "default");
}

TEST_CASE("a typo in a key names the file, line and key, and suggests the right one") {
  auto registry = fixture_registry();
  auto resolved = resolve_text("[tokenizer]\nplugin = \"fixture\"\nfile = \"x\"\nbugdet = 3\n", registry);
  REQUIRE_FALSE(resolved.has_value());
  const std::string message = resolved.status().message();
  CHECK(message.find("m.toml:4:1") != std::string::npos);
  CHECK(message.find("unknown key 'bugdet'") != std::string::npos);
  CHECK(message.find("did you mean 'budget'") != std::string::npos);
}

TEST_CASE("wrong types, ranges, missing keys and unknown plugins are all reported") {
  auto registry = fixture_registry();
  auto resolved = resolve_text(
      "[tokenizer]\nplugin = \"fixture\"\nadd_bos = \"yes\"\nbudget = 500\nstops = [1, 2]\n"
      "[frontend]\nplugin = \"nonexistent\"\n[model]\nfile = \"m\"\n[wat]\nx = 1\n",
      registry);
  REQUIRE_FALSE(resolved.has_value());
  const std::string m = resolved.status().message();
  CHECK(m.find("m.toml:3:1: 'tokenizer.add_bos' must be a boolean, found a string") != std::string::npos);
  CHECK(m.find("m.toml:4:1: tokenizer.budget = 500 is out of range") != std::string::npos);
  CHECK(m.find("m.toml:5:1: 'tokenizer.stops' must be a array of strings, found a array") != std::string::npos);
  CHECK(m.find("missing required key 'file'") != std::string::npos);
  CHECK(m.find("names plugin 'nonexistent', which was not found (plugins with the frontend role: fixture)") !=
        std::string::npos);
  CHECK(m.find("table [model] has no 'plugin' key") != std::string::npos);
  CHECK(m.find("unknown table [wat]") != std::string::npos);
}

TEST_CASE("TOML syntax errors carry the position") {
  auto manifest = Manifest::parse_string("[tokenizer]\nplugin = \n", "bad.toml", "/");
  REQUIRE_FALSE(manifest.has_value());
  CHECK(manifest.status().message().rfind("bad.toml:2:", 0) == 0);
}

TEST_CASE("flags override manifest values and are typed by the schema") {
  auto registry = fixture_registry();
  auto manifest = Manifest::parse_string("[tokenizer]\nplugin = \"fixture\"\nfile = \"a\"\nbudget = 3\n", "m.toml", "/b");
  REQUIRE(manifest.has_value());
  REQUIRE(manifest->set_override("tokenizer.budget", "42", "--budget").is_ok());
  REQUIRE(manifest->set_override("tokenizer.stops", "x,y", "--stops").is_ok());
  REQUIRE(manifest->set_override("tokenizer.file", "rel/path", "--file").is_ok());
  auto resolved = resolve(*manifest, registry);
  REQUIRE_MESSAGE(resolved.has_value(), resolved.status().message());
  const auto* tok = resolved->instance("tokenizer");
  CHECK(tok->settings.get_int("budget") == 42);
  CHECK(tok->settings.get_strings("stops") == std::vector<std::string>{"x", "y"});
  CHECK(tok->settings.get_string("file") == "rel/path");  // flags are relative to the working folder
  CHECK(tok->origins.at("budget").describe() == "--budget");

  REQUIRE(manifest->set_override("tokenizer.budget", "many", "--budget").is_ok());
  auto bad = resolve(*manifest, registry);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.status().message().find("--budget: 'many' is not a valid integer for tokenizer.budget") !=
        std::string::npos);
  CHECK_FALSE(manifest->set_override("nodot", "1", "--x").is_ok());
}

TEST_CASE("a second instance of a role is refused with file:line; host tables use host schemas") {
  auto registry = fixture_registry();
  static const SettingSpec engine_settings[] = {{"session_len", SettingType::integer, "tokens", false, "4096", 1}};
  HostTableSchema host[] = {{"engine", engine_settings}};
  auto manifest = Manifest::parse_string(
      "[tokenizer]\nplugin = \"fixture\"\nfile = \"f\"\n[extra]\nrole = \"tokenizer\"\nplugin = \"fixture\"\nfile = \"f\"\n"
      "[engine]\nsession_len = 128\n",
      "m.toml", "/");
  REQUIRE(manifest.has_value());
  auto refused = resolve(*manifest, registry, host);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().message() ==
        "m.toml:4:2: table [extra] is a second tokenizer instance; hostrun wires one of each role, in the table named "
        "after it ([tokenizer])");

  auto single = Manifest::parse_string("[tokenizer]\nplugin = \"fixture\"\nfile = \"f\"\n[engine]\nsession_len = 128\n",
                                       "m.toml", "/");
  REQUIRE(single.has_value());
  auto resolved = resolve(*single, registry, host);
  REQUIRE_MESSAGE(resolved.has_value(), resolved.status().message());
  CHECK(resolved->instance("tokenizer")->role == Role::tokenizer);
  CHECK(resolved->host_table("engine")->settings.get_int("session_len") == 128);

  auto clash = Manifest::parse_string("[model]\nrole = \"tokenizer\"\nplugin = \"fixture\"\n", "m.toml", "/");
  REQUIRE_FALSE(clash.has_value());
  CHECK(clash.status().message().find("is the model role and cannot say role = 'tokenizer'") != std::string::npos);
}

TEST_CASE("the built-in manifest table: every built-in manifest is a row, keyed by what it serves and where") {
  const auto table = builtin_manifest_table();
  REQUIRE(table.size() == builtin_manifests().size());
  for (const auto& row : table) {
    CAPTURE(row.manifest);
    CHECK_FALSE(row.architectures.empty());
    CHECK_FALSE(row.quantizations.empty());
    CHECK((row.device == "cpu" || row.device == "cuda"));
    CHECK_FALSE(row.model_plugin.empty());
  }
}

TEST_CASE("choosing a manifest: by architecture, quantization and device; clear refusals") {
  auto registry = fixture_registry();
  std::vector<ManifestRow> table(2);
  table[0] = {"m-cpu", {"ToyForCausalLM"}, {"none"}, "cpu", "fixture", ""};
  table[1] = {"m-cuda", {"ToyForCausalLM"}, {"none", "awq"}, "cuda", "not_built", ""};
  auto folder = [](const char* json) {
    auto parsed = checkpoint::parse_folder_config(json, "f/config.json");
    REQUIRE_MESSAGE(parsed.has_value(), parsed.status().message());
    return *parsed;
  };
  const auto toy = folder(R"({"architectures": ["ToyForCausalLM"]})");

  // auto: the cuda row's own model plugin is asked first; it is missing here.
  auto chosen = choose_manifest(table, toy, "auto", registry);
  REQUIRE_MESSAGE(chosen.has_value(), chosen.status().message());
  CHECK(chosen->row->manifest == "m-cpu");
  CHECK(chosen->note.find("'not_built' is not in the plugin search path") != std::string::npos);
  // An explicit device is never traded for another.
  auto cuda = choose_manifest(table, toy, "cuda", registry);
  REQUIRE_FALSE(cuda.has_value());
  CHECK(cuda.status().message().find("--device cuda: manifest m-cuda: the plugin 'not_built'") != std::string::npos);
  // The cpu row names a plugin without a model role: refused by the probe step, naming it.
  auto cpu = choose_manifest(table, toy, "cpu", registry);
  REQUIRE_FALSE(cpu.has_value());
  CHECK(cpu.status().message().find("plugin 'fixture'") != std::string::npos);
  CHECK(cpu.status().message().find("has no model role") != std::string::npos);

  // Formats and architectures no row serves: the table is in the message.
  auto awq_cpu = choose_manifest(table, folder(R"({"architectures": ["ToyForCausalLM"],
                                                  "quantization_config": {"quant_method": "awq"}})"),
                                 "cpu", registry);
  REQUIRE_FALSE(awq_cpu.has_value());
  CHECK(awq_cpu.status().message() ==
        "f/config.json: no plugin in this build handles ToyForCausalLM with awq on cpu (the built-in manifest table: "
        "m-cpu: ToyForCausalLM x none x cpu; m-cuda: ToyForCausalLM x none|awq x cuda)");
  auto llava = choose_manifest(table, folder(R"({"architectures": ["LlavaForConditionalGeneration"],
                                               "text_config": {}, "vision_config": {}})"),
                               "auto", registry);
  REQUIRE_FALSE(llava.has_value());
  CHECK(llava.status().message().find("no plugin in this build handles LlavaForConditionalGeneration with unquantized "
                                      "weights on cpu or cuda") != std::string::npos);
}
