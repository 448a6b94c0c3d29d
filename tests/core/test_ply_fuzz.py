"""core.ply fuzz: thousands of files mutated from a real head.ply are each either read or refused
with PlyFormatError, and nothing is accepted that the header does not describe.

What counts as a legitimate accept, judged independently of the reader: the header (wherever its
end_header line is) is followed by data that, read with the real file's layout (its property
names, all float32), gives exactly the splats returned; the count is the header's; the bytes left
over are exactly those of the elements the header declares after the vertex element; and every
value is finite with a non-zero rotation. So a flipped byte inside the float data that stays
finite, an added comment, CRLF line ends, or a header count changed together with the rows
appended or removed is fine; anything else accepted is "mismatched".
"""

import os
import re
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from facesplat.core import ply
from facesplat.core.ply import PlyFormatError, read_splat_ply

SEED_FILE = Path(__file__).resolve().parents[1] / "data" / "head_small.ply"
FILES = 10000
SEED = 20240611
HEADER_END = re.compile(rb"\nend_header\r?\n")
TYPE_SIZES = {b"char": 1, b"int8": 1, b"uchar": 1, b"uint8": 1, b"short": 2, b"int16": 2, b"ushort": 2,
              b"uint16": 2, b"int": 4, b"int32": 4, b"uint": 4, b"uint32": 4, b"float": 4, b"float32": 4,
              b"double": 8, b"float64": 8}

BASE = SEED_FILE.read_bytes()
BASE_DATA_START = HEADER_END.search(BASE).end()
BASE_HEADER_LINES = BASE[:BASE_DATA_START - 1].split(b"\n")
NAMES = [line.split()[2].decode() for line in BASE_HEADER_LINES if line.startswith(b"property ")]
STRIDE = 4 * len(NAMES)
N = (len(BASE) - BASE_DATA_START) // STRIDE
USED = [i for i, name in enumerate(NAMES) if name not in ("nx", "ny", "nz")]
ROT = [NAMES.index(f"rot_{i}") for i in range(4)]

INSERTED_LINES = [b"comment fuzz", b"obj_info fuzz", b"", b" ", b"element vertex 3", b"element vertex 1049",
                  b"element face 0", b"element face 2", b"property float extra", b"property uchar opacity",
                  b"property list uchar int vertex_indices", b"element extra 3\nproperty float a",
                  b"format binary_little_endian 1.0", b"format ascii 1.0", b"end_header", b"ply",
                  b"garbage \xff\x00", b"property float x", b"property float f_rest_9", b"comment \x1c\x85"]
COUNTS = [b"0", b"1", b"1048", b"1050", b"2098", b"524", b"268435456", b"99999999999999999999", b"-1",
          b"1049.0", b"0x419", b"", b"1049 1049", b"\xd9\xa1"]
TYPES = [b"float32", b"double", b"uchar", b"int", b"uint", b"short", b"floa", b"list uchar float", b"float64", b""]


def split_header(data: bytes):
    end = HEADER_END.search(data)
    return (data[:end.end()], data[end.end():]) if end else (data, b"")


def header_lines(data: bytes):
    head, rest = split_header(data)
    return head.split(b"\n"), rest


def join_header(lines, rest):
    return b"\n".join(lines) + rest


# Each mutation takes (rng, data) and returns new bytes. Some keep the file valid on purpose.
def flip_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.integers(1, 5)):
        data[rng.integers(len(data))] = rng.integers(256)
    return bytes(data)


def flip_header_byte(rng, data):
    data = bytearray(data)
    data[rng.integers(min(len(data), BASE_DATA_START))] = rng.integers(256)
    return bytes(data)


def flip_data_bit(rng, data):
    data = bytearray(data)
    if len(data) > BASE_DATA_START:
        data[rng.integers(BASE_DATA_START, len(data))] ^= 1 << rng.integers(8)
    return bytes(data)


def truncate(rng, data):
    return data[:rng.integers(len(data))]


def truncate_header(rng, data):
    return data[:rng.integers(BASE_DATA_START)]


def insert_header_line(rng, data):
    lines, rest = header_lines(data)
    lines.insert(rng.integers(len(lines)), INSERTED_LINES[rng.integers(len(INSERTED_LINES))])
    return join_header(lines, rest)


