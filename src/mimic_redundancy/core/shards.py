"""Gathering a sharded stage (config `shards`): its jobs' files joined, in order, into the file an unsharded
run writes. Torch-free: the gather jobs hold numpy arrays (NPZ) or stream bytes (features), never a model.

Which rows a shard runs: config.shard_rows. Each shard's file records them (a run NPZ in its config_json's
`shard`, a features file in its `shard_json` metadata), and a gather joins only shards that hold exactly their own
rows: a shard file copied from another shard or from a run with other `shards` is named, not gathered."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from mimic_redundancy.core.io import (InputFileError, atomic_path, config_digest, input_error, load_npz,
                                      rebuild_command, save_npz, write_json)

# Arrays of a run NPZ that gather sums over shards (a wall time of all samples); per-job values (the device)
# are joined when they differ; the rest without an S axis must be equal in every shard.
GATHER_SUM = ("wall_seconds",)
GATHER_JOIN = ("device",)


def sample_axis(spec: str) -> int | None:
    """The axis of S (samples) in a contract entry's shape, e.g. 1 for 'float32 [K+1, S, N, D]'; None if none."""
    dims = [d.strip() for d in spec.split("[", 1)[1].split("]", 1)[0].split(",")] if "[" in spec else []
    return dims.index("S") if "S" in dims else None


def shard_row_problems(paths: list, records: list, sizes: list) -> list[tuple[str, str]]:
    """(file, problem) for each shard that does not hold exactly its own rows: the k-th of n files must be shard
    'k-of-n' and start where the one before it stopped, with as many rows as its record says."""
    problems, stop = [], 0
    for k, (path, record, size) in enumerate(zip(paths, records, sizes), 1):
        own = f"{k}-of-{len(paths)}"
        if not isinstance(record, dict):
            problems.append((path, f"records no shard, so it cannot be told to hold shard {own}'s rows "
                                   "(written by an unsharded run or another version)"))
        elif record.get("shard") != own or record.get("rows", [None])[0] != stop:
            start, end = record.get("rows", ["?", "?"])
            problems.append((path, f"holds the rows [{start}, {end}) of shard {record.get('shard')}, not those of "
                                   f"shard {own} (from row {stop} on): a file of another shard or another "
                                   "`shards` setting"))
        elif record["rows"][1] - record["rows"][0] != size:
            problems.append((path, f"holds {size} rows, but its shard {own} has rows {record['rows'][0]} to "
                                   f"{record['rows'][1]}"))
        if isinstance(record, dict) and len(record.get("rows", ())) == 2:
            stop = record["rows"][1]
    return problems


def gather_npz(shard_paths: list, out_path, contract: dict) -> None:
    """Join the NPZ of a stage's shards (in order) into the one an unsharded run writes: arrays with a sample
    axis (the contract's S) concatenated along it, the rest checked equal (or summed: GATHER_SUM). The
    shards' rows (config_json's `shard`, stages._save_run) must tile the run in order; the gathered
    config_json leaves them out, as an unsharded run's has none."""
    save_npz(out_path, join_shards([load_npz(p, contract) for p in shard_paths], shard_paths, contract), contract)


def gather_rollout(paths: list[list], out_path, policies: list[int]) -> None:
    """Join the rollout files of every policy (paths[i]: policy policies[i]'s shards, in order) into one rollout.npz
    with a policy axis P: each policy's shards along S (as gather_npz), then the policies along P, in train.seeds
    order. Refused, naming the files: a shard whose arrays differ from its digest, a file that holds another policy
    than the one its place is for, and policies rolled out with other settings (beyond their checkpoint)."""
    from mimic_redundancy.core.io import ROLLOUT_ARRAYS as contract, rollout_digest

    per_policy, settings = [], []
    for seed, shard_paths in zip(policies, paths):
        shards = [load_npz(path, contract) for path in shard_paths]
        for path, shard in zip(shard_paths, shards):
            if str(shard["arrays_digest"]) != rollout_digest(shard):
                raise input_error(path, "its arrays differ from the digest written with them (arrays_digest)")
            held = int(shard["policy"][0])
            if held != seed:
                raise input_error(path, f"holds the rollouts of policy {held} ({shard['policy_checkpoint'][0]}), but "
                                        f"it stands for policy {seed}: a file of another policy")
        for shard in shards:
            shard["arrays_digest"] = np.asarray("")  # each shard's own: recomputed over the joined arrays
        unsharded = len(shards) == 1 and "shard" not in json.loads(str(shards[0]["config_json"]))
        arrays = shards[0] if unsharded else join_shards(shards, shard_paths, contract)  # shards: 1 writes no record
        mine = json.loads(str(arrays["config_json"]))
        mine.pop("policy"), mine["model"].pop("checkpoint")
        settings.append(mine)
        per_policy.append(arrays)
    for seed, shard_paths, mine in zip(policies, paths, settings):
        differ = differing_keys(settings[0], mine)
        if differ:
            raise input_error(shard_paths[0], f"policy {seed} was rolled out with other settings than policy "
                                              f"{policies[0]} ({paths[0][0]}): {', '.join(differ)} differ")
    out = {}
    for key, spec in contract.items():
        values = [arrays[key] for arrays in per_policy]
        if spec.split("[", 1)[-1].startswith("P"):
            out[key] = np.concatenate(values, axis=0)
        elif key in GATHER_JOIN:
            out[key] = np.asarray(",".join(dict.fromkeys(str(v) for v in values)))
        else:
            out[key] = values[0]
            differs = [paths[i][0] for i, v in enumerate(values) if key not in ("config_json", "config_digest")
                       and not np.array_equal(v, values[0])]
            if differs:
                raise input_error(differs[0], f"'{key}' differs from policy {policies[0]}'s ({paths[0][0]})")
    text, digest = config_digest({**settings[0], "policies": [int(p) for p in policies]})
    out.update(config_json=np.asarray(text), config_digest=np.asarray(digest))
    out["arrays_digest"] = np.asarray(rollout_digest(out))
    save_npz(out_path, out, contract)


