# Finding an optional dependency without letting it break the configure step.
#
# libsae's optional backends (OpenMP, zlib, BLAS, oneDNN, MPI) must never make a configure fail:
# a package that is broken, partial or half-installed turns its backend off, with one status line
# saying why (DESIGN.md section 5). Two ways a package breaks a configure, and the guard for each:
#
#   sae_find_config_safely(<package> <ok-var> <why-var>)
#     A package's own CMake config file can raise an error we cannot catch in-process: Debian's
#     libdnnl-dev runs find_package(OpenCL REQUIRED), and OpenCL's headers are only a Recommends
#     of it. So find_package(<package> CONFIG) runs first in a child CMake (config_probe/); only
#     when it succeeds there is it safe to call in this process. <why-var> gets the child's first
#     error message, or "not found".
#
#   sae_check_links(<name> <ok-var> <why-var> LIBRARIES <targets...> [DEFINITIONS <-Dflags...>])
#     A found package can still miss a header or fail to link or load. Compiles, links and runs
#     checks/<name>.cpp (a few lines that use what libsae's headers use); <ok-var> is ON or OFF.
#     The result is cached in the build tree, keyed by the libraries' locations and the source, so
#     a reconfigure costs nothing.
#
#   sae_find_dnnl(<ok-var> <why-var>): both, for oneDNN (target DNNL::dnnl).
#
# Both are also used by saeConfig.cmake, so the same holds for find_package(sae) consumers.
include_guard(GLOBAL)

set(_sae_optional_dependency_dir "${CMAKE_CURRENT_LIST_DIR}")

# The variables that steer a find_package call, forwarded to the child CMake so that it looks
# where this project looks (prefix paths, <package>_DIR / _ROOT, disabled or ignored packages).
function(_sae_forwarded_find_settings package out)
  set(_args "")
  get_cmake_property(_vars VARIABLES)
  foreach(_v IN LISTS _vars)
    if(_v MATCHES "^CMAKE_(PREFIX_PATH|FIND_ROOT_PATH|MODULE_PATH|TOOLCHAIN_FILE|LIBRARY_ARCHITECTURE|IGNORE_PATH|IGNORE_PREFIX_PATH|DISABLE_FIND_PACKAGE_.+)$|^${package}_ROOT$"
       OR (_v MATCHES "^[A-Za-z][A-Za-z0-9_]*_DIR$" AND NOT _v MATCHES "^(CMAKE|PROJECT|sae|libsae|${PROJECT_NAME})_"))
      set(_value "${${_v}}")
      if(NOT _value STREQUAL "" AND NOT _value MATCHES "-NOTFOUND$")
        string(REPLACE ";" "\\;" _value "${_value}")
        list(APPEND _args "-D${_v}=${_value}")
      endif()
    endif()
  endforeach()
  set(${out} "${_args}" PARENT_SCOPE)
endfunction()

function(sae_find_config_safely package ok_var why_var)
  set(_dir "${CMAKE_BINARY_DIR}/CMakeFiles/sae_config_probe/${package}")
  file(REMOVE_RECURSE "${_dir}")
  _sae_forwarded_find_settings(${package} _forward)
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -S "${_sae_optional_dependency_dir}/config_probe" -B "${_dir}"
      "-DSAE_PROBE_PACKAGE=${package}" "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}" ${_forward}
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(_rc EQUAL 0)
    set(${ok_var} ON PARENT_SCOPE)
    set(${why_var} "" PARENT_SCOPE)
    return()
  endif()
  set(${ok_var} OFF PARENT_SCOPE)
  if(_err MATCHES "sae-config-probe: not found")
    set(${why_var} "not found" PARENT_SCOPE)
    return()
  endif()
  # The first message of the child's error: the indented paragraph after "CMake Error at ...:",
  # on one line (or the first line of its output when there is no such paragraph).
  string(REGEX REPLACE "\r" "" _err "${_err}")
  string(REGEX MATCH "CMake Error[^\n]*\n(([ \t]+[^\n]*\n)+)" _m "${_err}\n")
  if(CMAKE_MATCH_1)
    string(REGEX REPLACE "[ \t\n]+" " " _why "${CMAKE_MATCH_1}")
  else()
    string(REGEX MATCH "[^\n]+" _why "${_err}${_out}")
  endif()
  string(STRIP "${_why}" _why)
  if(_why STREQUAL "")
    set(_why "find_package(${package} CONFIG) failed (exit ${_rc})")
  endif()
  file(WRITE "${_dir}/probe.log" "${_out}\n${_err}")
  set(${why_var} "its CMake config failed: ${_why}" PARENT_SCOPE)
