# Writes OUTPUT: a C++ file holding every manifests/*.toml as a string, so the
# host's built-in manifests need no data files at run time.
# Usage: cmake -DMANIFEST_DIR=... -DOUTPUT=... -P builtin_manifests.cmake
file(GLOB manifests "${MANIFEST_DIR}/*.toml")
list(SORT manifests)
set(body "// Generated from manifests/*.toml by core/builtin_manifests.cmake; do not edit.\n")
string(APPEND body "#include \"builtin_manifests.hpp\"\n\nnamespace hostrun::core {\n\n")
string(APPEND body "std::span<const BuiltinManifest> builtin_manifests() {\n  static const BuiltinManifest all[] = {\n")
foreach(file IN LISTS manifests)
  get_filename_component(name "${file}" NAME_WE)
  file(READ "${file}" text)
  string(APPEND body "      {\"${name}\", R\"hostrun_manifest(${text})hostrun_manifest\"},\n")
endforeach()
string(APPEND body "  };\n  return all;\n}\n\n}  // namespace hostrun::core\n")
file(WRITE "${OUTPUT}.tmp" "${body}")
configure_file("${OUTPUT}.tmp" "${OUTPUT}" COPYONLY)