def differing_keys(a, b, prefix: str = "") -> list[str]:
    """The dotted keys at which two settings dicts differ (e.g. rollout.seed)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "<settings>"]
    out = []
    for key in sorted(set(a) | set(b), key=str):
        out += differing_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
    return out


def join_shards(shards: list[dict], shard_paths: list, contract: dict) -> dict:
    """The arrays of shards (loaded, in order) joined as gather_npz writes them."""
    settings = [json.loads(str(shard["config_json"])) for shard in shards]
    records = [s.pop("shard", None) for s in settings]
    key = next(k for k, spec in contract.items() if sample_axis(spec) is not None)  # e.g. seed, or task
    bad = shard_row_problems(shard_paths, records, [shard[key].shape[sample_axis(contract[key])] for shard in shards])
    if bad:
        raise input_error(*bad[0])
    for path, unsharded in zip(shard_paths, settings):
        differ = differing_keys(settings[0], unsharded)
        if differ:
            raise input_error(path, f"its settings differ from those of {shard_paths[0]}, another shard of the same "
                                    f"run, at {', '.join(differ)}: the shards were run with different settings "
                                    "(rerun the shards of the settings you want)")
    for shard, unsharded in zip(shards, settings):
        text, digest = config_digest(unsharded)
        shard.update(config_json=np.asarray(text), config_digest=np.asarray(digest))
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
    return arrays


# per-row metadata, concatenated in shard order; per-job metadata, listed per shard; written by the gather (the
# checksums of the joined tensors) or the shard's alone (its rows); the rest must be equal
ROW_METADATA = ("prompts_json", "seconds_json")
JOB_METADATA = ("build_seconds", "device")
CHECKSUMS, SHARD = "sha256_json", "shard_json"


def safetensors_header(meta: dict, entries: dict) -> bytes:
    """The length prefix and JSON header of a safetensors file, every key sorted: safetensors' own writer orders
    the metadata at random, so equal content would give other bytes each time (and Snakemake, which compares the
    checksum of an input under 1 MB that is newer than its output, would rerun everything downstream of a rebuild)."""
    text = json.dumps({"__metadata__": meta, **entries}, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text


def timing_path(path):
    """The wall times of a features file (backbone seconds per row, build seconds): a sidecar, kept out of the
    file so that a rebuild with the same content writes the same bytes (docstring of features.py)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".seconds.json")


def _header(path) -> tuple[dict, int]:
    """(safetensors header, where its data starts); a file that is not one names itself."""
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size)) if size < 1 << 30 else None
    except (OSError, struct.error, ValueError) as error:
        header = error
    if not isinstance(header, dict):
        raise InputFileError(f"{path}: not a readable features shard ({header}); rerun it: "
                             f"{rebuild_command(path)}")
    return header, 8 + size


def tensor_checksums(path) -> dict[str, str]:
    """sha256 of every tensor's bytes in a safetensors file, streamed from disk (memory independent of its size)."""
    header, start = _header(path)
    header.pop("__metadata__", None)
    sums = {}
    with open(path, "rb") as f:
        for name, entry in header.items():
            digest = hashlib.sha256()
            f.seek(start + entry["data_offsets"][0])
            _copy(f, None, entry["data_offsets"][1] - entry["data_offsets"][0], [digest])
            sums[name] = digest.hexdigest()
    return sums


