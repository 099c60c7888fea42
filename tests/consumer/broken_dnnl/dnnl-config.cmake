# A half-installed oneDNN, for the consumer.broken_dnnl test: its config file is there and defines
# DNNL::dnnl, but the headers and the library it points to are not. libsae must configure with
# oneDNN off and say why (a test program does not compile), not fail.
set(dnnl_VERSION 0.0.0)
if(NOT TARGET DNNL::dnnl)
  add_library(DNNL::dnnl SHARED IMPORTED)
  set_target_properties(DNNL::dnnl PROPERTIES
    IMPORTED_LOCATION "${CMAKE_CURRENT_LIST_DIR}/libdnnl.so.0"
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}")
endif()
