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
  fedmoe_precompile(${target})
endfunction()

# Precompiled headers. The standard library and Abseil are most of what a translation unit
# parses here (about 80k of the 100k to 230k lines each source reads, measured with -E), and CI
# builds on two cores, so a target of several sources parses them once, into a precompiled
# header of its own, made with that target's options (GCC takes a precompiled header only
# under the options it was made with, and -Winvalid-pch, an error under FEDMOE_WERROR, says so
# if not). A target with fewer sources gains less than the header costs to make. Targets that
# speak gRPC add its headers and their protos' (fedmoe_precompile_grpc).
option(FEDMOE_PCH "Precompile the standard and Abseil headers for targets of several sources" ON)
set(FEDMOE_PCH_MIN_SOURCES 4)
set(FEDMOE_PCH_HEADERS
  <algorithm> <array> <atomic> <chrono> <cmath> <cstdint> <cstdio> <cstring> <deque>
  <filesystem> <fstream> <functional> <map> <memory> <mutex> <numeric> <optional> <random>
  <set> <span> <sstream> <string> <string_view> <thread> <unordered_map> <utility> <variant>
  <vector>
  <absl/status/status.h> <absl/status/statusor.h> <absl/strings/str_cat.h>
  <absl/strings/str_format.h> <absl/synchronization/mutex.h> <absl/time/time.h>)

function(fedmoe_precompile target)
  if(NOT FEDMOE_PCH)
    return()
  endif()
  get_target_property(sources ${target} SOURCES)
  list(FILTER sources INCLUDE REGEX "\\.(cc|cpp)$")
  list(LENGTH sources count)
  get_target_property(all_sources ${target} SOURCES)
  list(FILTER all_sources INCLUDE REGEX "\\.cu$")
  if(count LESS FEDMOE_PCH_MIN_SOURCES OR all_sources)
    return()
  endif()
  # FEDMOE_PCH_EXTRA: what the caller's kind of target adds (GoogleTest, for tests).
  target_precompile_headers(${target} PRIVATE ${FEDMOE_PCH_HEADERS} ${FEDMOE_PCH_EXTRA} ${ARGN})
endfunction()

# Adds gRPC's and protobuf's headers to a target's precompiled ones, and the generated proto
# headers given after the target.
function(fedmoe_precompile_grpc target)
  if(FEDMOE_PCH)
    target_precompile_headers(${target} PRIVATE <google/protobuf/message.h> <grpcpp/grpcpp.h> ${ARGN})
  endif()
endfunction()
