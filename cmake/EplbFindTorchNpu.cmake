# eplb_find_torch_npu(): locates torch and torch_npu in the build interpreter without importing
# them (importlib.util.find_spec only: importing torch_npu would load the CANN runtime).
#
# Sets in the caller's scope:
#   EPLB_TORCH_NPU_FOUND      TRUE when both packages were found
#   EPLB_TORCH_NPU_REASON     why not, when not
#   EPLB_TORCH_CMAKE_DIR      <torch>/share/cmake/Torch (for find_package(Torch))
#   TORCH_NPU_PATH            the torch_npu package folder (include/, lib/libtorch_npu.so)
#   EPLB_TORCH_NPU_PYTHON     the interpreter that was asked
# The caller decides what a miss means (EPLB_ASCEND=AUTO: off with a message; ON: fatal).
function(eplb_find_torch_npu)
  set(EPLB_TORCH_NPU_FOUND FALSE PARENT_SCOPE)
  if(NOT Python_EXECUTABLE)
    find_package(Python COMPONENTS Interpreter)
  endif()
  if(NOT Python_EXECUTABLE)
    set(EPLB_TORCH_NPU_REASON "no Python interpreter found to look for torch and torch_npu"
        PARENT_SCOPE)
    return()
  endif()
  set(probe [=[
import importlib.util, pathlib
for name in ("torch", "torch_npu"):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        print(f"missing={name}")
        raise SystemExit(0)
    print(f"{name}={pathlib.Path(list(spec.submodule_search_locations)[0]).as_posix()}")
]=])
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "${probe}"
    OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(EPLB_TORCH_NPU_PYTHON "${Python_EXECUTABLE}" PARENT_SCOPE)
  if(NOT rc EQUAL 0)
    set(EPLB_TORCH_NPU_REASON "probing torch/torch_npu with ${Python_EXECUTABLE} failed: ${err}"
        PARENT_SCOPE)
    return()
  endif()
  string(REPLACE "\n" ";" lines "${out}")
  foreach(line IN LISTS lines)
    if(line MATCHES "^missing=(.*)$")
      set(EPLB_TORCH_NPU_REASON
          "${CMAKE_MATCH_1} is not installed in ${Python_EXECUTABLE} (pip install torch-npu matching the torch version; --no-deps is enough for a compile check)"
          PARENT_SCOPE)
      return()
    elseif(line MATCHES "^torch=(.*)$")
      set(torch_dir "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^torch_npu=(.*)$")
      set(npu_dir "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  if(NOT EXISTS "${torch_dir}/share/cmake/Torch/TorchConfig.cmake")
    set(EPLB_TORCH_NPU_REASON "torch at ${torch_dir} has no share/cmake/Torch/TorchConfig.cmake"
        PARENT_SCOPE)
    return()
  endif()
  if(NOT EXISTS "${npu_dir}/include/torch_npu/csrc/framework/OpCommand.h")
    set(EPLB_TORCH_NPU_REASON "torch_npu at ${npu_dir} ships no headers (include/torch_npu/...)"
        PARENT_SCOPE)
    return()
  endif()
  set(EPLB_TORCH_CMAKE_DIR "${torch_dir}/share/cmake/Torch" PARENT_SCOPE)
  set(TORCH_NPU_PATH "${npu_dir}" PARENT_SCOPE)
  set(EPLB_TORCH_NPU_FOUND TRUE PARENT_SCOPE)
endfunction()
