// What a plugin library exports: one entry point returning one descriptor.
//
//   static const hostrun::SettingSpec kSettings[] = {{"file", SettingType::string, "tokenizer.json", true}};
//   static const hostrun::RoleEntry kRoles[] = {
//       hostrun::role_entry<hostrun::Tokenizer, MyTokenizer>(kSettings)};
//   HOSTRUN_PLUGIN("my_tokenizer", "1.0.0", "What it does", kRoles)
//
// The host resolves the symbol `hostrun_plugin_entry`, reads `abi_version`
// (offset 0, frozen forever) and refuses the library on a mismatch before it
// reads any other field. The descriptor grows only by appending fields; the
// host reads a field only when `struct_size` says the plugin has it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "hostrun/config.hpp"
#include "hostrun/frontend.hpp"
#include "hostrun/kv_cache.hpp"
#include "hostrun/log.hpp"
#include "hostrun/model.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/quantizer.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/version.hpp"
#include "hostrun/vision.hpp"

#if defined(_WIN32)
#define HOSTRUN_EXPORT __declspec(dllexport)
#else
#define HOSTRUN_EXPORT __attribute__((visibility("default")))
#endif

namespace hostrun {

enum class Role : uint32_t {
  model = 1u << 0,
  quantizer = 1u << 1,
  kv_cache_policy = 1u << 2,
  tokenizer = 1u << 3,
  frontend = 1u << 4,
  vision_encoder = 1u << 5,  // ABI 4
};

constexpr const char* role_name(Role role) noexcept {
  switch (role) {
    case Role::model: return "model";
    case Role::quantizer: return "quantizer";
    case Role::kv_cache_policy: return "kv_cache";
    case Role::tokenizer: return "tokenizer";
    case Role::frontend: return "frontend";
    case Role::vision_encoder: return "vision";
  }
  return "?";
}

// The interface class each role's objects implement.
template <Role R> struct RoleInterface;
template <> struct RoleInterface<Role::model> { using type = Model; };
template <> struct RoleInterface<Role::quantizer> { using type = Quantizer; };
template <> struct RoleInterface<Role::kv_cache_policy> { using type = KvCachePolicy; };
template <> struct RoleInterface<Role::tokenizer> { using type = Tokenizer; };
template <> struct RoleInterface<Role::frontend> { using type = Frontend; };
template <> struct RoleInterface<Role::vision_encoder> { using type = VisionEncoder; };

template <typename I> constexpr Role role_of();
template <> constexpr Role role_of<Model>() { return Role::model; }
template <> constexpr Role role_of<Quantizer>() { return Role::quantizer; }
template <> constexpr Role role_of<KvCachePolicy>() { return Role::kv_cache_policy; }
template <> constexpr Role role_of<Tokenizer>() { return Role::tokenizer; }
template <> constexpr Role role_of<Frontend>() { return Role::frontend; }
template <> constexpr Role role_of<VisionEncoder>() { return Role::vision_encoder; }

// What the host gives a factory. Grows by appending fields (see struct_size).
struct CreateContext {
  uint32_t struct_size = sizeof(CreateContext);
  const Settings* settings = nullptr;  // validated against the role's SettingSpecs
  LogSink* log_sink = nullptr;
  const char* instance_name = "";      // the manifest table, e.g. "tokenizer"
  // This plugin's library: objects the plugin hands out later (caches,
  // decoders, layers) carry a copy (make_pinned), so the library outlives them.
  LibraryPin library;
};

// Makes one object of the role's interface, returned as its PluginObject base.
// Never throws: on failure it returns nullptr and sets *error.
using CreateFn = PluginObject* (*)(const CreateContext& context, Status* error) noexcept;
// Says whether the role can run on `device` of this machine (a CUDA plugin
// asked for the CPU, or for a GPU the machine lacks): ok, or a Status whose
// message is the reason. May be null (runs anywhere).
using ProbeFn = Status (*)(const Device& device) noexcept;

struct RoleEntry {
  Role role;
  const SettingSpec* settings;
  uint32_t settings_count;
  CreateFn create;
  ProbeFn probe;
};

struct PluginDescriptor {
  uint32_t abi_version;  // HOSTRUN_ABI_VERSION the plugin was built with; offset 0 forever
  uint32_t struct_size;  // sizeof(PluginDescriptor) as the plugin saw it
  const char* name;      // unique across loaded plugins; what manifests name
  const char* version;   // the plugin's own version
  const char* description;
  const char* sdk_version;
  const RoleEntry* roles;
  uint32_t role_count;
};

static_assert(offsetof(PluginDescriptor, abi_version) == 0, "the ABI version must stay at offset 0");
static_assert(offsetof(PluginDescriptor, struct_size) == 4, "the descriptor size must stay at offset 4");
// The descriptor as ABI 1 first shipped it; fields appended later are read
// only when a plugin's struct_size covers them.
constexpr size_t kDescriptorBaseSize = offsetof(PluginDescriptor, role_count) + sizeof(uint32_t);

// Calls `Impl(const CreateContext&)` and reports what it throws as a Status.
template <typename Interface, typename Impl>
PluginObject* create_object(const CreateContext& context, Status* error) noexcept {
  PluginObject* made = nullptr;
  Status status = guard([&] { made = static_cast<Interface*>(new Impl(context)); });
  if (!status.is_ok()) {
    if (error) *error = std::move(status);
    return nullptr;
  }
  return made;
}

template <typename Interface, typename Impl, size_t N>
constexpr RoleEntry role_entry(const SettingSpec (&settings)[N], ProbeFn probe = nullptr) {
  return RoleEntry{role_of<Interface>(), settings, uint32_t(N), &create_object<Interface, Impl>, probe};
}
template <typename Interface, typename Impl>
constexpr RoleEntry role_entry_without_settings(ProbeFn probe = nullptr) {
  return RoleEntry{role_of<Interface>(), nullptr, 0, &create_object<Interface, Impl>, probe};
}

// A plugin's logger, reading the sink from the create context.
inline Logger plugin_logger(const CreateContext& context, std::string source) {
  return Logger(context.log_sink, std::move(source));
}

}  // namespace hostrun

#define HOSTRUN_PLUGIN_ENTRY_SYMBOL "hostrun_plugin_entry"

// Defines the library's one exported symbol. `roles` is a static array of RoleEntry.
#define HOSTRUN_PLUGIN(plugin_name, plugin_version, plugin_description, roles)                   \
  extern "C" HOSTRUN_EXPORT const ::hostrun::PluginDescriptor* hostrun_plugin_entry() noexcept { \
    static const ::hostrun::PluginDescriptor descriptor{                                           \
        HOSTRUN_ABI_VERSION,                                                                       \
        uint32_t(sizeof(::hostrun::PluginDescriptor)),                                             \
        plugin_name,                                                                               \
        plugin_version,                                                                            \
        plugin_description,                                                                        \
        HOSTRUN_SDK_VERSION_STRING,                                                                \
        roles,                                                                                     \
        uint32_t(sizeof(roles) / sizeof(roles[0]))};                                               \
    return &descriptor;                                                                            \
  }
