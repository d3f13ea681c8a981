# eplb_set_warnings(<target>): the project's warning set; -Werror when EPLB_WERROR is ON.
function(eplb_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wconversion -Wshadow)
  if(EPLB_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
