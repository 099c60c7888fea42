# ctest fixture for consumer.find_package: install a libsae build tree into a fresh prefix and
# check that the package files are where consumers look for them.
#   cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> [-DCONFIG=<config>] [-DCMAKEDIR=share/cmake/sae]
#         -P install.cmake
foreach(_var IN ITEMS BUILD_DIR PREFIX)
  if(NOT ${_var})
    message(FATAL_ERROR "install.cmake: ${_var} is not set")
  endif()
endforeach()
if(NOT CMAKEDIR)
  set(CMAKEDIR "share/cmake/sae")
endif()

file(REMOVE_RECURSE "${PREFIX}")

set(_args --install "${BUILD_DIR}" --prefix "${PREFIX}")
if(CONFIG)
  list(APPEND _args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" ${_args} RESULT_VARIABLE _result)
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${_result})")
endif()

foreach(_file IN ITEMS
    "${CMAKEDIR}/saeConfig.cmake"
    "${CMAKEDIR}/saeConfigVersion.cmake"
    "${CMAKEDIR}/saeTargets.cmake"
    include/sae/version.hpp
    include/sae/sae.hpp)
  if(NOT EXISTS "${PREFIX}/${_file}")
    message(FATAL_ERROR "not installed: ${PREFIX}/${_file}")
  endif()
endforeach()
message(STATUS "libsae installed into ${PREFIX}")
