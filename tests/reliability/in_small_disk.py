"""Run a service with one folder on a tiny disk of its own: ``python -m tests.reliability.in_small_disk``.

``SMALL_DISK_DIR`` (the folder), ``SMALL_DISK_SIZE`` (a tmpfs size such as ``2m``) and
``SMALL_DISK_MODULE`` (the service, run as ``python -m``) come from the environment. The
process re-executes itself in a private user and mount namespace (``unshare``, no privileges
needed), mounts a tmpfs of that size on the folder and becomes the service with the same pid,
so a test can fill the disk for real and still ``kill -9`` the service.
"""

from __future__ import annotations

import os
import shutil
import sys


def main() -> None:
    """Exec the service inside its own mount namespace with the small disk mounted."""
    folder, size, module = (os.environ[k] for k in ("SMALL_DISK_DIR", "SMALL_DISK_SIZE", "SMALL_DISK_MODULE"))
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("unshare (util-linux) is needed to give the service a small disk of its own")
    os.makedirs(folder, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && exec "$3" -m "$4"'
    os.execv(unshare, [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", size, folder,
                       sys.executable, module])


if __name__ == "__main__":
    main()
