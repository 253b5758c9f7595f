"""Gathering a sharded stage (config `shards`): its jobs' files joined, in order, into the file an unsharded
run writes. Torch-free: the gather jobs hold numpy arrays (NPZ) or stream bytes (features), never a model.

Which rows a shard runs: config.shard_rows."""
from __future__ import annotations

import json

import numpy as np

from .io import InputFileError, atomic_path, input_error, load_npz, save_npz

# Arrays of a run NPZ that gather sums over shards (a wall time of all samples); per-job values (the device)
# are joined when they differ; the rest without an S axis must be equal in every shard.
GATHER_SUM = ("wall_seconds",)
GATHER_JOIN = ("device",)


def sample_axis(spec: str) -> int | None:
    """The axis of S (samples) in a contract entry's shape, e.g. 1 for 'float32 [K+1, S, N, D]'; None if none."""
    dims = [d.strip() for d in spec.split("[", 1)[1].split("]", 1)[0].split(",")] if "[" in spec else []
    return dims.index("S") if "S" in dims else None


def gather_npz(shard_paths: list, out_path, contract: dict) -> None:
    """Join the NPZ of a stage's shards (in order) into the one an unsharded run writes: arrays with a sample
    axis (the contract's S) concatenated along it, the rest checked equal (or summed: GATHER_SUM)."""
    shards = [load_npz(p, contract) for p in shard_paths]
    arrays, problems = {}, []
    for key, spec in contract.items():
        values = [shard[key] for shard in shards]
        axis = sample_axis(spec)
        if axis is not None:
            arrays[key] = np.concatenate(values, axis=axis)
        elif key in GATHER_SUM:
            arrays[key] = np.sum(values, axis=0)
        elif key in GATHER_JOIN:
            arrays[key] = np.asarray(",".join(dict.fromkeys(str(v) for v in values)))
        else:
            differs = [p for p, v in zip(shard_paths, values) if not np.array_equal(v, values[0])]
            if differs:
                problems.append(f"'{key}' differs between {shard_paths[0]} and {differs[0]}")
            arrays[key] = values[0]
        for shard in shards:  # free as we go: the shards' arrays are as large as the result
            shard.pop(key)
    if problems:
        raise input_error(shard_paths[0], "its shards were run with different settings: " + "; ".join(problems))
    save_npz(out_path, arrays, contract)


# per-row metadata, concatenated in shard order; per-job metadata, listed per shard; the rest must be equal
ROW_METADATA = ("prompts_json", "seconds_json")
JOB_METADATA = ("build_seconds", "device")


def _header(path) -> tuple[dict, int]:
    """(safetensors header, where its data starts); a file that is not one names itself."""
    import struct

    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size)) if size < 1 << 30 else None
    except (OSError, struct.error, ValueError) as error:
        header = error
    if not isinstance(header, dict):
        raise InputFileError(f"{path}: not a readable features shard ({header}); rerun it: "
                             f"snakemake --profile profiles/local {path} --forcerun features")
    return header, 8 + size


def gather_features(shard_paths: list, out_path) -> None:
    """Concatenate the rows of shard features files (in order) into one file, as an unsharded run writes it.
    Streams tensor bytes from disk to disk (torch-free, memory independent of the rows): safetensors stores
    each tensor C-contiguous, so stacking along the row axis is appending each shard's bytes."""
    import struct

    headers = [_header(p) for p in shard_paths]
    metas = [h.pop("__metadata__", {}) for h, _ in headers]
    first = headers[0][0]
    problems = [f"{p}: tensors {sorted(h)} differ from {shard_paths[0]}'s {sorted(first)}"
                for p, (h, _) in zip(shard_paths, headers) if sorted(h) != sorted(first)]
    meta = {}
    for key in metas[0]:
        values = [m.get(key) for m in metas]
        if key in ROW_METADATA:
            meta[key] = json.dumps([v for text in values for v in json.loads(text)])
        elif key in JOB_METADATA:
            meta[key] = values[0] if len(set(values)) == 1 else json.dumps(values)
        elif len(set(values)) > 1:
            problems.append(f"metadata '{key}' differs between shards ({values[0][:80]!r} in {shard_paths[0]}, "
                            f"{next(v for v in values if v != values[0])[:80]!r} elsewhere)")
        else:
            meta[key] = values[0]
    layout = {}  # tensor -> [(shard path, its entry, where its data starts)], empty shards left out
    for name, spec in sorted(first.items(), key=lambda item: item[1]["data_offsets"][0]):
        parts = [(path, h[name], start) for path, (h, start) in zip(shard_paths, headers) if name in h]
        nonempty = [part for part in parts if part[1]["shape"] and part[1]["shape"][0]]
        shapes = {(entry["dtype"], tuple(entry["shape"][1:])) for _, entry, _ in nonempty}
        if len(shapes) > 1:
            problems.append(f"tensor '{name}' has rows of different shapes or dtypes across shards: {sorted(shapes)}")
        layout[name] = nonempty or parts[:1]
    if problems:
        raise InputFileError("cannot gather the feature shards: " + "; ".join(problems) +
                            "; rerun the features stage (--forcerun features)")
    out_header, offset = {}, 0
    for name, parts in layout.items():
        entry = parts[0][1]
        size = sum(e["data_offsets"][1] - e["data_offsets"][0] for _, e, _ in parts)
        shape = [sum(e["shape"][0] for _, e, _ in parts), *entry["shape"][1:]] if entry["shape"] else []
        out_header[name] = {"dtype": entry["dtype"], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps({"__metadata__": meta, **out_header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    sources = {p: open(p, "rb") for p in shard_paths}
    try:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            for parts in layout.values():
                for path, entry, start in parts:
                    sources[path].seek(start + entry["data_offsets"][0])
                    _copy(sources[path], out, entry["data_offsets"][1] - entry["data_offsets"][0])
    finally:
        for f in sources.values():
            f.close()


def _copy(source, out, size: int, block: int = 1 << 24) -> None:
    while size:
        chunk = source.read(min(block, size))
        if not chunk:
            raise InputFileError(f"{source.name}: ends before its header says (a cut-short shard); rerun it")
        out.write(chunk)
        size -= len(chunk)
