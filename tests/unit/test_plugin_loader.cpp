#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "../support/temp_dir.hpp"
#include "plugin_file.hpp"
#include "plugin_loader.hpp"

using namespace hostrun;
using namespace hostrun::core;
namespace fs = std::filesystem;

namespace {

const RefusedLibrary* refused_named(const PluginRegistry& registry, std::string_view file_part) {
  for (const auto& r : registry.refused())
    if (r.file.filename().string().find(file_part) != std::string::npos) return &r;
  return nullptr;
}

Settings fixture_settings(int64_t fail_with = 0) {
  Settings s;
  s.set("file", std::string("vocab.txt"));
  s.set("scale", 3.0);
  s.set("fail_with", fail_with);
  return s;
}

}  // namespace

TEST_CASE("the loader finds plugins and refuses what is not one, saying why") {
  PluginRegistry registry;
  registry.scan({HOSTRUN_TEST_PLUGIN_DIR, "/nonexistent/folder"});
  REQUIRE(registry.searched().size() == 1);

  const LoadedPlugin* fixture = registry.find("fixture");
  REQUIRE(fixture);
  CHECK(fixture->version == "0.0.1");
  CHECK(fixture->roles.size() == 3);
  CHECK(fixture->role(Role::tokenizer) != nullptr);
  CHECK(fixture->role(Role::vision_encoder) != nullptr);
  CHECK(fixture->role(Role::model) == nullptr);

  const RefusedLibrary* abi = refused_named(registry, "abi_mismatch");
  REQUIRE(abi);
  CHECK(abi->reason.find("built for plugin ABI version 999") != std::string::npos);
  CHECK(abi->reason.find("this hostrun has ABI version " + std::to_string(HOSTRUN_ABI_VERSION)) != std::string::npos);

  const RefusedLibrary* plain = refused_named(registry, "not_a_plugin");
  REQUIRE(plain);
  CHECK(plain->reason.find("exports no 'hostrun_plugin_entry' symbol") != std::string::npos);

  const RefusedLibrary* garbage = refused_named(registry, "garbage");
  REQUIRE(garbage);
  CHECK(garbage->reason == "not an ELF file");
}

TEST_CASE("objects keep their library loaded and run their destructor inside it") {
  PluginHandle<Tokenizer> tokenizer;
  {
    PluginRegistry registry;
    registry.scan({HOSTRUN_TEST_PLUGIN_DIR});
    auto made = registry.create<Tokenizer>("fixture", fixture_settings(), nullptr);
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    tokenizer = *made;
    auto second = registry.create<Tokenizer>("fixture", fixture_settings(), nullptr);
    REQUIRE(second.has_value());
    std::vector<TokenId> ids;
    REQUIRE(tokenizer->encode("abc", {}, ids).is_ok());
    CHECK(ids == std::vector<TokenId>{3, 2});  // two live objects
  }
  // The registry is gone; the object's own pin keeps the code mapped.
  std::vector<TokenId> ids;
  REQUIRE(tokenizer->encode("abcd", {}, ids).is_ok());
  CHECK(ids == std::vector<TokenId>{4, 1});
  std::string text;
  REQUIRE(tokenizer->decode({}, {}, text).is_ok());
  CHECK(text == "vocab.txt");
  CHECK(tokenizer->vocab_size() == 3);
  tokenizer.reset();  // destructor runs, then the library may unload
}

TEST_CASE("factory failures come back as errors naming the plugin, never as exceptions") {
  PluginRegistry registry;
  registry.scan({HOSTRUN_TEST_PLUGIN_DIR});
  auto thrown = registry.create<Tokenizer>("fixture", fixture_settings(1), nullptr);
  REQUIRE_FALSE(thrown.has_value());
  CHECK(thrown.status().code() == ErrorCode::invalid_argument);
  CHECK(thrown.status().message().find("plugin 'fixture'") != std::string::npos);
  CHECK(thrown.status().message().find("asked to fail") != std::string::npos);

  auto odd = registry.create<Tokenizer>("fixture", fixture_settings(2), nullptr);
  REQUIRE_FALSE(odd.has_value());
  CHECK(odd.status().code() == ErrorCode::internal);

  auto missing = registry.create<Tokenizer>("nope", fixture_settings(), nullptr);
  CHECK(missing.status().code() == ErrorCode::not_found);
  auto wrong_role = registry.create<Model>("fixture", fixture_settings(), nullptr);
  CHECK(wrong_role.status().message().find("has no 'model' role") != std::string::npos);
}

TEST_CASE("a plugin that cannot run here declines through its probe") {
  PluginRegistry registry;
  registry.scan({HOSTRUN_TEST_PLUGIN_DIR});
  ::setenv("HOSTRUN_TEST_DECLINE", "1", 1);
  auto declined = registry.create<Frontend>("fixture", Settings(), nullptr);
  ::unsetenv("HOSTRUN_TEST_DECLINE");
  REQUIRE_FALSE(declined.has_value());
  CHECK(declined.status().code() == ErrorCode::unsupported);
  CHECK(declined.status().message().find("cannot run on cpu: no test device on this machine") != std::string::npos);
  CHECK(registry.create<Frontend>("fixture", Settings(), nullptr).has_value());
  // The probe is asked about the device the object is for.
  auto on_gpu = registry.create<Frontend>("fixture", Settings(), nullptr, "", Device{DeviceKind::cuda, 1});
  REQUIRE_FALSE(on_gpu.has_value());
  CHECK(on_gpu.status().message().find("cannot run on cuda: runs on the CPU only; asked for cuda:1") !=
        std::string::npos);
}

