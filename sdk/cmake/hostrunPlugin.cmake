# hostrun_add_plugin(NAME [OUTPUT_DIRECTORY DIR] [NO_INSTALL] SOURCES...)
#
# Builds one plugin: a shared module named hostrun_<NAME>.so that links the SDK
# and exports only `hostrun_plugin_entry` (plugin.map). Used in-tree and, through
# the installed hostrunSDK package, by third parties.
function(hostrun_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "NO_INSTALL" "OUTPUT_DIRECTORY" "")
  add_library(${name} MODULE ${arg_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE hostrun::sdk)
  set(_map ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/plugin.map)
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    OUTPUT_NAME hostrun_${name}
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS ${_map})
  if(NOT APPLE)
    target_link_options(${name} PRIVATE "-Wl,--version-script=${_map}")
  endif()
  if(arg_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${arg_OUTPUT_DIRECTORY})
  elseif(DEFINED HOSTRUN_PLUGIN_BUILD_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${HOSTRUN_PLUGIN_BUILD_DIR})
  endif()
  if(NOT arg_NO_INSTALL AND DEFINED HOSTRUN_PLUGIN_INSTALL_DIR)
    install(TARGETS ${name} LIBRARY DESTINATION ${HOSTRUN_PLUGIN_INSTALL_DIR})
  endif()
endfunction()
