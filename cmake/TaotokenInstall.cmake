# Install rules: the library, its headers, the CMake package
# (taotoken::taotoken, component sim -> taotoken::sim) and pkg-config files.
# Included from the top-level CMakeLists.txt after every target is defined.
include(CMakePackageConfigHelpers)

set(TAOTOKEN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/taotoken)

# A static libtaotoken needs its private dependencies at the consumer's link
# step; a shared one does not. The config and .pc files depend on this.
get_target_property(_taotoken_type taotoken TYPE)
if(_taotoken_type STREQUAL "STATIC_LIBRARY")
  set(TAOTOKEN_STATIC ON)
else()
  set(TAOTOKEN_STATIC OFF)
endif()

# The simulator library exists whenever tools, tests or benchmarks are built.
# tools/CMakeLists.txt adds it to the export set only when
# TAOTOKEN_BUILD_TOOLS is ON; add it here otherwise, so the installed package
# never depends on which of those options was used. (A target may appear only
# once in an export set, hence the condition.)
if(TARGET taotoken_sim)
  set(TAOTOKEN_HAS_SIM ON)
  if(NOT TAOTOKEN_BUILD_TOOLS)
    install(TARGETS taotoken_sim EXPORT taotoken-targets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
else()
  set(TAOTOKEN_HAS_SIM OFF)
endif()

# Database recorder components.
set(TAOTOKEN_HAS_SQLITE OFF)
set(TAOTOKEN_HAS_POSTGRES OFF)
foreach(component sqlite postgres)
  if(TARGET taotoken_${component})
    string(TOUPPER ${component} _upper)
    set(TAOTOKEN_HAS_${_upper} ON)
    install(TARGETS taotoken_${component} EXPORT taotoken-targets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

install(TARGETS taotoken EXPORT taotoken-targets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TAOTOKEN_HAS_SIM)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/taotoken DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.h")
else()
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/taotoken DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
    FILES_MATCHING PATTERN "*.h" PATTERN "simulator.h" EXCLUDE)
endif()
install(FILES ${PROJECT_BINARY_DIR}/include/taotoken/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/taotoken)
install(EXPORT taotoken-targets NAMESPACE taotoken:: DESTINATION ${TAOTOKEN_CMAKE_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/taotoken-config.cmake.in
  ${PROJECT_BINARY_DIR}/taotoken-config.cmake
  INSTALL_DESTINATION ${TAOTOKEN_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/taotoken-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/taotoken-config.cmake
  ${PROJECT_BINARY_DIR}/taotoken-config-version.cmake
  DESTINATION ${TAOTOKEN_CMAKE_DIR})

# pkg-config: taotoken.pc, and taotoken-sim.pc when the simulator is
# installed, both from taotoken.pc.in. The prefix is computed from the .pc
# file's own location (${pcfiledir}), so the files stay right after
# `cmake --install --prefix <elsewhere>` and when a package manager relocates
# the tree; CMAKE_INSTALL_PREFIX at configure time does not matter.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(TAOTOKEN_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(TAOTOKEN_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH _taotoken_pc_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" _taotoken_pc_up "${_taotoken_pc_up}")
  set(TAOTOKEN_PC_PREFIX "\${pcfiledir}/${_taotoken_pc_up}")
  set(TAOTOKEN_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(TAOTOKEN_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(TAOTOKEN_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# Private dependencies matter only to a static library (`pkg-config --static`).
# The public headers include none of them, so a shared build lists none and
# does not need their .pc files to be present.
set(TAOTOKEN_PC_NAME taotoken)
set(TAOTOKEN_PC_DESCRIPTION "${PROJECT_DESCRIPTION}")
set(TAOTOKEN_PC_REQUIRES "")
set(TAOTOKEN_PC_LIBS "-ltaotoken")
if(TAOTOKEN_STATIC)
  set(TAOTOKEN_PC_REQUIRES_PRIVATE "libcurl simdjson fmt")
  set(TAOTOKEN_PC_LIBS_PRIVATE "${CMAKE_THREAD_LIBS_INIT}")
else()
  set(TAOTOKEN_PC_REQUIRES_PRIVATE "")
  set(TAOTOKEN_PC_LIBS_PRIVATE "")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/taotoken.pc.in ${PROJECT_BINARY_DIR}/taotoken.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/taotoken.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

if(TAOTOKEN_HAS_SIM)
  get_target_property(_taotoken_sim_name taotoken_sim OUTPUT_NAME)
  if(NOT _taotoken_sim_name)
    set(_taotoken_sim_name taotoken_sim)
  endif()
  set(TAOTOKEN_PC_NAME taotoken-sim)
  set(TAOTOKEN_PC_DESCRIPTION "Local OpenAI-compatible server with scriptable faults (taotoken::sim)")
  set(TAOTOKEN_PC_REQUIRES "taotoken = ${PROJECT_VERSION}")
  set(TAOTOKEN_PC_LIBS "-l${_taotoken_sim_name}")
  if(TAOTOKEN_STATIC)
    set(TAOTOKEN_PC_REQUIRES_PRIVATE "simdjson fmt zlib")
    set(TAOTOKEN_PC_LIBS_PRIVATE "${CMAKE_THREAD_LIBS_INIT}")
  endif()
  configure_file(${PROJECT_SOURCE_DIR}/cmake/taotoken.pc.in ${PROJECT_BINARY_DIR}/taotoken-sim.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/taotoken-sim.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()

install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/taotoken)