TEST_CASE("a decoder a plugin hands out keeps its library and is destroyed inside it") {
  PluginPtr<IncrementalDecoder> decoder;
  PluginHandle<Tokenizer> tokenizer;
  {
    PluginRegistry registry;
    registry.scan({HOSTRUN_TEST_PLUGIN_DIR});
    auto made = registry.create<Tokenizer>("fixture", fixture_settings(), nullptr);
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    tokenizer = *made;
    decoder = tokenizer->incremental_decoder({});
    REQUIRE(decoder);
  }
  std::vector<TokenId> ids;
  REQUIRE(tokenizer->encode("ab", {}, ids).is_ok());
  CHECK(ids == std::vector<TokenId>{2, 2});  // the tokenizer and its decoder are alive
  std::string piece;
  REQUIRE(decoder->push(7, piece).is_ok());
  REQUIRE(decoder->push(42, piece).is_ok());
  CHECK(piece == "7 42 ");
  decoder.reset();  // its destructor runs in the library, then its pin lets go
  ids.clear();
  REQUIRE(tokenizer->encode("ab", {}, ids).is_ok());
  CHECK(ids == std::vector<TokenId>{2, 1});
}

TEST_CASE("HOSTRUN_PLUGIN_PATH entries come after --plugin-dir and before the install folder") {
  ::setenv("HOSTRUN_PLUGIN_PATH", "/a::/b", 1);
  auto path = plugin_search_path({"/flag"});
  ::unsetenv("HOSTRUN_PLUGIN_PATH");
  REQUIRE(path.size() == 4);
  CHECK(path[0] == "/flag");
  CHECK(path[1] == "/a");
  CHECK(path[2] == "/b");
  CHECK(path[3].string().ends_with("lib/hostrun/plugins"));
}

TEST_CASE("files that are not whole plugins for this machine are refused before dlopen, and the scan goes on") {
  const fs::path fixture = fs::path(HOSTRUN_TEST_PLUGIN_DIR) / "hostrun_fixture.so";
  REQUIRE(fs::exists(fixture));
  hostrun::test::TempDir dir;
  const auto size = fs::file_size(fixture);
  auto truncated_copy = [&](const char* name, uintmax_t bytes) {
    fs::copy_file(fixture, dir.path() / name);
    fs::resize_file(dir.path() / name, bytes);
  };
  // The loader used to die with SIGBUS inside dlopen on these.
  truncated_copy("hostrun_a_ninety.so", size * 9 / 10);
  truncated_copy("hostrun_b_half.so", size / 2);
  truncated_copy("hostrun_c_header.so", 40);
  {
    std::ofstream(dir.path() / "hostrun_d_text.so") << "not a library\n";
  }
  // A 32-bit ELF header is another class, whatever follows.
  {
    std::string bytes(64, '\0');
    bytes.replace(0, 4, "\x7f" "ELF");
    bytes[4] = 1;  // ELFCLASS32
    bytes[5] = 1;
    std::ofstream(dir.path() / "hostrun_e_elf32.so", std::ios::binary) << bytes;
  }
  fs::copy_file(fixture, dir.path() / "hostrun_f_whole.so");

  PluginRegistry registry;
  registry.scan({dir.path()});
  CHECK(registry.find("fixture") != nullptr);  // the whole copy, loaded after the broken ones
  auto reason = [&](const char* file) {
    const RefusedLibrary* r = refused_named(registry, file);
    return r ? r->reason : std::string("not refused");
  };
  CHECK(reason("ninety").find("truncated: its section headers end at byte") != std::string::npos);
  CHECK(reason("half").find("truncated: a loadable segment ends at byte") != std::string::npos);
  CHECK(reason("header").find("truncated") != std::string::npos);
  CHECK(reason("text") == "not an ELF file");
  CHECK(reason("elf32") == "an ELF32 library; this hostrun is ELF64");
  CHECK(check_plugin_file(dir.path()).message() == "not a regular file");
}

TEST_CASE("a plugin that takes the name of one found later shadows it, and the registry says which") {
  hostrun::test::TempDir dir;
  fs::copy_file(fs::path(HOSTRUN_TEST_PLUGIN_DIR) / "hostrun_fixture.so", dir.path() / "hostrun_fixture.so");
  PluginRegistry registry;
  registry.scan({dir.path(), HOSTRUN_TEST_PLUGIN_DIR});
  const LoadedPlugin* winner = registry.find("fixture");
  REQUIRE(winner);
  CHECK(winner->file.parent_path() == fs::weakly_canonical(dir.path()));
  const RefusedLibrary* shadowed = nullptr;
  for (const auto& r : registry.refused())
    if (!r.shadowed_by.empty()) shadowed = &r;
  REQUIRE(shadowed);
  CHECK(shadowed->shadowed_by == winner->file);
  CHECK(shadowed->reason.find("which shadows this one") != std::string::npos);
}
