# Test package.pkgconfig (cmake -P): compile, link and run the package-test
# consumers with the compiler driver and nothing but pkg-config's output for
# the installed taotoken.pc (and taotoken-sim.pc).
#
# Inputs (-D): PKG_CONFIG, PREFIX, CXX, CXX_FLAGS, LINKER_FLAGS, STATIC,
# WITH_SIM, EXPECTED_VERSION, SOURCE_DIR, WORK_DIR.
cmake_minimum_required(VERSION 3.16)

foreach(_var PKG_CONFIG PREFIX CXX SOURCE_DIR WORK_DIR EXPECTED_VERSION)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "pkgconfig_check.cmake: -D${_var}=... is required")
  endif()
endforeach()

# The .pc directory is <prefix>/<libdir>/pkgconfig, where GNUInstallDirs' libdir
# is lib, lib64 or lib/<multiarch>: look for it instead of guessing.
file(GLOB_RECURSE _pcs LIST_DIRECTORIES false "${PREFIX}/*.pc")
list(FILTER _pcs INCLUDE REGEX "/pkgconfig/taotoken\\.pc$")
list(LENGTH _pcs _n)
if(NOT _n EQUAL 1)
  message(FATAL_ERROR "expected one taotoken.pc under ${PREFIX}, found ${_n}: ${_pcs}")
endif()
get_filename_component(_pcdir "${_pcs}" DIRECTORY)
get_filename_component(_libdir "${_pcdir}" DIRECTORY)
message(STATUS "PKG_CONFIG_PATH=${_pcdir}")
set(ENV{PKG_CONFIG_PATH} "${_pcdir}")
# A shared libtaotoken must be found at run time without an rpath.
if(DEFINED ENV{LD_LIBRARY_PATH} AND NOT "$ENV{LD_LIBRARY_PATH}" STREQUAL "")
  set(ENV{LD_LIBRARY_PATH} "${_libdir}:$ENV{LD_LIBRARY_PATH}")
else()
  set(ENV{LD_LIBRARY_PATH} "${_libdir}")
endif()

function(pkg_config out)
  execute_process(COMMAND "${PKG_CONFIG}" ${ARGN}
    OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    string(REPLACE ";" " " _args "${ARGN}")
    message(FATAL_ERROR "pkg-config ${_args} failed (${_rc}):\n${_err}")
  endif()
  string(REPLACE ";" " " _args "${ARGN}")
  message(STATUS "pkg-config ${_args}: ${_out}")
  set(${out} "${_out}" PARENT_SCOPE)
endfunction()

# True when the linker can find -l<name> in these -L directories or in its
# default search path.
function(library_exists out name)
  set(_dirs ${ARGN})
  foreach(_dir IN LISTS _dirs)
    if(EXISTS "${_dir}/lib${name}.so" OR EXISTS "${_dir}/lib${name}.a" OR EXISTS "${_dir}/lib${name}.dylib")
      set(${out} TRUE PARENT_SCOPE)
      return()
    endif()
  endforeach()
  foreach(_file lib${name}.so lib${name}.a lib${name}.dylib)
    execute_process(COMMAND "${CXX}" -print-file-name=${_file}
      OUTPUT_VARIABLE _path OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(IS_ABSOLUTE "${_path}" AND EXISTS "${_path}")
      set(${out} TRUE PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} FALSE PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# module, source, own library, libraries a static link must bring in
set(_checks "taotoken|consumer.cc|taotoken|curl,simdjson,fmt")
if(WITH_SIM)
  list(APPEND _checks "taotoken-sim|sim_consumer.cc|taotoken_sim|taotoken,curl,simdjson,fmt,z")
endif()

pkg_config(_version --modversion taotoken)
if(NOT _version STREQUAL EXPECTED_VERSION)
  message(FATAL_ERROR "pkg-config --modversion taotoken: '${_version}', expected '${EXPECTED_VERSION}'")
endif()

separate_arguments(_cxx_flags UNIX_COMMAND "${CXX_FLAGS}")
separate_arguments(_linker_flags UNIX_COMMAND "${LINKER_FLAGS}")

foreach(_check IN LISTS _checks)
  string(REPLACE "|" ";" _check "${_check}")
  list(GET _check 0 _module)
  list(GET _check 1 _source)
  list(GET _check 2 _own_lib)
  list(GET _check 3 _static_libs)
  string(REPLACE "," ";" _static_libs "${_static_libs}")

  # A static libtaotoken lists its dependencies as private: --static.
  if(STATIC)
    set(_static_arg --static)
  else()
    set(_static_arg)
  endif()
  pkg_config(_flags ${_static_arg} --cflags --libs ${_module})
  separate_arguments(_flags UNIX_COMMAND "${_flags}")

  set(_ldirs)
  set(_libs)
  foreach(_f IN LISTS _flags)
    if(_f MATCHES "^-L(.+)$")
      list(APPEND _ldirs "${CMAKE_MATCH_1}")
    elseif(_f MATCHES "^-l(.+)$")
      list(APPEND _libs "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  if(NOT _own_lib IN_LIST _libs)
    message(FATAL_ERROR "${_module}: -l${_own_lib} missing from pkg-config output")
  endif()
  if(STATIC)
    foreach(_lib IN LISTS _static_libs)
      if(NOT _lib IN_LIST _libs)
        message(FATAL_ERROR "${_module}: static build, but -l${_lib} is missing from `pkg-config --static --libs`")
      endif()
    endforeach()
  endif()

  # `pkg-config --static` also returns the private libraries of our
  # dependencies (Debian's libcurl.pc lists -lnghttp2 -lrtmp -lssh2 -lpsl
  # -lgssapi_krb5 -lldap ... for a fully static libcurl), whose -dev packages
  # need not be installed when libcurl itself is shared. Drop the ones the
  # linker cannot find, say so, and let the link prove the rest is enough.
  # Never drop our own libraries or their direct dependencies.
  set(_link_flags)
  set(_dropped)
  foreach(_f IN LISTS _flags)
    if(_f MATCHES "^-l(.+)$" AND NOT CMAKE_MATCH_1 STREQUAL _own_lib
       AND NOT CMAKE_MATCH_1 IN_LIST _static_libs)
      library_exists(_found "${CMAKE_MATCH_1}" ${_ldirs})
      if(NOT _found)
        list(APPEND _dropped "${_f}")
        continue()
      endif()
    endif()
    list(APPEND _link_flags "${_f}")
  endforeach()
  if(_dropped)
    list(REMOVE_DUPLICATES _dropped)
    string(REPLACE ";" " " _dropped "${_dropped}")
    message(STATUS "${_module}: not installed, dropped from the link line: ${_dropped}")
  endif()

  get_filename_component(_exe "${WORK_DIR}/${_source}" NAME_WE)
  set(_exe "${WORK_DIR}/${_exe}")
  set(_cmd "${CXX}" ${_cxx_flags} -std=c++17 "-DCONSUMER_EXPECTED_VERSION=\"${EXPECTED_VERSION}\""
    "${SOURCE_DIR}/${_source}" -o "${_exe}" ${_link_flags} ${_linker_flags})
  string(REPLACE ";" " " _cmd_text "${_cmd}")
  message(STATUS "${_cmd_text}")
  execute_process(COMMAND ${_cmd} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${_module}: compiling/linking ${_source} failed (${_rc})")
  endif()
  execute_process(COMMAND "${_exe}" RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${_module}: ${_exe} failed (${_rc})")
  endif()
  message(STATUS "${_module}: OK")
endforeach()