endfunction()

function(sae_check_links name ok_var why_var)
  cmake_parse_arguments(PARSE_ARGV 3 _a "" "" "LIBRARIES;DEFINITIONS")
  # A consumer project without C++ enabled cannot compile the check: it gets the find step only.
  get_property(_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT CXX IN_LIST _languages)
    set(${ok_var} ON PARENT_SCOPE)
    set(${why_var} "" PARENT_SCOPE)
    return()
  endif()
  set(_source "${_sae_optional_dependency_dir}/checks/${name}.cpp")
  # The key: where each library target points, and the source's content.
  set(_key "${_a_DEFINITIONS}")
  foreach(_lib IN LISTS _a_LIBRARIES)
    if(TARGET ${_lib})
      foreach(_p IN ITEMS INTERFACE_INCLUDE_DIRECTORIES INTERFACE_LINK_LIBRARIES IMPORTED_LOCATION
                          IMPORTED_LOCATION_RELEASE IMPORTED_LOCATION_RELWITHDEBINFO IMPORTED_LOCATION_NOCONFIG)
        get_target_property(_v ${_lib} ${_p})
        if(_v)
          string(APPEND _key "|${_v}")
        endif()
      endforeach()
    else()
      string(APPEND _key "|${_lib}")
    endif()
  endforeach()
  file(SHA256 "${_source}" _source_hash)
  string(SHA256 _key "${_key}|${_source_hash}|${CMAKE_CXX_COMPILER}")
  if(DEFINED SAE_LINK_CHECK_${name} AND "${SAE_LINK_CHECK_${name}_KEY}" STREQUAL "${_key}")
    set(${ok_var} ${SAE_LINK_CHECK_${name}} PARENT_SCOPE)
    set(${why_var} "${SAE_LINK_CHECK_${name}_WHY}" PARENT_SCOPE)
    return()
  endif()
  try_run(_run _compiled "${CMAKE_BINARY_DIR}/CMakeFiles/sae_link_check/${name}" "${_source}"
    COMPILE_DEFINITIONS ${_a_DEFINITIONS}
    LINK_LIBRARIES ${_a_LIBRARIES}
    CXX_STANDARD 20
    COMPILE_OUTPUT_VARIABLE _log
    RUN_OUTPUT_VARIABLE _run_out)
  set(_ok OFF)
  set(_why "")
  if(NOT _compiled)
    # The first compiler, linker or make error names the missing header, symbol or file.
    string(REGEX MATCH "[^\n]*(error:|undefined reference|cannot find|No rule to make target)[^\n]*" _why "${_log}")
    string(STRIP "${_why}" _why)
    set(_why "a test program does not compile or link: ${_why}")
  elseif(NOT _run EQUAL 0)
    string(REGEX MATCH "[^\n]+" _first "${_run_out}")
    set(_why "a test program does not run (${_run}): ${_first}")
  else()
    set(_ok ON)
  endif()
  set(SAE_LINK_CHECK_${name} ${_ok} CACHE INTERNAL "libsae: ${name} compiles, links and runs")
  set(SAE_LINK_CHECK_${name}_WHY "${_why}" CACHE INTERNAL "libsae: why ${name} does not")
  set(SAE_LINK_CHECK_${name}_KEY "${_key}" CACHE INTERNAL "libsae: what the ${name} check saw")
  set(${ok_var} ${_ok} PARENT_SCOPE)
  set(${why_var} "${_why}" PARENT_SCOPE)
endfunction()

# sae_find_dnnl(<ok-var> <why-var>): oneDNN through its CMake config (target DNNL::dnnl), safely:
# the config in a child CMake first, then here, then the link check. <ok-var> is ON or OFF.
function(sae_find_dnnl ok_var why_var)
  set(_ok OFF)
  sae_find_config_safely(dnnl _config_ok _why)
  if(_config_ok)
    find_package(dnnl CONFIG QUIET)
    if(TARGET DNNL::dnnl)
      sae_check_links(dnnl _ok _why LIBRARIES DNNL::dnnl)
    else()
      set(_why "its CMake config defines no DNNL::dnnl target")
    endif()
  elseif(_why STREQUAL "not found")
    set(_why "not found (Debian: libdnnl-dev)")
  elseif(_why MATCHES "OpenCL")
    string(APPEND _why "; Debian: ocl-icd-opencl-dev")
  endif()
  set(${ok_var} ${_ok} PARENT_SCOPE)
  set(${why_var} "${_why}" PARENT_SCOPE)
  if(_ok)
    set(dnnl_VERSION "${dnnl_VERSION}" PARENT_SCOPE)
  endif()
endfunction()
