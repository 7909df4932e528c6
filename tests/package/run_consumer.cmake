# cmake -P script: installs crosscoder (MODE=find_package) or points the consumer at the
# source tree (MODE=add_subdirectory), then configures, builds and runs the consumer.
cmake_minimum_required(VERSION 3.24)

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    string(REPLACE ";" " " shown "${ARGV}")
    message(FATAL_ERROR "failed (${result}): ${shown}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK})
set(configure_args -S ${CONSUMER_SOURCE} -B ${WORK}/build -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCONSUMER_MODE=${MODE})
if(CUDA_COMPILER)
  list(APPEND configure_args -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
endif()

if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${CROSSCODER_BUILD} --prefix ${WORK}/prefix)
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  list(APPEND configure_args -DCROSSCODER_SOURCE=${CROSSCODER_SOURCE} -DCROSSCODER_CUDA=${CUDA_MODE})
endif()

run(${CMAKE_COMMAND} ${configure_args})
cmake_host_system_information(RESULT cores QUERY NUMBER_OF_LOGICAL_CORES)
run(${CMAKE_COMMAND} --build ${WORK}/build --parallel ${cores})
run(${WORK}/build/consumer)
