#!/usr/bin/python3
"""Debian's LAVA dispatcher (lava-dispatcher 2023.01), run from the debs scripts/lava-setup
unpacked, without a LAVA server.

  lava.py render ROOT DICTIONARY OUT [TEMPLATES...]
                                          device dictionary -> device YAML, as lava-server does,
                                          checked against LAVA's device schema; TEMPLATES are
                                          device-type folders searched first (like
                                          /etc/lava-server/dispatcher-config/device-types)
  lava.py commands DEVICE_YAML            its `commands` section, one `KEY<TAB>VALUE` a line
                                          (nested keys joined with dots, lists with commas)
  lava.py run ROOT DOWNLOAD_DIR ARGS...   lava-run ARGS, with its download folder moved
  lava.py results LOG                     the results in a job log: `DEFINITION CASE RESULT`

ROOT is the folder the debs were unpacked into. DOWNLOAD_DIR replaces
/var/lib/lava/dispatcher/tmp: the dispatcher puts the test overlay there and the board fetches
it from http://<dispatcher_http_ip>/tmp/..., so whoever serves HTTP serves DOWNLOAD_DIR's
parent and DOWNLOAD_DIR must be named `tmp`.
"""

import os
import runpy
import sys
import types

PACKAGES = "usr/lib/python3/dist-packages"
DEVICE_TYPES = "usr/share/lava-server/device-types"


def render(root, dictionary, out, templates):
    """Renders like lava-server: a sandboxed jinja2 over the dictionary's folder, the extra
    template folders and the device-type templates; then validates like `lava-schema device`."""
    import jinja2.sandbox
    import yaml

    env = jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(
            [os.path.dirname(os.path.abspath(dictionary))]
            + list(templates)
            + [os.path.join(root, DEVICE_TYPES)]
        ),
        trim_blocks=True,
        autoescape=False,
    )
    text = env.get_template(os.path.basename(dictionary)).render()
    # Fail here, not inside lava-run, on a broken dictionary.
    sys.path.insert(0, os.path.join(root, PACKAGES))
    from lava_common.schemas.device import validate

    validate(yaml.safe_load(text))
    with open(out, "w") as f:
        f.write(text)


def commands(device):
    import yaml

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            yield prefix, ",".join(str(v) for v in value)
        else:
            yield prefix, str(value)

    with open(device) as f:
        data = yaml.safe_load(f)
    for key, value in walk("", data.get("commands", {})):
        print(f"{key}\t{value}")


def run(root, download_dir, args):
    # guestfs is imported at module level but used only by guestfs deploys; Debian's
    # python3-guestfs pulls an old qemu that clashes with the host's.
    sys.modules.setdefault("guestfs", types.ModuleType("guestfs"))
    sys.path.insert(0, os.path.join(root, PACKAGES))

    import lava_common.constants

    # Before any lava_dispatcher module copies it with `from ... import`.
    lava_common.constants.DISPATCHER_DOWNLOAD_DIR = download_dir
    os.makedirs(download_dir, exist_ok=True)

    sys.argv = ["lava-run", *args]
    runpy.run_path(os.path.join(root, "usr/bin/lava-run"), run_name="__main__")


def results(log):
    """lava-run writes its log as YAML, one mapping a line; results are `lvl: results`."""
    import yaml

    with open(log) as f:
        for line in f:
            if '"lvl": "results"' not in line:
                continue
            msg = yaml.safe_load(line)["msg"]
            print(msg["definition"], msg["case"], msg["result"])


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "render":
        render(*sys.argv[2:5], sys.argv[5:])
    elif len(sys.argv) == 3 and sys.argv[1] == "commands":
        commands(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "results":
        results(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