def gather_features(shard_paths: list, out_path) -> None:
    """Concatenate the rows of shard features files (in order) into one file, as an unsharded run writes it
    (features/{inference,train} or depth/features: the depth rows are time-major, each shard a contiguous range).
    Streams tensor bytes from disk to disk (torch-free, memory independent of the rows): safetensors stores
    each tensor C-contiguous, so stacking along the row axis is appending each shard's bytes. Each shard's
    bytes are checked against its checksums on the way, and its rows against its shard (shard_row_problems)."""
    headers = [_header(p) for p in shard_paths]
    metas = [h.pop("__metadata__", {}) for h, _ in headers]
    first = headers[0][0]
    problems = [f"{p}: tensors {sorted(h)} differ from {shard_paths[0]}'s {sorted(first)}"
                for p, (h, _) in zip(shard_paths, headers) if sorted(h) != sorted(first)]
    problems += [f"{p}: records no checksums of its tensors (metadata '{CHECKSUMS}'); rerun it: "
                 f"{rebuild_command(p)}" for p, m in zip(shard_paths, metas) if CHECKSUMS not in m]
    if problems:
        raise InputFileError("cannot gather the feature shards: " + "; ".join(problems))
    sizes = [h["seed"]["shape"][0] if "seed" in h else None for h, _ in headers]
    bad = shard_row_problems(shard_paths, [json.loads(m.get(SHARD, "null")) for m in metas], sizes)
    if bad:
        raise InputFileError(f"{bad[0][0]}: {bad[0][1]}; rerun it: {rebuild_command(bad[0][0])}")
    meta = {}
    for key in metas[0]:
        values = [m.get(key) for m in metas]
        if key in (CHECKSUMS, SHARD):
            continue
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
    for name in sorted(first):
        parts = [(path, h[name], start) for path, (h, start) in zip(shard_paths, headers) if name in h]
        nonempty = [part for part in parts if part[1]["shape"] and part[1]["shape"][0]]
        shapes = {(entry["dtype"], tuple(entry["shape"][1:])) for _, entry, _ in nonempty}
        if len(shapes) > 1:
            problems.append(f"tensor '{name}' has rows of different shapes or dtypes across shards: {sorted(shapes)}")
        layout[name] = nonempty or parts[:1]
    if problems:
        rule = "depth_features" if Path(shard_paths[0]).parent.name == "depth" else "features"
        raise InputFileError("cannot gather the feature shards: " + "; ".join(problems) +
                             f"; rerun the {rule} stage (--forcerun {rule})")
    out_header, offset = {}, 0
    for name, parts in layout.items():
        entry = parts[0][1]
        size = sum(e["data_offsets"][1] - e["data_offsets"][0] for _, e, _ in parts)
        shape = [sum(e["shape"][0] for _, e, _ in parts), *entry["shape"][1:]] if entry["shape"] else []
        out_header[name] = {"dtype": entry["dtype"], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    # the joined tensors' checksums are known once their bytes are through: the header is written with
    # placeholders of the same length first, then again over them
    placeholder = safetensors_header({**meta, CHECKSUMS: json.dumps(dict.fromkeys(sorted(layout), "0" * 64))},
                                     out_header)
    expected = [json.loads(m[CHECKSUMS]) for m in metas]
    sources = {p: open(p, "rb") for p in shard_paths}
    try:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as out:
            out.write(placeholder)
            sums, damaged = {}, []
            for name, parts in layout.items():
                joined = hashlib.sha256()
                for path, entry, start in parts:
                    own = hashlib.sha256()
                    sources[path].seek(start + entry["data_offsets"][0])
                    _copy(sources[path], out, entry["data_offsets"][1] - entry["data_offsets"][0], [joined, own])
                    if own.hexdigest() != expected[shard_paths.index(path)].get(name):
                        damaged.append(f"{path}: tensor '{name}'")
                sums[name] = joined.hexdigest()
            if damaged:  # (an empty shard's tensors, left out, have no bytes to damage)
                path = damaged[0].split(": ")[0]
                raise InputFileError(f"{damaged[0]} does not match its checksum: the shard changed after it was "
                                     f"written (a damaged disk or copy); rerun it: {rebuild_command(path)}")
            header = safetensors_header({**meta, CHECKSUMS: json.dumps(sums)}, out_header)
            assert len(header) == len(placeholder)
            out.seek(0)
            out.write(header)
    finally:
        for f in sources.values():
            f.close()
    _gather_timing(shard_paths, out_path)


def _gather_timing(shard_paths: list, out_path) -> None:
    """Join the shards' wall-time sidecars (timing_path): per-row seconds in order, build seconds per shard."""
    paths = [timing_path(p) for p in shard_paths]
    if not all(p.is_file() for p in paths):  # informative only: none rather than a partial one
        timing_path(out_path).unlink(missing_ok=True)
        return
    timings = [json.loads(p.read_text()) for p in paths]
    write_json(timing_path(out_path), {"seconds": [s for t in timings for s in t.get("seconds", [])],
                                       "build_seconds": [t.get("build_seconds") for t in timings]})


def _copy(source, out, size: int, digests=(), block: int = 1 << 24) -> None:
    while size:
        chunk = source.read(min(block, size))
        if not chunk:
            raise InputFileError(f"{source.name}: ends before its header says (a cut-short shard); rerun it: "
                                 f"{rebuild_command(source.name)}")
        if out is not None:
            out.write(chunk)
        for digest in digests:
            digest.update(chunk)
        size -= len(chunk)
