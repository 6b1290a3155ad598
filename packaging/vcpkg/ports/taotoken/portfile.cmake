# Overlay port for taotoken-cpp, built from the checkout that contains this
# file (packaging/vcpkg/ports/taotoken -> repository root):
#
#   vcpkg install taotoken[sim] --overlay-ports=<repo>/packaging/vcpkg/ports
#
# vcpkg does not hash a local SOURCE_PATH into the package ABI: after changing
# the sources, `vcpkg remove taotoken` (or use --no-binarycaching) first.
#
# For a pinned, shareable port replace the next line with:
#   vcpkg_from_git(OUT_SOURCE_PATH SOURCE_PATH
#     URL https://<host>/<owner>/taotoken-cpp.git
#     REF <40-hex commit>
#     HEAD_REF main)
get_filename_component(SOURCE_PATH "${CURRENT_PORT_DIR}/../../../.." ABSOLUTE)
if(NOT EXISTS "${SOURCE_PATH}/include/taotoken/taotoken.h")
  message(FATAL_ERROR "taotoken sources not found at ${SOURCE_PATH}")
endif()

# The library has no dllexport annotations: static only on Windows.
if(VCPKG_TARGET_IS_WINDOWS)
  vcpkg_check_linkage(ONLY_STATIC_LIBRARY)
endif()

# The simulator library is built with the tools (tools/CMakeLists.txt).
vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    sim TAOTOKEN_BUILD_TOOLS)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    ${FEATURE_OPTIONS}
    -DTAOTOKEN_INSTALL=ON
    -DTAOTOKEN_BUILD_TESTS=OFF
    -DTAOTOKEN_BUILD_EXAMPLES=OFF
    -DTAOTOKEN_BUILD_BENCH=OFF
    -DTAOTOKEN_WARNINGS_AS_ERRORS=OFF)
vcpkg_cmake_install()
vcpkg_copy_pdbs()

# lib/cmake/taotoken -> share/taotoken (the port name is the package name).
vcpkg_cmake_config_fixup(CONFIG_PATH lib/cmake/taotoken)
vcpkg_fixup_pkgconfig()

if("sim" IN_LIST FEATURES)
  vcpkg_copy_tools(TOOL_NAMES taotoken taotoken-sim AUTO_CLEAN)
endif()

file(REMOVE_RECURSE
  "${CURRENT_PACKAGES_DIR}/debug/include"
  "${CURRENT_PACKAGES_DIR}/debug/share")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
