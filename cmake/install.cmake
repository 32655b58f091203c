# install.cmake - what `cmake --install` puts where, besides the targets
# (their own rules: medrouted -> sbin in daemon/CMakeLists.txt, medroute ->
# bin in clients/cli/, libmedroute and medroute.h in clients/lib/).
#
#   man pages           ${CMAKE_INSTALL_MANDIR}/man8, man1, man5
#   systemd unit        ${MR_SYSTEMD_UNITDIR}/medrouted.service
#   example config      ${CMAKE_INSTALL_SYSCONFDIR}/medroute/medroute.conf
#                       (never overwrites an existing one) and
#                       ${CMAKE_INSTALL_DOCDIR}/examples/medroute.conf
#   documentation       ${CMAKE_INSTALL_DOCDIR}/*.md (and *.json, e.g. a dashboard)
#   pkg-config file     ${CMAKE_INSTALL_LIBDIR}/pkgconfig/medroute.pc
#
# Relative destinations are relative to the prefix given at install time, so
# `cmake --install BUILD --prefix DIR` moves everything below DIR, and the
# unit and medroute.pc, which name installed paths, are written at install
# time for that prefix.  A system install (docs/operations.md):
#
#   cmake -S . -B build -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_SYSCONFDIR=/etc
#   cmake --build build && sudo cmake --install build
#
# With prefix /usr a relative CMAKE_INSTALL_SYSCONFDIR ("etc") means /etc, as
# GNUInstallDirs' CMAKE_INSTALL_FULL_SYSCONFDIR has it.

set(MR_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "Where medrouted.service goes; relative to the install prefix unless absolute")

# ---- files installed as they are --------------------------------------------

install(FILES ${PROJECT_SOURCE_DIR}/docs/man/medrouted.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
install(FILES ${PROJECT_SOURCE_DIR}/docs/man/medroute.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${PROJECT_SOURCE_DIR}/docs/man/medroute.conf.5 DESTINATION ${CMAKE_INSTALL_MANDIR}/man5)

file(GLOB MR_DOC_FILES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/docs/*.md ${PROJECT_SOURCE_DIR}/docs/*.json)
install(FILES ${MR_DOC_FILES} DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${PROJECT_SOURCE_DIR}/config/medroute.conf DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# ---- files written or chosen at install time --------------------------------

# Configure-time values for the install script below.
install(CODE "
set(_mr_src \"${PROJECT_SOURCE_DIR}\")
set(_mr_gen \"${PROJECT_BINARY_DIR}/install-gen\")
set(_mr_version \"${PROJECT_VERSION}\")
set(_mr_sbindir \"${CMAKE_INSTALL_SBINDIR}\")
set(_mr_libdir \"${CMAKE_INSTALL_LIBDIR}\")
set(_mr_includedir \"${CMAKE_INSTALL_INCLUDEDIR}\")
set(_mr_sysconfdir \"${CMAKE_INSTALL_SYSCONFDIR}\")
set(_mr_docdir \"${CMAKE_INSTALL_DOCDIR}\")
set(_mr_unitdir \"${MR_SYSTEMD_UNITDIR}\")
")

install(CODE [[
# The absolute path of an install directory for the prefix of this install.
function(_mr_full out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  elseif(dir STREQUAL "etc" AND CMAKE_INSTALL_PREFIX STREQUAL "/usr")
    set(${out} "/etc" PARENT_SCOPE)
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

_mr_full(_mr_full_sbin "${_mr_sbindir}")
_mr_full(_mr_full_lib "${_mr_libdir}")
_mr_full(_mr_full_include "${_mr_includedir}")
_mr_full(_mr_full_doc "${_mr_docdir}")
_mr_full(_mr_full_units "${_mr_unitdir}")
_mr_full(_mr_full_etc "${_mr_sysconfdir}")
set(_mr_full_etc "${_mr_full_etc}/medroute")
file(MAKE_DIRECTORY "${_mr_gen}")

# The example configuration, unless the operator already has one: an upgrade
# must not replace the county's registry with the sample county.
if(EXISTS "$ENV{DESTDIR}${_mr_full_etc}/medroute.conf")
  message(STATUS "Keeping: $ENV{DESTDIR}${_mr_full_etc}/medroute.conf "
                 "(the new example is ${_mr_full_doc}/examples/medroute.conf)")
else()
  file(INSTALL DESTINATION "${_mr_full_etc}" TYPE FILE FILES "${_mr_src}/config/medroute.conf")
endif()

# The unit, its paths pointing at this install.
file(READ "${_mr_src}/systemd/medrouted.service" _mr_unit)
string(REPLACE "/usr/sbin/medrouted" "${_mr_full_sbin}/medrouted" _mr_unit "${_mr_unit}")
string(REPLACE "/etc/medroute/" "${_mr_full_etc}/" _mr_unit "${_mr_unit}")
string(REPLACE "/usr/share/doc/medroute/" "${_mr_full_doc}/" _mr_unit "${_mr_unit}")
file(WRITE "${_mr_gen}/medrouted.service" "${_mr_unit}")
file(INSTALL DESTINATION "${_mr_full_units}" TYPE FILE FILES "${_mr_gen}/medrouted.service")

# medroute.pc: libdir and includedir under ${prefix} when they are.
set(MR_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(MR_PC_VERSION "${_mr_version}")
foreach(_mr_d lib include)
  string(TOUPPER "${_mr_d}" _mr_u)
  string(LENGTH "${CMAKE_INSTALL_PREFIX}/" _mr_n)
  string(SUBSTRING "${_mr_full_${_mr_d}}" 0 ${_mr_n} _mr_head)
  if(_mr_head STREQUAL "${CMAKE_INSTALL_PREFIX}/")
    string(SUBSTRING "${_mr_full_${_mr_d}}" ${_mr_n} -1 _mr_rest)
    set(MR_PC_${_mr_u}DIR "\${prefix}/${_mr_rest}")
  else()
    set(MR_PC_${_mr_u}DIR "${_mr_full_${_mr_d}}")
  endif()
endforeach()
configure_file("${_mr_src}/cmake/medroute.pc.in" "${_mr_gen}/medroute.pc" @ONLY)
file(INSTALL DESTINATION "${_mr_full_lib}/pkgconfig" TYPE FILE FILES "${_mr_gen}/medroute.pc")
]])
