"""The package's /etc/fieldtrace/fieldtrace.toml, made from the example config.

Valid as shipped and the same as the embedded default (this host, KB type linux-host,
bundles into the local outbox): every setting of the example is there, commented out,
so the site uncomments what it needs.
"""

import sys
from pathlib import Path

HEADER = """\
# fieldtrace site config (/etc/fieldtrace/fieldtrace.toml), read by the service and by
# `sudo fieldtrace ...`. As shipped it sets nothing: fieldtrace collects from this host
# into the outbox in /var/lib/fieldtrace, as with no config at all. Uncomment and edit
# what the site needs ([site], [vendor], [helpdesk], [[devices]] ...), then run
# `sudo fieldtrace config check` and `sudo systemctl reload fieldtrace`.
# Site KB types go in /etc/fieldtrace/kb.d (add it to [kb] paths).
#
"""

out = [HEADER]
for line in Path(sys.argv[1]).read_text().splitlines():
    if line.strip() and not line.lstrip().startswith("#"):
        out.append("# " + line + "\n")
    else:
        out.append(line + "\n")
sys.stdout.write("".join(out))
