include(CMakePackageConfigHelpers)

set(CROSSCODER_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/crosscoder")

install(TARGETS crosscoder EXPORT crosscoderTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/crosscoder DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES "${PROJECT_BINARY_DIR}/include/crosscoder/version.hpp"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/crosscoder)
install(EXPORT crosscoderTargets NAMESPACE crosscoder:: DESTINATION ${CROSSCODER_CMAKE_DIR})

configure_package_config_file(cmake/crosscoderConfig.cmake.in
  "${PROJECT_BINARY_DIR}/crosscoderConfig.cmake" INSTALL_DESTINATION ${CROSSCODER_CMAKE_DIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/crosscoderConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/crosscoderConfig.cmake"
  "${PROJECT_BINARY_DIR}/crosscoderConfigVersion.cmake" DESTINATION ${CROSSCODER_CMAKE_DIR})
