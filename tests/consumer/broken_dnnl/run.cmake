# consumer.broken_dnnl: configure the add_subdirectory consumer against a half-installed oneDNN
# (dnnl-config.cmake beside this file) and check that the configure step succeeds, with oneDNN
# off and the reason (the missing library or header) in one status line.
#   cmake -DSAE_SOURCE_DIR=<libsae> -DBINARY_DIR=<dir> -DCXX=<compiler> -P run.cmake
get_filename_component(_consumer "${CMAKE_CURRENT_LIST_DIR}/../add_subdirectory" ABSOLUTE)
file(REMOVE_RECURSE "${BINARY_DIR}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" -S "${_consumer}" -B "${BINARY_DIR}"
    "-DCMAKE_CXX_COMPILER=${CXX}" "-DSAE_SOURCE_DIR=${SAE_SOURCE_DIR}" "-DSAE_GEMM_DEFAULT=eigen"
    "-Ddnnl_DIR=${CMAKE_CURRENT_LIST_DIR}" "-DSAE_EXPECT_DNNL=OFF"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
message("${_out}${_err}")
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "the configure step failed (${_rc}) with a broken oneDNN; it must turn oneDNN off")
endif()
set(_expected "libsae: oneDNN off \\(a test program does not compile or link: [^\n]*(oneapi/dnnl/dnnl.hpp|libdnnl.so.0)")
if(NOT _out MATCHES "${_expected}")
  message(FATAL_ERROR "no status line matching '${_expected}'")
endif()