def delete_header_line(rng, data):
    lines, rest = header_lines(data)
    del lines[rng.integers(len(lines))]
    return join_header(lines, rest)


def duplicate_header_line(rng, data):
    lines, rest = header_lines(data)
    i = rng.integers(len(lines))
    lines.insert(i, lines[i])
    return join_header(lines, rest)


def change_count(rng, data):
    return data.replace(b"element vertex 1049", b"element vertex " + COUNTS[rng.integers(len(COUNTS))], 1)


def change_type(rng, data):
    lines, rest = header_lines(data)
    props = [i for i, line in enumerate(lines) if line.startswith(b"property float ")]
    if props:
        i = props[rng.integers(len(props))]
        lines[i] = b"property " + TYPES[rng.integers(len(TYPES))] + b" " + lines[i].split()[-1]
    return join_header(lines, rest)


def append_bytes(rng, data):
    size = [1, 3, 4, STRIDE, 2 * STRIDE, int(rng.integers(1, 400))][rng.integers(6)]
    return data + rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def blank_after_end_header(rng, data):
    return data.replace(b"end_header\n", b"end_header\n" + [b"\n", b"\r\n", b" ", b"\n\n"][rng.integers(4)], 1)


def crlf_header(rng, data):
    head, rest = split_header(data)
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + rest


def resize_consistently(rng, data):
    """Change the count and append or cut the matching rows: still a valid file."""
    m = int(rng.integers(1, 40))
    if rng.random() < 0.5:
        rows = rng.normal(size=(m, len(NAMES))).astype("<f4").tobytes()
        return data.replace(b"element vertex 1049", f"element vertex {N + m}".encode(), 1) + rows
    return data.replace(b"element vertex 1049", f"element vertex {N - m}".encode(), 1)[:len(data) - m * STRIDE]


