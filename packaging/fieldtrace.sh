#!/bin/sh
# /usr/bin/fieldtrace on a packaged install: one owner for the site's state.
#
# The service runs as the system user "fieldtrace" with $FIELDTRACE_HOME=/var/lib/fieldtrace.
# A technician who runs `sudo fieldtrace ...` gets the same identity, outbox and known_hosts:
# as root, this wrapper drops to the fieldtrace user, keeping only the two capabilities the
# service has (CAP_NET_RAW for captures, CAP_NET_ADMIN for reading the firewall), so no state
# file is ever created by root. Any other user runs fieldtrace with their own state (e.g. a
# vendor engineer opening bundles).
set -e
FT=/opt/fieldtrace/bin/fieldtrace
export FIELDTRACE_PROG=fieldtrace  # hints name the command the user typed
if [ "$(id -u)" = 0 ] && [ -z "${FIELDTRACE_AS_ROOT:-}" ]; then
    export FIELDTRACE_HOME=/var/lib/fieldtrace
    export FIELDTRACE_CONFIG="${FIELDTRACE_CONFIG:-/etc/fieldtrace/fieldtrace.toml}"
    export HOME=/var/lib/fieldtrace
    exec setpriv --reuid=fieldtrace --regid=fieldtrace --init-groups \
        --inh-caps=-all,+net_raw,+net_admin --ambient-caps=-all,+net_raw,+net_admin \
        --bounding-set=-all,+net_raw,+net_admin --no-new-privs -- "$FT" "$@"
fi
if [ "$(id -un)" = fieldtrace ]; then
    export FIELDTRACE_HOME=/var/lib/fieldtrace
    export FIELDTRACE_CONFIG="${FIELDTRACE_CONFIG:-/etc/fieldtrace/fieldtrace.toml}"
fi
exec "$FT" "$@"
