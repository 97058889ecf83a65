# Warnings for fedmoe's own targets. Generated code (protobuf, gRPC) is not ours and is
# compiled without them.
function(fedmoe_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                              -Wold-style-cast -Wcast-align -Woverloaded-virtual
                              -Wnull-dereference -Wimplicit-fallthrough -Wformat=2>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Werror=all-warnings>)
  # GCC 12's AVX-512 intrinsics self-initialise their "undefined" operands, which its own
  # -Wmaybe-uninitialized then reports wherever Eigen inlines them (GCC bug 105593, fixed in 13).
  if(FEDMOE_NATIVE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
  endif()
  if(FEDMOE_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>
                                             $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror>)
  endif()
endfunction()