def _with_floats(data, change):
    """Apply change(values) to the float32 values after the (possibly mutated) header."""
    head, rest = split_header(data)
    values = np.frombuffer(rest, "<f4", count=len(rest) // 4).copy()
    if len(values) >= len(NAMES):
        change(values)
    return head + values.tobytes() + rest[values.nbytes:]


def inject_non_finite(rng, data):
    def change(values):
        for _ in range(rng.integers(1, 6)):
            values[rng.integers(len(values))] = [np.nan, np.inf, -np.inf][rng.integers(3)]
    return _with_floats(data, change)


def zero_rotation(rng, data):
    def change(values):
        row = rng.integers(len(values) // len(NAMES))
        values[row * len(NAMES) + np.array(ROT)] = 0.0
    return _with_floats(data, change)


MUTATIONS = [flip_bytes, flip_header_byte, flip_data_bit, truncate, truncate_header, insert_header_line,
             delete_header_line, duplicate_header_line, change_count, change_type, append_bytes,
             blank_after_end_header, crlf_header, resize_consistently, inject_non_finite, zero_rotation]
# Mutations that leave a valid file whenever the values stay finite (used to catch false refusals).
KEEP_VALID = {flip_data_bit, crlf_header, resize_consistently, inject_non_finite}


def declared(head: bytes):
    """(vertex count, bytes of the elements after vertex, whether exact) as the header declares
    them: an independent reading, for headers the reader accepted."""
    total, exact, after_vertex, element_count, vertex_count = 0, True, False, 0, None
    for line in head.split(b"\n"):
        words = line.split()
        if words[:1] == [b"element"]:
            if words[1] == b"vertex":
                vertex_count = int(words[2])
            after_vertex = after_vertex or words[1] == b"vertex"
            element_count = int(words[2]) if after_vertex and words[1] != b"vertex" else 0
        elif words[:1] == [b"property"] and element_count:
            if words[1] == b"list":
                total, exact = total + element_count * TYPE_SIZES[words[2]], False
            else:
                total += element_count * TYPE_SIZES[words[1]]
    return vertex_count, total, exact


def expected_splats(data: bytes, count: int):
    """The data read with the seed file's layout, or None where it does not fit the header."""
    head, rest = split_header(data)
    vertex_count, extra, exact = declared(head)
    if vertex_count != count or len(rest) < count * STRIDE:
        return None
    left = len(rest) - count * STRIDE
    if left < extra or (exact and left != extra):
        return None
    return np.frombuffer(rest, "<f4", count=count * len(NAMES)).reshape(count, len(NAMES))


def legitimate(data: bytes, splats) -> bool:
    table = expected_splats(data, len(splats))
    if table is None:
        return False
    got = np.concatenate([splats.means, splats.sh0, splats.shN.transpose(0, 2, 1).reshape(len(splats), -1),
                          splats.opacities[:, None], splats.scales, splats.quats], axis=1)
    want = table[:, USED]
    return (got.shape == want.shape and np.array_equal(got, want) and np.isfinite(got).all()
            and (splats.quats != 0).any(axis=1).all())


def valid_by_construction(data: bytes) -> bool:
    """For KEEP_VALID mutations: the file is valid iff its data reads finite with the seed layout."""
    head, rest = split_header(data)
    count = int(re.search(rb"element vertex (\d+)", head).group(1))
    table = expected_splats(data, count)
    return (table is not None and np.isfinite(table[:, USED]).all()
            and (table[:, ROT] != 0).any(axis=1).all())


def _hang(signum, frame):
    raise TimeoutError("read_splat_ply hung on a fuzzed file")


@pytest.fixture
def scratch(tmp_path):
    """A folder in memory where there is one: thousands of rewrites of a 110 KB file would wait on
    a busy disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="facesplat-fuzz-") as folder:
            yield Path(folder)
    else:
        yield tmp_path


def test_fuzzed_files_are_read_or_refused_never_mismatched(scratch, monkeypatch):
    rng = np.random.default_rng(SEED)
    path = scratch / "fuzz.ply"
    counts = dict(files=0, accepted=0, rejected=0, mismatched_accepted=0, wrongly_rejected=0, other_errors=0)
    examples = []
    default_chunk = ply.READ_CHUNK_BYTES
    previous = signal.signal(signal.SIGALRM, _hang)
    start = time.perf_counter()
    try:
        for _ in range(FILES):
            data, kinds = BASE, []
            for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
                mutation = MUTATIONS[rng.integers(len(MUTATIONS))]
                if data:  # an earlier mutation may have truncated the file to nothing
                    data, kinds = mutation(rng, data), kinds + [mutation]
            path.write_bytes(data)
            # Half the files are read in chunks of a few hundred rows, so that path is fuzzed too.
            monkeypatch.setattr(ply, "READ_CHUNK_BYTES", 40_000 if rng.random() < 0.5 else default_chunk)
            counts["files"] += 1
            signal.setitimer(signal.ITIMER_REAL, 5.0)
            try:
                splats = read_splat_ply(path)
            except PlyFormatError as e:
                counts["rejected"] += 1
                message = str(e)
                assert len(message.splitlines()) == 1 and str(path) in message, message
                if len(kinds) == 1 and kinds[0] in KEEP_VALID and valid_by_construction(data):
                    counts["wrongly_rejected"] += 1
                    examples.append(f"{kinds[0].__name__} refused: {message}")
            except Exception as e:  # noqa: BLE001 - what this test counts
                counts["other_errors"] += 1
                examples.append(f"{[k.__name__ for k in kinds]}: {type(e).__name__}: {e}")
            else:
                counts["accepted"] += 1
                if not legitimate(data, splats):
                    counts["mismatched_accepted"] += 1
                    examples.append(f"{[k.__name__ for k in kinds]} accepted ({len(splats)} Gaussians)")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    print(f"\nPLY fuzz: {counts['files']} files, {counts['accepted']} accepted, {counts['rejected']} rejected, "
          f"{counts['mismatched_accepted']} mismatched accepted, {counts['wrongly_rejected']} wrongly rejected, "
          f"{counts['other_errors']} other errors, {elapsed:.1f} s")
    assert counts["other_errors"] == counts["mismatched_accepted"] == counts["wrongly_rejected"] == 0, examples[:10]
    # The mutations are meant to hit both outcomes; a reader that refused everything would fail here.
    assert counts["accepted"] > FILES // 10 and counts["rejected"] > FILES // 2
    assert elapsed < 30


if not hasattr(signal, "setitimer"):  # the hang guard needs SIGALRM (not on Windows)
    pytestmark = pytest.mark.skip("needs signal.setitimer")
