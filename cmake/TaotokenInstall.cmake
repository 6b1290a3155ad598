include(CMakePackageConfigHelpers)

set(TAOTOKEN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/taotoken)

install(TARGETS taotoken EXPORT taotoken-targets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/taotoken DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/include/taotoken/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/taotoken)
install(EXPORT taotoken-targets NAMESPACE taotoken:: DESTINATION ${TAOTOKEN_CMAKE_DIR})

configure_package_config_file(cmake/taotoken-config.cmake.in
  ${PROJECT_BINARY_DIR}/taotoken-config.cmake
  INSTALL_DESTINATION ${TAOTOKEN_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/taotoken-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/taotoken-config.cmake
  ${PROJECT_BINARY_DIR}/taotoken-config-version.cmake
  DESTINATION ${TAOTOKEN_CMAKE_DIR})

configure_file(cmake/taotoken.pc.in ${PROJECT_BINARY_DIR}/taotoken.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/taotoken.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
install(FILES LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/taotoken)
