"""Which reader a config's `inputs.source` means: the one place that knows every real-data source (a LeRobot
snapshot from the Hub, the demos stage's dataset, a video folder). readers.py and lerobot.py stay independent of it."""
from __future__ import annotations

from pathlib import Path

from mimic_redundancy.data.lerobot import read_lerobot
from mimic_redundancy.data.readers import DataError, Episode, read_video_dir


def read_episodes(inputs: dict, snapshots: dict | None = None) -> list[Episode]:
    """The selected episodes of a real-data source (inputs.episodes: 'all' or a list of indices), in that order."""
    if inputs["source"] == "lerobot":
        if not snapshots or "dataset" not in snapshots:
            raise DataError("inputs.source 'lerobot' needs the dataset prefetched: run the prefetch rule")
        return read_lerobot(snapshots["dataset"], inputs)
    if inputs["source"] == "demos":  # the demos stage's dataset, written here (no Hub)

        if not (Path(inputs["dataset"]) / "meta/info.json").is_file():
            from mimic_redundancy.data.lerobot import demos_command

            raise DataError(f"{inputs['dataset']}: no demonstrations; run the demos rule first ({demos_command()})")
        return read_lerobot(Path(inputs["dataset"]), inputs)
    episodes = read_video_dir(Path(inputs["video_dir"]))
    wanted = inputs["episodes"]
    if wanted == "all":
        return episodes
    by_index = {e.index: e for e in episodes}
    unknown = [i for i in wanted if i not in by_index]
    if unknown:
        raise DataError(f"config key 'inputs.episodes': episodes {unknown} are not in the data "
                        f"(it has {sorted(by_index)})")
    return [by_index[i] for i in wanted]
