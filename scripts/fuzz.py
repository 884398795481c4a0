"""Bad-input campaign: drive the CLI verbs on mutated inputs and count what happens.

    python scripts/fuzz.py --budget 10000 [--seed 0] [--keep-failures DIR]

Each case builds one hostile input (bit flips and truncations of the sample and
real caffemodels, layers stored twice, hostile blob sizes, mutated prototxts,
bad plans, bad data files, CLI misuse, outputs naming inputs, SIGKILL during
writes) and runs a verb on it. In-process cases run in a worker process under
an address-space limit (resource.setrlimit) and a per-case alarm; kill cases
run a writer subprocess. Every case ends in one outcome:

  clean error          exit 1 with one ``error:`` line, or a usage error (exit 2)
  clean success        exit 0 where success is right
  traceback            any exception other than the project's errors (MemoryError included)
  hang                 the case outran its time limit
  silent wrong success exit 0 on an input that must be refused
  modified input       an input file's bytes changed
  truncated output     an output that is neither the old file nor a complete new one
  leftover temporary   a temporary file still beside an output after the next write

Printed: cases per target and outcome. Exit status 1 when any outcome other
than the two clean ones occurred.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from caffe_surgery import caffe_pb2  # noqa: E402
from caffe_surgery.cli import main  # noqa: E402

SAMPLE = REPO / "samples" / "lenet_maxout"
REAL_MODELS = REPO.parent / "shared" / "real-models"
OUTCOMES = ("clean error", "clean success", "traceback", "hang", "silent wrong success", "modified input",
            "truncated output", "leftover temporary")
CASE_SECONDS = 30
MEMORY_LIMIT = 6 << 30
TEMP_MARK = ".caffe-surgery-tmp"


class Hang(BaseException):
    """The per-case alarm went off."""


def _alarm(signum, frame):
    raise Hang


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr); exceptions other than SystemExit propagate."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


# -- inputs ----------------------------------------------------------------------------------

def _real_pairs() -> list[tuple[Path, Path]]:
    pairs = [(SAMPLE.with_suffix(".prototxt"), SAMPLE.with_suffix(".caffemodel"))]
    for folder, proto, weights in (("cifar10_quick_v1_everpeace", "cifar10_quick.prototxt",
                                    "cifar10_quick_iter_5000.caffemodel"),
                                   ("landmark106_dq", "landmark106.prototxt", "landmark106.caffemodel"),
                                   ("mtcnn_det1", "det1.prototxt", "det1.caffemodel")):
        if (REAL_MODELS / folder / weights).is_file():
            pairs.append((REAL_MODELS / folder / proto, REAL_MODELS / folder / weights))
    return pairs


def _weights_message(path: Path) -> caffe_pb2.NetParameter:
    message = caffe_pb2.NetParameter()
    message.ParseFromString(path.read_bytes())
    return message


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 8, 64))):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def _layers_with_blobs(message) -> list:
    return [layer for layer in message.layer if len(layer.blobs)] or [layer for layer in message.layers
                                                                     if len(layer.blobs)]


def _hostile_weights(message: caffe_pb2.NetParameter, rng: random.Random) -> tuple[bytes, str]:
    """A caffemodel that must be refused, and how it was made."""
    layers = _layers_with_blobs(message)
    layer = rng.choice(layers)
    blob = layer.blobs[rng.randrange(len(layer.blobs))]
    kind = rng.choice(("huge shape", "overflowing shape", "negative dim", "conflicting legacy dims", "no shape",
                       "no blobs", "duplicate bad copy first", "data length 2^40", "foreign blob count"))
    if kind == "huge shape":
        blob.shape.dim[:] = [rng.choice((1 << 31, 1 << 40, 10 ** 12)), 3]
    elif kind == "overflowing shape":
        blob.shape.dim[:] = [1 << 32, 1 << 32]
    elif kind == "negative dim":
        dims = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
        dims[rng.randrange(len(dims))] = -rng.choice((1, 2, 1 << 40))
        blob.shape.dim[:] = dims
    elif kind == "conflicting legacy dims":
        dims = list(blob.shape.dim) or [1]
        blob.shape.dim[:] = dims
        blob.num, blob.channels, blob.height, blob.width = 7, 5, 3, 1
    elif kind == "no shape":
        blob.ClearField("shape")
        for name in ("num", "channels", "height", "width"):
            blob.ClearField(name)
    elif kind == "no blobs":
        del layer.blobs[:]
    elif kind == "duplicate bad copy first":
        records = message.layer if len(message.layer) else message.layers
        originals = list(records)
        del records[:]
        for record in originals:
            if record.name == layer.name:
                bad = records.add()
                bad.CopyFrom(record)
                del bad.blobs[-1]
            records.add().CopyFrom(record)
    elif kind == "data length 2^40":
        from caffe_surgery.wire import encode_varint, field_key
        payload = message.SerializeToString()
        return payload + field_key(100) + encode_varint(1 << 40) + b"\0" * 64, kind
    elif kind == "foreign blob count":
        layer.blobs.add().CopyFrom(blob)
    return message.SerializeToString(), kind


def _mutate_prototxt(text: str, rng: random.Random) -> tuple[str, str | None]:
    """A mutated prototxt, and the reason it must be refused (None when either answer may be right)."""
    lines = text.split("\n")
    kind = rng.choice(("delete line", "duplicate line", "swap number", "unknown field", "empty", "comment only",
                       "training only", "zero input dim", "random bytes", "truncate", "non-utf8 name"))
    if kind == "delete line":
        del lines[rng.randrange(len(lines))]
    elif kind == "duplicate line":
        position = rng.randrange(len(lines))
        lines.insert(position, lines[position])
    elif kind == "swap number":
        import re
        numbers = [m for line in lines for m in re.finditer(r"\b\d+\b", line)]
        if numbers:
            value = str(rng.choice((0, -1, 1 << 31, 1 << 40, 10 ** 30, 3, 7)))
            target = rng.randrange(len(lines))
            lines[target] = re.sub(r"\b\d+\b", value, lines[target], count=1)
    elif kind == "unknown field":
        position = rng.randrange(len(lines))
        lines.insert(position, f"  fork_field_{rng.randrange(9)}: {rng.randrange(100)}")
    elif kind == "empty":
        return "", "an empty prototxt"
    elif kind == "comment only":
        return "# nothing but a comment\n# and another\n", "a comment-only prototxt"
    elif kind == "training only":
        return text.replace("layer {", "layer {\n  include { phase: TRAIN }"), "training-only layers"
    elif kind == "zero input dim":
        return text.replace("dim: 1 dim: 1 dim: 28", "dim: 1 dim: 0 dim: 28", 1), "an input dim of 0"
    elif kind == "random bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))).decode("latin-1"), None
    elif kind == "truncate":
        return text[: rng.randrange(len(text))], None
    elif kind == "non-utf8 name":
        return text.replace('name: "conv1"', 'name: "conv\\377\\376"', 1), None
    return "\n".join(lines), None


# -- targets -----------------------------------------------------------------------------------

def case_caffemodel(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    prototxt, weights = rng.choice(_real_pairs())
    data = weights.read_bytes()
    mode = rng.choice(("bit flip", "truncate", "hostile", "hostile", "foreign"))
    must_fail = None
    if mode == "bit flip":
        data = _flip_bits(data, rng)
    elif mode == "truncate":
        data = data[: rng.randrange(len(data))]
        must_fail = "a truncated caffemodel"
    elif mode == "hostile":
        data, kind = _hostile_weights(_weights_message(weights), rng)
        must_fail = kind
    else:
        other = [w for _, w in _real_pairs() if w != weights]
        if not other:
            return "clean success", []
        data = rng.choice(other).read_bytes()
        must_fail = "the weights of another net"
    path = work / "mutated.caffemodel"
    path.write_bytes(data)
    verb = rng.choice(("check", "info", "export", "fold-bn", "sparsify"))
    argv = {"check": ["check", str(prototxt), "-w", str(path)],
            "info": ["info", str(prototxt), "-w", str(path)],
            "export": ["export", str(prototxt), "-w", str(path), "-o", str(work / "out.onnx")],
            "fold-bn": ["fold-bn", str(prototxt), "-w", str(path), "-o", str(work / "folded")],
            "sparsify": ["sparsify", str(prototxt), "-w", str(path), "--sparsity", "0.5", "-o",
                         str(work / "sparse")]}[verb]
    if mode == "truncate" and verb != "check":
        must_fail = None  # a cut at a layer boundary is a smaller, valid caffemodel
    return _judge(argv, must_fail, [path, prototxt])


def case_prototxt(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    text, must_fail = _mutate_prototxt(SAMPLE.with_suffix(".prototxt").read_text(), rng)
    path = work / "mutated.prototxt"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape") if text else b"")
    verb = rng.choice(("check", "info", "info-groups", "export"))
    weights = str(SAMPLE.with_suffix(".caffemodel"))
    argv = {"check": ["check", str(path), "-w", weights], "info": ["info", str(path)],
            "info-groups": ["info", str(path), "--groups"],
            "export": ["export", str(path), "-w", weights, "-o", str(work / "out.onnx")]}[verb]
    return _judge(argv, must_fail, [path])


def _random_plan(rng: random.Random) -> tuple[object, str | None]:
    names = ["conv1", "conv2", "fc_3", "fc_classes", "pool1", "nope", ""]
    sizes = {"conv1": 20, "conv2": 50, "fc_3": 256}
    kind = rng.choice(("valid", "valid", "out of range", "boolean", "duplicate", "empty", "not a list", "float",
                       "huge", "unknown layer", "no keep", "wrong version", "garbage"))
    layer = rng.choice(list(sizes))
    count = sizes[layer]
    keep = sorted(rng.sample(range(count), rng.randrange(1, count + 1)))
    if layer == "fc_3":  # maxout units of k = 4: the same number kept in every unit
        per_unit = rng.randrange(1, 5)
        keep = [u * 4 + p for u in range(64) for p in sorted(rng.sample(range(4), per_unit))]
    plan = {"version": 1, "keep": {layer: keep}}
    reason = None
    if kind == "out of range":
        keep.append(count + rng.randrange(1, 1 << 40))
        reason = kind
    elif kind == "boolean":
        plan["keep"][layer] = [True] * 3
        reason = "boolean indices"
    elif kind == "duplicate":
        keep.append(keep[0])
        reason = "an index listed twice"
    elif kind == "empty":
        plan["keep"][layer] = []
        reason = "a plan keeping nothing"
    elif kind == "not a list":
        plan["keep"][layer] = rng.choice((5, "all", {"a": 1}, None))
        reason = kind
    elif kind == "float":
        plan["keep"][layer] = [0.5, 1.0]
        reason = "fractional indices"
    elif kind == "huge":
        plan["keep"][layer] = [10 ** 30]
        reason = "an index out of range"
    elif kind == "unknown layer":
        plan["keep"] = {rng.choice(names[4:]): [0]}
        reason = kind
    elif kind == "no keep":
        del plan["keep"]
        reason = kind
    elif kind == "wrong version":
        plan["version"] = rng.choice((0, 2, "1", None))
        reason = kind
    elif kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), "not JSON"
    return plan, reason


def case_plan(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    plan, must_fail = _random_plan(rng)
    path = work / "plan.json"
    if isinstance(plan, bytes):
        path.write_bytes(plan)
    elif rng.random() < 0.05:
        import numpy as np
        np.save(work / "plan.npy", np.array([plan], dtype=object), allow_pickle=True)
        path, must_fail = work / "plan.npy", "a pickled plan"
    else:
        path.write_text(json.dumps(plan))
    argv = ["prune", str(SAMPLE.with_suffix(".prototxt")), "-w", str(SAMPLE.with_suffix(".caffemodel")),
            "--plan", str(path), "-o", str(work / "pruned")] + (["--dry-run"] if rng.random() < 0.7 else [])
    return _judge(argv, must_fail, [path])


def _idx(dims: list[int], payload: bytes) -> bytes:
    import struct
    return b"\0\0\x08" + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def case_data(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    import numpy as np
    kind = rng.choice(("idx", "idx huge header", "idx truncated", "csv garbage", "npy pickled", "npz truncated",
                       "dev zero", "list garbage", "idx good"))
    must_fail = None
    if kind in ("idx", "idx good"):
        path = work / "images.idx"
        images = bytes(rng.randrange(256) for _ in range(4 * 28 * 28))
        data = _idx([4, 28, 28], images)
        path.write_bytes(_flip_bits(data, rng) if kind == "idx" else data)
        spec = f"idx:{path}"
    elif kind == "idx huge header":
        path = work / "images.idx"
        path.write_bytes(_idx([rng.choice((1 << 31, 4294967295)), 4096, 4096], b"\0" * 64))
        spec, must_fail = f"idx:{path}", "an IDX header larger than the file"
    elif kind == "idx truncated":
        path = work / "images.idx"
        path.write_bytes(_idx([4, 28, 28], b"\0" * rng.randrange(4 * 28 * 28)))
        spec, must_fail = f"idx:{path}", "a truncated IDX file"
    elif kind == "csv garbage":
        path = work / "data.csv"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(400))))
        spec = f"csv:{path}"
    elif kind == "npy pickled":
        path = work / "data.npy"
        np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
        spec, must_fail = f"npy:{path}", "a pickled array"
    elif kind == "npz truncated":
        path = work / "data.npz"
        buffer = io.BytesIO()
        np.savez(buffer, data=np.zeros((4, 1, 28, 28), np.uint8), labels=np.zeros(4))
        raw = buffer.getvalue()
        path.write_bytes(raw[: rng.randrange(len(raw))])
        spec, must_fail = f"npy:{path}", "a truncated archive"
    elif kind == "dev zero":
        path = Path("/dev/zero")
        spec, must_fail = rng.choice(("csv", "idx", "npy", "list")) + ":/dev/zero", "a device"
    else:
        path = work / "list.txt"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
        spec = f"list:{path}"
    argv = ["eval", str(SAMPLE.with_suffix(".prototxt")), "-w", str(SAMPLE.with_suffix(".caffemodel")),
            "--data", spec, "--limit", "4", "--device", "cpu", "--threads", "1"]
    return _judge(argv, must_fail, [path] if path.is_file() else [])


def _misuse_argv(rng: random.Random, work: Path) -> tuple[list[str], str | None]:
    proto, weights = str(SAMPLE.with_suffix(".prototxt")), str(SAMPLE.with_suffix(".caffemodel"))
    out = str(work / "out")
    choices = [
        (["prune", proto, "-w", weights, "--criterion", "weight-l1", "--global", "--keep", "5", "-o", out],
         "--global with --keep"),
        (["prune", proto, "-w", weights, "--criterion", "weight-l1", "--global", "--ratio", "0.5",
          "--layer-ratio", "conv1=0.0", "-o", out], "--global with --layer-ratio"),
        (["prune", proto, "-w", weights, "--criterion", "random-masks", "--masks", rng.choice(("0", "-1")),
          "--ratio", "0.5", "-o", out], "no masks"),
        (["eval", proto, "-w", weights, "--limit", rng.choice(("0", "-3")), "--data", "idx:/nonexistent"],
         "a limit of no samples"),
        (["prune", proto, "-w", weights, "--criterion", "weight-l1", "-o", out], "no amount to remove"),
        (["prune", proto, "-w", weights, "--criterion", rng.choice(("nope", "")), "--ratio", "0.5", "-o", out],
         "an unknown criterion"),
        (["prune", proto, "-w", weights, "--criterion", "weight-l1", "--ratio", rng.choice(("1", "-0.1", "x")),
          "-o", out], "a ratio outside [0, 1)"),
        (["info", proto, "--input", rng.choice(("images=0,1,28,28", "images=1,1,-28,28", "images=x", "nope=1,1,28,28"))],
         "a bad --input"),
        (["info", proto, "--max-memory", rng.choice(("0", "-1G", "lots"))], "a bad --max-memory"),
        (["check", proto, "-w", weights, "--max-memory", "1K"], "weights larger than --max-memory"),
        (["relevance", "merge", "-o", out], None),
        (["compare", proto, weights, proto, weights, "--limit", "100000000", "--max-memory", "1M"],
         "a comparison batch beyond the memory limit"),
        (["sparsify", proto, "-w", weights, "--sparsity", "0.5", "--threshold", "1", "-o", out], "two rules"),
        ([rng.choice(("info", "check", "prune", "export", "bogus"))] + rng.sample(
            ["--json", "--groups", "-w", weights, proto, "-o", out, "--phase", "VAL", "--limit", "2"], 3), None),
    ]
    return rng.choice(choices)


def case_cli(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    argv, must_fail = _misuse_argv(rng, work)
    return _judge(argv, must_fail, [])


def case_output_is_input(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    """Every writer pointed at one of its inputs: refused, inputs byte-for-byte unchanged."""
    proto, weights = work / "net.prototxt", work / "net.caffemodel"
    proto.write_bytes(SAMPLE.with_suffix(".prototxt").read_bytes())
    weights.write_bytes(SAMPLE.with_suffix(".caffemodel").read_bytes())
    stats = work / "stats.npz"
    prefix = str(work / "net")
    choices = [
        ["prune", str(proto), "-w", str(weights), "--criterion", "weight-l1", "--ratio", "0.5", "-o", prefix],
        ["fold-bn", str(proto), "-w", str(weights), "-o", prefix],
        ["sparsify", str(proto), "-w", str(weights), "--sparsity", "0.5", "-o", prefix],
        ["upgrade", str(proto), str(proto)],
        ["upgrade", str(proto), str(work / "." / "net.prototxt")],
        ["upgrade", str(proto), str(work / "new.prototxt"), "-w", str(weights), "-o", str(weights)],
        ["export", str(proto), "-w", str(weights), "-o", str(weights)],
        ["relevance", str(proto), "-w", str(weights), "--criterion", "apoz", "--data", "idx:/nonexistent",
         "-o", str(weights)],
        ["relevance", "merge", str(stats), "-o", str(stats)],
        ["convert-data", f"lmdb:{work}/db", "-o", str(work / "db"), "--force"],
    ]
    argv = rng.choice(choices)
    if argv[0] == "relevance" and argv[1] == "merge":
        import numpy as np
        np.savez(stats, samples=np.array(3))
    if argv[0] == "convert-data":
        (work / "db").mkdir(exist_ok=True)
    link = work / "link.caffemodel"
    if rng.random() < 0.2 and "-o" in argv and argv[argv.index("-o") + 1] == str(weights):
        link.unlink(missing_ok=True)
        os.link(weights, link)
        argv[argv.index("-o") + 1] = str(link)
    return _judge(argv, "an output naming an input", [proto, weights, stats, work / "db"])


def _judge(argv: list[str], must_fail: str | None, inputs: list[Path]) -> tuple[str, list[Path]]:
    before = {path: _digest(path) for path in inputs}
    code, out, err = run_cli(argv)
    if any(_digest(path) != digest for path, digest in before.items()):
        return "modified input", inputs
    if code == 0:
        return ("silent wrong success" if must_fail else "clean success"), inputs
    lines = err.strip().split("\n")
    listed = argv[0] == "check" and out.strip()  # check lists every problem on stdout
    if "Traceback" not in err and (code == 2 or (code == 1 and (lines[-1].startswith("error: ") or listed))):
        return "clean error", inputs
    return "traceback", inputs + [Path(f"stderr: exit {code}: {argv}\n{out[-500:]}\n{err[-1500:]}")]


# -- kills during writes (subprocesses) ----------------------------------------------------------

_WRITER = """
import sys
sys.path.insert(0, {repo!r})
from caffe_surgery.io import atomic_write
size = {size}
atomic_write({path!r}, (bytes([{fill}]) * (1 << 20) for _ in range(size)))
"""


def case_sigkill(rng: random.Random, work: Path) -> tuple[str, list[Path]]:
    """A writer killed at a random moment leaves the old file or the complete new one; the next write
    into the folder leaves no temporary behind."""
    target = work / "killed.bin"
    old = bytes([1]) * (1 << 20)
    target.write_bytes(old)
    size, fill = rng.choice((8, 32, 64)), rng.randrange(2, 256)
    process = subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=str(REPO), size=size, fill=fill,
                                                                     path=str(target))])
    time.sleep(rng.uniform(0.0, 1.5))
    process.kill()
    process.wait()
    data = target.read_bytes()
    if data != old and data != bytes([fill]) * (size << 20):
        return "truncated output", []
    from caffe_surgery.io import atomic_write
    atomic_write(work / "next.bin", [b"next"])
    if any(TEMP_MARK in p.name for p in work.iterdir()):
        return "leftover temporary", []
    return "clean success", []


TARGETS = {"caffemodel": (case_caffemodel, 5), "prototxt": (case_prototxt, 4), "plan": (case_plan, 4),
           "data": (case_data, 2), "cli": (case_cli, 2), "output=input": (case_output_is_input, 2)}
KILL_EVERY = 250


def _worker(task) -> list[tuple[str, str, str]]:
    """Run a chunk of in-process cases under the memory limit: (target, outcome, detail) each."""
    seed, count, keep = task
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _alarm)
    import logging
    logging.disable(logging.WARNING)
    rng = random.Random(seed)
    names = list(TARGETS)
    weights = [TARGETS[n][1] for n in names]
    results = []
    for index in range(count):
        name = rng.choices(names, weights)[0]
        case_rng = random.Random(rng.random())
        with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
            detail = ""
            signal.alarm(CASE_SECONDS)
            try:
                outcome, paths = TARGETS[name][0](case_rng, Path(folder))
                detail = " ".join(str(p) for p in paths if str(p).startswith("stderr: "))
            except Hang:
                outcome = "hang"
            except BaseException as exc:  # noqa: BLE001 - counting every escape is the point
                outcome, detail = "traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip()
                detail += "\n" + traceback.format_exc()[-1500:]
            finally:
                signal.alarm(0)
            if outcome not in ("clean error", "clean success") and keep:
                detail = detail or "see the inputs"
            results.append((name, outcome, detail[:2000]))
    return results


def run(budget: int, seed: int, jobs: int, keep: Path | None) -> dict[str, Counter]:
    """Run ``budget`` cases; return the outcome counts per target."""
    chunk = 50
    kills = budget // KILL_EVERY
    tasks = [(seed * 1_000_003 + i, min(chunk, budget - kills - i * chunk), keep is not None)
             for i in range((budget - kills + chunk - 1) // chunk)]
    counts: dict[str, Counter] = {}
    started = time.time()
    failures = []
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=4) as pool:
        for done, results in enumerate(pool.imap_unordered(_worker, tasks), 1):
            for target, outcome, detail in results:
                counts.setdefault(target, Counter())[outcome] += 1
                if outcome not in ("clean error", "clean success"):
                    failures.append((target, outcome, detail))
            if done % 10 == 0:
                print(f"  {sum(sum(c.values()) for c in counts.values())} cases, {time.time() - started:.0f} s",
                      file=sys.stderr, flush=True)
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    for _ in range(kills):
        with tempfile.TemporaryDirectory(prefix="fuzz-kill-") as folder:
            outcome, _ = case_sigkill(rng, Path(folder))
        counts.setdefault("SIGKILL during write", Counter())[outcome] += 1
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "failures.json").write_text(json.dumps(failures, indent=1))
    return counts


def report(counts: dict[str, Counter], seconds: float) -> str:
    """The table of cases per target and outcome."""
    width = max(len(t) for t in counts) + 2
    shown = [o for o in OUTCOMES if any(c[o] for c in counts.values())] or list(OUTCOMES[:2])
    lines = ["target".ljust(width) + "".join(o.rjust(max(len(o), 6) + 2) for o in shown) + "   total"]
    total = Counter()
    for target, counter in sorted(counts.items()):
        total.update(counter)
        lines.append(target.ljust(width) + "".join(str(counter[o]).rjust(max(len(o), 6) + 2) for o in shown)
                     + str(sum(counter.values())).rjust(8))
    lines.append("all".ljust(width) + "".join(str(total[o]).rjust(max(len(o), 6) + 2) for o in shown)
                 + str(sum(total.values())).rjust(8))
    missing = [o for o in OUTCOMES if o not in shown]
    lines.append(f"({', '.join(missing)}: 0)" if missing else "")
    lines.append(f"{sum(total.values())} cases in {seconds:.0f} s")
    return "\n".join(lines)


def main_fuzz(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=1000, help="number of cases (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--keep-failures", type=Path, help="write the failing cases' details here")
    args = parser.parse_args(argv)
    started = time.time()
    counts = run(args.budget, args.seed, args.jobs, args.keep_failures)
    print(report(counts, time.time() - started))
    bad = sum(c[o] for c in counts.values() for o in OUTCOMES[2:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_fuzz())
