# eplb_detect_cann(): decides whether the Ascend C kernels are built.
#
# Honours the cache string EPLB_ASCEND (AUTO | ON | OFF). Sets in the caller's scope:
#   EPLB_CANN_FOUND        TRUE when the kernels are to be built
#   EPLB_CANN_ROOT         the CANN toolkit root that holds ascendc.cmake
#   EPLB_ASCENDC_CMAKE_DIR the folder of ascendc.cmake
# AUTO prints why the kernels are off; ON fails the configure step with the reason.
function(eplb_detect_cann)
  set(EPLB_CANN_FOUND FALSE PARENT_SCOPE)
  string(TOUPPER "${EPLB_ASCEND}" mode)
  if(NOT mode MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "EPLB_ASCEND must be AUTO, ON or OFF, got '${EPLB_ASCEND}'")
  endif()
  if(mode STREQUAL "OFF")
    message(STATUS "Ascend kernels: OFF (EPLB_ASCEND=OFF)")
    return()
  endif()

  # Probe order: explicit -DASCEND_HOME_PATH, then the variables set_env.sh exports, then the
  # default install locations.
  set(candidates "")
  if(ASCEND_HOME_PATH)
    list(APPEND candidates "${ASCEND_HOME_PATH}")
  endif()
  foreach(var ASCEND_HOME_PATH ASCEND_TOOLKIT_HOME)
    if(DEFINED ENV{${var}})
      list(APPEND candidates "$ENV{${var}}")
    endif()
  endforeach()
  if(DEFINED ENV{ASCEND_OPP_PATH})
    list(APPEND candidates "$ENV{ASCEND_OPP_PATH}/..")
  endif()
  list(APPEND candidates "/usr/local/Ascend/ascend-toolkit/latest" "/usr/local/Ascend/cann")

  set(root "")
  set(cmake_dir "")
  foreach(candidate IN LISTS candidates)
    foreach(sub compiler/tikcpp/ascendc_kernel_cmake tools/tikcpp/ascendc_kernel_cmake
                ascendc_devkit/tikcpp/samples/cmake)
      if(NOT root AND EXISTS "${candidate}/${sub}/ascendc.cmake")
        get_filename_component(root "${candidate}" ABSOLUTE)
        set(cmake_dir "${root}/${sub}")
      endif()
    endforeach()
  endforeach()

  if(NOT root)
    string(REPLACE ";" ", " tried "${candidates}")
    set(reason "no CANN toolkit found (no ascendc.cmake under: ${tried}; set ASCEND_HOME_PATH or source set_env.sh)")
    if(mode STREQUAL "ON")
      message(FATAL_ERROR "EPLB_ASCEND=ON but ${reason}")
    endif()
    message(STATUS "Ascend kernels: OFF (${reason})")
    return()
  endif()

  set(EPLB_CANN_FOUND TRUE PARENT_SCOPE)
  set(EPLB_CANN_ROOT "${root}" PARENT_SCOPE)
  set(EPLB_ASCENDC_CMAKE_DIR "${cmake_dir}" PARENT_SCOPE)
endfunction()
